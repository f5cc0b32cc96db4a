/**
 * mode: restore. Provisions a fresh or broken node from a snapshot without ever leaving it
 * with less than it had: the archive streams into a staging folder beside the data dir,
 * is checked, and only then takes the data dir's place; the old one is kept until the node
 * has come back up to the snapshot's height.
 */
import * as core from '@actions/core';
import { Outputs, State } from '../constants.js';
import {
  ActionError,
  HostError,
  IntegrityError,
  RemoteCommandError,
  errorMessage,
} from '../errors.js';
import { formatBytes, formatDuration, formatRate, secondsSince } from '../format.js';
import { NodeControl, currentRunId } from '../node-control.js';
import type { PreparedStep } from '../node-kind/host.js';
import { connectNode, type Connect } from '../node-kind/index.js';
import { dirname } from '../node-kind/remote.js';
import { RESTORE_STAGE_PREFIX } from '../node-kind/restore-commands.js';
import { NODE_LOST } from '../node-kind/watchdog.js';
import { createClient, createReadClient } from '../s3/client.js';
import type { Settings, SshSettings } from '../settings.js';
import {
  rollback,
  runningNode,
  runningRefused,
  settlePrevious,
  waitForHeight,
} from './restore-node.js';
import { fetchInto, type Streamed } from './restore-stream.js';
import { streamArchive } from './restore-on-host.js';
import { checkHost, chooseForRestore } from './restore-plan.js';
import { closeUnused } from '../ssh/session.js';
import { code, writeSummaryTable } from '../summary.js';

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
  // The snapshot's bytes: an archive's ranges, a tree's objects.
  const reads = createReadClient(settings.s3);
  const snapshot = await chooseForRestore(settings, client, reads);
  const { tree, manifest, size, height, snapshotKey } = snapshot;

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
  let swapped = false;
  // The data channel connects while the host is checked; it does nothing before its go line.
  const remote = tree ? host.receiveTree(stage) : host.extract(stage);
  // A tree's files share 'ssh-connections' data channels (over OpenSSH, a connection each):
  // one connection moves at most its window per round trip (see README, Across a real network).
  const more = tree
    ? Array.from({ length: (settings.ssh?.connections ?? 1) - 1 }, () => host.receiveMore(stage))
    : [];
  let streamStarted = false;
  let swap: PreparedStep | undefined;
  try {
    const { ip, decoder, inDataDir, stageFound, onHost, wasRunning, hadPrevious } =
      await core.group('Check the host', () => checkHost({ settings, host, stage, snapshot }));

    // The swap waits on the host from now on, for the word that the archive proved whole.
    swap = host.swap(stage, previous, ip, node.watchdogFlag);
    // The post step removes a staging folder that a run leaves, except a tree's of ours: the next
    // run of the same snapshot goes on from it.
    if (!tree?.proven) core.saveState(State.StagingDir, stage);
    const streamed: Streamed = await core.group<Streamed>(
      `Stream ${snapshotKey} into ${stage}`,
      () =>
        tree
          ? fetchInto(remote, more, () => (streamStarted = true), settings, tree, {
              host,
              stage,
              stageFound,
              inDataDir: { paths: inDataDir, address: ip },
              onHost: onHost
                ? {
                    client,
                    bucket: settings.s3.bucket,
                    connections: settings.s3.downloadConnections,
                    unsigned: settings.s3.unsigned,
                  }
                : undefined,
            })
          : streamArchive(remote, () => (streamStarted = true), {
              client,
              reads,
              settings,
              key: snapshotKey,
              into: { host, stage, decoder },
              size,
              sha256: manifest?.sha256,
              onHost,
            }),
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
          `${tree ? '' : `; ${streamed.line ?? ''}, decompressed by ${decoder.name}`})`,
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
    if (!streamStarted) await Promise.all([remote, ...more].map((r) => closeUnused(r)));
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
