/**
 * The defaults that find and drive the node on a host laid out as the original guide's:
 * the Compose command (v1 or v2, whichever the host has) and the process check, which must
 * match the node and never the action's own shells.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { batchCommand, parseBatch, processCheckCommand } from '../../src/node-kind/remote.ts';
import { restoreProbeCommand } from '../../src/node-kind/restore-commands.ts';
import { composeCommand, parseSettings } from '../../src/settings.ts';
import { bashScript } from '../../src/shell.ts';

const root = mkdtempSync(join(tmpdir(), 'prep-node-check-'));
after(() => rmSync(root, { recursive: true, force: true }));

/** A bin dir holding stand-ins that log how they were called. */
function binDir(name: string, tools: string[]): { bin: string; log: string } {
  const bin = join(root, name);
  mkdirSync(bin, { recursive: true });
  const log = join(bin, 'calls.log');
  for (const tool of tools) {
    const file = join(bin, tool);
    writeFileSync(file, `#!/bin/sh\necho "${tool} $* in $(pwd)" >> '${log}'\n`);
    chmodSync(file, 0o755);
  }
  return { bin, log };
}

function runWithPath(command: string, bin: string): number | null {
  // The system dirs stay for sh's own tools; the stand-ins shadow nothing else.
  return spawnSync('sh', ['-c', command], {
    env: { PATH: `${bin}:/usr/bin:/bin` },
    stdio: 'ignore',
  }).status;
}

describe('the default stop and start commands', () => {
  const prep = join(root, 'app prep');
  mkdirSync(prep, { recursive: true });

  it('run docker-compose where the host has it (Compose v1)', () => {
    const { bin, log } = binDir('v1', ['docker-compose', 'docker']);
    assert.equal(runWithPath(composeCommand(prep, 'down'), bin), 0);
    assert.equal(runWithPath(composeCommand(prep, 'up -d'), bin), 0);
    assert.equal(
      readFileSync(log, 'utf8'),
      `docker-compose -f docker-compose.yml down in ${prep}\n` +
        `docker-compose -f docker-compose.yml up -d in ${prep}\n`,
    );
  });

  it('run docker compose where only docker is there (Compose v2)', () => {
    const { bin, log } = binDir('v2', ['docker']);
    assert.equal(runWithPath(composeCommand(prep, 'down'), bin), 0);
    assert.equal(runWithPath(composeCommand(prep, 'up -d'), bin), 0);
    assert.equal(
      readFileSync(log, 'utf8'),
      `docker compose -f docker-compose.yml down in ${prep}\n` +
        `docker compose -f docker-compose.yml up -d in ${prep}\n`,
    );
  });

  it('pass over a docker-compose that cannot run (not executable)', () => {
    const { bin, log } = binDir('v2-stale-v1', ['docker', 'docker-compose']);
    chmodSync(join(bin, 'docker-compose'), 0o644);
    assert.equal(runWithPath(composeCommand(prep, 'down'), bin), 0);
    assert.equal(
      readFileSync(log, 'utf8'),
      `docker compose -f docker-compose.yml down in ${prep}\n`,
    );
  });

  it('are what the settings hold when the inputs are left empty', () => {
    const s = parseSettings((name) =>
      name === 'bucket'
        ? 'snapshots'
        : name === 'host'
          ? 'node.example'
          : name === 'ssh-key'
            ? '-----BEGIN OPENSSH PRIVATE KEY-----\nx\n-----END OPENSSH PRIVATE KEY-----'
            : name === 'insecure-skip-host-key-check'
              ? 'true'
              : '',
    );
    assert.equal(s.node.stopCommand, composeCommand('/app/prep', 'down'));
    assert.equal(s.node.startCommand, composeCommand('/app/prep', 'up -d'));
  });
});

describe('the process check with the default pattern', () => {
  const pattern = 'icon_service|loopchain';
  const dataDir = join(root, 'app/prep/data/loopchain');

  it("matches a node's process and none of the action's own commands beside it", async () => {
    // A process named like loopchain's, as a node's ps line reads.
    const node = spawn('bash', ['-c', 'exec -a loopchain-node-sim sleep 60'], { stdio: 'ignore' });
    // One of the action's own scripts that names the data dir, still running during the check.
    const own = spawn('sh', ['-c', bashScript([`d=${dataDir}`, 'sleep 60', 'echo "$d"'])], {
      stdio: 'ignore',
    });
    try {
      await new Promise((r) => setTimeout(r, 300));
      // The checks run as one batch, as the restore runs them: the batch names the data dir too.
      const out = spawnSync(
        'sh',
        [
          '-c',
          batchCommand({
            processes: processCheckCommand(pattern),
            probe: restoreProbeCommand(dataDir),
          }),
        ],
        { encoding: 'utf8' },
      );
      assert.equal(out.status, 0, out.stderr);
      const lines = (parseBatch(out.stdout).get('processes')?.stdout ?? '')
        .split('\n')
        .filter(Boolean);
      const ours = lines.filter((l) => l.includes(dataDir));
      assert.deepEqual(ours, [], `the action's own commands are left out:\n${lines.join('\n')}`);
      assert.ok(
        lines.some((l) => l.trim().startsWith(`${node.pid} loopchain-node-sim`)),
        `the node's process is found:\n${lines.join('\n')}`,
      );
    } finally {
      node.kill();
      own.kill();
    }
  });

  it('prints nothing when no node runs', () => {
    const out = spawnSync('sh', ['-c', processCheckCommand('no-such-node-process-[x]yz')], {
      encoding: 'utf8',
    });
    assert.equal(out.status, 0);
    assert.equal(out.stdout, '');
  });
});
