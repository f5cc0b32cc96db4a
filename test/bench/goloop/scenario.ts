/**
 * One scenario's frame: its home (a started copy of the cached node, or a fresh one for a
 * restore), its disk sampler, its failure as a figure, the home's goloop stopped at the end; or
 * one run on a home that goes on (the churn part's node).
 */
import { join } from 'node:path';
import { DiskSampler, du, errorText, logger } from '../kit.js';
import type {
  GoloopBackupFigures,
  GoloopBenchContext,
  GoloopRestoreFigures,
  Who,
} from './figures.js';
import { freshHome, removeHome, waitAbove, type Gap, type Home } from './node.js';

const log = logger('goloop');

/** The last height in a snapshot: the last block before the stop (the node's view). */
export function snapshotHeight(backup: GoloopBackupFigures): number {
  return Math.max(backup.lastHeightBeforeStop ?? 0, backup.height || 0);
}

/** A run's failure as its figure. */
function failed<F extends GoloopBackupFigures | GoloopRestoreFigures>(
  name: F['name'],
  since: number,
  error: unknown,
): F {
  return {
    name,
    ok: false,
    error: errorText(error),
    wallSeconds: (Date.now() - since) / 1000,
  } as F;
}

/** One run on a home that is there already, with a disk sampler of its own: a failure becomes a figure. */
export async function runOn<F extends GoloopBackupFigures | GoloopRestoreFigures>(
  name: F['name'],
  home: Home,
  body: (home: Home, sampler: DiskSampler) => Promise<F>,
): Promise<F> {
  const since = Date.now();
  const sampler = new DiskSampler(home.dir);
  try {
    return await body(home, sampler);
  } catch (error) {
    await sampler.stop();
    return failed<F>(name, since, error);
  }
}

/** One scenario in a home of its own: a failure becomes a figure, and the home's goloop is stopped. */
export async function scenario<F extends GoloopBackupFigures | GoloopRestoreFigures>(
  name: F['name'],
  keep: boolean,
  makeHome: () => Promise<Home>,
  body: (home: Home, sampler: DiskSampler) => Promise<F>,
): Promise<F> {
  const since = Date.now();
  let home: Home;
  try {
    home = await makeHome();
  } catch (error) {
    return failed<F>(name, since, error);
  }
  try {
    return await runOn(name, home, body);
  } finally {
    await removeHome(home, keep);
  }
}

/** The figures of the node's view of a stop. */
export function gapFigures(
  gap: Gap,
): Pick<GoloopBackupFigures, 'downtimeSeconds' | 'gapBlocks' | 'lastHeightBeforeStop'> {
  return {
    downtimeSeconds: gap.seconds,
    gapBlocks: gap.blocks,
    lastHeightBeforeStop: gap.lastBeforeHeight,
  };
}

/**
 * A restore into a fresh home `{root}/{tag}-{who}-restore`: `run` restores (and starts the node);
 * the wall time runs from before it to the first block above the snapshot's height. `peakDu`: a
 * peak the script saw itself, which a 200 ms sample can miss.
 */
export async function restoreScenario(
  who: Who,
  ctx: GoloopBenchContext,
  cache: string,
  tag: string,
  backup: GoloopBackupFigures,
  run: (
    home: Home,
  ) => Promise<Pick<GoloopRestoreFigures, 'phases' | 'runnerPeakRssBytes'> & { peakDu?: number }>,
): Promise<GoloopRestoreFigures> {
  const dir = join(ctx.root, `${tag}-${who.replace(' ', '-')}-restore`);
  return scenario(
    who,
    ctx.keep,
    () => freshHome(cache, dir),
    async (home, sampler) => {
      await sampler.start();
      const since = Date.now();
      log(`${who}: restore (${tag})`);
      const { peakDu, ...rest } = await run(home);
      await waitAbove(home, snapshotHeight(backup));
      const wall = (Date.now() - since) / 1000;
      const disk = await sampler.stop();
      const restored = await du(home.nodeDir);
      return {
        name: who,
        ok: true,
        wallSeconds: wall,
        // The peak less the home at the end, both taken by the sampler: what the restore held
        // and let go. (Less the node dir measured after it, the node's own writes in between
        // made this negative.)
        hostExtraDiskBytes: Math.max(disk.peakDu, peakDu ?? 0) - disk.lastDu,
        restoredBytes: restored,
        ...rest,
      };
    },
  );
}
