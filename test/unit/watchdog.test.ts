/**
 * The watchdog on the host and the run's hold on the node, run by a real shell: whoever
 * renames the flag first owns the stopped node, so the watchdog never starts the node in
 * the middle of a step that needs it down, and the run never moves data under a node that
 * the watchdog started.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  ABANDONED_HOLD_SECONDS,
  armWatchdogCommand,
  disarmWatchdogCommand,
  heldLines,
  NODE_LOST,
  nodeLostAt,
  parseDisarm,
} from '../../src/node-kind/watchdog.ts';
import { bashScript } from '../../src/shell.ts';

function sh(command: string): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync('sh', ['-c', command], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function until(ready: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!ready()) {
    if (Date.now() > deadline) throw new Error(`not ready within ${timeoutMs} ms`);
    await sleep(100);
  }
}

const alive = (pid: number) => spawnSync('kill', ['-0', String(pid)]).status === 0;

describe('the watchdog on the host', () => {
  let root: string;
  before(() => (root = mkdtempSync(join(tmpdir(), 'prep-watchdog-'))));
  after(() => rmSync(root, { recursive: true, force: true }));
  const files = (name: string) => ({ flag: join(root, name), started: join(root, `${name}-up`) });

  it('starts the node when nobody disarms it, and the disarm then says so', async () => {
    const { flag, started } = files('a');
    const pid = Number(sh(armWatchdogCommand(flag, 1, `touch ${started}`)).stdout.trim());
    assert.ok(pid > 0);
    assert.equal(readFileSync(`${flag}.pid`, 'utf8'), `${pid}\n`, 'its PID is beside the flag');
    await until(() => existsSync(started), 10_000);
    assert.equal(existsSync(flag), false);
    assert.match(readFileSync(`${flag}.log`, 'utf8'), /still down after 1 s; starting it/);
    const fired = parseDisarm(sh(disarmWatchdogCommand(flag)).stdout);
    assert.match(fired ?? '', /^\d{4}-\d\d-\d\dT/, 'the disarm reports when it fired');
    assert.ok(existsSync(`${flag}.log`), 'the log of a watchdog that fired stays');
    assert.equal(existsSync(`${flag}.fired`), false);
  });

  it('a disarmed watchdog is gone and never starts the node', async () => {
    const { flag, started } = files('b');
    const pid = Number(sh(armWatchdogCommand(flag, 2, `touch ${started}`)).stdout.trim());
    const out = sh(disarmWatchdogCommand(flag));
    assert.equal(out.code, 0);
    assert.equal(parseDisarm(out.stdout), undefined);
    assert.equal(existsSync(flag), false);
    await until(() => !alive(pid), 5_000);
    await sleep(2500);
    assert.equal(existsSync(started), false);
    assert.equal(existsSync(`${flag}.log`), false, 'an empty log goes');
  });

  it('waits for a step the run holds, and starts the node after it if still armed', async () => {
    const { flag, started } = files('c');
    sh(armWatchdogCommand(flag, 1, `touch ${started}`));
    // A step that holds the node for 3 s, past the watchdog's 1 s.
    const step = sh(
      bashScript([
        ...heldLines(flag),
        'sleep 3',
        `[ -e ${started} ] && echo started-inside || true`,
      ]),
    );
    assert.equal(step.code, 0, step.stderr);
    assert.equal(step.stdout, '', 'the node was not started while the step held it');
    assert.equal(existsSync(flag) || existsSync(started), true, 'the hold was given back');
    await until(() => existsSync(started), 10_000);
  });

  it('a step finds the node taken when the watchdog fired first, and changes nothing', async () => {
    const { flag, started } = files('d');
    sh(armWatchdogCommand(flag, 1, `touch ${started}`));
    await until(() => existsSync(started), 10_000);
    const moved = join(root, 'd-moved');
    const step = sh(bashScript([...heldLines(flag), `touch ${moved}`]));
    assert.equal(step.code, NODE_LOST);
    assert.match(nodeLostAt(step.stderr) ?? '', /^\d{4}-\d\d-\d\dT/);
    assert.equal(existsSync(moved), false, 'the step did nothing');
    sh(disarmWatchdogCommand(flag));
  });

  it('a step whose hold was taken as abandoned fails, though its own commands passed', () => {
    const { flag, started } = files('g');
    sh(armWatchdogCommand(flag, 60, `touch ${started}`));
    // The watchdog takes the hold while the step runs.
    const step = sh(bashScript([...heldLines(flag), `mv -- ${flag}.held ${flag}.fired`, 'true']));
    assert.equal(step.code, NODE_LOST, step.stderr);
    sh(disarmWatchdogCommand(flag));
  });

  it('a step that fails gives the hold back', () => {
    const { flag, started } = files('e');
    sh(armWatchdogCommand(flag, 60, `touch ${started}`));
    const step = sh(bashScript([...heldLines(flag), 'exit 9']));
    assert.equal(step.code, 9);
    assert.ok(existsSync(flag), 'armed again');
    assert.equal(existsSync(`${flag}.held`), false);
    sh(disarmWatchdogCommand(flag));
  });

  it('a hold older than max-downtime and the grace is a run that vanished mid-step: the node is started', async () => {
    const { flag, started } = files('f');
    sh(armWatchdogCommand(flag, 2, `touch ${started}`));
    // What a runner killed in the middle of a held step would leave: the hold, and no one.
    sh(`mv -- ${flag} ${flag}.held`);
    const old = new Date(Date.now() - (ABANDONED_HOLD_SECONDS + 10) * 1000);
    utimesSync(`${flag}.held`, old, old);
    await until(() => existsSync(started), 10_000);
    assert.equal(existsSync(`${flag}.held`), false);
    sh(disarmWatchdogCommand(flag));
  });

  it('where no watchdog was armed, a held step just runs', () => {
    const flag = join(root, 'never-armed');
    const step = sh(bashScript([...heldLines(flag), 'echo ran']));
    assert.equal(step.code, 0, step.stderr);
    assert.equal(step.stdout, 'ran\n');
  });
});
