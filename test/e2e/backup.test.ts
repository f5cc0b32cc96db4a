/**
 * Backup, end to end: the packaged action under Node 24, a real sshd, MinIO, and a
 * simulated node with real LevelDB databases that keeps writing while the archive streams.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { parseManifest } from '../../src/node-kind/leveldb-manifest.js';
import { STATE_DBS } from '../sim/chain.js';
import {
  download,
  extractLikeSeed,
  startNode,
  startWorld,
  tempDir,
  TSX,
  SIM,
  type World,
} from './world.js';

const exec = promisify(execFile);
const sha = (p: string) => createHash('sha256').update(readFileSync(p)).digest('hex');

async function checkExtracted(dir: string): Promise<{ ok: boolean; height: number }> {
  const { stdout } = await exec(TSX, [SIM, 'check', '--data', dir], { maxBuffer: 1 << 26 });
  return JSON.parse(stdout) as { ok: boolean; height: number };
}

/** Where the simulator keeps its state database `name` (relative to the data dir). */
function dbRel(name: string): string {
  const d = STATE_DBS.find((x) => x.name === name);
  if (!d) throw new Error(`no state database ${name}`);
  return d.rel;
}

describe('backup', () => {
  let world: World;
  before(async () => {
    world = await startWorld({ blocks: 600 });
  });
  after(() => world?.close());

  it('stops the node for seconds, streams the archive, publishes it, and the archive restores', async () => {
    const run = await world.mainThenPost();
    assert.equal(run.main.code, 0, run.main.stdout + run.main.stderr);
    const out = run.main.outputs;
    assert.equal(out.skipped, 'false');
    assert.match(out.key ?? '', /^PRep\/\d{8}\/PRep_BH\d+_data-\d{8}_\d{4}\.tar\.gz$/);
    assert.match(out.sha256 ?? '', /^[0-9a-f]{64}$/);
    assert.ok(Number(out['downtime-seconds']) >= 0);

    // The node is running and writing again.
    const status = await world.node.status();
    assert.equal(status.running, true);

    // Listed, with its manifest; nothing else in the listing; the permanent copy of the day.
    const key = out.key as string;
    assert.deepEqual(await world.backupList(), [key.replace(/^PRep\//, '')]);
    const keys = await world.keys();
    assert.ok(keys.includes(`_prep-snapshot/${key}.json`));
    assert.ok(keys.includes(key.replace(/^PRep\//, 'Permanent/PRep/')));
    const manifest = JSON.parse(await world.s3.getText(world.bucket, `_prep-snapshot/${key}.json`));
    assert.equal(manifest.sha256, out.sha256);
    assert.equal(String(manifest.blockHeight), out['block-height']);
    assert.equal(String(manifest.compressedBytes), out.size);

    // The archive extracts with the original restore's commands, and the node opens it.
    const dir = tempDir('prep-extract-');
    const archive = await download(world, key, join(dir, 'a.tar.gz'));
    assert.equal(sha(archive), out.sha256);
    await extractLikeSeed(archive, dir);
    assert.deepEqual(readdirSync(join(dir, '.storage')), ['db_CHANGEIP:7100_icon_dex']);
    // Tables are immutable: each one in the archive that the node still has is the same bytes.
    const blockDb = join(world.node.dataDir, `.storage/db_${world.node.ip}:7100_icon_dex`);
    let compared = 0;
    for (const f of readdirSync(join(dir, '.storage/db_CHANGEIP:7100_icon_dex'))) {
      if (/\.ldb$/.test(f) && existsSync(join(blockDb, f))) {
        assert.equal(
          sha(join(dir, '.storage/db_CHANGEIP:7100_icon_dex', f)),
          sha(join(blockDb, f)),
          f,
        );
        compared++;
      }
    }
    assert.ok(compared > 0, 'some tables compared');
    const check = await checkExtracted(dir);
    assert.equal(check.ok, true);
    assert.ok(check.height >= Number(out['block-height']));

    // No staging folder is left on the host; the summary tells the operator what happened.
    assert.deepEqual(
      readdirSync(join(world.node.home, 'data')).filter((n) => n.startsWith('.prep-snapshot')),
      [],
    );
    assert.match(run.main.summary, /Block height/);
    assert.match(run.main.summary, /Node downtime/);
    // The tables that had stood still went up while the node ran, as the archive's start; what
    // the node wrote since went up after the freeze.
    assert.ok(manifest.ahead.files > 0, JSON.stringify(manifest.ahead));
    assert.ok(
      run.main.stdout.indexOf('go up now, while the node runs') <
        run.main.stdout.indexOf('::group::Stop, freeze, start'),
    );
    assert.match(run.main.summary, /Sent while the node ran/);
  });

  it('tables still being written are not sent ahead: the whole archive goes up after the freeze', async () => {
    const node = await startNode(world.root, {
      name: 'young',
      ip: '10.11.12.15',
      blocks: 300,
      tables: 'fresh',
    });
    try {
      const run = await world.mainThenPost({
        'prep-dir': node.home,
        'stop-command': node.stopCommand,
        'start-command': node.startCommand,
        'peer-url': node.peerUrl,
        prefix: 'Young',
        'permanent-copy': 'false',
      });
      assert.equal(run.main.code, 0, run.main.stdout + run.main.stderr);
      assert.match(
        run.main.stdout,
        /No table file has stood unchanged for 10 s: the whole archive goes up after the freeze/,
      );
      const key = run.main.outputs.key as string;
      const manifest = JSON.parse(
        await world.s3.getText(world.bucket, `_prep-snapshot/${key}.json`),
      );
      assert.equal(manifest.ahead, undefined);
      const dir = tempDir('prep-extract-');
      await extractLikeSeed(await download(world, key, join(dir, 'a.tar.gz')), dir);
      renameSync(
        join(dir, '.storage/db_CHANGEIP:7100_icon_dex'),
        join(dir, `.storage/db_${node.ip}:7100_icon_dex`),
      );
      const check = await checkExtracted(dir);
      assert.equal(check.ok, true);
      assert.ok(check.height >= Number(run.main.outputs['block-height']));
    } finally {
      await node.stop();
    }
  });

  it('leaves out the tables of a compaction the node was killed in, and the archive opens', async () => {
    world.node.setStopMode('kill-mid-compaction');
    try {
      const run = await world.mainThenPost({ compression: 'zstd', 'permanent-copy': 'false' });
      assert.equal(run.main.code, 0, run.main.stdout + run.main.stderr);
      const killed = world.node
        .events()
        .filter((e) => e.event === 'killed')
        .at(-1) as unknown as {
        orphan_tables?: Record<string, string[]>;
      };
      const orphans = Object.values(killed?.orphan_tables ?? {}).flat();
      assert.ok(orphans.length > 0, 'the stop left tables the MANIFEST does not list');
      assert.match(
        run.main.stdout,
        /[1-9]\d* leftover table\(s\) of an interrupted compaction left out/,
      );
      assert.equal((await world.node.status()).running, true);

      const key = run.main.outputs.key as string;
      assert.match(key, /\.tar\.zst$/);
      const dir = tempDir('prep-extract-');
      await extractLikeSeed(await download(world, key, join(dir, 'a.tar.zst')), dir, 'zstd');
      // None of the killed compaction's leftovers is in the archive, and every table that a
      // MANIFEST lists is. (A table that a compaction removed while the tables went up ahead of
      // the stop may be there as well, listed by no MANIFEST: LevelDB deletes it as it opens.)
      const archived = (name: string): string =>
        join(dir, name === 'block' ? '.storage/db_CHANGEIP:7100_icon_dex' : dbRel(name));
      for (const [name, tables] of Object.entries(killed?.orphan_tables ?? {})) {
        const current = readFileSync(join(archived(name), 'CURRENT'), 'utf8').trim();
        const live = parseManifest(readFileSync(join(archived(name), current))).tables;
        const there = new Set(readdirSync(archived(name)));
        for (const t of tables) assert.equal(there.has(t), false, `${name}: ${t} is left out`);
        for (const n of live.keys())
          assert.ok(there.has(`${String(n).padStart(6, '0')}.ldb`), `${name}: table ${n} is there`);
      }
      const db = join(dir, '.storage/db_CHANGEIP:7100_icon_dex');
      renameSync(db, join(dir, `.storage/db_${world.node.ip}:7100_icon_dex`));
      assert.equal((await checkExtracted(dir)).ok, true);
      assert.ok((await world.backupList()).includes(key.replace(/^PRep\//, '')));
    } finally {
      world.node.setStopMode('graceful');
    }
  });

  it('archives while stopped with consistency: stop, over the ssh2 transport', async () => {
    const run = await world.mainThenPost({
      consistency: 'stop',
      'ssh-transport': 'ssh2',
      'permanent-copy': 'false',
    });
    assert.equal(run.main.code, 0, run.main.stdout + run.main.stderr);
    assert.match(run.main.stdout, /archive bytes travel over ssh2/);
    assert.doesNotMatch(run.main.stdout, /Stop, freeze, start/);
    assert.equal((await world.node.status()).running, true);
    const key = run.main.outputs.key as string;
    const dir = tempDir('prep-extract-');
    const archive = await download(world, key, join(dir, 'a.tar.gz'));
    assert.equal(sha(archive), run.main.outputs.sha256);
    await extractLikeSeed(archive, dir);
    renameSync(
      join(dir, '.storage/db_CHANGEIP:7100_icon_dex'),
      join(dir, `.storage/db_${world.node.ip}:7100_icon_dex`),
    );
    assert.equal((await checkExtracted(dir)).ok, true);
  });

  it('logs in with a passphrase-protected key through the OpenSSH data channel', async () => {
    const keyDir = tempDir('prep-key-');
    await exec('ssh-keygen', [
      '-q',
      '-t',
      'ed25519',
      '-N',
      'correct horse',
      '-f',
      join(keyDir, 'id'),
      '-C',
      'prep-test',
    ]);
    await world.sshd.authorize(readFileSync(join(keyDir, 'id.pub'), 'utf8'));
    const run = await world.mainThenPost({
      'ssh-key': readFileSync(join(keyDir, 'id'), 'utf8'),
      'ssh-key-passphrase': 'correct horse',
      'ssh-transport': 'openssh',
      'permanent-copy': 'false',
    });
    assert.equal(run.main.code, 0, run.main.stdout + run.main.stderr);
    assert.match(run.main.stdout, /archive bytes travel over openssh/);
    // Only the runner's mask command may carry it; the runner consumes that line.
    const shown = run.main.stdout.split('\n').filter((l) => !l.startsWith('::add-mask::'));
    assert.doesNotMatch(shown.join('\n'), /correct horse/);
    assert.equal((await world.node.status()).running, true);
  });
});
