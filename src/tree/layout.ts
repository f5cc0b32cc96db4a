/**
 * Tree snapshots in the bucket. A tree stores each file of the snapshot once, as its raw bytes
 * under its sha256, and publishes a snapshot as a few small files that name them:
 *
 *   {prefix}/objects/{sha256}                         the files' contents, shared by snapshots
 *   {prefix}/{YYYYMMDD}/{SERVICE}_BH{h}_data-{YYYYMMDD}_{HHMM}.tree/
 *       manifest.json   every file's path, size, sha256 and tail hash; the kind's facts
 *       index.txt       an aria2c input file: each object's URL and `out=` its path
 *       checksum.json   { path: { file_size, checksum } }, icon2-node's check (see icon2.ts)
 *   {prefix}/{SERVICE}.json                           { index_url, checksum_url } of the newest
 *   {prefix}/leases/{run}.json                        what a run in progress may reference
 *
 * `backup_list` names a tree by its folder (`YYYYMMDD/…tree`), as it names an archive by its
 * file; a snapshot is published once its three files are written and the list names it.
 */
import { IntegrityError } from '../errors.js';
import type { KindFacts } from '../node-kind/host.js';
import type { ArchiveName } from '../naming.js';

export const TREE_FORMAT = 'prep-snapshot-tree/1';

/** One file of a tree snapshot. */
export interface TreeFile {
  /** Relative to the data dir, as an archive names it (loopchain: with the placeholder). */
  path: string;
  size: number;
  sha256: string;
  /** xxh3_64 (hex) of the file's last 10,240 bytes: icon2-node's checksum (see icon2.ts). */
  tail: string;
  /** Permission bits (e.g. 0o644). */
  mode: number;
  /**
   * What the file was on the host that took the snapshot (inode and mtime in ns, as
   * `find -printf '%i %T@'` prints them): the next backup of the same host proves with them
   * that a table file is the one already stored (see `reusable`).
   */
  ino?: number;
  mtime?: string;
}

export interface TreeManifest {
  format: typeof TREE_FORMAT;
  /** `{prefix}/{YYYYMMDD}/{name}.tree`: the snapshot's folder. */
  key: string;
  /** The backup_list entry: `YYYYMMDD/{name}.tree`. */
  entry: string;
  nodeKind: string;
  blockHeight: number;
  /** loopchain: the directory name that the restore renames to `db_{IP}:7100_icon_dex`. */
  placeholder?: string;
  facts?: KindFacts;
  /** The key prefix of the objects (`{prefix}/objects/`). */
  objects: string;
  files: TreeFile[];
  /** Every directory of the snapshot, empty ones included, relative to the data dir. */
  dirs: string[];
  bytes: number;
  /**
   * What this backup sent; the rest was stored already. `ahead`: the part of it sent while the
   * node ran, before the stop (new table files).
   */
  sent: { files: number; bytes: number; ahead?: { files: number; bytes: number } };
  consistency: 'hardlink' | 'stop';
  source: {
    host: string;
    dataDir: string;
    identity?: string;
    /** The host's device number of the data dir: a file's inode means nothing elsewhere. */
    device?: string;
  };
  createdAt: string;
  actionVersion: string;
  timings: Record<string, number>;
}

export function treeFolder(prefix: string, name: ArchiveName): string {
  return `${prefix}/${name.date}/${name.file}`;
}

export const treeFiles = (folder: string) => ({
  manifest: `${folder}/manifest.json`,
  index: `${folder}/index.txt`,
  checksum: `${folder}/checksum.json`,
});

export const objectsPrefix = (prefix: string): string => `${prefix}/objects/`;
export const objectKey = (prefix: string, sha256: string): string =>
  `${objectsPrefix(prefix)}${sha256}`;
export const pointerKey = (prefix: string, service: string): string => `${prefix}/${service}.json`;
export const leasesPrefix = (prefix: string): string => `${prefix}/leases/`;
export const leaseKey = (prefix: string, runId: string): string =>
  `${leasesPrefix(prefix)}${runId}.json`;
/** Where sweeps of objects leave their marks (see sweep-marks.ts). */
export const sweepsPrefix = (prefix: string): string => `${prefix}/sweeps/`;

/** The sha256 of an object key under `objects`, or undefined for anything else. */
export function objectSha(objects: string, key: string): string | undefined {
  if (!key.startsWith(objects)) return undefined;
  const sha = key.slice(objects.length);
  return /^[0-9a-f]{64}$/.test(sha) ? sha : undefined;
}

/**
 * A path that a tree may hold: relative, `/`-separated, no empty, `.` or `..` segment, and
 * only characters that data dirs of both kinds use (loopchain's identity dir has `:`). The
 * manifest comes from the bucket: nothing in it reaches a host unless it passes here.
 */
const SEGMENT = /^[A-Za-z0-9_.:@+-]+$/;
export function isSafePath(path: string): boolean {
  if (path.length === 0 || path.length > 4096) return false;
  return path.split('/').every((s) => SEGMENT.test(s) && s !== '.' && s !== '..');
}

/** Checks a manifest read from the bucket; throws an IntegrityError naming what is wrong. */
export function checkTreeManifest(m: TreeManifest, key: string): TreeManifest {
  const bad = (what: string): never => {
    throw new IntegrityError(`${key}: ${what}. The snapshot cannot be used.`);
  };
  if (m?.format !== TREE_FORMAT) bad(`its manifest is not a '${TREE_FORMAT}' manifest`);
  if (!Array.isArray(m.files) || !Array.isArray(m.dirs)) bad('its manifest lists no files');
  if (!Number.isSafeInteger(m.blockHeight) || m.blockHeight < 0) bad('its block height is wrong');
  const seen = new Set<string>();
  for (const f of m.files) {
    if (!isSafePath(f.path)) bad(`it names the path '${String(f.path).slice(0, 200)}'`);
    if (seen.has(f.path)) bad(`it names ${f.path} twice`);
    seen.add(f.path);
    if (!Number.isSafeInteger(f.size) || f.size < 0) bad(`${f.path} has a wrong size`);
    if (!/^[0-9a-f]{64}$/.test(f.sha256)) bad(`${f.path} has a wrong sha256`);
    if (!Number.isInteger(f.mode) || f.mode < 0 || f.mode > 0o777)
      bad(`${f.path} has a wrong mode`);
  }
  for (const d of m.dirs)
    if (!isSafePath(d)) bad(`it names the directory '${String(d).slice(0, 200)}'`);
  return m;
}

/** A LevelDB or goleveldb table file: written once, never changed, removed when compacted. */
export const isTableFile = (path: string): boolean => /\.(ldb|sst)$/.test(path);

/**
 * The sha256 of a file already stored by the previous snapshot of the same host, if its
 * listing allows it; undefined when it must be read and hashed. What proves it (the caller
 * checks the last part, the tail): the file is a table file (`*.ldb`, `*.sst`), which LevelDB
 * and goleveldb write once and never change; it is at the same path, on the same device, with
 * the same inode, size and mtime to the nanosecond as in the previous snapshot's manifest; and
 * it still ends with the same 10,240 bytes (the hash of its tail, which holds the table's index
 * and footer). A table number reused after a crash is a new file written later: a new mtime,
 * and new contents at its end; ext4 hands a freed inode number out again at once, so the inode
 * alone proves nothing. Any other file (MANIFEST, CURRENT, journals, wal, config) is always
 * hashed.
 */
export function reusable(
  now: { path: string; size: number; ino: number; mtime: string },
  before: TreeFile | undefined,
): string | undefined {
  if (!before || !isTableFile(now.path)) return undefined;
  if (before.ino === undefined || before.mtime === undefined) return undefined;
  const same =
    before.path === now.path &&
    before.size === now.size &&
    before.ino === now.ino &&
    before.mtime === now.mtime;
  return same ? before.sha256 : undefined;
}

/**
 * A run's claim on objects while it backs up a tree, at `leaseKey(prefix, run)`. Written before
 * the run decides which stored objects it reuses, renewed while it uploads, removed once its
 * snapshot is published (or left to expire when the runner vanished). The sweep keeps every
 * object that a live lease names, directly or through the manifests it names.
 */
export interface Lease {
  run: string;
  createdAt: string;
  /** After this moment the lease no longer protects anything. */
  expiresAt: string;
  /** Manifests (keys) whose objects the run may reference. */
  sources: string[];
  /** Objects (sha256) the run has uploaded or decided to reference so far. */
  objects: string[];
}
