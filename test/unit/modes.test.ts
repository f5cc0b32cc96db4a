/**
 * The modes against a node in memory (test/fakes/fake-node.ts): each test reads the order in
 * which a mode did things to the node, in the time it takes to run the mode's own code. The
 * S3 side is a real MinIO; the end-to-end tests run the same procedures over a real sshd.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import { backup } from '../../src/modes/backup.ts';
import { restore } from '../../src/modes/restore.ts';
import { parseSettings, type Settings } from '../../src/settings.ts';
import { s3Env, startMinio, type S3Server } from '../bed/minio.ts';
import { FakeNode, type Files } from '../fakes/fake-node.ts';

const KEY = '-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----';
const DATA: Files = { '.score_data/db/icon_dex/000005.ldb': 'score', '.storage/db/CURRENT': 'm1' };

describe('the modes against a node in memory', () => {
  let s3: S3Server;
  let dir: string;
  let bucket = 0;
  let settingsOf: (extra?: Record<string, string>) => Settings;

  before(async () => {
    s3 = await startMinio();
    Object.assign(process.env, s3Env(s3));
    dir = mkdtempSync(join(tmpdir(), 'prep-modes-'));
    // What the runner gives a step: the files behind outputs, state and the job summary.
    for (const f of ['GITHUB_OUTPUT', 'GITHUB_STATE', 'GITHUB_STEP_SUMMARY']) {
      process.env[f] = join(dir, f);
      writeFileSync(join(dir, f), '');
    }
  });
  after(async () => {
    await s3?.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  beforeEach(async () => {
    const name = `modes-${++bucket}`;
    await s3.createBucket(name);
    settingsOf = (extra = {}) => {
      const inputs: Record<string, string> = {
        host: 'node.example',
        'ssh-key': KEY,
        'insecure-skip-host-key-check': 'true',
        bucket: name,
        endpoint: s3.endpoint,
        'permanent-copy': 'false',
        ...extra,
      };
      return parseSettings((n) => inputs[n] ?? '');
    };
  });

  async function backedUp(): Promise<string> {
    const node = new FakeNode({ ...DATA });
    const r = await backup(settingsOf(), undefined, node.connect);
    assert.ok(r.key);
    return r.key;
  }

  it('backup reads as its procedure: the node is down only for the freeze', async () => {
    const node = new FakeNode({ ...DATA });
    const r = await backup(settingsOf(), undefined, node.connect);
    assert.equal(r.skipped, false);
    const c = node.calls;
    const at = (what: string) => c.findIndex((x) => x.startsWith(what));
    assert.ok(at('inspect') < at('height'));
    assert.ok(
      at('archive opened') < at('The stop command'),
      'the data channel is open before the stop',
    );
    assert.ok(at('Arming the watchdog') < at('The stop command'));
    assert.ok(at('The stop command') < at('freeze') && at('freeze') < at('The start command'));
    assert.ok(at('The start command') < at('archive streams'), 'the stream waits for the node');
    assert.ok(at('Disarming the watchdog') > at('The start command'));
    assert.equal(node.running, true);
    assert.deepEqual(
      (await s3.getText(settingsOf().s3.bucket, 'PRep/backup_list')).trim(),
      r.key!.replace(/^PRep\//, ''),
    );
  });

  it('archive backup: the settled tables go up before the stop, the rest after; it restores whole', async () => {
    const node = new FakeNode({ ...DATA, '.storage/db/000007.ldb': 'seven' });
    node.settledTables = true;
    const r = await backup(settingsOf(), undefined, node.connect);
    const c = node.calls;
    const at = (what: string) => c.findIndex((x) => x.startsWith(what));
    assert.ok(at('link ahead') < at('archive ahead streams'));
    assert.ok(at('archive ahead streams') < at('The stop command'), c.join('\n'));
    assert.ok(c.some((x) => x.endsWith('(after the tables sent ahead)')));
    assert.ok(at('The start command') < at('archive streams'), 'the rest waits for the node');
    assert.equal(node.running, true);
    const bucketName = settingsOf().s3.bucket;
    const manifest = JSON.parse(await s3.getText(bucketName, `_prep-snapshot/${r.key}.json`));
    assert.deepEqual(manifest.ahead, {
      files: 2,
      tarBytes: 0,
      bytes: manifest.ahead.bytes,
      removed: 0,
    });
    // One object: the tables, then the rest without them.
    const [first, rest] = (await s3.getText(bucketName, r.key!))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Files);
    assert.deepEqual(Object.keys(first!).sort(), [
      '.score_data/db/icon_dex/000005.ldb',
      '.storage/db/000007.ldb',
    ]);
    assert.deepEqual(rest, { '.storage/db/CURRENT': 'm1' });
    const target = new FakeNode({ old: 'data' });
    target.running = false;
    await restore(settingsOf({ mode: 'restore' }), target.connect);
    assert.deepEqual(target.files, { ...DATA, '.storage/db/000007.ldb': 'seven' });
  });

  it('archive backup whose SSH connection is lost while the tables go ahead: never stopped, nothing stored', async () => {
    const node = new FakeNode({ ...DATA });
    node.settledTables = true;
    node.faults.ahead = 'lost';
    await assert.rejects(
      backup(settingsOf(), undefined, node.connect),
      /The SSH connection was lost while the archive streamed \(the table files, ahead of the stop: the node was not stopped\)\. Nothing was published\./,
    );
    assert.ok(!node.calls.includes('The stop command'));
    assert.equal(node.running, true);
    assert.deepEqual(await s3.listKeys(settingsOf().s3.bucket), []);
    assert.equal(await s3.listMultipartUploads(settingsOf().s3.bucket), 0);
  });

  it('archive backup whose table changed while it went ahead: the whole archive goes up after the freeze', async () => {
    const node = new FakeNode({ ...DATA });
    node.settledTables = true;
    node.faults.ahead = 'changed';
    const r = await backup(settingsOf(), undefined, node.connect);
    assert.ok(node.calls.includes('archive ahead streams'));
    assert.ok(!node.calls.some((x) => x.endsWith('(after the tables sent ahead)')));
    const bucketName = settingsOf().s3.bucket;
    const manifest = JSON.parse(await s3.getText(bucketName, `_prep-snapshot/${r.key}.json`));
    assert.equal(manifest.ahead, undefined);
    assert.deepEqual(JSON.parse(await s3.getText(bucketName, r.key!)), DATA);
    assert.equal(await s3.listMultipartUploads(bucketName), 0, 'the dropped upload was aborted');
  });

  it('backup of a node whose API is silent: started, nothing stored', async () => {
    const node = new FakeNode({ ...DATA });
    node.faults.silent = true;
    const r = await backup(settingsOf(), undefined, node.connect);
    assert.equal(r.skipped, true);
    assert.ok(node.calls.includes('The start command'));
    assert.ok(!node.calls.some((x) => x.startsWith('freeze') || x === 'The stop command'));
    assert.deepEqual(await s3.listKeys(settingsOf().s3.bucket), []);
  });

  it('backup whose freeze fails: the node is started, nothing is stored, the error says why', async () => {
    const node = new FakeNode({ ...DATA });
    node.faults.freeze = true;
    await assert.rejects(
      backup(settingsOf(), undefined, node.connect),
      /Hard links are not possible/,
    );
    assert.equal(node.running, true);
    assert.ok(
      node.calls.indexOf('The start command') > node.calls.findIndex((x) => x.startsWith('freeze')),
    );
    assert.deepEqual(await s3.listKeys(settingsOf().s3.bucket), []);
  });

  it('backup with consistency: stop whose node the watchdog started: nothing is published', async () => {
    const node = new FakeNode({ ...DATA });
    node.faults.watchdogFired = true;
    await assert.rejects(
      backup(settingsOf({ consistency: 'stop' }), undefined, node.connect),
      /the watchdog on the host started it at .*nothing was published/,
    );
    assert.deepEqual(await s3.listKeys(settingsOf().s3.bucket), []);
    assert.equal(node.running, true);
  });

  it('restore refuses a running node before anything streams', async () => {
    await backedUp();
    const node = new FakeNode({ old: 'data' });
    await assert.rejects(
      restore(settingsOf({ mode: 'restore' }), node.connect),
      /is running .*set 'stop-node: true'/,
    );
    assert.ok(!node.calls.includes('extract streams'));
    assert.ok(!node.calls.includes('The stop command'));
    assert.deepEqual(node.files, { old: 'data' });
  });

  it('restore with stop-node stops the node only once the snapshot has streamed, for the swap', async () => {
    await backedUp();
    const node = new FakeNode({ old: 'data' });
    const r = await restore(settingsOf({ mode: 'restore', 'stop-node': 'true' }), node.connect);
    assert.ok(r.heightReached !== undefined);
    const c = node.calls;
    assert.ok(c.indexOf('extracted') < c.indexOf('The stop command'), c.join('\n'));
    assert.ok(c.indexOf('The stop command') < c.indexOf('swap'));
    assert.ok(c.indexOf('swap') < c.indexOf('The start command'));
    assert.ok(c.indexOf('The start command') < c.indexOf('health'));
    assert.deepEqual(node.files, DATA);
    assert.deepEqual(node.previous, { old: 'data' }, 'the previous data is kept');
    assert.equal(node.running, true);
  });

  it('restore whose swap finds the watchdog fired: nothing moves or goes, the run says why', async () => {
    await backedUp();
    const node = new FakeNode({ old: 'data' });
    node.faults.watchdogFired = true;
    await assert.rejects(
      restore(
        settingsOf({ mode: 'restore', 'stop-node': 'true', 'keep-previous': 'false' }),
        node.connect,
      ),
      /watchdog on the host started it at .*The data dir was not touched/,
    );
    assert.deepEqual(node.files, { old: 'data' });
    assert.ok(!node.calls.some((x) => x.startsWith('remove /')), node.calls.join('\n'));
  });

  it('restore onto a node that does not come up rolls back; keep-previous false removes nothing', async () => {
    await backedUp();
    const node = new FakeNode({ old: 'data' });
    node.running = false;
    node.faults.unhealthy = true;
    await assert.rejects(
      restore(
        settingsOf({ mode: 'restore', 'health-timeout': '1s', 'keep-previous': 'false' }),
        node.connect,
      ),
      /did not reach block height .*previous data dir was put back/,
    );
    assert.deepEqual(node.files, { old: 'data' });
    assert.ok(node.calls.indexOf('rollback') > node.calls.lastIndexOf('The stop command'));
    assert.equal(node.running, false, 'a node that was down before is left down');
  });

  it('restore removes the staging folders that restores of other snapshots left, before it streams; not a busy one', async () => {
    await backedUp();
    const node = new FakeNode({ old: 'data' });
    node.running = false;
    const GiB = 1024 ** 3;
    // Less room than the snapshot and 'disk-margin' need, until the left folders are gone.
    node.freeBytes = 0.5 * GiB;
    const parent = '/app/prep/data';
    node.stages = [
      {
        path: `${parent}/.prep-snapshot-restore-tree-0123456789abcdef`,
        bytes: 2 * GiB,
        busy: false,
      },
      { path: `${parent}/.prep-snapshot-restore-1234-1-99`, bytes: 1024, busy: false },
      { path: `${parent}/.prep-snapshot-restore-tree-fedcba9876543210`, bytes: 4096, busy: true },
    ];
    await restore(settingsOf({ mode: 'restore' }), node.connect);
    const c = node.calls;
    const removed = c.filter((x) => x.startsWith('remove staging'));
    assert.deepEqual(removed, [
      `remove staging ${parent}/.prep-snapshot-restore-tree-0123456789abcdef`,
      `remove staging ${parent}/.prep-snapshot-restore-1234-1-99`,
    ]);
    assert.ok(c.indexOf(removed[1]!) < c.indexOf('extract streams'), c.join('\n'));
    assert.deepEqual(
      node.stages.map((s) => s.path),
      [`${parent}/.prep-snapshot-restore-tree-fedcba9876543210`],
    );
    assert.deepEqual(node.files, DATA);
  });

  it('restore refuses a host where nothing would start the node, before anything changes', async () => {
    await backedUp();
    const node = new FakeNode({ old: 'data' });
    node.running = false;
    node.cannotStart = `'start-command' is not set, and its default finds no /app/prep/docker-compose.yml.`;
    const left = {
      path: '/app/prep/data/.prep-snapshot-restore-tree-0123456789abcdef',
      bytes: 1,
      busy: false,
    };
    node.stages = [left];
    await assert.rejects(
      restore(settingsOf({ mode: 'restore' }), node.connect),
      /finds no \/app\/prep\/docker-compose\.yml\. Nothing was changed on the host\./,
    );
    assert.ok(!node.calls.includes('extract streams'));
    assert.deepEqual(node.stages, [left]);
    assert.deepEqual(node.files, { old: 'data' });
    // With 'start-node: false' nothing is to be started: the restore goes ahead.
    await restore(settingsOf({ mode: 'restore', 'start-node': 'false' }), node.connect);
    assert.deepEqual(node.files, DATA);
  });

  it('restore with keep-previous false and start-node false keeps the previous data', async () => {
    await backedUp();
    const node = new FakeNode({ old: 'data' });
    node.running = false;
    await restore(
      settingsOf({ mode: 'restore', 'keep-previous': 'false', 'start-node': 'false' }),
      node.connect,
    );
    assert.deepEqual(node.previous, { old: 'data' });
    assert.ok(!node.calls.some((x) => x.startsWith('remove /')));
    assert.equal(node.running, false);
  });
});
