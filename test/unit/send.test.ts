/**
 * A tree backup's send, with files decided while the first go up (those the host hashes
 * meanwhile): the host's side is the real command, run here by bash and GNU tar on a folder of
 * this machine; S3 is a stand-in that keeps what is put (the send's own logic is under test,
 * not the SDK's).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { S3Client } from '@aws-sdk/client-s3';
import { readableSource } from '../../src/byte-source.ts';
import type { NodeHost, TreeEntry, TreeListing } from '../../src/node-kind/host.ts';
import { proveStill } from '../../src/modes/backup-tree-send.ts';
import { deal } from '../../src/modes/backup-tree-ahead.ts';
import { sendFilesCommand } from '../../src/node-kind/tree-remote.ts';
import type { RemoteStream } from '../../src/ssh/session.ts';
import { objectKey } from '../../src/tree/layout.ts';
import { sendFiles, type SendFile } from '../../src/tree/send.ts';

const dir = mkdtempSync(join(tmpdir(), 'prep-send-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A file of `size` bytes under `dir`, and its entry. */
function file(name: string, size: number): { entry: TreeEntry; bytes: Buffer } {
  const bytes = Buffer.alloc(size, name);
  writeFileSync(join(dir, name), bytes);
  return {
    bytes,
    entry: { type: 'file', path: name, hostPath: name, size, ino: 0, mtime: '0', mode: 0o644 },
  };
}

/**
 * The host's send command, run here (`env` for its environment); what reached its input is kept.
 * Its kill does what the end of an SSH channel does to the host's command: the pipes close, so
 * a tar blocked on its output dies of SIGPIPE (signalling `sh` alone would leave it blocked,
 * holding this process's end of the pipes open).
 */
function localSend(
  env: NodeJS.ProcessEnv = process.env,
  live = false,
): {
  remote: RemoteStream;
  input: () => string;
} {
  const child = spawn('sh', ['-c', sendFilesCommand(dir, live)], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env,
  });
  let input = '';
  const write = child.stdin.write.bind(child.stdin);
  const end = child.stdin.end.bind(child.stdin);
  child.stdin.write = ((chunk: string, ...rest: never[]) => {
    input += chunk;
    return write(chunk, ...rest);
  }) as typeof child.stdin.write;
  child.stdin.end = ((chunk?: string, ...rest: never[]) => {
    if (typeof chunk === 'string') input += chunk;
    return end(chunk as never, ...rest);
  }) as typeof child.stdin.end;
  let stderr = '';
  const listeners: Array<(line: string) => void> = [];
  child.stderr.on('data', (b: Buffer) => {
    stderr += b.toString();
    for (const line of b.toString().split('\n')) for (const l of listeners) l(line);
  });
  // 'exit', not 'close': a send that failed leaves the rest of the tar unread.
  const exit = new Promise<number | null>((r) => child.on('exit', r));
  const remote: RemoteStream = {
    stdin: child.stdin,
    stdout: child.stdout,
    source: readableSource(child.stdout),
    exit,
    onStderrLine: (l) => listeners.push(l),
    stderrTail: () => stderr,
    kill: () => {
      child.stdin.destroy();
      child.stdout.destroy();
    },
    transport: 'openssh',
  };
  return { remote, input: () => input };
}

/** The processes whose command line names `folder` (none once a send has ended). */
function running(folder: string): string {
  try {
    return execFileSync('pgrep', ['-a', '-f', folder], { encoding: 'utf8' }).trim();
  } catch {
    return '';
  }
}

/** Keeps what is put, by key. */
function bucket(): { client: S3Client; objects: Map<string, Buffer> } {
  const objects = new Map<string, Buffer>();
  const client = {
    send: (command: { input: { Key: string; Body: Buffer } }) => {
      objects.set(command.input.Key, Buffer.from(command.input.Body));
      return Promise.resolve({});
    },
  } as unknown as S3Client;
  return { client, objects };
}

function options(
  remote: RemoteStream,
  client: S3Client,
  files: SendFile[],
  later?: Promise<SendFile[]>,
) {
  const stored: string[] = [];
  return {
    stored,
    o: {
      host: {} as NodeHost,
      client,
      bucket: 'b',
      prefix: 'p',
      dir,
      files,
      ...(later ? { later } : {}),
      filesInFlight: 4,
      bytesInFlight: 16 * 1024 ** 2,
      onStored: (e: TreeEntry) => stored.push(e.path),
      channel: Promise.resolve(remote),
    },
  };
}

describe('a tree backup’s send, with files decided later', { timeout: 30_000 }, () => {
  it('sends the first files, then those decided later, over one tar with one go line', async () => {
    const a = file('a.ldb', 300_000);
    const b = file('b.ldb', 5);
    const c = file('MANIFEST-000002', 70_000);
    const { remote, input } = localSend();
    const { client, objects } = bucket();
    // Decided once the first files are on their way: the tar waits for the path.
    const later = new Promise<SendFile[]>((r) =>
      setTimeout(() => r([{ entry: c.entry, sha256: sha(c.bytes) }]), 300),
    );
    const { o, stored } = options(remote, client, [{ entry: a.entry }, { entry: b.entry }], later);
    const sent = await sendFiles(o);
    assert.deepEqual(sent, { files: 3, bytes: 370_005, linksChanged: false, skipped: 0 });
    assert.deepEqual(stored.sort(), ['MANIFEST-000002', 'a.ldb', 'b.ldb']);
    for (const f of [a, b, c])
      assert.ok(objects.get(objectKey('p', sha(f.bytes)))?.equals(f.bytes));
    assert.equal(input(), 'go\na.ldb\0b.ldb\0MANIFEST-000002\0');
    assert.equal(await remote.exit, 0);
  });

  it('with nothing to send first, sends what is decided later', async () => {
    const c = file('c.log', 1000);
    const { remote } = localSend();
    const { client, objects } = bucket();
    const { o } = options(remote, client, [], Promise.resolve([{ entry: c.entry }]));
    assert.deepEqual(await sendFiles(o), {
      files: 1,
      bytes: 1000,
      linksChanged: false,
      skipped: 0,
    });
    assert.ok(objects.has(objectKey('p', sha(c.bytes))));
  });

  it('fails with the reason when the later files cannot be decided, and the host’s tar ends', async () => {
    const a = file('d.ldb', 2000);
    const { remote } = localSend();
    const { client } = bucket();
    const later = new Promise<SendFile[]>((_, reject) =>
      setTimeout(() => reject(new Error('the host gave no sha256 for x')), 200),
    );
    const { o } = options(remote, client, [{ entry: a.entry }], later);
    await assert.rejects(sendFiles(o), /the host gave no sha256 for x/);
    const code = await remote.exit;
    assert.ok(code !== 0, `the host's command ended with ${code}`);
    assert.equal(running(dir), '', 'no process of the send is left in the folder');
  });

  it('takes tar’s "file changed as we read it" (exit 1) as a change to prove, and fails on any other exit', async () => {
    // A tar that archives, then exits as GNU tar does when an inode's ctime moved meanwhile.
    const bin = join(dir, 'bin');
    mkdirSync(bin, { recursive: true });
    const tar = execFileSync('sh', ['-c', 'command -v tar'], { encoding: 'utf8' }).trim();
    const fake = (code: number) => {
      writeFileSync(join(bin, 'tar'), `#!/bin/sh\n${tar} "$@" || exit $?\nexit ${code}\n`, {
        mode: 0o755,
      });
      return { ...process.env, PATH: `${bin}:${process.env.PATH}` };
    };
    const e = file('e.ldb', 3000);
    const changed = localSend(fake(1));
    const one = options(changed.remote, bucket().client, [{ entry: e.entry }]);
    assert.deepEqual(await sendFiles(one.o), {
      files: 1,
      bytes: 3000,
      linksChanged: true,
      skipped: 0,
    });
    const failed = localSend(fake(2));
    const two = options(failed.remote, bucket().client, [{ entry: e.entry }]);
    await assert.rejects(sendFiles(two.o), /Sending the files failed \(exit 2\)/);
    const plain = localSend();
    const three = options(plain.remote, bucket().client, [{ entry: e.entry }]);
    assert.equal((await sendFiles(three.o)).linksChanged, false);
  });
});

describe('a send of the running node’s tables, ahead of the stop', { timeout: 30_000 }, () => {
  it('leaves out a table removed before tar opened it and one that grew since it was listed', async () => {
    const a = file('live-a.ldb', 40_000);
    const gone = file('live-gone.ldb', 2000);
    const grown = file('live-grown.ldb', 1000);
    const b = file('live-b.ldb', 7);
    // The node compacts one away and is still writing the other.
    rmSync(join(dir, 'live-gone.ldb'));
    writeFileSync(join(dir, 'live-grown.ldb'), Buffer.alloc(1500, 'x'));
    const files = [a, gone, grown, b].map((f) => ({ entry: f.entry }));
    const { remote } = localSend(process.env, true);
    const { client, objects } = bucket();
    const { o, stored } = options(remote, client, files);
    const sent = await sendFiles({ ...o, live: true });
    assert.deepEqual(sent, { files: 2, bytes: 40_007, linksChanged: false, skipped: 2 });
    assert.deepEqual(stored.sort(), ['live-a.ldb', 'live-b.ldb']);
    assert.deepEqual(
      [...objects.keys()].sort(),
      [objectKey('p', sha(a.bytes)), objectKey('p', sha(b.bytes))].sort(),
    );
    assert.equal(await remote.exit, 0);
  });

  it('the same files from a frozen copy fail the send: there, nothing may change', async () => {
    const a = file('frozen-a.ldb', 4000);
    const gone = file('frozen-gone.ldb', 2000);
    rmSync(join(dir, 'frozen-gone.ldb'));
    const { remote } = localSend();
    const { o } = options(remote, bucket().client, [{ entry: a.entry }, { entry: gone.entry }]);
    await assert.rejects(sendFiles(o), /Sending the files failed \(exit 2\)/);
    const grown = file('frozen-grown.ldb', 1000);
    writeFileSync(join(dir, 'frozen-grown.ldb'), Buffer.alloc(1500, 'x'));
    const again = localSend();
    const two = options(again.remote, bucket().client, [{ entry: grown.entry }]);
    await assert.rejects(sendFiles(two.o), /not the file it listed/);
  });
});

describe('the frozen copy proven still after tar saw a ctime move', () => {
  const listed = (size: number, mtime: string): TreeListing => ({
    device: '1',
    now: 100,
    entries: [
      { type: 'dir', path: 'db', hostPath: 'db', size: 0, ino: 1, mtime: '1', mode: 0o755 },
      { type: 'file', path: 'db/1.ldb', hostPath: 'db/1.ldb', size, ino: 2, mtime, mode: 0o644 },
    ],
  });
  const hostListing = (l: TreeListing) =>
    ({ listTree: () => Promise.resolve(l) }) as unknown as NodeHost;

  it('passes when every size and mtime is as listed (a link count moved, no byte)', async () => {
    await proveStill(hostListing(listed(10, '5.1')), 'stage', listed(10, '5.1'));
  });

  it('fails, naming the file, when one moved', async () => {
    await assert.rejects(
      proveStill(hostListing(listed(10, '6.0')), 'stage', listed(10, '5.1')),
      /db\/1.ldb changed in the frozen copy while the files were sent .* nothing was published/,
    );
    await assert.rejects(
      proveStill(hostListing({ device: '1', now: 100, entries: [] }), 'stage', listed(10, '5.1')),
      /db\/1.ldb changed in the frozen copy/,
    );
  });
});

describe('the new tables dealt to the SSH channels ahead of the stop', () => {
  it('in groups of about equal bytes, the largest first, never more groups than files', () => {
    const f = (size: number) => ({ size });
    const groups = deal([f(1), f(8), f(3), f(5), f(2), f(8)], 3);
    assert.deepEqual(
      groups.map((g) => g.map((x) => x.size)),
      [
        [8, 2],
        [8, 1],
        [5, 3],
      ],
    );
    assert.equal(deal([f(4)], 4).length, 1);
    assert.deepEqual(deal([], 4), [[]]);
  });
});
