/**
 * An archive's send ahead of the stop, on real LevelDB files: the table files linked and
 * archived while the database runs, then the frozen copy's archive that follows them. The two
 * parts, one after the other, are read by a plain `tar -x` (the original restore) as one
 * archive, and LevelDB opens what it extracts.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ClassicLevel } from 'classic-level';
import {
  AHEAD_CHANGED_CODE,
  AHEAD_CHANGED_MARK,
  AHEAD_REMOVED_MARK,
  aheadDir,
  archiveAheadCommand,
  archiveCommand,
  linkAheadCommand,
} from '../../src/node-kind/archive-remote.ts';
import { parseManifest } from '../../src/node-kind/leveldb-manifest.ts';
import { loopchain } from '../../src/node-kind/loopchain/layout.ts';
import { freezeCommand } from '../../src/node-kind/remote.ts';
import { GO_LINE } from '../../src/shell.ts';

const IP = '10.20.30.40';
const ID = `db_${IP}:7100_icon_dex`;
const BLOCK_DB = `.storage/${ID}`;
const STATE_DB = '.score_data/db/icon_dex';

function sh(command: string, input?: string, env?: NodeJS.ProcessEnv): Buffer {
  return execFileSync('sh', ['-c', command], { input, maxBuffer: 1 << 30, env });
}

const sha = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

async function put(dir: string, from: number, rounds: number): Promise<void> {
  const db = new ClassicLevel(dir, { valueEncoding: 'utf8' });
  await db.open();
  for (let r = from; r < from + rounds; r++) {
    const batch = db.batch();
    for (let i = 0; i < 400; i++) batch.put(`k${r}-${i}`, `${r}-${i}-`.repeat(60) + Math.random());
    await batch.write();
  }
  await db.compactRange('k', 'l');
  await db.close();
}

/** Every file under `dir`, relative. */
function files(dir: string, at = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(join(dir, at), { withFileTypes: true })) {
    const rel = at ? `${at}/${e.name}` : e.name;
    if (e.isDirectory()) out.push(...files(dir, rel));
    else out.push(rel);
  }
  return out.sort();
}

/** Sets every file's mtime a minute back: tables that have stood still since. */
function settle(dir: string): void {
  const then = new Date(Date.now() - 60_000);
  for (const f of files(dir)) utimesSync(join(dir, f), then, then);
}

describe('the archive sent ahead of the stop, then the frozen rest', () => {
  let root: string;
  let data: string;
  let stage: string;

  before(async () => {
    root = mkdtempSync(join(tmpdir(), 'prep-ahead-'));
    data = join(root, 'data');
    for (const d of [STATE_DB, BLOCK_DB]) await put(join(data, d), 0, 30);
    stage = join(root, '.prep-snapshot-staging-test');
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  it('links only the table files that have stood still, and nothing the snapshot leaves out', () => {
    settle(data);
    writeFileSync(join(data, BLOCK_DB, '099999.ldb'), 'a table still being written');
    mkdirSync(join(data, '.score_data/cache'), { recursive: true });
    writeFileSync(join(data, '.score_data/cache/000001.ldb'), 'left out');
    utimesSync(join(data, '.score_data/cache/000001.ldb'), 0, 0);
    try {
      const out = sh(linkAheadCommand(loopchain, data, aheadDir(stage), ['.score_data/cache']));
      const linked = files(aheadDir(stage));
      const tables = files(data).filter(
        (f) =>
          /\.(ldb|sst)$/.test(f) && !f.startsWith('.score_data/cache') && !f.endsWith('099999.ldb'),
      );
      assert.deepEqual(linked, tables);
      assert.ok(tables.length >= 2, 'the databases have tables');
      assert.match(out.toString(), new RegExp(`files=${tables.length}\\n`));
      // Links, not copies: the same inodes as the data dir's.
      for (const f of linked)
        assert.equal(statSync(join(aheadDir(stage), f)).ino, statSync(join(data, f)).ino, f);
    } finally {
      rmSync(join(data, BLOCK_DB, '099999.ldb'));
      rmSync(join(data, '.score_data/cache'), { recursive: true });
    }
  });

  for (const compression of ['gzip', 'zstd'] as const) {
    it(`${compression}: the two parts extract with a plain tar as the frozen copy, and LevelDB opens it`, async () => {
      rmSync(stage, { recursive: true, force: true });
      settle(data);
      sh(linkAheadCommand(loopchain, data, aheadDir(stage)));
      const copy = join(root, `local-${compression}`);
      const first = sh(
        archiveAheadCommand(loopchain, aheadDir(stage), ID, {
          compression,
          level: 1,
          localCopy: copy,
        }),
        GO_LINE,
      );
      // The node runs on: new tables, and a compaction that removes some of those sent ahead.
      const before = new Set(files(join(data, BLOCK_DB)));
      await put(join(data, BLOCK_DB), 30, 30);
      const gone = [...before].filter(
        (f) => f.endsWith('.ldb') && !existsSync(join(data, BLOCK_DB, f)),
      );
      assert.ok(gone.length > 0, 'the compaction removed tables that went ahead');

      sh(freezeCommand(loopchain, data, stage, join(root, 'no-watchdog')));
      const follow = spawnSync(
        'sh',
        [
          '-c',
          archiveCommand(loopchain, stage, ID, {
            compression,
            level: 1,
            localCopy: copy,
            tolerateChanged: true,
            ahead: aheadDir(stage),
          }),
        ],
        { input: GO_LINE, maxBuffer: 1 << 30 },
      );
      assert.equal(follow.status, 0, follow.stderr.toString());
      const rest = follow.stdout;
      const removed = Number(
        new RegExp(`${AHEAD_REMOVED_MARK} (\\d+)`).exec(follow.stderr.toString())?.[1],
      );
      const archive = Buffer.concat([first, rest]);
      assert.ok(readFileSync(copy).equals(archive), 'the local copy is both parts');

      // One stream of whole 1 MiB records, as one tar makes: the restore's tar -b 2048 -B reads
      // every byte, and the decompressor ends as on one archive (not by a broken pipe).
      const whole = join(root, `whole-${compression}`);
      writeFileSync(whole, archive);
      const decoder = compression === 'gzip' ? 'gzip -dc' : 'zstd -qdc';
      const read = spawnSync('bash', [
        '-c',
        `set -o pipefail; mkdir -p ${whole}.x; ${decoder} ${whole} | tar -x -b 2048 -B -f - -C ${whole}.x`,
      ]);
      assert.equal(read.status, 0, read.stderr.toString());
      assert.equal(Number(sh(`${decoder} ${whole} | wc -c`)) % 2 ** 20, 0);
      const out = join(root, `extract-${compression}`);
      mkdirSync(out);
      // The original restore's extraction, which stops at the first end of an archive.
      const r = spawnSync(
        'tar',
        ['-I', compression === 'gzip' ? 'pigz' : 'zstd', '-xf', '-', '-C', out],
        { input: archive },
      );
      assert.equal(r.status, 0, r.stderr.toString());
      const listed = spawnSync(
        'tar',
        ['-I', compression === 'gzip' ? 'pigz' : 'zstd', '-tf', '-'],
        {
          input: archive,
        },
      )
        .stdout.toString()
        .split('\n')
        .filter((l) => l && !l.endsWith('/'));
      const renamed = (f: string): string =>
        f.replace(BLOCK_DB, '.storage/db_CHANGEIP:7100_icon_dex');
      // Every file of the frozen copy, byte for byte, under the placeholder.
      for (const f of files(stage))
        assert.equal(sha(join(out, renamed(f))), sha(join(stage, f)), f);
      // A table that went ahead and is still the node's goes up once.
      const sentTwice = listed.filter((l, i) => listed.indexOf(l) !== i);
      assert.deepEqual(sentTwice, []);
      // What else it holds: the tables removed since, which no MANIFEST lists.
      const extra = files(out).filter((f) => !files(stage).map(renamed).includes(f));
      assert.deepEqual(extra.map((f) => f.split('/').pop()).sort(), gone.sort());
      // Which the command counted: the manifest's file count is what a restore extracts.
      assert.equal(removed, gone.length);
      assert.equal(files(out).length, files(stage).length + removed);
      const blockDb = join(out, '.storage/db_CHANGEIP:7100_icon_dex');
      const current = readFileSync(join(blockDb, 'CURRENT'), 'utf8').trim();
      const live = parseManifest(readFileSync(join(blockDb, current))).tables;
      for (const f of gone) assert.equal(live.has(Number(f.split('.')[0])), false, f);
      // LevelDB opens it, holds the last write, and removes what no MANIFEST lists.
      const db = new ClassicLevel(blockDb, { valueEncoding: 'utf8' });
      await db.open();
      assert.match((await db.get('k59-399')) ?? '', /^59-399-/);
      await db.close();
      for (const f of gone) assert.equal(existsSync(join(blockDb, f)), false, f);
      rmSync(aheadDir(stage), { recursive: true, force: true });
    });
  }

  it('a table that changes while it goes ahead fails the part, which is then not used', () => {
    rmSync(stage, { recursive: true, force: true });
    settle(data);
    sh(linkAheadCommand(loopchain, data, aheadDir(stage)));
    const table = files(aheadDir(stage)).find((f) => f.endsWith('.ldb')) as string;
    // A compressor that writes to a table while tar reads: the node writing to a table it had
    // left alone for longer than the send ahead waits.
    const bin = join(root, 'bin');
    mkdirSync(bin, { recursive: true });
    const real = sh('command -v gzip').toString().trim();
    writeFileSync(
      join(bin, 'pigz'),
      `#!/bin/sh\nprintf x >> '${join(aheadDir(stage), table)}'\nexec ${real} "$@"\n`,
    );
    chmodSync(join(bin, 'pigz'), 0o755);
    const r = spawnSync(
      'sh',
      [
        '-c',
        archiveAheadCommand(loopchain, aheadDir(stage), ID, { compression: 'gzip', level: 1 }),
      ],
      { input: GO_LINE, env: { ...process.env, PATH: `${bin}:${process.env.PATH}` } },
    );
    assert.equal(r.status, AHEAD_CHANGED_CODE, r.stderr.toString());
    assert.match(r.stderr.toString(), new RegExp(AHEAD_CHANGED_MARK));
  });
});
