/**
 * The host-side commands, run by a real bash on real LevelDB databases in a temp dir:
 * what the action sends over SSH is exactly what runs here.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { gunzipSync } from 'node:zlib';
import { ClassicLevel } from 'classic-level';
import { parseManifestsOutput, planPrune } from '../../src/freeze.ts';
import { parseManifest } from '../../src/node-kind/leveldb-manifest.ts';
import { loopchain, pickIdentityDir } from '../../src/node-kind/loopchain/layout.ts';
import {
  archiveCommand,
  CHANGED_MARK,
  checkpointBytes,
} from '../../src/node-kind/archive-remote.ts';
import {
  detachedCommand,
  requireArchiveTools,
  batchCommand,
  freezeCommand,
  manifestsCommand,
  parseBatch,
  parseProbe,
  probeCommand,
  pruneCommand,
  removeStagingCommand,
  sizeCommand,
  statDigestCommand,
} from '../../src/node-kind/remote.ts';
import {
  restoreProbeCommand,
  SWAP_LINE,
  swapCommand,
} from '../../src/node-kind/restore-commands.ts';
import {
  chooseDecoder,
  extractCommand,
  goLine,
  NOT_A_SNAPSHOT,
  WIDE_PIPES,
} from '../../src/node-kind/extract.ts';
import { bashScript, GO_LINE } from '../../src/shell.ts';

const IP = '10.20.30.40';
const DBS = [
  '.score_data/db/icon_dex',
  '.score_data/db/iiss',
  '.score_data/score',
  `.storage/db_${IP}:7100_icon_dex`,
];

function sh(command: string, input?: Buffer | string): Buffer {
  // The builders produce `bash -c '...'` lines, as the remote login shell receives them.
  return execFileSync('sh', ['-c', command], { input, maxBuffer: 1 << 30 });
}

function sha(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

async function fill(dir: string, rounds: number): Promise<void> {
  const db = new ClassicLevel(dir, { valueEncoding: 'utf8' });
  await db.open();
  for (let r = 0; r < rounds; r++) {
    const batch = db.batch();
    for (let i = 0; i < 400; i++) batch.put(`k${r}-${i}`, `${r}-${i}-`.repeat(60) + Math.random());
    await batch.write();
  }
  await db.compactRange('k', 'l');
  await db.close();
}

describe('host commands on real LevelDB files', () => {
  let root: string;
  let data: string;
  let stage: string;

  before(async () => {
    root = mkdtempSync(join(tmpdir(), 'prep-remote-'));
    data = join(root, 'prep', 'data', 'loopchain');
    for (const d of DBS) {
      mkdirSync(join(data, d), { recursive: true });
      await fill(join(data, d), 30);
    }
    // A table that an interrupted compaction left behind: on disk, not in the MANIFEST.
    writeFileSync(join(data, `.storage/db_${IP}:7100_icon_dex`, '009999.ldb'), 'half a table');
    stage = join(root, 'prep', 'data', '.prep-snapshot-staging-test');
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  it('probe finds the layout, the identity directory and the tools', () => {
    const probe = parseProbe(sh(probeCommand(loopchain, data)).toString());
    assert.equal(probe.dataDirPresent, true);
    assert.deepEqual(probe.missingRoots, []);
    assert.equal(pickIdentityDir(loopchain, probe.identities, data), `db_${IP}:7100_icon_dex`);
    assert.ok(probe.tools.has('tar'));
    assert.equal(probe.sameDevice, true);
    const missing = parseProbe(sh(probeCommand(loopchain, join(root, 'nowhere'))).toString());
    assert.equal(missing.dataDirPresent, false);
  });

  it('two identity directories are a clear error', () => {
    assert.throws(
      () =>
        pickIdentityDir(loopchain, ['db_1.1.1.1:7100_icon_dex', 'db_2.2.2.2:7100_icon_dex'], data),
      /holds 2 directories.*keep only the one/,
    );
    assert.throws(() => pickIdentityDir(loopchain, [], data), /holds no db_\*:7100_icon_dex/);
  });

  it('freeze links the tables, copies the mutable files, and the prune drops what the MANIFEST does not list', () => {
    sh(freezeCommand(loopchain, data, stage, join(root, 'no-watchdog')));
    const blockDb = `.storage/db_${IP}:7100_icon_dex`;
    for (const name of readdirSync(join(data, blockDb))) {
      const a = statSync(join(data, blockDb, name));
      const b = statSync(join(stage, blockDb, name));
      if (/\.(ldb|sst)$/.test(name)) assert.equal(a.ino, b.ino, `${name} is a hard link`);
      else assert.notEqual(a.ino, b.ino, `${name} is a copy`);
    }
    const dbs = parseManifestsOutput(sh(manifestsCommand(loopchain, stage)).toString());
    assert.equal(dbs.length, DBS.length);
    const plan = planPrune(dbs);
    assert.deepEqual(plan.garbage, [`${blockDb}/009999.ldb`]);
    sh(pruneCommand(stage), plan.garbage.map((g) => `${g}\0`).join(''));
    assert.equal(existsSync(join(stage, blockDb, '009999.ldb')), false);
    assert.equal(
      existsSync(join(data, blockDb, '009999.ldb')),
      true,
      'the node keeps its own files',
    );
    const sizes = sh(sizeCommand(loopchain, stage)).toString();
    assert.match(sizes, /files=\d+\nbytes=\d+/);
  });

  it('a MANIFEST that lists a missing table stops the backup', () => {
    const dbs = parseManifestsOutput(sh(manifestsCommand(loopchain, stage)).toString());
    const db = dbs[0]!;
    const live = [...parseManifest(db.manifest!).tables.keys()];
    assert.ok(live.length > 0);
    const damaged = { ...db, tables: db.tables.filter((t) => Number(t.split('.')[0]) !== live[0]) };
    assert.throws(() => planPrune([damaged]), /lists 1 table file\(s\) that are not there/);
  });

  for (const compression of ['gzip', 'zstd'] as const) {
    it(`the ${compression} archive renames the identity directory and holds the tables byte for byte`, () => {
      const archive = sh(
        archiveCommand(loopchain, stage, `db_${IP}:7100_icon_dex`, { compression, level: 1 }),
        GO_LINE,
      );
      const out = join(root, `extract-${compression}`);
      mkdirSync(out);
      // The original restore: tar -I pigz -xf (gzip); zstd with tar's own -I zstd.
      const r = spawnSync(
        'tar',
        ['-I', compression === 'gzip' ? 'pigz' : 'zstd', '-xf', '-', '-C', out],
        { input: archive },
      );
      assert.equal(r.status, 0, r.stderr.toString());
      assert.deepEqual(readdirSync(join(out, '.storage')), ['db_CHANGEIP:7100_icon_dex']);
      const blockDb = `.storage/db_${IP}:7100_icon_dex`;
      for (const name of readdirSync(join(stage, blockDb))) {
        assert.equal(
          sha(join(out, '.storage/db_CHANGEIP:7100_icon_dex', name)),
          sha(join(stage, blockDb, name)),
          name,
        );
      }
      assert.equal(existsSync(join(out, '.storage/db_CHANGEIP:7100_icon_dex/009999.ldb')), false);
    });
  }

  it('a local copy on the host is the same archive, renamed only when whole', () => {
    const copy = join(root, 'prep/data/Backup/20240101/PRep_BH1_data-20240101_0000.tar.gz');
    const archive = sh(
      archiveCommand(loopchain, stage, `db_${IP}:7100_icon_dex`, {
        compression: 'gzip',
        level: 1,
        localCopy: copy,
      }),
      GO_LINE,
    );
    assert.ok(readFileSync(copy).equals(archive));
    assert.equal(existsSync(`${copy}.partial`), false);
  });

  it('a tar that fails makes the whole command fail (pipefail)', () => {
    const r = spawnSync(
      'sh',
      [
        '-c',
        archiveCommand(loopchain, join(root, 'nowhere'), 'x', { compression: 'gzip', level: 1 }),
      ],
      { input: GO_LINE },
    );
    assert.notEqual(r.status, 0);
  });
});

describe('the archive in 1 MiB records', () => {
  it('tar writes whole 1 MiB records, and its progress lines count the bytes it has read', () => {
    const dir = mkdtempSync(join(tmpdir(), 'records-'));
    try {
      const id = `db_${IP}:7100_icon_dex`;
      mkdirSync(join(dir, '.score_data/db'), { recursive: true });
      mkdirSync(join(dir, '.storage', id), { recursive: true });
      const big = randomBytes(27 * 1024 * 1024 + 333);
      writeFileSync(join(dir, '.score_data/db/000005.ldb'), big);
      writeFileSync(join(dir, '.storage', id, 'CURRENT'), 'MANIFEST-000001\n');
      const r = spawnSync(
        'sh',
        ['-c', archiveCommand(loopchain, dir, id, { compression: 'gzip', level: 1 })],
        { input: GO_LINE, maxBuffer: 1 << 30 },
      );
      assert.equal(r.status, 0, r.stderr.toString());
      const tarBytes = gunzipSync(r.stdout);
      assert.equal(tarBytes.length % (1024 * 1024), 0, 'whole 1 MiB records');
      const lines = r.stderr.toString().split('\n');
      const total = Number(/Total bytes written: (\d+)/.exec(r.stderr.toString())?.[1]);
      assert.equal(total, tarBytes.length, "tar's total is the stream's size");
      const progress = lines.map(checkpointBytes).filter((b) => b !== undefined);
      // One line every 10 records (10 MiB): at 10 and 20 MiB of a 28 MiB stream.
      assert.deepEqual(
        progress,
        [10, 20].map((m) => m * 1024 * 1024),
      );
      // The original restore reads it: tar with its default 10 KiB records.
      const out = join(dir, 'out');
      mkdirSync(out);
      const x = spawnSync('tar', ['-xzf', '-', '-C', out], { input: r.stdout });
      assert.equal(x.status, 0, x.stderr.toString());
      assert.ok(readFileSync(join(out, '.score_data/db/000005.ldb')).equals(big));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the archive waits for its go line', () => {
  it('an input that ends without one gives no output and reads nothing', () => {
    const root = mkdtempSync(join(tmpdir(), 'prep-go-'));
    try {
      mkdirSync(join(root, '.score_data'), { recursive: true });
      mkdirSync(join(root, '.storage', `db_${IP}:7100_icon_dex`), { recursive: true });
      const copy = join(root, 'Backup', 'x.tar.gz');
      for (const input of ['', 'stop\n']) {
        const r = spawnSync(
          'sh',
          [
            '-c',
            archiveCommand(loopchain, root, `db_${IP}:7100_icon_dex`, {
              compression: 'gzip',
              level: 1,
              localCopy: copy,
            }),
          ],
          { input },
        );
        assert.equal(r.status, 0);
        assert.equal(r.stdout.length, 0);
        assert.equal(existsSync(join(root, 'Backup')), false);
      }
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('the identity rename', () => {
  it('renames the identity directory, not a sibling whose name starts the same', () => {
    const root = mkdtempSync(join(tmpdir(), 'prep-xform-'));
    try {
      const id = `db_${IP}:7100_icon_dex`;
      mkdirSync(join(root, '.score_data'));
      mkdirSync(join(root, '.storage', id), { recursive: true });
      mkdirSync(join(root, '.storage', `${id}.old`));
      writeFileSync(join(root, '.storage', id, 'a'), 'a');
      writeFileSync(join(root, '.storage', `${id}.old`, 'b'), 'b');
      const archive = sh(
        archiveCommand(loopchain, root, id, { compression: 'gzip', level: 1 }),
        GO_LINE,
      );
      const names = spawnSync('tar', ['-tzf', '-'], { input: archive })
        .stdout.toString()
        .split('\n');
      assert.ok(names.includes('.storage/db_CHANGEIP:7100_icon_dex/a'));
      assert.ok(names.includes(`.storage/${id}.old/b`));
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('stale staging folders', () => {
  it('the probe names staging folders over a day old, and only those', () => {
    const root = mkdtempSync(join(tmpdir(), 'prep-stale-'));
    try {
      const data = join(root, 'data', 'loopchain');
      mkdirSync(data, { recursive: true });
      const old = join(root, 'data', '.prep-snapshot-staging-1-1-1');
      const fresh = join(root, 'data', '.prep-snapshot-staging-2-1-1');
      mkdirSync(old);
      mkdirSync(fresh);
      execFileSync('touch', ['-d', '2 days ago', old]);
      const probe = parseProbe(sh(probeCommand(loopchain, data)).toString());
      assert.deepEqual(probe.stale, [old]);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });

  it('a folder over a day old that a stream still reads is not stale', async () => {
    const root = mkdtempSync(join(tmpdir(), 'prep-stale-'));
    try {
      const data = join(root, 'data', 'loopchain');
      const stage = join(root, 'data', '.prep-snapshot-staging-3-1-1');
      for (const r of loopchain.roots) mkdirSync(join(stage, r, 'db'), { recursive: true });
      mkdirSync(join(stage, '.storage', 'db_10.0.0.1:7100_icon_dex'), { recursive: true });
      writeFileSync(join(stage, '.score_data', 'db', 'f'), randomBytes(1 << 20));
      mkdirSync(data, { recursive: true });
      execFileSync('touch', ['-d', '2 days ago', stage]);
      // The real archive command, reading the folder slowly (a slow upload holds it back).
      const reader = spawn(
        'sh',
        [
          '-c',
          `${archiveCommand(loopchain, stage, 'db_10.0.0.1:7100_icon_dex', { compression: 'gzip', level: 1 })} | (sleep 3; cat >/dev/null)`,
        ],
        { stdio: ['pipe', 'ignore', 'ignore'] },
      );
      reader.stdin.end(GO_LINE);
      await until(() => spawnSync('flock', ['-n', stage, 'true']).status !== 0);
      assert.deepEqual(parseProbe(sh(probeCommand(loopchain, data)).toString()).stale, []);
      await new Promise((r) => reader.once('exit', r));
      assert.deepEqual(parseProbe(sh(probeCommand(loopchain, data)).toString()).stale, [stage]);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('tar exit statuses in a staging folder of hard links', () => {
  // A stand-in tar on PATH with a chosen exit status; everything else is the real pipeline.
  function runWithTar(
    status: number,
    tolerate: boolean,
  ): { status: number | null; stderr: string } {
    const bin = mkdtempSync(join(tmpdir(), 'prep-faketar-'));
    try {
      writeFileSync(
        join(bin, 'tar'),
        `#!/bin/sh\necho 'tar: x.ldb: file changed as we read it' >&2\necho data\nexit ${status}\n`,
        {
          mode: 0o755,
        },
      );
      const r = spawnSync(
        'sh',
        [
          '-c',
          archiveCommand(loopchain, tmpdir(), 'x', {
            compression: 'gzip',
            level: 1,
            tolerateChanged: tolerate,
          }),
        ],
        { env: { ...process.env, PATH: `${bin}:${process.env.PATH}` }, input: GO_LINE },
      );
      return { status: r.status, stderr: r.stderr.toString() };
    } finally {
      rmSync(bin, { recursive: true, force: true });
    }
  }

  it('reports tar exit 1 (a link count changed) and lets the caller judge', () => {
    const r = runWithTar(1, true);
    assert.equal(r.status, 0);
    assert.match(r.stderr, new RegExp(CHANGED_MARK));
  });
  it('fails on a fatal tar error', () => {
    assert.equal(runWithTar(2, true).status, 2);
  });
  it('fails on exit 1 when the source is not a staging folder', () => {
    assert.notEqual(runWithTar(1, false).status, 0);
  });
  it('the stat digest moves when a file is written, not when a link is removed', () => {
    const root = mkdtempSync(join(tmpdir(), 'prep-digest-'));
    try {
      mkdirSync(join(root, '.score_data'));
      mkdirSync(join(root, '.storage'));
      writeFileSync(join(root, '.storage', '000001.ldb'), 'table');
      execFileSync('ln', [join(root, '.storage', '000001.ldb'), join(root, 'other-link')]);
      const d0 = sh(statDigestCommand(loopchain, root)).toString();
      // The size command carries the same digest, to save a round trip before the stream.
      const sized = sh(sizeCommand(loopchain, root, true)).toString();
      assert.match(sized, /^files=1\nbytes=5\ndigest=[0-9a-f]{64}\n$/);
      assert.equal(/digest=(\w+)/.exec(sized)?.[1], d0.trim());
      assert.doesNotMatch(sh(sizeCommand(loopchain, root)).toString(), /digest=/);
      rmSync(join(root, 'other-link'));
      assert.equal(sh(statDigestCommand(loopchain, root)).toString(), d0);
      writeFileSync(join(root, '.storage', '000001.ldb'), 'tab');
      assert.notEqual(sh(statDigestCommand(loopchain, root)).toString(), d0);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

describe('extraction on the host', () => {
  // A small snapshot-shaped tree, archived the way the backup does it.
  let root: string;
  let archive: Buffer;
  let want: Map<string, string>;
  before(() => {
    root = mkdtempSync(join(tmpdir(), 'prep-extract-'));
    const src = join(root, 'src');
    mkdirSync(join(src, '.score_data/db/icon_dex'), { recursive: true });
    mkdirSync(join(src, `.storage/db_${IP}:7100_icon_dex`), { recursive: true });
    want = new Map();
    for (let i = 0; i < 40; i++) {
      // Big enough to fill a pipe many times over; half compressible, like table files.
      const body = Buffer.concat([
        createHash('sha512').update(String(i)).digest(),
        Buffer.alloc(40_000 + i * 997, i),
      ]);
      const rel = `${i % 2 ? '.score_data/db/icon_dex' : `.storage/db_${IP}:7100_icon_dex`}/${String(i).padStart(6, '0')}.ldb`;
      writeFileSync(join(src, rel), body);
      want.set(
        rel.replace(`db_${IP}:`, 'db_CHANGEIP:'),
        createHash('sha256').update(body).digest('hex'),
      );
    }
    archive = sh(
      archiveCommand(loopchain, src, `db_${IP}:7100_icon_dex`, { compression: 'gzip', level: 1 }),
      GO_LINE,
    );
  });
  after(() => rmSync(root, { recursive: true, force: true }));
  const extract = (stage: string): string => extractCommand(loopchain, join(root, 'prep'), stage);

  it('prefers igzip, then pigz, then gzip; zstd archives need zstd', () => {
    assert.equal(chooseDecoder(new Set(['igzip', 'pigz', 'gzip']), 'gzip').name, 'igzip');
    assert.equal(chooseDecoder(new Set(['pigz', 'gzip']), 'gzip').name, 'pigz');
    assert.equal(chooseDecoder(new Set(['gzip']), 'gzip').name, 'gzip');
    assert.equal(chooseDecoder(new Set(['igzip', 'pigz', 'zstd']), 'zstd').name, 'zstd');
  });

  it('a host with igzip alone can read gzip, not write it', () => {
    const tools = new Set(['tar', 'igzip']);
    assert.doesNotThrow(() => requireArchiveTools(tools, 'gzip', 'x.tar.gz', true));
    assert.equal(chooseDecoder(tools, 'gzip').name, 'igzip');
    assert.throws(
      () => requireArchiveTools(tools, 'gzip', 'The archive'),
      /none of pigz, gzip for The archive/,
    );
    assert.throws(
      () => requireArchiveTools(new Set(['tar']), 'gzip', 'x.tar.gz', true),
      /none of igzip, pigz, gzip/,
    );
    assert.throws(() => requireArchiveTools(tools, 'zstd', 'x.tar.zst', true), /no 'zstd'/);
    assert.throws(() => requireArchiveTools(new Set(['gzip']), 'gzip', 'x', true), /no 'tar'/);
  });

  for (const name of ['igzip', 'pigz', 'gzip'] as const) {
    it(`${name} extracts the archive byte for byte`, () => {
      const stage = join(root, `stage-${name}`);
      const decoder = chooseDecoder(new Set([name]), 'gzip');
      const out = sh(extract(stage), Buffer.concat([Buffer.from(goLine(decoder)), archive]));
      assert.equal(out.toString().trim(), String(want.size), 'prints the file count');
      for (const [rel, digest] of want) assert.equal(sha(join(stage, rel)), digest, rel);
    });
    it(`${name} fails on a truncated archive`, () => {
      const stage = join(root, `cut-${name}`);
      const r = spawnSync('sh', ['-c', extract(stage)], {
        input: Buffer.concat([
          Buffer.from(goLine(chooseDecoder(new Set([name]), 'gzip'))),
          archive.subarray(0, Math.floor(archive.length / 2)),
        ]),
      });
      assert.notEqual(r.status, 0);
      assert.equal(existsSync(stage), false, 'the failed extraction removed its folder');
    });
  }

  it('waits for its go line: an input that ends without one creates nothing', () => {
    const stage = join(root, 'fresh', 'data', '.stage');
    for (const input of ['', 'stop\n', archive]) {
      const r = spawnSync('sh', ['-c', extractCommand(loopchain, join(root, 'fresh'), stage)], {
        input,
      });
      assert.equal(r.status, 0, r.stderr.toString());
      assert.equal(existsSync(join(root, 'fresh')), false, 'nothing created');
    }
    const odd = spawnSync('sh', ['-c', extract(stage)], { input: 'go rm -rf /\n' });
    assert.equal(odd.status, 2);
    assert.match(odd.stderr.toString(), /unknown decompressor: rm/);
    assert.equal(existsSync(stage), false);
  });

  it('an archive that is not a snapshot exits 3 and leaves no folder', () => {
    const stage = join(root, 'stage-other');
    const other = join(root, 'other');
    mkdirSync(join(other, 'photos'), { recursive: true });
    writeFileSync(join(other, 'photos', 'a.jpg'), 'x');
    const body = execFileSync('tar', ['-czf', '-', '-C', other, 'photos']);
    const r = spawnSync('sh', ['-c', extract(stage)], {
      input: Buffer.concat([Buffer.from(goLine(chooseDecoder(new Set(['gzip']), 'gzip'))), body]),
    });
    assert.equal(r.status, NOT_A_SNAPSHOT, r.stderr.toString());
    assert.match(r.stderr.toString(), /the archive holds no \.score_data/);
    assert.equal(existsSync(stage), false);
  });

  it('the wrapped command sees 1 MiB pipes on both sides, and its exit status comes back', () => {
    // F_GETPIPE_SZ is 1032 on Linux.
    const probe = `wide perl -e 'print fcntl(STDIN, 1032, 0), " ", fcntl(STDOUT, 1032, 0), "\\n"; exit 7' < <(cat /dev/null) | cat`;
    const r = spawnSync('sh', ['-c', bashScript([WIDE_PIPES, `set +o pipefail`, probe, 'true'])]);
    assert.equal(r.stdout.toString().trim(), '1048576 1048576');
    const status = spawnSync('sh', ['-c', bashScript([WIDE_PIPES, 'wide sh -c "exit 7"'])]);
    assert.equal(status.status, 7);
  });

  it('without perl the command runs as it is', () => {
    const bin = mkdtempSync(join(tmpdir(), 'prep-noperl-'));
    try {
      // A PATH with bash, cat and sh only: no perl.
      for (const t of ['bash', 'cat', 'sh'])
        execFileSync('ln', [
          '-s',
          execFileSync('sh', ['-c', `command -v ${t}`])
            .toString()
            .trim(),
          join(bin, t),
        ]);
      const r = spawnSync('/bin/sh', ['-c', bashScript([WIDE_PIPES, 'echo through | wide cat'])], {
        env: { PATH: bin },
      });
      assert.equal(r.status, 0, r.stderr.toString());
      assert.equal(r.stdout.toString(), 'through\n');
    } finally {
      rmSync(bin, { recursive: true, force: true });
    }
  });

  it('a removal of the staging folder waits for the extraction into it to end', async () => {
    const stage = join(root, 'stage-locked');
    const decoder = chooseDecoder(new Set(['igzip']), 'gzip');
    const extraction = spawn('sh', ['-c', extract(stage)], {
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    const extracted = new Promise<number | null>((r) => extraction.on('close', r));
    // Half of the archive, and the input stays open: the extraction is under way.
    extraction.stdin.write(goLine(decoder));
    extraction.stdin.write(archive.subarray(0, Math.floor(archive.length / 2)));
    // The extraction holds the folder's lock once it has started.
    await until(() => existsSync(stage) && spawnSync('flock', ['-n', stage, 'true']).status !== 0);

    const removal = spawn('sh', ['-c', removeStagingCommand(stage)], { stdio: 'ignore' });
    let removed: number | null | undefined;
    const removing = new Promise<number | null>((r) =>
      removal.on('close', (code) => r((removed = code))),
    );
    await sleep(500);
    assert.equal(removed, undefined, 'the removal waits while the extraction runs');
    assert.ok(existsSync(stage));

    // The connection is cut: the input ends short, the extraction fails, then the removal goes.
    extraction.stdin.end();
    assert.notEqual(await extracted, 0);
    assert.equal(await removing, 0);
    assert.equal(existsSync(stage), false, 'no staging folder left');
  });

  it('a removal that waited too long says so and removes what it can', () => {
    const stage = join(root, 'stage-stuck');
    mkdirSync(join(stage, 'x'), { recursive: true });
    // Something holds the lock and never lets go within the wait.
    const holder = spawn('flock', [stage, 'sleep', '30'], { stdio: 'ignore' });
    try {
      execFileSync('sleep', ['0.3']);
      const r = spawnSync('sh', ['-c', removeStagingCommand(stage, 1)]);
      assert.match(
        r.stderr.toString(),
        /an extraction into the staging folder still runs after 1 s/,
      );
      assert.equal(existsSync(stage), false);
    } finally {
      holder.kill();
    }
  });
});

async function until(ready: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!ready()) {
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await sleep(20);
  }
}

describe('the swap and the checks of the host', () => {
  let root: string;
  before(() => (root = mkdtempSync(join(tmpdir(), 'prep-swap-'))));
  after(() => rmSync(root, { recursive: true, force: true }));

  function layout(): { data: string; stage: string; previous: string } {
    const base = mkdtempSync(join(root, 'case-'));
    const data = join(base, 'loopchain');
    const stage = join(base, '.stage');
    mkdirSync(join(data, '.storage', 'db_10.0.0.1:7100_icon_dex'), { recursive: true });
    writeFileSync(join(data, 'old'), 'old');
    mkdirSync(join(stage, '.storage', 'db_CHANGEIP:7100_icon_dex'), { recursive: true });
    writeFileSync(join(stage, 'new'), 'new');
    return { data, stage, previous: `${data}.prev-x` };
  }

  it('the swap changes nothing until it reads its line', () => {
    const { data, stage, previous } = layout();
    for (const input of ['', 'no\n']) {
      const r = spawnSync(
        'sh',
        ['-c', swapCommand(loopchain, data, stage, previous, IP, `${data}.no-watchdog`)],
        {
          input,
        },
      );
      assert.equal(r.status, 0);
      assert.equal(r.stdout.toString(), '');
      assert.equal(readFileSync(join(data, 'old'), 'utf8'), 'old');
      assert.ok(existsSync(join(stage, '.storage', 'db_CHANGEIP:7100_icon_dex')));
      assert.equal(existsSync(previous), false);
    }
  });

  it('the swap names the block DB after the IP and keeps the previous data dir', () => {
    const { data, stage, previous } = layout();
    const out = sh(
      swapCommand(loopchain, data, stage, previous, IP, `${data}.no-watchdog`),
      SWAP_LINE,
    ).toString();
    assert.equal(out.trim(), 'swapped');
    assert.equal(readFileSync(join(data, 'new'), 'utf8'), 'new');
    assert.ok(existsSync(join(data, '.storage', `db_${IP}:7100_icon_dex`)));
    assert.equal(existsSync(join(data, '.storage', 'db_CHANGEIP:7100_icon_dex')), false);
    assert.equal(readFileSync(join(previous, 'old'), 'utf8'), 'old');
    assert.equal(existsSync(stage), false);
  });

  it('a batch runs its commands at once and reports each one', () => {
    const flag = join(root, 'flag');
    const out = sh(
      batchCommand({
        // Waits for the flag that the next command makes: it passes only if both run at once.
        first: bashScript([
          `for i in $(seq 200); do [ -e ${flag} ] && { printf 'two\\nlines\\n'; exit 0; }; sleep 0.05; done`,
          'exit 1',
        ]),
        second: `touch ${flag}`,
        failing: bashScript(['echo partial', 'exit 7']),
        silent: 'true',
      }),
    ).toString();
    const r = parseBatch(out);
    assert.deepEqual(r.get('first'), { code: 0, stdout: 'two\nlines\n' });
    assert.deepEqual(r.get('second'), { code: 0, stdout: '' });
    assert.deepEqual(r.get('failing'), { code: 7, stdout: 'partial\n' });
    assert.deepEqual(r.get('silent'), { code: 0, stdout: '' });
  });

  it('the probe of a fresh host reads the free space above the missing data dir, creating nothing', () => {
    const data = join(root, 'not', 'yet', 'data', 'loopchain');
    const probe = parseProbe(sh(restoreProbeCommand(data)).toString());
    assert.ok(probe.freeBytes > 0);
    assert.equal(probe.dataDirPresent, false);
    assert.ok(probe.tools.has('tar'));
    assert.equal(existsSync(join(root, 'not')), false);
  });

  it("the restore's probe lists the staging folders of restores beside the data dir, with their sizes and locks", async () => {
    const prep = join(root, 'stages');
    const data = join(prep, 'data');
    const left = join(prep, '.prep-snapshot-restore-tree-0123456789abcdef');
    const busy = join(prep, '.prep-snapshot-restore-tree-fedcba9876543210');
    mkdirSync(join(left, 'chain', 'db'), { recursive: true });
    writeFileSync(join(left, 'chain', 'db', '000001.ldb'), randomBytes(300_000));
    mkdirSync(busy);
    // Neither a staging folder nor a folder: not listed.
    mkdirSync(join(prep, '.prep-snapshot-staging-20260101'));
    writeFileSync(join(prep, '.prep-snapshot-restore-file'), 'x');
    const holder = spawn('flock', [busy, 'sleep', '30'], { stdio: 'ignore' });
    try {
      await until(() => spawnSync('flock', ['-n', busy, 'true']).status !== 0);
      const compose = join(prep, 'docker-compose.yml');
      writeFileSync(compose, 'services: {}\n');
      const probe = parseProbe(
        sh(
          restoreProbeCommand(data, {
            stagesIn: prep,
            has: { compose, socket: join(data, 'cli.sock') },
          }),
        ).toString(),
      );
      assert.equal(probe.dataDirPresent, false);
      assert.deepEqual([...probe.has], ['compose']);
      const byName = new Map(probe.stages.map((s) => [s.name, s]));
      assert.deepEqual([...byName.keys()].sort(), [
        '.prep-snapshot-restore-tree-0123456789abcdef',
        '.prep-snapshot-restore-tree-fedcba9876543210',
      ]);
      const l = byName.get('.prep-snapshot-restore-tree-0123456789abcdef')!;
      assert.equal(l.busy, false);
      assert.ok(l.bytes >= 300_000, `${l.bytes} bytes on the disk`);
      assert.equal(byName.get('.prep-snapshot-restore-tree-fedcba9876543210')!.busy, true);
      // A folder that does not exist yet (a fresh host) lists nothing.
      const none = parseProbe(
        sh(restoreProbeCommand(data, { stagesIn: join(root, 'nowhere') })).toString(),
      );
      assert.deepEqual(none.stages, []);
    } finally {
      holder.kill();
    }
  });
});

describe("the node's start, detached from the session", () => {
  let root: string;
  before(() => (root = mkdtempSync(join(tmpdir(), 'prep-detached-'))));
  after(() => rmSync(root, { recursive: true, force: true }));

  it('passes on its exit status and its output', () => {
    const r = spawnSync('sh', [
      '-c',
      detachedCommand(`echo starting; echo 'no compose file' >&2; exit 5`),
    ]);
    assert.equal(r.status, 5);
    assert.match(r.stderr.toString(), /starting\nno compose file\n/);
  });

  it('finishes on the host when the session that ran it is gone', async () => {
    const mark = join(root, 'started');
    // The start writes as it goes, as docker-compose does: a plain child would die of SIGPIPE.
    const child = spawn(
      'sh',
      ['-c', detachedCommand(`echo one; sleep 1; echo two; touch ${mark}`)],
      { stdio: ['ignore', 'pipe', 'pipe'], detached: true },
    );
    await sleep(300);
    // The connection drops: the session's processes are killed and their pipes closed.
    process.kill(-child.pid!, 'SIGKILL');
    child.stdout.destroy();
    child.stderr.destroy();
    await until(() => existsSync(mark), 10_000);
  });
});
