/**
 * Restore, end to end: the packaged action under Node 24 streams a snapshot that it backed up
 * from MinIO over a real sshd into a staging folder beside the data dir, swaps it in, starts
 * the simulated node and waits for the snapshot's height.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, rmSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { isIpv4 } from '../../src/input-values.js';
import {
  check,
  errors,
  restoreRun,
  runMain,
  said,
  stagingLeft,
  target,
  treeHash,
  type Target,
} from './restore-kit.js';
import { startNode, startWorld, type SimNode, type World } from './world.js';

describe('restore', () => {
  let world: World;
  const snaps: Array<{ key: string; height: number }> = [];
  const started: Array<Target | SimNode> = [];
  before(async () => {
    world = await startWorld({ blocks: 600 });
    for (let i = 0; i < 2; i++) {
      const run = await runMain(world, world.inputs({ 'permanent-copy': 'false' }));
      assert.equal(run.code, 0, said(run));
      snaps.push({ key: run.outputs.key as string, height: Number(run.outputs['block-height']) });
    }
    assert.notEqual(snaps[0]!.height, snaps[1]!.height);
  });
  after(async () => {
    for (const n of started) await n.stop().catch(() => undefined);
    await world?.close();
  });

  /** A stopped node with data of its own (the sim's init), for a restore over it. */
  async function stoppedNode(name: string): Promise<{ node: SimNode; t: Target }> {
    const node = await startNode(world.root, { name, blocks: 200, ip: '10.9.8.7' });
    started.push(node);
    await node.stop();
    const t = await target(node.home, node.port);
    return { node, t };
  }

  it('provisions a fresh host: creates the dirs, renames the block DB for the node IP, the node reaches the height', async () => {
    const t = await target(join(world.root, 'fresh-a/app/prep'));
    started.push(t);
    assert.equal(existsSync(join(world.root, 'fresh-a')), false);
    const run = await restoreRun(world, t, { 'node-ip': '10.20.30.40' });
    assert.equal(run.main.code, 0, said(run.main));
    const latest = snaps[1]!;
    assert.equal(run.main.outputs.key, latest.key);
    assert.equal(run.main.outputs['block-height'], String(latest.height));
    assert.ok(
      Number(run.main.outputs['height-reached']) >= latest.height,
      run.main.outputs['height-reached'],
    );
    const status = await t.status();
    assert.equal(status.running, true);
    assert.ok((status.height ?? 0) >= latest.height);
    assert.deepEqual(readdirSync(join(t.dataDir, '.storage')), ['db_10.20.30.40:7100_icon_dex']);
    await t.stop();
    const c = await check(t.dataDir);
    assert.equal(c.ok, true);
    assert.ok(c.height >= latest.height);
    assert.deepEqual(stagingLeft(join(t.home, 'data')), []);
    assert.match(run.main.summary, /restore/);
    // 'download-on' at its default: this host reaches MinIO, so it reads the archive itself,
    // and the sha256 it took is the manifest's.
    assert.match(run.main.stdout, /read from S3 by the host itself/);
    assert.match(run.main.stdout, /read by the host from S3 and extracted in/);
    assert.match(run.main.summary, /read by the host, decompressed by/);
    const stored = JSON.parse(
      await world.s3.getText(world.bucket, `_prep-snapshot/${latest.key}.json`),
    ) as { sha256: string };
    assert.equal(run.main.outputs.sha256, stored.sha256);
    // Nothing to keep on a fresh host.
    assert.deepEqual(
      readdirSync(join(t.home, 'data')).filter((n) => n.includes('.prev-')),
      [],
    );
  });

  it('restores a broken node, keeps the previous data dir; with keep-previous false it is removed', async () => {
    const { node, t } = await stoppedNode('broken');
    // Break it: the block DB loses its CURRENT file and the state DB a table.
    const blockDb = join(node.dataDir, `.storage/db_${node.ip}:7100_icon_dex`);
    unlinkSync(join(blockDb, 'CURRENT'));
    const broken = treeHash(node.dataDir);
    const run = await restoreRun(world, t, { 'node-ip': node.ip });
    assert.equal(run.main.code, 0, said(run.main));
    assert.equal((await t.status()).running, true);
    const data = join(node.home, 'data');
    const prev = readdirSync(data).filter((n) => n.startsWith('loopchain.prev-'));
    assert.equal(prev.length, 1, readdirSync(data).join(' '));
    assert.equal(treeHash(join(data, prev[0]!)), broken, 'the previous data dir is kept as it was');
    assert.deepEqual(stagingLeft(data), []);

    // Again, over the running node (stop-node: true), removing the previous data dir this time.
    const again = await restoreRun(world, t, {
      'node-ip': node.ip,
      'stop-node': 'true',
      'keep-previous': 'false',
    });
    assert.equal(again.main.code, 0, said(again.main));
    assert.deepEqual(
      readdirSync(data).filter((n) => n.startsWith('loopchain.prev-')),
      prev,
      'no new .prev- dir',
    );
    assert.match(again.main.stdout, /Removed .*loopchain\.prev-/);
    assert.equal((await t.status()).running, true);
    await t.stop();
    assert.equal((await check(node.dataDir)).ok, true);
  });

  it('refuses a running node with a clear message, and leaves it running and untouched', async () => {
    const node = await startNode(world.root, { name: 'running', blocks: 200, ip: '10.9.8.6' });
    started.push(node);
    const t = await target(node.home, node.port);
    // Only the process is there: its peer API does not answer (a syncing node may not).
    const pidFile = join(node.home, 'node.pid');
    assert.ok(existsSync(pidFile));
    const run = await restoreRun(world, t, {
      'node-ip': node.ip,
      'peer-url': 'http://127.0.0.1:9/none',
    });
    assert.notEqual(run.main.code, 0);
    assert.match(
      errors(run.main),
      /is running \(process .*prep-node\.ts daemon.*\)\. Stop it first, or set 'stop-node: true'/,
    );
    assert.equal((await node.status()).running, true);
    assert.deepEqual(
      readdirSync(join(node.home, 'data')).filter((n) => n !== 'loopchain'),
      [],
    );
    // And by its peer API.
    const byApi = await restoreRun(world, t, { 'node-ip': node.ip });
    assert.notEqual(byApi.main.code, 0);
    assert.match(errors(byApi.main), /is running \(its peer API answers, block height \d+\)/);
    await node.stop();
  });

  it('chooses the snapshot by date, by block height and by key', async () => {
    const [first, second] = snaps as [
      { key: string; height: number },
      { key: string; height: number },
    ];
    const date = /\/(\d{8})\//.exec(second.key)![1]!;
    const cases: Array<[string, string]> = [
      [date, second.key],
      [`BH${first.height}`, first.key],
      [String(second.height), second.key],
      [first.key, first.key],
      [first.key.replace(/^PRep\//, ''), first.key],
    ];
    for (const [i, [wanted, key]] of cases.entries()) {
      const t = await target(join(world.root, `choose-${i}/prep`));
      const run = await restoreRun(world, t, {
        snapshot: wanted,
        'node-ip': '10.1.1.1',
        'start-node': 'false',
      });
      assert.equal(run.main.code, 0, said(run.main));
      assert.equal(run.main.outputs.key, key, wanted);
      assert.equal(run.main.outputs['height-reached'], undefined);
      assert.deepEqual(readdirSync(join(t.dataDir, '.storage')), ['db_10.1.1.1:7100_icon_dex']);
      rmSync(t.home, { recursive: true, force: true });
    }
    const none = await restoreRun(world, await target(join(world.root, 'choose-x/prep')), {
      snapshot: 'BH1',
      'node-ip': '10.1.1.1',
    });
    assert.notEqual(none.main.code, 0);
    assert.match(errors(none.main), /No snapshot .* matches block height 1; the newest is /);
  });

  it('finds the node IP on the host when node-ip is not given', async () => {
    const t = await target(join(world.root, 'detect/prep'));
    const run = await restoreRun(world, t, { 'start-node': 'false' });
    assert.equal(run.main.code, 0, said(run.main));
    const dirs = readdirSync(join(t.dataDir, '.storage'));
    assert.equal(dirs.length, 1);
    const ip = /^db_(.+):7100_icon_dex$/.exec(dirs[0]!)?.[1] ?? '';
    assert.ok(isIpv4(ip), dirs[0]);
    assert.notEqual(ip, 'CHANGEIP');
  });

  it('rolls back to the previous data dir when the node does not come up, and fails saying so', async () => {
    const { node, t } = await stoppedNode('unhealthy');
    const before = treeHash(node.dataDir);
    const run = await restoreRun(world, t, {
      'node-ip': node.ip,
      'start-command': 'true',
      'health-timeout': '3s',
    });
    assert.notEqual(run.main.code, 0);
    const message = errors(run.main);
    assert.match(message, /did not reach block height \d+ within/);
    assert.match(message, /previous data dir was put back in place/);
    assert.equal(treeHash(node.dataDir), before, 'the previous data is back, as it was');
    const data = join(node.home, 'data');
    assert.equal(readdirSync(data).filter((n) => n.startsWith('loopchain.failed-')).length, 1);
    assert.deepEqual(
      readdirSync(data).filter((n) => n.startsWith('loopchain.prev-')),
      [],
    );
    assert.deepEqual(stagingLeft(data), []);
    assert.equal((await t.status()).running, false);
  });
});
