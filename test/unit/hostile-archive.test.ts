/**
 * The extraction on the host against archives crafted to escape or poison the data dir, run
 * by a real bash and GNU tar in a temp dir: what the action sends over SSH is what runs here.
 * Each refused archive leaves no staging folder and nothing outside it.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  lstatSync,
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
import { gzipSync } from 'node:zlib';
import { loopchain } from '../../src/node-kind/loopchain/layout.ts';
import {
  chooseDecoder,
  extractCommand,
  goLine,
  LOCKED_LINE,
  markedLines,
  NOT_A_SNAPSHOT,
  UNSAFE_ARCHIVE,
  UNSAFE_MARK,
  receiveMoreCommand,
} from '../../src/node-kind/extract.ts';
import { craftTar, type Member } from '../bed/craft-tar.ts';

const PLACEHOLDER = `.storage/${loopchain.placeholder}`;
const GO = goLine(chooseDecoder(new Set(['gzip']), 'gzip'));
const isRoot = process.getuid?.() === 0;

describe('extraction of a hostile archive', () => {
  let root: string;
  /** A small snapshot, archived as the backup does. */
  let base: string;
  /** Where a hostile archive points; it must stay empty. */
  let elsewhere: string;
  /** A file outside that hard links aim at; it must keep one name and its bytes. */
  let outsideFile: string;
  let n = 0;

  before(() => {
    root = mkdtempSync(join(tmpdir(), 'prep-hostile-'));
    const src = join(root, 'src');
    mkdirSync(join(src, '.score_data/db/icon_dex'), { recursive: true });
    mkdirSync(join(src, PLACEHOLDER), { recursive: true });
    writeFileSync(join(src, '.score_data/db/icon_dex/000005.ldb'), 'table');
    writeFileSync(join(src, PLACEHOLDER, 'CURRENT'), 'MANIFEST-000002\n');
    base = join(root, 'base.tar');
    execFileSync('tar', ['-cf', base, '-C', src, '.score_data', '.storage']);
    elsewhere = join(root, 'elsewhere');
    mkdirSync(elsewhere);
    outsideFile = join(root, 'outside-file');
    writeFileSync(outsideFile, 'outside');
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  /** Extracts `tar` (gzip-compressed on the way) into a fresh staging folder under `prep`. */
  function extract(tar: Buffer, opts: { prep?: string; env?: NodeJS.ProcessEnv } = {}) {
    const prep = opts.prep ?? join(root, `prep-${++n}`);
    const stage = join(prep, 'data', `.prep-snapshot-restore-${n}`);
    const r = spawnSync('sh', ['-c', extractCommand(loopchain, prep, stage)], {
      input: Buffer.concat([Buffer.from(GO), gzipSync(tar)]),
      env: opts.env ?? process.env,
    });
    const stderr = r.stderr.toString();
    const refused = markedLines(stderr, UNSAFE_MARK);
    return { status: r.status, stdout: r.stdout.toString(), stderr, refused, stage };
  }

  function assertNothingOutside(): void {
    assert.deepEqual(readdirSync(elsewhere), [], 'nothing written where the archive points');
    assert.equal(statSync(outsideFile).nlink, 1, 'the outside file has one name');
    assert.equal(readFileSync(outsideFile, 'utf8'), 'outside');
  }

  /** The archive is refused, each of `reasons` is named, and nothing is left. */
  function assertRefused(tar: Buffer, reasons: RegExp[]): void {
    const r = extract(tar);
    assert.equal(r.status, UNSAFE_ARCHIVE, r.stderr);
    for (const reason of reasons)
      assert.ok(
        r.refused.some((l) => reason.test(l)),
        `${reason} among:\n${r.refused.join('\n')}`,
      );
    assert.equal(existsSync(r.stage), false, 'the staging folder is removed');
    assertNothingOutside();
  }

  it('a snapshot extracts, tar keeping neither owners nor modes beyond 0777', () => {
    const cmd = extractCommand(loopchain, '/p', '/p/s');
    assert.match(cmd, /tar -x -b 2048 -B --no-same-owner --no-same-permissions /);
    // The placeholder must be a directory, not a link to one.
    assert.ok(cmd.includes(`[ -d ${PLACEHOLDER} ] && [ ! -L ${PLACEHOLDER} ]`));
    const r = extract(craftTar({ base, members: [] }));
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), '2');
    assert.deepEqual(r.refused, []);
  });

  const cases: Array<{ what: string; drop?: string[]; members: Member[]; reasons: RegExp[] }> = [
    {
      what: 'a symbolic link at the placeholder',
      drop: [PLACEHOLDER],
      members: [{ name: PLACEHOLDER, type: 'symlink', linkname: '/ELSEWHERE' }],
      reasons: [/^\.storage\/db_CHANGEIP:7100_icon_dex -> \/.*elsewhere \(a symbolic link\)$/],
    },
    {
      what: 'a relative symbolic link elsewhere under the roots',
      members: [{ name: '.score_data/db/link', type: 'symlink', linkname: 'icon_dex' }],
      reasons: [/^\.score_data\/db\/link -> icon_dex \(a symbolic link\)$/],
    },
    {
      // GNU tar makes a link that points out only at the end: the file goes nowhere.
      what: 'a file written through a symbolic link that points out',
      members: [
        { name: '.score_data/out', type: 'symlink', linkname: '/ELSEWHERE' },
        { name: '.score_data/out/planted', data: 'planted' },
      ],
      reasons: [/^\.score_data\/out -> .* \(a symbolic link\)$/],
    },
    {
      what: 'a character device, a block device and a fifo',
      members: [
        { name: '.score_data/null', type: 'char', devmajor: 1, devminor: 3 },
        { name: '.score_data/disk', type: 'block', devmajor: 8, devminor: 0 },
        { name: '.score_data/fifo', type: 'fifo' },
      ],
      reasons: [
        /^\.score_data\/null \(a character device\)$/,
        /^\.score_data\/disk \(a block device\)$/,
        /^\.score_data\/fifo \(a fifo\)$/,
      ],
    },
    {
      // GNU tar strips the leading / and ../ of a hard link's target: it looks inside.
      what: 'hard links to a file outside, by an absolute target and by ..',
      members: [
        { name: '.score_data/abs', type: 'hardlink', linkname: '/OUTSIDE' },
        { name: '.score_data/up', type: 'hardlink', linkname: '../../../../outside-file' },
      ],
      reasons: [
        /^\.score_data\/abs link to .* \(a hard link\)$/,
        /^\.score_data\/up link to .* \(a hard link\)$/,
      ],
    },
    {
      what: 'a hard link inside the archive',
      members: [
        {
          name: '.score_data/copy',
          type: 'hardlink',
          linkname: '.score_data/db/icon_dex/000005.ldb',
        },
      ],
      reasons: [
        /^\.score_data\/copy link to \.score_data\/db\/icon_dex\/000005\.ldb \(a hard link\)$/,
      ],
    },
    {
      what: 'setuid, setgid and sticky files',
      members: [
        { name: '.score_data/suid', mode: 0o4755, data: '#!/bin/sh\n' },
        { name: '.score_data/sgid', mode: 0o2755, data: '#!/bin/sh\n' },
        { name: '.score_data/sticky', mode: 0o1644 },
      ],
      reasons: [
        /^\.score_data\/suid \(a setuid file\)$/,
        /^\.score_data\/sgid \(a setgid file\)$/,
        /^\.score_data\/sticky \(a file with the sticky bit\)$/,
      ],
    },
    {
      what: 'an entry beside the roots',
      members: [
        { name: 'etc', type: 'dir' },
        { name: 'etc/cron.d', type: 'dir' },
        { name: 'etc/cron.d/evil', data: '* * * * * root true\n' },
      ],
      reasons: [/^etc \(outside \.score_data and \.storage\)$/],
    },
    {
      // GNU tar skips it (and fails); the check names it.
      what: 'names with ..',
      members: [
        { name: '../escaped', data: 'x' },
        { name: '.score_data/../../escaped-too', data: 'x' },
      ],
      reasons: [
        /^\.\.\/escaped \(a name with \.\.\)$/,
        /^\.score_data\/\.\.\/\.\.\/escaped-too \(a name with \.\.\)$/,
      ],
    },
    {
      // GNU tar strips the leading / and extracts it inside.
      what: 'an absolute name',
      members: [{ name: '/ELSEWHERE/absolute', data: 'x' }],
      reasons: [/^\/.*\/elsewhere\/absolute \(an absolute name\)$/],
    },
  ];
  for (const c of cases) {
    it(`refuses ${c.what}`, (t) => {
      const members = c.members.map((m) => ({
        ...m,
        name: m.name.replace('/ELSEWHERE', elsewhere),
        linkname: m.linkname?.replace('/ELSEWHERE', elsewhere).replace('/OUTSIDE', outsideFile),
      }));
      if (!isRoot && members.some((m) => m.type === 'char' || m.type === 'block'))
        return t.skip('devices are made by root only');
      assertRefused(craftTar({ base, drop: c.drop, members }), c.reasons);
    });
  }

  it('names the first five and counts the others', () => {
    const members: Member[] = [];
    for (let i = 0; i < 8; i++) members.push({ name: `.score_data/fifo${i}`, type: 'fifo' });
    const r = extract(craftTar({ base, members }));
    assert.equal(r.status, UNSAFE_ARCHIVE, r.stderr);
    assert.equal(r.refused.length, 6, r.refused.join('\n'));
    assert.equal(r.refused[5], 'and 3 more');
  });

  it("a file owned by another uid is the extracting user's, and the archive is accepted", () => {
    const r = extract(
      craftTar({
        base,
        members: [
          { name: '.score_data/foreign', type: 'dir', uid: 12345, gid: 12345, mode: 0o777 },
          { name: '.score_data/foreign/file', uid: 12345, gid: 12345, mode: 0o666, data: 'x' },
        ],
      }),
    );
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), '3');
    for (const rel of ['.score_data/foreign', '.score_data/foreign/file']) {
      const st = lstatSync(join(r.stage, rel));
      assert.equal(st.uid, process.getuid!(), `${rel} uid`);
      assert.equal(st.gid, process.getgid!(), `${rel} gid`);
      assert.equal(st.mode & 0o022, 0, `${rel}: the umask applies, not the archive's mode`);
    }
  });

  it('a snapshot extracts under a setgid folder: its folders inherit the bit, files do not', () => {
    const prep = join(root, 'prep-setgid');
    mkdirSync(prep);
    chmodSync(prep, 0o2775);
    const r = extract(craftTar({ base, members: [] }), { prep });
    assert.equal(r.status, 0, r.stderr);
    assert.ok(statSync(join(r.stage, '.score_data')).mode & 0o2000, 'the folder inherited setgid');
  });

  it('a snapshot archived as ./ names extracts', () => {
    const src = join(root, 'dot');
    mkdirSync(join(src, '.score_data'), { recursive: true });
    mkdirSync(join(src, PLACEHOLDER), { recursive: true });
    writeFileSync(join(src, '.score_data', 'a'), 'a');
    const r = extract(execFileSync('tar', ['-cf', '-', '-C', src, '.']));
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout.trim(), '1');
  });

  it('an archive that is not a snapshot is still told apart from an unsafe one', () => {
    const r = extract(craftTar({ members: [{ name: 'photos/a.jpg', data: 'x' }] }));
    assert.equal(r.status, NOT_A_SNAPSHOT, r.stderr);
    assert.match(r.stderr, /the archive holds no \.score_data/);
  });

  it("a truncated snapshot fails with the decompressor's status and message, not as unsafe", () => {
    const gz = gzipSync(
      craftTar({ base, members: [{ name: '.score_data/big', data: 'x'.repeat(200_000) }] }),
    );
    const stage = join(root, 'cut', 'stage');
    const r = spawnSync('sh', ['-c', extractCommand(loopchain, join(root, 'cut'), stage)], {
      input: Buffer.concat([Buffer.from(GO), gz.subarray(0, Math.floor(gz.length / 2))]),
    });
    assert.notEqual(r.status, 0);
    assert.notEqual(r.status, UNSAFE_ARCHIVE);
    assert.match(r.stderr.toString(), /unexpected end of file/);
    assert.equal(existsSync(stage), false);
  });

  it("a full disk: tar's message passes through", { skip: !isRoot && 'mounts a tmpfs' }, (t) => {
    const mnt = join(root, 'small');
    mkdirSync(mnt);
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', mnt]);
    t.after(() => execFileSync('umount', [mnt]));
    // Files after the first that fills it: those meet a disk with no space left at all.
    const big = craftTar({
      base,
      members: [1, 2, 3].map((i) => ({ name: `.score_data/big${i}`, data: 'x'.repeat(600_000) })),
    });
    const r = extract(big, { prep: join(mnt, 'prep') });
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /No space left on device/);
    assert.equal(existsSync(r.stage), false);
  });

  describe('what tar made is checked too', () => {
    // A tar that lists nothing: it reads the archive, makes a snapshot and plants $PLANT.
    let bin: string;
    before(() => {
      bin = join(root, 'fake-bin');
      mkdirSync(bin);
      writeFileSync(
        join(bin, 'tar'),
        [
          '#!/bin/sh',
          'while [ $# -gt 0 ]; do case "$1" in -C) dir=$2; shift ;; esac; shift; done',
          'cat > /dev/null',
          'cd "$dir"',
          `mkdir -p .score_data/db '${PLACEHOLDER}'`,
          'echo x > .score_data/db/000001.ldb',
          'eval "$PLANT"',
          '',
        ].join('\n'),
        { mode: 0o755 },
      );
    });

    const planted: Array<[string, string, RegExp]> = [
      [
        'a symbolic link at the placeholder',
        `rm -r '${PLACEHOLDER}'; ln -s "$ELSEWHERE" '${PLACEHOLDER}'`,
        /^\.storage\/db_CHANGEIP:7100_icon_dex \(a symbolic link to \/.*elsewhere\)$/,
      ],
      [
        'a root that is a symbolic link',
        `mv .storage store; ln -s store .storage`,
        /^\.storage \(a symbolic link to store\)$/,
      ],
      ['a fifo', 'mkfifo .score_data/db/fifo', /^\.score_data\/db\/fifo \(a fifo\)$/],
      [
        'a hard link',
        'ln .score_data/db/000001.ldb .score_data/db/000002.ldb',
        /^\.score_data\/db\/00000[12]\.ldb \(a hard link, 2 names\)$/,
      ],
      [
        'a setgid file',
        'chmod 2755 .score_data/db/000001.ldb',
        /^\.score_data\/db\/000001\.ldb \(mode 2755: setuid, setgid or sticky\)$/,
      ],
      [
        'an entry beside the roots',
        'mkdir -p evil/x',
        /^evil \(outside \.score_data and \.storage\)$/,
      ],
      ['a name with a newline', `mkdir 'a\nb'`, /^a\?b \(outside \.score_data and \.storage\)$/],
    ];
    for (const [what, plant, reason] of planted) {
      it(`refuses ${what}`, () => {
        const r = extract(craftTar({ base, members: [] }), {
          env: {
            ...process.env,
            PATH: `${bin}:${process.env.PATH}`,
            PLANT: plant,
            ELSEWHERE: elsewhere,
          },
        });
        assert.equal(r.status, UNSAFE_ARCHIVE, r.stderr);
        assert.ok(
          r.refused.some((l) => reason.test(l)),
          `${reason} among:\n${r.refused.join('\n')}`,
        );
        assert.equal(existsSync(r.stage), false);
        assertNothingOutside();
      });
    }

    it('a snapshot with nothing planted is accepted', () => {
      const r = extract(craftTar({ base, members: [] }), {
        env: { ...process.env, PATH: `${bin}:${process.env.PATH}`, PLANT: 'true' },
      });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stdout.trim(), '1');
    });
  });
});

describe("a tree restore's other channel (receiveMoreCommand)", () => {
  let root: string;
  let elsewhere: string;
  before(() => {
    root = mkdtempSync(join(tmpdir(), 'prep-more-'));
    elsewhere = join(root, 'elsewhere');
    mkdirSync(elsewhere);
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  const plainTar = (members: Member[]): Buffer => {
    const src = join(root, `src-${Math.random().toString(36).slice(2)}`);
    mkdirSync(src);
    const base = join(src, 'empty.tar');
    execFileSync('tar', ['-cf', base, '-T', '/dev/null']);
    return craftTar({ base, members });
  };
  const receive = (stage: string, input: Buffer) => {
    const r = spawnSync('sh', ['-c', receiveMoreCommand(stage)], { input });
    const stderr = r.stderr.toString();
    return {
      status: r.status,
      stdout: r.stdout.toString(),
      stderr,
      refused: markedLines(stderr, UNSAFE_MARK),
    };
  };
  const go = Buffer.from('go none\n');

  it('adds its files to the staging folder that the main channel made, and prints nothing', () => {
    const stage = join(root, 'stage-ok');
    mkdirSync(join(stage, 'b89541/db'), { recursive: true });
    writeFileSync(join(stage, 'b89541/db/000001.ldb'), 'main');
    const r = receive(
      stage,
      Buffer.concat([go, plainTar([{ name: 'b89541/db/000002.ldb', data: 'more' }])]),
    );
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, '');
    assert.equal(readFileSync(join(stage, 'b89541/db/000002.ldb'), 'utf8'), 'more');
    assert.equal(readFileSync(join(stage, 'b89541/db/000001.ldb'), 'utf8'), 'main');
  });

  it('refuses a symbolic link, with the same marks and status as the main channel', () => {
    const stage = join(root, 'stage-link');
    mkdirSync(stage);
    const r = receive(
      stage,
      Buffer.concat([
        go,
        plainTar([
          { name: 'b89541/out', type: 'symlink', linkname: elsewhere },
          { name: 'b89541/out/planted', data: 'planted' },
        ]),
      ]),
    );
    assert.equal(r.status, UNSAFE_ARCHIVE, r.stderr);
    assert.ok(
      r.refused.some((l) => /^b89541\/out -> .* \(a symbolic link\)$/.test(l)),
      r.refused.join('\n'),
    );
    assert.deepEqual(readdirSync(elsewhere), []);
  });

  it('writes nothing without its go line, and nothing where the staging folder is missing', () => {
    const stage = join(root, 'stage-none');
    const tar = plainTar([{ name: 'b89541/db/000002.ldb', data: 'more' }]);
    const idle = receive(stage, tar);
    assert.equal(idle.status, 0, idle.stderr);
    assert.equal(existsSync(stage), false);
    const missing = receive(stage, Buffer.concat([go, tar]));
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /is not a folder/);
    assert.equal(existsSync(stage), false);
  });

  it('the main channel of a tree says when it holds the folder, before the count', () => {
    const prep = join(root, 'prep-main');
    const stage = join(prep, 'stage');
    const src = join(root, 'main-src');
    mkdirSync(join(src, '.score_data/db/icon_dex'), { recursive: true });
    mkdirSync(join(src, PLACEHOLDER), { recursive: true });
    writeFileSync(join(src, '.score_data/db/icon_dex/000005.ldb'), 'table');
    writeFileSync(join(src, PLACEHOLDER, 'CURRENT'), 'MANIFEST-000002\n');
    const tar = execFileSync('tar', ['-cf', '-', '-C', src, '.score_data', '.storage']);
    const r = spawnSync('sh', ['-c', extractCommand(loopchain, prep, stage, { keep: true })], {
      input: Buffer.concat([go, tar]),
    });
    assert.equal(r.status, 0, r.stderr.toString());
    assert.deepEqual(r.stdout.toString().trim().split('\n'), [LOCKED_LINE, '2']);
  });
});
