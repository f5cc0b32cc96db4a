/**
 * Every input at its default, as a user keeps them: on hosts laid out as the original guide's
 * or as icon2-node's (test/bed/guide-host.ts), only mode, host, port, username, ssh-key,
 * host-key, bucket and endpoint are set, and action.yml's defaults apply as on a runner.
 * `/app/prep`, the peer API on localhost:9000, the Compose stop and start, the process check
 * and the node IP found on the host are then the action's own. Once with Compose v1
 * (`docker-compose`), once with v2 (`docker compose`, no `docker-compose` binary); and for a
 * goloop node, backed up from one icon2-node host and restored onto a fresh one.
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, readdirSync, renameSync, statSync } from 'node:fs';
import { basename, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { ICON2_KEYSTORE } from '../bed/compose-stand-in.js';
import {
  balanceAt,
  blockHashAt,
  randomAddress,
  transferAt,
  type GoloopTransfer,
} from '../bed/goloop.js';
import { startGuideHost, type Compose, type GuideHost } from '../bed/guide-host.js';
import { goloopBin, goloopMissing } from '../bed/paths.js';
import { actionInputDefaults, type RunResult } from '../bed/runner.js';
import { check, errors, runBoth, said, stagingLeft } from './restore-kit.js';
import { startWorld, type World } from './world.js';

/** action.yml's `node-process-pattern`: what a restore takes for a running node. */
const DEFAULT_PATTERN = actionInputDefaults()['node-process-pattern'] ?? '';
const KEY = /^PRep\/(\d{8})\/(PRep_BH(\d+)_data-\d{8}_\d{4}\.tar\.gz)$/;
const TEN_MINUTES = 600_000;
const execFileAsync = promisify(execFile);

/** The only inputs set: the rest comes from action.yml. */
function minimal(
  world: World,
  host: GuideHost,
  mode: 'backup' | 'restore',
  bucket = world.bucket,
): Record<string, string> {
  return { mode, ...host.sshInputs(), bucket, endpoint: world.s3.endpoint };
}

/** The MinIO of the world; its loopback node is not used here (the nodes live on the hosts). */
async function quietWorld(): Promise<World> {
  const world = await startWorld({ blocks: 20, rate: 1 });
  await world.node.stop();
  return world;
}

/** A guide host with a running node (300 blocks at the start), started by its own Compose. */
async function sourceHost(compose: Compose, hosts: GuideHost[]): Promise<GuideHost> {
  const host = await startGuideHost({ compose });
  hosts.push(host);
  await host.initNode({ blocks: 300 });
  await host.compose('up -d');
  return host;
}

/** Checks what the host has of Compose, as bash (the shell of the action's commands) finds it. */
async function assertOnlyCompose(host: GuideHost): Promise<void> {
  const { stdout } = await host.sh(
    `exec bash -c 'for c in docker-compose docker; do command -v "$c" || echo "no $c"; done'`,
  );
  assert.deepEqual(
    stdout.trim().split('\n'),
    host.kind === 'v1'
      ? ['/usr/local/bin/docker-compose', 'no docker']
      : ['no docker-compose', '/usr/local/bin/docker'],
  );
}

/** A backup's archive: it exists, the list names it, and the day's permanent copy is made. */
async function assertPublished(
  world: World,
  run: { main: RunResult; post: RunResult },
  bucket = world.bucket,
): Promise<{ key: string; height: number }> {
  assert.equal(run.main.code, 0, said(run.main));
  assert.equal(run.post.code, 0, said(run.post));
  const key = run.main.outputs.key ?? '';
  const m = KEY.exec(key);
  assert.ok(m, `key ${key}`);
  const height = Number(run.main.outputs['block-height']);
  assert.equal(Number(m[3]), height);
  const keys = await world.s3.listKeys(bucket);
  assert.ok(keys.includes(key), keys.join('\n'));
  assert.ok(keys.includes(`Permanent/PRep/${m[1]}/${m[2]}`), keys.join('\n'));
  const list = (await world.s3.getText(bucket, 'PRep/backup_list')).split('\n').filter(Boolean);
  assert.equal(list[0], `${m[1]}/${m[2]}`);
  return { key, height };
}

/** Staging folders of a backup (the frozen copy) left beside or in the data dir. */
function frozenLeft(host: GuideHost): string[] {
  return [join(host.prepDir, 'data'), host.dataDir].flatMap((d) =>
    readdirSync(d).filter((n) => n.startsWith('.prep-snapshot-staging-')),
  );
}

/** The default stop and start ran on the source: the node was stopped, then started again. */
async function assertRestarted(host: GuideHost, since: number): Promise<void> {
  const events = host.events().filter((e) => e.ms >= since);
  const stop = events.findIndex((e) => e.event === 'stop-requested');
  const start = events.findIndex((e) => e.event === 'start-requested');
  assert.ok(stop >= 0 && start > stop, JSON.stringify(events));
  const status = await host.status();
  assert.equal(status.running, true);
}

/** A restore onto a fresh host of `compose` with the minimal inputs, and what it must leave. */
async function restoreOntoFresh(
  world: World,
  compose: Compose,
  snap: { key: string; height: number },
  hosts: GuideHost[],
  bucket = world.bucket,
): Promise<void> {
  const target = await startGuideHost({ compose });
  hosts.push(target);
  await assertOnlyCompose(target);
  assert.deepEqual(readdirSync(join(target.prepDir, 'data')), []);

  // This host lives in a network of its own and cannot reach the runner's S3 endpoint: told
  // to read the archive itself, the run says so and changes nothing.
  if (compose === 'v1') {
    const own = await runBoth(world, {
      ...minimal(world, target, 'restore', bucket),
      'download-on': 'host',
    });
    assert.notEqual(own.main.code, 0);
    assert.match(
      errors(own.main),
      /The host cannot read PRep\/.* from S3 \(HTTP 000, curl: .*\)\. Nothing was changed on the host\./,
    );
    assert.deepEqual(readdirSync(join(target.prepDir, 'data')), []);
  }
  const run = await runBoth(world, minimal(world, target, 'restore', bucket));
  assert.equal(run.main.code, 0, said(run.main));
  assert.equal(run.post.code, 0, said(run.post));
  // At its default, 'download-on' falls back to the runner relaying the archive.
  assert.match(
    run.main.stdout,
    /The host cannot read S3 \(HTTP 000, curl: .*\): the runner reads the archive and relays it over SSH\./,
  );
  assert.match(run.main.summary, /relayed by the runner/);
  assert.equal(run.main.outputs.key, snap.key);
  assert.ok(Number(run.main.outputs['height-reached']) >= snap.height, said(run.main));

  const status = await target.status();
  assert.equal(status.running, true);
  assert.ok((status.height ?? -1) >= snap.height, JSON.stringify(status));
  // The node IP is the one the host routes from; the node's process is what the default
  // pattern finds.
  assert.deepEqual(readdirSync(join(target.dataDir, '.storage')), [
    `db_${target.ip}:7100_icon_dex`,
  ]);
  assert.match(DEFAULT_PATTERN, /loopchain/);
  assert.equal((await target.processes(DEFAULT_PATTERN)).length, 1);
  assert.deepEqual(stagingLeft(join(target.prepDir, 'data')), []);
  assert.deepEqual(
    readdirSync(join(target.prepDir, 'data')).filter((n) => n.includes('.prev-')),
    [],
  );

  await target.compose('down');
  const c = await check(target.dataDir);
  assert.equal(c.ok, true, JSON.stringify(c));
  assert.ok(c.height >= snap.height, JSON.stringify(c));
  assert.equal(c.block_dir, `.storage/db_${target.ip}:7100_icon_dex`);
}

describe('every input at its default, Compose v1 (docker-compose)', () => {
  let world: World;
  let source: GuideHost;
  let since: number;
  let backup: { main: RunResult; post: RunResult };
  const hosts: GuideHost[] = [];

  before(
    async () => {
      world = await quietWorld();
      source = await sourceHost('v1', hosts);
      since = Date.now();
      backup = await runBoth(world, minimal(world, source, 'backup'));
    },
    { timeout: TEN_MINUTES },
  );
  after(async () => {
    for (const h of hosts) await h.stop();
    await world?.close();
  });

  it('backs up /app/prep with the default stop, start and peer API; backup_list names the archive', async () => {
    await assertOnlyCompose(source);
    await assertPublished(world, backup);
    await assertRestarted(source, since);
    assert.deepEqual(frozenLeft(source), []);
  });

  it(
    "restores onto a fresh host: the host's own IP names the block DB, the node runs at the snapshot's height",
    { timeout: TEN_MINUTES },
    async () => {
      assert.equal(backup.main.code, 0, said(backup.main));
      const snap = {
        key: backup.main.outputs.key ?? '',
        height: Number(backup.main.outputs['block-height']),
      };
      await restoreOntoFresh(world, 'v1', snap, hosts);
    },
  );

  it("refuses a restore onto the running source ('stop-node' is false) and changes nothing", async () => {
    const before = await source.status();
    assert.equal(before.running, true);
    const data = join(source.prepDir, 'data');
    const entries = readdirSync(data).sort();
    const storage = readdirSync(join(source.dataDir, '.storage'));
    const inode = statSync(source.dataDir).ino;
    const t0 = Date.now();

    const run = await runBoth(world, minimal(world, source, 'restore'));
    assert.notEqual(run.main.code, 0, said(run.main));
    assert.match(errors(run.main), /running/);
    assert.match(errors(run.main), /stop-node/);
    assert.equal(run.post.code, 0, said(run.post));

    const now = await source.status();
    assert.equal(now.running, true);
    assert.equal(now.pid, before.pid);
    assert.deepEqual(
      source.events().filter((e) => e.ms >= t0),
      [],
      'no stop or start on the source',
    );
    assert.deepEqual(readdirSync(data).sort(), entries);
    assert.deepEqual(readdirSync(join(source.dataDir, '.storage')), storage);
    assert.equal(statSync(source.dataDir).ino, inode);
    assert.deepEqual(stagingLeft(data), []);
  });
});

describe('every input at its default, Compose v2 (docker compose)', () => {
  let world: World;
  const hosts: GuideHost[] = [];
  const bucket = 'compose-v2';

  before(async () => {
    world = await quietWorld();
    await world.s3.createBucket(bucket);
  });
  after(async () => {
    for (const h of hosts) await h.stop();
    await world?.close();
  });

  it(
    'backs up and restores onto a fresh host with only docker compose',
    { timeout: TEN_MINUTES },
    async () => {
      const source = await sourceHost('v2', hosts);
      await assertOnlyCompose(source);
      const since = Date.now();
      const backup = await runBoth(world, minimal(world, source, 'backup', bucket));
      const snap = await assertPublished(world, backup, bucket);
      await assertRestarted(source, since);
      assert.deepEqual(frozenLeft(source), []);
      await restoreOntoFresh(world, 'v2', snap, hosts, bucket);
    },
  );
});

/** A host laid out as icon2-node's, its keystore and the service's genesis in `config/` (see `icon2Config`). */
async function goloopHost(compose: Compose, hosts: GuideHost[]): Promise<GuideHost> {
  const host = await startGuideHost({ compose, node: 'goloop' });
  hosts.push(host);
  return host;
}

/**
 * What an operator puts in a new icon2-node's `config/`: the P-Rep's keystore and, where the
 * image would carry it, the service's genesis. Made once by the goloop CLI in `dir`.
 */
async function icon2Config(dir: string): Promise<{ keystore: string; genesis: string }> {
  const goloop = (...args: string[]) =>
    execFileAsync(goloopBin(), args, { cwd: dir, env: { PATH: process.env.PATH } });
  const keystore = join(dir, ICON2_KEYSTORE.file);
  await goloop('ks', 'gen', '--out', keystore, '--password', ICON2_KEYSTORE.password);
  const json = join(dir, 'genesis.json');
  await goloop('gn', 'gen', '--out', json, '--god', keystore, keystore);
  const genesis = join(dir, 'genesis.zip');
  await goloop('gs', 'gen', '--input', json, '--out', genesis);
  return { keystore, genesis };
}

/** The node's API as the machine reaches it: goloop listens on every address of its host. */
const apiOf = (host: GuideHost): string => `http://${host.ip}:9000`;

/** The chain of the node on `host`, as its admin API lists it (undefined while it does not answer). */
async function chainOf(
  host: GuideHost,
): Promise<{ cid: string; nid: string; state: string; height: number } | undefined> {
  try {
    const r = await fetch(`${apiOf(host)}/admin/chain`, { signal: AbortSignal.timeout(5000) });
    const chains = (await r.json()) as Array<{
      cid: string;
      nid: string;
      state: string;
      height: number;
    }>;
    return chains[0];
  } catch {
    return undefined;
  }
}

/** Resolves once the chain on `host` is started at `height` or above. */
async function chainAt(host: GuideHost, height: number, timeoutMs = 120_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const c = await chainOf(host);
    if (c?.state === 'started' && c.height >= height) return c.height;
    if (Date.now() > deadline)
      throw new Error(`the chain on ${host.ip} is not at ${height}: ${JSON.stringify(c)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * ICON 2 with every input at its default: real goloop nodes on hosts laid out as icon2-node's
 * (its compose file in `/app/prep`, the node dir `./data`, the keystore in `./config`, the
 * admin API on localhost:9000, the control socket `data/cli.sock`), started by their own
 * Compose. node-kind, data-dir, peer-url, chain, format, stop-command and start-command are
 * the action's own, for the backup and for the restore onto a fresh host.
 */
describe('every input at its default, a goloop node', { skip: goloopMissing() }, () => {
  let world: World;
  let source: GuideHost;
  let config: { keystore: string; genesis: string };
  const hosts: GuideHost[] = [];
  const sent: GoloopTransfer[] = [];
  let key = '';
  let height = 0;

  before(
    async () => {
      world = await quietWorld();
      source = await goloopHost('v1', hosts);
      config = await icon2Config(join(source.prepDir, 'config'));
      // The operator's start: Compose up, which starts goloop, joins the chain and starts it.
      await source.compose('up -d');
      await chainAt(source, 1);
      const chain = await chainOf(source);
      const wallet = { ...config, password: ICON2_KEYSTORE.password, nid: chain?.nid ?? '' };
      for (let i = 0; i < 3; i++) {
        const to = randomAddress();
        sent.push(
          await transferAt(`${apiOf(source)}/api/v3/icon_dex`, wallet, to, 10n ** 18n + BigInt(i)),
        );
      }
    },
    { timeout: TEN_MINUTES },
  );
  after(async () => {
    for (const h of hosts) await h.stop();
    await world?.close();
  });

  it('backs up the chain through its socket, found on its own, as a tree', async () => {
    const run = await runBoth(world, minimal(world, source, 'backup'));
    assert.equal(run.main.code, 0, said(run.main));
    assert.equal(run.post.code, 0, said(run.post));
    assert.match(said(run.main), /Node kind: goloop \(found \/app\/prep\/data\/cli\.sock/);
    key = run.main.outputs.key ?? '';
    height = Number(run.main.outputs['block-height']);
    assert.match(key, /^PRep\/\d{8}\/PRep_BH\d+_data-\d{8}_\d{4}\.tree$/);
    const manifest = JSON.parse(await world.s3.getText(world.bucket, `${key}/manifest.json`)) as {
      nodeKind: string;
      facts: { channel: string };
      source: { dataDir: string };
      files: unknown[];
    };
    assert.equal(manifest.nodeKind, 'goloop');
    assert.equal(manifest.facts.channel, 'icon_dex');
    assert.equal(manifest.source.dataDir, '/app/prep/data');
    assert.ok(manifest.files.length > 0);
    // Its table files, where the young chain has any, went up before the stop.
    assert.match(said(run.main), /::group::Send the new table files while the node runs/);
    assert.ok(
      said(run.main).indexOf('while the node runs') < said(run.main).indexOf('Stopping the node'),
    );
    // icon2-node's restore finds it from the service's pointer.
    const pointer = JSON.parse(await world.s3.getText(world.bucket, 'PRep/PRep.json')) as {
      index_url: string;
    };
    assert.match(pointer.index_url, new RegExp(`/${key}/index\\.txt$`));
    assert.equal((await chainOf(source))?.state, 'started');
  });

  it(
    "restores onto a fresh icon2-node host: Compose starts goloop on the chain, at the snapshot's block hash and balances",
    { timeout: TEN_MINUTES },
    async () => {
      assert.ok(key, 'the backup ran');
      // A new machine: the compose file, and in config/ the P-Rep's keystore (the validator moves
      // here) and the genesis the image would carry. No node dir yet, nothing running.
      const target = await goloopHost('v2', hosts);
      for (const f of [config.keystore, config.genesis]) {
        copyFileSync(f, join(target.prepDir, 'config', basename(f)));
      }
      assert.deepEqual(readdirSync(target.prepDir).sort(), ['config', 'docker-compose.yml']);
      assert.equal(await chainOf(target), undefined);

      // Without the compose file, nothing would start goloop once the chain is in place: the
      // restore says which input to set before it changes anything.
      const compose = join(target.prepDir, 'docker-compose.yml');
      renameSync(compose, `${compose}.elsewhere`);
      const refused = await runBoth(world, minimal(world, target, 'restore'));
      assert.notEqual(refused.main.code, 0, said(refused.main));
      assert.equal(refused.post.code, 0, said(refused.post));
      assert.match(
        errors(refused.main),
        /goloop is not running on the host .*finds no \/app\/prep\/docker-compose\.yml.*Set 'prep-dir'.*'start-command'.*Nothing was changed on the host\./,
      );
      assert.deepEqual(readdirSync(target.prepDir).sort(), [
        'config',
        'docker-compose.yml.elsewhere',
      ]);
      renameSync(`${compose}.elsewhere`, compose);

      const run = await runBoth(world, minimal(world, target, 'restore'));
      assert.equal(run.main.code, 0, said(run.main));
      assert.equal(run.post.code, 0, said(run.post));
      assert.match(said(run.main), /Node kind: goloop, as the snapshot's manifest says/);
      // A tree's files share four SSH connections (ssh-connections) by default.
      assert.match(said(run.main), /\d+ files fetched \([^)]*\) in .* over 4 SSH channels\)\./);
      assert.equal(run.main.outputs.key, key);
      assert.ok(Number(run.main.outputs['height-reached']) >= height, said(run.main));

      // The node that Compose started serves the chain at the snapshot's block hash, with the
      // balances of the source, and goes on making blocks.
      const manifest = JSON.parse(await world.s3.getText(world.bucket, `${key}/manifest.json`)) as {
        facts: { cid: string; blockHash: string };
      };
      const rpc = `${apiOf(target)}/api/v3/icon_dex`;
      const sourceRpc = `${apiOf(source)}/api/v3/icon_dex`;
      assert.equal(await blockHashAt(rpc, height), manifest.facts.blockHash);
      assert.equal(await blockHashAt(rpc, height), await blockHashAt(sourceRpc, height));
      for (const t of sent) {
        assert.equal(await balanceAt(rpc, t.to), t.amount);
        assert.equal(await balanceAt(rpc, t.to), await balanceAt(sourceRpc, t.to));
      }
      const now = await chainAt(target, height);
      await chainAt(target, now + 2);
      assert.equal((await chainOf(target))?.cid, manifest.facts.cid);
      // Only the chain folder came; nothing of the restore is left beside the node dir.
      assert.ok(existsSync(join(target.dataDir, manifest.facts.cid.replace(/^0x/, ''), 'db')));
      assert.deepEqual(stagingLeft(target.prepDir), []);
      assert.deepEqual(
        readdirSync(target.prepDir).filter(
          (n) => n.startsWith('.prep-snapshot') || n.includes('.prev-'),
        ),
        [],
      );
    },
  );
});
