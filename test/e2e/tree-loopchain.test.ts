/**
 * Tree snapshots of an ICON 1 (loopchain) node, end to end on the simulator: `format: tree`
 * backs up the block DB under its placeholder name, a second backup after the node has moved
 * on sends only what changed, a restore onto a fresh host renames the block DB for its IP and
 * the node reaches the height, a restore onto a host that holds the snapshot takes its tables
 * from the data dir, and retention removes an expired tree, its sweep keeping what the
 * remaining trees name. With `consistency: stop` the tree is read while the node is stopped.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  check,
  errors,
  restoreRun,
  runMain,
  said,
  stagingLeft,
  target,
  type Target,
} from './restore-kit.js';
import { STATE_DBS } from '../sim/chain.js';
import { startWorld, type World } from './world.js';

interface Manifest {
  objects: string;
  files: Array<{ path: string; sha256: string; size: number }>;
  sent: { files: number; bytes: number; ahead?: { files: number; bytes: number } };
  blockHeight: number;
  placeholder?: string;
}

describe('tree snapshots of a loopchain node', () => {
  let world: World;
  const started: Target[] = [];
  const keys: string[] = [];
  before(async () => {
    world = await startWorld({ blocks: 600 });
  });
  after(async () => {
    for (const t of started) await t.stop().catch(() => undefined);
    await world?.close();
  });

  const manifestOf = async (key: string): Promise<Manifest> =>
    JSON.parse(await world.s3.getText(world.bucket, `${key}/manifest.json`)) as Manifest;
  const backup = (extra: Record<string, string> = {}) =>
    runMain(world, world.inputs({ format: 'tree', 'permanent-copy': 'false', ...extra }));

  it('backs up the block DB under its placeholder; a second backup, over ssh2 and verified, sends only what changed', async () => {
    const first = await backup();
    assert.equal(first.code, 0, said(first));
    keys.push(first.outputs.key as string);
    assert.match(keys[0]!, /\.tree$/);
    const a = await manifestOf(keys[0]!);
    assert.ok(a.files.some((f) => f.path.startsWith('.storage/db_CHANGEIP:7100_icon_dex/')));
    assert.ok(a.files.some((f) => f.path.startsWith('.score_data/')));
    assert.ok(!a.files.some((f) => /db_\d+\.\d+\.\d+\.\d+:7100/.test(f.path)), 'no IP in a path');
    // The node writes on; the sim makes new tables and rewrites its MANIFEST and journal.
    await new Promise((r) => setTimeout(r, 3000));
    // The files come over the other transport: ssh2's channel, read as a stream of chunks.
    // With verify: what it sent is read back before it publishes.
    const second = await backup({ 'ssh-transport': 'ssh2', verify: 'true' });
    assert.equal(second.code, 0, said(second));
    assert.match(second.stdout, /archive bytes travel over ssh2/);
    assert.match(said(second), /every object read back matches its sha256/);
    keys.push(second.outputs.key as string);
    const b = await manifestOf(keys[1]!);
    assert.ok(b.blockHeight > a.blockHeight);
    // The new tables went up while the node ran; after the freeze, only files the first tree
    // does not hold. (The simulator compacts fast: some tables sent ahead were gone by the
    // freeze, and are in neither tree.)
    assert.ok(b.sent.ahead && b.sent.ahead.files > 0, JSON.stringify(b.sent));
    const held = new Set(a.files.map((f) => f.sha256));
    const fresh = b.files.filter((f) => !held.has(f.sha256)).reduce((s, f) => s + f.size, 0);
    const afterFreeze = b.sent.bytes - b.sent.ahead.bytes;
    assert.ok(afterFreeze <= fresh, `${afterFreeze} bytes sent after the freeze, ${fresh} new`);
    assert.ok(afterFreeze < b.files.reduce((s, f) => s + f.size, 0) / 2, JSON.stringify(b.sent));
    assert.match(said(second), /[1-9]\d* files proven unchanged .* and the send ahead of the stop/);
  });

  it('restores a tree onto a fresh host: the block DB is named for its IP, the node reaches the height', async () => {
    const t = await target(join(world.root, 'fresh-tree/app/prep'));
    started.push(t);
    const run = await restoreRun(world, t, { 'node-ip': '10.20.30.41' });
    assert.equal(run.main.code, 0, said(run.main));
    assert.equal(run.main.outputs.key, keys[1]);
    const height = (await manifestOf(keys[1]!)).blockHeight;
    assert.ok(Number(run.main.outputs['height-reached']) >= height);
    assert.deepEqual(readdirSync(join(t.dataDir, '.storage')), ['db_10.20.30.41:7100_icon_dex']);
    await t.stop();
    const c = await check(t.dataDir);
    assert.equal(c.ok, true);
    assert.ok(c.height >= height);
    assert.deepEqual(stagingLeft(join(t.home, 'data')), []);
  });

  it('restored onto a host that holds the snapshot already, takes every table from its data dir, the block DB by its IP', async () => {
    const t = await target(join(world.root, 'again-tree/app/prep'));
    started.push(t);
    // First the snapshot as it is: the node is not started, so LevelDB compacts nothing.
    const first = await restoreRun(world, t, { 'node-ip': '10.20.30.42', 'start-node': 'false' });
    assert.equal(first.main.code, 0, said(first.main));
    assert.doesNotMatch(said(first.main), /taken from the data dir/);
    const run = await restoreRun(world, t, { 'node-ip': '10.20.30.42' });
    assert.equal(run.main.code, 0, said(run.main));
    const m = await manifestOf(keys[1]!);
    const tables = m.files.filter((f) => f.path.endsWith('.ldb'));
    assert.ok(
      tables.some((f) => f.path.startsWith('.storage/db_CHANGEIP:7100_icon_dex/')),
      'block DB tables',
    );
    assert.match(said(run.main), new RegExp(`, ${tables.length} taken from the data dir`));
    const fetched = Number(/(\d+) files fetched/.exec(said(run.main))?.[1]);
    assert.equal(fetched, m.files.length - tables.length, 'only the files that are not tables');
    await t.stop();
    const c = await check(t.dataDir);
    assert.equal(c.ok, true);
    assert.ok(c.height >= m.blockHeight);
  });

  it('verify with deep reads every object back: one whose bytes changed, at the same size, fails it', async () => {
    const m = await manifestOf(keys[1]!);
    const good = await runMain(
      world,
      world.inputs({ mode: 'verify', snapshot: keys[1]!, deep: 'true' }),
    );
    assert.equal(good.code, 0, said(good));
    assert.match(said(good), /every object read back matches its sha256/);
    const { GetObjectCommand, PutObjectCommand } = await import('@aws-sdk/client-s3');
    const file = m.files.find((f) => f.path.endsWith('.ldb') && f.size > 1024)!;
    const key = `${m.objects}${file.sha256}`;
    const s3 = world.s3.client();
    const original = Buffer.from(
      await (
        await s3.send(new GetObjectCommand({ Bucket: world.bucket, Key: key }))
      ).Body!.transformToByteArray(),
    );
    const damaged = Buffer.from(original);
    damaged[damaged.length >> 1] = (damaged[damaged.length >> 1]! + 1) & 0xff;
    await s3.send(new PutObjectCommand({ Bucket: world.bucket, Key: key, Body: damaged }));
    try {
      const shallow = await runMain(world, world.inputs({ mode: 'verify', snapshot: keys[1]! }));
      assert.equal(shallow.code, 0, 'the size alone still matches');
      const bad = await runMain(
        world,
        world.inputs({ mode: 'verify', snapshot: keys[1]!, deep: 'true' }),
      );
      assert.notEqual(bad.code, 0, said(bad));
      assert.match(
        said(bad),
        /1 objects do not match their sha256 .*the stored snapshot is damaged/,
      );
    } finally {
      await s3.send(new PutObjectCommand({ Bucket: world.bucket, Key: key, Body: original }));
    }
  });

  // That the sweep deletes old objects no tree names is tested with an injected clock against
  // MinIO in test/unit/sweep.test.ts: here every object is younger than its grace period.
  it('retention removes an expired tree; its sweep keeps every object a remaining tree names', async () => {
    // The first tree, dated long ago: it expires at the next backup.
    const old = keys[0]!.replace(/\/(\d{8})\/(.*)_data-\d{8}_/, '/20200101/$2_data-20200101_');
    const { CopyObjectCommand } = await import('@aws-sdk/client-s3');
    for (const f of ['manifest.json', 'index.txt', 'checksum.json']) {
      await world.s3.client().send(
        new CopyObjectCommand({
          Bucket: world.bucket,
          Key: `${old}/${f}`,
          CopySource: `${world.bucket}/${keys[0]}/${f}`,
        }),
      );
    }
    const run = await runMain(
      world,
      world.inputs({ format: 'tree', 'permanent-copy': 'false', 'retention-days': '30' }),
    );
    assert.equal(run.code, 0, said(run));
    assert.match(said(run), new RegExp(`Removed ${old.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
    assert.deepEqual(await world.keys(`${old}/`), []);
    assert.match(said(run), /Objects: \d+ no longer named by any snapshot removed/);
    // Every object the remaining trees name is still there (the sweep kept them; the young
    // objects that nothing names are kept by its grace period).
    const stored = new Set(await world.keys('PRep/objects/'));
    for (const key of [...keys, run.outputs.key as string]) {
      for (const f of (await manifestOf(key)).files)
        assert.ok(stored.has(`PRep/objects/${f.sha256}`), `${key}: ${f.path}`);
    }
    assert.ok(existsSync(world.root));
    assert.equal(errors(run), '');

    // That sweep left its mark: the next backup cannot rely on its lease alone, and checks.
    assert.equal((await world.keys('PRep/sweeps/')).length, 1);
    const next = await runMain(world, world.inputs({ format: 'tree', 'permanent-copy': 'false' }));
    assert.equal(next.code, 0, said(next));
    assert.match(
      said(next),
      /A sweep of objects may have run while this run started \(PRep\/sweeps\//,
    );
    assert.match(said(next), /All \d+ objects are stored\./);
  });
  it('leaves out the tables of a compaction the node was killed in: the copy is listed again once they are gone', async () => {
    world.node.setStopMode('kill-mid-compaction');
    try {
      const run = await backup();
      assert.equal(run.code, 0, said(run));
      assert.match(said(run), /[1-9]\d* leftover table\(s\) of an interrupted compaction left out/);
      const killed = world.node
        .events()
        .filter((e) => e.event === 'killed')
        .at(-1) as unknown as { orphan_tables?: Record<string, string[]> };
      const folders: Record<string, string> = {
        block: '.storage/db_CHANGEIP:7100_icon_dex',
        ...Object.fromEntries(STATE_DBS.map((d) => [d.name, d.rel])),
      };
      const orphans = Object.entries(killed?.orphan_tables ?? {}).flatMap(([db, tables]) =>
        tables.map((t) => `${folders[db]}/${t}`),
      );
      assert.ok(orphans.length > 0, 'the stop left tables the MANIFEST does not list');
      const paths = new Set((await manifestOf(run.outputs.key as string)).files.map((f) => f.path));
      assert.ok([...paths].some((p) => p.startsWith(`${folders.block}/`)));
      for (const o of orphans) assert.ok(!paths.has(o), `${o} is not in the tree`);
      assert.equal((await world.node.status()).running, true);
    } finally {
      world.node.setStopMode('graceful');
    }
  });

  it('with consistency: stop, reads the tree while the node is stopped and starts it before publishing; the tree restores', async () => {
    const before = world.node.events().length;
    const run = await backup({ consistency: 'stop' });
    assert.equal(run.code, 0, said(run));
    assert.doesNotMatch(run.stdout, /Stop, freeze, start/);
    const key = run.outputs.key as string;
    const m = await manifestOf(key);
    // One stop and one start of the node, the start after the files were read.
    const events = world.node
      .events()
      .slice(before)
      .map((e) => e.event)
      .filter((e) => e === 'stopped' || e === 'started');
    assert.deepEqual(events, ['stopped', 'started']);
    assert.equal((await world.node.status()).running, true);
    assert.ok(m.files.some((f) => f.path.startsWith('.storage/db_CHANGEIP:7100_icon_dex/')));
    assert.equal((await world.backupList()).includes(key.replace(/^PRep\//, '')), true);

    const t = await target(join(world.root, 'stopped-tree/app/prep'));
    started.push(t);
    const restored = await restoreRun(world, t, { 'node-ip': '10.20.30.43', snapshot: key });
    assert.equal(restored.main.code, 0, said(restored.main));
    assert.equal(restored.main.outputs.key, key);
    await t.stop();
    const c = await check(t.dataDir);
    assert.equal(c.ok, true);
    assert.ok(c.height >= m.blockHeight);
  });
});
