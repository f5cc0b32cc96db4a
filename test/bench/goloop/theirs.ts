/**
 * Theirs: icon2-docker's ctx/manager/backup_v2.py (with control_chain) and the restore that
 * reverses it, as bash scripts on this machine (see index.ts).
 */
import { join } from 'node:path';
import { bashScript, listObjects, logger, phases, q, s3Shell, type DiskSampler } from '../kit.js';
import type { GoloopBackupFigures, GoloopBenchContext, GoloopRestoreFigures } from './figures.js';
import { chainInfo, gapSince, startCopy, type Home } from './node.js';
import { gapFigures, restoreScenario, scenario } from './scenario.js';

const log = logger('goloop');

export async function theirsBackup(
  ctx: GoloopBenchContext,
  cache: string,
  sizeGib: number,
): Promise<GoloopBackupFigures> {
  const tag = `goloop-${sizeGib}`;
  return scenario(
    'theirs',
    ctx.keep,
    () => startCopy(cache, join(ctx.root, `${tag}-theirs`)),
    (home, sampler) =>
      theirsBackupOn(ctx, home, sampler, `icon2-docker-${sizeGib}/kr/bk/MainNet`, tag),
  );
}

/**
 * Their backup of the node that runs in `home`, its parts under `prefix` (which holds nothing
 * else: what it lists there is this backup); `tag` names its script in the work dir.
 */
export async function theirsBackupOn(
  ctx: GoloopBenchContext,
  home: Home,
  sampler: DiskSampler,
  prefix: string,
  tag: string,
): Promise<GoloopBackupFigures> {
  const h0 = (await chainInfo(home)).height;
  await sampler.start();
  const sock = join(home.nodeDir, 'cli.sock');
  const script = `set -euo pipefail
ms() { date +%s%3N; }
${s3Shell(ctx.s3)}
DB_PATH=${q(home.nodeDir)}
BACKUP_PATH=${q(join(home.dir, 'db_backup'))}
JOB_DIR="$BACKUP_PATH/temp"
SOCK=${q(sock)}
mkdir -p "$JOB_DIR"
rm -f "$JOB_DIR"/*
# get_loopchain_state: cid and height from /admin/chain
CHAIN=$(curl -sf ${q(`${home.rpcUrl}/admin/chain`)})
CID=$(jq -r '.[0].cid' <<<"$CHAIN" | sed 's/^0x//')
BH=$(jq -r '.[0].height' <<<"$CHAIN")
NAME="MainNet_BH\${BH}_data-$(date +%Y%m%d)"
# run_peer stop: control_chain stop, until the chain is stopped
echo "MARK stop $(ms)"
curl -sf -X POST --unix-socket "$SOCK" "http://localhost/chain/0x$CID/stop" >/dev/null
until [ "$(curl -sf --unix-socket "$SOCK" "http://localhost/chain/0x$CID" | jq -r .state)" = stopped ]; do sleep 0.02; done
echo "MARK stopped $(ms)"
# db_file_compress
cd "$DB_PATH"
tar -cf - "$CID" | zstd -q -T0 | split -b 1000m - "$JOB_DIR/$NAME.tar.zst."
echo "MARK compressed $(ms)"
# run_peer start
curl -sf -X POST --unix-socket "$SOCK" "http://localhost/chain/0x$CID/start" >/dev/null
echo "MARK started $(ms)"
# upload: every part at once
DEST=${q(prefix)}/$(date +%Y%m%d)/$(date +%H)
pids=()
for f in "$JOB_DIR"/*; do
  s3 upload ${q(ctx.bucket)} "$DEST/$(basename "$f")" "$f" &
  pids+=($!)
done
for p in "\${pids[@]}"; do wait "$p"; done
echo "MARK uploaded $(ms)"
echo "VALUE height $BH"
echo "VALUE bytes $(cat "$JOB_DIR"/* | wc -c)"
echo "VALUE parts \${#pids[@]}"
`;
  log(`theirs: backup (${tag})`);
  const r = await bashScript(join(ctx.root, `${tag}-theirs-backup.sh`), script);
  const disk = await sampler.stop();
  if (r.code !== 0) throw new Error(`their backup failed (${r.code}): ${r.stderr.slice(-2000)}`);
  const gap = await gapSince(home, h0);
  const objects = await listObjects(ctx.s3, ctx.bucket, prefix);
  const listed = Math.max(...objects.map((o) => o.modifiedMs));
  const m = r.marks;
  return {
    name: 'theirs',
    ok: true,
    ...gapFigures(gap),
    downtimeSelfReported:
      m.started !== undefined && m.stop !== undefined ? (m.started - m.stop) / 1000 : undefined,
    stopToListedSeconds: (listed - gap.lastBeforeMs) / 1000,
    stopToListedSelfReported: m.stop !== undefined ? (listed - m.stop) / 1000 : undefined,
    wallSeconds: r.ms / 1000,
    hostExtraDiskBytes: disk.extraDu,
    archiveBytes: Number(r.values.bytes),
    movedBytes: Number(r.values.bytes),
    movedFiles: objects.length,
    parts: objects.length,
    phases: phases(m, 'stop'),
    prefix,
    keys: objects.map((o) => o.key),
    height: Number(r.values.height),
  };
}

export async function theirsRestore(
  ctx: GoloopBenchContext,
  cache: string,
  tag: string,
  backup: GoloopBackupFigures,
): Promise<GoloopRestoreFigures> {
  return restoreScenario('theirs', ctx, cache, tag, backup, async (home) => {
    const keys = backup.keys ?? [];
    const script = `set -euo pipefail
ms() { date +%s%3N; }
${s3Shell(ctx.s3)}
DB_PATH=${q(home.nodeDir)}
DL=${q(join(home.dir, 'restore'))}
echo "MARK begin $(ms)"
mkdir -p "$DB_PATH" "$DL"
pids=()
for key in ${keys.map(q).join(' ')}; do
  s3 download ${q(ctx.bucket)} "$key" "$DL/$(basename "$key")" &
  pids+=($!)
done
for p in "\${pids[@]}"; do wait "$p"; done
echo "MARK downloaded $(ms)"
cat "$DL"/*.tar.zst.* | zstd -q -d | tar -xf - -C "$DB_PATH"
echo "MARK extracted $(ms)"
# the peak: every part and the extracted node dir (a 200 ms sample can miss it)
echo "VALUE du $(du -sB1 ${q(home.dir)} | cut -f1)"
rm -rf "$DL"
bash ${q(home.startScript)}
echo "MARK started $(ms)"
`;
    const r = await bashScript(join(ctx.root, `${tag}-theirs-restore.sh`), script);
    if (r.code !== 0) throw new Error(`their restore failed (${r.code}): ${r.stderr.slice(-2000)}`);
    return { peakDu: Number(r.values.du) || 0, phases: phases(r.marks, 'begin') };
  });
}
