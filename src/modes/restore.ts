/**
 * mode: restore. Provisions a fresh or broken node from a snapshot without ever leaving it
 * with less than it had: the archive streams into a staging folder beside the data dir,
 * is checked, and only then takes the data dir's place; the old one is kept until the node
 * has come back up to the snapshot's height.
 */
import * as core from '@actions/core';
import { setTimeout as sleep } from 'node:timers/promises';
import { Outputs, State } from '../constants.js';
import {
  ActionError,
  HostError,
  IntegrityError,
  RemoteCommandError,
  errorMessage,
} from '../errors.js';
import { formatBytes, formatDuration, formatRate, secondsSince } from '../format.js';
import { manifestKey } from '../naming.js';
import { NodeControl, currentRunId } from '../node-control.js';
import type { KindFacts, PreparedStep, StagingFolder } from '../node-kind/host.js';
import { connectNode, type Connect, type NodeHost } from '../node-kind/index.js';
import { dirname, requireArchiveTools, RESTORE_STAGE_PREFIX } from '../node-kind/remote.js';
import { NODE_LOST } from '../node-kind/watchdog.js';
import { chooseDecoder, type Decoder } from '../node-kind/extract.js';
import { createClient } from '../s3/client.js';
import { readManifest } from '../s3/store.js';
import type { Settings, SshSettings } from '../settings.js';
import { chooseSnapshot } from '../snapshots.js';
import { foreignTree, ourTree } from './restore-tree.js';
import { fetchInto, objectSize, streamInto, type Streamed } from './restore-stream.js';
import { closeUnused } from '../ssh/session.js';
import { code, writeSummaryTable } from '../summary.js';

/** A `snapshot` that names a tree in icon2-node's form: the URL of its `{SERVICE}.json`. */
const FOREIGN_POINTER = /^https?:\/\/[^\s]+\.json$/;

export interface RestoreResult {
  key: string;
  blockHeight: number;
  heightReached?: number;
}

export async function restore(
  settings: Settings,
  connect: Connect = connectNode,
): Promise<RestoreResult> {
  const ssh = settings.ssh as SshSettings;
  const opts = settings.restore;
  const t0 = performance.now();
  const timings: Record<string, number> = {};
  const runId = currentRunId();

  const client = createClient(settings.s3);
  const { chosen, tree } = await core.group('Choose the snapshot', async () => {
    if (FOREIGN_POINTER.test(opts.snapshot)) {
      core.info(`Snapshot: the tree that ${opts.snapshot} points at`);
      return { chosen: undefined, tree: await foreignTree(opts.snapshot, settings.node.chain) };
    }
    const c = await chooseSnapshot(client, settings.s3, opts.snapshot);
    core.info(`Snapshot: ${c.key}${c.listed ? '' : ' (not in backup_list: it may be incomplete)'}`);
    return {
      chosen: c,
      tree: c.name.format === 'tree' ? await ourTree(client, settings, c.key) : undefined,
    };
  });
  const snapshotKey = tree?.key ?? chosen?.key ?? '';
  const manifest =
    chosen && !tree
      ? await readManifest(
          client,
          settings.s3.bucket,
          manifestKey(settings.s3.manifestPrefix, chosen.key),
        )
      : undefined;
  const size = tree ? tree.bytes : await objectSize(client, settings.s3.bucket, snapshotKey);
  if (!manifest && !tree) {
    core.warning(
      `${snapshotKey} has no manifest (an archive of the original backup script?): its bytes cannot be checked against a ` +
        `recorded sha256; the decompressor's own check and tar's are all there is.`,
    );
  }
  const height = tree?.height ?? manifest?.blockHeight ?? chosen?.name.height ?? 0;

  const connection = await core.group('Connect', async () => {
    const c = await connect(settings, (dir) => core.saveState(State.KeyDir, dir), {
      nodeKind: tree?.nodeKind ?? manifest?.nodeKind ?? 'loopchain',
      facts: tree?.facts ?? manifest?.facts,
    });
    core.info(
      `Connected to ${ssh.username}@${ssh.host}:${ssh.port}; archive bytes travel over ${c.transport}.`,
    );
    return c;
  });
  const { host, shell } = connection;
  settings = connection.settings;
  const node = new NodeControl(shell, settings.node, () => host.commands(), runId);
  const dataDir = host.dataDir;
  const parent = dirname(dataDir);
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, '');
  // A tree's staging folder is named after the snapshot. One of ours is kept when a run fails:
  // the next run of the same snapshot goes on from what the manifest's sha256 proves there. One
  // in icon2-node's form proves nothing that could be kept, and is removed.
  const stage = tree
    ? `${parent}/${RESTORE_STAGE_PREFIX}tree-${tree.stageId}`
    : `${parent}/${RESTORE_STAGE_PREFIX}${runId}`;
  const previous = `${dataDir}.prev-${stamp}`;
  const failed = `${dataDir}.failed-${stamp}`;
  let wasRunning = false;
  let hadPrevious = false;
  let swapped = false;
  // The data channel connects while the host is checked; it does nothing before its go line.
  const remote = tree ? host.receiveTree(stage) : host.extract(stage);
  let streamStarted = false;
  let swap: PreparedStep | undefined;
  try {
    const { ip, decoder } = await core.group('Check the host', async () => {
      const probe = await host.checkForRestore({ nodeIp: opts.nodeIp });
      const running = probe.running;
      if (running && !opts.stopNode) throw runningRefused(ssh.host, running);
      if (opts.startNode && probe.cannotStart) {
        throw new HostError(`${probe.cannotStart} Nothing was changed on the host.`);
      }
      wasRunning = running !== undefined;
      const freed = await removeLeftStages(host, probe.stages, stage);
      // What this snapshot's own staging folder holds from an earlier run is kept, or removed
      // to make room: either way it is not needed twice.
      const resumed = probe.stages.find((s) => s.path === stage)?.bytes ?? 0;
      const needed =
        (tree?.bytes ?? manifest?.uncompressedBytes ?? size * 1.2) + opts.diskMarginBytes;
      const free = probe.freeBytes + freed + resumed;
      if (free < needed) {
        throw new HostError(
          `${parent} has ${formatBytes(free)} free${resumed > 0 ? ` (counting the ${formatBytes(resumed)} that this snapshot's staging folder holds)` : ''}; ` +
            `the snapshot needs ${formatBytes(needed)} ` +
            `(its ${manifest || tree ? '' : 'estimated '}size plus 'disk-margin'). Free some space and run again.`,
        );
      }
      hadPrevious = probe.dataDirPresent;
      const compression = chosen?.name.compression;
      if (compression) requireArchiveTools(probe.tools, compression, snapshotKey, true);
      const decoder: Decoder = compression
        ? chooseDecoder(probe.tools, compression)
        : { name: 'none' };
      if (decoder.name === 'pigz' || decoder.name === 'gzip') {
        core.notice(
          `The host decompresses with ${decoder.name}. Installing igzip there (Debian and Ubuntu package 'isal') ` +
            `makes the extraction of gzip snapshots about twice as fast.`,
        );
      }
      const address = probe.address;
      core.info(
        `Free space ${formatBytes(probe.freeBytes)}; data dir ${probe.dataDirPresent ? 'present (it will be kept)' : 'absent (fresh host)'}; ` +
          `the ${host.restoredAs(address)}; ${tree ? 'files arrive as they are stored' : `the archive is decompressed by ${decoder.name}`}.`,
      );
      if (running) {
        core.info(
          `The node runs (${running}): it goes on serving on its current data while the snapshot streams, and is ` +
            `stopped only for the swap.`,
        );
      }
      return { ip: address, decoder };
    });

    // The swap waits on the host from now on, for the word that the archive proved whole.
    swap = host.swap(stage, previous, ip, node.watchdogFlag);
    // The post step removes a staging folder that a run leaves, except a tree's of ours: the next
    // run of the same snapshot goes on from it.
    if (!tree?.proven) core.saveState(State.StagingDir, stage);
    const streamed: Streamed = await core.group<Streamed>(
      `Stream ${snapshotKey} into ${stage}`,
      () =>
        tree
          ? fetchInto(remote, () => (streamStarted = true), settings, tree, { host, stage })
          : streamInto(
              remote,
              () => (streamStarted = true),
              client,
              settings,
              snapshotKey,
              { host, stage, decoder },
              size,
              manifest?.sha256,
            ),
    );
    timings.stream = streamed.seconds;
    if (manifest && streamed.sha256 !== manifest.sha256) {
      throw new IntegrityError(
        `${snapshotKey}: sha256 ${streamed.sha256} differs from the manifest's ${manifest.sha256}: the stored archive is damaged. ` +
          `The data dir was not touched; restore another snapshot ('snapshot' input).`,
      );
    }
    const files = streamed.files;
    const expected = tree ? tree.items.length : manifest?.files;
    if (expected !== undefined && files !== expected) {
      throw new IntegrityError(
        `${snapshotKey} extracted ${files} files; its manifest says ${expected}. The data dir was not touched.`,
      );
    }

    await core.group('Swap the data dir', async () => {
      // Checked again: a node that started while the snapshot streamed must not have its data
      // dir moved from under it.
      const untouched = 'The data dir was not touched: the node runs on its previous data.';
      const running = await runningNode(host, node, untouched);
      if (running) {
        if (!opts.stopNode) throw runningRefused(ssh.host, running);
        await node.stop({ startSoon: opts.startNode });
        const still = await runningNode(host, node, untouched);
        if (still) {
          throw new HostError(
            `The stop command ran, yet the node still runs (${still}). The data dir was not touched.`,
          );
        }
      }
      const res = await swap!.go();
      if (res.code === NODE_LOST) {
        node.noteLost(res);
        node.assertOwned(untouched);
      }
      if (res.code !== 0 || res.stdout.trim() !== 'swapped') {
        throw new RemoteCommandError(
          'Moving the snapshot into place',
          res.code,
          res.stderr || res.stdout,
        );
      }
      swapped = true;
      core.saveState(State.StagingDir, '');
      core.info(`${dataDir} now holds the snapshot; the previous data (if any) is ${previous}.`);
    });

    let heightReached: number | undefined;
    if (!opts.startNode && node.isStopped) {
      await node.leaveStopped();
      core.info(`The node is left stopped ('start-node: false').`);
    }
    if (opts.startNode) {
      heightReached = await core
        .group('Start the node and wait for its height', async () => {
          const t = performance.now();
          await node.start();
          timings.downtime = node.downtimeSeconds ?? 0;
          const reached = await waitForHeight(
            host,
            // A tree's facts are in its own manifest: the block hash there is the proof.
            { ...(tree?.facts ?? manifest?.facts), blockHeight: height },
            opts.healthTimeoutSeconds,
          );
          timings.health = secondsSince(t);
          if (reached === undefined) {
            throw new ActionError(
              `The node did not reach block height ${height} within ${formatDuration(opts.healthTimeoutSeconds)}.`,
            );
          }
          core.info(`The node is at block height ${reached} (the snapshot's: ${height}).`);
          return reached;
        })
        .catch(async (error) => {
          if (!hadPrevious) {
            throw new ActionError(
              `${errorMessage(error)} The host had no previous data dir to roll back to; the restored data stays in ` +
                `${dataDir}. Look at the node's logs.`,
            );
          }
          await rollback(host, node, { dataDir, previous, failed }, wasRunning).catch((e) => {
            throw new ActionError(`${errorMessage(error)} ${errorMessage(e)}`);
          });
          throw new ActionError(
            `${errorMessage(error)} The previous data dir was put back in place (the restored one is kept as ` +
              `${failed})${wasRunning ? ' and the node started on it' : ''}. Look at the node's logs before running again.`,
          );
        });
    }
    const previousKept = await core.group('The previous data dir', () =>
      settlePrevious(host, node, opts, { previous, hadPrevious }),
    );
    // The watchdog acted while this run held the node down: the restore stands, but the run
    // says so rather than pass as if nothing had happened.
    node.assertOwned(
      `The restore itself went through${heightReached !== undefined ? ` and the node reached block height ${heightReached}` : ''}; ` +
        `the previous data dir is kept as ${previous}. Raise 'max-downtime' above the time the stop, the swap and the start take.`,
    );

    timings.total = secondsSince(t0);
    core.setOutput(Outputs.Key, snapshotKey);
    core.setOutput(Outputs.BlockHeight, String(height));
    if (heightReached !== undefined) core.setOutput(Outputs.HeightReached, String(heightReached));
    if (streamed.sha256) core.setOutput(Outputs.Sha256, streamed.sha256);
    core.setOutput(Outputs.Size, String(streamed.bytes));
    core.setOutput(Outputs.DurationSeconds, timings.total.toFixed(1));
    await writeSummaryTable('restore', [
      ['Snapshot', code(snapshotKey)],
      ['Host', `${ssh.host} (${host.restoredAs(ip)})`],
      [
        'Block height',
        `${height} in the snapshot${heightReached !== undefined ? `, ${heightReached} reached` : ''}`,
      ],
      tree
        ? [
            'Tree',
            `${tree.items.length} files, ${formatBytes(tree.bytes)}; ${streamed.line ?? ''}; ` +
              (tree.proven
                ? 'every file matches its sha256 in the manifest'
                : 'sizes and tail hashes only (no manifest of ours)'),
          ]
        : [
            'Archive',
            `${formatBytes(streamed.bytes)}, ${manifest ? 'sha256 matches the manifest' : 'no manifest (checked by the decompressor)'}`,
          ],
      [
        tree ? 'Transfer' : 'Stream and extract',
        `${formatDuration(timings.stream)} (${formatRate(streamed.bytes, timings.stream)}` +
          `${tree ? '' : `; decompressed by ${decoder.name}`})`,
      ],
      [
        'Node downtime',
        wasRunning && timings.downtime !== undefined
          ? `${formatDuration(timings.downtime)} (stopped only for the swap)`
          : 'the node was not running',
      ],
      ['Previous data', previousKept ? code(previousKept) : hadPrevious ? 'removed' : 'none'],
      ['Total', formatDuration(timings.total)],
    ]);
    return { key: snapshotKey, blockHeight: height, heightReached };
  } finally {
    // Unsent go and swap lines: the commands waiting for them end with nothing done.
    swap?.cancel();
    if (!streamStarted) await closeUnused(remote);
    if (!swapped && streamStarted && tree?.proven) {
      core.info(
        `The staging folder ${stage} is kept: a run of the same snapshot goes on from what it holds.`,
      );
      // The post step removes the folder that saved state names: not this one.
      core.saveState(State.StagingDir, '');
    } else if (!swapped && streamStarted) {
      await host
        .removeStaging(stage)
        .then(() => core.saveState(State.StagingDir, ''))
        .catch((e) =>
          core.warning(`Could not remove the staging folder ${stage}: ${errorMessage(e)}`),
        );
    }
    await node.ensureStarted();
    connection.close();
    core.saveState(State.KeyDir, '');
  }
}

/**
 * Removes the staging folders that earlier restores left beside the data dir and that this run
 * does not go on from: a tree's of another snapshot (kept when its run failed, for a next run
 * of that snapshot, and as large as a whole database), or an archive's whose run vanished before
 * it could remove it. The folder of this run's snapshot stays, and so does one that an
 * extraction still writes into (another restore of this host that runs now). Returns the bytes
 * freed.
 */
async function removeLeftStages(
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
async function settlePrevious(
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
async function runningNode(
  host: NodeHost,
  node: NodeControl,
  lostMeans: string,
): Promise<string | undefined> {
  const now = await host.runningNow(node.watchdogFlag);
  node.noteFired(now.firedAt ?? '');
  node.assertOwned(lostMeans);
  return now.running;
}

function runningRefused(host: string, running: string): HostError {
  return new HostError(
    `The node on ${host} is running (${running}). Stop it first, or set 'stop-node: true' to let the restore stop it.`,
  );
}

async function waitForHeight(
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
    // A node usually serves within seconds of its start: asked every half second at first,
    // then every five (each ask is a session on the host).
    const every = performance.now() - start < 60_000 ? 500 : 5000;
    await sleep(Math.min(every, Math.max(250, deadline - performance.now())));
  }
  return undefined;
}

/**
 * Puts the previous data dir back after a failed start. Nothing moves unless the node is
 * proved down: a failed stop command, or a node that still answers, ends the rollback with
 * both dirs where they are.
 */
async function rollback(
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
