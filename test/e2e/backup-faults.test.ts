/**
 * Backup when things go wrong, and the operational features around it, on real parts:
 * the packaged action under Node 24, OpenSSH's sshd, MinIO, a simulated node with real
 * LevelDB databases, and a TCP proxy that cuts connections.
 *
 * After every failure the operator must find: the node running, nothing new in
 * backup_list, no incomplete multipart upload in the bucket, no staging folder on the host.
 * Tests use their own key prefix (or compare with what was there before), so that their
 * order does not matter.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { copyObject } from '../../src/s3/copy.js';
import { abortUploads } from '../../src/s3/upload.js';
import { startCutProxy, type CutProxy } from '../bed/cut-proxy.js';
import { runAction, runMainThenPost, type RunResult } from '../bed/runner.js';
import { download, startNode, startWorld, tempDir, type SimNode, type World } from './world.js';

const sha = (b: Buffer | string) =>
  createHash('sha256')
    .update(typeof b === 'string' ? readFileSync(b) : b)
    .digest('hex');
const MiB = 1024 * 1024;

function utcDate(daysAgo = 0): string {
  return new Date(Date.now() - daysAgo * 86_400_000).toISOString().slice(0, 10).replace(/-/g, '');
}

function leftovers(node: SimNode): string[] {
  const dirs = [join(node.home, 'data'), node.dataDir];
  return dirs.flatMap((d) =>
    existsSync(d)
      ? readdirSync(d)
          .filter((n) => n.startsWith('.prep-snapshot-staging-'))
          .map((n) => join(d, n))
      : [],
  );
}

/** Watchdog files still armed (the `.log` and `.fired` of a watchdog that fired are kept on purpose). */
function armedWatchdogs(node: SimNode): string[] {
  return readdirSync(join(node.home, 'data')).filter(
    (n) => n.startsWith('.prep-snapshot-watchdog-') && !/\.(log|fired)$/.test(n),
  );
}

function errors(run: RunResult): string {
  return run.annotations
    .filter((a) => a.level === 'error')
    .map((a) => a.message)
    .join('\n');
}

function show(run: RunResult): string {
  return `exit ${run.code}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`;
}

async function waitFor<T>(
  what: string,
  check: () => Promise<T | undefined>,
  timeoutMs: number,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(1000);
  }
}

describe('backup faults and operations', () => {
  let world: World;
  before(async () => {
    // About 7 MB of gzip: more than one 5 MiB part, so that uploads are multipart.
    world = await startWorld({ blocks: 2000 });
  });
  after(() => world?.close());

  /** What the operator must find after a failed backup (and its post step). */
  async function assertCleanFailure(listBefore: string[], prefix = 'PRep'): Promise<void> {
    assert.equal((await world.node.status()).running, true, 'the node is running');
    assert.deepEqual(await world.backupList(prefix), listBefore, 'nothing new in backup_list');
    assert.equal(
      await world.s3.listMultipartUploads(world.bucket),
      0,
      'no incomplete multipart upload',
    );
    assert.deepEqual(leftovers(world.node), [], 'no staging folder on the host');
    assert.deepEqual(armedWatchdogs(world.node), [], 'the watchdog is disarmed');
  }

  it('SSH cut mid-stream: the run fails clearly, the node runs, nothing is left', async () => {
    const proxy = await startCutProxy({ targetPort: world.sshd.port, downBytes: 3 * MiB });
    try {
      const listBefore = await world.backupList();
      const run = await world.mainThenPost({ port: String(proxy.port), 'part-size': '5MiB' });
      assert.equal(run.main.code, 1, show(run.main));
      assert.ok(proxy.cuts >= 1, 'the proxy cut the connections');
      assert.match(
        errors(run.main),
        /SSH connection was lost while the archive streamed.*Nothing was published/s,
      );
      assert.equal(run.post.code, 0, show(run.post));
      await assertCleanFailure(listBefore);
      const key = run.main.state.uploadKey as string;
      assert.ok(key, 'the main step recorded the key it uploaded to');
      assert.ok(!(await world.keys()).includes(key), 'no archive object');
    } finally {
      await proxy.stop();
    }
  });

  it('SSH cut while the node is stopped (consistency: stop): the post step starts the node', async () => {
    const proxy = await startCutProxy({ targetPort: world.sshd.port, downBytes: 3 * MiB });
    try {
      const listBefore = await world.backupList();
      const run = await world.mainThenPost({
        port: String(proxy.port),
        consistency: 'stop',
        'ssh-transport': 'ssh2',
        'part-size': '5MiB',
      });
      assert.equal(run.main.code, 1, show(run.main));
      assert.match(errors(run.main), /SSH connection was lost/);
      // The main step could not start the node over the dead connection; the post step did.
      assert.match(run.post.stdout, /The main step ended while the node was stopped: starting it/);
      assert.match(run.post.stdout, /The node was started\./);
      await assertCleanFailure(listBefore);
    } finally {
      await proxy.stop();
    }
  });

  it('S3 unreachable mid-upload: a clear failure, and the post step aborts the orphan upload', async () => {
    const proxy: CutProxy = await startCutProxy({
      targetPort: world.s3.port,
      upBytes: 2 * MiB,
      refuseAfterCut: true,
    });
    try {
      const inputs = world.inputs({
        endpoint: `http://127.0.0.1:${proxy.port}`,
        'part-size': '5MiB',
        prefix: 'S3Down',
      });
      const main = await runAction({ step: 'main', inputs, env: world.env(), timeoutMs: 240_000 });
      assert.equal(main.code, 1, show(main));
      assert.ok(proxy.cuts >= 1);
      const key = main.state.uploadKey as string;
      assert.match(key, /^S3Down\/\d{8}\/PRep_BH\d+_data-\d{8}_\d{4}\.tar\.gz$/);
      assert.match(
        errors(main),
        new RegExp(
          `The upload of ${key.replace(/[.]/g, '\\.')} failed: .*Nothing was published`,
          's',
        ),
      );
      assert.match(errors(main), /the post step removes it/);
      assert.equal(
        (await world.node.status()).running,
        true,
        'the node was started before the upload',
      );
      // S3 could not be told: the incomplete upload is there until the post step.
      assert.equal(
        await world.s3.listMultipartUploads(world.bucket, key),
        1,
        'an orphan upload exists before the post step',
      );

      proxy.heal();
      const post = await runAction({
        step: 'post',
        inputs,
        env: world.env(),
        state: main.state,
        timeoutMs: 120_000,
      });
      assert.equal(post.code, 0, show(post));
      assert.match(post.stdout, /Aborted 1 incomplete upload\(s\) of /);
      await assertCleanFailure([], 'S3Down');
      assert.deepEqual(await world.keys('S3Down/'), []);
    } finally {
      await proxy.stop();
    }
  });

  it('S3 connections cut once mid-upload: the SDK retries and the backup succeeds', async () => {
    const proxy = await startCutProxy({ targetPort: world.s3.port, upBytes: 2 * MiB });
    try {
      const run = await world.mainThenPost({
        endpoint: `http://127.0.0.1:${proxy.port}`,
        'part-size': '5MiB',
        prefix: 'S3Blip',
        'permanent-copy': 'false',
      });
      assert.equal(run.main.code, 0, show(run.main));
      assert.equal(proxy.cuts, 1, 'the connections were cut once');
      const key = run.main.outputs.key as string;
      assert.deepEqual(await world.backupList('S3Blip'), [key.replace(/^S3Blip\//, '')]);
      const dir = tempDir('prep-blip-');
      try {
        assert.equal(
          sha(await download(world, key, join(dir, 'a.tar.gz'))),
          run.main.outputs.sha256,
        );
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      assert.equal(await world.s3.listMultipartUploads(world.bucket), 0);
      // The post step leaves a published archive alone.
      assert.ok((await world.keys('S3Blip/')).includes(key));
      assert.equal((await world.node.status()).running, true);
    } finally {
      await proxy.stop();
    }
  });

  it('S3 connections reset mid-part 11 times: more than the SDK retries, the part is sent again and the backup succeeds', async () => {
    // Every connection that carries 1 MiB up is reset, 11 times: a 5 MiB part cannot get
    // through on any of them. The SDK sends a part at most 5 times; between the two parts, one
    // is reset 6 times or more, and goes through only because the upload sends it again.
    const proxy = await startCutProxy({
      targetPort: world.s3.port,
      perConnection: { upBytes: MiB },
      perConnectionCuts: 11,
    });
    try {
      const run = await world.mainThenPost({
        endpoint: `http://127.0.0.1:${proxy.port}`,
        'part-size': '5MiB',
        prefix: 'S3Flaky',
        'permanent-copy': 'false',
      });
      assert.equal(run.main.code, 0, show(run.main));
      assert.equal(proxy.cuts, 11);
      assert.match(
        run.main.stdout,
        /Upload: part \d \(\d+\.\d+ MiB from byte \d+\): .*; sending it again in \d\.\d s \(attempt 2 of 4\)/,
      );
      const key = run.main.outputs.key as string;
      assert.deepEqual(await world.backupList('S3Flaky'), [key.replace(/^S3Flaky\//, '')]);
      const dir = tempDir('prep-flaky-');
      try {
        assert.equal(
          sha(await download(world, key, join(dir, 'a.tar.gz'))),
          run.main.outputs.sha256,
        );
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
      assert.equal(await world.s3.listMultipartUploads(world.bucket), 0);
    } finally {
      await proxy.stop();
    }
  });

  it("the action's process is killed while the node is stopped: the post step starts it", async () => {
    const listBefore = await world.backupList();
    const since = Date.now();
    const run = await runMainThenPost({
      inputs: world.inputs(),
      env: world.env(),
      timeoutMs: 240_000,
      main: { killWhen: /The node is stopped\./ },
    });
    assert.equal(run.main.killed, true, show(run.main));
    assert.match(run.post.stdout, /The main step ended while the node was stopped: starting it/);
    assert.match(run.post.stdout, /The node was started\./);
    const events = world.node.events().filter((e) => e.ms >= since);
    const stopped = events.findIndex((e) => e.event === 'stopped');
    assert.ok(stopped >= 0, 'the node was stopped');
    assert.ok(
      events.slice(stopped).some((e) => e.event === 'started'),
      'and started after',
    );
    await assertCleanFailure(listBefore);
  });

  it('the runner vanishes while the node is stopped: the watchdog on the host starts it', async () => {
    const listBefore = await world.backupList();
    const since = Date.now();
    const main = await world.main({ 'max-downtime': '10s' }, { killWhen: /The node is stopped\./ });
    assert.equal(main.killed, true, show(main));
    // No post step: only the watchdog can start the node.
    const data = join(world.node.home, 'data');
    const startedAgain = async () => {
      const events = world.node.events().filter((e) => e.ms >= since);
      const stopped = events.findIndex((e) => e.event === 'stopped');
      const started = stopped >= 0 && events.slice(stopped).some((e) => e.event === 'started');
      return started && (await world.node.status()).running ? true : undefined;
    };
    await waitFor('the node to run again', startedAgain, 90_000).catch((error: Error) => {
      const files = readdirSync(data).filter((n) => n.startsWith('.prep-snapshot'));
      const logs = files
        .filter((n) => n.endsWith('.log'))
        .map((n) => readFileSync(join(data, n), 'utf8'));
      throw new Error(
        `${error.message}\n${files.join(' ')}\n${logs.join('\n')}\n${JSON.stringify(world.node.events().slice(-4))}\n${show(main)}`,
      );
    });
    const logs = readdirSync(data).filter(
      (n) => n.startsWith('.prep-snapshot-watchdog-') && n.endsWith('.log'),
    );
    const fired = readdirSync(data).filter(
      (n) => n.startsWith('.prep-snapshot-watchdog-') && n.endsWith('.fired'),
    );
    assert.equal(fired.length, 1, 'the watchdog left the time it fired');
    assert.equal(logs.length, 1, 'the watchdog left its log');
    assert.match(
      readFileSync(join(data, logs[0] as string), 'utf8'),
      /the node was still down after 10 s; starting it/,
    );
    assert.deepEqual(await world.backupList(), listBefore);
    // The upload, begun with the tables sent ahead of the stop, is left incomplete: no step of
    // the run is left to abort it. S3's rule for incomplete uploads removes it (README, Minimal
    // IAM policy); the test does it here, as that rule would.
    const key = main.state.uploadKey as string;
    assert.equal(
      await world.s3.listMultipartUploads(world.bucket, key),
      1,
      'the run left its upload',
    );
    await abortUploads(world.s3.client(), world.bucket, key);
    assert.equal(await world.s3.listMultipartUploads(world.bucket), 0);
    assert.deepEqual(armedWatchdogs(world.node), []);
    // What a vanished runner leaves (no post step ran): tidy it for the other tests.
    for (const l of [...logs, ...fired]) rmSync(join(data, l), { force: true });
    for (const s of leftovers(world.node)) rmSync(s, { recursive: true, force: true });
  });

  it('two backups of two nodes at the same time: both are listed', async () => {
    const node2 = await startNode(world.root, { name: 'prep2', ip: '10.11.12.14', blocks: 900 });
    try {
      const common = { prefix: 'Both', 'permanent-copy': 'false' };
      const [a, b] = await Promise.all([
        world.mainThenPost(common),
        world.mainThenPost({
          ...common,
          'prep-dir': node2.home,
          'stop-command': node2.stopCommand,
          'start-command': node2.startCommand,
          'peer-url': node2.peerUrl,
        }),
      ]);
      assert.equal(a.main.code, 0, show(a.main));
      assert.equal(b.main.code, 0, show(b.main));
      const ka = (a.main.outputs.key as string).replace(/^Both\//, '');
      const kb = (b.main.outputs.key as string).replace(/^Both\//, '');
      assert.notEqual(ka, kb);
      assert.deepEqual([...(await world.backupList('Both'))].sort(), [ka, kb].sort());
      assert.equal((await world.node.status()).running, true);
      assert.equal((await node2.status()).running, true);
    } finally {
      await node2.stop();
    }
  });

  it('retention removes old archives and their entries, keeps permanent copies, and makes one permanent copy a day', async () => {
    const client = world.s3.client();
    const put = (Key: string, Body: string) =>
      client.send(new PutObjectCommand({ Bucket: world.bucket, Key, Body }));
    const old = utcDate(20);
    const recent = utcDate(10);
    const oldFile = `PRep_BH100_data-${old}_0000.tar.gz`;
    const recentFile = `PRep_BH200_data-${recent}_0000.tar.gz`;
    await put(`Ret/${old}/${oldFile}`, 'old archive');
    await put(`_prep-snapshot/Ret/${old}/${oldFile}.json`, '{}');
    await put(`Ret/${recent}/${recentFile}`, 'recent archive');
    await put(`PermRet/${old}/${oldFile}`, 'old permanent copy');
    await put('Ret/backup_list', `${recent}/${recentFile}\n${old}/${oldFile}\n`);
    const inputs = { prefix: 'Ret', 'permanent-prefix': 'PermRet' };

    const first = await world.mainThenPost(inputs);
    assert.equal(first.main.code, 0, show(first.main));
    const key1 = first.main.outputs.key as string;
    const entry1 = key1.replace(/^Ret\//, '');
    const today = entry1.slice(0, 8);
    assert.deepEqual(await world.backupList('Ret'), [entry1, `${recent}/${recentFile}`]);
    const keys = await world.keys();
    assert.ok(!keys.includes(`Ret/${old}/${oldFile}`), 'the old archive is deleted');
    assert.ok(!keys.includes(`_prep-snapshot/Ret/${old}/${oldFile}.json`), 'and its manifest');
    assert.ok(keys.includes(`Ret/${recent}/${recentFile}`), 'a recent archive stays');
    assert.ok(keys.includes(`PermRet/${old}/${oldFile}`), 'the permanent copy stays');
    assert.ok(keys.includes(`PermRet/${entry1}`), "today's first backup is copied");
    assert.match(
      first.main.stdout,
      new RegExp(`Removed Ret/${old}/${oldFile.replace(/\./g, '\\.')}`),
    );

    const second = await world.mainThenPost(inputs);
    assert.equal(second.main.code, 0, show(second.main));
    const entry2 = (second.main.outputs.key as string).replace(/^Ret\//, '');
    assert.equal((await world.backupList('Ret')).length, 3);
    assert.ok((await world.backupList('Ret')).includes(entry2));
    if (entry2.startsWith(today)) {
      assert.deepEqual(
        await world.keys(`PermRet/${today}/`),
        [`PermRet/${entry1}`],
        'one permanent copy a day',
      );
      assert.match(second.main.stdout, /already holds today's permanent copy/);
    }
  });

  it('copyObject copies in parts above its threshold, byte for byte', async () => {
    const client = world.s3.client();
    const body = randomBytes(12 * MiB);
    await client.send(
      new PutObjectCommand({ Bucket: world.bucket, Key: 'copy/source.bin', Body: body }),
    );
    await copyObject(client, world.bucket, 'copy/source.bin', 'copy/target.bin', body.length, {
      threshold: 5 * MiB,
      partSize: 5 * MiB,
    });
    const head = await client.send(
      new HeadObjectCommand({ Bucket: world.bucket, Key: 'copy/target.bin' }),
    );
    assert.match(head.ETag ?? '', /-3"?$/, 'a multipart object of 3 parts');
    const res = await client.send(
      new GetObjectCommand({ Bucket: world.bucket, Key: 'copy/target.bin' }),
    );
    const copied = Buffer.from(await res.Body!.transformToByteArray());
    assert.equal(copied.length, body.length);
    assert.equal(sha(copied), sha(body));
    assert.equal(await world.s3.listMultipartUploads(world.bucket, 'copy/'), 0);
  });

  it('the peer API does not answer: no backup, a warning, skipped=true, and the node is started', async () => {
    await world.node.stop();
    assert.equal((await world.node.status()).running, false);
    const run = await world.mainThenPost({ prefix: 'Peer' });
    assert.equal(run.main.code, 0, show(run.main));
    assert.equal(run.main.outputs.skipped, 'true');
    assert.ok(
      run.main.annotations.some(
        (a) => a.level === 'warning' && /peer API .* does not answer/.test(a.message),
      ),
      show(run.main),
    );
    assert.equal((await world.node.status()).running, true);
    assert.deepEqual(await world.keys('Peer/'), []);
    assert.equal(run.post.code, 0);
  });

  it('local-copy keeps the same archive on the host under data/Backup/{date}', async () => {
    const run = await world.mainThenPost({
      prefix: 'Local',
      'local-copy': 'true',
      'permanent-copy': 'false',
    });
    assert.equal(run.main.code, 0, show(run.main));
    const key = run.main.outputs.key as string;
    const [, date, file] = key.split('/') as [string, string, string];
    const local = join(world.node.home, 'data/Backup', date, file);
    assert.ok(existsSync(local), `${local} exists`);
    assert.deepEqual(
      readdirSync(join(world.node.home, 'data/Backup', date)),
      [file],
      'no .partial left',
    );
    assert.equal(sha(local), run.main.outputs.sha256);
    const dir = tempDir('prep-local-');
    try {
      assert.equal(sha(await download(world, key, join(dir, 'a.tar.gz'))), sha(local));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
