/**
 * The node's side of a restore, around the swap: the staging folders that earlier restores
 * left, the wait for the node's height, the rollback to the previous data dir, and what
 * becomes of that dir once the node proved itself. restore.ts runs them in its order.
 */
import * as core from '@actions/core';
import { setTimeout as sleep } from 'node:timers/promises';
import { HostError, IntegrityError, errorMessage } from '../errors.js';
import { formatBytes } from '../format.js';
import type { NodeControl } from '../node-control.js';
import type { KindFacts, StagingFolder } from '../node-kind/host.js';
import type { NodeHost } from '../node-kind/index.js';
import { NODE_LOST } from '../node-kind/watchdog.js';
import type { Settings } from '../settings.js';

/**
 * Removes the staging folders that earlier restores left beside the data dir and that this run
 * does not go on from: a tree's of another snapshot (kept when its run failed, for a next run
 * of that snapshot, and as large as a whole database), or an archive's whose run vanished before
 * it could remove it. The folder of this run's snapshot stays, and so does one that an
 * extraction still writes into (another restore of this host that runs now). Returns the bytes
 * freed.
 */
export async function removeLeftStages(
  host: NodeHost,
  stages: StagingFolder[],
  own: string,
): Promise<number> {
  const others = stages.filter((s) => s.path !== own);
  const busy = others.filter((s) => s.busy);
  for (const s of busy) {
    core.warning(
      `The staging folder ${s.path} (${formatBytes(s.bytes)}) is left alone: a restore still writes into it ` +
        `(does another run restore this host now?).`,
    );
  }
  const left = others.filter((s) => !s.busy);
  if (left.length === 0) return 0;
  const total = left.reduce((n, s) => n + s.bytes, 0);
  core.info(
    `Removing ${left.length} staging folder${left.length === 1 ? '' : 's'} that earlier restores left and this ` +
      `one does not go on from (${formatBytes(total)}): ${left.map((s) => `${s.path} (${formatBytes(s.bytes)})`).join(', ')}.`,
  );
  let freed = 0;
  for (const s of left) {
    try {
      await host.removeStaging(s.path);
      freed += s.bytes;
    } catch (error) {
      core.warning(`Could not remove the staging folder ${s.path}: ${errorMessage(error)}`);
    }
  }
  return freed;
}

/**
 * Removes the previous data dir when 'keep-previous' is false, and only once the node has
 * proved itself on the new data: started by this run, at the snapshot's height, and never
 * taken by the watchdog. Returns the path kept, if any.
 */
export async function settlePrevious(
  host: NodeHost,
  node: NodeControl,
  opts: Settings['restore'],
  dirs: { previous: string; hadPrevious: boolean },
): Promise<string | undefined> {
  if (!dirs.hadPrevious) return undefined;
  if (opts.keepPrevious) {
    core.info(`The previous data dir is kept as ${dirs.previous} ('keep-previous: true').`);
    return dirs.previous;
  }
  if (!opts.startNode) {
    core.warning(
      `The previous data dir is kept as ${dirs.previous}: 'keep-previous: false' removes it only once the node ` +
        `has reached the snapshot's height, and 'start-node: false' started nothing to prove it.`,
    );
    return dirs.previous;
  }
  if (node.lostAt !== undefined) return dirs.previous;
  await host.remove(dirs.previous);
  core.info(`Removed ${dirs.previous} ('keep-previous: false'; the node reached the height).`);
  return undefined;
}

/**
 * What shows that the node runs, asked of the host now; undefined when nothing does. Where
 * this run stopped the node, a node that runs again may be the watchdog's doing: then the
 * run has lost it, and says so.
 */
export async function runningNode(
  host: NodeHost,
  node: NodeControl,
  lostMeans: string,
): Promise<string | undefined> {
  const now = await host.runningNow(node.watchdogFlag);
  node.noteFired(now.firedAt ?? '');
  node.assertOwned(lostMeans);
  return now.running;
}

export function runningRefused(host: string, running: string): HostError {
  return new HostError(
    `The node on ${host} is running (${running}). Stop it first, or set 'stop-node: true' to let the restore stop it.`,
  );
}

export async function waitForHeight(
  host: NodeHost,
  facts: KindFacts,
  timeoutSeconds: number,
): Promise<number | undefined> {
  const start = performance.now();
  const deadline = start + timeoutSeconds * 1000;
  while (performance.now() < deadline) {
    // A node that does not answer yet is waited for; one that answers with another chain is not.
    const reached = await host.restoredHeight(facts).catch((error: unknown) => {
      if (error instanceof IntegrityError) throw error;
      return undefined;
    });
    if (reached !== undefined) return reached;
    // A node usually serves within seconds of its start: asked four times a second at first,
    // then every second, then every five after a minute (each ask is a session on the host).
    const since = performance.now() - start;
    const every = since < 10_000 ? 250 : since < 60_000 ? 1000 : 5000;
    await sleep(Math.min(every, Math.max(250, deadline - performance.now())));
  }
  return undefined;
}

/**
 * Puts the previous data dir back after a failed start. Nothing moves unless the node is
 * proved down: a failed stop command, or a node that still answers, ends the rollback with
 * both dirs where they are.
 */
export async function rollback(
  host: NodeHost,
  node: NodeControl,
  dirs: { dataDir: string; previous: string; failed: string },
  startAfter: boolean,
): Promise<void> {
  core.warning(`Rolling back: stopping the node and putting ${dirs.previous} back in place.`);
  const nothingMoved = `Nothing was moved: the restored data is in ${dirs.dataDir}, the previous in ${dirs.previous}.`;
  try {
    await node.stop();
  } catch (error) {
    throw new HostError(
      `The rollback could not stop the node (${errorMessage(error)}). ${nothingMoved}`,
    );
  }
  const running = await runningNode(host, node, nothingMoved);
  if (running) {
    throw new HostError(
      `The rollback stopped the node, yet it still runs (${running}). ${nothingMoved}`,
    );
  }
  const res = await host.rollback(dirs.previous, dirs.failed, node.watchdogFlag);
  if (res.code === NODE_LOST) {
    node.noteLost(res);
    node.assertOwned(nothingMoved);
  }
  if (res.code !== 0) {
    throw new HostError(
      `The rollback failed: ${res.stderr.trim()}. The previous data is ${dirs.previous}; put it back by hand.`,
    );
  }
  if (startAfter) await node.start();
  else await node.leaveStopped();
}
