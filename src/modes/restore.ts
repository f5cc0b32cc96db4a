/**
 * mode: restore. Provisions a fresh or broken node from a snapshot without ever leaving it
 * with less than it had: the archive streams into a staging folder beside the data dir,
 * is checked, and only then takes the data dir's place; the old one is kept until the node
 * has come back up to the snapshot's height.
 */
import * as core from '@actions/core';
import { Outputs, State } from '../constants.js';
import type { S3Client } from '@aws-sdk/client-s3';
import {
  ActionError,
  HostError,
  IntegrityError,
  RemoteCommandError,
  StorageError,
  errorMessage,
} from '../errors.js';
import { formatBytes, formatDuration, formatRate, secondsSince } from '../format.js';
import { manifestKey } from '../naming.js';
import { NodeControl, currentRunId } from '../node-control.js';
import type { PreparedStep } from '../node-kind/host.js';
import { connectNode, type Connect, type NodeHost } from '../node-kind/index.js';
import { dirname, requireArchiveTools } from '../node-kind/remote.js';
import { RESTORE_STAGE_PREFIX } from '../node-kind/restore-commands.js';
import { NODE_LOST } from '../node-kind/watchdog.js';
import { chooseDecoder, type Decoder } from '../node-kind/extract.js';
import { createClient, createReadClient } from '../s3/client.js';
import { readManifest } from '../s3/store.js';
import type { Settings, SshSettings } from '../settings.js';
import { chooseSnapshot } from '../snapshots.js';
import {
  removeLeftStages,
  rollback,
  runningNode,
  runningRefused,
  settlePrevious,
  waitForHeight,
} from './restore-node.js';
import { foreignTree, ourTree } from './restore-tree.js';
import { fetchInto, objectSize, streamInto, type Streamed } from './restore-stream.js';
import { fetchOnHost } from './restore-on-host.js';
import { hostFetchBytes } from '../node-kind/host-fetch.js';
import { closeUnused, type RemoteStream } from '../ssh/session.js';
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
  // The snapshot's bytes: an archive's ranges, a tree's objects.
  const reads = createReadClient(settings.s3);
  const { chosen, tree } = await core.group('Choose the snapshot', async () => {
    if (FOREIGN_POINTER.test(opts.snapshot)) {
      core.info(`Snapshot: the tree that ${opts.snapshot} points at`);
      return { chosen: undefined, tree: await foreignTree(opts.snapshot, settings.node.chain) };
    }
    const c = await chooseSnapshot(client, settings.s3, opts.snapshot);
    core.info(`Snapshot: ${c.key}${c.listed ? '' : ' (not in backup_list: it may be incomplete)'}`);
    return {
      chosen: c,
      tree: c.name.format === 'tree' ? await ourTree(client, reads, settings, c.key) : undefined,
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
  // A tree's files share 'ssh-connections' data channels (over OpenSSH, a connection each):
  // one connection moves at most its window per round trip (see README, Across a real network).
  const more = tree
    ? Array.from({ length: (settings.ssh?.connections ?? 1) - 1 }, () => host.receiveMore(stage))
    : [];
  let streamStarted = false;
  let swap: PreparedStep | undefined;
  try {
    const { ip, decoder, inDataDir, stageFound, onHost } = await core.group(
      'Check the host',
      async () => {
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
        // A tree of ours onto a data dir that holds tables of it: those are linked into the
        // staging folder once their sha256 proves them (tree/fetch.ts), and take no more room.
        const inDataDir =
          tree?.proven && probe.dataDirPresent
            ? await host.tablesInDataDir(tree.items, probe.address)
            : [];
        const sizes = new Map(tree?.items.map((i) => [i.path, i.size]));
        const local = inDataDir.reduce((sum, p) => sum + (sizes.get(p) ?? 0), 0);
        if (inDataDir.length > 0) {
          core.info(
            `${inDataDir.length} table files of the data dir (${formatBytes(local)}) have the snapshot's paths and sizes: ` +
              `once their sha256 proves them they are linked, not fetched.`,
          );
        }
        // A tree in icon2-node's form proves its files by their tails, on the runner only.
        const onHost =
          (!tree || tree.proven) && hostReads(opts.downloadOn, probe.tools, snapshotKey);
        const needed =
          (tree ? tree.bytes - local : (manifest?.uncompressedBytes ?? size * 1.2)) +
          (onHost && !tree ? hostFetchBytes(size, settings.s3.downloadConnections) : 0) +
          opts.diskMarginBytes;
        const free = probe.freeBytes + freed + resumed;
        if (free < needed) {
          throw new HostError(
            `${parent} has ${formatBytes(free)} free${resumed > 0 ? ` (counting the ${formatBytes(resumed)} that this snapshot's staging folder holds)` : ''}; ` +
              `the snapshot needs ${formatBytes(needed)} ` +
              `(its ${manifest || tree ? '' : 'estimated '}size${local > 0 ? `, less the ${formatBytes(local)} of tables it may link from the data dir,` : ''} plus 'disk-margin'). Free some space and run again.`,
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
            `the ${host.restoredAs(address)}; ${tree ? 'files arrive as they are stored' : `the archive is decompressed by ${decoder.name}`}` +
            `${onHost ? ', read from S3 by the host itself' : ', relayed from S3 by the runner'}.`,
        );
        if (running) {
          core.info(
            `The node runs (${running}): it goes on serving on its current data while the snapshot streams, and is ` +
              `stopped only for the swap.`,
          );
        }
        const stageFound = probe.stages.some((s) => s.path === stage);
        return { ip: address, decoder, inDataDir, stageFound, onHost };
      },
    );

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

/** Tools that the host's own read of an archive needs (node-kind/host-fetch.ts). */
const HOST_READ_TOOLS = ['curl', 'mkfifo'];

/** Whether the host is to read the archive itself: 'download-on', and the tools it has. */
function hostReads(
  downloadOn: Settings['restore']['downloadOn'],
  tools: Set<string>,
  key: string,
): boolean {
  if (downloadOn === 'runner') return false;
  const lacks = HOST_READ_TOOLS.filter((t) => !tools.has(t));
  if (!tools.has('openssl') && !tools.has('sha256sum')) lacks.push('openssl or sha256sum');
  if (lacks.length === 0) return true;
  if (downloadOn === 'host') {
    throw new HostError(
      `'download-on: host' needs ${lacks.join(' and ')} on the host to read ${key} from S3. Install ` +
        `${lacks.length === 1 ? 'it' : 'them'}, or set 'download-on: auto' (the runner relays the archive). Nothing was changed on the host.`,
    );
  }
  core.info(`The host has no ${lacks.join(' nor ')}: the runner relays the archive from S3.`);
  return false;
}

/**
 * An archive into the staging folder: read by the host itself when it can (restore-on-host.ts),
 * else read by the runner and relayed over SSH (restore-stream.ts). With 'download-on: auto', a
 * host that cannot reach S3 falls back to the relay, over a channel of its own.
 */
async function streamArchive(
  remote: RemoteStream,
  onGo: () => void,
  a: {
    client: S3Client;
    reads: S3Client;
    settings: Settings;
    key: string;
    into: { host: NodeHost; stage: string; decoder: Decoder };
    size: number;
    sha256?: string;
    onHost: boolean;
  },
): Promise<Streamed> {
  const relay = (r: RemoteStream, go: () => void): Promise<Streamed> =>
    streamInto(r, go, a.reads, a.settings, a.key, a.into, a.size, a.sha256).then((s) => ({
      ...s,
      line: 'relayed by the runner',
    }));
  if (!a.onHost) return relay(remote, onGo);
  const got = await fetchOnHost(
    remote,
    onGo,
    a.client,
    a.settings,
    a.key,
    a.into,
    a.size,
    a.sha256,
  );
  if (!('unreachable' in got)) return { ...got, line: 'read by the host' };
  if (a.settings.restore.downloadOn === 'host') {
    throw new StorageError(
      `The host cannot read ${a.key} from S3 (${got.unreachable}). Nothing was changed on the host. Let the host ` +
        `reach the S3 endpoint, or set 'download-on: auto' or 'runner' (the runner relays the archive).`,
    );
  }
  core.info(
    `The host cannot read S3 (${got.unreachable}): the runner reads the archive and relays it over SSH.`,
  );
  const second = a.into.host.extract(a.into.stage);
  let started = false;
  try {
    return await relay(second, () => (started = true));
  } finally {
    if (!started) await closeUnused(second);
  }
}
