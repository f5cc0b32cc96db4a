/**
 * An archive backup's send ahead of the stop. The running node's table files that have stood
 * unchanged for a while are linked aside and go up first, as the start of the archive's
 * multipart upload; the node stops only once they are in. After the freeze the same upload goes
 * on with the rest of the frozen copy: what the node wrote meanwhile, and the files that change
 * in place. The two parts read as one tar (archive-remote.ts, `archiveAheadCommand`).
 *
 * A table sent ahead that the node removed before the stop (a compaction) stays in the archive,
 * a table that no MANIFEST lists: LevelDB and goleveldb delete those when they open the
 * database. One the node wrote again under the same number is archived again after it, and
 * the later copy is the one tar extracts.
 */
import * as core from '@actions/core';
import type { S3Client } from '@aws-sdk/client-s3';
import { ActionError } from '../errors.js';
import { formatBytes, formatDuration, formatRate, secondsSince } from '../format.js';
import type { NodeHost } from '../node-kind/index.js';
import {
  AHEAD_BYTES_MARK,
  AHEAD_CHANGED_CODE,
  AHEAD_SETTLED_SECONDS,
  checkpointBytes,
} from '../node-kind/archive-remote.js';
import type { ByteSource } from '../byte-source.js';
import { Progress } from '../progress.js';
import { abortUploads, streamUpload, type StreamUploadResult } from '../s3/upload.js';
import { streamFailed, uploadFailed } from './backup-stream.js';
import type { Settings } from '../settings.js';
import { GO_LINE } from '../shell.js';
import type { RemoteStream } from '../ssh/session.js';

export interface ArchiveAhead {
  files: number;
  /** The tar bytes it sent (the tables and their headers). */
  tarBytes: number;
  /** What of the archive went up ahead (compressed). */
  bytes: number;
  seconds: number;
  /** The upload of the whole archive: it completes once `follow` has handed it the rest. */
  upload: Promise<StreamUploadResult>;
  /** The frozen copy's stream (opened with `ahead`) goes on from here; `ok` says it ended well. */
  follow(remote: RemoteStream, ok: Promise<void>): void;
  /** Told of the archive's bytes uploaded, from now on. */
  onProgress: (bytes: number) => void;
  /** Ends it where the run goes no further: the frozen copy's part never comes. */
  abandon(error: Error): Promise<void>;
}

interface Later<T> {
  promise: Promise<T>;
  resolve: (value: T) => void;
  reject: (error: Error) => void;
}

function later<T>(): Later<T> {
  let resolve: (value: T) => void = () => undefined;
  let reject: (error: Error) => void = () => undefined;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

/**
 * Sends the archive's first part while the node runs. Undefined where it sends nothing (no
 * table has stood still long enough), or where a table changed while it was read: then the
 * archive goes up whole after the freeze, as without it. Any other failure (the connection, the
 * host's command, S3) is thrown, with the node never stopped.
 */
export async function archiveAhead(o: {
  settings: Settings;
  client: S3Client;
  host: NodeHost;
  stage: string;
  key: string;
  parts: { partSize: number; queueSize: number };
  localCopy: string | undefined;
}): Promise<ArchiveAhead | undefined> {
  const { settings, client, host, key } = o;
  const t = performance.now();
  const linked = await host.linkAhead(o.stage);
  if (linked.files === 0) {
    core.info(
      `No table file has stood unchanged for ${AHEAD_SETTLED_SECONDS} s: the whole archive goes up after the freeze.`,
    );
    return undefined;
  }
  core.info(
    `${linked.files} table files (${formatBytes(linked.bytes)}) that have stood unchanged for ${AHEAD_SETTLED_SECONDS} s ` +
      `go up now, while the node runs, as the start of the archive.`,
  );
  const remote = await host.archiveAhead(o.stage, {
    compression: settings.backup.compression,
    level: settings.backup.compressionLevel,
    localCopy: o.localCopy,
  });
  let tarBytes = 0;
  const progress = new Progress('Upload ahead', linked.bytes);
  remote.onStderrLine((line) => {
    const read = checkpointBytes(line);
    if (read !== undefined) progress.read = read;
    else if (line.startsWith(AHEAD_BYTES_MARK))
      tarBytes = Number(line.slice(AHEAD_BYTES_MARK.length + 1));
  });
  const hostOk = remote.exit.then((code) => {
    if (code === 0) return;
    if (code === AHEAD_CHANGED_CODE) throw new AheadChanged();
    throw streamFailed(
      remote,
      code,
      'Archiving the table files ahead of the stop',
      ' (the table files, ahead of the stop: the node was not stopped)',
    );
  });
  hostOk.catch(() => undefined);

  // The upload reads the first part, then waits for the frozen copy's.
  const firstEnded = later<void>();
  const rest = later<{ remote: RemoteStream; ok: Promise<void> }>();
  // The source that flows now: none between the two parts (one that has ended is not destroyed
  // again, which would raise its error where nothing listens any more).
  let current: ByteSource | undefined = remote.source;
  const body: ByteSource = {
    flow: async (sink) => {
      await remote.source.flow(sink);
      current = undefined;
      firstEnded.resolve();
      const next = await rest.promise;
      current = next.remote.source;
      await next.remote.source.flow(sink);
    },
    resume: () => current?.resume(),
    destroy: (error) => {
      current?.destroy(error);
      rest.reject(error ?? new Error('the upload ended'));
    },
  };
  const restOk = later<void>();
  const handle: ArchiveAhead = {
    files: linked.files,
    tarBytes: 0,
    bytes: 0,
    seconds: 0,
    upload: Promise.resolve({ bytes: 0, sha256: '' }),
    follow: (next, ok) => {
      ok.then(restOk.resolve, restOk.reject);
      rest.resolve({ remote: next, ok });
    },
    onProgress: (bytes) => (progress.sent = bytes),
    abandon: async (error) => {
      restOk.reject(error);
      rest.reject(error);
      remote.kill();
      await handle.upload.catch(() => undefined);
    },
  };
  const sourceOk = Promise.all([hostOk, restOk.promise]).then(() => undefined);
  let read = 0;
  remote.stdin.end(GO_LINE);
  handle.upload = streamUpload({
    client,
    bucket: settings.s3.bucket,
    key,
    body,
    partSize: o.parts.partSize,
    queueSize: o.parts.queueSize,
    contentType: settings.backup.compression === 'zstd' ? 'application/zstd' : 'application/gzip',
    sourceOk,
    onProgress: (bytes) => {
      read = bytes;
      handle.onProgress(bytes);
    },
    onRetry: (message) => core.info(`Upload: ${message}`),
  });
  handle.upload.catch(() => undefined);
  try {
    // The first part is in once the host's command ended well and the upload has read it all;
    // a failed upload ends the wait as well.
    await Promise.race([
      Promise.all([hostOk, firstEnded.promise]),
      handle.upload.then(() => {
        throw new ActionError('The upload ended before the frozen copy was archived.');
      }),
    ]);
  } catch (error) {
    await handle.abandon(error instanceof Error ? error : new Error(String(error)));
    if (error instanceof AheadChanged) {
      await abortUploads(client, settings.s3.bucket, key).catch(() => 0);
      core.warning(
        `A table file changed while it went up ahead of the stop: what went up is not used, and the whole archive ` +
          `goes up after the freeze.`,
      );
      return undefined;
    }
    throw await uploadFailed(
      client,
      settings.s3.bucket,
      key,
      error,
      ' (while the table files went up ahead of the stop: the node was not stopped)',
    );
  } finally {
    progress.stop();
  }
  handle.bytes = read;
  handle.tarBytes = tarBytes;
  handle.seconds = secondsSince(t);
  core.info(
    `Sent ${linked.files} table files ahead: ${formatBytes(tarBytes)} of tar, ${formatBytes(handle.bytes)} read for the upload, ` +
      `in ${formatDuration(handle.seconds)} (${formatRate(tarBytes, handle.seconds)}).`,
  );
  return handle;
}

/**
 * A table file changed while the send ahead read it (one the node still wrote, though it had
 * stood still): the archive goes up whole after the freeze.
 */
class AheadChanged extends Error {
  override name = 'AheadChanged';
}
