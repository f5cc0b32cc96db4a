/**
 * The run's hold on the node, end to end: the watchdog on the host never acts while the run
 * still needs the node down, and when it has acted, the run touches nothing that assumed the
 * node down and fails saying what happened. A slow S3 is a throttling proxy in front of MinIO.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startCutProxy, type CutProxy } from '../bed/cut-proxy.js';
import { downtimes } from '../sim/chain.js';
import {
  check,
  errors,
  getBytes,
  restoreRun,
  runBoth,
  runMain,
  said,
  stagingLeft,
  target,
  type Target,
} from './restore-kit.js';
import { startNode, startWorld, type SimNode, type World } from './world.js';

/** Everything the watchdog of a run leaves beside a data dir. */
function watchdogFiles(dataParent: string): string[] {
  return readdirSync(dataParent).filter((n) => n.startsWith('.prep-snapshot-watchdog-'));
}

describe('the run holds the node; the watchdog never acts under it', () => {
  let world: World;
  let key: string;
  let archiveBytes: number;
  let slowS3: CutProxy;
  const nodes: SimNode[] = [];

  before(async () => {
    world = await startWorld({ blocks: 400 });
    const run = await runMain(world, world.inputs({ 'permanent-copy': 'false' }));
    assert.equal(run.code, 0, said(run));
    key = run.outputs.key as string;
    archiveBytes = (await getBytes(world, key)).length;
    // The archive takes about 15 s through it, past the shortest 'max-downtime' (10 s).
    slowS3 = await startCutProxy({
      targetPort: world.s3.port,
      bytesPerSecond: Math.ceil(archiveBytes / 15),
    });
  });
  after(async () => {
    for (const n of nodes) await n.stop().catch(() => undefined);
    await slowS3?.stop();
    await world?.close();
  });

  /** A node that runs, with data of its own, to restore over. */
  async function runningVictim(name: string): Promise<{ node: SimNode; t: Target }> {
    const node = await startNode(world.root, { name, blocks: 150, ip: '10.9.8.7' });
    nodes.push(node);
    return { node, t: await target(node.home, node.port) };
  }

  it('a restore that streams longer than max-downtime: the node serves on its data until the swap', async () => {
    const { node, t } = await runningVictim('slow-s3');
    const since = Date.now();
    const run = await restoreRun(world, t, {
      'node-ip': node.ip,
      endpoint: `http://127.0.0.1:${slowS3.port}`,
      // The proxy caps each connection: one range at a time keeps the stream as slow as the
      // premise needs (8 ranges brought it to 9.4 s once, under max-downtime).
      'download-connections': '1',
      'max-downtime': '10s',
      'stop-node': 'true',
      'keep-previous': 'false',
    });
    const log = said(run.main);
    assert.equal(run.main.code, 0, log);
    // The host reads the archive itself through the same proxy (download-on: auto).
    const streamed = Number(
      /(?:streamed|read by the host from S3) and extracted in ([\d.]+) s/.exec(log)?.[1] ?? '0',
    );
    assert.ok(streamed > 10, `the premise: the stream outlasted max-downtime (${streamed} s)`);
    // One stop, for the swap only, shorter than max-downtime: the node served meanwhile.
    const down = downtimes(node.events().filter((e) => e.ms >= since));
    assert.equal(down.length, 1, JSON.stringify(down));
    assert.ok(down[0]!.ms < 10_000, `down ${down[0]!.ms} ms`);
    const data = join(node.home, 'data');
    assert.deepEqual(watchdogFiles(data), [], 'the watchdog never fired and left nothing');
    assert.deepEqual(
      readdirSync(data).filter((n) => n.includes('.prev-')),
      [],
      'the previous data dir was removed once the node reached the height',
    );
    const status = await t.status();
    assert.equal(status.running, true);
    assert.ok((status.height ?? 0) >= Number(run.main.outputs['block-height']));
    await t.stop();
    assert.equal((await check(node.dataDir)).ok, true);
  });

  it('the watchdog fires while the restore stops the node: the data dir stays, nothing is deleted', async () => {
    const { node, t } = await runningVictim('slow-stop');
    const data = join(node.home, 'data');
    const inode = statSync(node.dataDir).ino;
    const run = await restoreRun(world, t, {
      'node-ip': node.ip,
      // A stop that takes longer than max-downtime: the watchdog starts the node meanwhile.
      'stop-command': `${t.stopCommand} && sleep 14`,
      'max-downtime': '10s',
      'stop-node': 'true',
      'keep-previous': 'false',
    });
    const log = `${said(run.main)}\n--- post ---\n${said(run.post)}`;
    assert.notEqual(run.main.code, 0, log);
    assert.match(
      errors(run.main),
      /down longer than 'max-downtime' \(10 s\): the watchdog on the host started it at .*The data dir was not touched: the node runs on its previous data/,
    );
    assert.equal(statSync(node.dataDir).ino, inode, 'the data dir is the one the node had');
    assert.deepEqual(
      readdirSync(data).filter((n) => n.includes('.prev-') || n.includes('.failed-')),
      [],
    );
    assert.deepEqual(stagingLeft(data), []);
    assert.equal((await t.status()).running, true, 'the node runs');
    await t.stop();
    assert.equal((await check(node.dataDir)).ok, true);
  });

  it('keep-previous false with start-node false keeps the previous data dir and says why', async () => {
    const { node, t } = await runningVictim('no-start');
    await node.stop();
    const run = await restoreRun(world, t, {
      'node-ip': node.ip,
      'start-node': 'false',
      'keep-previous': 'false',
    });
    assert.equal(run.main.code, 0, said(run.main));
    const data = join(node.home, 'data');
    const kept = readdirSync(data).filter((n) => n.startsWith('loopchain.prev-'));
    assert.equal(kept.length, 1, 'the previous data dir is kept');
    assert.ok(
      run.main.annotations.some(
        (a) => a.level === 'warning' && /removes it only once the node has reached/.test(a.message),
      ),
      said(run.main),
    );
    assert.equal((await t.status()).running, false, 'nothing started the node');
    assert.equal((await check(join(data, kept[0]!))).ok, true);
  });

  it('a rollback whose stop command fails moves nothing', async () => {
    const { node, t } = await runningVictim('bad-rollback');
    await node.stop();
    const data = join(node.home, 'data');
    const run = await restoreRun(world, t, {
      'node-ip': node.ip,
      // The node starts, but never reaches the height where this looks for it.
      'peer-url': 'http://127.0.0.1:9/none',
      'health-timeout': '3s',
      'stop-command': 'echo "compose: no such service" >&2; exit 1',
    });
    assert.notEqual(run.main.code, 0);
    assert.match(
      errors(run.main),
      /did not reach block height .*The rollback could not stop the node .*Nothing was moved: the restored data is in .*, the previous in .*loopchain\.prev-/s,
    );
    const prev = readdirSync(data).filter((n) => n.startsWith('loopchain.prev-'));
    assert.equal(prev.length, 1, 'the previous data dir is where the swap put it');
    assert.equal(existsSync(node.dataDir), true);
    assert.deepEqual(
      readdirSync(data).filter((n) => n.includes('.failed-')),
      [],
      'nothing was moved aside',
    );
    assert.equal((await check(join(data, prev[0]!))).ok, true);
    await t.stop();
  });

  it('a consistency: stop backup that streams longer than max-downtime publishes nothing', async () => {
    const listBefore = await world.backupList();
    const keysBefore = await world.keys();
    const run = await runBoth(
      world,
      world.inputs({
        consistency: 'stop',
        endpoint: `http://127.0.0.1:${slowS3.port}`,
        'max-downtime': '10s',
        'permanent-copy': 'false',
      }),
    );
    assert.notEqual(run.main.code, 0, said(run.main));
    assert.match(
      errors(run.main),
      /down longer than 'max-downtime' \(10 s\): the watchdog on the host started it at /,
    );
    assert.deepEqual(await world.backupList(), listBefore, 'nothing was listed');
    assert.deepEqual(await world.keys(), keysBefore, 'nothing was left in the bucket');
    assert.equal(await world.s3.listMultipartUploads(world.bucket), 0);
    assert.equal((await world.node.status()).running, true, 'the node runs');
  });
});
