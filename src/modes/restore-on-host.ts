/**
 * An archive that the node host reads from S3 itself (`download-on`): the runner signs a GET
 * URL, the host's extraction reads the object with curl (node-kind/host-fetch.ts) and says
 * how far it got, and what it read is checked here against the manifest's sha256. The bytes
 * cross the network once, S3 to the host, instead of S3 to the runner and the runner to the
 * host; the runner only watches.
 */
import * as core from '@actions/core';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { ActionError, IntegrityError, StorageError, errorMessage } from '../errors.js';
import { formatBytes, formatDuration, formatRate, secondsSince } from '../format.js';
import type { NodeHost } from '../node-kind/index.js';
import { goLine, type Decoder } from '../node-kind/extract.js';
import {
  FETCH_BROKE,
  FETCH_CHANGED,
  FETCH_MARK,
  FETCH_REFUSED,
  FETCHED_LINE,
  GOT_LINE,
  UNREACHABLE_LINE,
  fetchOrderLines,
  hostRangeBytes,
} from '../node-kind/host-fetch.js';
import { markedLines } from '../node-kind/extract.js';
import { Progress } from '../progress.js';
import { headObject } from '../s3/download.js';
import type { Settings } from '../settings.js';
import { closeUnused, type RemoteStream } from '../ssh/session.js';
import { extractionFailed, streamInto, type Streamed } from './restore-stream.js';

/**
 * How long the signed URL is good for: every range is a request of its own, so the URL must
 * outlive the whole read (12 hours reads 1.2 TB at 30 MB/s). S3 caps it at the end of the
 * credentials that signed it: with a role's session (OIDC), at the session's end.
 */
export const URL_SECONDS = 12 * 3600;

/** The host could not read the archive's first byte: what it said. */
export interface Unreachable {
  unreachable: string;
}

/**
 * Reads `key` on the host into `into.stage`, through the extraction that `remote` runs.
 * Returns `Unreachable` when the host cannot read S3 with the URL (it has then done nothing).
 */
export async function fetchOnHost(
  remote: RemoteStream,
  onGo: () => void,
  client: S3Client,
  settings: Settings,
  key: string,
  into: { host: NodeHost; stage: string; decoder: Decoder },
  size: number,
  expectedSha256?: string,
): Promise<Streamed | Unreachable> {
  const t = performance.now();
  const bucket = settings.s3.bucket;
  const stored = await headObject(client, bucket, key);
  if (stored.size !== size || !stored.etag) {
    throw new StorageError(
      `The stored ${key} was replaced during the restore (its size went from ${size} to ${stored.size} bytes). ` +
        `Nothing was touched: the data dir is as it was. Run again to restore the snapshot as it is now.`,
    );
  }
  let url: string;
  try {
    url = await getSignedUrl(client, new GetObjectCommand({ Bucket: bucket, Key: key }), {
      expiresIn: URL_SECONDS,
    });
  } catch (error) {
    throw new StorageError(`Could not sign a GET URL for ${key}: ${errorMessage(error)}`);
  }
  // The URL reads the snapshot for hours: it never shows in the log.
  core.setSecret(url);
  // A public bucket is read as it is: a signature made without credentials would be refused.
  if (settings.s3.unsigned) url = url.replace(/\?.*$/, '');
  const connections = settings.s3.downloadConnections;
  const rangeBytes = hostRangeBytes(size, connections);
  onGo();
  remote.stdin.on('error', () => undefined);
  remote.stdin.write(
    `${goLine(into.decoder).trimEnd()} fetch\n` +
      fetchOrderLines({ url, size, etag: stored.etag, rangeBytes, connections }),
  );
  const progress = new Progress('Restore', size);
  let unreachable: string | undefined;
  let sha256: string | undefined;
  let count = '';
  let rest = '';
  remote.stdout.setEncoding('utf8');
  remote.stdout.on('data', (text: string) => {
    rest += text;
    const lines = rest.split('\n');
    rest = lines.pop() ?? '';
    for (const line of lines) {
      const [word, value] = splitFirst(line);
      if (word === GOT_LINE) {
        progress.read = Number(value);
        progress.sent = Number(value);
      } else if (word === UNREACHABLE_LINE) unreachable = value;
      else if (word === FETCHED_LINE) sha256 = value;
      else if (line.trim()) count = line.trim();
    }
  });
  remote.onStderrLine((line) => {
    const [why] = markedLines(line, FETCH_MARK);
    if (why?.startsWith('retry ')) core.info(`Download on the host: ${why.slice(6)}`);
  });
  const code = await remote.exit;
  remote.stdin.end();
  progress.stop();
  if (code === 0 && unreachable !== undefined) return { unreachable };
  if (code !== 0) {
    const tail = remote.stderrTail().trim();
    const why = markedLines(tail, FETCH_MARK).filter((l) => !/^retry /.test(l));
    const said = why.length ? why.join('; ') : tail;
    if (code === FETCH_CHANGED) {
      throw new StorageError(
        `The stored ${key} was replaced during the restore (${said}) Nothing was touched: the data dir is as it was. ` +
          `Run again to restore the snapshot as it is now.`,
      );
    }
    if (code === FETCH_REFUSED) {
      throw new StorageError(
        `S3 refused the host's read of ${key}: ${said}. The data dir was not touched. A URL signed with a role's ` +
          `session ends with the session: give the role a session long enough for the restore, or set 'download-on: runner'.`,
      );
    }
    if (code === FETCH_BROKE) {
      throw new ActionError(
        `The host's download of ${key} broke off: ${said}. The data dir was not touched; run again.`,
      );
    }
    throw extractionFailed(code, tail, key, into);
  }
  if (expectedSha256 && sha256 !== expectedSha256) {
    throw new IntegrityError(
      `${key}: sha256 ${sha256 ?? '(none)'} differs from the manifest's ${expectedSha256}: the stored archive is damaged. ` +
        `The data dir was not touched; restore another snapshot ('snapshot' input).`,
    );
  }
  const seconds = secondsSince(t);
  core.info(
    `${formatBytes(size)} read by the host from S3 and extracted in ${formatDuration(seconds)} ` +
      `(${formatRate(size, seconds)}; ${connections} connection${connections === 1 ? '' : 's'}, ranges of ${formatBytes(rangeBytes)}).`,
  );
  return { sha256, bytes: size, files: Number(count), seconds };
}

function splitFirst(line: string): [string, string] {
  const at = line.indexOf(' ');
  return at < 0 ? [line, ''] : [line.slice(0, at), line.slice(at + 1)];
}

/**
 * An archive into the staging folder: read by the host itself when it can (fetchOnHost above),
 * else read by the runner and relayed over SSH (streamInto, restore-stream.ts). With 'download-on: auto', a
 * host that cannot reach S3 falls back to the relay, over a channel of its own.
 */
export async function streamArchive(
  remote: RemoteStream,
  onGo: () => void,
  a: {
    client: S3Client;
    reads: S3Client;
    settings: Settings;
    key: string;
    into: { host: NodeHost; stage: string; decoder: Decoder };
    size: number;
    sha256?: string;
    onHost: boolean;
  },
): Promise<Streamed> {
  const relay = (r: RemoteStream, go: () => void): Promise<Streamed> =>
    streamInto(r, go, a.reads, a.settings, a.key, a.into, a.size, a.sha256).then((s) => ({
      ...s,
      line: 'relayed by the runner',
    }));
  if (!a.onHost) return relay(remote, onGo);
  const got = await fetchOnHost(
    remote,
    onGo,
    a.client,
    a.settings,
    a.key,
    a.into,
    a.size,
    a.sha256,
  );
  if (!('unreachable' in got)) return { ...got, line: 'read by the host' };
  if (a.settings.restore.downloadOn === 'host') {
    throw new StorageError(
      `The host cannot read ${a.key} from S3 (${got.unreachable}). Nothing was changed on the host. Let the host ` +
        `reach the S3 endpoint, or set 'download-on: auto' or 'runner' (the runner relays the archive).`,
    );
  }
  core.info(
    `The host cannot read S3 (${got.unreachable}): the runner reads the archive and relays it over SSH.`,
  );
  const second = a.into.host.extract(a.into.stage);
  let started = false;
  try {
    return await relay(second, () => (started = true));
  } finally {
    if (!started) await closeUnused(second);
  }
}
