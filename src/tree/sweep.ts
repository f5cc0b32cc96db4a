/**
 * Retention of tree objects by mark and sweep. Removing a snapshot removes only its own small
 * files; its objects may be shared with other snapshots. The sweep marks every object that a
 * tree manifest under the prefix or the permanent prefix names, that the journal of an
 * unfinished run names (the next backup resumes from it), or that a run in progress may
 * reference (its lease, see lease.ts), and deletes the objects under `{prefix}/objects/` that
 * are not marked and are older than a grace period.
 *
 * Why a run in progress never loses an object it references:
 * - A backup writes its lease before it reads the previous manifest, names there what it
 *   uploads or reuses, checks before it publishes that every object it references exists
 *   (re-sending any that is gone), and removes the lease only after it published, and not
 *   before the lease is LEASE_MIN_HOLD_MS old.
 * - The sweep reads the leases again right before each DeleteObjects request, drops from the
 *   batch what they protect (directly or through their sources), and reads again when more
 *   than SWEEP_WINDOW_MS passed before the request could go. A lease written later than that
 *   reading meets a deletion that is one request away: the run's check, which comes after its
 *   lease, its snapshot and its uploads, finds the object gone and sends it again.
 * - A run that published after the sweep listed the manifests held its lease for at least
 *   LEASE_MIN_HOLD_MS. The sweep reads the leases at most half of that apart, or else lists
 *   the manifests again, so it either saw that lease or lists that manifest.
 * - What a run is uploading now is newer than the grace period, and was not even listed: the
 *   objects that may be deleted come from a listing taken before anything else.
 * - Before all of that the sweep writes its mark, and it sends no delete request SWEEP_MAX_MS
 *   after it (sweep-marks.ts): a run that finds no mark that recent after its lease's first
 *   write relies on its lease alone, with no window to wait and no check.
 * A manifest or a lease that cannot be read names objects that cannot be marked, so it stops
 * the sweep (with a warning naming it) before anything more is deleted. A journal that cannot
 * be read only warns: no snapshot references its objects, and a backup sends them again.
 */
import * as core from '@actions/core';
import { GetObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { performance } from 'node:perf_hooks';
import { formatBytes, formatDuration } from '../format.js';
import { describeS3Error, isStatus } from '../s3/client.js';
import { deleteKeys, listObjects } from '../s3/store.js';
import { LEASE_MIN_HOLD_MS, readLeases as readLeaseFiles } from './lease.js';
import { TREE_FORMAT, leasesPrefix, objectSha, objectsPrefix, sweepsPrefix } from './layout.js';
import { markSweep, SWEEP_MAX_MS } from './sweep-marks.js';
import { journalPrefix } from './store.js';

/** An object younger than this is kept: an upload in progress is much younger. */
export const DEFAULT_GRACE_SECONDS = 24 * 3600;

/** The longest time between the lease reading that a batch relies on and its delete request. */
export const SWEEP_WINDOW_MS = 2_000;

/** S3's limit of keys per DeleteObjects request. */
const MAX_BATCH = 1000;
/** Rounds of reading that a bucket changing under the sweep may cost before it gives up. */
const MAX_ROUNDS = 8;
const MANIFEST_SUFFIX = '.tree/manifest.json';
const SHA256 = /^[0-9a-f]{64}$/;

export interface SweepSettings {
  bucket: string;
  prefix: string;
  /** Where permanent copies of snapshots go (their three small files); '' for none. */
  permanentPrefix: string;
  /** Default: DEFAULT_GRACE_SECONDS. */
  graceSeconds?: number;
}

export interface SweepResult {
  /** Objects under `{prefix}/objects/` left in place, for any reason. */
  kept: number;
  deleted: number;
  deletedBytes: number;
  /** Kept only because they are younger than the grace period. */
  protectedByGrace: number;
  /** Kept only because a run in progress may reference them. */
  protectedByLease: number;
  /** Why the sweep stopped before it deleted all it could; undefined when it did not. */
  blocked?: string;
}

/** Points where another run may act during a sweep; tests act there. */
export interface SweepHooks {
  /** After every manifest and lease was read once, before the first batch. */
  afterMark?: () => Promise<void> | void;
  /** Before each batch's reading of the leases. */
  beforeBatch?: (keys: readonly string[]) => Promise<void> | void;
  /** After each reading of the leases that a batch may rely on, before its delete request. */
  afterLeaseRead?: () => Promise<void> | void;
}

export interface SweepOptions {
  /** Keys per DeleteObjects request; at most (and by default) 1000. */
  batchSize?: number;
  /** Default: SWEEP_WINDOW_MS. */
  windowMs?: number;
  /** The shortest time a run holds its lease. Default: LEASE_MIN_HOLD_MS. */
  leaseMinHoldMs?: number;
  /** No delete request goes once this long has passed since the sweep's mark. Default: SWEEP_MAX_MS. */
  maxMs?: number;
  hooks?: SweepHooks;
}

export async function sweepObjects(
  client: S3Client,
  settings: SweepSettings,
  now: Date = new Date(),
  options: SweepOptions = {},
): Promise<SweepResult> {
  return new Sweep(client, settings, now, options).run();
}

interface Candidate {
  key: string;
  sha: string;
  size: number;
  lastModified?: Date;
}

class Sweep {
  private readonly bucket: string;
  private readonly grace: number;
  private readonly window: number;
  /** Readings of the leases further apart than this may miss a lease that came and went. */
  private readonly spacing: number;
  private readonly batchSize: number;
  private readonly hooks: SweepHooks;
  private readonly maxMs: number;
  /** Objects named by the listed manifests. */
  private readonly referenced = new Set<string>();
  /** Objects named by leases, directly or through their sources. */
  private readonly leased = new Set<string>();
  /** Manifests read (or found gone), listed or named as a source. */
  private readonly read = new Set<string>();
  /** Sources of every lease seen during this sweep, still to read or read. */
  private readonly sources = new Set<string>();
  /** Lease keys seen live during this sweep. */
  private readonly runs = new Set<string>();
  private lastReading = -Infinity;
  private relistDue = true;
  private blocked: string | undefined;

  constructor(
    private readonly client: S3Client,
    private readonly settings: SweepSettings,
    private readonly now: Date,
    options: SweepOptions,
  ) {
    this.bucket = settings.bucket;
    this.grace = settings.graceSeconds ?? DEFAULT_GRACE_SECONDS;
    this.window = options.windowMs ?? SWEEP_WINDOW_MS;
    this.spacing = (options.leaseMinHoldMs ?? LEASE_MIN_HOLD_MS) / 2;
    this.batchSize = Math.min(MAX_BATCH, Math.max(1, options.batchSize ?? MAX_BATCH));
    this.hooks = options.hooks ?? {};
    this.maxMs = options.maxMs ?? SWEEP_MAX_MS;
  }

  async run(): Promise<SweepResult> {
    // Before any lease is read: a backup that finds no recent mark relies on it (sweep-marks.ts).
    const began = performance.now();
    await markSweep(this.client, this.bucket, this.settings.prefix, new Date());
    const objects = objectsPrefix(this.settings.prefix);
    // First, so that nothing uploaded from here on can be a candidate.
    const stored = (await listObjects(this.client, this.bucket, objects)).flatMap(
      (o): Candidate[] => {
        const sha = objectSha(objects, o.key);
        return sha ? [{ ...o, sha }] : [];
      },
    );
    const cutoff = this.now.getTime() - this.grace * 1000;
    const old = (o: Candidate) => o.lastModified !== undefined && o.lastModified.getTime() < cutoff;

    await this.readLeases();
    if (!this.blocked) await this.listManifests();
    if (!this.blocked) await this.readSources();
    if (!this.blocked) await this.hooks.afterMark?.();

    const deleted = new Set<string>();
    let deletedBytes = 0;
    const candidates = stored.filter((o) => !this.marked(o.sha) && old(o));
    for (let i = 0; i < candidates.length && !this.blocked; i += this.batchSize) {
      const batch = candidates.slice(i, i + this.batchSize);
      await this.hooks.beforeBatch?.(batch.map((o) => o.key));
      if (!(await this.refresh())) break;
      const gone = batch.filter((o) => !this.marked(o.sha));
      if (gone.length === 0) continue;
      // A minute to spare for the request itself to arrive.
      if (performance.now() - began > this.maxMs - 60_000) {
        this.block(
          `the sweep has run for ${formatDuration((performance.now() - began) / 1000)}, near the ` +
            `${formatDuration(this.maxMs / 1000)} after which backups no longer wait for it; the next retention goes on`,
        );
        break;
      }
      await deleteKeys(
        this.client,
        this.bucket,
        gone.map((o) => o.key),
      );
      for (const o of gone) {
        deleted.add(o.key);
        deletedBytes += o.size;
      }
    }

    let protectedByLease = 0;
    let protectedByGrace = 0;
    for (const o of stored) {
      if (deleted.has(o.key) || this.referenced.has(o.sha)) continue;
      if (this.leased.has(o.sha)) protectedByLease++;
      else if (!old(o)) protectedByGrace++;
    }
    const result: SweepResult = {
      kept: stored.length - deleted.size,
      deleted: deleted.size,
      deletedBytes,
      protectedByGrace,
      protectedByLease,
      ...(this.blocked ? { blocked: this.blocked } : {}),
    };
    core.info(
      `Tree objects: ${result.kept} kept (${protectedByLease} only for runs in progress, ` +
        `${protectedByGrace} only for being younger than ${formatDuration(this.grace)}), ` +
        `${result.deleted} deleted (${formatBytes(deletedBytes)}).`,
    );
    return result;
  }

  private marked(sha: string): boolean {
    return this.referenced.has(sha) || this.leased.has(sha);
  }

  private block(reason: string): void {
    if (this.blocked) return;
    this.blocked = reason;
    core.warning(`Tree objects: ${reason}. No object is deleted from here on in this run.`);
  }

  /**
   * Brings the marks up to date for a delete request that follows at once. Returns false when
   * the sweep must stop.
   */
  private async refresh(): Promise<boolean> {
    for (let round = 1; round <= MAX_ROUNDS; round++) {
      const reading = await this.readLeases();
      if (this.blocked) return false;
      if (this.relistDue) {
        // Leases may have come and gone unseen: list the manifests again, then read the
        // leases once more, closer together than a run can hold a lease.
        await this.listManifests();
        if (this.blocked) return false;
        continue;
      }
      await this.readSources();
      if (this.blocked) return false;
      await this.hooks.afterLeaseRead?.();
      if (performance.now() - reading <= this.window) return true;
    }
    this.block(`leases and manifests kept changing while they were read (${MAX_ROUNDS} rounds)`);
    return false;
  }

  /** Reads the live leases and marks what they name directly; returns when the reading began. */
  private async readLeases(): Promise<number> {
    const started = performance.now();
    if (started - this.lastReading > this.spacing) this.relistDue = true;
    this.lastReading = started;
    const { prefix } = this.settings;
    const { leases, vanished } = await readLeaseFiles(this.client, this.bucket, prefix, this.now);
    // A lease that went between the listing and its reading was a run that just finished:
    // what it published is in the manifests, which must then be listed again.
    if (vanished.length > 0) this.relistDue = true;
    for (const lease of leases) {
      if (lease.unreadable) {
        this.block(
          `${lease.key} is not a lease that this version can read (${lease.unreadable}); it counts ` +
            `as live until ${lease.expiresAt}. Remove it if no backup is running`,
        );
        continue;
      }
      if (!this.runs.has(lease.key)) {
        this.runs.add(lease.key);
        core.info(
          `Run '${lease.run}' is in progress (lease until ${lease.expiresAt}): what it names is kept.`,
        );
      }
      for (const sha of lease.objects) this.leased.add(sha);
      for (const source of lease.sources) this.sources.add(source);
    }
    return started;
  }

  private async readSources(): Promise<void> {
    for (const key of this.sources) {
      if (this.blocked) return;
      if (!this.read.has(key)) await this.mark(key, this.leased);
    }
  }

  /** Lists the tree manifests and marks the objects of those not read yet. */
  private async listManifests(): Promise<void> {
    this.relistDue = false;
    const { prefix, permanentPrefix } = this.settings;
    const skip = [objectsPrefix(prefix), leasesPrefix(prefix), sweepsPrefix(prefix)];
    const roots = new Set([`${prefix}/`]);
    if (permanentPrefix) roots.add(`${permanentPrefix}/`);
    for (const root of roots) {
      for (const key of await this.walk(root, skip)) {
        if (this.blocked) return;
        const wanted = key.endsWith(MANIFEST_SUFFIX) || this.isJournal(key);
        if (wanted && !this.read.has(key)) await this.mark(key, this.referenced);
      }
    }
  }

  /**
   * Every key under `folder` except those under `skip`: a folder that holds none of them is
   * listed in one go, one that does is listed a level at a time (the objects can be millions).
   */
  private async walk(folder: string, skip: string[]): Promise<string[]> {
    if (skip.includes(folder)) return [];
    if (!skip.some((s) => s.startsWith(folder)))
      return (await listObjects(this.client, this.bucket, folder)).map((o) => o.key);
    const { keys, folders } = await listLevel(this.client, this.bucket, folder);
    for (const f of folders) keys.push(...(await this.walk(f, skip)));
    return keys;
  }

  private isJournal(key: string): boolean {
    return key.startsWith(journalPrefix(this.settings.prefix)) && key.endsWith('.json');
  }

  /**
   * Reads a manifest or a journal and adds its objects to `into`. A manifest that cannot be
   * read stops the sweep; a journal that cannot be read only costs its objects.
   */
  private async mark(key: string, into: Set<string>): Promise<void> {
    this.read.add(key);
    let text: string;
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      text = (await res.Body?.transformToString('utf8')) ?? '';
    } catch (error) {
      // Removed since it was listed (or a source that no longer exists): it keeps nothing.
      if (isStatus(error, 404) || (error as Error).name === 'NoSuchKey') return;
      const why = describeS3Error(error, `s3://${this.bucket}/${key}`).message;
      this.block(`the manifest ${key} could not be read, so its objects cannot be marked (${why})`);
      return;
    }
    if (this.isJournal(key)) {
      const shas = journalObjects(text);
      if (typeof shas === 'string') {
        core.warning(
          `Tree objects: the journal ${key} ${shas}; the objects of that unfinished run are not ` +
            `kept, and the next backup sends them again.`,
        );
      } else for (const sha of shas) into.add(sha);
      return;
    }
    const shas = manifestObjects(text);
    if (typeof shas === 'string') {
      this.block(`the manifest ${key} ${shas}, so its objects cannot be marked`);
      return;
    }
    for (const sha of shas) into.add(sha);
  }
}

/** The objects (sha256) that a tree manifest names, or why they cannot be told. */
export function manifestObjects(text: string): string[] | string {
  let m: { format?: unknown; files?: unknown };
  try {
    m = JSON.parse(text) as typeof m;
  } catch {
    return 'is not JSON';
  }
  if (typeof m !== 'object' || m === null) return 'is not a JSON object';
  if (m.format !== TREE_FORMAT)
    return `is not a '${TREE_FORMAT}' manifest (format ${JSON.stringify(m.format)})`;
  if (!Array.isArray(m.files)) return 'lists no files';
  const shas: string[] = [];
  for (const f of m.files as Array<{ sha256?: unknown } | null>) {
    const sha = f?.sha256;
    if (typeof sha !== 'string' || !SHA256.test(sha)) return 'names a file without a sha256';
    shas.push(sha);
  }
  return shas;
}

/** The objects that the journal of an unfinished run names (see Journal in store.ts). */
export function journalObjects(text: string): string[] | string {
  let j: { files?: unknown };
  try {
    j = JSON.parse(text) as typeof j;
  } catch {
    return 'is not JSON';
  }
  if (typeof j !== 'object' || j === null || !Array.isArray(j.files)) return 'lists no files';
  const files = j.files as Array<{ sha256?: unknown } | null>;
  return files.flatMap((f) =>
    typeof f?.sha256 === 'string' && SHA256.test(f.sha256) ? [f.sha256] : [],
  );
}

/** One level of a listing: the keys right in `folder`, and its subfolders. */
async function listLevel(
  client: S3Client,
  bucket: string,
  folder: string,
): Promise<{ keys: string[]; folders: string[] }> {
  const keys: string[] = [];
  const folders: string[] = [];
  let token: string | undefined;
  try {
    do {
      const res = await client.send(
        new ListObjectsV2Command({
          Bucket: bucket,
          Prefix: folder,
          Delimiter: '/',
          ContinuationToken: token,
        }),
      );
      for (const o of res.Contents ?? []) if (o.Key) keys.push(o.Key);
      for (const p of res.CommonPrefixes ?? []) if (p.Prefix) folders.push(p.Prefix);
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
    } while (token);
  } catch (error) {
    throw describeS3Error(error, `the listing of s3://${bucket}/${folder}`);
  }
  return { keys, folders };
}
