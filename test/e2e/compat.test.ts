/**
 * Compatibility with the original scripts (seed/icon-backup-restore-guide.txt), both ways:
 * an archive and backup_list made by the seed's own commands restore with this action; an
 * archive made by this action restores with the seed's own commands; our manifests do not
 * show up in the seed's listing.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cpSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { ListObjectsV2Command, type _Object } from '@aws-sdk/client-s3';
import {
  check,
  errors,
  getBytes,
  putBytes,
  restoreRun,
  runMain,
  said,
  target,
} from './restore-kit.js';
import { startNode, startWorld, tempDir, type World } from './world.js';

const exec = promisify(execFile);
const bash = async (
  script: string,
  env: Record<string, string> = {},
  input?: string,
): Promise<string> => {
  const p = exec('bash', ['-c', script], { env: { ...process.env, ...env }, maxBuffer: 1 << 26 });
  if (input !== undefined) {
    p.child.stdin!.on('error', () => undefined);
    p.child.stdin!.end(input);
  }
  return (await p).stdout;
};

/**
 * The seed's `aws s3 ls ${S3_PATH} --recursive | grep -v backup_list | sort -r | awk -F/ '{print $2"/"$3}'`,
 * with the listing ("YYYY-MM-DD HH:MM:SS SIZE KEY" lines) made from ListObjectsV2.
 */
async function seedBackupList(world: World, bucket: string, prefix: string): Promise<string[]> {
  const objects: _Object[] = [];
  let token: string | undefined;
  do {
    const res = await world.s3
      .client()
      .send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }));
    objects.push(...(res.Contents ?? []));
    token = res.NextContinuationToken;
  } while (token);
  const pad = (n: number) => String(n).padStart(2, '0');
  const listing = objects
    .map((o) => {
      const d = o.LastModified!;
      const stamp = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
      return `${stamp} ${String(o.Size).padStart(10)} ${o.Key}\n`;
    })
    .join('');
  const out = await bash(`grep -v backup_list | sort -r | awk -F/ '{print $2"/"$3}'`, {}, listing);
  return out.split('\n').filter(Boolean);
}

describe('compatibility with the original scripts', () => {
  let world: World;
  const stops: Array<{ stop(): Promise<void> }> = [];
  const ours: string[] = [];
  before(async () => {
    world = await startWorld({ blocks: 600 });
    for (let i = 0; i < 2; i++) {
      const run = await runMain(world, world.inputs());
      assert.equal(run.code, 0, said(run));
      ours.push(run.outputs.key as string);
    }
  });
  after(async () => {
    for (const s of stops) await s.stop().catch(() => undefined);
    await world?.close();
  });

  it("restores an archive and backup_list made by the seed's own commands (no manifest), and the node starts on it", async () => {
    const bucket = 'seed-made';
    await world.s3.createBucket(bucket);
    // A stopped node; the seed's backup runs in a copy of its data dir.
    const source = await startNode(world.root, {
      name: 'seed-source',
      blocks: 300,
      ip: '10.5.5.5',
    });
    stops.push(source);
    await source.stop();
    const copy = tempDir('prep-seed-');
    cpSync(source.home, join(copy, 'prep'), { recursive: true });
    const height = (await check(join(copy, 'prep/data/loopchain'))).height;
    const today = new Date().toISOString().slice(0, 10).replace(/-/g, '');
    const file = `PRep_BH${height}_data-${today}_0930.tar.gz`;
    // The seed's lines, as they are (PREP_DIR plays /app/prep).
    await bash(
      [
        'set -e',
        'PREP_DIR="$COPY/prep"',
        "IP_DIR_NAME=`find ${PREP_DIR}/data/loopchain/.storage/*7100_icon_dex -maxdepth 1 -type d |awk -F\\/ '{print $NF}'`",
        'BACKUP_TARGET_DIR="${PREP_DIR}/data/loopchain"',
        'BACKUP_TARGET=".score_data .storage"',
        'cd ${BACKUP_TARGET_DIR}',
        'tar -zcf ${FILE_NAME} --xform="s|.storage/${IP_DIR_NAME}|.storage/db_CHANGEIP:7100_icon_dex|" ${BACKUP_TARGET}',
        'mv ${FILE_NAME} "$COPY"/',
      ].join('\n'),
      { COPY: copy, FILE_NAME: file },
    );
    const tarList = await bash(`tar -tzf "$COPY/$F" | grep -c 'db_CHANGEIP:7100_icon_dex/' `, {
      COPY: copy,
      F: file,
    });
    assert.ok(Number(tarList) > 0, 'the seed renamed the block DB to the placeholder');
    await putBytes(world, `PRep/${today}/${file}`, readFileSync(join(copy, file)), bucket);
    const lines = await seedBackupList(world, bucket, 'PRep');
    assert.deepEqual(lines, [`${today}/${file}`]);
    await putBytes(world, 'PRep/backup_list', `${lines.join('\n')}\n`, bucket);

    const t = await target(join(world.root, 'seed-restore/prep'));
    stops.push(t);
    const run = await restoreRun(world, t, { bucket, 'node-ip': '10.20.30.41' });
    assert.equal(run.main.code, 0, said(run.main));
    assert.equal(run.main.outputs.key, `PRep/${today}/${file}`);
    assert.ok(
      run.main.annotations.some((a) => a.level === 'warning' && /has no manifest/.test(a.message)),
      'warns about the missing manifest',
    );
    assert.ok(Number(run.main.outputs['height-reached']) >= height);
    assert.equal((await t.status()).running, true);
    await t.stop();
    assert.deepEqual(readdirSync(join(t.dataDir, '.storage')), ['db_10.20.30.41:7100_icon_dex']);
    assert.equal((await check(t.dataDir)).ok, true);
    assert.equal(errors(run.main), '');
  });

  it("an archive made by this action restores with the seed's restore commands", async () => {
    // The seed's Download_Backup: the first line of backup_list, fetched to RESTORE_DIR.
    const latest = (await world.s3.getText(world.bucket, 'PRep/backup_list')).split('\n')[0]!;
    assert.equal(`PRep/${latest}`, ours.at(-1));
    const filename = latest.split('/').at(-1)!;
    const restoreDir = join(tempDir('prep-seed-restore-'), 'app/prep/data/loopchain');
    mkdirSync(restoreDir, { recursive: true });
    const archive = await getBytes(world, `PRep/${latest}`);
    await import('node:fs/promises').then((fs) =>
      fs.writeFile(join(restoreDir, filename), archive),
    );
    // The seed's Restore_DB, as it is.
    await bash(
      [
        'set -e',
        'tar -I pigz -xf $RESTORE_DIR/$filename -C $RESTORE_DIR',
        'mv $RESTORE_DIR/.storage/db_CHANGEIP\\:7100_icon_dex/ $RESTORE_DIR/.storage/db_$NOW_IP:7100_icon_dex',
      ].join('\n'),
      { RESTORE_DIR: restoreDir, filename, NOW_IP: '10.7.7.7' },
    );
    assert.deepEqual(readdirSync(join(restoreDir, '.storage')), ['db_10.7.7.7:7100_icon_dex']);
    const c = await check(restoreDir);
    assert.equal(c.ok, true);
    assert.equal(c.block_dir, '.storage/db_10.7.7.7:7100_icon_dex');
  });

  it("the seed's listing of the prefix still yields only archives, the same as our backup_list", async () => {
    const keys = await world.keys();
    assert.ok(
      keys.some((k) => k.startsWith('_prep-snapshot/PRep/')),
      'our manifests are stored',
    );
    const lines = await seedBackupList(world, world.bucket, 'PRep');
    assert.ok(lines.length >= 2);
    for (const l of lines) assert.match(l, /^\d{8}\/PRep_BH\d+_data-\d{8}_\d{4}\.tar\.gz$/);
    for (const k of ours) assert.ok(lines.includes(k.replace(/^PRep\//, '')), k);
    // Same entries (the order of two archives of the same second is up to sort's tie-break).
    assert.deepEqual([...lines].sort(), [...(await world.backupList())].sort());
  });
});
