/**
 * After the freeze, the staging folder may hold tables left by a compaction that the node
 * was killed in: the MANIFEST does not list them, and a restarted LevelDB may reuse their
 * numbers and truncate the shared inode. This reads each database's MANIFEST and names
 * the tables to drop, and the listed tables that are missing (a snapshot that would not open).
 */
import { HostError } from './errors.js';
import { parseManifest, tableFileNumber } from './node-kind/leveldb-manifest.js';

export interface DatabaseFiles {
  dir: string;
  current: string;
  manifest?: Buffer;
  tables: string[];
}

export function parseManifestsOutput(stdout: string): DatabaseFiles[] {
  const dbs: DatabaseFiles[] = [];
  let db: DatabaseFiles | undefined;
  for (const line of stdout.split('\n')) {
    const [kind, a, b] = line.split('\t');
    if (kind === 'db' && a !== undefined) {
      db = { dir: a, current: b ?? '', tables: [] };
      dbs.push(db);
    } else if (kind === 'manifest' && db) {
      db.manifest = Buffer.from(a ?? '', 'base64');
    } else if (kind === 'table' && db && a) {
      db.tables.push(a);
    }
  }
  return dbs;
}

export interface PrunePlan {
  databases: number;
  liveTables: number;
  /** Paths relative to the staging folder. */
  garbage: string[];
}

export function planPrune(dbs: DatabaseFiles[]): PrunePlan {
  const plan: PrunePlan = { databases: dbs.length, liveTables: 0, garbage: [] };
  for (const db of dbs) {
    if (!/^MANIFEST-\d+$/.test(db.current) || !db.manifest) {
      throw new HostError(
        `${db.dir}/CURRENT names '${db.current}', not a MANIFEST: the database is damaged.`,
      );
    }
    const live = parseManifest(db.manifest).tables;
    const present = new Set<number>();
    for (const file of db.tables) {
      const number = tableFileNumber(file);
      if (number === undefined) continue;
      present.add(number);
      if (!live.has(number)) plan.garbage.push(`${db.dir}/${file}`);
    }
    const missing = [...live.keys()].filter((n) => !present.has(n));
    if (missing.length > 0) {
      throw new HostError(
        `${db.dir}: its MANIFEST lists ${missing.length} table file(s) that are not there ` +
          `(${missing.slice(0, 5).join(', ')}): the database is damaged; no snapshot was taken of it.`,
      );
    }
    plan.liveTables += live.size;
  }
  return plan;
}
