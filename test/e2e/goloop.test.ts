/**
 * ICON 2, end to end, as an archive (tar.zst): the packaged action backs up a real goloop v1.4.4 node (a chain that
 * produces blocks and holds ICX transfers) over a real sshd into MinIO, freezing it through
 * the node's control socket, and restores the snapshot onto a fresh node dir, where goloop
 * starts on it and answers the same block hash at the snapshot's height and the same balances.
 */
import assert from 'node:assert/strict';
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  balanceAt,
  blockHashAt,
  startGoloop,
  type GoloopNode,
  type GoloopTransfer,
} from '../bed/goloop.js';
import { growDatabase } from '../bed/goloop-ballast.js';
import { abortUploads } from '../../src/s3/upload.js';
import { s3Env, startMinio, type S3Server } from '../bed/minio.js';
import { goloopBin, goloopMissing, repoRoot } from '../bed/paths.js';
import { freePort } from '../bed/ports.js';
import { startCutProxy } from '../bed/cut-proxy.js';
import { runAction, runMainThenPost, type RunResult } from '../bed/runner.js';
import { startSshd, type Sshd } from '../bed/sshd.js';
import { bundles } from './world.js';

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
const SERVER = join(repoRoot, 'test/bed/goloop-server.sh');

function said(run: RunResult): string {
  return `${run.stdout}\n${run.stderr}`;
}
function errors(run: RunResult): string {
  return run.annotations
    .filter((a) => a.level === 'error')
    .map((a) => a.message)
    .join('\n');
}

describe('ICON 2: a real goloop node', { skip: goloopMissing() }, () => {
  let sshd: Sshd;
  let s3: S3Server;
  let g: GoloopNode;
  let root: string;
  let sent: GoloopTransfer[] = [];
  const bucket = 'icon2';
  const servers: string[] = [];

  before(async () => {
    root = mkdtempSync(join(tmpdir(), 'prep-goloop-'));
    [sshd, s3, g] = await Promise.all([startSshd(), startMinio(), startGoloop()]);
    await s3.createBucket(bucket);
    sent = await g.load(20);
    // Table files to send ahead of the stop: ballast under keys the node never reads, dated a
    // minute back, as the tables of a node that has run a while are.
    await growDatabase(g, 12 * 1024 * 1024);
    await runShell(`find ${q(g.dbDir)} -name '*.ldb' -exec touch -d '-1 min' {} +`);
  });
  after(async () => {
    for (const node of servers) await runShell(`bash ${q(SERVER)} stop ${q(node)}`);
    await g?.stop();
    await Promise.all([sshd?.stop(), s3?.stop()]);
    rmSync(root, { recursive: true, force: true });
  });

  function inputs(extra: Record<string, string>): Record<string, string> {
    return {
      ...sshd.actionInputs(),
      bucket,
      endpoint: s3.endpoint,
      service: 'MainNet',
      'permanent-copy': 'false',
      'max-downtime': '5m',
      // The archive of a goloop chain; test/e2e/tree.test.ts has the tree, its default.
      format: 'archive',
      ...extra,
    };
  }

  function run(extra: Record<string, string>): Promise<RunResult> {
    return runAction({
      step: 'main',
      inputs: inputs(extra),
      env: s3Env(s3),
      script: bundles().main,
      timeoutMs: 300_000,
    });
  }

  let key = '';
  let height = 0;

  it('backs up with the chain frozen through its socket: the manifest names the chain and its block hash', async () => {
    const before = await g.height();
    // node-kind is left to 'auto': the data dir's cli.sock says goloop.
    const r = await run({
      mode: 'backup',
      'data-dir': g.nodeDir,
      'peer-url': `${g.rpcUrl}/admin/chain`,
    });
    assert.equal(r.code, 0, said(r));
    assert.match(said(r), /Node kind: goloop \(found .*cli\.sock/);
    key = r.outputs.key as string;
    height = Number(r.outputs['block-height']);
    assert.match(
      key,
      /^MainNet\/\d{8}\/MainNet_BH\d+_data-\d{8}_\d{4}\.tar\.zst$/,
      'zstd by default for an archive of a goloop node',
    );
    assert.ok(height >= before);
    const manifest = JSON.parse(await s3.getText(bucket, `_prep-snapshot/${key}.json`)) as {
      nodeKind: string;
      blockHeight: number;
      facts: Record<string, string>;
      files: number;
      ahead?: { files: number; tarBytes: number; bytes: number };
    };
    assert.equal(manifest.nodeKind, 'goloop');
    // The tables went up while the chain ran, as the archive's first part; the rest after the freeze.
    assert.ok((manifest.ahead?.files ?? 0) > 0, said(r));
    assert.ok((manifest.ahead?.tarBytes ?? 0) >= 12 * 1024 * 1024, JSON.stringify(manifest.ahead));
    assert.ok(
      said(r).indexOf('go up now, while the node runs') <
        said(r).indexOf('::group::Stop, freeze, start'),
    );
    assert.equal(manifest.blockHeight, height);
    assert.equal(manifest.facts.cid, `0x${g.cid}`);
    assert.equal(manifest.facts.channel, 'icon_dex');
    assert.equal(manifest.facts.blockHash, await g.blockHash(height));
    assert.match(manifest.facts.goloopVersion ?? '', /1\.4\.4/);
    // The chain goes on: started, and past the snapshot.
    await g.waitForHeight(height + 5);
    assert.equal((await g.chain()).state, 'started');
    assert.equal(
      (await s3.getText(bucket, 'MainNet/backup_list')).trim(),
      key.replace(/^MainNet\//, ''),
    );
    // Nothing of the freeze is left beside the node dir.
    assert.deepEqual(
      readdirSync(join(g.nodeDir, '..')).filter((n) => n.startsWith('.prep-snapshot')),
      [],
    );
  });

  it('list names the goloop snapshot and verify proves it whole', async () => {
    assert.ok(key, 'the backup ran');
    const listed = await run({ mode: 'list' });
    assert.equal(listed.code, 0, said(listed));
    assert.ok(
      (JSON.parse(listed.outputs.snapshots as string) as Array<{ key: string }>).some(
        (r) => r.key === key,
      ),
    );
    const verified = await run({ mode: 'verify', snapshot: key });
    assert.equal(verified.code, 0, said(verified));
    assert.equal(verified.outputs['block-height'], String(height));
    // A goloop archive is checked for its chain folder, not for loopchain's directories.
    assert.match(said(verified), /whole\. \d+ files/);
  });

  it('refuses a chain it does not have, before it stops anything', async () => {
    const r = await run({
      mode: 'backup',
      'node-kind': 'goloop',
      'data-dir': g.nodeDir,
      'peer-url': `${g.rpcUrl}/admin/chain`,
      chain: 'no_such_channel',
    });
    assert.notEqual(r.code, 0);
    assert.match(errors(r), /has no chain on the channel 'no_such_channel' \(it has: icon_dex/);
    assert.doesNotMatch(said(r), /Stopping the node/);
    assert.equal((await g.chain()).state, 'started');
  });

  /**
   * After a failed backup: the chain runs, nothing was listed or left half-made. A runner
   * that vanished (no post step) leaves its staging folder: `vanished` allows it.
   */
  async function assertCleanFailure(listBefore: string, vanished = false): Promise<void> {
    await waitFor(async () => (await g.chain()).state === 'started', 60_000);
    const h = await g.height();
    await g.waitForHeight(h + 3);
    assert.equal(await listText(), listBefore, 'nothing new in backup_list');
    assert.equal(await s3.listMultipartUploads(bucket), 0, 'no incomplete upload');
    assert.deepEqual(
      readdirSync(join(g.nodeDir, '..')).filter(
        (n) =>
          n.startsWith('.prep-snapshot') &&
          !/\.(log|fired)$/.test(n) &&
          !(vanished && n.startsWith('.prep-snapshot-staging-')),
      ),
      [],
      'no staging folder and no armed watchdog',
    );
  }

  async function listText(): Promise<string> {
    return s3.getText(bucket, 'MainNet/backup_list').catch(() => '');
  }

  /** A backup and its post step, with SSH through `port` (a cut proxy's). */
  const backupThenPost = (port: number) =>
    runMainThenPost({
      inputs: inputs({ ...backupInputs(), port: String(port) }),
      env: s3Env(s3),
      timeoutMs: 300_000,
      main: { script: bundles().main },
      post: { script: bundles().post },
    });

  const backupInputs = () => ({
    mode: 'backup',
    'node-kind': 'goloop',
    'data-dir': g.nodeDir,
    'peer-url': `${g.rpcUrl}/admin/chain`,
  });

  it('refuses a chain that is not started, and a node dir without its control socket', async () => {
    await g.chainStop();
    try {
      const r = await run(backupInputs());
      assert.notEqual(r.code, 0);
      assert.match(
        errors(r),
        /The chain icon_dex \(0x[0-9a-f]+\) is 'stopped'.*no backup is taken of a chain that is not started/,
      );
      assert.doesNotMatch(said(r), /Stopping the node/);
    } finally {
      await g.chainStart();
    }
    // The node dir of another host, with the chain's folder but no socket.
    const other = join(root, 'nosock');
    mkdirSync(join(other, g.cid, 'db'), { recursive: true });
    writeFileSync(join(other, g.cid, 'config.json'), '{}');
    const r = await run({ ...backupInputs(), 'data-dir': other });
    assert.notEqual(r.code, 0);
    assert.match(
      errors(r),
      /cli\.sock is missing: the chain is stopped and started through goloop's control socket/,
    );
    assert.equal((await g.chain()).state, 'started');
  });

  it("the action's process killed while the chain is stopped: the post step starts it", async () => {
    const listBefore = await listText();
    const r = await runMainThenPost({
      inputs: inputs(backupInputs()),
      env: s3Env(s3),
      timeoutMs: 300_000,
      main: { script: bundles().main, killWhen: /The node is stopped\./ },
      post: { script: bundles().post },
    });
    assert.equal(r.main.killed, true, said(r.main));
    assert.equal(r.post.code, 0, said(r.post));
    assert.match(r.post.stdout, /The main step ended while the node was stopped: starting it/);
    await assertCleanFailure(listBefore);
  });

  it('the runner vanishes while the chain is stopped: the watchdog on the host starts it', async () => {
    const listBefore = await listText();
    const main = await runAction({
      step: 'main',
      inputs: inputs({ ...backupInputs(), 'max-downtime': '10s' }),
      env: s3Env(s3),
      script: bundles().main,
      timeoutMs: 300_000,
      killWhen: /The node is stopped\./,
    });
    assert.equal(main.killed, true, said(main));
    // The upload, begun with the tables sent ahead of the stop, is left incomplete: no step of
    // the run is left to abort it. S3's rule for incomplete uploads removes it (README, Set-up);
    // the test does it here, as that rule would.
    const key = main.state.uploadKey as string;
    assert.equal(await s3.listMultipartUploads(bucket, key), 1, 'the vanished run left its upload');
    await abortUploads(s3.client(), bucket, key);
    // No post step: only the watchdog can start the chain.
    await assertCleanFailure(listBefore, true).catch(async (e: Error) => {
      throw new Error(`${e.message}\n${said(main)}\n${await g.log()}`);
    });
    const parent = join(g.nodeDir, '..');
    const logs = readdirSync(parent).filter((n) => /^\.prep-snapshot-watchdog-.*\.log$/.test(n));
    assert.equal(logs.length, 1, 'the watchdog left its log');
    // What a vanished runner leaves: tidy it for the other tests.
    for (const n of readdirSync(parent).filter((x) => x.startsWith('.prep-snapshot-')))
      rmSync(join(parent, n), { recursive: true, force: true });
  });

  it('S3 failing mid-stream: the chain runs, nothing is published', async () => {
    const listBefore = await listText();
    // S3 goes away after the first 32 KiB of the upload, retries included.
    const proxy = await startCutProxy({
      targetPort: s3.port,
      upBytes: 32 * 1024,
      refuseAfterCut: true,
    });
    try {
      const failing = inputs({ ...backupInputs(), endpoint: `http://127.0.0.1:${proxy.port}` });
      const r = await runAction({
        step: 'main',
        inputs: failing,
        env: s3Env(s3),
        script: bundles().main,
        timeoutMs: 300_000,
      });
      assert.notEqual(r.code, 0, said(r));
      assert.ok(proxy.cuts >= 1, 'the proxy cut');
      // S3 is back for the post step, which removes what the main step could not abort.
      proxy.heal();
      const post = await runAction({
        step: 'post',
        inputs: failing,
        env: s3Env(s3),
        state: r.state,
        script: bundles().post,
        timeoutMs: 300_000,
      });
      assert.equal(post.code, 0, said(post));
      await assertCleanFailure(listBefore);
    } finally {
      await proxy.stop();
    }
  });

  it('SSH cut while the tables go up ahead of the stop: the chain was never stopped, nothing is left', async () => {
    const listBefore = await listText();
    // Down = sshd -> runner: the tables ahead. Cut a little into them.
    const proxy = await startCutProxy({ targetPort: sshd.port, downBytes: 48 * 1024 });
    try {
      const r = await backupThenPost(proxy.port);
      assert.notEqual(r.main.code, 0, said(r.main));
      assert.ok(proxy.cuts >= 1, 'the proxy cut');
      assert.match(
        errors(r.main),
        /SSH connection was lost while the archive streamed \(the table files, ahead of the stop: the node was not stopped\).*Nothing was published/s,
      );
      assert.doesNotMatch(
        said(r.main),
        /::group::Stop, freeze, start/,
        'the chain was not stopped',
      );
      await assertCleanFailure(listBefore);
    } finally {
      await proxy.stop();
    }
  });

  it('SSH cut mid-stream after the freeze: the run fails clearly, the chain runs, nothing is left', async () => {
    const listBefore = await listText();
    const stages = () =>
      readdirSync(join(g.nodeDir, '..')).filter(
        (n) => /^\.prep-snapshot-staging-[^.]*$/.test(n) && !n.endsWith('-ahead'),
      );
    // Armed as the frozen copy appears: the cut falls in the stream of what follows the tables.
    const proxy = await startCutProxy({ targetPort: sshd.port });
    let watching = true;
    const watch = (async () => {
      while (watching && stages().length === 0)
        await new Promise((resolve) => setTimeout(resolve, 2));
      if (watching) proxy.arm({ downBytes: 16 * 1024 });
    })();
    try {
      const r = await backupThenPost(proxy.port);
      watching = false;
      await watch;
      assert.notEqual(r.main.code, 0, said(r.main));
      assert.ok(proxy.cuts >= 1, 'the proxy cut');
      assert.match(said(r.main), /go up now, while the node runs/);
      assert.match(errors(r.main), /SSH connection was lost|Nothing was published/);
      await assertCleanFailure(listBefore);
    } finally {
      watching = false;
      await watch;
      await proxy.stop();
    }
  });

  it('two goloop nodes backed up at the same time: both are listed', async () => {
    const g2 = await startGoloop();
    try {
      await g2.waitForHeight(3);
      const both = await Promise.all(
        [g, g2].map((n) =>
          run({
            mode: 'backup',
            'data-dir': n.nodeDir,
            'peer-url': `${n.rpcUrl}/admin/chain`,
            prefix: 'Both',
          }),
        ),
      );
      for (const r of both) assert.equal(r.code, 0, said(r));
      const listed = (await s3.getText(bucket, 'Both/backup_list')).trim().split('\n');
      for (const r of both)
        assert.ok(listed.includes((r.outputs.key as string).replace(/^Both\//, '')));
      assert.equal((await g2.chain()).state, 'started');
    } finally {
      await g2.stop();
    }
  });

  it('restores over the running chain with stop-node: the chain is stopped only for the swap', async () => {
    assert.ok(key, 'the backup ran');
    const common = {
      mode: 'restore',
      snapshot: key,
      'data-dir': g.nodeDir,
      'peer-url': `${g.rpcUrl}/admin/chain`,
      'health-timeout': '120s',
      'disk-margin': '1MiB',
    };
    const refused = await run(common);
    assert.notEqual(refused.code, 0);
    assert.match(errors(refused), /is running \(the chain icon_dex .* is 'started'/);
    const r = await run({ ...common, 'stop-node': 'true' });
    assert.equal(r.code, 0, said(r));
    const log = said(r);
    assert.ok(
      log.indexOf('streamed and extracted') < log.indexOf('Stopping the node'),
      'the snapshot streamed before the chain stopped',
    );
    assert.equal(
      await g.blockHash(height),
      await blockHashAt(`${g.rpcUrl}/api/v3/icon_dex`, height),
    );
    assert.equal((await g.chain()).state, 'started');
    const previous = readdirSync(join(g.nodeDir, '..')).filter((n) => n.startsWith('data.prev-'));
    assert.equal(previous.length, 1, 'the previous chain folder is kept outside the node dir');
    assert.ok(existsSync(join(g.nodeDir, '..', previous[0]!, g.cid, 'db')));
  });

  it('a restored chain that answers another block hash is rolled back at once', async () => {
    assert.ok(key, 'the backup ran');
    // The same archive under another name, with a manifest whose block hash is not the chain's.
    const forged = key.replace(
      /_(\d{4})\.tar\.zst$/,
      (_m, hhmm: string) => `_${String((Number(hhmm) + 1) % 2400).padStart(4, '0')}.tar.zst`,
    );
    const client = s3.client();
    const { CopyObjectCommand, PutObjectCommand } = await import('@aws-sdk/client-s3');
    await client.send(
      new CopyObjectCommand({ Bucket: bucket, Key: forged, CopySource: `${bucket}/${key}` }),
    );
    const manifest = JSON.parse(await s3.getText(bucket, `_prep-snapshot/${key}.json`)) as {
      facts: Record<string, string>;
    };
    await client.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: `_prep-snapshot/${forged}.json`,
        Body: JSON.stringify({
          ...manifest,
          key: forged,
          facts: { ...manifest.facts, blockHash: '00'.repeat(32) },
        }),
      }),
    );
    const folderBefore = readdirSync(g.chainDir).sort();
    const r = await run({
      mode: 'restore',
      snapshot: forged,
      'data-dir': g.nodeDir,
      'peer-url': `${g.rpcUrl}/admin/chain`,
      'stop-node': 'true',
      'health-timeout': '300s',
      'disk-margin': '1MiB',
    });
    assert.notEqual(r.code, 0);
    assert.match(
      errors(r),
      /it is not the chain of the snapshot.*previous data dir was put back in place/s,
    );
    assert.doesNotMatch(said(r), /did not reach block height/, 'no wait for the health timeout');
    await g.waitForHeight((await g.height()) + 3);
    assert.deepEqual(readdirSync(g.chainDir).sort(), folderBefore);
    const failed = readdirSync(join(g.nodeDir, '..')).filter((n) => n.startsWith('data.failed-'));
    assert.equal(failed.length, 1, 'the restored folder is kept beside the node dir for a look');
  });

  it('restores onto a fresh node dir: goloop starts on it, with the same block hash and balances', async () => {
    assert.ok(key, 'the backup ran');
    const balances = await Promise.all(sent.slice(0, 5).map((t) => g.balance(t.to)));
    // The validator moves to the new host: the old one stops (its files stay), the key goes along.
    const keystore = join(root, 'keystore.json');
    copyFileSync(g.keystore, keystore);
    await g.stop();
    const node = join(root, 'host2', 'data');
    const [rpc, p2p] = [await freePort(), await freePort()];
    servers.push(node);
    const r = await run({
      mode: 'restore',
      'data-dir': node,
      'peer-url': `http://127.0.0.1:${rpc}/admin/chain`,
      'start-command': `bash ${q(SERVER)} start ${q(goloopBin())} ${q(node)} ${q(keystore)} ${q(g.keyPassword)} ${rpc} ${p2p}`,
      'stop-command': `bash ${q(SERVER)} stop ${q(node)}`,
      'health-timeout': '120s',
      'disk-margin': '1MiB',
    });
    assert.equal(r.code, 0, said(r));
    assert.match(said(r), /Node kind: goloop, as the snapshot's manifest says/);
    assert.ok(Number(r.outputs['height-reached']) >= height);
    assert.ok(existsSync(join(node, g.cid, 'db')));
    const rpcUrl = `http://127.0.0.1:${rpc}/api/v3/icon_dex`;
    const restoredHash = await blockHashAt(rpcUrl, height);
    const manifest = JSON.parse(await s3.getText(bucket, `_prep-snapshot/${key}.json`)) as {
      facts: Record<string, string>;
    };
    assert.equal(restoredHash, manifest.facts.blockHash);
    const restoredBalances = await Promise.all(
      sent.slice(0, 5).map((t) => balanceAt(rpcUrl, t.to)),
    );
    assert.deepEqual(restoredBalances, balances);
  });
});

async function waitFor(ready: () => Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await ready().catch(() => false))) {
    if (Date.now() > deadline) throw new Error(`not ready within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function runShell(command: string): Promise<void> {
  const { execFile } = await import('node:child_process');
  await new Promise<void>((resolve) => execFile('bash', ['-c', command], () => resolve()));
}
