/**
 * Restore faults, end to end. In each: the node's existing data dir is byte for byte as it
 * was, no staging folder is left beside it, and the error says what happened.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import { startCutProxy } from '../bed/cut-proxy.js';
import type { RunResult } from '../bed/runner.js';
import {
  check,
  errors,
  getBytes,
  putBytes,
  restoreRun,
  runMain,
  said,
  stagingLeft,
  target,
  treeHash,
  type Target,
} from './restore-kit.js';
import { startNode, startWorld, type World } from './world.js';

describe('restore faults', () => {
  let world: World;
  let key: string;
  let archive: Buffer;
  let manifest: Record<string, unknown>;
  let victim: Target;
  let data: string;
  const mounts: string[] = [];

  before(async () => {
    world = await startWorld({ blocks: 2000 });
    const run = await runMain(world, world.inputs({ 'permanent-copy': 'false' }));
    assert.equal(run.code, 0, said(run));
    key = run.outputs.key as string;
    archive = await getBytes(world, key);
    manifest = JSON.parse(
      await world.s3.getText(world.bucket, `_prep-snapshot/${key}.json`),
    ) as Record<string, unknown>;
    await world.node.stop();
    // The node to restore onto: stopped, with a database of its own.
    const node = await startNode(world.root, { name: 'victim', blocks: 100, ip: '10.9.8.7' });
    await node.stop();
    victim = await target(node.home, node.port);
    data = join(victim.home, 'data');
  });
  after(async () => {
    await victim?.stop();
    for (const m of mounts) {
      try {
        execFileSync('umount', [m]);
      } catch {
        /* not mounted */
      }
    }
    await world?.close();
  });

  /** Stores `body` under a new archive name (same day), with `meta` as its manifest when given. */
  async function storeVariant(
    tag: string,
    body: Buffer,
    meta?: Record<string, unknown>,
  ): Promise<string> {
    const m = /^(PRep\/(\d{8})\/PRep_BH\d+_data-\d{8}_)(\d{4})(\.tar\.gz)$/.exec(key)!;
    const variant = `PRep/${m[2]}/PRep_BH${tag}_data-${m[2]}_0001.tar.gz`;
    await putBytes(world, variant, body);
    if (meta) {
      const entry = variant.replace(/^PRep\//, '');
      await putBytes(
        world,
        `_prep-snapshot/${variant}.json`,
        JSON.stringify({ ...meta, key: variant, entry }),
      );
    }
    return variant;
  }

  // A folder that one test leaves must not fail the next ones too.
  afterEach(() => {
    for (const n of stagingLeft(data)) rmSync(join(data, n), { recursive: true, force: true });
  });

  function assertUntouched(before: string, run: { main: RunResult; post: RunResult }): void {
    const log = `${said(run.main)}\n--- post ---\n${said(run.post)}`;
    assert.equal(treeHash(victim.dataDir), before, `the data dir is as it was\n${log}`);
    assert.deepEqual(stagingLeft(data), [], `no staging folder\n${log}`);
  }

  it('S3 connections cut every 400 kB: each range is read again from where it broke off, and the restore succeeds', async () => {
    const proxy = await startCutProxy({
      targetPort: world.s3.port,
      perConnection: { downBytes: 400_000 },
    });
    try {
      const run = await restoreRun(world, victim, {
        'node-ip': '10.9.8.7',
        endpoint: `http://127.0.0.1:${proxy.port}`,
      });
      assert.equal(run.main.code, 0, said(run.main));
      assert.ok(proxy.cuts >= 3, `the proxy cut ${proxy.cuts} connections`);
      assert.match(
        run.main.stdout,
        /Download: bytes \d+-\d+ of s3:\/\/snapshots\/.*; again from byte \d+/,
      );
      // The bytes in order: the sha256 is the manifest's, and the restored database is whole.
      assert.equal(run.main.outputs.sha256, manifest.sha256);
      const height = Number(manifest.blockHeight);
      assert.ok(Number(run.main.outputs['height-reached']) >= height);
      await victim.stop();
      const restored = await check(victim.dataDir);
      assert.ok(restored.ok && restored.height >= height, JSON.stringify(restored));
      assert.deepEqual(stagingLeft(data), []);
    } finally {
      await proxy.stop();
      // The next tests restore onto a stopped node.
      await victim.stop();
    }
  });

  it('S3 unreachable mid-restore: after the last attempt the run says which range and why', async () => {
    const before = treeHash(victim.dataDir);
    const proxy = await startCutProxy({
      targetPort: world.s3.port,
      downBytes: Math.floor(archive.length / 2),
      refuseAfterCut: true,
    });
    try {
      const run = await restoreRun(world, victim, {
        'node-ip': '10.9.8.7',
        endpoint: `http://127.0.0.1:${proxy.port}`,
      });
      assert.notEqual(run.main.code, 0);
      assert.ok(proxy.cuts >= 1, 'the proxy cut');
      assert.match(
        errors(run.main),
        /The download of .* broke off after .*: bytes \d+-\d+ of s3:\/\/snapshots\/.*: 6 attempts in a row failed at byte \d+, the last with .*The data dir was not touched; run again/,
      );
      assertUntouched(before, run);
    } finally {
      await proxy.stop();
    }
  });

  it('the stored archive replaced during the restore: the run says so, nothing is touched', async () => {
    const before = treeHash(victim.dataDir);
    const variant = await storeVariant('81', archive, manifest);
    // Two connections of 256 KiB/s: the first two ranges take seconds, the next are asked for
    // after the replacement.
    const proxy = await startCutProxy({ targetPort: world.s3.port, bytesPerSecond: 256 * 1024 });
    try {
      const running = restoreRun(world, victim, {
        snapshot: variant,
        'node-ip': '10.9.8.7',
        endpoint: `http://127.0.0.1:${proxy.port}`,
        'download-connections': '2',
      });
      while (proxy.bytes.down < 300_000) await new Promise((r) => setTimeout(r, 50));
      const other = Buffer.from(archive);
      other[other.length - 100] = other[other.length - 100]! ^ 0xff;
      await putBytes(world, variant, other);
      const run = await running;
      assert.notEqual(run.main.code, 0);
      assert.match(
        errors(run.main),
        /The stored PRep\/\d{8}\/PRep_BH81_.*\.tar\.gz was replaced during the restore \(.*412.*\) Nothing was touched: the data dir is as it was\./,
      );
      assertUntouched(before, run);
    } finally {
      await proxy.stop();
    }
  });

  it('SSH cut mid-restore: the post step removes the staging folder', async () => {
    const before = treeHash(victim.dataDir);
    // Up = runner -> sshd: the archive. Cut at half of it.
    const proxy = await startCutProxy({
      targetPort: world.sshd.port,
      upBytes: Math.floor(archive.length / 2),
    });
    try {
      const run = await restoreRun(world, victim, {
        'node-ip': '10.9.8.7',
        port: String(proxy.port),
      });
      assert.notEqual(run.main.code, 0);
      assert.ok(proxy.cuts >= 1, 'the proxy cut');
      assert.match(
        errors(run.main),
        /The SSH connection was lost during the extraction.*The data dir was not touched; run again/s,
      );
      assertUntouched(before, run);
    } finally {
      await proxy.stop();
    }
  });

  it("the host's disk: an honest manifest is refused by the preflight; an under-reporting one fills the disk", async () => {
    assert.ok(
      Number(manifest.uncompressedBytes) > 9 * 1024 ** 2,
      `the snapshot is > 9 MiB (${String(manifest.uncompressedBytes)})`,
    );
    const mnt = join(world.root, 'small-disk');
    mkdirSync(mnt, { recursive: true });
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt]);
    mounts.push(mnt);
    // A small broken node on the small disk.
    const t = await target(join(mnt, 'prep'));
    mkdirSync(join(t.dataDir, '.score_data/db/icon_dex'), { recursive: true });
    mkdirSync(join(t.dataDir, '.storage/db_10.9.8.5:7100_icon_dex'), { recursive: true });
    writeFileSync(join(t.dataDir, '.score_data/db/icon_dex/000005.ldb'), Buffer.alloc(100_000, 7));
    writeFileSync(
      join(t.dataDir, '.storage/db_10.9.8.5:7100_icon_dex/CURRENT'),
      'MANIFEST-000002\n',
    );
    const tdata = join(t.home, 'data');
    const before = treeHash(t.dataDir);

    const honest = await restoreRun(world, t, {
      snapshot: key,
      'node-ip': '10.9.8.5',
      'disk-margin': '0',
    });
    assert.notEqual(honest.main.code, 0);
    assert.match(
      errors(honest.main),
      /has .* free; the snapshot needs .*Free some space and run again/,
    );
    assert.equal(treeHash(t.dataDir), before);
    assert.deepEqual(stagingLeft(tdata), []);

    const lying = await storeVariant('77', archive, { ...manifest, uncompressedBytes: 1000 });
    const run = await restoreRun(world, t, {
      snapshot: lying,
      'node-ip': '10.9.8.5',
      'disk-margin': '0',
    });
    assert.notEqual(run.main.code, 0);
    assert.match(
      errors(run.main),
      /The host's disk filled up during the extraction .*The data dir was not touched; free space/,
    );
    assert.equal(treeHash(t.dataDir), before);
    assert.deepEqual(stagingLeft(tdata), []);
  });

  it('a corrupted archive: sha256 mismatch', async () => {
    const before = treeHash(victim.dataDir);
    const bad = Buffer.from(archive);
    for (let i = Math.floor(bad.length / 2); i < Math.floor(bad.length / 2) + 64; i++)
      bad[i] = bad[i]! ^ 0xff;
    const variant = await storeVariant('78', bad, manifest);
    const run = await restoreRun(world, victim, { snapshot: variant, 'node-ip': '10.9.8.7' });
    assert.notEqual(run.main.code, 0);
    assert.match(
      errors(run.main),
      /sha256 [0-9a-f]{64} differs from the manifest's [0-9a-f]{64}: the stored archive is damaged/,
    );
    assert.match(errors(run.main), /restore another snapshot/);
    assertUntouched(before, run);
  });

  it('a truncated archive without a manifest: the decompressor says so', async () => {
    const before = treeHash(victim.dataDir);
    const variant = await storeVariant('79', archive.subarray(0, Math.floor(archive.length * 0.6)));
    const run = await restoreRun(world, victim, { snapshot: variant, 'node-ip': '10.9.8.7' });
    assert.notEqual(run.main.code, 0);
    assert.ok(
      run.main.annotations.some((a) => a.level === 'warning' && /has no manifest/.test(a.message)),
      'warns about the missing manifest',
    );
    assert.match(
      errors(run.main),
      /did not extract \(exit \d+\): .*truncated or damaged; the data dir was not touched/s,
    );
    assertUntouched(before, run);
  });

  it('a whole gzip tar that is not a node snapshot: refused before the swap', async () => {
    const before = treeHash(victim.dataDir);
    const dir = join(world.root, 'not-a-snapshot');
    mkdirSync(join(dir, 'photos'), { recursive: true });
    writeFileSync(join(dir, 'photos', 'a.jpg'), Buffer.alloc(300_000, 1));
    const body = execFileSync('tar', ['-czf', '-', '-C', dir, 'photos'], { maxBuffer: 1 << 26 });
    const variant = await storeVariant('80', body);
    const run = await restoreRun(world, victim, { snapshot: variant, 'node-ip': '10.9.8.7' });
    assert.notEqual(run.main.code, 0);
    assert.match(
      errors(run.main),
      /is not a snapshot of a .* node: the archive holds no \.score_data\. The data dir was not touched/,
    );
    assertUntouched(before, run);
  });

  it("the action's process killed mid-restore: the post step removes the staging folder", async () => {
    const before = treeHash(victim.dataDir);
    const run = await restoreRun(
      world,
      victim,
      { 'node-ip': '10.9.8.7' },
      { main: { killWhen: /::group::Stream / } },
    );
    assert.equal(run.main.killed, true, said(run.main));
    assert.match(run.main.state.stagingDir ?? '', /\.prep-snapshot-restore-/);
    assert.equal(run.post.code, 0, said(run.post));
    assert.match(run.post.stdout, /Removed the staging folder .*\.prep-snapshot-restore-/);
    // The killed runner's ssh may reach the host after the post step: its extraction then
    // ends on an empty input and removes its own folder.
    for (let i = 0; i < 100 && stagingLeft(data).length > 0; i++)
      await new Promise((r) => setTimeout(r, 100));
    assertUntouched(before, run);
  });
});
