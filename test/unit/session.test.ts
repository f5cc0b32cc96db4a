/**
 * Against a real OpenSSH sshd: commands opened ahead of time (`SshSession.prepare`) run only
 * when asked, never when cancelled, and their time limit counts from the go; the archive's
 * data channel carries its bytes through a Unix socket pair, or a pipe where none can be made;
 * a pin of any of the server's host keys connects both transports, and only a pinned key does.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { ConnectError, RemoteCommandError } from '../../src/errors.ts';
import type { SshSettings } from '../../src/settings.ts';
import { fingerprintOf, parseHostKeyPins } from '../../src/ssh/host-key.ts';
import { SshSession } from '../../src/ssh/session.ts';
import { startSshd, type Sshd } from '../bed/sshd.ts';

describe('commands opened ahead', () => {
  let sshd: Sshd;
  let session: SshSession;
  let dir: string;
  before(async () => {
    sshd = await startSshd();
    session = await SshSession.connect(
      {
        host: sshd.host,
        port: sshd.port,
        username: sshd.username,
        privateKey: sshd.privateKey,
        hostKeys: parseHostKeyPins(sshd.hostKeyFingerprint, sshd),
        transport: 'ssh2',
        connections: 1,
      },
      { keyDirParent: tmpdir() },
    );
    dir = mkdtempSync(join(tmpdir(), 'prep-prepared-'));
  });
  after(async () => {
    session?.close();
    await sshd?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it('runs only on go, in the login shell, and returns its output', async () => {
    const mark = join(dir, 'ran');
    const p = session.prepare('Marking', `touch ${mark}; echo "from $0"`);
    // Its session is open on the host by now; the command waits.
    await sleep(800);
    assert.equal(existsSync(mark), false, 'nothing ran before the go');
    const out = await p.go();
    assert.ok(existsSync(mark));
    assert.match(out, /^from .*sh\n$/);
  });

  it('a cancelled command never runs', async () => {
    const mark = join(dir, 'cancelled');
    const p = session.prepare('Marking', `touch ${mark}`);
    await sleep(300);
    await p.cancel();
    await sleep(300);
    assert.equal(existsSync(mark), false);
    await p.cancel();
  });

  it('a failing command throws with its exit status and message', async () => {
    const p = session.prepare('The start command', `echo 'no such service' >&2; exit 4`);
    await assert.rejects(p.go(), (e: unknown) => {
      assert.ok(e instanceof RemoteCommandError);
      assert.match(e.message, /The start command.*4.*no such service/s);
      return true;
    });
  });

  it('a command that ends at once reports its exit status while the event loop is busy', async () => {
    // A busy runner (parsing a large manifest, say) reads the answer to the exec, the output,
    // the exit status and the close in one go: the status must not be lost for that. Here
    // the loop is held 200 ms in every turn while the commands run.
    const busy = setInterval(() => {
      const until = Date.now() + 200;
      while (Date.now() < until) {
        // Nothing reads the host's answers meanwhile.
      }
    }, 1);
    try {
      for (let i = 0; i < 10; i++) {
        const { code, stdout } = await session.exec('echo $$');
        assert.equal(code, 0, `run ${i}: exit ${code}, output '${stdout.trim()}'`);
      }
    } finally {
      clearInterval(busy);
    }
  });

  it('the time limit counts from the go, not from the opening', async () => {
    const p = session.prepare('Waiting', 'sleep 0.2; echo done', { timeoutMs: 1500 });
    await sleep(2500);
    assert.equal(await p.go(), 'done\n');
    const slow = session.prepare('Sleeping', 'sleep 30', { timeoutMs: 500 });
    await assert.rejects(slow.go(), /timed out after 500 ms/);
  });
});

describe("the archive's data channel over OpenSSH", () => {
  let sshd: Sshd;
  let parent: string;
  before(async () => {
    sshd = await startSshd();
    parent = mkdtempSync(join(tmpdir(), 'prep-channel-'));
  });
  after(async () => {
    await sshd?.stop();
    rmSync(parent, { recursive: true, force: true });
  });

  async function connect(keyDirParent: string): Promise<SshSession> {
    return SshSession.connect(
      {
        host: sshd.host,
        port: sshd.port,
        username: sshd.username,
        privateKey: sshd.privateKey,
        hostKeys: parseHostKeyPins(sshd.hostKeyFingerprint, sshd),
        transport: 'openssh',
        connections: 1,
      },
      { keyDirParent },
    );
  }

  /** Reads a remote command's stdout through `source`, into lent 1 MiB buffers. */
  async function readAll(
    session: SshSession,
    command: string,
  ): Promise<{ out: Buffer; stdout: number }> {
    const remote = await session.streamOut(command);
    remote.stdin.end();
    let stdout = 0;
    remote.stdout.on('data', (b: Buffer) => (stdout += b.length));
    const chunks: Buffer[] = [];
    let lent = Buffer.alloc(1 << 20);
    await remote.source.flow({
      space: () => lent,
      wrote: (chunk) => {
        chunks.push(Buffer.from(chunk));
        lent = Buffer.alloc(1 << 20);
        return true;
      },
    });
    assert.equal(await remote.exit, 0);
    return { out: Buffer.concat(chunks), stdout };
  }

  const expected = Buffer.from(Array.from({ length: 200_000 }, (_, i) => `${i + 1}\n`).join(''));

  it('carries the bytes through the socket pair; the stdout stream stays empty', async () => {
    const session = await connect(parent);
    try {
      const { out, stdout } = await readAll(session, 'seq 1 200000');
      assert.ok(out.equals(expected), 'the bytes are the command output');
      assert.equal(stdout, 0, 'nothing came through the stdout stream');
    } finally {
      session.close();
    }
  });

  it('falls back to a pipe where the socket path would be too long', async () => {
    // A Unix socket path holds at most 107 bytes; the key dir is made under this parent.
    const deep = join(parent, 'd'.repeat(120));
    mkdirSync(deep);
    const session = await connect(deep);
    try {
      const { out, stdout } = await readAll(session, 'seq 1 200000');
      assert.ok(out.equals(expected), 'the bytes are the command output');
      assert.equal(stdout, expected.length, 'the stdout pipe carried them');
    } finally {
      session.close();
    }
  });
});

describe('host keys of every type', () => {
  let sshd: Sshd;
  before(async () => {
    sshd = await startSshd({ hostKeyTypes: ['ed25519', 'ecdsa', 'rsa'] });
  });
  after(async () => {
    await sshd?.stop();
  });

  function settings(hostKey: string, transport: 'ssh2' | 'openssh'): SshSettings {
    return {
      host: sshd.host,
      port: sshd.port,
      username: sshd.username,
      privateKey: sshd.privateKey,
      hostKeys: parseHostKeyPins(hostKey, sshd),
      transport,
      connections: 1,
    };
  }

  /** A command over the control channel and one over the data channel. */
  async function useBoth(session: SshSession): Promise<void> {
    assert.equal(await session.run('Echo', 'echo control'), 'control\n');
    const remote = session.stream('echo data');
    remote.stdin.end();
    const chunks: Buffer[] = [];
    remote.stdout.on('data', (b: Buffer) => chunks.push(b));
    assert.equal(await remote.exit, 0, remote.stderrTail());
    assert.equal(Buffer.concat(chunks).toString(), 'data\n');
  }

  for (const type of ['ed25519', 'ecdsa', 'rsa'] as const) {
    for (const form of ['fingerprint', 'known_hosts line'] as const) {
      for (const transport of ['ssh2', 'openssh'] as const) {
        it(`an ${type} key pinned by its ${form} connects over ${transport}`, async () => {
          const key = sshd.hostKeys.find((k) => k.type === type)!;
          const pin = form === 'fingerprint' ? key.fingerprint : key.knownHostsLine;
          const session = await SshSession.connect(settings(pin, transport), {
            keyDirParent: tmpdir(),
          });
          try {
            assert.equal(fingerprintOf(session.hostKey), key.fingerprint);
            assert.equal(session.dataTransport, transport);
            await useBoth(session);
          } finally {
            session.close();
          }
        });
      }
    }
  }

  it('a pin among stale ones connects: a wrong ed25519 key line and the ecdsa fingerprint', async () => {
    const ecdsa = sshd.hostKeys.find((k) => k.type === 'ecdsa')!;
    const stale = `[${sshd.host}]:${sshd.port} ${freshKey('ed25519')}`;
    const session = await SshSession.connect(
      settings(`${stale}\n${ecdsa.fingerprint}`, 'openssh'),
      { keyDirParent: tmpdir() },
    );
    try {
      assert.equal(fingerprintOf(session.hostKey), ecdsa.fingerprint);
      await useBoth(session);
    } finally {
      session.close();
    }
  });

  for (const transport of ['ssh2', 'openssh'] as const) {
    it(`a wrong fingerprint fails over ${transport}, naming every key the server presented`, async () => {
      const wrong = `SHA256:${'B'.repeat(43)}`;
      await assert.rejects(
        SshSession.connect(settings(wrong, transport), { keyDirParent: tmpdir() }),
        (e: unknown) => {
          assert.ok(e instanceof ConnectError);
          assert.match(
            e.message,
            /^The host keys of 127\.0\.0\.1:\d+ \(.+\) do not match 'host-key'/,
          );
          assert.match(e.message, /someone may be in between/);
          for (const k of sshd.hostKeys) assert.ok(e.message.includes(k.fingerprint), k.type);
          return true;
        },
      );
    });
  }

  it('a wrong rsa key line fails, naming the rsa key the server presented', async () => {
    const rsa = sshd.hostKeys.find((k) => k.type === 'rsa')!;
    const wrong = `[${sshd.host}]:${sshd.port} ${freshKey('rsa')}`;
    await assert.rejects(
      SshSession.connect(settings(wrong, 'ssh2'), { keyDirParent: tmpdir() }),
      (e: unknown) =>
        e instanceof ConnectError &&
        e.message.startsWith(
          `The host key of 127.0.0.1:${sshd.port} (${rsa.fingerprint}) does not match 'host-key'.`,
        ),
    );
  });

  it('when no type is left to ask for, the mismatch names the keys presented', async () => {
    const ed25519 = sshd.hostKeys.find((k) => k.type === 'ed25519')!;
    const pins = [
      `[${sshd.host}]:${sshd.port} ${freshKey('ed25519')}`,
      `[${sshd.host}]:${sshd.port} ${freshKey('ecdsa', '384')}`,
    ].join('\n');
    await assert.rejects(
      SshSession.connect(settings(pins, 'openssh'), { keyDirParent: tmpdir() }),
      (e: unknown) =>
        e instanceof ConnectError &&
        e.message.startsWith(
          `The host key of 127.0.0.1:${sshd.port} (${ed25519.fingerprint}) does not match 'host-key'.`,
        ),
    );
  });

  it('a key line of a type the server does not have fails as a mismatch', async () => {
    const wrong = freshKey('ecdsa', '384');
    await assert.rejects(
      SshSession.connect(settings(wrong, 'ssh2'), { keyDirParent: tmpdir() }),
      (e: unknown) =>
        e instanceof ConnectError &&
        /does not match 'host-key': the server has no key of the pinned type \(ecdsa-sha2-nistp384\)/.test(
          e.message,
        ),
    );
  });

  let freshKeys = 0;
  /** A new public key of `type` ("type base64"), held by no server. */
  function freshKey(type: string, bits?: string): string {
    const file = join(sshd.dir, `fresh-${++freshKeys}`);
    execFileSync('ssh-keygen', [
      '-q',
      '-t',
      type,
      ...(bits ? ['-b', bits] : []),
      '-N',
      '',
      '-f',
      file,
    ]);
    return readFileSync(`${file}.pub`, 'utf8').trim().split(' ').slice(0, 2).join(' ');
  }
});
