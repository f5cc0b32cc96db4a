/**
 * An archive backup's stream: the host's tar, compressed there, read into the parts of a
 * multipart upload with its sha256 and progress; the frozen copy's stat digest compared before
 * and after, so that a file changed under the stream fails the backup before it is published.
 */
import * as core from '@actions/core';
import type { S3Client } from '@aws-sdk/client-s3';
import {
  ActionError,
  HostError,
  RemoteCommandError,
  StorageError,
  errorMessage,
} from '../errors.js';
import { secondsSince } from '../format.js';
import type { NodeHost } from '../node-kind/index.js';
import {
  AHEAD_REMOVED_MARK,
  CHANGED_MARK,
  checkpointBytes,
  COMPRESSOR_MARK,
  PROGRESS_MARK,
} from '../node-kind/archive-remote.js';
import { Progress } from '../progress.js';
import { abortUploads, streamUpload } from '../s3/upload.js';
import type { Settings } from '../settings.js';
import { GO_LINE } from '../shell.js';
import type { RemoteStream } from '../ssh/session.js';
import type { ArchiveAhead } from './backup-archive-ahead.js';

/**
 * The largest archive a database of `bytes` makes: LevelDB tables are compressed already, so
 * the archive is about their size, plus tar's headers and records.
 */
export function archiveBound(bytes: number): number {
  return bytes * 1.05 + 64 * 1024 * 1024;
}

export interface StreamArgs {
  /** The archive command, started ahead and waiting for its go line. */
  remote: RemoteStream;
  host: NodeHost;
  client: S3Client;
  settings: Settings;
  source: string;
  key: string;
  partSize: number;
  queueSize: number;
  totalBytes: number;
  /**
   * The source is a staging folder of hard links that the running node shares: the stat
   * digest of its files taken before the stream, to compare with the one after.
   */
  frozenDigest?: string;
  /**
   * The archive's first part, sent ahead of the stop (backup-archive-ahead.ts): its upload goes
   * on with this stream, opened with `ahead`.
   */
  ahead?: ArchiveAhead;
}

export interface Streamed {
  bytes: number;
  sha256: string;
  seconds: number;
  compressor: string;
  tarBytes?: number;
  /** After a send ahead: the tables it sent that the frozen copy no longer holds. */
  aheadRemoved?: number;
}

/**
 * The error of an archive's host command that ended with `code` (null: the connection was
 * lost); `during` says which part of the archive it was sending.
 */
export function streamFailed(
  remote: RemoteStream,
  code: number | null,
  step: string,
  during = '',
): ActionError {
  const tail = remote
    .stderrTail()
    .split('\n')
    .filter((l) => !l.includes(PROGRESS_MARK) && !l.startsWith(COMPRESSOR_MARK))
    .join('\n');
  return code === null
    ? new ActionError(
        `The SSH connection was lost while the archive streamed${during}${tail ? `: ${tail.trim()}` : ''}. Nothing was published.`,
      )
    : new RemoteCommandError(step, code, tail);
}

/**
 * The error of a failed archive upload, once S3 was asked to remove what it holds of it: the
 * upload aborts itself, but not when S3 is what failed (then the post step removes it). An
 * ActionError keeps its words; `when` says where in the run it failed.
 */
export async function uploadFailed(
  client: S3Client,
  bucket: string,
  key: string,
  error: unknown,
  when = '',
): Promise<Error> {
  const left = await abortUploads(client, bucket, key).then(
    () => '',
    (e) =>
      ` S3 could not be asked to remove the incomplete upload (${errorMessage(e)}); the post step removes it.`,
  );
  if (error instanceof ActionError)
    return left ? new ActionError(`${error.message}${left}`) : error;
  return new StorageError(
    `The upload of ${key} failed: ${errorMessage(error)}${when}. Nothing was published;${left || ' no parts were left.'}`,
  );
}

export async function streamArchive(a: StreamArgs): Promise<Streamed> {
  const t = performance.now();
  const digest = () => a.host.statDigest(a.source);
  const before = a.frozenDigest;
  const remote = a.remote;
  remote.stdin.end(GO_LINE);
  let changed = false;
  const ahead = a.ahead;
  const progress = new Progress('Upload', Math.max(0, a.totalBytes - (ahead?.tarBytes ?? 0)));
  let compressor: string = a.settings.backup.compression;
  let tarBytes: number | undefined;
  let aheadRemoved: number | undefined;
  remote.onStderrLine((line) => {
    const read = checkpointBytes(line);
    if (read !== undefined) progress.read = read;
    else if (line.startsWith(COMPRESSOR_MARK))
      compressor = line.slice(COMPRESSOR_MARK.length + 1).trim();
    else if (line === CHANGED_MARK) changed = true;
    else if (line.startsWith(AHEAD_REMOVED_MARK))
      aheadRemoved = Number(line.slice(AHEAD_REMOVED_MARK.length + 1));
    else if (/Total bytes written: (\d+)/.test(line))
      tarBytes = Number(/Total bytes written: (\d+)/.exec(line)?.[1]);
  });
  const sourceOk = remote.exit.then(async (code) => {
    if (code !== 0) throw streamFailed(remote, code, 'Archiving on the host');
    // tar reports a file "changed as we read it" when its inode's ctime moves, which the node
    // causes by removing its own link of a table it compacted away. A byte written would move
    // a file's size or mtime: the upload completes only if none moved.
    if (before !== undefined) {
      if ((await digest()).trim() !== before) {
        throw new HostError(
          `A file in the staging folder changed while the archive streamed (its size or mtime): the snapshot is ` +
            `not consistent, and nothing was published. Run again; if it repeats, use 'consistency: stop'.`,
        );
      }
      if (changed) {
        core.info(
          `tar saw link counts change (the node compacted tables away meanwhile); no file's size or mtime changed.`,
        );
      }
    }
  });
  sourceOk.catch(() => undefined);
  try {
    if (ahead) {
      ahead.onProgress = (bytes) => (progress.sent = bytes - ahead.bytes);
      ahead.follow(remote, sourceOk);
      const r = await ahead.upload;
      return {
        ...r,
        seconds: secondsSince(t),
        compressor,
        tarBytes: tarBytes === undefined ? undefined : tarBytes + ahead.tarBytes,
        aheadRemoved: aheadRemoved ?? 0,
      };
    }
    const r = await streamUpload({
      client: a.client,
      bucket: a.settings.s3.bucket,
      key: a.key,
      body: remote.source,
      partSize: a.partSize,
      queueSize: a.queueSize,
      contentType:
        a.settings.backup.compression === 'zstd' ? 'application/zstd' : 'application/gzip',
      sourceOk,
      onProgress: (bytes) => (progress.sent = bytes),
      onRetry: (message) => core.info(`Upload: ${message}`),
    });
    return { ...r, seconds: secondsSince(t), compressor, tarBytes };
  } catch (error) {
    remote.kill();
    await sourceOk.catch(() => undefined);
    await ahead?.abandon(error instanceof Error ? error : new Error(String(error)));
    throw await uploadFailed(a.client, a.settings.s3.bucket, a.key, error);
  } finally {
    progress.stop();
  }
}
