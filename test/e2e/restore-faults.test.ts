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

  /** The command lines of the host's reads of S3 for a restore into `data` (see host-fetch.ts). */
  function hostReaders(): string[] {
    let out = '';
    try {
      out = execFileSync('pgrep', [
        '-a',
        '-f',
        `${data}/\\.prep-snapshot-restore-.*\\.dl/url`,
      ]).toString();
    } catch {
      /* none */
    }
    return out.split('\n').filter(Boolean);
  }

  /** assertUntouched, once what the host still runs has ended (within 10 s). */
  async function assertUntouchedSoon(
    before: string,
    run: { main: RunResult; post: RunResult },
  ): Promise<void> {
    for (let i = 0; i < 100 && stagingLeft(data).length > 0; i++)
      await new Promise((r) => setTimeout(r, 100));
    assertUntouched(before, run);
  }

  function assertUntouched(before: string, run: { main: RunResult; post: RunResult }): void {
    const log = `${said(run.main)}\n--- post ---\n${said(run.post)}`;
    assert.equal(treeHash(victim.dataDir), before, `the data dir is as it was\n${log}`);
    assert.deepEqual(stagingLeft(data), [], `no staging folder\n${log}`);
  }

  /**
   * The faults of the transfer, once for each way the archive's bytes take ('download-on'):
   * read by the runner and relayed over SSH, or read by the host itself with curl. Each says
   * the same things, in its own words.
   */
  const WAYS = {
    runner: {
      retried: /Download: bytes \d+-\d+ of s3:\/\/snapshots\/.*; again from byte \d+/,
      gaveUp:
        /The download of .* broke off after .*: bytes \d+-\d+ of s3:\/\/snapshots\/.*: 6 attempts in a row failed at byte \d+, the last with .*The data dir was not touched; run again/,
    },
    host: {
      retried: /Download on the host: bytes \d+-\d+: HTTP .*; again from byte \d+/,
      gaveUp:
        /The host's download of .* broke off: bytes \d+-\d+: 6 attempts in a row failed at byte \d+, the last with HTTP 000, curl: .*The data dir was not touched; run again/,
    },
  } as const;

  for (const [via, says] of Object.entries(WAYS)) {
    const how = { 'download-on': via };

    it(`${via}: S3 connections cut every 400 kB: each range is read again from where it broke off, and the restore succeeds`, async () => {
      const proxy = await startCutProxy({
        targetPort: world.s3.port,
        perConnection: { downBytes: 400_000 },
      });
      try {
        const run = await restoreRun(world, victim, {
          ...how,
          'node-ip': '10.9.8.7',
          endpoint: `http://127.0.0.1:${proxy.port}`,
        });
        assert.equal(run.main.code, 0, said(run.main));
        assert.ok(proxy.cuts >= 3, `the proxy cut ${proxy.cuts} connections`);
        assert.match(run.main.stdout, says.retried);
        assert.match(
          run.main.summary,
          via === 'host' ? /read by the host/ : /relayed by the runner/,
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

    it(`${via}: S3 unreachable mid-restore: after the last attempt the run says which range and why`, async () => {
      const before = treeHash(victim.dataDir);
      const proxy = await startCutProxy({
        targetPort: world.s3.port,
        downBytes: Math.floor(archive.length / 2),
        refuseAfterCut: true,
      });
      try {
        const run = await restoreRun(world, victim, {
          ...how,
          'node-ip': '10.9.8.7',
          endpoint: `http://127.0.0.1:${proxy.port}`,
        });
        assert.notEqual(run.main.code, 0);
        assert.ok(proxy.cuts >= 1, 'the proxy cut');
        assert.match(errors(run.main), says.gaveUp);
        await assertUntouchedSoon(before, run);
      } finally {
        await proxy.stop();
      }
    });

    it(`${via}: the stored archive replaced during the restore: the run says so, nothing is touched`, async () => {
      const before = treeHash(victim.dataDir);
      const variant = await storeVariant('81', archive, manifest);
      // Two connections of 256 KiB/s: the first two ranges take seconds, the next are asked for
      // after the replacement.
      const proxy = await startCutProxy({ targetPort: world.s3.port, bytesPerSecond: 256 * 1024 });
      try {
        const running = restoreRun(world, victim, {
          ...how,
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
        await assertUntouchedSoon(before, run);
      } finally {
        await proxy.stop();
      }
    });

    it(`${via}: SSH cut mid-restore: the host's extraction ends and its staging folder goes`, async () => {
      const before = treeHash(victim.dataDir);
      // The runner's way: cut when half the archive has gone up to sshd. The host's way: S3
      // slowed down, and the SSH connection cut once half the archive has come from S3.
      const sshProxy = await startCutProxy({
        targetPort: world.sshd.port,
        ...(via === 'runner' ? { upBytes: Math.floor(archive.length / 2) } : {}),
      });
      const s3Proxy = await startCutProxy({
        targetPort: world.s3.port,
        bytesPerSecond: 512 * 1024,
      });
      try {
        const running = restoreRun(world, victim, {
          ...how,
          'node-ip': '10.9.8.7',
          port: String(sshProxy.port),
          ...(via === 'host' ? { endpoint: `http://127.0.0.1:${s3Proxy.port}` } : {}),
        });
        if (via === 'host') {
          while (s3Proxy.bytes.down < archive.length / 2)
            await new Promise((r) => setTimeout(r, 50));
          assert.notDeepEqual(hostReaders(), [], 'the host reads S3 itself');
          sshProxy.cut();
        }
        const run = await running;
        assert.notEqual(run.main.code, 0);
        assert.ok(sshProxy.cuts >= 1, 'the proxy cut');
        assert.match(
          errors(run.main),
          /The SSH connection was lost during the extraction.*The data dir was not touched; run again/s,
        );
        await assertUntouchedSoon(before, run);
        // Nothing of the host's goes on reading S3: no curl of this restore is left.
        let readers = hostReaders();
        for (let i = 0; i < 100 && readers.length > 0; i++) {
          await new Promise((r) => setTimeout(r, 100));
          readers = hostReaders();
        }
        assert.deepEqual(readers, [], 'no read from S3 after the cut');
      } finally {
        await sshProxy.stop();
        await s3Proxy.stop();
      }
    });

    it(`${via}: the action's process killed mid-restore: the post step removes the staging folder`, async () => {
      const before = treeHash(victim.dataDir);
      const s3Proxy = await startCutProxy({
        targetPort: world.s3.port,
        bytesPerSecond: 512 * 1024,
      });
      try {
        const run = await restoreRun(
          world,
          victim,
          { ...how, 'node-ip': '10.9.8.7', endpoint: `http://127.0.0.1:${s3Proxy.port}` },
          // Killed once the host has the signed URL (masked) or the runner reads.
          { main: { killWhen: via === 'host' ? /::add-mask::http/ : /::group::Stream / } },
        );
        assert.equal(run.main.killed, true, said(run.main));
        assert.match(run.main.state.stagingDir ?? '', /\.prep-snapshot-restore-/);
        assert.equal(run.post.code, 0, said(run.post));
        assert.match(run.post.stdout, /Removed the staging folder .*\.prep-snapshot-restore-/);
        // The killed runner's ssh may reach the host after the post step: its extraction then
        // ends (on an empty input, or at the end of its input while it reads S3) and removes
        // its own folder.
        await assertUntouchedSoon(before, run);
      } finally {
        await s3Proxy.stop();
      }
    });
  }

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

  it('a corrupted archive: sha256 mismatch through the runner, the decompressor on the host', async () => {
    const bad = Buffer.from(archive);
    for (let i = Math.floor(bad.length / 2); i < Math.floor(bad.length / 2) + 64; i++)
      bad[i] = bad[i]! ^ 0xff;
    const variant = await storeVariant('78', bad, manifest);
    for (const via of ['runner', 'host']) {
      const before = treeHash(victim.dataDir);
      const run = await restoreRun(world, victim, {
        snapshot: variant,
        'node-ip': '10.9.8.7',
        'download-on': via,
      });
      assert.notEqual(run.main.code, 0);
      // The runner reads every byte before it hears of the host's failure; the host's read
      // ends where its decompressor did, short of the whole archive and its sha256.
      assert.match(
        errors(run.main),
        via === 'runner'
          ? /sha256 [0-9a-f]{64} differs from the manifest's [0-9a-f]{64}: the stored archive is damaged.*restore another snapshot/
          : /did not extract \(exit \d+\): .*igzip: Error.*truncated or damaged; the data dir was not touched/s,
      );
      await assertUntouchedSoon(before, run);
    }
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
});
