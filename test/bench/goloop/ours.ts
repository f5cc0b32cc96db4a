/**
 * Ours: the packaged action (`node-kind: goloop`), backup and restore, as a tree (the goloop
 * default) or as one tar.zst archive (`format: archive`); see index.ts.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../../bed/paths.js';
import type { RunResult } from '../../bed/runner.js';
import type { TreeManifest } from '../../../src/tree/layout.js';
import {
  assertActionOk,
  errorText,
  listObjects,
  logger,
  modifiedMs,
  parseDurationText,
  q,
  readJson,
  runTimed,
  summaryRow,
  type DiskSampler,
} from '../kit.js';
import type {
  GoloopBackupFigures,
  GoloopBenchContext,
  GoloopRestoreFigures,
  OursFormat,
} from './figures.js';
import { chainInfo, gapSince, startCopy, waitAbove, type Home } from './node.js';
import { gapFigures, restoreScenario, scenario } from './scenario.js';

const log = logger('goloop');

/** The action's main bundle: dist/, or the private copy that PREP_TEST_DIST names (as in test/e2e). */
function mainBundle(): string {
  return join(process.env.PREP_TEST_DIST || join(repoRoot, 'dist'), 'main/index.js');
}

/** Why the action cannot back up a goloop node in both formats yet, or undefined when it can. */
export function oursMissing(): string | undefined {
  const yml = readFileSync(join(repoRoot, 'action.yml'), 'utf8');
  if (!/^ {2}node-kind:/m.test(yml)) return 'action.yml has no node-kind input yet';
  const bundle = mainBundle();
  if (!existsSync(bundle)) return `${bundle} is missing: npm run package`;
  const text = readFileSync(bundle, 'utf8');
  if (!/["']node-kind["']/.test(text))
    return `${bundle} has no node-kind input yet: npm run package`;
  if (!text.includes('prep-snapshot-tree/1'))
    return `${bundle} has no tree format yet: npm run package`;
  return undefined;
}

/** The action's main step, its failure thrown, on the bundle that mainBundle() names. */
async function runOurs(
  ctx: GoloopBenchContext,
  name: string,
  inputs: Record<string, string>,
): Promise<{ r: RunResult; rss?: number }> {
  const ran = await runTimed(ctx, name, inputs, mainBundle());
  assertActionOk(ran.r);
  return ran;
}

/** Where the goloop part stores ours at a size, in a format. */
const oursPrefix = (sizeGib: number, format: OursFormat): string =>
  `ICON2-${String(sizeGib).replace('.', 'p')}-${format}`;

export async function oursBackup(
  ctx: GoloopBenchContext,
  cache: string,
  sizeGib: number,
  format: OursFormat,
): Promise<GoloopBackupFigures> {
  const tag = `goloop-${sizeGib}`;
  return scenario(
    `ours ${format}`,
    ctx.keep,
    () => startCopy(cache, join(ctx.root, `${tag}-ours-${format}`)),
    (home, sampler) => oursBackupOn(ctx, home, sampler, format, oursPrefix(sizeGib, format), tag),
  );
}

/**
 * The action's backup (`format` set, whatever the default) of the node that runs in `home`,
 * under `prefix`; `tag` names its output files in the work dir. A tree's bytes moved are its
 * manifest's `sent`: the files that were not stored before.
 */
export async function oursBackupOn(
  ctx: GoloopBenchContext,
  home: Home,
  sampler: DiskSampler,
  format: OursFormat,
  prefix: string,
  tag: string,
  /** More inputs, beside the bench's. */
  extra: Record<string, string> = {},
): Promise<GoloopBackupFigures> {
  const h0 = (await chainInfo(home)).height;
  await sampler.start();
  log(`ours ${format}: backup (${tag})`);
  const { r, rss } = await runOurs(ctx, `${tag}-ours-${format}-backup`, {
    mode: 'backup',
    'node-kind': 'goloop',
    format,
    'data-dir': home.nodeDir,
    'peer-url': `${home.rpcUrl}/admin/chain`,
    chain: home.meta.channel,
    prefix,
    'permanent-copy': 'false',
    ...extra,
  });
  const disk = await sampler.stop();
  // The stop comes after table files go up ahead of it, for as long as they take, and a gap in
  // the blocks meanwhile is not the stop's. A tree reads its height after them; an archive is
  // named before them: the stop is near where its own stop to listed puts it.
  const atStop = Number(r.outputs['block-height']);
  const listed = await modifiedMs(ctx.s3, ctx.bucket, `${prefix}/backup_list`);
  const selfStopToListed = parseDurationText(summaryRow(r.summary, 'Stop to listed'));
  const stopNear =
    listed !== undefined && selfStopToListed !== undefined
      ? listed - selfStopToListed * 1000 - 2000
      : 0;
  const gap = await gapSince(home, atStop > h0 ? atStop : h0, stopNear);
  const key = r.outputs.key ?? '';
  const size = Number(r.outputs.size);
  const tree =
    format === 'tree'
      ? await readJson<TreeManifest>(ctx.s3, ctx.bucket, `${key}/manifest.json`)
      : undefined;
  const marks = tree ? await treeMarks(ctx, prefix, key, gap.lastBeforeMs) : undefined;
  // An archive's manifest has its own timings too (the send ahead of the stop among them).
  const archive =
    format === 'archive' && key
      ? await readJson<{ timings: Record<string, number> }>(
          ctx.s3,
          ctx.bucket,
          `_prep-snapshot/${key}.json`,
        ).catch(() => undefined)
      : undefined;
  return {
    name: `ours ${format}`,
    ok: true,
    ...gapFigures(gap),
    downtimeSelfReported: Number(r.outputs['downtime-seconds'] ?? NaN),
    stopToListedSeconds: listed !== undefined ? (listed - gap.lastBeforeMs) / 1000 : undefined,
    stopToListedSelfReported: selfStopToListed,
    wallSeconds: r.durationMs / 1000,
    runnerPeakRssBytes: rss,
    hostExtraDiskBytes: disk.extraDu,
    archiveBytes: size,
    movedBytes: tree ? tree.sent.bytes : size,
    movedFiles: tree ? tree.sent.files : 1,
    parts: tree ? tree.files.length : 1,
    ...(tree ? { phases: marks, timings: tree.timings } : {}),
    ...(archive ? { timings: archive.timings } : {}),
    prefix,
    keys: key ? [key] : [],
    height: Number(r.outputs['block-height']),
  };
}

/**
 * A tree backup's course in the bucket's own times: seconds from the stop (the node's view) to
 * the first and the last object it stored, its manifest, and backup_list.
 */
async function treeMarks(
  ctx: GoloopBenchContext,
  prefix: string,
  key: string,
  stopMs: number,
): Promise<Record<string, number>> {
  const listed = await listObjects(ctx.s3, ctx.bucket, `${prefix}/`);
  const at = (k: string): number | undefined => listed.find((o) => o.key === k)?.modifiedMs;
  const sent = listed
    .filter((o) => o.key.startsWith(`${prefix}/objects/`) && o.modifiedMs >= stopMs)
    .map((o) => o.modifiedMs);
  const marks: Record<string, number | undefined> = {
    'first object': sent.length ? Math.min(...sent) : undefined,
    'last object': sent.length ? Math.max(...sent) : undefined,
    manifest: at(`${key}/manifest.json`),
    listed: at(`${prefix}/backup_list`),
  };
  return Object.fromEntries(
    Object.entries(marks)
      .filter((e): e is [string, number] => e[1] !== undefined)
      .map(([k, v]) => [k, (v - stopMs) / 1000]),
  );
}

/** The action's restore of `backup` (ours, either format) into a fresh home. */
export async function oursRestore(
  ctx: GoloopBenchContext,
  cache: string,
  tag: string,
  backup: GoloopBackupFigures,
): Promise<GoloopRestoreFigures> {
  const format = backup.name.replace('ours ', '');
  return restoreScenario(backup.name, ctx, cache, tag, backup, async (home) => {
    const { rss } = await runOurs(
      ctx,
      `${tag}-ours-${format}-restore`,
      restoreInputs(home, backup),
    );
    return { runnerPeakRssBytes: rss };
  });
}

/** The inputs of the action's restore of `backup` (ours) onto the node dir of `home`. */
function restoreInputs(home: Home, backup: GoloopBackupFigures): Record<string, string> {
  return {
    mode: 'restore',
    'node-kind': 'goloop',
    snapshot: backup.keys?.[0] ?? '',
    'data-dir': home.nodeDir,
    'peer-url': `${home.rpcUrl}/admin/chain`,
    'start-command': `bash ${q(home.startScript)}`,
    prefix: backup.prefix ?? '',
  };
}

/** A restore onto a node that held most of the snapshot: what it fetched and what it took from its data dir. */
export interface OntoSourceFigures {
  ok: boolean;
  error?: string;
  wallSeconds?: number;
  fetchedFiles?: number;
  fetched?: string;
  takenFiles?: number;
  runnerPeakRssBytes?: number;
}

/**
 * The action's restore of the tree `backup` onto the node that runs in `home` (the one it was
 * taken from, which has moved on since): stopped for the swap, started again, up to a block
 * above the snapshot's height.
 */
export async function oursRestoreOnto(
  ctx: GoloopBenchContext,
  home: Home,
  backup: GoloopBackupFigures,
  tag: string,
): Promise<OntoSourceFigures> {
  try {
    const since = Date.now();
    log(`ours tree: restore onto the node it came from (${tag})`);
    const { r, rss } = await runOurs(ctx, `${tag}-ours-tree-restore-onto-source`, {
      ...restoreInputs(home, backup),
      'stop-node': 'true',
    });
    await waitAbove(home, backup.height ?? 0);
    const m = /(\d+) files fetched \(([^)]+)\)(?:, (\d+) taken from the data dir)?/.exec(r.stdout);
    return {
      ok: true,
      wallSeconds: (Date.now() - since) / 1000,
      fetchedFiles: m ? Number(m[1]) : undefined,
      fetched: m?.[2],
      takenFiles: m ? Number(m[3] ?? 0) : undefined,
      runnerPeakRssBytes: rss,
    };
  } catch (error) {
    return { ok: false, error: errorText(error) };
  }
}
