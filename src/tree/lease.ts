/**
 * Leases: how a tree backup in progress tells the sweep which objects it may still reference.
 * A lease is a small JSON file at `{prefix}/leases/{run}.json` (see `Lease` in layout.ts). The
 * sweep (sweep.ts) keeps every object that a live lease names, directly or through the
 * manifests the lease names as its sources.
 */
import * as core from '@actions/core';
import { DeleteObjectCommand, GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { errorMessage } from '../errors.js';
import { describeS3Error, isStatus } from '../s3/client.js';
import { deleteKeys, listObjects, writeJson } from '../s3/store.js';
import { leaseKey, leasesPrefix, type Lease } from './layout.js';

/**
 * How long one write keeps a lease alive: a GitHub-hosted job's limit (6 h) and an hour of
 * margin. The expiry is there for the runner that vanished without removing its lease; a
 * LeaseKeeper renews the lease long before, however long its job runs.
 */
export const LEASE_TTL_SECONDS = 7 * 3600;

/**
 * A lease that cannot be read names nothing the sweep could keep, so it keeps everything: it
 * counts as live until this long after it was written. Garbage in `leases/` therefore delays
 * deletion, and never lets it start early.
 */
export const UNREADABLE_LEASE_SECONDS = 24 * 3600;

/**
 * The shortest time a LeaseKeeper leaves its lease in the bucket. The sweep reads the leases
 * at least twice within this time while it deletes, so it sees every lease, even that of a run
 * that started and published in between (see sweep.ts).
 */
export const LEASE_MIN_HOLD_MS = 60_000;

/** Run ids become key names: keep them to characters that need no escaping anywhere. */
const RUN_ID = /^[A-Za-z0-9_.-]{1,200}$/;
const SHA256 = /^[0-9a-f]{64}$/;

/** A lease as the sweep found it. */
export interface LiveLease extends Lease {
  key: string;
  /**
   * Why the file could not be read as a lease, when it could not. Such a lease names no
   * objects and no sources; while it is live, the sweep deletes nothing.
   */
  unreadable?: string;
}

export async function writeLease(
  client: S3Client,
  bucket: string,
  prefix: string,
  lease: Lease,
): Promise<void> {
  if (!RUN_ID.test(lease.run)) throw new Error(`'${lease.run}' cannot name a lease.`);
  await writeJson(client, bucket, leaseKey(prefix, lease.run), lease);
}

/** Removes a run's lease; removing one that is not there is not an error. */
export async function removeLease(
  client: S3Client,
  bucket: string,
  prefix: string,
  run: string,
): Promise<void> {
  if (!RUN_ID.test(run)) throw new Error(`'${run}' cannot name a lease.`);
  const key = leaseKey(prefix, run);
  try {
    await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
  } catch (error) {
    throw describeS3Error(error, `s3://${bucket}/${key}`);
  }
}

/** Reads a lease file; a string is the reason it is not one. */
export function parseLease(text: string): Lease | string {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return 'it is not JSON';
  }
  const l = value as Partial<Lease> | null;
  if (typeof l !== 'object' || l === null) return 'it is not a JSON object';
  if (typeof l.run !== 'string') return "it has no 'run'";
  if (typeof l.expiresAt !== 'string' || Number.isNaN(Date.parse(l.expiresAt)))
    return "its 'expiresAt' is not a date";
  if (!Array.isArray(l.sources) || !l.sources.every((s) => typeof s === 'string'))
    return "its 'sources' are not a list of keys";
  if (!Array.isArray(l.objects) || !l.objects.every((o) => typeof o === 'string' && SHA256.test(o)))
    return "its 'objects' are not a list of sha256";
  return {
    run: l.run,
    createdAt: typeof l.createdAt === 'string' ? l.createdAt : '',
    expiresAt: l.expiresAt,
    sources: l.sources,
    objects: l.objects,
  };
}

export interface LeaseReading {
  leases: LiveLease[];
  /**
   * Lease files that were listed and then gone before they could be read: their runs
   * finished (or gave up) just now, and what they published is not known from here.
   */
  vanished: string[];
}

/**
 * Every lease under the prefix that is live at `now`, with what `readLiveLeases` leaves out:
 * the leases that vanished between the listing and their reading.
 */
export async function readLeases(
  client: S3Client,
  bucket: string,
  prefix: string,
  now: Date,
): Promise<LeaseReading> {
  const listed = await listObjects(client, bucket, leasesPrefix(prefix));
  const read = await Promise.all(
    listed.map(async (o): Promise<LiveLease | 'vanished' | undefined> => {
      let text: string;
      try {
        const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: o.key }));
        text = (await res.Body?.transformToString('utf8')) ?? '';
      } catch (error) {
        if (isStatus(error, 404) || (error as Error).name === 'NoSuchKey') return 'vanished';
        throw describeS3Error(error, `s3://${bucket}/${o.key}`);
      }
      const lease = parseLease(text);
      if (typeof lease !== 'string') {
        return Date.parse(lease.expiresAt) > now.getTime() ? { ...lease, key: o.key } : undefined;
      }
      // Without a LastModified, nothing says when the garbage was written: it stays live.
      const written = o.lastModified?.getTime() ?? now.getTime();
      const until = new Date(written + UNREADABLE_LEASE_SECONDS * 1000);
      if (until.getTime() <= now.getTime()) return undefined;
      return {
        key: o.key,
        run: o.key.slice(leasesPrefix(prefix).length),
        createdAt: o.lastModified?.toISOString() ?? '',
        expiresAt: until.toISOString(),
        sources: [],
        objects: [],
        unreadable: lease,
      };
    }),
  );
  return {
    leases: read.filter((r): r is LiveLease => typeof r === 'object'),
    vanished: listed.filter((_, i) => read[i] === 'vanished').map((o) => o.key),
  };
}

/** The leases that protect objects at `now`; see `LiveLease.unreadable`. */
export async function readLiveLeases(
  client: S3Client,
  bucket: string,
  prefix: string,
  now: Date,
): Promise<LiveLease[]> {
  return (await readLeases(client, bucket, prefix, now)).leases;
}

export interface LeaseKeeperOptions {
  /** How long each write keeps the lease alive. Default: LEASE_TTL_SECONDS. */
  ttlSeconds?: number;
  /** `add` rewrites the lease at most this often; `flush` writes at once. Default: 30. */
  writeEverySeconds?: number;
  /** The lease stays at least this long in the bucket. Default: LEASE_MIN_HOLD_MS. */
  minHoldMs?: number;
  /** The clock that dates the lease (tests move it). */
  now?: () => Date;
}

/**
 * The lease of one backup run. `start` writes it before the run reads the previous manifest;
 * `add` records each object the run uploads or decides to reuse; `stop` removes it once the
 * snapshot is published (or the run gave up). An object is protected once a write that names
 * it is done: call `flush` before relying on an object that neither a source manifest nor the
 * sweep's grace period protects (one left by an earlier run that failed, for example).
 * The lease is also renewed on a timer, so that a job longer than the TTL stays protected.
 */
export class LeaseKeeper {
  private readonly ttlMs: number;
  private readonly writeEveryMs: number;
  private readonly minHoldMs: number;
  private readonly now: () => Date;
  private sources: string[] = [];
  private readonly objects = new Set<string>();
  private createdAt: Date | undefined;
  /** performance.now() when the first write began, and when the latest that succeeded began. */
  private firstWrite: number | undefined;
  private lastWritten: number | undefined;
  /** Writes one after the other, so that an older lease never overwrites a newer one. */
  private chain: Promise<void> = Promise.resolve();
  private pending: NodeJS.Timeout | undefined;
  private renewal: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly client: S3Client,
    private readonly bucket: string,
    private readonly prefix: string,
    readonly run: string,
    options: LeaseKeeperOptions = {},
  ) {
    if (!RUN_ID.test(run)) throw new Error(`'${run}' cannot name a lease.`);
    this.ttlMs = (options.ttlSeconds ?? LEASE_TTL_SECONDS) * 1000;
    this.writeEveryMs = (options.writeEverySeconds ?? 30) * 1000;
    this.minHoldMs = options.minHoldMs ?? LEASE_MIN_HOLD_MS;
    this.now = options.now ?? (() => new Date());
  }

  get key(): string {
    return leaseKey(this.prefix, this.run);
  }

  /** The lease as the next write will store it. */
  lease(): Lease {
    const now = this.now();
    return {
      run: this.run,
      createdAt: (this.createdAt ?? now).toISOString(),
      expiresAt: new Date(now.getTime() + this.ttlMs).toISOString(),
      sources: [...this.sources],
      objects: [...this.objects],
    };
  }

  /** Writes the lease naming `sources` (manifest keys whose objects the run may reuse). */
  async start(sources: string[]): Promise<void> {
    if (this.createdAt) throw new Error(`The lease ${this.key} is started already.`);
    this.createdAt = this.now();
    this.sources = [...sources];
    this.firstWrite = performance.now();
    await this.write();
    // Renewed well before it expires; a failed renewal is retried by the next one.
    const every = Math.min(this.ttlMs / 4, 2 ** 31 - 1);
    this.renewal = setInterval(() => void this.write().catch(warnRenewal(this.key)), every);
    this.renewal.unref();
  }

  /**
   * Records objects (sha256). The lease is rewritten at once if the last write is older than
   * `writeEverySeconds` or `flush` is set, otherwise within that time.
   */
  async add(shas: Iterable<string>, options: { flush?: boolean } = {}): Promise<void> {
    if (!this.createdAt) throw new Error(`The lease ${this.key} is not started.`);
    let added = false;
    for (const sha of shas) {
      if (!SHA256.test(sha)) throw new Error(`'${sha}' is not a sha256.`);
      if (!this.objects.has(sha)) {
        this.objects.add(sha);
        added = true;
      }
    }
    if (options.flush) return this.write();
    if (!added || this.pending) return;
    const since = performance.now() - (this.lastWritten ?? -Infinity);
    if (since >= this.writeEveryMs) return this.write();
    this.pending = setTimeout(() => {
      this.pending = undefined;
      void this.write().catch(warnRenewal(this.key));
    }, this.writeEveryMs - since);
    this.pending.unref();
  }

  /** Writes the lease now, with everything added so far. */
  flush(): Promise<void> {
    return this.write();
  }

  /**
   * Removes the lease. With `hold` (the default), first waits until the lease has been in the
   * bucket for `minHoldMs`: a run that published must not come and go between two of the
   * sweep's readings. A run that published nothing may pass `hold: false`.
   */
  async stop(options: { hold?: boolean } = {}): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.pending);
    clearInterval(this.renewal);
    await this.chain.catch(() => undefined);
    // A write that failed may still have landed: remove the lease whenever one was tried.
    if (this.firstWrite === undefined) return;
    const held = performance.now() - this.firstWrite;
    if ((options.hold ?? true) && held < this.minHoldMs) await sleep(this.minHoldMs - held);
    await removeLease(this.client, this.bucket, this.prefix, this.run);
  }

  /**
   * Ends the lease without waiting for its minimum hold: it is rewritten to expire once it
   * has been in the bucket for `minHoldMs`, and left for `removeExpiredLeases` to delete. A run
   * that published uses it, so that its job does not wait for the hold.
   */
  async release(): Promise<void> {
    if (this.stopped || this.firstWrite === undefined) return this.stop({ hold: false });
    clearTimeout(this.pending);
    clearInterval(this.renewal);
    const left = Math.max(0, this.minHoldMs - (performance.now() - this.firstWrite));
    await this.chain.catch(() => undefined);
    const lease = {
      ...this.lease(),
      expiresAt: new Date(this.now().getTime() + left).toISOString(),
    };
    this.stopped = true;
    await writeLease(this.client, this.bucket, this.prefix, lease);
  }

  private write(): Promise<void> {
    const next = this.chain
      .catch(() => undefined)
      .then(async () => {
        // After stop, a write would bring back the lease that stop removes.
        if (this.stopped) return;
        const started = performance.now();
        await writeLease(this.client, this.bucket, this.prefix, this.lease());
        this.lastWritten = started;
      });
    this.chain = next;
    return next;
  }
}

function warnRenewal(key: string): (error: unknown) => void {
  return (error) =>
    core.warning(
      `The lease ${key} could not be written: ${errorMessage(error)}. It is tried again; ` +
        `until then, the objects added since its last write are not protected from retention.`,
    );
}

/**
 * Deletes the leases that expired over an hour before `now` (released by runs that
 * published, or left by runners that vanished), and unreadable ones past their 24 hours.
 */
export async function removeExpiredLeases(
  client: S3Client,
  bucket: string,
  prefix: string,
  now: Date,
): Promise<number> {
  const listed = await listObjects(client, bucket, leasesPrefix(prefix));
  const live = new Set(
    (await readLeases(client, bucket, prefix, new Date(now.getTime() - 3600_000))).leases.map(
      (l) => l.key,
    ),
  );
  const gone = listed.filter((o) => !live.has(o.key)).map((o) => o.key);
  if (gone.length > 0) await deleteKeys(client, bucket, gone);
  return gone.length;
}
