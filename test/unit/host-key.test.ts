import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { InputError } from '../../src/errors.ts';
import {
  fingerprintOf,
  HOST_KEY_ALGORITHMS,
  knownHostsLine,
  knownHostsNamesMatch,
  matchesPins,
  parseHostKeyPins,
  pinnedAlgorithms,
} from '../../src/ssh/host-key.ts';
import { HeldLog, Progress } from '../../src/progress.ts';
import { quote } from '../../src/shell.ts';

describe('host key pins', () => {
  const dir = mkdtempSync(join(tmpdir(), 'prep-hostkey-'));
  execFileSync('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', join(dir, 'k')]);
  const pub = readFileSync(join(dir, 'k.pub'), 'utf8').trim();
  const key = pub.split(' ').slice(0, 2).join(' ');
  const blob = Buffer.from(pub.split(' ')[1]!, 'base64');
  // OpenSSH's own fingerprint of the same key.
  const openssh = execFileSync('ssh-keygen', ['-lf', join(dir, 'k.pub')])
    .toString()
    .split(' ')[1]!;
  after(() => rmSync(dir, { recursive: true, force: true }));

  const on22 = { host: 'node.example', port: 22 };
  const on2222 = { host: 'node.example', port: 2222 };

  /** Whether OpenSSH's own lookup (`ssh-keygen -F`) finds the line for the target. */
  function opensshFinds(line: string, target: { host: string; port: number }): boolean {
    const file = join(dir, 'known_hosts');
    writeFileSync(file, `${line}\n`);
    const name = target.port === 22 ? target.host : `[${target.host}]:${target.port}`;
    return spawnSync('ssh-keygen', ['-F', name, '-f', file]).status === 0;
  }

  it('computes the fingerprint OpenSSH prints', () => {
    assert.equal(fingerprintOf(blob), openssh);
  });

  it('accepts a fingerprint, a public key line and a known_hosts line of the host', () => {
    for (const [text, target] of [
      [openssh, on2222],
      [pub, on2222],
      [`[node.example]:2222 ${pub}`, on2222],
      [`# comment\nnode.example ${pub}\n`, on22],
      [`node.example,10.0.0.1 ${key}`, { host: '10.0.0.1', port: 22 }],
    ] as const) {
      assert.equal(matchesPins(blob, parseHostKeyPins(text, target)), true, text);
    }
  });

  it('refuses another key', () => {
    assert.equal(matchesPins(blob, parseHostKeyPins(`SHA256:${'B'.repeat(43)}`, on22)), false);
  });

  it('refuses @revoked and @cert-authority lines, which are no pins', () => {
    assert.throws(
      () => parseHostKeyPins(`@revoked node.example ${key}`, on22),
      (e: unknown) => e instanceof InputError && /'@revoked' line/.test(e.message),
    );
    assert.throws(
      () => parseHostKeyPins(`@cert-authority *.example ${key}`, on22),
      (e: unknown) => e instanceof InputError && /'@cert-authority' line/.test(e.message),
    );
    assert.throws(
      () => parseHostKeyPins(`${openssh}\n@revoked * ${key}`, on22),
      (e: unknown) => e instanceof InputError && /line 2 is a '@revoked' line/.test(e.message),
    );
  });

  it('refuses a known_hosts line that names another host, naming both', () => {
    assert.throws(
      () => parseHostKeyPins(`other.example ${key}`, on22),
      (e: unknown) =>
        e instanceof InputError && /names 'other\.example', not 'node\.example'/.test(e.message),
    );
    assert.throws(
      () => parseHostKeyPins(`[node.example]:2200 ${key}`, on2222),
      /names '\[node\.example\]:2200', not '\[node\.example\]:2222'/,
    );
  });

  it('on a port other than 22, wants the [host]:port name and says so', () => {
    assert.throws(
      () => parseHostKeyPins(`node.example ${key}`, on2222),
      (e: unknown) =>
        e instanceof InputError &&
        /names 'node\.example', not '\[node\.example\]:2222'/.test(e.message) &&
        /ssh-keyscan -p 2222 node\.example/.test(e.message),
    );
  });

  it('matches names, patterns and negations as OpenSSH does', () => {
    const names = [
      'node.example',
      'NODE.example',
      'n?de.example',
      '*.example',
      '*',
      '*.example,!node.example',
      '!other.example,node.*',
      '!node.example',
      'node.example,10.0.0.1',
      '[node.example]:2222',
      '[node.example]:22',
      '[*]:2222',
      'other.example',
      'node.exampl',
      'node.example.org',
    ];
    const targets = [
      on22,
      on2222,
      { host: '10.0.0.1', port: 22 },
      { host: 'Node.Example', port: 22 },
    ];
    for (const n of names) {
      for (const target of targets) {
        const line = `${n} ${key}`;
        const expected = opensshFinds(line, target);
        assert.equal(
          knownHostsNamesMatch(n, target),
          expected,
          `${n} for ${JSON.stringify(target)}`,
        );
        if (expected) assert.equal(parseHostKeyPins(line, target).length, 1);
        else assert.throws(() => parseHostKeyPins(line, target), /names .*, not /);
      }
    }
  });

  it('checks hashed names (|1|salt|hash) by their HMAC-SHA1', () => {
    const file = join(dir, 'hashed');
    writeFileSync(file, `node.example ${key}\n[node.example]:2222 ${key}\n`);
    execFileSync('ssh-keygen', ['-q', '-H', '-f', file]);
    const [plain22, plain2222] = readFileSync(file, 'utf8').trim().split('\n');
    assert.match(plain22!, /^\|1\|/);
    assert.equal(matchesPins(blob, parseHostKeyPins(plain22!, on22)), true);
    assert.equal(matchesPins(blob, parseHostKeyPins(plain2222!, on2222)), true);
    assert.throws(
      () => parseHostKeyPins(plain22!, on2222),
      /names a hashed host name, not '\[node\.example\]:2222'/,
    );
    assert.throws(
      () => parseHostKeyPins(plain22!, { host: 'other.example', port: 22 }),
      /names a hashed host name, not 'other\.example'/,
    );
  });

  it('refuses a key type that cannot be checked', () => {
    const type = Buffer.from('sk-ssh-ed25519@openssh.com');
    const length = Buffer.alloc(4);
    length.writeUInt32BE(type.length);
    const sk = Buffer.concat([length, type, Buffer.alloc(40, 1)]).toString('base64');
    assert.throws(
      () => parseHostKeyPins(`node.example sk-ssh-ed25519@openssh.com ${sk}`, on22),
      /holds a 'sk-ssh-ed25519@openssh\.com' key, which cannot be checked/,
    );
  });

  it('offers the pinned key types first, every type for a fingerprint', () => {
    assert.deepEqual(pinnedAlgorithms(parseHostKeyPins(pub, on22)), ['ssh-ed25519']);
    assert.deepEqual(pinnedAlgorithms(parseHostKeyPins(openssh, on22)), [...HOST_KEY_ALGORITHMS]);
    assert.deepEqual(HOST_KEY_ALGORITHMS, [
      'ssh-ed25519',
      'ecdsa-sha2-nistp256',
      'ecdsa-sha2-nistp384',
      'ecdsa-sha2-nistp521',
      'rsa-sha2-512',
      'rsa-sha2-256',
      'ssh-rsa',
    ]);
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
      () => parseHostKeyPins('node.example ssh-ed25519 not!base64', on22),
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

describe('lines held for a group not open yet', () => {
  it('says nothing until opened, then what it held in order, then each line as it comes', () => {
    const out: string[] = [];
    const write = process.stdout.write.bind(process.stdout);
    process.stdout.write = ((chunk: string) => {
      out.push(String(chunk));
      return true;
    }) as typeof process.stdout.write;
    try {
      const log = new HeldLog();
      log.say('first');
      log.say('second');
      assert.deepEqual(out, []);
      log.open();
      assert.deepEqual(out.join('').split('\n').filter(Boolean), ['first', 'second']);
      log.say('third');
      assert.deepEqual(out.join('').split('\n').filter(Boolean), ['first', 'second', 'third']);
    } finally {
      process.stdout.write = write;
    }
  });
});
