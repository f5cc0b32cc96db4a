/**
 * The part of mode: backup that holds the node down: stop, freeze a copy by hard links, start.
 * The node is down only while the copy freezes; the copy settles (and a tree's listing and
 * proofs run, see backup-tree.ts) while it starts again.
 */
import * as core from '@actions/core';
import { HostError, RemoteCommandError } from '../errors.js';
import { formatDuration } from '../format.js';
import type { NodeControl } from '../node-control.js';
import type { Sizes } from '../node-kind/host.js';
import type { NodeHost } from '../node-kind/index.js';
import type { Settings } from '../settings.js';
import type { Timings } from './backup-publish.js';
import { beginTree, type TreeBackupArgs, type TreeRun } from './backup-tree.js';

/**
 * Stops the node, freezes `frozen` and starts the node again; the downtime goes into
 * `timings`. `onTreeRun` has a tree's run as soon as it is begun, so that a failure after that
 * can still say what its send held.
 */
export function stopFreezeStart(a: {
  host: NodeHost;
  node: NodeControl;
  settings: Settings;
  frozen: string;
  timings: Timings;
  tree?: TreeBackupArgs;
  onTreeRun: (run: TreeRun) => void;
}): Promise<Sizes> {
  const { host, node, frozen } = a;
  return core.group('Stop, freeze, start', async () => {
    // Opened ahead, like the start: it runs the moment the node has stopped. So does a tree's
    // listing, the moment the copy is frozen: no session is set up on the host while the node
    // starts and takes its CPU.
    const freezing = host.freeze(frozen, node.watchdogFlag);
    const listing = a.tree ? host.listTreeAhead(frozen) : undefined;
    try {
      await node.stop({ startSoon: true });
      await freezing.go();
    } catch (error) {
      await freezing.cancel();
      await listing?.cancel();
      node.noteLost(error);
      await node.ensureStarted();
      node.assertOwned('The copy was not frozen; nothing was published.');
      throw explainFreeze(error, host);
    }
    // The node comes back up while its frozen copy is read: they share no file that changes.
    // An archive's stream waits for the node to run again: started together, the two shared
    // the host's CPU and the node was down twice as long (4.7 s against 2.3 s on the bench)
    // for no earlier listing.
    const settled = host.settleFrozen(frozen);
    // A tree's files are listed meanwhile (a walk of the folder, as light as the measure) and
    // those stored already proven by their tails (a few bytes each); the others are sent once
    // the node runs (see beginTree). The listing runs beside the settling: it is the frozen
    // copy's unless a leftover table was pruned.
    const started = node.ensureStarted().then(() => {
      if (node.isStopped) throw notStarted(a.settings);
    });
    if (a.tree && listing) {
      const early = listing.go();
      early.catch(() => undefined);
      a.onTreeRun(
        beginTree(
          a.tree,
          settled.then((s) => (s.pruned > 0 ? host.listTree(frozen) : early)),
          started,
        ),
      );
    }
    const [start, prepared] = await Promise.allSettled([started, settled]);
    if (start.status === 'rejected') throw start.reason;
    a.timings.downtime = node.downtimeSeconds ?? 0;
    core.info(`The node was down for ${formatDuration(a.timings.downtime)}.`);
    if (prepared.status === 'rejected') throw prepared.reason;
    return prepared.value;
  });
}

function explainFreeze(error: unknown, host: NodeHost): unknown {
  if (
    error instanceof RemoteCommandError &&
    /Invalid cross-device link|Operation not permitted|hard link/i.test(error.stderr)
  ) {
    // 'consistency: stop' is loopchain's way around it; a goloop chain is only frozen with links.
    const instead =
      host.kind === 'loopchain'
        ? `Set 'consistency: stop' to archive while the node is stopped.`
        : `A goloop chain is frozen with hard links only: keep its node dir on a filesystem that has them.`;
    return new HostError(
      `Hard links are not possible in the data dir's filesystem (${error.stderr.trim().split('\n')[0]}). ${instead}`,
    );
  }
  return error;
}

function notStarted(settings: Settings): HostError {
  return new HostError(
    `The node did not start again after the freeze (if the connection was lost, the start command ` +
      `goes on on the host by itself). The watchdog on the host retries within ` +
      `${settings.node.maxDowntimeSeconds} s; check the node now. No snapshot was published.`,
  );
}
