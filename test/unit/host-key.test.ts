import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import {
  fingerprintOf,
  knownHostsLine,
  matchesPins,
  parseHostKeyPins,
  pinnedAlgorithms,
} from '../../src/ssh/host-key.ts';
import { Progress } from '../../src/progress.ts';
import { quote } from '../../src/shell.ts';

describe('host key pins', () => {
  const dir = mkdtempSync(join(tmpdir(), 'prep-hostkey-'));
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'k')]);
  const pub = readFileSync(join(dir, 'k.pub'), 'utf8').trim();
  const blob = Buffer.from(pub.split(' ')[1]!, 'base64');
  // OpenSSH's own fingerprint of the same key.
  const openssh = execFileSync('ssh-keygen', ['-lf', join(dir, 'k.pub')])
    .toString()
    .split(' ')[1]!;
  rmSync(dir, { recursive: true, force: true });

  it('computes the fingerprint OpenSSH prints', () => {
    assert.equal(fingerprintOf(blob), openssh);
  });

  it('accepts a fingerprint, a public key line and a known_hosts line', () => {
    for (const text of [
      openssh,
      pub,
      `[node.example]:2222 ${pub}`,
      `# comment\nnode.example ${pub}\n`,
    ]) {
      assert.equal(matchesPins(blob, parseHostKeyPins(text)), true, text);
    }
  });

  it('refuses another key', () => {
    assert.equal(matchesPins(blob, parseHostKeyPins(`SHA256:${'B'.repeat(43)}`)), false);
  });

  it('offers only the pinned key types, so the server shows the pinned key', () => {
    assert.deepEqual(pinnedAlgorithms(parseHostKeyPins(pub)), ['ssh-ed25519']);
    assert.equal(pinnedAlgorithms(parseHostKeyPins(openssh)), undefined);
  });

  it('writes a known_hosts line for OpenSSH with the port', () => {
    assert.equal(
      knownHostsLine('10.0.0.1', 2222, blob),
      `[10.0.0.1]:2222 ssh-ed25519 ${blob.toString('base64')}`,
    );
    assert.equal(knownHostsLine('10.0.0.1', 22, blob).startsWith('10.0.0.1 ssh-ed25519 '), true);
  });

  it('rejects a line that is no key', () => {
    assert.throws(
      () => parseHostKeyPins('node.example ssh-ed25519 not!base64'),
      /neither a 'SHA256/,
    );
  });
});

describe('quote', () => {
  it('makes one shell word of anything', () => {
    for (const value of [
      'plain',
      "it's",
      'a b',
      '$(reboot)',
      '`id`',
      'db_1.2.3.4:7100_icon_dex',
      '',
      'x\ny',
      '; rm -rf /',
    ]) {
      const echoed = execFileSync('sh', ['-c', `printf '%s' ${quote(value)}`]).toString();
      assert.equal(echoed, value);
    }
  });
});

describe('progress line', () => {
  it('says bytes, rate and an estimate of the time left', () => {
    const p = new Progress('Upload', 1000 * 1024 * 1024, 60_000);
    p.sent = 100 * 1024 * 1024;
    p.read = 250 * 1024 * 1024;
    const line = p.line();
    p.stop();
    assert.match(line, /^Upload: 100.0 MiB sent, .+\/s, 25% of 1000.0 MiB read, ETA .+/);
  });
});
