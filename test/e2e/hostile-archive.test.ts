/**
 * Hostile archives, end to end: each is a real snapshot with members crafted into it, stored
 * under a valid name with a manifest that vouches for its bytes (whoever can write the bucket
 * can write both), and restored by the packaged action onto a stopped node. Each refused one
 * fails the run with a message that says why; the node's data dir is byte for byte as it was,
 * no staging folder is left, and nothing is written where the archive points.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gunzipSync, gzipSync } from 'node:zlib';
import { craftTar, type Member } from '../bed/craft-tar.js';
import {
  errors,
  getBytes,
  putBytes,
  restoreRun,
  runMain,
  said,
  stagingLeft,
  target,
  treeHash,
  type Target,
} from './restore-kit.js';
import { startNode, startWorld, type World } from './world.js';

const PLACEHOLDER = '.storage/db_CHANGEIP:7100_icon_dex';

describe('hostile archives', () => {
  let world: World;
  let key: string;
  let manifest: Record<string, unknown>;
  /** The real snapshot, uncompressed. */
  let base: string;
  /** A table file of the snapshot. */
  let table: string;
  let victim: Target;
  let data: string;
  /** Where the archives point; it must stay empty. */
  let elsewhere: string;
  /** A file that hard links aim at; it must keep one name and its bytes. */
  let outsideFile: string;
  const started: Target[] = [];

  before(async () => {
    world = await startWorld({ blocks: 30 });
    const run = await runMain(world, world.inputs({ 'permanent-copy': 'false' }));
    assert.equal(run.code, 0, said(run));
    key = run.outputs.key as string;
    manifest = JSON.parse(
      await world.s3.getText(world.bucket, `_prep-snapshot/${key}.json`),
    ) as Record<string, unknown>;
    base = join(world.root, 'base.tar');
    writeFileSync(base, gunzipSync(await getBytes(world, key)));
    table = execFileSync('tar', ['-tf', base])
      .toString()
      .split('\n')
      .find((n) => n.startsWith('.score_data/') && n.endsWith('.ldb'))!;
    assert.ok(table, 'the snapshot has a table file');
    await world.node.stop();
    const node = await startNode(world.root, { name: 'victim', blocks: 20, ip: '10.9.8.7' });
    await node.stop();
    victim = await target(node.home, node.port);
    started.push(victim);
    data = join(victim.home, 'data');
    elsewhere = join(world.root, 'elsewhere');
    mkdirSync(elsewhere);
    outsideFile = join(world.root, 'outside-file');
    writeFileSync(outsideFile, 'outside');
  });
  after(async () => {
    for (const t of started) await t.stop().catch(() => undefined);
    await world?.close();
  });

  /**
   * Stores the snapshot with `members` crafted in (and `drop` left out) under a new archive
   * name of the same day, with a manifest that matches its bytes.
   */
  async function storeCrafted(
    height: number,
    members: Member[],
    opts: { drop?: string[] } = {},
  ): Promise<string> {
    const tar = craftTar({ base, drop: opts.drop, members });
    const gz = gzipSync(tar);
    const day = /^PRep\/(\d{8})\//.exec(key)![1]!;
    const variant = `PRep/${day}/PRep_BH${height}_data-${day}_0001.tar.gz`;
    await putBytes(world, variant, gz);
    await putBytes(
      world,
      `_prep-snapshot/${variant}.json`,
      JSON.stringify({
        ...manifest,
        key: variant,
        entry: variant.replace(/^PRep\//, ''),
        blockHeight: height,
        sha256: createHash('sha256').update(gz).digest('hex'),
        compressedBytes: gz.length,
        uncompressedBytes: tar.length,
        // What the extraction counts: files under the roots.
        files: execFileSync('tar', ['-tvf', '-'], { input: tar, maxBuffer: 1 << 26 })
          .toString()
          .split('\n')
          .filter((l) => /^[-h]/.test(l) && /\s\.(score_data|storage)\//.test(l)).length,
      }),
    );
    return variant;
  }

  /** Restores `variant` onto the stopped victim; the run fails with each of `reasons`. */
  async function assertRefused(variant: string, reasons: RegExp[]): Promise<void> {
    const before = treeHash(victim.dataDir);
    const run = await restoreRun(world, victim, { snapshot: variant, 'node-ip': '10.9.8.7' });
    const log = `${said(run.main)}\n--- post ---\n${said(run.post)}`;
    assert.notEqual(run.main.code, 0, log);
    const message = errors(run.main);
    assert.match(
      message,
      /was refused as unsafe: it holds .*\. A snapshot holds only regular files and directories under \.score_data and \.storage, none of them setuid, setgid or sticky\. The staging folder was removed and the data dir was not touched\. Restore another snapshot/s,
      log,
    );
    for (const reason of reasons) assert.match(message, reason, log);
    assert.equal(treeHash(victim.dataDir), before, `the data dir is as it was\n${log}`);
    assert.deepEqual(stagingLeft(data), [], `no staging folder\n${log}`);
    assert.deepEqual(readdirSync(elsewhere), [], 'nothing written where the archive points');
    assert.equal(lstatSync(outsideFile).nlink, 1, 'the outside file has one name');
    assert.equal(readFileSync(outsideFile, 'utf8'), 'outside');
    assert.deepEqual(
      readdirSync(data).filter((n) => n !== 'loopchain'),
      [],
      'nothing beside the data dir',
    );
    assert.equal(existsSync(join(victim.home, 'escaped')), false, 'nothing above the data dir');
  }

  it('a symbolic link at the placeholder: the block DB would live outside the data dir', async () => {
    const variant = await storeCrafted(
      901,
      [{ name: PLACEHOLDER, type: 'symlink', linkname: elsewhere }],
      {
        drop: [PLACEHOLDER],
      },
    );
    await assertRefused(variant, [
      /\.storage\/db_CHANGEIP:7100_icon_dex -> \S*elsewhere \(a symbolic link\)/,
    ]);
  });

  it('a symbolic link under a root that points out, and a file written through it', async () => {
    // GNU tar makes a link that points out only after the other members: none goes through it.
    const variant = await storeCrafted(902, [
      { name: '.score_data/out', type: 'symlink', linkname: elsewhere },
      { name: '.score_data/out/planted', data: 'planted' },
    ]);
    await assertRefused(variant, [/\.score_data\/out -> \S*elsewhere \(a symbolic link\)/]);
  });

  it('a character device and a fifo', async () => {
    const variant = await storeCrafted(903, [
      { name: '.score_data/mem', type: 'char', devmajor: 1, devminor: 1 },
      { name: '.score_data/fifo', type: 'fifo' },
    ]);
    await assertRefused(variant, [
      /\.score_data\/mem \(a character device\)/,
      /\.score_data\/fifo \(a fifo\)/,
    ]);
  });

  it('hard links to an outside file, by its absolute path and by ..', async () => {
    // GNU tar strips a target's leading / and ../ and looks for it inside the staging folder.
    const variant = await storeCrafted(904, [
      { name: '.score_data/abs', type: 'hardlink', linkname: outsideFile },
      { name: '.score_data/up', type: 'hardlink', linkname: `../../../..${outsideFile}` },
    ]);
    await assertRefused(variant, [
      /\.score_data\/abs link to \S* \(a hard link\)/,
      /\.score_data\/up link to \S* \(a hard link\)/,
    ]);
  });

  it('a hard link inside the archive', async () => {
    const variant = await storeCrafted(905, [
      { name: '.score_data/copy.ldb', type: 'hardlink', linkname: table },
    ]);
    await assertRefused(variant, [
      /\.score_data\/copy\.ldb link to \.score_data\/\S+\.ldb \(a hard link\)/,
    ]);
  });

  it('a setuid file and a setgid file', async () => {
    const variant = await storeCrafted(906, [
      { name: '.score_data/suid', mode: 0o4755, data: '#!/bin/sh\nid\n' },
      { name: '.score_data/sgid', mode: 0o2755, data: '#!/bin/sh\nid\n' },
    ]);
    await assertRefused(variant, [
      /\.score_data\/suid \(a setuid file\)/,
      /\.score_data\/sgid \(a setgid file\)/,
    ]);
  });

  it('an entry beside the roots', async () => {
    const variant = await storeCrafted(907, [
      { name: 'etc', type: 'dir' },
      { name: 'etc/cron.d', type: 'dir' },
      { name: 'etc/cron.d/evil', data: '* * * * * root true\n' },
    ]);
    await assertRefused(variant, [/etc \(outside \.score_data and \.storage\)/]);
  });

  it('a name with .. and an absolute name', async () => {
    // GNU tar skips the first (and fails) and extracts the second inside, less its /.
    const variant = await storeCrafted(908, [
      { name: '../../escaped', data: 'x' },
      { name: `${elsewhere}/absolute`, data: 'x' },
    ]);
    await assertRefused(variant, [
      /\.\.\/\.\.\/escaped \(a name with \.\.\)/,
      /\S*elsewhere\/absolute \(an absolute name\)/,
    ]);
  });

  it("a file owned by uid 12345 is restored as the SSH user's", async () => {
    const t = await target(join(world.root, 'fresh-owner'));
    started.push(t);
    const variant = await storeCrafted(909, [
      { name: '.score_data/foreign', type: 'dir', uid: 12345, gid: 12345, mode: 0o777 },
      { name: '.score_data/foreign/file', uid: 12345, gid: 12345, mode: 0o666, data: 'x' },
    ]);
    const run = await restoreRun(world, t, {
      snapshot: variant,
      'node-ip': '10.9.8.6',
      'start-node': 'false',
    });
    assert.equal(run.main.code, 0, said(run.main));
    const user = execFileSync('id', ['-u', world.sshd.username]).toString().trim();
    for (const rel of ['.score_data/foreign', '.score_data/foreign/file']) {
      const st = lstatSync(join(t.dataDir, rel));
      assert.equal(String(st.uid), user, `${rel} belongs to the SSH user`);
      assert.equal(st.mode & 0o7022, 0, `${rel}: the umask applies, not the archive's mode`);
    }
    assert.ok(existsSync(join(t.dataDir, '.storage/db_10.9.8.6:7100_icon_dex')));
  });
});
