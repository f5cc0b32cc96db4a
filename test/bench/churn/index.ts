/**
 * The churn part of `npm run bench` (`--parts churn`, `--churn-size GiB` or BENCH_CHURN_SIZE_GIB,
 * default 2): what a daily backup of a tree costs once the node has written for a day, against
 * an archive and against icon2-docker's full backup, on one node.
 *
 * The node is a copy of the goloop part's cached node at that size (../goloop/cache.ts: goloop
 * v1.4.4, its database grown with ballast), started once and kept running throughout:
 *   1. full backups, one after another: theirs (icon2-docker's `tar | zstd | split` and upload,
 *      ../goloop/theirs.ts), ours as an archive (`format: archive`, tar.zst), ours as a tree (the
 *      first tree of its prefix: every file is sent);
 *   2. churn (load.ts): ICX transfers through the node's JSON-RPC, each with a 16 KiB message of
 *      random bytes, two at a time, until 5 % or more of the db dir's bytes are in table files
 *      (`*.ldb`) that the full tree did not hold (checked every 0.5 s from the names and sizes in
 *      the db dir, then again once the load has stopped and the dir's names have held for 3 s:
 *      a compaction's outputs are there before its inputs go; more load when it fell short).
 *      Plain transfers add about 2.5 KB each to the database (752 in 60 s grew it by 1.9 MB
 *      here): 5 % of 0.5 GiB would take a quarter of an hour of them, so the messages make the
 *      node write more; what it writes (its blocks, their flushes to new tables and the
 *      compactions of those) is the node's own;
 *   3. second backups, the load stopped: ours as a tree (same prefix: it sends only what the full
 *      tree does not hold), ours as an archive (its whole size again), theirs (a full backup of
 *      the same data, in a prefix of its own);
 *   4. the second tree restored onto the node itself, which ran on since (`stop-node`; the
 *      tables it still holds are linked from its data dir, not fetched), up to a new block;
 *   5. the node stopped, the second snapshot restored onto fresh node dirs as a tree and as an
 *      archive (as ../goloop/ours.ts restores), each to a new block; three pairs, the first of
 *      each pair taking turns, the run with the median wall time of each shown (every run's
 *      time beside it);
 *   6. one pair more across a link between the runner and the node: the action's SSH goes
 *      through the bed's proxy (../../bed/cut-proxy.ts) with 20 ms each way, as between a
 *      runner and a node in another region; S3 stays near the runner. Every input as in 5:
 *      the tree's files share the default `ssh-connections`, the archive is one stream. Then,
 *      across the same link, a first tree backup of a fresh copy of the node, twice, each into
 *      a prefix of its own: over one SSH connection (`ssh-connections: 1`), then with every
 *      input at its default (its new tables, all of them, share four ahead of the stop).
 *
 * How each figure is taken (the rest as in ../goloop/index.ts):
 *   bytes moved     an archive's size (theirs: every part); a tree's manifest's `sent.bytes`.
 *   share           of the database's bytes: the second tree's `bytes` (every file of the chain
 *                   folder: db, wal, contract, config).
 *   churn           the table files in the db dir that the full tree does not name, against the db
 *                   dir's bytes: when the load stopped (from the dir), and in the second tree (from
 *                   the two manifests).
 *   stop to listed  from the last block before the freeze's gap to backup_list's LastModified; for
 *                   theirs, to its last part's. A tree's course is read from the bucket too: when
 *                   its first and last new object, its manifest and backup_list were written.
 *   runner peak RSS each of the action's runs under /usr/bin/time -v.
 */
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import type { TreeManifest } from '../../../src/tree/layout.js';
import { startCutProxy } from '../../bed/cut-proxy.js';
import { goloopBin } from '../../bed/paths.js';
import { du, errorText, logger, medianRun, readJson, rotated } from '../kit.js';
import { cachedNode, tableFiles } from '../goloop/cache.js';
import type {
  GoloopBackupFigures,
  GoloopBenchContext,
  GoloopRestoreFigures,
  Who,
} from '../goloop/figures.js';
import { removeHome, startCopy, type Home } from '../goloop/node.js';
import { oursBackupOn, oursMissing, oursRestore, oursRestoreOnto } from '../goloop/ours.js';
import { runOn } from '../goloop/scenario.js';
import { theirsBackupOn } from '../goloop/theirs.js';
import { ACROSS_BACKUPS, ACROSS_MS, type ChurnFigures } from './figures.js';
import { churn, dbFiles, newTables } from './load.js';

export type { ChurnFigures } from './figures.js';
export { churnReport } from './report.js';

const log = logger('churn');
/** The share of the database in new table files that the load makes, and how long it may take. */
const TARGET_SHARE = 0.05;
const LOAD_LIMIT_MS = 30 * 60_000;
/** Restores of the second snapshot, a tree then an archive each time: the medians are compared. */
const RESTORE_PAIRS = 3;

/**
 * `--churn-size`: GiB of the node's database, default 2: the goloop part's bench database
 * (its cached node is shared). A smaller one makes a second backup's fixed cost (the stop,
 * the freeze, the start) a larger share of the figures.
 */
export function parseChurnSize(text: string | undefined): number {
  const size = Number(text ?? '2');
  if (!(size > 0)) throw new Error(`--churn-size must be a positive number of GiB, got '${text}'`);
  return size;
}

export async function churnBench(ctx: GoloopBenchContext, sizeGib: number): Promise<ChurnFigures> {
  const out: ChurnFigures = { sizeGib, full: {}, second: {}, restores: {} };
  if (!existsSync(goloopBin())) {
    out.error = `${goloopBin()} not found: run bash test/bed/install.sh`;
    return out;
  }
  out.oursMissing = oursMissing();
  if (out.oursMissing) {
    out.error = `ours cannot run: ${out.oursMissing}`;
    return out;
  }
  let cache: string;
  try {
    cache = await cachedNode(sizeGib);
  } catch (error) {
    out.error = `growing the ${sizeGib} GiB node: ${errorText(error)}`;
    return out;
  }
  const tag = `churn-${sizeGib}`;
  const size = String(sizeGib).replace('.', 'p');
  const prefix = {
    tree: `CHURN-${size}-tree`,
    archive: `CHURN-${size}-archive`,
    theirs: (round: string) => `icon2-docker-churn-${size}-${round}/kr/bk/MainNet`,
  };
  let home: Home | undefined;
  try {
    home = await startCopy(cache, join(ctx.root, tag));
    const dbDir = join(home.nodeDir, home.meta.cid, 'db', home.meta.nid);
    const tables = tableFiles(dbDir);
    out.tableBytes = tables.bytes;
    out.tableFiles = tables.files;
    out.dbBytes = await du(dbDir);

    /** One round's backups of the running node, in `order`. */
    const backups = async (
      h: Home,
      round: 'full' | 'second',
      into: ChurnFigures['full'],
      order: Array<'theirs' | 'tree' | 'archive'>,
    ): Promise<void> => {
      for (const what of order) {
        if (what === 'theirs') {
          into.theirs = await runOn('theirs', h, (x, sampler) =>
            theirsBackupOn(ctx, x, sampler, prefix.theirs(round), `${tag}-${round}`),
          );
          // Their parts stay in the node's home until their next run: not in ours' way.
          rmSync(join(h.dir, 'db_backup'), { recursive: true, force: true });
        } else {
          into[`ours ${what}`] = await runOn(`ours ${what}`, h, (x, sampler) =>
            oursBackupOn(ctx, x, sampler, what, prefix[what], `${tag}-${round}`),
          );
        }
      }
    };
    // The tree last: the churn counts from what it holds.
    await backups(home, 'full', out.full, ['theirs', 'archive', 'tree']);

    const fullTree = out.full['ours tree'];
    const first = fullTree?.ok ? await manifestOf(ctx, fullTree) : undefined;
    if (!first) throw new Error('the full tree backup failed: there is nothing to churn against');
    const dbPath = `${home.meta.cid}/db/${home.meta.nid}/`;
    const before = new Set(
      first.files.filter((f) => f.path.startsWith(dbPath)).map((f) => f.path.slice(dbPath.length)),
    );
    log(
      `load until ${TARGET_SHARE * 100} % of the db dir is in table files that the full tree ` +
        `does not hold (${(newTables(dbFiles(dbDir), before).share * 100).toFixed(2)} % now)`,
    );
    out.load = await churn(home, dbDir, before, {
      target: TARGET_SHARE,
      limitMs: LOAD_LIMIT_MS,
      workDir: join(ctx.root, `${tag}-load`),
    });

    await backups(home, 'second', out.second, ['tree', 'archive', 'theirs']);
    const secondTree = out.second['ours tree'];
    const second = secondTree?.ok ? await manifestOf(ctx, secondTree) : undefined;
    if (second) {
      const inDb = (f: { path: string }): boolean => f.path.startsWith(dbPath);
      const files = new Map(second.files.filter(inDb).map((f) => [f.path, f.size]));
      out.atSecond = newTables(files, new Set(first.files.filter(inDb).map((f) => f.path)));
    }
    // The second tree back onto the node it came from, which ran on (their backup) since: the
    // tables it holds are linked from its data dir, not fetched.
    if (secondTree?.ok) out.ontoSource = await oursRestoreOnto(ctx, home, secondTree, tag);
  } catch (error) {
    out.error = errorText(error);
  } finally {
    if (home) await removeHome(home, ctx.keep);
  }

  // The node is stopped: each restore has the machine to itself. Pairs, the first of each pair
  // taking turns (the first restore after a pause ran slower, whichever it was), medians.
  const runs: Partial<Record<Who, GoloopRestoreFigures[]>> = {};
  for (let i = 1; i <= RESTORE_PAIRS; i++) {
    for (const who of rotated(['ours tree', 'ours archive'] as const, i - 1)) {
      const backup = out.second[who];
      if (backup?.ok)
        (runs[who] ??= []).push(await oursRestore(ctx, cache, `${tag}-second-${i}`, backup));
    }
  }
  for (const [who, list] of Object.entries(runs) as Array<[Who, GoloopRestoreFigures[]]>)
    out.restores[who] = medianRun(list);

  const proxy = await startCutProxy({ targetPort: ctx.sshd.port, latencyMs: ACROSS_MS });
  try {
    const sshd = ctx.sshd;
    const across = {
      ...ctx,
      sshd: { ...sshd, actionInputs: () => ({ ...sshd.actionInputs(), port: String(proxy.port) }) },
    };
    for (const who of ['ours tree', 'ours archive'] as const) {
      const backup = out.second[who];
      if (backup?.ok)
        (out.restoresAcross ??= {})[who] = await oursRestore(
          across,
          cache,
          `${tag}-across`,
          backup,
        );
    }
    const h = await startCopy(cache, join(ctx.root, `${tag}-across-backup`));
    try {
      for (const label of ACROSS_BACKUPS) {
        const extra: Record<string, string> =
          label === '1 connection' ? { 'ssh-connections': '1' } : {};
        const name = label === '1 connection' ? 'one' : 'default';
        (out.backupsAcross ??= {})[label] = await runOn('ours tree', h, (x, sampler) =>
          oursBackupOn(
            across,
            x,
            sampler,
            'tree',
            `CHURN-${size}-across-${name}`,
            `${tag}-across-${name}`,
            extra,
          ),
        );
      }
    } finally {
      await removeHome(h, ctx.keep);
    }
  } catch (error) {
    out.error ??= errorText(error);
  } finally {
    await proxy.stop();
  }
  return out;
}

const manifestOf = (ctx: GoloopBenchContext, b: GoloopBackupFigures): Promise<TreeManifest> =>
  readJson<TreeManifest>(ctx.s3, ctx.bucket, `${b.keys?.[0] ?? ''}/manifest.json`);
