/**
 * Bad input gets a clear error before the node is touched: each case fails the step
 * (exit code 1) with an `::error::` that says what is wrong, and the node never receives
 * a stop. Run against real parts: the packaged action, sshd, MinIO, a simulated node.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { freePort } from '../bed/ports.js';
import type { RunResult } from '../bed/runner.js';
import { generateKey } from '../bed/sshd.js';
import { startWorld, tempDir, type World } from './world.js';

function show(run: RunResult): string {
  return `exit ${run.code}\n--- stdout\n${run.stdout}\n--- stderr\n${run.stderr}`;
}

describe('bad input', () => {
  let world: World;
  before(async () => {
    world = await startWorld({ blocks: 600 });
  });
  after(() => world?.close());

  /** Runs the main step with `extra` inputs; it must fail with an error matching `message`, the node untouched. */
  async function rejects(
    extra: Record<string, string>,
    message: RegExp,
    env?: Record<string, string>,
  ): Promise<RunResult> {
    const since = Date.now();
    const run = await world.main(extra, env ? { env } : {});
    assert.equal(run.code, 1, show(run));
    const errors = run.annotations.filter((a) => a.level === 'error');
    assert.equal(errors.length, 1, show(run));
    assert.match(errors[0]?.message ?? '', message, show(run));
    // Untouched: no stop was asked for, and it runs.
    const stops = world.node.events().filter((e) => e.ms >= since && e.event === 'stop-requested');
    assert.deepEqual(stops, [], 'no stop was requested');
    assert.equal((await world.node.status()).running, true);
    assert.doesNotMatch(run.stdout, /Watchdog armed/);
    return run;
  }

  it('a missing bucket', async () => {
    await rejects({ bucket: '' }, /Input 'bucket' is required/);
  });

  it('an unknown mode', async () => {
    await rejects(
      { mode: 'snapshot' },
      /Input 'mode' is 'snapshot'\. Use one of: backup, restore, list, verify/,
    );
  });

  it('an invalid boolean', async () => {
    await rejects({ 'local-copy': 'yes' }, /Input 'local-copy' is 'yes'\. Use 'true' or 'false'/);
  });

  it('no host key pin and no opt-out', async () => {
    await rejects({ 'host-key': '' }, /Input 'host-key' is required/);
  });

  it('an unreachable host', async () => {
    const closed = await freePort();
    await rejects(
      { port: String(closed) },
      new RegExp(`Could not reach .*127\\.0\\.0\\.1:${closed}: ECONNREFUSED`),
    );
  });

  it('a host key that does not match the pin', async () => {
    const wrong = `SHA256:${randomBytes(32).toString('base64').replace(/=+$/, '')}`;
    await rejects(
      { 'host-key': wrong },
      new RegExp(
        `The host key of 127\\.0\\.0\\.1:\\d+ \\(${world.sshd.hostKeyFingerprint.replace(/[+/]/g, '\\$&')}\\) does not match 'host-key'`,
      ),
    );
  });

  it('a rejected login', async () => {
    const stranger = await generateKey(tempDir('prep-stranger-'));
    await rejects({ 'ssh-key': stranger.privateKey }, /refused the login with 'ssh-key'/);
  });

  it('a prep-dir without a data directory', async () => {
    const empty = tempDir('prep-empty-');
    await rejects(
      { 'prep-dir': empty },
      new RegExp(`${empty}/data/loopchain does not exist on the host`),
    );
  });

  it('a data dir without the loopchain layout', async () => {
    const empty = tempDir('prep-empty-');
    await rejects(
      { 'data-dir': empty },
      /lacks \.score_data and \.storage: it is not a loopchain data directory/,
    );
  });

  it('a bucket that does not exist', async () => {
    await rejects({ bucket: 'no-such-bucket' }, /S3 answered 404 for bucket 'no-such-bucket'/);
  });

  it('no AWS credentials', async () => {
    await rejects({}, /No AWS credentials were found/, {
      // Nothing from the bed's env (the runner harness drops AWS_*), and nowhere else to look.
      AWS_REGION: 'us-east-1',
      AWS_SHARED_CREDENTIALS_FILE: '/nonexistent',
      AWS_CONFIG_FILE: '/nonexistent',
      AWS_EC2_METADATA_DISABLED: 'true',
    });
  });

  it('insecure-skip-host-key-check without host-key works, with a warning naming the fingerprint', async () => {
    const run = await world.main({
      'host-key': '',
      'insecure-skip-host-key-check': 'true',
      prefix: 'Insecure',
      'permanent-copy': 'false',
    });
    assert.equal(run.code, 0, show(run));
    const warning = run.annotations.find(
      (a) => a.level === 'warning' && /Host key checking is off/.test(a.message),
    );
    assert.ok(warning, show(run));
    assert.ok(warning.message.includes(world.sshd.hostKeyFingerprint), warning.message);
    assert.ok((await world.backupList('Insecure')).length === 1);
    assert.equal((await world.node.status()).running, true);
  });
});
