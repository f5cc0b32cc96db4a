/**
 * `npm run bench`: the seed's backup and restore (../shared/seed/icon-backup-restore-guide.txt)
 * against this action, on one generated database, against one sshd and one MinIO, in one run.
 * A benchmark, not a test: it prints figures and ratios, and never fails on a timing.
 *
 * Options (argv wins over env):
 *   --size GiB      BENCH_SIZE_GIB   database size (default 2). Generated once with the simulator
 *                                    and cached in ~/.cache/prep-snapshot/bench-db-<size>.
 *   --parts LIST    BENCH_PARTS      comma list of seed,gzip,zstd,ssh,restore,goloop,churn,wan (default all).
 *                                    restore needs an archive: it adds gzip when neither gzip nor seed runs.
 *   --goloop-sizes L BENCH_GOLOOP_SIZES  GiB of the goloop node's database (default 0.2,2): see goloop/index.ts.
 *   --goloop-restore-runs N BENCH_GOLOOP_RESTORE_RUNS  goloop: rounds of the three restores at each
 *                                    size (default 3); the median runs are compared, every run printed.
 *   --churn-size GiB BENCH_CHURN_SIZE_GIB  churn: the goloop node's database (default 2): see churn/index.ts.
 *   --wan-cap-mib N BENCH_WAN_CAP_MIB   wan: each connection's cap, MiB/s (default 20): see wan.ts.
 *   --wan-latency-ms N BENCH_WAN_LATENCY_MS  wan: delay added each way, ms (default 20).
 *   --ssh-mib N     BENCH_SSH_MIB    MiB streamed for the SSH data channel figure (default 1024).
 *   --backup-runs N BENCH_BACKUP_RUNS   backup rounds (seed, gzip, zstd in turn), default 1. With
 *                                    more, each column shows the run with the median stop to
 *                                    listed, the targets compare medians, and every run is printed.
 *   --restore-runs N BENCH_RESTORE_RUNS  restore pairs (seed, then action), default 3. The seed's
 *                                    download-then-extract varies by half between runs on a
 *                                    shared VM: the medians are compared, and every run is printed.
 *   --seed-literal  BENCH_SEED_LITERAL=1  run the seed's script as written: `sleep 10` after the
 *                                    stop, and the node started only after the upload and the list
 *                                    (default: stop; tar; start; upload, as the issue describes it).
 *   --keep          BENCH_KEEP=1     keep the temp dir (scenario homes, logs).
 *                   BENCH_ECHO=1     copy the action's output to stderr as it comes, each line
 *                                    stamped with the seconds since the run began.
 *                   BENCH_NODE_ARGS  extra Node options for the action's process, for example
 *                                    '--cpu-prof --cpu-prof-dir=/tmp/prof' to see where its CPU goes.
 *
 * How each figure is taken:
 *   downtime        from the simulator's event log: started.first_block_ms - stopped.last_block_ms.
 *   stop to listed  from the simulator's `stop-requested` event to the LastModified time of
 *                   {prefix}/backup_list in MinIO (ms precision in ListObjectsV2; same clock, same
 *                   machine). The action's own "Stop to listed" summary row is recorded beside it.
 *   runner peak RSS the action runs under `/usr/bin/time -v` (Maximum resident set size of the
 *                   Node 24 process; its ssh child is smaller). The seed has no runner process.
 *   host extra disk the scenario's node home (prep dir) is sampled every 200 ms with `du -sB1`
 *                   (which counts a hard-linked inode once, so a staging folder of links costs
 *                   only its copied files): peak - baseline. For restores: peak - the size of
 *                   the restored .score_data + .storage. A cross-check from `statfs` of the
 *                   filesystem (max drop of free space, less MinIO's own growth) is in the JSON;
 *                   it also sees every other process on the machine.
 *   SSH throughput  `cat` of a file of random bytes on the host: plain `ssh host cat > /dev/null`,
 *                   and the action's SshSession.stream() with transport openssh and ssh2, read and
 *                   sha256-hashed under Node 24.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startMinio, type S3Server } from '../bed/minio.js';
import { cacheDir, node24Bin, repoRoot } from '../bed/paths.js';
import { freePort } from '../bed/ports.js';
import { startSshd, type Sshd } from '../bed/sshd.js';
import { downtimes, parseEvents, type NodeEvent } from '../sim/chain.js';
import { churnBench, churnReport, parseChurnSize, type ChurnFigures } from './churn/index.js';
import {
  goloopBench,
  goloopReport,
  parseGoloopRestoreRuns,
  parseGoloopSizes,
  type GoloopFigures,
} from './goloop/index.js';
import { sshReport, sshThroughput, type SshFigures } from './ssh-channel.js';
import { wanBench, wanReport, type WanFigures } from './wan.js';
import {
  assertActionOk,
  cachedOnce,
  DiskSampler,
  du,
  exec,
  flag,
  fmtB,
  fmtS,
  log,
  MiB,
  modifiedMs,
  option,
  parseDurationText,
  phases,
  q,
  ratio,
  runScript,
  runTimed,
  s3Shell,
  secondsSince,
  summaryRow,
  table,
  timeWrapper,
  verdict,
  type ActionBed,
  type ScriptResult,
} from './kit.js';

const TSX = join(repoRoot, 'node_modules/.bin/tsx');
const SIM = join(repoRoot, 'test/sim/prep-node.ts');
const NODE24 = node24Bin();
const IP = '10.11.12.13';
const BUCKET = 'snapshots';
const PREFIX = 'PRep';

// ---- options -------------------------------------------------------------------------------

type Part = 'seed' | 'gzip' | 'zstd' | 'ssh' | 'restore' | 'goloop' | 'churn' | 'wan';
const ALL_PARTS: Part[] = ['seed', 'gzip', 'zstd', 'ssh', 'restore', 'goloop', 'churn', 'wan'];

const sizeGib = Number(option('size', 'BENCH_SIZE_GIB') ?? '2');
if (!(sizeGib > 0)) throw new Error(`--size must be a positive number of GiB`);
const parts = new Set<Part>(
  (option('parts', 'BENCH_PARTS') ?? ALL_PARTS.join(','))
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => {
      if (!ALL_PARTS.includes(s as Part))
        throw new Error(`unknown part '${s}' (known: ${ALL_PARTS.join(', ')})`);
      return s as Part;
    }),
);
if (parts.has('restore') && !parts.has('gzip') && !parts.has('seed')) parts.add('gzip');
const goloopSizes = parseGoloopSizes(option('goloop-sizes', 'BENCH_GOLOOP_SIZES'));
const goloopRestoreRuns = parseGoloopRestoreRuns(
  option('goloop-restore-runs', 'BENCH_GOLOOP_RESTORE_RUNS'),
);
const churnSize = parseChurnSize(option('churn-size', 'BENCH_CHURN_SIZE_GIB'));
const sshMib = Number(option('ssh-mib', 'BENCH_SSH_MIB') ?? '1024');
const wanCapMib = Number(option('wan-cap-mib', 'BENCH_WAN_CAP_MIB') ?? '20');
const wanLatencyMs = Number(option('wan-latency-ms', 'BENCH_WAN_LATENCY_MS') ?? '20');
if (!(wanCapMib > 0) || !(wanLatencyMs >= 0))
  throw new Error('--wan-cap-mib must be positive and --wan-latency-ms at least 0');
const restoreRuns = Math.max(1, Number(option('restore-runs', 'BENCH_RESTORE_RUNS') ?? '3'));
const backupRuns = Math.max(1, Number(option('backup-runs', 'BENCH_BACKUP_RUNS') ?? '1'));
const seedLiteral = flag('seed-literal', 'BENCH_SEED_LITERAL');
const keep = flag('keep', 'BENCH_KEEP');

let scripts = 0;
/** Runs a bash script on the host over OpenSSH (from a file there), like cron would run it. */
function sshScript(sshd: Sshd, root: string, script: string): Promise<ScriptResult> {
  const file = join(root, `script-${++scripts}.sh`);
  return runScript(file, script, 'ssh', [
    ...sshd.sshArgs(),
    `${sshd.username}@${sshd.host}`,
    `bash ${q(file)}`,
  ]);
}

const backupListModifiedMs = (s3: S3Server): Promise<number | undefined> =>
  modifiedMs(s3, BUCKET, `${PREFIX}/backup_list`);

// ---- the database and the node -------------------------------------------------------------

async function cachedDatabase(): Promise<string> {
  const say = {
    log,
    reusing: `reusing the ${sizeGib} GiB database`,
    making: (partial: string) =>
      `generating a ${sizeGib} GiB database in ${partial} (once; about 75 s per 2 GiB)`,
    made: 'generated',
  };
  return cachedOnce(join(cacheDir(), `bench-db-${sizeGib}`), say, async (partial) => {
    // The simulator's size check (readdir, then stat) can race a LevelDB compaction that deletes a
    // file in between (ENOENT): try again from scratch.
    for (let attempt = 1; ; attempt++) {
      try {
        await exec(
          TSX,
          [SIM, 'generate', '--home', partial, '--ip', IP, '--gib', String(sizeGib)],
          { maxBuffer: 1 << 26 },
        );
        break;
      } catch (error) {
        const msg = String((error as { stderr?: string }).stderr || error);
        if (attempt >= 3 || !/ENOENT/.test(msg)) throw error;
        log(`generate failed (${msg.trim().split('\n')[0]}); again`);
        rmSync(partial, { recursive: true, force: true });
      }
    }
  });
}

interface BenchNode {
  home: string;
  dataDir: string;
  port: number;
  peerUrl: string;
  startCommand: string;
  stopCommand: string;
  events(): NodeEvent[];
  stop(): Promise<void>;
  remove(): Promise<void>;
}

function nodeCommands(home: string, port: number): { startCommand: string; stopCommand: string } {
  const base = `${q(TSX)} ${q(SIM)}`;
  return {
    startCommand: `${base} start --home ${q(home)} --port ${port} --rate 20 --value-bytes 4096 --verify none`,
    stopCommand: `${base} stop --home ${q(home)}`,
  };
}

/** A copy of the cached database in `home`, started. */
async function startCopy(cache: string, home: string): Promise<BenchNode> {
  const t = Date.now();
  await exec('cp', ['-a', '--reflink=auto', cache, home]);
  for (const f of [
    '.bench-complete',
    'node-events.log',
    'node.pid',
    'node.port',
    'node.log',
    'stop-mode',
  ]) {
    rmSync(join(home, f), { force: true });
  }
  log(`copied the database to ${home} in ${secondsSince(t)} s`);
  const port = await freePort();
  const cmds = nodeCommands(home, port);
  await exec('bash', ['-c', cmds.startCommand], { maxBuffer: 1 << 24 });
  const node: BenchNode = {
    home,
    dataDir: join(home, 'data/loopchain'),
    port,
    peerUrl: `http://127.0.0.1:${port}/api/v1/avail/peer`,
    ...cmds,
    events() {
      const file = join(home, 'node-events.log');
      return existsSync(file) ? parseEvents(readFileSync(file, 'utf8')) : [];
    },
    async stop() {
      await exec(TSX, [SIM, 'stop', '--home', home, '--mode', 'graceful']).catch(() => undefined);
    },
    async remove() {
      await node.stop();
      if (!keep) rmSync(home, { recursive: true, force: true });
    },
  };
  return node;
}

function downtimeAfter(
  node: BenchNode,
  sinceMs: number,
): { seconds?: number; stopRequestedMs?: number } {
  const events = node.events().filter((e) => Number(e.ms) >= sinceMs);
  const d = downtimes(events)[0];
  const stopReq = events.find((e) => e.event === 'stop-requested');
  return {
    seconds: d ? d.ms / 1000 : undefined,
    stopRequestedMs: stopReq ? Number(stopReq.ms) : undefined,
  };
}

// ---- scenarios -----------------------------------------------------------------------------

interface BackupFigures {
  name: string;
  ok: boolean;
  error?: string;
  downtimeSeconds?: number;
  stopToListedSeconds?: number;
  /** The action's own "Stop to listed" (summary), or the seed script's own marks. */
  stopToListedSelfReported?: number;
  wallSeconds: number;
  runnerPeakRssBytes?: number;
  hostExtraDiskBytes?: number;
  hostDfDropBytes?: number;
  archiveBytes?: number;
  key?: string;
  phases?: Record<string, number>;
  /** Every run's stop to listed, in order, when there were several; the figures are the median run's. */
  runs?: (number | undefined)[];
}

interface RestoreFigures {
  name: string;
  ok: boolean;
  error?: string;
  wallSeconds: number;
  hostExtraDiskBytes?: number;
  hostDfDropBytes?: number;
  restoredBytes?: number;
  /** Every run's wall time, in order; wallSeconds is their median's run. */
  runs?: number[];
  runnerPeakRssBytes?: number;
}

interface Ctx extends ActionBed {
  cache: string;
}

async function seedBackup(ctx: Ctx): Promise<BackupFigures> {
  const node = await startCopy(ctx.cache, join(ctx.root, 'seed-backup'));
  const sampler = new DiskSampler(node.home, ctx.s3.dataDir);
  const since = Date.now();
  try {
    await sampler.start();
    const start = `${node.startCommand} >/dev/null\necho "MARK started $(ms)"`;
    // The seed's backup script, with its paths and commands pointed at this bed.
    const script = `set -euo pipefail
ms() { date +%s%3N; }
${s3Shell(ctx.s3)}
SERVICE=${PREFIX}
BH=\`curl -s ${q(node.peerUrl)} | jq .block_height\`
TODAY=\`date "+%Y%m%d"\`
CTIME=\`date "+%H%M"\`
FILE_NAME="\${SERVICE}_BH\${BH}_data-\${TODAY}_\${CTIME}.tar.gz"
PREP_DIR=${q(node.home)}
IP_DIR_NAME=\`find "\${PREP_DIR}"/data/loopchain/.storage/*7100_icon_dex -maxdepth 1 -type d |awk -F\\/ '{print $NF}'\`
BACKUP_TARGET_DIR="\${PREP_DIR}/data/loopchain"
BACKUP_DIR="\${PREP_DIR}/data/Backup/\${TODAY}"
echo "MARK stop $(ms)"
${node.stopCommand} >/dev/null
echo "MARK stopped $(ms)"
${seedLiteral ? 'sleep 10' : ''}
cd "\${BACKUP_TARGET_DIR}"
tar -zcf "\${FILE_NAME}" --xform="s|.storage/\${IP_DIR_NAME}|.storage/db_CHANGEIP:7100_icon_dex|" .score_data .storage
mkdir -p "\${BACKUP_DIR}"
mv "\${FILE_NAME}" "\${BACKUP_DIR}"
echo "MARK tarred $(ms)"
${seedLiteral ? '' : start}
s3 upload ${q(BUCKET)} "${PREFIX}/\${TODAY}/\${FILE_NAME}" "\${BACKUP_DIR}/\${FILE_NAME}"
echo "MARK uploaded $(ms)"
s3 list ${q(BUCKET)} ${q(PREFIX)}
echo "MARK listed $(ms)"
${seedLiteral ? start : ''}
echo "VALUE key ${PREFIX}/\${TODAY}/\${FILE_NAME}"
echo "VALUE bytes $(stat -c %s "\${BACKUP_DIR}/\${FILE_NAME}")"
`;
    log(`seed backup${seedLiteral ? ' (literal: sleep 10, start after upload)' : ''}`);
    const r = await sshScript(ctx.sshd, ctx.root, script);
    const disk = await sampler.stop();
    if (r.code !== 0)
      throw new Error(`seed backup script failed (${r.code}): ${r.stderr.slice(-2000)}`);
    const d = downtimeAfter(node, since);
    const listed = await backupListModifiedMs(ctx.s3);
    const m = r.marks;
    return {
      name: 'seed',
      ok: true,
      downtimeSeconds: d.seconds,
      stopToListedSeconds:
        listed !== undefined && d.stopRequestedMs !== undefined
          ? (listed - d.stopRequestedMs) / 1000
          : undefined,
      stopToListedSelfReported:
        m.listed !== undefined && m.stop !== undefined ? (m.listed - m.stop) / 1000 : undefined,
      wallSeconds: r.ms / 1000,
      hostExtraDiskBytes: disk.extraDu,
      hostDfDropBytes: disk.maxDfDrop,
      archiveBytes: Number(r.values.bytes),
      key: r.values.key,
      phases: phases(m, 'stop'),
    };
  } catch (error) {
    await sampler.stop();
    return {
      name: 'seed',
      ok: false,
      error: String(error),
      wallSeconds: (Date.now() - since) / 1000,
    };
  } finally {
    await node.remove();
  }
}

async function actionBackup(ctx: Ctx, compression: 'gzip' | 'zstd'): Promise<BackupFigures> {
  const name = `action-${compression}`;
  const node = await startCopy(ctx.cache, join(ctx.root, name));
  const sampler = new DiskSampler(node.home, ctx.s3.dataDir);
  const since = Date.now();
  try {
    await sampler.start();
    log(`action backup, ${compression}`);
    const { r, rss } = await runTimed(ctx, name, {
      mode: 'backup',
      'prep-dir': node.home,
      'stop-command': node.stopCommand,
      'start-command': node.startCommand,
      'peer-url': node.peerUrl,
      'max-downtime': '10m',
      compression,
    });
    const disk = await sampler.stop();
    assertActionOk(r);
    const d = downtimeAfter(node, since);
    const listed = await backupListModifiedMs(ctx.s3);
    return {
      name,
      ok: true,
      downtimeSeconds: d.seconds,
      stopToListedSeconds:
        listed !== undefined && d.stopRequestedMs !== undefined
          ? (listed - d.stopRequestedMs) / 1000
          : undefined,
      stopToListedSelfReported: parseDurationText(summaryRow(r.summary, 'Stop to listed')),
      wallSeconds: r.durationMs / 1000,
      runnerPeakRssBytes: rss,
      hostExtraDiskBytes: disk.extraDu,
      hostDfDropBytes: disk.maxDfDrop,
      archiveBytes: Number(r.outputs.size),
      key: r.outputs.key,
    };
  } catch (error) {
    await sampler.stop();
    return { name, ok: false, error: String(error), wallSeconds: (Date.now() - since) / 1000 };
  } finally {
    await node.remove();
  }
}

/** The run with the median stop to listed (a failed run wins: it must be seen), with every run's. */
function medianBackup(runs: BackupFigures[]): BackupFigures {
  if (runs.length === 1) return runs[0] as BackupFigures;
  const failed = runs.find((r) => !r.ok);
  if (failed) return failed;
  const sorted = [...runs].sort(
    (a, b) => (a.stopToListedSeconds ?? Infinity) - (b.stopToListedSeconds ?? Infinity),
  );
  const median = sorted[Math.floor((sorted.length - 1) / 2)] as BackupFigures;
  return { ...median, runs: runs.map((r) => r.stopToListedSeconds) };
}

/** The run with the median wall time (a failed run wins: it must be seen), with every run's time. */
function medianRun(runs: RestoreFigures[]): RestoreFigures {
  const failed = runs.find((r) => !r.ok);
  if (failed) return failed;
  const sorted = [...runs].sort((a, b) => a.wallSeconds - b.wallSeconds);
  const median = sorted[Math.floor((sorted.length - 1) / 2)] as RestoreFigures;
  return { ...median, runs: runs.map((r) => r.wallSeconds) };
}

async function restoredSize(home: string): Promise<number> {
  const data = join(home, 'data/loopchain');
  const { stdout } = await exec('du', ['-csB1', join(data, '.score_data'), join(data, '.storage')]);
  return Number(/(\d+)\s+total/.exec(stdout)?.[1] ?? NaN);
}

async function seedRestore(ctx: Ctx, key: string): Promise<RestoreFigures> {
  const home = join(ctx.root, 'seed-restore');
  mkdirSync(home, { recursive: true });
  const sampler = new DiskSampler(home, ctx.s3.dataDir);
  const since = Date.now();
  try {
    await sampler.start();
    // The seed's restore: remove, download the archive to disk (axel there; the SDK here), extract, rename.
    const script = `set -euo pipefail
ms() { date +%s%3N; }
${s3Shell(ctx.s3)}
PREP_DIR=${q(home)}
RESTORE_DIR="\${PREP_DIR}/data/loopchain"
NOW_IP=${IP}
icon_latest=${q(key.split('/').slice(1).join('/'))}
filename=\`echo $icon_latest | awk -F/ '{print $NF}'\`
rm -rf $RESTORE_DIR
mkdir -p $RESTORE_DIR
s3 download ${q(BUCKET)} ${q(key)} "$RESTORE_DIR/$filename"
echo "MARK downloaded $(ms)"
tar -I pigz -xf $RESTORE_DIR/$filename -C $RESTORE_DIR
mv $RESTORE_DIR/.storage/db_CHANGEIP\\:7100_icon_dex/ $RESTORE_DIR/.storage/db_$NOW_IP:7100_icon_dex
echo "MARK done $(ms)"
`;
    log('seed restore');
    const r = await sshScript(ctx.sshd, ctx.root, script);
    const disk = await sampler.stop();
    if (r.code !== 0)
      throw new Error(`seed restore script failed (${r.code}): ${r.stderr.slice(-2000)}`);
    const restored = await restoredSize(home);
    return {
      name: 'seed',
      ok: true,
      wallSeconds: r.ms / 1000,
      hostExtraDiskBytes: disk.peakDu - restored,
      hostDfDropBytes: disk.maxDfDrop - restored,
      restoredBytes: restored,
    };
  } catch (error) {
    await sampler.stop();
    return {
      name: 'seed',
      ok: false,
      error: String(error),
      wallSeconds: (Date.now() - since) / 1000,
    };
  } finally {
    if (!keep) rmSync(home, { recursive: true, force: true });
  }
}

async function actionRestore(ctx: Ctx, key: string): Promise<RestoreFigures> {
  const home = join(ctx.root, 'action-restore');
  mkdirSync(home, { recursive: true });
  const sampler = new DiskSampler(home, ctx.s3.dataDir);
  const since = Date.now();
  try {
    await sampler.start();
    const deadPort = await freePort();
    const cmds = nodeCommands(home, deadPort);
    log('action restore');
    const { r, rss } = await runTimed(ctx, 'action-restore', {
      mode: 'restore',
      snapshot: key,
      'prep-dir': home,
      'node-ip': IP,
      'start-node': 'false',
      'peer-url': `http://127.0.0.1:${deadPort}/api/v1/avail/peer`,
      'node-process-pattern': `prep-bench-no-such-process-${deadPort}x`,
      'stop-command': cmds.stopCommand,
      'start-command': cmds.startCommand,
    });
    const disk = await sampler.stop();
    assertActionOk(r);
    const restored = await restoredSize(home);
    return {
      name: 'action',
      ok: true,
      wallSeconds: r.durationMs / 1000,
      hostExtraDiskBytes: disk.peakDu - restored,
      hostDfDropBytes: disk.maxDfDrop - restored,
      restoredBytes: restored,
      runnerPeakRssBytes: rss,
    };
  } catch (error) {
    await sampler.stop();
    return {
      name: 'action',
      ok: false,
      error: String(error),
      wallSeconds: (Date.now() - since) / 1000,
    };
  } finally {
    if (!keep) rmSync(home, { recursive: true, force: true });
  }
}

// ---- report --------------------------------------------------------------------------------

function report(
  meta: Record<string, unknown>,
  backups: Partial<Record<'seed' | 'gzip' | 'zstd', BackupFigures>>,
  ssh: SshFigures | undefined,
  restores: Partial<Record<'seed' | 'action', RestoreFigures>>,
): string {
  const out: string[] = [];
  out.push(
    `prep-snapshot benchmark: ${meta.sizeGib} GiB database` +
      (meta.databaseBytes
        ? ` (${fmtB(meta.databaseBytes as number)} on disk, ${String(meta.files)} files)`
        : '') +
      `, ${String(meta.cpus)} CPUs, load ${String(meta.load)}, ${String(meta.date)}${seedLiteral ? ', seed run literally' : ''}`,
  );
  const s = backups.seed;
  const g = backups.gzip;
  const z = backups.zstd;
  if (s || g || z) {
    out.push('', 'Backup');
    const row = (
      label: string,
      f: (b: BackupFigures) => string,
      withRatio?: (b: BackupFigures) => number | undefined,
    ): string[] => {
      const cell = (b?: BackupFigures): string => (!b ? 'not run' : !b.ok ? 'FAILED' : f(b));
      const r = (b?: BackupFigures): string =>
        withRatio && b?.ok && s?.ok ? ratio(withRatio(b), withRatio(s)) : '';
      return [label, cell(s), cell(g), r(g), cell(z), r(z)];
    };
    const rows: string[][] = [
      ['', 'seed', 'action gzip', 'vs seed', 'action zstd', 'vs seed'],
      row(
        'node downtime',
        (b) => fmtS(b.downtimeSeconds),
        (b) => b.downtimeSeconds,
      ),
      row(
        'stop to listed',
        (b) => fmtS(b.stopToListedSeconds),
        (b) => b.stopToListedSeconds,
      ),
      row('  (self-reported)', (b) => fmtS(b.stopToListedSelfReported)),
      row(
        'wall time (whole run)',
        (b) => fmtS(b.wallSeconds),
        (b) => b.wallSeconds,
      ),
      row('runner peak RSS', (b) => (b.name === 'seed' ? 'n/a' : fmtB(b.runnerPeakRssBytes))),
      row('host extra disk (du)', (b) => fmtB(b.hostExtraDiskBytes)),
      row('  (statfs drop)', (b) => fmtB(b.hostDfDropBytes)),
      row(
        'archive bytes',
        (b) => fmtB(b.archiveBytes),
        (b) => b.archiveBytes,
      ),
    ];
    out.push(table(rows));
    const every = [s, g, z].filter((b) => b?.runs);
    if (every.length > 0) {
      out.push('', `stop to listed, every run (the table shows each column's median run):`);
      for (const b of every) {
        const runs = b?.runs ?? [];
        const pairs = s?.runs
          ? ` (each against the seed of its round: ${runs.map((v, i) => ratio(v, s.runs?.[i])).join(', ')})`
          : '';
        out.push(`  ${b?.name}: ${runs.map((v) => fmtS(v)).join(', ')}${b !== s ? pairs : ''}`);
      }
    }
    const tgt: string[][] = [['target', 'figure', 'verdict']];
    for (const b of [g, z]) {
      if (!b?.ok) continue;
      const dt = b.downtimeSeconds;
      tgt.push([
        `${b.name}: downtime <= 5 s and <= seed/20`,
        `${fmtS(dt)}; seed/20 = ${fmtS(s?.downtimeSeconds !== undefined ? s.downtimeSeconds / 20 : undefined)}`,
        verdict(
          dt === undefined
            ? undefined
            : dt <= 5 && (s?.downtimeSeconds === undefined || dt <= s.downtimeSeconds / 20),
        ),
      ]);
      const lim = b.name === 'action-gzip' ? 0.6 : 0.2;
      const r =
        s?.stopToListedSeconds && b.stopToListedSeconds !== undefined
          ? b.stopToListedSeconds / s.stopToListedSeconds
          : undefined;
      tgt.push([
        `${b.name}: stop to listed <= ${lim}x seed`,
        r === undefined ? '-' : `${r.toFixed(3)}x`,
        verdict(r === undefined ? undefined : r <= lim),
      ]);
      tgt.push([
        `${b.name}: runner peak RSS <= 200 MiB`,
        fmtB(b.runnerPeakRssBytes),
        verdict(b.runnerPeakRssBytes === undefined ? undefined : b.runnerPeakRssBytes <= 200 * MiB),
      ]);
    }
    if (tgt.length > 1) out.push('', table(tgt));
  }
  if (ssh) out.push(...sshReport(ssh));
  const rs = restores.seed;
  const ra = restores.action;
  if (rs || ra) {
    out.push('', `Restore (same snapshot: ${meta.restoreKey ?? '?'})`);
    const cell = (r: RestoreFigures | undefined, f: (x: RestoreFigures) => string): string =>
      !r ? 'not run' : !r.ok ? 'FAILED' : f(r);
    out.push(
      table([
        ['', 'seed', 'action', 'vs seed'],
        [
          `wall time (median of ${restoreRuns})`,
          cell(rs, (r) => fmtS(r.wallSeconds)),
          cell(ra, (r) => fmtS(r.wallSeconds)),
          rs?.ok && ra?.ok ? ratio(ra.wallSeconds, rs.wallSeconds) : '',
        ],
        [
          '  every run',
          cell(rs, (r) => (r.runs ?? [r.wallSeconds]).map((x) => x.toFixed(1)).join(', ')),
          cell(ra, (r) => (r.runs ?? [r.wallSeconds]).map((x) => x.toFixed(1)).join(', ')),
          rs?.ok && ra?.ok && rs.runs && ra.runs
            ? ra.runs.map((x, i) => (x / (rs.runs?.[i] ?? NaN)).toFixed(2)).join(', ')
            : '',
        ],
        [
          'host peak extra disk (du)',
          cell(rs, (r) => fmtB(r.hostExtraDiskBytes)),
          cell(ra, (r) => fmtB(r.hostExtraDiskBytes)),
          '',
        ],
        [
          '  (statfs drop)',
          cell(rs, (r) => fmtB(r.hostDfDropBytes)),
          cell(ra, (r) => fmtB(r.hostDfDropBytes)),
          '',
        ],
        [
          'restored data',
          cell(rs, (r) => fmtB(r.restoredBytes)),
          cell(ra, (r) => fmtB(r.restoredBytes)),
          '',
        ],
        ['runner peak RSS', 'n/a', cell(ra, (r) => fmtB(r.runnerPeakRssBytes)), ''],
      ]),
    );
    if (rs?.ok && ra?.ok) {
      const r = ra.wallSeconds / rs.wallSeconds;
      out.push(
        `target: restore wall time <= 0.7x seed (medians): ${r.toFixed(3)}x, ${verdict(r <= 0.7)}; host extra disk near zero: ${fmtB(ra.hostExtraDiskBytes)}`,
      );
    }
  }
  const failures = [s, g, z, rs, ra].filter((x) => x && !x.ok) as Array<{
    name: string;
    error?: string;
  }>;
  for (const f of failures) out.push('', `FAILED ${f.name}: ${f.error}`);
  return out.join('\n');
}

// ---- main ----------------------------------------------------------------------------------

async function main(): Promise<void> {
  if (!existsSync(NODE24)) throw new Error(`${NODE24} not found: run bash test/bed/install.sh`);
  if (
    [...parts].some((p) => p !== 'ssh' && p !== 'seed') &&
    !existsSync(join(repoRoot, 'dist/main/index.js'))
  )
    throw new Error('dist/ is missing: npm run package');
  log(`size ${sizeGib} GiB; parts ${[...parts].join(',')}`);
  const cache =
    parts.has('seed') || parts.has('gzip') || parts.has('zstd') || parts.has('wan')
      ? await cachedDatabase()
      : '';
  const root = mkdtempSync(join(tmpdir(), 'prep-bench-'));
  const resultsDir = mkdtempSync(join(tmpdir(), 'prep-bench-results-'));
  log(`work dir ${root}`);
  const [sshd, s3] = await Promise.all([startSshd({ plainShell: true }), startMinio()]);
  await s3.createBucket(BUCKET);
  const ctx: Ctx = { root, cache, sshd, s3, bucket: BUCKET, timeWrapper: timeWrapper(root) };
  const backups: Partial<Record<'seed' | 'gzip' | 'zstd', BackupFigures>> = {};
  const restores: Partial<Record<'seed' | 'action', RestoreFigures>> = {};
  let ssh: SshFigures | undefined;
  let goloop: GoloopFigures | undefined;
  let churn: ChurnFigures | undefined;
  let wan: WanFigures | undefined;
  const meta: Record<string, unknown> = {
    sizeGib,
    date: new Date().toISOString(),
    cpus: (await import('node:os')).cpus().length,
    seedLiteral,
    parts: [...parts],
    load: (await import('node:os'))
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(' '),
  };
  try {
    if (cache) {
      meta.databaseBytes = await du(join(cache, 'data/loopchain'));
      meta.files = Number(
        (
          await exec('bash', ['-c', `find ${q(join(cache, 'data/loopchain'))} -type f | wc -l`])
        ).stdout.trim(),
      );
    }
    const backupRounds: Record<'seed' | 'gzip' | 'zstd', BackupFigures[]> = {
      seed: [],
      gzip: [],
      zstd: [],
    };
    for (let i = 0; i < backupRuns; i++) {
      if (parts.has('seed')) backupRounds.seed.push(await seedBackup(ctx));
      if (parts.has('gzip')) backupRounds.gzip.push(await actionBackup(ctx, 'gzip'));
      if (parts.has('zstd')) backupRounds.zstd.push(await actionBackup(ctx, 'zstd'));
    }
    for (const kind of ['seed', 'gzip', 'zstd'] as const) {
      if (backupRounds[kind].length > 0) backups[kind] = medianBackup(backupRounds[kind]);
    }
    if (parts.has('ssh')) ssh = await sshThroughput(ctx, sshMib);
    if (parts.has('restore')) {
      const key =
        (backups.gzip?.ok && backups.gzip.key) ||
        (backups.seed?.ok && backups.seed.key) ||
        undefined;
      meta.restoreKey = key;
      if (!key) log('restore skipped: no archive to restore');
      else {
        const seedRuns: RestoreFigures[] = [];
        const actionRuns: RestoreFigures[] = [];
        for (let i = 0; i < restoreRuns; i++) {
          seedRuns.push(await seedRestore(ctx, key));
          actionRuns.push(await actionRestore(ctx, key));
        }
        restores.seed = medianRun(seedRuns);
        restores.action = medianRun(actionRuns);
      }
    }
    if (parts.has('goloop'))
      goloop = await goloopBench({ ...ctx, keep }, goloopSizes, goloopRestoreRuns);
    if (parts.has('churn')) churn = await churnBench({ ...ctx, keep }, churnSize);
    if (parts.has('wan')) {
      wan = await wanBench(
        { ...ctx, sizeGib, keep },
        { capBytesPerSecond: wanCapMib * MiB, latencyMs: wanLatencyMs },
      );
    }
  } finally {
    await Promise.all([sshd.stop(), s3.stop()]);
    if (!keep) rmSync(root, { recursive: true, force: true });
    else log(`kept ${root}`);
  }
  const text =
    report(meta, backups, ssh, restores) +
    (goloop ? goloopReport(goloop) : '') +
    (churn ? churnReport(churn) : '') +
    (wan ? wanReport(wan) : '');
  const json = join(resultsDir, 'bench-results.json');
  writeFileSync(
    json,
    JSON.stringify({ meta, backups, ssh, restores, goloop, churn, wan }, null, 2) + '\n',
  );
  writeFileSync(join(resultsDir, 'bench-results.txt'), text + '\n');
  process.stdout.write(text + '\n\n' + `figures written to ${json}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(
    `bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exit(1);
});
