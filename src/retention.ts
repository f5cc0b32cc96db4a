/** Which archives retention removes: those dated more than `days` before today (UTC). */
import { dateDaysAgo, listEntry, type ArchiveName } from './naming.js';

export interface Dated {
  key: string;
  name: ArchiveName;
}

/** `days` 0 keeps everything. The permanent prefix is never given to this function. */
export function chooseExpired<T extends Dated>(archives: T[], now: Date, days: number): T[] {
  if (days <= 0) return [];
  const cutoff = dateDaysAgo(now, days);
  return archives.filter((a) => a.name.date < cutoff);
}

export function entriesOf(archives: Dated[]): string[] {
  return archives.map((a) => listEntry(a.name));
}
