/**
 * A tree's files read from S3 by the host itself (`download-on`; see node-kind/host-fetch.ts):
 * the runner signs a GET URL for each object and hands the list to the extraction that holds
 * the staging folder; the host fetches `download-connections` files at once, proves each by
 * its sha256 and says how far it got. A host that cannot read the first file says so, and the
 * extraction then takes the files as a tar from the runner, as without it.
 */
import { once } from 'node:events';
import * as core from '@actions/core';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { ActionError, IntegrityError, StorageError } from '../errors.js';
import { markedLines } from '../node-kind/extract.js';
import {
  FETCH_BROKE,
  FETCH_DAMAGED,
  FETCH_MARK,
  FETCH_REFUSED,
  GOT_LINE,
  REACHABLE_LINE,
  UNREACHABLE_LINE,
} from '../node-kind/host-fetch.js';
import { FileProgress } from '../progress.js';
import type { RemoteStream } from '../ssh/session.js';
import type { Channel } from './fetch-channel.js';
import type { FetchItem } from './fetch-file.js';

/** How long each signed URL is good for (see modes/restore-on-host.ts). */
const URL_SECONDS = 12 * 3600;

export interface HostReads {
  client: S3Client;
  bucket: string;
  connections: number;
  /** A public bucket: its objects are read unsigned. */
  unsigned: boolean;
}

/** Whether the host can be handed these files: each is an object of ours, proven by its sha256. */
export function readableOnHost(items: FetchItem[]): boolean {
  return items.length > 0 && items.every((i) => i.key !== undefined && i.sha256 !== undefined);
}

/** The list that the host reads: a line `SHA256 SIZE MODE PATH` for each file, then its URL. */
async function fileList(items: FetchItem[], reads: HostReads): Promise<Buffer> {
  const lines: string[] = [];
  for (const item of items) {
    if (/[\n\r]/.test(item.path))
      throw new IntegrityError(`${JSON.stringify(item.path)} is not a file name.`);
    let url = await getSignedUrl(
      reads.client,
      new GetObjectCommand({ Bucket: reads.bucket, Key: item.key }),
      { expiresIn: URL_SECONDS },
    );
    if (reads.unsigned) url = url.replace(/\?.*$/, '');
    lines.push(`${item.sha256} ${item.size} ${item.mode.toString(8)} ${item.path}\n${url}\n`);
  }
  return Buffer.from(lines.join(''));
}

/**
 * Hands `items` to the extraction that `main` runs (its go line not yet sent) and waits for it
 * to have proven every one. Returns `unreachable` when the host cannot read S3: the extraction
 * then waits for the files as a tar.
 */
export async function fetchOnHost(
  main: Channel,
  remote: RemoteStream,
  items: FetchItem[],
  reads: HostReads,
): Promise<{ unreachable: string } | { bytes: number }> {
  const list = await fileList(items, reads);
  remote.stdin.write(`go none fetch-tree\n${list.length} ${reads.connections}\n`);
  remote.stdin.write(list);
  const answer = (): string | undefined =>
    main.out.split('\n').find((l) => l === REACHABLE_LINE || l.startsWith(`${UNREACHABLE_LINE} `));
  let exited = false;
  void remote.exit.then(() => (exited = true));
  while (answer() === undefined && !exited)
    await Promise.race([once(remote.stdout, 'data'), remote.exit]);
  const said = answer();
  if (said?.startsWith(UNREACHABLE_LINE))
    return { unreachable: said.slice(UNREACHABLE_LINE.length + 1) };

  const total = items.reduce((s, i) => s + i.size, 0);
  const progress = new FileProgress('Restore', items.length, total);
  let rest = '';
  const onData = (text: string): void => {
    const lines = (rest + text).split('\n');
    rest = lines.pop() ?? '';
    for (const line of lines) {
      if (!line.startsWith(`${GOT_LINE} `)) continue;
      progress.files++;
      progress.bytes += Number(line.slice(GOT_LINE.length + 1));
    }
  };
  remote.stdout.on('data', onData);
  remote.onStderrLine((line) => {
    const [why] = markedLines(line, FETCH_MARK);
    if (why?.startsWith('retry ')) core.info(`Download on the host: ${why.slice(6)}`);
  });
  const code = await remote.exit;
  remote.stdout.off('data', onData);
  progress.stop();
  remote.stdin.end();
  if (code === 0) {
    core.info(progress.line());
    return { bytes: total };
  }
  const tail = remote.stderrTail().trim();
  const why = markedLines(tail, FETCH_MARK).filter((l) => !l.startsWith('retry '));
  const text = why.length ? why.join('; ') : tail;
  if (code === FETCH_DAMAGED) throw new IntegrityError(`${text} The data dir was not touched.`);
  if (code === FETCH_REFUSED) {
    throw new StorageError(
      `S3 refused the host's read of a file: ${text}. The data dir was not touched. A URL signed with a role's session ` +
        `ends with the session: give the role a session long enough for the restore, or set 'download-on: runner'.`,
    );
  }
  if (code === FETCH_BROKE) {
    throw new ActionError(
      `The host's download broke off: ${text}. The data dir was not touched; run again to go on from there.`,
    );
  }
  if (code === null) {
    throw new ActionError(
      `The SSH connection was lost while the host fetched the files${tail ? `: ${tail}` : ''}. The data dir was not touched; run again.`,
    );
  }
  throw main.failed('the staging folder', code);
}
