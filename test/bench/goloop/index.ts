/**
 * The goloop part of `npm run bench` (`--parts goloop`, sizes from `--goloop-sizes 0.2,2` or
 * BENCH_GOLOOP_SIZES, default 0.2,2): a real goloop v1.4.4 node (test/bed/goloop.ts) whose
 * database has been grown to each size, backed up and restored by icon2-docker's procedure
 * (ctx/manager/backup_v2.py, and the restore that reverses it) and by this action, as a tree (its
 * goloop default: the first tree of a prefix sends every file) and as a tar.zst archive
 * (`format: archive`). At each size, once each and in this order: their backup, ours as a tree,
 * ours as an archive (the first tables of a size are read from the page cache alike: each copy
 * of the node was just made); then rounds of the three restores, each round starting one
 * further on (`--goloop-restore-runs`, default 3), the median run of each compared: on a shared VM of two
 * cores one restore of 2 GiB took from 12.2 to 14.9 s for the same bundle, theirs 18.0 to 18.8 s.
 *
 * Files: cache.ts (the grown node), node.ts (a node in a home of its own, its blocks),
 * theirs.ts (icon2-docker's procedure), ours.ts (the action), figures.ts (what is recorded, one
 * scenario's frame), report.ts (the tables); what they share with bench.ts is in ../kit.ts.
 *
 * The node: a single-validator chain (100 ms blocks) whose goleveldb database
 * (`{node dir}/{cid}/db/{nid}`) is grown, while the server is stopped, with ballast: random
 * 4 KiB values under keys that start with eight 0xff bytes and are not 32 bytes long. goloop
 * reads its database only by key (a 32-byte hash, or a key under one of its bucket prefixes
 * S, T, H, C, L, I) and never iterates it, so it never reads them; they sort after every key it
 * writes, so its compactions leave them alone. Written with classic-level (LevelDB 1.20, the same
 * on-disk format), compression off, until the table files (`*.ldb`) make up the size. Built once
 * per size in ~/.cache/prep-snapshot/bench-goloop-<size> (checked: goloop starts on it and
 * produces blocks) and copied for each scenario with `cp -a --reflink=auto`.
 *
 * Theirs (backup_v2.py with control_chain): height and cid from /admin/chain; chain stop over
 * cli.sock, waited until the chain is `stopped`; `cd {node dir}; tar -cf - {cid} | zstd -T0 |
 * split -b 1000m - {backup}/temp/{name}.tar.zst.` in a folder beside the node dir; chain start;
 * the parts uploaded at once (a thread each there; here a process each, with the SDK's multipart
 * upload that bench.ts uses for the seed's archive). Their filelist.json (an md5 per part) is not made: listed = the
 * last part uploaded. Restore: download the parts (at once), `cat | zstd -d | tar -x` into a
 * fresh node dir, start goloop on it, wait for a block above the snapshot's height.
 *
 * Ours: the packaged action (`node-kind: goloop`, `format` tree or archive, each in a prefix of its
 * own), whose freeze goes through cli.sock; restore into a fresh node dir with `start-command` =
 * the script that starts goloop there, then the same wait for a new block. dist/ by default;
 * PREP_TEST_DIST names a private bundle (as in test/e2e: `node scripts/package.mjs --out DIR`).
 * Not run while the bundle has no `node-kind` input or no tree format.
 *
 * How each figure is taken:
 *   downtime        the node's own view: the largest gap between consecutive blocks' time_stamp
 *                   (icx_getBlockByHeight, microseconds) from the height before the stop (theirs:
 *                   the run's start; ours: the snapshot's height, read just before the stop, after
 *                   a tree's new tables went up) to the height after the run. 100 ms blocks: a
 *                   figure holds up to a block interval of no stop.
 *   stop to listed  from the time_stamp of the last block before that gap (the node's view of the
 *                   stop, for both) to the LastModified of {prefix}/backup_list for ours, of the last
 *                   part for theirs (MinIO, ms precision, same clock). Theirs also by its own marks.
 *   bytes moved     what went to S3: an archive's size (theirs: every part); a tree's manifest's
 *                   `sent.bytes` (the files not stored before: here, all of them).
 *   runner peak RSS /usr/bin/time -v around the action's Node 24 process, as bench.ts takes it.
 *   host extra disk peak `du -sB1` of the node's home (node dir, backup folder, keystore) every
 *                   200 ms, less its size before; for restores, less its size at the end.
 *   restore         from the start of the download (theirs) or of the action (ours) to the first
 *                   block above the snapshot's height on the restored node.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { goloopBin } from '../../bed/paths.js';
import { du, errorText, logger, medianRun, rotated } from '../kit.js';
import { cachedNode, tableFiles } from './cache.js';
import {
  OURS_FORMATS,
  type GoloopBenchContext,
  type GoloopFigures,
  type GoloopRestoreFigures,
  type GoloopSizeFigures,
  type Who,
} from './figures.js';
import { readMeta } from './node.js';
import { oursBackup, oursMissing, oursRestore } from './ours.js';
import { theirsBackup, theirsRestore } from './theirs.js';

export type { GoloopBenchContext, GoloopFigures } from './figures.js';
export { goloopReport } from './report.js';

const log = logger('goloop');

/** `--goloop-sizes`: a comma list of GiB, default 0.2,2. */
export function parseGoloopSizes(text: string | undefined): number[] {
  const sizes = (text ?? '0.2,2')
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean)
    .map(Number);
  if (sizes.length === 0 || sizes.some((s) => !(s > 0)))
    throw new Error(`--goloop-sizes must be a comma list of positive GiB, got '${text}'`);
  return sizes;
}

/** `--goloop-restore-runs`: rounds of the three restores at each size, default 3. */
export function parseGoloopRestoreRuns(text: string | undefined): number {
  const runs = Number(text ?? '3');
  if (!Number.isInteger(runs) || runs < 1)
    throw new Error(`--goloop-restore-runs must be a whole number of at least 1, got '${text}'`);
  return runs;
}

export async function goloopBench(
  ctx: GoloopBenchContext,
  sizes: number[],
  restoreRuns = 3,
): Promise<GoloopFigures> {
  const missing = oursMissing();
  const out: GoloopFigures = { sizes: [], oursMissing: missing };
  if (!existsSync(goloopBin())) {
    out.error = `${goloopBin()} not found: run bash test/bed/install.sh`;
    return out;
  }
  if (missing) log(`ours is not run: ${missing}`);
  const skipped = { ok: false, skipped: missing ?? '', wallSeconds: 0 } as const;
  for (const sizeGib of sizes) {
    let cache: string;
    try {
      cache = await cachedNode(sizeGib);
    } catch (error) {
      out.error = `growing the ${sizeGib} GiB node: ${errorText(error)}`;
      return out;
    }
    const meta = readMeta(cache);
    const dbDir = join(cache, 'data', meta.cid, 'db', meta.nid);
    const tables = tableFiles(dbDir);
    const fig: GoloopSizeFigures = {
      sizeGib,
      tableBytes: tables.bytes,
      tableFiles: tables.files,
      dbBytes: await du(dbDir),
      backups: {},
      restores: {},
    };
    out.sizes.push(fig);
    const tag = `goloop-${sizeGib}`;
    const b = fig.backups;
    const r = fig.restores;
    b.theirs = await theirsBackup(ctx, cache, sizeGib);
    for (const format of OURS_FORMATS) {
      const who = `ours ${format}` as const;
      b[who] = missing ? { name: who, ...skipped } : await oursBackup(ctx, cache, sizeGib, format);
    }
    // Rounds of theirs, ours tree, ours archive, each round starting one further on (the
    // first restore after a pause ran slower, whichever it was): a slow spell of the machine
    // falls on all three.
    const runs: Partial<Record<Who, GoloopRestoreFigures[]>> = {};
    const order: Who[] = ['theirs', ...OURS_FORMATS.map((f) => `ours ${f}` as const)];
    for (let i = 1; i <= restoreRuns; i++) {
      const round = restoreRuns > 1 ? `${tag}-${i}` : tag;
      for (const who of rotated(order, i - 1)) {
        const backup = b[who];
        if (!backup?.ok) continue;
        (runs[who] ??= []).push(
          who === 'theirs'
            ? await theirsRestore(ctx, cache, round, backup)
            : await oursRestore(ctx, cache, round, backup),
        );
      }
    }
    for (const [who, list] of Object.entries(runs) as Array<[Who, GoloopRestoreFigures[]]>)
      r[who] = medianRun(list);
    if (missing)
      for (const format of OURS_FORMATS)
        r[`ours ${format}`] = { name: `ours ${format}`, ...skipped };
  }
  return out;
}
