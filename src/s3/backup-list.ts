/**
 * `{prefix}/backup_list`: one `YYYYMMDD/FILE` a line, newest first, as the original scripts
 * read it (`head -n 1` is the latest). Edits are pure; the write is conditional on the ETag
 * that was read, and retried, so that two runs that finish together both keep their entry.
 */
import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { setTimeout as sleep } from 'node:timers/promises';
import { compareNewestFirst, parseArchivePath } from '../naming.js';
import { StorageError } from '../errors.js';
import { describeS3Error, isStatus } from './client.js';

export function parseBackupList(text: string): string[] {
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '');
}

export function formatBackupList(entries: string[]): string {
  return entries.length ? `${entries.join('\n')}\n` : '';
}

/** Sorts newest first; lines that are not archive names keep their order, after the rest. */
export function sortNewestFirst(entries: string[]): string[] {
  const unique = [...new Set(entries)];
  const named = unique.flatMap((e) => {
    const name = parseArchivePath(e);
    return name ? [{ e, name }] : [];
  });
  const other = unique.filter((e) => !parseArchivePath(e));
  named.sort((a, b) => compareNewestFirst(a.name, b.name));
  return [...named.map((n) => n.e), ...other];
}

export function addEntry(entries: string[], entry: string): string[] {
  return sortNewestFirst([...entries, entry]);
}

export function removeEntries(entries: string[], remove: Iterable<string>): string[] {
  const gone = new Set(remove);
  return entries.filter((e) => !gone.has(e));
}

export interface ListObject {
  entries: string[];
  etag?: string;
}

export async function readBackupList(
  client: S3Client,
  bucket: string,
  key: string,
): Promise<ListObject> {
  try {
    const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    const text = (await res.Body?.transformToString('utf8')) ?? '';
    return { entries: parseBackupList(text), etag: res.ETag };
  } catch (error) {
    if (isStatus(error, 404) || (error as Error).name === 'NoSuchKey') return { entries: [] };
    throw describeS3Error(error, `s3://${bucket}/${key}`);
  }
}

/**
 * Applies `edit` to the list and writes it only if nobody wrote it in between
 * (If-Match on the ETag read, or If-None-Match when it did not exist); retries otherwise.
 */
export async function updateBackupList(
  client: S3Client,
  bucket: string,
  key: string,
  edit: (entries: string[]) => string[],
  attempts = 12,
): Promise<string[]> {
  for (let attempt = 1; ; attempt++) {
    const current = await readBackupList(client, bucket, key);
    const next = edit(current.entries);
    try {
      await client.send(
        new PutObjectCommand({
          Bucket: bucket,
          Key: key,
          Body: formatBackupList(next),
          ContentType: 'text/plain; charset=utf-8',
          ...(current.etag ? { IfMatch: current.etag } : { IfNoneMatch: '*' }),
        }),
      );
      return next;
    } catch (error) {
      // 412: someone wrote it since it was read; 404: someone removed it since. Read again.
      const conflict =
        isStatus(error, 412, 409, 404) || (error as Error).name === 'PreconditionFailed';
      if (!conflict) throw describeS3Error(error, `s3://${bucket}/${key}`);
      if (attempt >= attempts) {
        throw new StorageError(
          `backup_list kept changing under this run (${attempts} attempts); run again.`,
        );
      }
      await sleep(Math.min(2000, 50 * 2 ** attempt) * (0.5 + Math.random()));
    }
  }
}
