/**
 * How a restore's bytes reach the staging folder: an archive streamed from S3 (ranged GETs,
 * see s3/download.ts) into the host's extraction, or a tree's files fetched into it (see
 * tree/fetch.ts). Both end with what the summary and the checks after them need.
 */
import * as core from '@actions/core';
import { HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import {
  ActionError,
  HostError,
  IntegrityError,
  ObjectChangedError,
  StorageError,
  errorMessage,
} from '../errors.js';
import { formatBytes, formatDuration, formatRate, secondsSince } from '../format.js';
import type { NodeHost } from '../node-kind/index.js';
import { dirname } from '../node-kind/remote.js';
import {
  type Decoder,
  goLine,
  MISSING_MARK,
  markedLines,
  NOT_A_SNAPSHOT,
  UNSAFE_ARCHIVE,
  UNSAFE_MARK,
} from '../node-kind/extract.js';
import { Progress } from '../progress.js';
import { describeS3Error } from '../s3/client.js';
import { headObject, rangedDownload } from '../s3/download.js';
import type { Settings } from '../settings.js';
import type { RemoteStream } from '../ssh/session.js';
import { fetchTree } from '../tree/fetch.js';
import type { HostReads } from '../tree/fetch-on-host.js';
import type { TreeSource } from './restore-tree.js';

/** What the operator reads when the archive's bytes stopped coming. */
function downloadFailed(key: string, bytes: number, error: unknown): ActionError {
  if (error instanceof ObjectChangedError) {
    return new StorageError(
      `The stored ${key} was replaced during the restore (${error.message}) Nothing was touched: the data dir is ` +
        `as it was. Run again to restore the snapshot as it is now.`,
    );
  }
  return new ActionError(
    `The download of ${key} broke off after ${formatBytes(bytes)}: ${errorMessage(error)}. The data dir was not touched; run again.`,
  );
}

/** What the operator reads when the host's extraction ended with `code` (null: the connection was lost). */
export function extractionFailed(
  code: number | null,
  tail: string,
  key: string,
  into: { host: NodeHost; stage: string },
): ActionError {
  // With 1 MiB records, tar can meet a full disk in the middle of a record and say only
  // that it wrote less than it had.
  if (/No space left on device|Wrote only \d+ of \d+ bytes/i.test(tail)) {
    return new HostError(
      `The host's disk filled up during the extraction (${dirname(into.stage)}). The data dir was not touched; free space and run again.`,
    );
  }
  if (code === NOT_A_SNAPSHOT) {
    const lacks = markedLines(tail, MISSING_MARK);
    return new IntegrityError(
      `${key} is not a snapshot of a ${into.host.kind} node: ${lacks.length ? lacks.join('; ') : tail}. The data dir was not touched.`,
    );
  }
  if (code === UNSAFE_ARCHIVE) {
    const found = markedLines(tail, UNSAFE_MARK);
    return new IntegrityError(
      `${key} was refused as unsafe: it holds ${found.length ? found.join('; ') : tail}. A snapshot holds only ` +
        `regular files and directories under ${into.host.expectedContent()}, none of them setuid, setgid or sticky. ` +
        `The staging folder was removed and the data dir was not touched. Restore another snapshot ('snapshot' input) ` +
        `and find out how this one got into the bucket.`,
    );
  }
  if (code === null) {
    return new ActionError(
      `The SSH connection was lost during the extraction${tail ? `: ${tail}` : ''}. The data dir was not touched; run again.`,
    );
  }
  return new IntegrityError(
    `The archive did not extract (exit ${code}): ${tail || 'no message'}. It is truncated or damaged; the data dir was not touched.`,
  );
}

export async function objectSize(client: S3Client, bucket: string, key: string): Promise<number> {
  try {
    const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    return head.ContentLength ?? 0;
  } catch (error) {
    throw describeS3Error(error, `s3://${bucket}/${key}`);
  }
}

export async function streamInto(
  remote: RemoteStream,
  onGo: () => void,
  client: S3Client,
  settings: Settings,
  key: string,
  into: { host: NodeHost; stage: string; decoder: Decoder },
  size: number,
  expectedSha256?: string,
): Promise<{ sha256: string; bytes: number; files: number; seconds: number }> {
  const t = performance.now();
  // The ETag seen here pins every ranged read of the stream to this version of the object.
  const stored = await headObject(client, settings.s3.bucket, key);
  if (stored.size !== size) {
    throw downloadFailed(
      key,
      0,
      new ObjectChangedError(`its size went from ${size} to ${stored.size} bytes.`),
    );
  }
  const connections = settings.s3.downloadConnections;
  const body = rangedDownload({
    client,
    bucket: settings.s3.bucket,
    key,
    object: stored,
    connections,
    onRetry: (message) => core.info(`Download: ${message}`),
  });
  // The extraction begins once S3 has sent a first byte: a read that S3 refuses leaves nothing
  // begun on the host.
  try {
    await body.started;
  } catch (error) {
    body.destroy();
    throw downloadFailed(key, 0, error);
  }
  onGo();
  remote.stdin.write(goLine(into.decoder));
  let out = '';
  remote.stdout.setEncoding('utf8');
  remote.stdout.on('data', (text: string) => {
    out += text;
  });
  const hash = createHash('sha256');
  let bytes = 0;
  const progress = new Progress('Restore', size);
  const stdin = remote.stdin;
  stdin.on('error', () => undefined);
  let hostGone = false;
  void remote.exit.then(() => (hostGone = true));
  // Each chunk is the download's memory until the next one is asked for: it is written
  // whole before that (a failed write shows in the host's exit).
  const written = (chunk: Buffer): Promise<void> =>
    new Promise<void>((resolve) => stdin.write(chunk, () => resolve()));
  let downloadError: Error | undefined;
  try {
    for await (const chunk of body) {
      hash.update(chunk);
      bytes += chunk.length;
      progress.sent = bytes;
      progress.read = bytes;
      if (hostGone) break;
      await Promise.race([written(chunk), remote.exit]);
    }
  } catch (error) {
    downloadError = error as Error;
  }
  // The host sees the end of its input and its extraction ends on its own; after a failed
  // download the staging folder is removed after that, not while tar still writes into it.
  stdin.end();
  const giveUp = downloadError ? setTimeout(() => remote.kill(), 60_000) : undefined;
  const code = await remote.exit;
  clearTimeout(giveUp);
  progress.stop();
  body.destroy();
  if (downloadError) throw downloadFailed(key, bytes, downloadError);
  // A damaged archive usually breaks the decompressor too: the sha256 says what happened.
  const sha256 = hash.digest('hex');
  if (expectedSha256 && bytes === size && sha256 !== expectedSha256) {
    throw new IntegrityError(
      `${key}: sha256 ${sha256} differs from the manifest's ${expectedSha256}: the stored archive is damaged. ` +
        `The data dir was not touched; restore another snapshot ('snapshot' input).`,
    );
  }
  if (code !== 0) throw extractionFailed(code, remote.stderrTail().trim(), key, into);
  if (bytes !== size) {
    throw new ActionError(
      `${formatBytes(bytes)} of ${formatBytes(size)} arrived. The data dir was not touched; run again.`,
    );
  }
  const seconds = secondsSince(t);
  core.info(
    `${formatBytes(bytes)} streamed and extracted in ${formatDuration(seconds)} (${formatRate(bytes, seconds)}; ` +
      `${connections} connection${connections === 1 ? '' : 's'} to S3, ranges of ${formatBytes(body.rangeBytes)}` +
      `${body.retries > 0 ? `; ${body.retries} reads again after a failure` : ''}).`,
  );
  return { sha256, bytes, files: Number(out.trim()), seconds };
}

export interface Streamed {
  /** An archive's, computed on the way. */
  sha256?: string;
  bytes: number;
  files: number;
  seconds: number;
  /** A tree's figures, for the summary. */
  line?: string;
}

/** A tree's files into the staging folder (see tree/fetch.ts), with the figures the summary shows. */
export async function fetchInto(
  remote: RemoteStream,
  more: RemoteStream[],
  onGo: () => void,
  settings: Settings,
  tree: TreeSource,
  into: {
    host: NodeHost;
    stage: string;
    stageFound: boolean;
    inDataDir: { paths: string[]; address: string };
    onHost?: HostReads;
  },
): Promise<Streamed> {
  const t = performance.now();
  const got = await fetchTree({
    host: into.host,
    stage: into.stage,
    stageFound: into.stageFound,
    inDataDir: into.inDataDir,
    remote,
    more,
    onGo,
    items: tree.items,
    dirs: tree.dirs,
    filesInFlight: settings.s3.filesInFlight,
    bytesInFlight: settings.s3.bytesInFlight,
    onHost: into.onHost,
  });
  const seconds = secondsSince(t);
  const earlier = got.kept - got.fromDataDir;
  const line =
    `${got.files} files fetched (${formatBytes(got.bytes)})` +
    (got.fromDataDir > 0 ? `, ${got.fromDataDir} taken from the data dir` : '') +
    (earlier + got.continued > 0
      ? `, ${earlier} kept and ${got.continued} continued from an earlier run`
      : '');
  const over =
    got.channels === 0
      ? ', read by the host from S3'
      : got.channels > 1
        ? `, over ${got.channels} SSH channels`
        : '';
  core.info(`${line} in ${formatDuration(seconds)} (${formatRate(got.bytes, seconds)}${over}).`);
  return {
    bytes: got.bytes,
    files: got.counted,
    seconds,
    line: got.channels === 0 ? `${line}, read by the host` : line,
  };
}
