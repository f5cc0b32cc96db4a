/**
 * The wan part of `npm run bench` (`--parts wan`): a restore across a network that limits each
 * connection, as the internet between S3 and a runner or a node does. The bed's proxy
 * (test/bed/cut-proxy.ts) sits between the readers and MinIO and caps each TCP connection at
 * `--wan-cap-mib` MiB/s (default 20) with `--wan-latency-ms` (default 20) of delay each way.
 *
 * One archive (the seed's `tar -zcf` of the generated database, made with pigz: the same gzip;
 * cached in ~/.cache/prep-snapshot/bench-wan-<size>), stored under WAN/ with a manifest, and the
 * bucket readable without credentials there, as the original restore reads it. One run of each,
 * in this order:
 *   seed     the original restore on the host: `axel -a URL` (its default connections) to a file,
 *            then `tar -I pigz -xf`, then the rename of db_CHANGEIP.
 *   action 1 the action's restore with `download-connections: 1`.
 *   action   the action's restore with every input left at its default (the connections too).
 *   host     the action's restore with the default connections through the proxy with no cap and
 *            no delay: what the host and the runner can stream and extract when no connection is
 *            capped (the proxy's own CPU, on the same cores, is paid here too).
 * Each restores into a fresh home (`start-node: false`: the figures are the transfer's).
 *
 * How each figure is taken:
 *   wall time       seed: the script's run over SSH; action: the main step's process.
 *   download        seed: from its start to the end of axel (its own marks); action: the stream
 *                   (download, hashing and extraction at once: its summary's "Stream and extract").
 *   effective rate  archive bytes / that download time.
 *   targets         the action with the default connections: rate >= 0.8 x min(connections x cap,
 *                   the host's rate); wall time <= 0.5 x the seed's.
 */
import {
  createReadStream,
  existsSync,
  mkdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { PutObjectCommand } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import type { Manifest } from '../../src/manifest.js';
import { startCutProxy } from '../bed/cut-proxy.js';
import { publicRead } from '../bed/minio.js';
import { cacheDir, repoRoot } from '../bed/paths.js';
import { actionInputDefaults } from '../bed/runner.js';
import {
  assertActionOk,
  cachedOnce,
  errorText,
  exec,
  fmtB,
  fmtS,
  GiB,
  logger,
  MiB,
  parseDurationText,
  q,
  runScript,
  runTimed,
  summaryRow,
  table,
  verdict,
  type ActionBed,
} from './kit.js';

const log = logger('wan');
const PREFIX = 'WAN';
const IP = '10.11.12.13';
/** The restores do not start a node: the name's height is only a name. */
const HEIGHT = 1000;

export interface WanContext extends ActionBed {
  /** The generated database's home (its data/loopchain). */
  cache: string;
  sizeGib: number;
  keep: boolean;
}

export interface WanOptions {
  capBytesPerSecond: number;
  latencyMs: number;
}

export interface WanRun {
  name: string;
  ok: boolean;
  error?: string;
  wallSeconds?: number;
  downloadSeconds?: number;
  /** Archive bytes / download seconds. */
  rate?: number;
  connections?: number;
  runnerPeakRssBytes?: number;
}

export interface WanFigures {
  options: WanOptions;
  archiveBytes?: number;
  key?: string;
  defaultConnections?: number;
  runs: WanRun[];
  error?: string;
}

interface Archive {
  file: string;
  sha256: string;
  bytes: number;
  tarBytes: number;
  files: number;
}

/** The seed's archive of the cached database, made once. */
async function cachedArchive(ctx: WanContext): Promise<Archive> {
  const home = join(cacheDir(), `bench-wan-${ctx.sizeGib}`);
  const say = {
    log,
    reusing: 'reusing the archive',
    making: (partial: string) =>
      `making the archive of the ${ctx.sizeGib} GiB database in ${partial} (once)`,
    made: 'made',
  };
  await cachedOnce(home, say, async (partial) => {
    mkdirSync(partial, { recursive: true });
    const data = join(ctx.cache, 'data/loopchain');
    const file = join(partial, 'archive.tar.gz');
    // The seed's backup command (tar -zcf with its rename of the identity folder), with pigz.
    const script = `set -euo pipefail
cd ${q(data)}
IP_DIR_NAME=$(find .storage/*7100_icon_dex -maxdepth 0 -type d | awk -F/ '{print $NF}')
tar -I pigz -cf ${q(file)} --xform="s|.storage/\${IP_DIR_NAME}|.storage/db_CHANGEIP:7100_icon_dex|" .score_data .storage
echo "VALUE files $(find .score_data .storage -type f | wc -l)"
echo "VALUE tarBytes $(pigz -dc ${q(file)} | wc -c)"
echo "VALUE sha256 $(sha256sum ${q(file)} | cut -d' ' -f1)"
echo "VALUE bytes $(stat -c %s ${q(file)})"
`;
    const r = await runScript(join(partial, 'make.sh'), script, 'bash', [join(partial, 'make.sh')]);
    if (r.code !== 0) throw new Error(`making the archive failed: ${r.stderr.slice(-2000)}`);
    writeFileSync(join(partial, 'meta.json'), JSON.stringify(r.values, null, 2) + '\n');
  });
  const meta = JSON.parse(readFileSync(join(home, 'meta.json'), 'utf8')) as Record<string, string>;
  return {
    file: join(home, 'archive.tar.gz'),
    sha256: meta.sha256 as string,
    bytes: Number(meta.bytes),
    tarBytes: Number(meta.tarBytes),
    files: Number(meta.files),
  };
}

/** Stores the archive and its manifest under WAN/, readable without credentials like the seed's bucket. */
async function store(ctx: WanContext, archive: Archive): Promise<string> {
  const now = new Date();
  const date = now.toISOString().slice(0, 10).replace(/-/g, '');
  const hhmm = now.toISOString().slice(11, 16).replace(':', '');
  const file = `PRep_BH${HEIGHT}_data-${date}_${hhmm}.tar.gz`;
  const key = `${PREFIX}/${date}/${file}`;
  const client = ctx.s3.client();
  try {
    await new Upload({
      client,
      params: {
        Bucket: ctx.bucket,
        Key: key,
        Body: createReadStream(archive.file, { highWaterMark: MiB }),
      },
      partSize: 64 * MiB,
      queueSize: 4,
    }).done();
    const manifest: Manifest = {
      format: 'prep-snapshot/1',
      key,
      entry: `${date}/${file}`,
      nodeKind: 'loopchain',
      blockHeight: HEIGHT,
      sha256: archive.sha256,
      compressedBytes: archive.bytes,
      uncompressedBytes: archive.tarBytes,
      files: archive.files,
      compression: 'gzip',
      compressor: 'pigz',
      compressionLevel: 6,
      consistency: 'stop',
      placeholder: 'db_CHANGEIP:7100_icon_dex',
      source: { host: 'bench', dataDir: join(ctx.cache, 'data/loopchain') },
      createdAt: now.toISOString(),
      actionVersion: 'bench',
      timings: {},
    };
    await client.send(
      new PutObjectCommand({
        Bucket: ctx.bucket,
        Key: `_prep-snapshot/${key}.json`,
        Body: JSON.stringify(manifest),
      }),
    );
    await publicRead(client, ctx.bucket, PREFIX);
  } finally {
    client.destroy();
  }
  return key;
}

/** The seed's restore (axel, then tar), over SSH on the host, from `url`. */
async function seedRestore(ctx: WanContext, url: string, bytes: number): Promise<WanRun> {
  const home = join(ctx.root, 'wan-seed');
  mkdirSync(home, { recursive: true });
  try {
    const script = `set -euo pipefail
ms() { date +%s%3N; }
PREP_DIR=${q(home)}
RESTORE_DIR="\${PREP_DIR}/data/loopchain"
NOW_IP=${IP}
filename=${q(url.split('/').pop() ?? 'archive.tar.gz')}
echo "MARK start $(ms)"
rm -rf $RESTORE_DIR
mkdir -p $RESTORE_DIR
# Its progress bar is left out of the log; its messages ("Connection N finished") are kept.
axel -a ${q(url)} --output $RESTORE_DIR/$filename 2>&1 | tr '\\r' '\\n' | { grep -v '^\\[' || true; } | tail -c 65536 > ${q(join(ctx.root, 'wan-axel.log'))}
echo "MARK downloaded $(ms)"
tar -I pigz -xf $RESTORE_DIR/$filename -C $RESTORE_DIR
mv $RESTORE_DIR/.storage/db_CHANGEIP\\:7100_icon_dex/ $RESTORE_DIR/.storage/db_$NOW_IP:7100_icon_dex
echo "MARK done $(ms)"
`;
    log('seed: axel -a, then tar -I pigz -xf');
    const file = join(ctx.root, 'wan-seed.sh');
    const r = await runScript(file, script, 'ssh', [
      ...ctx.sshd.sshArgs(),
      `${ctx.sshd.username}@${ctx.sshd.host}`,
      `bash ${q(file)}`,
    ]);
    if (r.code !== 0)
      throw new Error(`the seed's restore failed (${r.code}): ${r.stderr.slice(-2000)}`);
    const axelLog = readFileSync(join(ctx.root, 'wan-axel.log'), 'utf8');
    // axel says "Connection N finished" of each of its connections.
    const connections =
      new Set([...axelLog.matchAll(/Connection (\d+) finished/g)].map((m) => m[1])).size ||
      undefined;
    const download = ((r.marks.downloaded ?? NaN) - (r.marks.start ?? NaN)) / 1000;
    return {
      name: 'seed (axel -a, then tar)',
      ok: true,
      wallSeconds: r.ms / 1000,
      downloadSeconds: download,
      rate: bytes / download,
      connections,
    };
  } catch (error) {
    return { name: 'seed (axel -a, then tar)', ok: false, error: errorText(error) };
  } finally {
    if (!ctx.keep) rmSync(home, { recursive: true, force: true });
  }
}

/** The action's main bundle: dist/, or the private copy that PREP_TEST_DIST names. */
function mainBundle(): string {
  return join(process.env.PREP_TEST_DIST || join(repoRoot, 'dist'), 'main/index.js');
}

async function actionRestore(
  ctx: WanContext,
  name: string,
  key: string,
  bytes: number,
  inputs: Record<string, string>,
  connections: number,
): Promise<WanRun> {
  const home = join(ctx.root, `wan-${name.replace(/\W+/g, '-')}`);
  mkdirSync(home, { recursive: true });
  try {
    log(`action: ${name}`);
    const { r, rss } = await runTimed(
      ctx,
      `wan-${name.replace(/\W+/g, '-')}`,
      {
        mode: 'restore',
        snapshot: key,
        prefix: PREFIX,
        'prep-dir': home,
        'node-ip': IP,
        'start-node': 'false',
        // Nothing runs there: no node to find, stop or start.
        'peer-url': 'http://127.0.0.1:9/api/v1/avail/peer',
        'node-process-pattern': `prep-bench-wan-no-such-process-${process.pid}x`,
        'stop-command': 'true',
        'start-command': 'true',
        ...inputs,
      },
      mainBundle(),
    );
    assertActionOk(r);
    const stream = parseDurationText(
      summaryRow(r.summary, 'Stream and extract')?.replace(/ \(.*$/, ''),
    );
    return {
      name,
      ok: true,
      wallSeconds: r.durationMs / 1000,
      downloadSeconds: stream,
      rate: stream ? bytes / stream : undefined,
      connections,
      runnerPeakRssBytes: rss,
    };
  } catch (error) {
    return { name, ok: false, error: errorText(error) };
  } finally {
    if (!ctx.keep) rmSync(home, { recursive: true, force: true });
  }
}

export async function wanBench(ctx: WanContext, options: WanOptions): Promise<WanFigures> {
  const out: WanFigures = { options, runs: [] };
  if (!existsSync(mainBundle())) {
    out.error = `${mainBundle()} is missing: npm run package`;
    return out;
  }
  const defaults = actionInputDefaults();
  if (defaults['download-connections'] === undefined) {
    out.error = 'action.yml has no download-connections input yet';
    return out;
  }
  const connections = Number(defaults['download-connections']);
  out.defaultConnections = connections;
  try {
    await exec('axel', ['--version']);
  } catch {
    out.error = 'axel is missing: bash test/bed/install.sh';
    return out;
  }
  const archive = await cachedArchive(ctx);
  out.archiveBytes = archive.bytes;
  const key = await store(ctx, archive);
  out.key = key;
  log(
    `${key}: ${fmtB(archive.bytes)}; each connection ${fmtB(options.capBytesPerSecond)}/s, ${options.latencyMs} ms each way`,
  );
  const proxy = await startCutProxy({
    targetPort: ctx.s3.port,
    bytesPerSecond: options.capBytesPerSecond,
    latencyMs: options.latencyMs,
  });
  try {
    const endpoint = `http://127.0.0.1:${proxy.port}`;
    out.runs.push(await seedRestore(ctx, `${endpoint}/${ctx.bucket}/${key}`, archive.bytes));
    out.runs.push(
      await actionRestore(
        ctx,
        'action, 1 connection',
        key,
        archive.bytes,
        {
          endpoint,
          'download-connections': '1',
        },
        1,
      ),
    );
    out.runs.push(
      await actionRestore(
        ctx,
        `action, default (${connections})`,
        key,
        archive.bytes,
        { endpoint },
        connections,
      ),
    );
  } finally {
    await proxy.stop();
  }
  // The same plumbing without its limits: the proxy's own work on the shared cores is in both.
  const open = await startCutProxy({ targetPort: ctx.s3.port });
  try {
    out.runs.push(
      await actionRestore(
        ctx,
        'host: action, no cap',
        key,
        archive.bytes,
        { endpoint: `http://127.0.0.1:${open.port}` },
        connections,
      ),
    );
  } finally {
    await open.stop();
  }
  return out;
}

export function wanReport(f: WanFigures): string {
  const o = f.options;
  const out: string[] = [
    '',
    `Restore across a capped network (wan): each connection ${fmtB(o.capBytesPerSecond)}/s, ` +
      `${o.latencyMs} ms each way; archive ${fmtB(f.archiveBytes)} (${f.key ?? '?'})`,
  ];
  if (f.error) {
    out.push(`not run: ${f.error}`);
    return out.join('\n');
  }
  const rate = (r?: WanRun): string =>
    r?.rate === undefined ? '-' : `${(r.rate / MiB).toFixed(1)} MiB/s`;
  out.push(
    table([
      ['', 'connections', 'wall time', 'download', 'effective rate', 'runner peak RSS'],
      ...f.runs.map((r) =>
        r.ok
          ? [
              r.name,
              r.connections === undefined ? '-' : String(r.connections),
              fmtS(r.wallSeconds),
              fmtS(r.downloadSeconds),
              rate(r),
              r.runnerPeakRssBytes === undefined ? '-' : fmtB(r.runnerPeakRssBytes),
            ]
          : [r.name, 'FAILED', '', '', '', ''],
      ),
    ]),
  );
  const [seed, one, def, host] = f.runs;
  const n = f.defaultConnections ?? NaN;
  const hostRate = host?.ok ? host.rate : undefined;
  const ceiling =
    hostRate === undefined ? n * o.capBytesPerSecond : Math.min(n * o.capBytesPerSecond, hostRate);
  const rateRatio = def?.rate === undefined ? undefined : def.rate / ceiling;
  const wallRatio =
    def?.wallSeconds !== undefined && seed?.wallSeconds !== undefined
      ? def.wallSeconds / seed.wallSeconds
      : undefined;
  out.push(
    '',
    table([
      ['target', 'figure', 'verdict'],
      [
        `action, default: rate >= 0.8x min(${n} x ${fmtB(o.capBytesPerSecond)}/s, host ${rate(host)})`,
        rateRatio === undefined ? '-' : `${rate(def)}, ${rateRatio.toFixed(3)}x`,
        verdict(rateRatio === undefined ? undefined : rateRatio >= 0.8),
      ],
      [
        'action, default: wall time <= 0.5x seed',
        wallRatio === undefined ? '-' : `${wallRatio.toFixed(3)}x`,
        verdict(wallRatio === undefined ? undefined : wallRatio <= 0.5),
      ],
      [
        'action, 1 connection: rate near the cap (for reference)',
        one?.rate === undefined ? '-' : `${(one.rate / o.capBytesPerSecond).toFixed(3)}x the cap`,
        '',
      ],
    ]),
  );
  for (const r of f.runs) if (!r.ok) out.push('', `FAILED ${r.name}: ${r.error}`);
  if (f.archiveBytes !== undefined && f.archiveBytes < GiB / 2)
    out.push('', 'note: an archive this small is dominated by the start of each run.');
  return out.join('\n');
}
