/**
 * Snapshot names and keys, in the layout of the original backup script: an archive is a file
 * `{SERVICE}_BH{height}_data-{YYYYMMDD}_{HHMM}.tar.gz` (or `.tar.zst`); a tree (see
 * tree/layout.ts) is a folder of the same name ending `.tree`.
 */
import type { Compression } from './settings.js';

export const EXTENSIONS: Record<Compression, string> = { gzip: '.tar.gz', zstd: '.tar.zst' };
export const TREE_EXTENSION = '.tree';

/** What a backup writes: an archive compressed so, or a tree. */
export type SnapshotFormat = Compression | 'tree';

export interface ArchiveName {
  /** `YYYYMMDD`, the folder under the prefix. */
  date: string;
  /** `{SERVICE}_BH{height}_data-{YYYYMMDD}_{HHMM}.tar.gz` */
  file: string;
  service: string;
  height: number;
  /** `YYYYMMDD_HHMM` from the file name: the order of snapshots. */
  stamp: string;
  /** 'tree' for a tree snapshot (a folder of small files, see tree/layout.ts). */
  format: 'archive' | 'tree';
  /** An archive's compression; undefined for a tree. */
  compression?: Compression;
}

/** `YYYYMMDD` and `HHMM` of a moment, in UTC. */
export function utcStamp(at: Date): { date: string; time: string } {
  const iso = at.toISOString();
  return { date: iso.slice(0, 10).replace(/-/g, ''), time: iso.slice(11, 16).replace(':', '') };
}

export function archiveName(
  service: string,
  height: number,
  at: Date,
  format: SnapshotFormat,
): ArchiveName {
  const { date, time } = utcStamp(at);
  const tree = format === 'tree';
  const file = `${service}_BH${height}_data-${date}_${time}${tree ? TREE_EXTENSION : EXTENSIONS[format]}`;
  const stamp = `${date}_${time}`;
  return tree
    ? { date, file, service, height, stamp, format: 'tree' }
    : { date, file, service, height, stamp, format: 'archive', compression: format };
}

/** The service, as the 'service' input allows it: no character a shell or HTML would read. */
const FILE_PATTERN =
  /^([A-Za-z0-9_.-]+)_BH(\d{1,15})_data-(\d{8})_(\d{4})\.(tar\.gz|tar\.zst|tree)$/;
/** A folder of a key prefix, as the prefix inputs allow it. */
const PREFIX_SEGMENT = /^[A-Za-z0-9_.-]+$/;

/**
 * Reads `YYYYMMDD/FILE` (a backup_list line) or `{prefix}/YYYYMMDD/FILE` (a key). Anything
 * else is not an archive of ours or of the original script, and is never used as one: a
 * line read from the bucket reaches shells, outputs and the job summary only through here.
 */
export function parseArchivePath(path: string): ArchiveName | undefined {
  const parts = path.split('/');
  const file = parts.at(-1) ?? '';
  const date = parts.at(-2) ?? '';
  const m = FILE_PATTERN.exec(file);
  if (!m || !/^\d{8}$/.test(date)) return undefined;
  if (!parts.slice(0, -2).every((p) => PREFIX_SEGMENT.test(p) && p !== '..' && p !== '.'))
    return undefined;
  return {
    date,
    file,
    service: m[1] as string,
    height: Number(m[2]),
    stamp: `${m[3]}_${m[4]}`,
    ...(m[5] === 'tree'
      ? { format: 'tree' as const }
      : { format: 'archive' as const, compression: m[5] === 'tar.zst' ? 'zstd' : 'gzip' }),
  };
}

export function listEntry(name: ArchiveName): string {
  return `${name.date}/${name.file}`;
}

export function archiveKey(prefix: string, name: ArchiveName): string {
  return `${prefix}/${listEntry(name)}`;
}

/**
 * Where the manifest of an archive lives. Not beside the archive: the original script
 * rebuilds backup_list from a recursive listing of the prefix, sorted newest first, and
 * would list a manifest written after its archive as the latest "snapshot".
 */
export function manifestKey(manifestPrefix: string, key: string): string {
  return `${manifestPrefix}/${key}.json`;
}

/** Newest first: by the stamp in the file name, then by height. */
export function compareNewestFirst(a: ArchiveName, b: ArchiveName): number {
  if (a.stamp !== b.stamp) return a.stamp < b.stamp ? 1 : -1;
  if (a.height !== b.height) return b.height - a.height;
  return a.file < b.file ? 1 : a.file > b.file ? -1 : 0;
}

/** The UTC date `days` before `now`, as YYYYMMDD. */
export function dateDaysAgo(now: Date, days: number): string {
  return utcStamp(new Date(now.getTime() - days * 86_400_000)).date;
}
