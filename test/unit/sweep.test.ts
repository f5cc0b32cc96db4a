/**
 * The sweep of tree objects against a real MinIO: what a retained or permanent manifest or a
 * live lease names stays, old garbage goes, young objects stay, anything unreadable stops the
 * sweep, and a run that starts or publishes while the sweep runs keeps its objects.
 * "Old" comes from an injected `now` in the future, not from waiting.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { writeJson } from '../../src/s3/store.ts';
import {
  TREE_FORMAT,
  leaseKey,
  objectKey,
  objectsPrefix,
  treeFiles,
  type Lease,
  type TreeManifest,
} from '../../src/tree/layout.ts';
import { LeaseKeeper, readLiveLeases, removeLease, writeLease } from '../../src/tree/lease.ts';
import { journalKey, type Journal } from '../../src/tree/store.ts';
import { sweepObjects, type SweepOptions, type SweepResult } from '../../src/tree/sweep.ts';
import {
  MARK_MARGIN_MS,
  markSweep,
  removeOldSweepMarks,
  SWEEP_MAX_MS,
  sweepsSince,
} from '../../src/tree/sweep-marks.ts';
import { startMinio, type S3Server } from '../bed/minio.js';

const PREFIX = 'MainNet';
const PERMANENT = 'Permanent/MainNet';
const HOUR = 3_600_000;
/** Far enough ahead that every object written by a test is older than the grace period. */
const LATER = new Date(Date.now() + 30 * 24 * HOUR);

let s3: S3Server;
let client: S3Client;
let buckets = 0;

async function newBucket(): Promise<string> {
  const bucket = `sweep-${++buckets}`;
  await s3.createBucket(bucket);
  return bucket;
}

/** Stores a small object under its sha256, as a tree backup does; returns the sha256. */
async function putObject(bucket: string, prefix = PREFIX): Promise<string> {
  const body = randomBytes(100 + Math.floor(Math.random() * 100));
  const sha = createHash('sha256').update(body).digest('hex');
  await client.send(
    new PutObjectCommand({ Bucket: bucket, Key: objectKey(prefix, sha), Body: body }),
  );
  return sha;
}

async function putObjects(bucket: string, n: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < n; i++) out.push(await putObject(bucket));
  return out;
}

/** A tree folder, named the way backup_list names a tree. */
function folder(prefix: string, height: number, date = '20250301'): string {
  return `${prefix}/${date}/MainNet_BH${height}_data-${date}_0100.tree`;
}

/** Publishes a manifest at `{folder}/manifest.json` that names `shas` (objects under PREFIX). */
async function putManifest(bucket: string, at: string, shas: string[]): Promise<string> {
  const manifest: TreeManifest = {
    format: TREE_FORMAT,
    key: at,
    entry: at.split('/').slice(-2).join('/'),
    nodeKind: 'goloop',
    blockHeight: 1000,
    objects: objectsPrefix(PREFIX),
    files: shas.map((sha256, i) => ({
      path: `db/table-${i}.ldb`,
      size: 150,
      sha256,
      tail: '0123456789abcdef',
      mode: 0o644,
    })),
    dirs: ['db'],
    bytes: 150 * shas.length,
    sent: { files: shas.length, bytes: 150 * shas.length },
    consistency: 'hardlink',
    source: { host: 'node.example', dataDir: '/data' },
    createdAt: new Date().toISOString(),
    actionVersion: 'test',
    timings: {},
  };
  const key = treeFiles(at).manifest;
  await writeJson(client, bucket, key, manifest);
  return key;
}

async function putText(bucket: string, key: string, text: string): Promise<void> {
  await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: text }));
}

function lease(run: string, expiresAt: Date, objects: string[], sources: string[] = []): Lease {
  return {
    run,
    createdAt: new Date().toISOString(),
    expiresAt: expiresAt.toISOString(),
    sources,
    objects,
  };
}

/** The sha256 of the objects left under PREFIX, sorted. */
async function stored(bucket: string): Promise<string[]> {
  return (await s3.listKeys(bucket, objectsPrefix(PREFIX))).map((k) =>
    k.slice(objectsPrefix(PREFIX).length),
  );
}

function sweep(
  bucket: string,
  now: Date,
  options: SweepOptions = {},
  graceSeconds?: number,
): Promise<SweepResult> {
  return sweepObjects(
    client,
    { bucket, prefix: PREFIX, permanentPrefix: PERMANENT, graceSeconds },
    now,
    options,
  );
}

const sorted = (a: string[]) => [...a].sort();

describe('sweep of tree objects against MinIO', () => {
  before(async () => {
    s3 = await startMinio();
    client = s3.client();
  });
  after(async () => {
    client?.destroy();
    await s3?.stop();
  });

  it('keeps what the retained manifests name and deletes old objects nobody names', async () => {
    const bucket = await newBucket();
    const [a, b, c] = await putObjects(bucket, 3);
    const [d, e] = await putObjects(bucket, 2);
    await putManifest(bucket, folder(PREFIX, 100), [a!, b!]);
    await putManifest(bucket, folder(PREFIX, 200, '20250302'), [b!, c!]);
    // What else lives under the prefix is not an object and is never touched.
    await putText(bucket, `${PREFIX}/backup_list`, '20250302/x.tree\n');
    await putText(bucket, `${PREFIX}/objects/not-a-sha`, 'x');

    const r = await sweep(bucket, LATER);

    assert.deepEqual(await stored(bucket), sorted([a!, b!, c!, 'not-a-sha']));
    assert.equal(r.deleted, 2);
    assert.ok(r.deletedBytes >= 200 && r.deletedBytes < 400, String(r.deletedBytes));
    assert.equal(r.kept, 3);
    assert.equal(r.protectedByGrace, 0);
    assert.equal(r.protectedByLease, 0);
    assert.equal(r.blocked, undefined);
    assert.ok(!(await stored(bucket)).includes(d!) && !(await stored(bucket)).includes(e!));
    assert.equal(await s3.getText(bucket, `${PREFIX}/backup_list`), '20250302/x.tree\n');
  });

  it('keeps objects nobody names while they are younger than the grace period', async () => {
    const bucket = await newBucket();
    const [a, young] = await putObjects(bucket, 2);
    await putManifest(bucket, folder(PREFIX, 100), [a!]);

    // With the default grace (24 h), an hour later the unnamed object is still kept.
    const r1 = await sweep(bucket, new Date(Date.now() + HOUR));
    assert.deepEqual(await stored(bucket), sorted([a!, young!]));
    assert.deepEqual([r1.deleted, r1.protectedByGrace], [0, 1]);

    // A day and an hour later it is garbage.
    const r2 = await sweep(bucket, new Date(Date.now() + 25 * HOUR));
    assert.deepEqual(await stored(bucket), [a]);
    assert.deepEqual([r2.deleted, r2.protectedByGrace], [1, 0]);
  });

  it('keeps the objects of a permanent copy whose snapshot retention removed', async () => {
    const bucket = await newBucket();
    const [a, b, gone] = await putObjects(bucket, 3);
    // Only the copy's small files remain; its objects stay under the prefix.
    await putManifest(bucket, folder(PERMANENT, 100), [a!, b!]);

    const r = await sweep(bucket, LATER);

    assert.deepEqual(await stored(bucket), sorted([a!, b!]));
    assert.equal(r.deleted, 1);
    assert.ok(!(await stored(bucket)).includes(gone!));
  });

  it('keeps what the journal of an unfinished run names; one it cannot read only warns', async () => {
    const bucket = await newBucket();
    const [resumed, lost, garbage] = await putObjects(bucket, 3);
    const journal: Journal = {
      run: 'failed-run',
      source: { host: 'node.example', dataDir: '/data' },
      updatedAt: new Date().toISOString(),
      files: [{ path: 'db/000001.ldb', size: 150, sha256: resumed!, tail: '0', mode: 0o644 }],
    };
    await writeJson(client, bucket, journalKey(PREFIX, 'failed-run'), journal);
    await putText(
      bucket,
      journalKey(PREFIX, 'cut-run'),
      `{"run": "cut-run", "files": [{"sha256": "${lost}"`,
    );

    const r = await sweep(bucket, LATER);

    assert.deepEqual(await stored(bucket), [resumed]);
    assert.equal(r.deleted, 2);
    assert.equal(r.blocked, undefined);
    assert.ok(!(await stored(bucket)).includes(garbage!));
  });

  it('keeps what a live lease names, directly and through its sources; not an expired one', async () => {
    const bucket = await newBucket();
    const [direct, viaSource, expired, garbage] = await putObjects(bucket, 4);
    // A source that is no longer listed (retention removed it) is read all the same.
    const source = await putManifest(bucket, folder('Removed', 100), [viaSource!]);
    // A run that resumes an unfinished one names its journal too; a gone one names nothing.
    const journal = journalKey(PREFIX, 'gone-run');
    await writeLease(
      client,
      bucket,
      PREFIX,
      lease('run-1', new Date(LATER.getTime() + HOUR), [direct!], [source, journal]),
    );
    await writeLease(
      client,
      bucket,
      PREFIX,
      lease('run-2', new Date(LATER.getTime() - HOUR), [expired!]),
    );

    const live = await readLiveLeases(client, bucket, PREFIX, LATER);
    assert.deepEqual(
      live.map((l) => l.run),
      ['run-1'],
    );

    const r = await sweep(bucket, LATER);

    assert.deepEqual(await stored(bucket), sorted([direct!, viaSource!]));
    assert.equal(r.protectedByLease, 2);
    assert.equal(r.deleted, 2);
    assert.equal(r.kept, 2);
    assert.equal(r.blocked, undefined);
    assert.ok(!(await stored(bucket)).some((s) => s === expired || s === garbage));
  });

  for (const [what, text] of [
    ['is not JSON', '{"format": "prep-snapshot-tree/1", "files": ['],
    ['has a format this version does not know', '{"format": "prep-snapshot-tree/9", "files": []}'],
    ['names a file without a sha256', `{"format": "${TREE_FORMAT}", "files": [{"path": "a"}]}`],
  ] as const) {
    it(`deletes nothing when a manifest ${what}, and names it`, async () => {
      const bucket = await newBucket();
      const [a] = await putObjects(bucket, 1);
      await putObjects(bucket, 3);
      await putManifest(bucket, folder(PREFIX, 100), [a!]);
      const bad = treeFiles(folder(PERMANENT, 50, '20240101')).manifest;
      await putText(bucket, bad, text);
      const before = await stored(bucket);

      const r = await sweep(bucket, LATER);

      assert.deepEqual(await stored(bucket), before);
      assert.equal(r.deleted, 0);
      assert.equal(r.kept, 4);
      assert.match(r.blocked ?? '', new RegExp(bad.replace(/\./g, '\\.')));
    });
  }

  it('deletes nothing while an unreadable lease may still be live (24 h after it was written)', async () => {
    const bucket = await newBucket();
    await putObjects(bucket, 2);
    await putText(bucket, leaseKey(PREFIX, 'broken'), 'not a lease');
    const grace = 60;

    const r1 = await sweep(bucket, new Date(Date.now() + 23 * HOUR), {}, grace);
    assert.equal((await stored(bucket)).length, 2);
    assert.equal(r1.deleted, 0);
    assert.match(r1.blocked ?? '', /leases\/broken\.json/);

    const r2 = await sweep(bucket, new Date(Date.now() + 25 * HOUR), {}, grace);
    assert.equal((await stored(bucket)).length, 0);
    assert.equal(r2.deleted, 2);
    assert.equal(r2.blocked, undefined);
  });

  it('keeps what a run that starts after the sweep read the leases names, through each batch', async () => {
    const bucket = await newBucket();
    const all = await putObjects(bucket, 6);
    let started = false;
    const r = await sweep(bucket, LATER, {
      batchSize: 2,
      hooks: {
        // A backup starts while the sweep works: its lease names one object of the batch
        // about to be deleted and a manifest (not listed) that names the other.
        beforeBatch: async (keys) => {
          if (started) return;
          started = true;
          const [first, second] = keys.map((k) => k.slice(objectsPrefix(PREFIX).length));
          const source = await putManifest(bucket, folder('Elsewhere', 7), [second!]);
          await writeLease(
            client,
            bucket,
            PREFIX,
            lease('late-run', new Date(LATER.getTime() + HOUR), [first!], [source]),
          );
        },
      },
    });

    assert.equal(r.deleted, 4);
    assert.equal(r.protectedByLease, 2);
    const left = await stored(bucket);
    assert.equal(left.length, 2);
    assert.ok(left.every((s) => all.includes(s)));
  });

  it('reads the leases again when the delete could not follow its reading at once', async () => {
    const bucket = await newBucket();
    const all = await putObjects(bucket, 3);
    let reads = 0;
    const r = await sweep(bucket, LATER, {
      windowMs: 100,
      hooks: {
        // A lease lands just after the reading, and the delete is late: the sweep must look again.
        afterLeaseRead: async () => {
          if (reads++ > 0) return;
          await writeLease(
            client,
            bucket,
            PREFIX,
            lease('late-run', new Date(LATER.getTime() + HOUR), all),
          );
          await sleep(300);
        },
      },
    });

    assert.ok(reads >= 2, `${reads} readings`);
    assert.deepEqual(await stored(bucket), sorted(all));
    assert.equal(r.deleted, 0);
    assert.equal(r.protectedByLease, 3);
  });

  it('keeps what a run published while the sweep marked, though its lease is gone', async () => {
    const bucket = await newBucket();
    const [reused, garbage] = await putObjects(bucket, 2);
    const holdMs = 400;
    const r = await sweep(bucket, LATER, {
      leaseMinHoldMs: holdMs,
      hooks: {
        // A whole backup between the sweep's listing of manifests and its first delete: it
        // reuses an old object that no manifest named, publishes, and removes its lease.
        afterMark: async () => {
          const run = lease('quick-run', new Date(LATER.getTime() + HOUR), [reused!]);
          await writeLease(client, bucket, PREFIX, run);
          await putManifest(bucket, folder(PREFIX, 300), [reused!]);
          await sleep(holdMs + 50);
          await removeLease(client, bucket, PREFIX, run.run);
        },
      },
    });

    assert.deepEqual(await stored(bucket), [reused]);
    assert.equal(r.deleted, 1);
    assert.ok(!(await stored(bucket)).includes(garbage!));
  });

  it('LeaseKeeper: writes on start, records objects at most every N seconds or on flush, removes on stop', async () => {
    const bucket = await newBucket();
    const [reused, sent, later, garbage] = await putObjects(bucket, 4);
    const source = await putManifest(bucket, folder('Removed', 100), [reused!]);
    const keeper = new LeaseKeeper(client, bucket, PREFIX, 'run-42-1', {
      writeEverySeconds: 1,
      minHoldMs: 2500,
      now: () => LATER,
    });
    const leased = async () => (await readLiveLeases(client, bucket, PREFIX, LATER))[0];

    const t0 = Date.now();
    await keeper.start([source]);
    assert.deepEqual((await leased())?.sources, [source]);
    assert.equal(
      Date.parse((await leased())!.expiresAt) - LATER.getTime(),
      7 * HOUR,
      'expiry: a GitHub job (6 h) and an hour',
    );

    await keeper.add([sent!]);
    assert.deepEqual((await leased())?.objects, [], 'written within the interval, not at once');
    await sleep(1200);
    assert.deepEqual((await leased())?.objects, [sent]);
    await keeper.add([later!], { flush: true });
    assert.deepEqual(sorted((await leased())!.objects), sorted([sent!, later!]));

    const r = await sweep(bucket, LATER);
    assert.deepEqual(await stored(bucket), sorted([reused!, sent!, later!]));
    assert.equal(r.protectedByLease, 3);
    assert.ok(!(await stored(bucket)).includes(garbage!));

    await keeper.stop();
    assert.ok(Date.now() - t0 >= 2500, 'held at least minHoldMs');
    assert.deepEqual(await s3.listKeys(bucket, `${PREFIX}/leases/`), []);
    await keeper.flush();
    assert.deepEqual(await s3.listKeys(bucket, `${PREFIX}/leases/`), [], 'no write after stop');

    await sweep(bucket, LATER);
    assert.deepEqual(await stored(bucket), [], 'nothing is protected once the lease is gone');
  });

  it('writes its mark before it reads a lease, and sends no delete request once its time is out', async () => {
    const bucket = await newBucket();
    const [kept] = await putObjects(bucket, 1);
    await putManifest(bucket, folder(PREFIX, 100), [kept!]);
    await putObjects(bucket, 3);
    let marks: string[] = [];
    const r = await sweep(bucket, LATER, {
      // 60 s are kept for the request itself: half a second of budget is left, and spent here.
      maxMs: 60_500,
      hooks: {
        afterMark: async () => {
          marks = await s3.listKeys(bucket, `${PREFIX}/sweeps/`);
          await sleep(600);
        },
      },
    });
    assert.equal(marks.length, 1, 'the mark is in the bucket while the sweep marks');
    assert.match(r.blocked ?? '', /the sweep has run for .* the next retention goes on/);
    assert.equal(r.deleted, 0);
    assert.equal((await stored(bucket)).length, 4);
    // With its time, the next sweep deletes the three, and leaves a mark of its own.
    const r2 = await sweep(bucket, LATER);
    assert.equal(r2.deleted, 3);
    assert.equal((await s3.listKeys(bucket, `${PREFIX}/sweeps/`)).length, 2);
  });

  it('tells a backup which marks are recent enough to matter, and retention drops old ones', async () => {
    const bucket = await newBucket();
    const now = Date.now();
    const mark = await markSweep(client, bucket, PREFIX, new Date(now));
    // A run whose lease was written now, or up to SWEEP_MAX_MS and the margin later, must check.
    assert.deepEqual(await sweepsSince(client, bucket, PREFIX, now), [mark]);
    assert.deepEqual(
      await sweepsSince(client, bucket, PREFIX, now + SWEEP_MAX_MS + MARK_MARGIN_MS - 60_000),
      [mark],
    );
    // Later than that the sweep can no longer delete anything: the run needs no check.
    assert.deepEqual(
      await sweepsSince(client, bucket, PREFIX, now + SWEEP_MAX_MS + MARK_MARGIN_MS + 60_000),
      [],
    );
    assert.equal(
      await removeOldSweepMarks(client, bucket, PREFIX, new Date(now + 2 * 24 * HOUR)),
      0,
    );
    assert.equal(
      await removeOldSweepMarks(client, bucket, PREFIX, new Date(now + 8 * 24 * HOUR)),
      1,
    );
    assert.deepEqual(await s3.listKeys(bucket, `${PREFIX}/sweeps/`), []);
  });
});
