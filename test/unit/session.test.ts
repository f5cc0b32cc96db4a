/**
 * Against a real OpenSSH sshd: commands opened ahead of time (`SshSession.prepare`) run only
 * when asked, never when cancelled, and their time limit counts from the go; the archive's
 * data channel carries its bytes through a Unix socket pair, or a pipe where none can be made.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { RemoteCommandError } from '../../src/errors.ts';
import { parseHostKeyPins } from '../../src/ssh/host-key.ts';
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
        hostKeys: parseHostKeyPins(sshd.hostKeyFingerprint),
        transport: 'ssh2',
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
        hostKeys: parseHostKeyPins(sshd.hostKeyFingerprint),
        transport: 'openssh',
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
