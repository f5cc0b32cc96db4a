/**
 * What a tree backup need not send: the files that earlier runs of the same host stored (its
 * previous tree, the journals of runs cut short), proven unchanged without reading them, and
 * the stored objects that the other files may turn out to be. See README, "What proves a
 * stored file unchanged".
 */
import * as core from '@actions/core';
import type { S3Client } from '@aws-sdk/client-s3';
import { errorMessage } from '../errors.js';
import { parseArchivePath } from '../naming.js';
import type { TreeEntry } from '../node-kind/host.js';
import { readBackupList } from '../s3/backup-list.js';
import type { Settings } from '../settings.js';
import type { RemoteStream } from '../ssh/session.js';
import { tailHash, TAIL_BYTES } from './icon2.js';
import { objectKey, reusable, treeFiles, type TreeFile, type TreeManifest } from './layout.js';
import type { LeaseKeeper } from './lease.js';
import { readTails } from './send.js';
import { readBytes, readJournals, readTreeManifest, storedObjects } from './store.js';

export type Source = TreeManifest['source'];

export const sameSource = (a: Source | undefined, b: Source): boolean =>
  a !== undefined && a.host === b.host && a.dataDir === b.dataDir && a.device === b.device;

export interface Earlier {
  /** The newest listed trees (a handful: another host's may be in between), newest first. */
  trees: Array<{ key: string; manifest: () => Promise<TreeManifest | undefined> }>;
  journals: Awaited<ReturnType<typeof readJournals>>;
}

/**
 * The listed trees and the journals of unfinished runs; the newest tree's manifest is read at
 * once. It needs nothing of the host: a backup begins it as soon as it has connected.
 */
export async function readEarlier(client: S3Client, settings: Settings): Promise<Earlier> {
  const { bucket, prefix } = settings.s3;
  const journals = readJournals(client, bucket, prefix);
  journals.catch(() => undefined);
  const { entries } = await readBackupList(client, bucket, `${prefix}/backup_list`);
  const trees = entries
    .filter((e) => parseArchivePath(e)?.format === 'tree')
    .slice(0, 8)
    .map((entry) => {
      const key = treeFiles(`${prefix}/${entry}`).manifest;
      let read: Promise<TreeManifest | undefined> | undefined;
      const manifest = (): Promise<TreeManifest | undefined> =>
        (read ??= readTreeManifest(client, bucket, key).catch((e) => {
          core.warning(
            `${key} could not be read (${errorMessage(e)}): it is not used to skip files.`,
          );
          return undefined;
        }));
      return { key, manifest };
    });
  void trees[0]?.manifest();
  return { trees, journals: await journals };
}

/** The newest listed tree of the same host and data dir, with its manifest. */
async function previousManifest(
  trees: Earlier['trees'],
  source: Source,
): Promise<{ key: string; manifest: TreeManifest } | undefined> {
  for (const tree of trees) {
    const { key } = tree;
    const manifest = await tree.manifest();
    if (manifest && sameSource(manifest.source, source)) return { key, manifest };
  }
  return undefined;
}

/**
 * What the bucket holds for this host, read while the node stops, freezes and starts: none
 * of it needs the frozen copy. The lease names the earlier runs' manifests before the stored
 * objects are listed: a sweep from then on keeps what they name, and what one deleted before
 * is not in the listing.
 */
export interface Ahead {
  /** Every stored object's size, by sha256. */
  stored: Map<string, number>;
  /** The files that earlier runs of this host recorded, by path. */
  before: Map<string, TreeFile>;
  /** The tree whose files `before` holds, if any. */
  previousKey?: string;
  /** The journals of this host's unfinished runs: removed once this one publishes. */
  journals: Earlier['journals'];
  /** When the lease was first written (a sweep's mark is compared with it). */
  leasedWall: number;
  /**
   * This run listed the running node's tables and sent them ahead of the stop: `before` holds
   * what it stored, and a table file it did not see is one the node wrote since.
   */
  listedAhead?: boolean;
}

export async function readAhead(a: {
  client: S3Client;
  settings: Settings;
  lease: LeaseKeeper;
  source: Source;
  /** readEarlier, begun already. */
  earlier?: Promise<Earlier>;
}): Promise<Ahead> {
  const { bucket, prefix } = a.settings.s3;
  const { trees, journals: allJournals } = await (a.earlier ?? readEarlier(a.client, a.settings));
  const previous = await previousManifest(trees, a.source);
  const journals = allJournals.filter((j) => sameSource(j.journal.source, a.source));
  // From the lease's first write a sweep keeps what those runs name (see tree/sweep.ts).
  const leasedWall = Date.now();
  await a.lease.start([...(previous ? [previous.key] : []), ...journals.map((j) => j.key)]);
  const stored = await storedObjects(a.client, bucket, prefix);
  const before = new Map<string, TreeFile>();
  for (const j of journals) for (const f of j.journal.files) before.set(f.path, f);
  for (const f of previous?.manifest.files ?? []) before.set(f.path, f);
  return {
    stored,
    before,
    ...(previous ? { previousKey: previous.key } : {}),
    journals,
    leasedWall,
  };
}

/** What is stored, and what earlier runs of this host prove of the frozen copy's files. */
export interface Stored {
  /** Every stored object's size, by sha256. */
  stored: Map<string, number>;
  /** The files proven unchanged, by path, as the manifest records them. */
  done: Map<string, TreeFile>;
  /** The files still to hash or send. */
  unproven: TreeEntry[];
  /** The tail hash earlier runs recorded, by sha256. */
  tails: Map<string, string>;
  journals: Ahead['journals'];
  leasedWall: number;
  /**
   * A record of this host's files exists (its last tree, or this run's send ahead of the stop):
   * a file that `known` lacks was written since, and holds data no snapshot has.
   */
  hasPrevious: boolean;
  /** The paths earlier runs of this host, or this run's send ahead of the stop, recorded. */
  known: Set<string>;
  /** What was found, in a line for the log (the proof may run while another group is open). */
  summary: string;
}

/**
 * The files of the frozen copy that earlier runs stored: the same table file as recorded
 * (path, size, inode, mtime), its object stored, and its tail still hashing as recorded, which
 * the host's `fileTails` channel (opened ahead) reads.
 */
export async function proveUnchanged(
  ahead: Ahead,
  files: TreeEntry[],
  tailsChannel: RemoteStream,
  lease: LeaseKeeper,
): Promise<Stored> {
  const { stored, before } = ahead;
  const tailOf = new Map<string, string>();
  for (const f of before.values()) tailOf.set(f.sha256, f.tail);
  const unproven: TreeEntry[] = [];
  const candidates: Array<{ e: TreeEntry; b: TreeFile; sha: string }> = [];
  for (const e of files) {
    const b = before.get(e.path);
    const sha = reusable(e, b);
    if (sha && b && stored.get(sha) === e.size) candidates.push({ e, b, sha });
    else unproven.push(e);
  }
  // The last proof: the file still ends as it did (its tail hash, as the manifest recorded it).
  const tails = await readTails(
    tailsChannel,
    candidates.map((c) => c.e),
  );
  const done = new Map<string, TreeFile>();
  for (const c of candidates) {
    if (tails.get(c.e.hostPath) === c.b.tail) done.set(c.e.path, fileOf(c.e, c.sha, c.b.tail));
    else unproven.push(c.e);
  }
  await lease.add([...done.values()].map((f) => f.sha256));
  const journals = ahead.journals;
  return {
    summary:
      `${stored.size} objects stored; ${done.size} files proven unchanged since ` +
      `${ahead.previousKey ?? 'no earlier snapshot of this host'}` +
      `${journals.length ? ` and ${journals.length} unfinished run(s)` : ''}` +
      `${ahead.listedAhead ? ' and the send ahead of the stop' : ''}; ${unproven.length} to hash on the host.`,
    stored,
    done,
    unproven,
    tails: tailOf,
    journals,
    leasedWall: ahead.leasedWall,
    hasPrevious: ahead.previousKey !== undefined || ahead.listedAhead === true,
    known: new Set(before.keys()),
  };
}

export function fileOf(e: TreeEntry, sha256: string, tail: string): TreeFile {
  return {
    path: e.path,
    size: e.size,
    sha256,
    tail,
    mode: e.mode & 0o777,
    ino: e.ino,
    mtime: e.mtime,
  };
}

/** The tail hash of a stored object, from its last bytes (one ranged GET). */
export async function storedTail(
  client: S3Client,
  bucket: string,
  prefix: string,
  sha: string,
  size: number,
): Promise<string> {
  const range = size > TAIL_BYTES ? `bytes=${size - TAIL_BYTES}-${size - 1}` : undefined;
  const bytes =
    size === 0 ? Buffer.alloc(0) : await readBytes(client, bucket, objectKey(prefix, sha), range);
  if (!bytes) throw new Error(`the stored object ${sha} vanished`);
  return tailHash(bytes);
}
