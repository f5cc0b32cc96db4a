/** Choosing a stored snapshot: the latest in backup_list, or one named by key, date or height. */
import type { S3Client } from '@aws-sdk/client-s3';
import { InputError, StorageError } from './errors.js';
import { parseArchivePath, type ArchiveName } from './naming.js';
import { readBackupList } from './s3/backup-list.js';
import type { S3Settings } from './settings.js';

export interface Chosen {
  key: string;
  name: ArchiveName;
  /** Whether the choice is listed in backup_list (only listed archives are complete). */
  listed: boolean;
}

/**
 * `latest`; a key (`PRep/20240101/FILE` or `20240101/FILE`); a date `YYYYMMDD` (the newest
 * of that day); or a height `BH123` / `123` (the newest at that height).
 */
export async function chooseSnapshot(
  client: S3Client,
  s3: S3Settings,
  wanted: string,
): Promise<Chosen> {
  const listKey = `${s3.prefix}/backup_list`;
  const { entries } = await readBackupList(client, s3.bucket, listKey);
  const listed = entries.flatMap((e) => {
    const name = parseArchivePath(e);
    return name ? [{ entry: e, name }] : [];
  });
  const pick = (match: (n: ArchiveName, entry: string) => boolean, what: string): Chosen => {
    const found = listed.find((l) => match(l.name, l.entry));
    if (!found) {
      throw new StorageError(
        `No snapshot in s3://${s3.bucket}/${listKey} matches ${what}` +
          (listed.length
            ? `; the newest is ${listed[0]?.entry}.`
            : '; the list is empty or missing.'),
      );
    }
    return { key: `${s3.prefix}/${found.entry}`, name: found.name, listed: true };
  };
  const value = wanted.trim();
  if (value === '' || value === 'latest') return pick(() => true, 'latest');
  if (/^\d{8}$/.test(value)) return pick((n) => n.date === value, `date ${value}`);
  const height = /^(?:BH)?(\d+)$/i.exec(value);
  if (height) return pick((n) => n.height === Number(height[1]), `block height ${height[1]}`);
  const name = parseArchivePath(value);
  if (!name) {
    throw new InputError(
      `Input 'snapshot' is '${wanted}'. Use 'latest', a date (YYYYMMDD), a block height (BH123) or a key.`,
    );
  }
  const entry = `${name.date}/${name.file}`;
  const key = value.includes('/') && value.split('/').length > 2 ? value : `${s3.prefix}/${entry}`;
  return { key, name, listed: entries.includes(entry) };
}
