/**
 * The pieces of tree snapshots that run on their own: what proves a file unchanged, read from
 * real files by the host's own listing command (run here in bash, as on a host); what a backup
 * sends ahead of the stop, and what it sends as read once frozen, from such listings; the data
 * dir's tables that a restore links into its staging folder; and the tar that carries files
 * both ways, read from and written for real GNU tar.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import {
  linkInput,
  linkIntoStageCommand,
  listTreeCommand,
  parseListing,
  parseStaged,
  sendFilesCommand,
  tableFilesCommand,
  tailsCommand,
  type ListedEntry,
} from '../../src/node-kind/tree-remote.js';
import { GO_LINE } from '../../src/shell.js';
import { tailHash, TAIL_BYTES } from '../../src/tree/icon2.js';
import { isSafePath, reusable, type TreeFile } from '../../src/tree/layout.js';
import type { Ahead } from '../../src/tree/reuse.js';
import type { TreeListing } from '../../src/node-kind/host.js';
import { aheadFiles, withSentAhead } from '../../src/modes/backup-tree-ahead.js';
import { newSinceRecord } from '../../src/modes/backup-tree-send.js';
import {
  ChunkReader,
  END_OF_TAR,
  memberHeader,
  nextMember,
  padding,
} from '../../src/tree/tar-stream.js';

const kind = { name: 'goloop', roots: ['abc123'] };

function list(dir: string): Map<string, ListedEntry> {
  const out = execFileSync('bash', ['-c', listTreeCommand(kind, dir)], { encoding: 'utf8' });
  return new Map(parseListing(out).entries.map((e) => [e.path, e]));
}

/** The tail hash of a file as the backup reads it: the host's command, cut by size, hashed here. */
async function tailOf(dir: string, e: ListedEntry): Promise<string> {
  const out = execFileSync('bash', ['-c', tailsCommand(dir)], {
    input: `${GO_LINE}${e.path}\0`,
  });
  assert.equal(out.length, Math.min(e.size, TAIL_BYTES));
  return tailHash(out);
}

/** What the backup decides: the listing allows reuse, and the file still ends the same. */
async function proven(dir: string, e: ListedEntry, before: TreeFile): Promise<boolean> {
  return reusable(e, before) !== undefined && (await tailOf(dir, e)) === before.tail;
}

async function asStored(dir: string, e: ListedEntry): Promise<TreeFile> {
  return {
    path: e.path,
    size: e.size,
    sha256: 'a'.repeat(64),
    tail: await tailOf(dir, e),
    mode: e.mode,
    ino: e.ino,
    mtime: e.mtime,
  };
}

describe('what proves a file unchanged since the last tree', () => {
  let dir: string;
  const table = 'abc123/db/1/000123.ldb';
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'prep-tree-unit-'));
    mkdirSync(join(dir, 'abc123/db/1'), { recursive: true });
    writeFileSync(join(dir, table), randomBytes(64 * 1024));
    writeFileSync(join(dir, 'abc123/db/1/MANIFEST-000002'), randomBytes(300));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('the same table file, untouched: reused', async () => {
    const before = await asStored(dir, list(dir).get(table)!);
    const e = list(dir).get(table)!;
    assert.equal(reusable(e, before), 'a'.repeat(64));
    assert.equal(await proven(dir, e, before), true);
    assert.match(e.mtime, /^\d+\.\d{9,10}$/, 'mtime to the nanosecond');
  });

  it('a table number reused after a crash (a new file, same path and size): hashed again', async () => {
    const before = await asStored(dir, list(dir).get(table)!);
    rmSync(join(dir, table));
    writeFileSync(join(dir, table), randomBytes(64 * 1024));
    let e = list(dir).get(table)!;
    assert.equal(e.size, before.size);
    assert.equal(await proven(dir, e, before), false, 'a new mtime');
    // Worse: its mtime set back to the old one, and ext4 gave it the freed inode number again.
    // The listing cannot tell; the tail does.
    const [sec, frac] = before.mtime!.split('.');
    execFileSync('touch', ['-d', `@${sec}.${frac}`, join(dir, table)]);
    e = list(dir).get(table)!;
    if (e.ino === before.ino) assert.ok(reusable(e, before), 'the listing alone would reuse it');
    assert.equal(await proven(dir, e, before), false);
  });

  it('a table rewritten in place (truncated and written again, same inode and size): hashed again', async () => {
    const before = await asStored(dir, list(dir).get(table)!);
    await new Promise((r) => setTimeout(r, 20));
    writeFileSync(join(dir, table), randomBytes(64 * 1024));
    const e = list(dir).get(table)!;
    assert.equal(e.ino, before.ino, 'same inode');
    assert.equal(await proven(dir, e, before), false);
  });

  it('a table sent ahead of the stop is the frozen copy’s own: its hard link lists with the same inode, size and mtime', async () => {
    const ahead = await asStored(dir, list(dir).get(table)!);
    const stage = mkdtempSync(join(tmpdir(), 'prep-tree-stage-'));
    try {
      mkdirSync(join(stage, 'abc123/db/1'), { recursive: true });
      execFileSync('ln', [join(dir, table), join(stage, table)]);
      const frozen = list(stage).get(table)!;
      assert.equal(await proven(stage, frozen, ahead), true);
    } finally {
      rmSync(stage, { recursive: true, force: true });
    }
  });

  it('a table still being written when it was sent ahead of the stop (it grew since): sent again', async () => {
    const growing = 'abc123/db/1/000124.ldb';
    writeFileSync(join(dir, growing), randomBytes(20 * 1024));
    const ahead = await asStored(dir, list(dir).get(growing)!);
    appendFileSync(join(dir, growing), randomBytes(4 * 1024));
    assert.equal(await proven(dir, list(dir).get(growing)!, ahead), false);
  });

  it('the running node’s listing passes over what vanished; the frozen copy’s fails on it', () => {
    const gone = { name: 'goloop', roots: ['abc123', 'not-there'] };
    const live = execFileSync('bash', ['-c', listTreeCommand(gone, dir, { live: true })], {
      encoding: 'utf8',
    });
    assert.ok(parseListing(live).entries.some((e) => e.path === table));
    const frozen = spawnSync('bash', ['-c', listTreeCommand(gone, dir)], { encoding: 'utf8' });
    assert.notEqual(frozen.status, 0);
  });

  it('a mutable file (MANIFEST), even untouched, is always hashed', async () => {
    const e = list(dir).get('abc123/db/1/MANIFEST-000002')!;
    assert.equal(reusable(e, await asStored(dir, e)), undefined);
  });

  it("leaves out what a snapshot leaves out, and says the host's clock", () => {
    mkdirSync(join(dir, 'abc123/cache/x'), { recursive: true });
    writeFileSync(join(dir, 'abc123/cache/x/blob'), 'x');
    writeFileSync(join(dir, 'abc123/db/1/LOCK'), '');
    const out = execFileSync(
      'bash',
      ['-c', listTreeCommand(kind, dir, { leaveOut: ['abc123/cache', 'abc123/db/1/LOCK'] })],
      { encoding: 'utf8' },
    );
    const l = parseListing(out);
    const paths = l.entries.map((e) => e.path);
    assert.ok(paths.includes(table));
    assert.ok(
      !paths.some((p) => p.startsWith('abc123/cache') || p.endsWith('/LOCK')),
      paths.join(),
    );
    assert.ok(list(dir).has('abc123/cache/x/blob'), 'listed without the leave-out');
    assert.ok(Math.abs(l.now - Date.now() / 1000) < 5, `${l.now}`);
  });

  it('lists directories too, and names with spaces or colons whole', () => {
    mkdirSync(join(dir, 'abc123/wal'));
    writeFileSync(join(dir, 'abc123/db_1.2.3.4:7100 x'), 'x');
    const l = list(dir);
    assert.equal(l.get('abc123/wal')?.type, 'dir');
    assert.equal(l.get('abc123/db_1.2.3.4:7100 x')?.size, 1);
  });
});

describe('paths a tree may hold', () => {
  it('refuses what would leave the data dir', () => {
    for (const bad of ['', '/etc/passwd', '../x', 'a/../b', 'a//b', './a', 'a/.', 'a\nb', 'a b'])
      assert.equal(isSafePath(bad), false, JSON.stringify(bad));
    for (const good of ['0x1/db/1/000001.ldb', '.storage/db_CHANGEIP:7100_icon_dex/CURRENT'])
      assert.equal(isSafePath(good), true, good);
  });
});

describe('the tar that carries a tree', () => {
  let dir: string;
  before(() => (dir = mkdtempSync(join(tmpdir(), 'prep-tar-unit-'))));
  after(() => rmSync(dir, { recursive: true, force: true }));

  const long = `${'d'.repeat(60)}/${'e'.repeat(60)}/${'f'.repeat(40)}.ldb`;
  const files: Array<[string, Buffer]> = [
    ['a/CURRENT', Buffer.from('MANIFEST-000002\n')],
    ['a/empty', Buffer.alloc(0)],
    ['a/block', randomBytes(512)],
    [`a/${long}`, randomBytes(70_001)],
  ];

  it("reads what the host's GNU tar writes (long names, empty files, 1 MiB records), member by member", async () => {
    for (const [p, b] of files) {
      mkdirSync(join(dir, 'src', p, '..'), { recursive: true });
      writeFileSync(join(dir, 'src', p), b);
    }
    const paths = files.map(([p]) => `${p}\0`).join('');
    const send = (input: string) =>
      spawnSync('bash', ['-c', sendFilesCommand(join(dir, 'src'))], { input, maxBuffer: 1 << 26 });
    // Opened ahead and closed unused (no go line): nothing is read, nothing sent.
    const unused = send(paths);
    assert.equal(unused.status, 0, unused.stderr.toString());
    assert.equal(unused.stdout.length, 0);
    const tar = send(`${GO_LINE}${paths}`);
    assert.equal(tar.status, 0, tar.stderr.toString());
    // Chunks of odd sizes, as a pipe gives them.
    const chunks: Buffer[] = [];
    for (let i = 0; i < tar.stdout.length; i += 777) chunks.push(tar.stdout.subarray(i, i + 777));
    const reader = new ChunkReader(Readable.from(chunks)[Symbol.asyncIterator]());
    for (const [p, b] of files) {
      const m = await nextMember(reader);
      assert.deepEqual(m, { name: p, size: b.length, type: 'file' });
      assert.ok((await reader.read(b.length)).equals(b), p);
      await reader.skip(padding(b.length));
    }
    assert.equal(await nextMember(reader), undefined);
    await reader.drain();
  });

  it('writes what GNU tar extracts: directories, modes, long names', () => {
    const parts: Buffer[] = [memberHeader('a', 'Directory', 0, 0o755)];
    parts.push(memberHeader('a/wal', 'Directory', 0, 0o700));
    for (const [p, b] of files) {
      parts.push(memberHeader(p, 'File', b.length, 0o640), b, Buffer.alloc(padding(b.length)));
    }
    parts.push(END_OF_TAR);
    mkdirSync(join(dir, 'out'));
    const x = spawnSync('tar', ['-x', '-f', '-', '-C', join(dir, 'out')], {
      input: Buffer.concat(parts),
    });
    assert.equal(x.status, 0, x.stderr.toString());
    for (const [p, b] of files) assert.ok(readFileSync(join(dir, 'out', p)).equals(b), p);
    const mode = execFileSync('stat', ['-c', '%a', join(dir, 'out/a/wal')], { encoding: 'utf8' });
    assert.equal(mode.trim(), '700');
  });
});

describe("the data dir's tables, linked into a restore's staging folder", () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'prep-link-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('lists the table files with their sizes, links them under the same names, passes over the rest', () => {
    const data = join(dir, 'data');
    const stage = join(dir, 'stage');
    mkdirSync(join(data, '.storage/db_10.0.0.1:7100_icon_dex'), { recursive: true });
    mkdirSync(join(data, '.score_data'), { recursive: true });
    writeFileSync(join(data, '.storage/db_10.0.0.1:7100_icon_dex/000005.ldb'), 'five');
    writeFileSync(join(data, '.storage/db_10.0.0.1:7100_icon_dex/000006.ldb'), 'six!!');
    writeFileSync(join(data, '.storage/db_10.0.0.1:7100_icon_dex/MANIFEST-000004'), 'm');
    writeFileSync(join(data, '.score_data/000002.sst'), 'two');
    const listed = parseStaged(
      execFileSync('bash', ['-c', tableFilesCommand(data, ['.storage', '.score_data', 'absent'])], {
        encoding: 'utf8',
      }),
    );
    assert.deepEqual(
      new Map([...listed].sort()),
      new Map([
        ['.score_data/000002.sst', 3],
        ['.storage/db_10.0.0.1:7100_icon_dex/000005.ldb', 4],
        ['.storage/db_10.0.0.1:7100_icon_dex/000006.ldb', 5],
      ]),
      'tables only, with their sizes; a missing root is no error',
    );
    // 000006 is in the stage already (an earlier run), 000009 went away meanwhile.
    const block = '.storage/db_CHANGEIP:7100_icon_dex';
    mkdirSync(join(stage, block), { recursive: true });
    writeFileSync(join(stage, block, '000006.ldb'), 'other');
    const links = [
      { from: '.storage/db_10.0.0.1:7100_icon_dex/000005.ldb', to: `${block}/000005.ldb` },
      { from: '.storage/db_10.0.0.1:7100_icon_dex/000006.ldb', to: `${block}/000006.ldb` },
      { from: '.storage/db_10.0.0.1:7100_icon_dex/000009.ldb', to: `${block}/000009.ldb` },
      { from: '.score_data/000002.sst', to: '.score_data/000002.sst' },
    ];
    execFileSync('bash', ['-c', linkIntoStageCommand(data, stage)], { input: linkInput(links) });
    const five = statSync(join(stage, block, '000005.ldb'));
    assert.equal(five.ino, statSync(join(data, links[0]!.from)).ino, 'a link, not a copy');
    assert.equal(readFileSync(join(stage, block, '000006.ldb'), 'utf8'), 'other', 'kept as it was');
    assert.ok(!existsSync(join(stage, block, '000009.ldb')));
    assert.equal(readFileSync(join(stage, '.score_data/000002.sst'), 'utf8'), 'two');
    assert.throws(() => linkInput([{ from: 'a/000001.ldb', to: 'a/000002.ldb' }]), /names differ/);
  });
});

describe('what a tree backup sends ahead of the stop, and what it sends as read', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'prep-tree-ahead-'));
    mkdirSync(join(dir, 'abc123/db/1'), { recursive: true });
    mkdirSync(join(dir, 'abc123/wal'), { recursive: true });
    for (const f of ['db/1/000005.ldb', 'db/1/000009.ldb', 'wal/lock_1', 'wal/lock_2'])
      writeFileSync(join(dir, 'abc123', f), randomBytes(8 * 1024));
    writeFileSync(join(dir, 'abc123/db/1/MANIFEST-000007'), randomBytes(300));
    // The stored table and the wal segment the node has moved past stood for a minute; the
    // new table was just written (a table never changes once written); the wal segment and the
    // MANIFEST are being written now.
    const old = String(Math.floor(Date.now() / 1000) - 60);
    for (const f of ['db/1/000005.ldb', 'wal/lock_1'])
      execFileSync('touch', ['-d', `@${old}`, join(dir, 'abc123', f)]);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const listing = (): TreeListing => {
    const l = parseListing(
      execFileSync('bash', ['-c', listTreeCommand(kind, dir, { live: true })], {
        encoding: 'utf8',
      }),
    );
    return {
      ...l,
      entries: l.entries.map((e) => ({ ...e, type: e.type as 'file' | 'dir', hostPath: e.path })),
    };
  };
  const ahead = async (recorded: string[]): Promise<Ahead> => {
    const l = listing();
    const before = new Map<string, TreeFile>();
    for (const path of recorded) {
      const e = l.entries.find((x) => x.path === path)!;
      before.set(path, { ...(await asStored(dir, e)), sha256: path.padEnd(64, '0') });
    }
    const stored = new Map([...before.values()].map((f) => [f.sha256, f.size]));
    return { stored, before, previousKey: 'MainNet/x.tree', journals: [], leasedWall: 0 };
  };
  const names = (files: Array<{ path: string }>): string[] => files.map((f) => f.path).sort();

  it('nothing stored yet: every table, and the other files that have stood 10 s', async () => {
    const none: Ahead = { stored: new Map(), before: new Map(), journals: [], leasedWall: 0 };
    assert.deepEqual(names(aheadFiles(listing(), none, 64 * 1024 ** 2)), [
      'abc123/db/1/000005.ldb',
      'abc123/db/1/000009.ldb',
      'abc123/wal/lock_1',
    ]);
  });

  it('after a snapshot: only what it does not name; a table it names is proven after the freeze', async () => {
    const a = await ahead(['abc123/db/1/000005.ldb']);
    assert.deepEqual(names(aheadFiles(listing(), a, 64 * 1024 ** 2)), [
      'abc123/db/1/000009.ldb',
      'abc123/wal/lock_1',
    ]);
    // A settled file the snapshot names is hashed on the host once frozen, not sent ahead.
    const b = await ahead(['abc123/db/1/000005.ldb', 'abc123/wal/lock_1']);
    assert.deepEqual(names(aheadFiles(listing(), b, 64 * 1024 ** 2)), ['abc123/db/1/000009.ldb']);
  });

  it('a round after a long one sends only what the node wrote meanwhile', async () => {
    const none: Ahead = { stored: new Map(), before: new Map(), journals: [], leasedWall: 0 };
    const first = aheadFiles(listing(), none, 64 * 1024 ** 2);
    const sent = await Promise.all(
      first.map(async (e) => ({ ...(await asStored(dir, e)), sha256: e.path.padEnd(64, '1') })),
    );
    const known = withSentAhead(none, { files: sent, bytes: 0, skipped: 0, seconds: 0 });
    assert.deepEqual(aheadFiles(listing(), known, 64 * 1024 ** 2), [], 'nothing new yet');
    writeFileSync(join(dir, 'abc123/db/1/000011.ldb'), randomBytes(8 * 1024));
    assert.deepEqual(names(aheadFiles(listing(), known, 64 * 1024 ** 2)), [
      'abc123/db/1/000011.ldb',
    ]);
    rmSync(join(dir, 'abc123/db/1/000011.ldb'));
  });

  it('once frozen, a file no record names goes as read; one a record names is hashed on the host first', async () => {
    const a = await ahead(['abc123/db/1/000005.ldb', 'abc123/wal/lock_1']);
    const plan = { stored: a.stored, hasPrevious: true, known: new Set(a.before.keys()) };
    assert.equal(newSinceRecord(plan, 'abc123/wal/lock_2'), true);
    assert.equal(newSinceRecord(plan, 'abc123/db/1/MANIFEST-000007'), true);
    assert.equal(newSinceRecord(plan, 'abc123/wal/lock_1'), false);
    // With no record of this host, a stored object may hold any file (a node restored from
    // the bucket): each is hashed on the host first. With nothing stored, none is.
    assert.equal(newSinceRecord({ ...plan, hasPrevious: false }, 'abc123/wal/lock_2'), false);
    assert.equal(newSinceRecord({ ...plan, stored: new Map(), hasPrevious: false }, 'x'), true);
  });
});
