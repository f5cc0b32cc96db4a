/** Ours: the packaged action (`node-kind: goloop`), backup and restore (see index.ts). */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { repoRoot } from '../../bed/paths.js';
import type { RunResult } from '../../bed/runner.js';
import {
  assertActionOk,
  logger,
  modifiedMs,
  parseDurationText,
  q,
  runTimed,
  summaryRow,
} from '../kit.js';
import type { GoloopBackupFigures, GoloopBenchContext, GoloopRestoreFigures } from './figures.js';
import { chainInfo, gapSince, startCopy } from './node.js';
import { gapFigures, restoreScenario, scenario } from './scenario.js';

const log = logger('goloop');

/** The action's main bundle: dist/, or the private copy that PREP_TEST_DIST names (as in test/e2e). */
function mainBundle(): string {
  return join(process.env.PREP_TEST_DIST || join(repoRoot, 'dist'), 'main/index.js');
}

/** Why the action cannot back up a goloop node yet, or undefined when it can. */
export function oursMissing(): string | undefined {
  const yml = readFileSync(join(repoRoot, 'action.yml'), 'utf8');
  if (!/^ {2}node-kind:/m.test(yml)) return 'action.yml has no node-kind input yet';
  const bundle = mainBundle();
  if (!existsSync(bundle)) return `${bundle} is missing: npm run package`;
  if (!/["']node-kind["']/.test(readFileSync(bundle, 'utf8')))
    return `${bundle} has no node-kind input yet: npm run package`;
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

const oursPrefix = (sizeGib: number): string => `ICON2-${String(sizeGib).replace('.', 'p')}`;

export async function oursBackup(
  ctx: GoloopBenchContext,
  cache: string,
  sizeGib: number,
): Promise<GoloopBackupFigures> {
  const prefix = oursPrefix(sizeGib);
  const dir = join(ctx.root, `goloop-${sizeGib}-ours`);
  return scenario(
    'ours',
    ctx.keep,
    () => startCopy(cache, dir),
    async (home, sampler) => {
      const h0 = (await chainInfo(home)).height;
      await sampler.start();
      log(`ours: backup, ${sizeGib} GiB`);
      const { r, rss } = await runOurs(ctx, `goloop-${sizeGib}-ours-backup`, {
        mode: 'backup',
        'node-kind': 'goloop',
        'data-dir': home.nodeDir,
        'peer-url': `${home.rpcUrl}/admin/chain`,
        chain: home.meta.channel,
        prefix,
        'permanent-copy': 'false',
      });
      const disk = await sampler.stop();
      const gap = await gapSince(home, h0);
      const listed = await modifiedMs(ctx.s3, ctx.bucket, `${prefix}/backup_list`);
      return {
        name: 'ours',
        ok: true,
        ...gapFigures(gap),
        downtimeSelfReported: Number(r.outputs['downtime-seconds'] ?? NaN),
        stopToListedSeconds: listed !== undefined ? (listed - gap.lastBeforeMs) / 1000 : undefined,
        stopToListedSelfReported: parseDurationText(summaryRow(r.summary, 'Stop to listed')),
        wallSeconds: r.durationMs / 1000,
        runnerPeakRssBytes: rss,
        hostExtraDiskBytes: disk.extraDu,
        archiveBytes: Number(r.outputs.size),
        parts: 1,
        keys: r.outputs.key ? [r.outputs.key] : [],
        height: Number(r.outputs['block-height']),
      };
    },
  );
}

export async function oursRestore(
  ctx: GoloopBenchContext,
  cache: string,
  sizeGib: number,
  backup: GoloopBackupFigures,
): Promise<GoloopRestoreFigures> {
  return restoreScenario('ours', ctx, cache, sizeGib, backup, async (home) => {
    const { rss } = await runOurs(ctx, `goloop-${sizeGib}-ours-restore`, {
      mode: 'restore',
      'node-kind': 'goloop',
      snapshot: backup.keys?.[0] ?? '',
      'data-dir': home.nodeDir,
      'peer-url': `${home.rpcUrl}/admin/chain`,
      'start-command': `bash ${q(home.startScript)}`,
      prefix: oursPrefix(sizeGib),
    });
    return { runnerPeakRssBytes: rss };
  });
}
