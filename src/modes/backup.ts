/**
 * mode: backup. Reads like the procedure: connect, check, stop, freeze, start, stream,
 * publish, copy, retain. The node is down only for the stop, the freeze and the start.
 */
import * as core from '@actions/core';
import { ACTION_VERSION, Outputs, State } from '../constants.js';
import { HostError, NodeLostError, RemoteCommandError, errorMessage } from '../errors.js';
import { formatBytes, formatDuration, formatRate, secondsSince } from '../format.js';
import type { Manifest } from '../manifest.js';
import { archiveKey, archiveName, dateDaysAgo, listEntry, manifestKey } from '../naming.js';
import { NodeControl, currentRunId } from '../node-control.js';
import type { Sizes } from '../node-kind/host.js';
import { connectNode, type Connect, type NodeHost } from '../node-kind/index.js';
import { dirname, pruneLocalCopiesCommand } from '../node-kind/remote.js';
import { addEntry, updateBackupList } from '../s3/backup-list.js';
import { checkBucket, createClient, objectUrl } from '../s3/client.js';
import { deleteKeys, writeJson } from '../s3/store.js';
import { planParts } from '../s3/upload.js';
import { MAX_UPLOAD_BUFFER_BYTES, type Settings, type SshSettings } from '../settings.js';
import { closeUnused, type RemoteStream } from '../ssh/session.js';
import { readEarlier } from '../tree/reuse.js';
import { verifyStored } from './verify.js';
import { archiveBound, streamArchive } from './backup-stream.js';
import {
  backupTree,
  beginTree,
  startTree,
  type TreeBackupArgs,
  type TreeRun,
  type TreeStart,
} from './backup-tree.js';
import {
  applyRetention,
  permanentCopy,
  permanentTreeCopy,
  writeSummary,
  writeTreeSummary,
  type Timings,
} from './backup-publish.js';

export interface BackupResult {
  skipped: boolean;
  key?: string;
}

export async function backup(
  settings: Settings,
  now: () => Date = () => new Date(),
  connect: Connect = connectNode,
): Promise<BackupResult> {
  const ssh = settings.ssh as SshSettings;
  const runId = currentRunId();
  const timings: Timings = {};
  const t0 = performance.now();

  const { connection, client, earlier } = await core.group('Connect', async () => {
    const s3 = createClient(settings.s3);
    await checkBucket(s3, settings.s3);
    core.info(`Bucket '${settings.s3.bucket}' is reachable.`);
    const c = await connect(settings, (dir) => core.saveState(State.KeyDir, dir));
    core.info(
      `Connected to ${ssh.username}@${ssh.host}:${ssh.port}; archive bytes travel over ${c.transport}.`,
    );
    // A tree's earlier snapshots and journals need nothing of the host: read from now on, while
    // the host is checked (its format is known once connected: it follows the node's kind).
    const e = c.settings.backup.format === 'tree' ? readEarlier(s3, c.settings) : undefined;
    e?.catch(() => undefined);
    return { connection: c, client: s3, earlier: e };
  });

  const { host, shell } = connection;
  settings = connection.settings;
  const node = new NodeControl(shell, settings.node, () => host.commands(), runId);
  const tree = settings.backup.format === 'tree';
  let stage: string | undefined;
  let remote: RemoteStream | undefined;
  let treeStart: TreeStart | undefined;
  let treeRun: TreeRun | undefined;
  let streamStarted = false;
  let uploaded: string[] = [];
  let published = false;
  try {
    const layout = await core.group('Check the host', async () => {
      const l = await host.inspect({
        compression: tree ? undefined : settings.backup.compression,
        consistency: settings.backup.consistency,
      });
      for (const stale of l.stale) {
        core.warning(
          `Removing ${stale}, the staging folder of a run that vanished over a day ago.`,
        );
        await host.remove(stale);
      }
      core.info(`Data dir ${l.description}.`);
      return l;
    });

    const at = await core.group('Block height', async () => {
      const h = await host.height();
      if (h === undefined) return undefined;
      // The manifest's facts (the block's hash, where the kind has one) are read now, while
      // the node answers: after the stop they would be in the way of the publish.
      const f = await host.facts(h);
      core.info(
        `The node reports block height ${h}${f.blockHash ? `, block hash ${f.blockHash}` : ''}.`,
      );
      return { height: h, facts: f };
    });
    if (at === undefined) {
      core.warning(
        `The node's peer API (${settings.node.peerUrl}) does not answer: no backup is taken of a node that is not ` +
          `in service. Starting the node in case it is down; the next scheduled run will take the backup.`,
      );
      await core.group('Start the node', () => node.start());
      core.setOutput(Outputs.Skipped, 'true');
      await core.summary
        .addHeading('prep-snapshot: backup skipped', 3)
        .addRaw(`The peer API of ${ssh.host} did not answer; the start command was run.`, true)
        .write();
      return { skipped: true };
    }
    const { height, facts } = at;

    // The parts are planned, and a part size too small refused, before the node stops.
    const parts = planParts(
      tree ? 0 : archiveBound(layout.dataBytes),
      settings.s3,
      MAX_UPLOAD_BUFFER_BYTES,
    );
    if (!tree && parts.queueSize < settings.s3.queueSize) {
      core.info(
        `Parts of ${formatBytes(parts.partSize)}: ${parts.queueSize} in flight instead of ${settings.s3.queueSize}, to keep ` +
          `the runner's part buffers within ${formatBytes(MAX_UPLOAD_BUFFER_BYTES)}.`,
      );
    }

    const snapshotAt = now();
    const name = archiveName(
      settings.s3.service,
      height,
      snapshotAt,
      tree ? 'tree' : settings.backup.compression,
    );
    const key = archiveKey(settings.s3.prefix, name);
    let source = host.dataDir;
    let sizes: Sizes;

    const localCopy =
      settings.backup.localCopy && !tree
        ? `${settings.node.prepDir}/data/Backup/${name.date}/${name.file}`
        : undefined;
    if (settings.backup.consistency === 'hardlink') {
      stage = layout.sameDevice
        ? `${dirname(host.dataDir)}/.prep-snapshot-staging-${runId}`
        : `${host.dataDir}/.prep-snapshot-staging-${runId}`;
      core.saveState(State.StagingDir, stage);
      source = stage;
    }
    // The data channel connects while the node stops and the copy freezes; it archives
    // nothing before its go line. A tree's two channels do the same, and what the bucket
    // holds is read meanwhile.
    let treeArgs: TreeBackupArgs | undefined;
    if (tree) {
      treeStart = startTree({
        settings,
        client,
        host,
        dir: source,
        device: layout.device,
        facts,
        runId,
        earlier,
      });
      treeArgs = {
        settings,
        client,
        host,
        dir: source,
        name,
        height,
        facts,
        start: treeStart,
        snapshotAt,
        runId,
        timings,
        beforePublish: async () => {
          if (settings.backup.consistency !== 'stop') return;
          await node.start();
          timings.downtime = node.downtimeSeconds ?? 0;
          node.assertOwned(
            `Files may have changed while they were read: nothing was published. Raise 'max-downtime' above the time ` +
              `the transfer takes, or use 'consistency: hardlink'.`,
          );
        },
      };
    } else {
      remote = await host.archive(source, {
        compression: settings.backup.compression,
        level: settings.backup.compressionLevel,
        localCopy,
        tolerateChanged: settings.backup.consistency === 'hardlink',
      });
    }

    if (settings.backup.consistency === 'hardlink') {
      const frozen = source;
      sizes = await core.group('Stop, freeze, start', async () => {
        // Opened ahead, like the start: it runs the moment the node has stopped. So does a
        // tree's listing, the moment the copy is frozen: no session is set up on the host while
        // the node starts and takes its CPU.
        const freezing = host.freeze(frozen, node.watchdogFlag);
        const listing = treeArgs ? host.listTreeAhead(frozen) : undefined;
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
        // The node comes back up while its frozen copy is read: they share no file that
        // changes. An archive's stream waits for the node to run again: started together, the
        // two shared the host's CPU and the node was down twice as long (4.7 s against 2.3 s on
        // the bench) for no earlier listing.
        const settled = host.settleFrozen(frozen);
        // A tree's files are listed meanwhile (a walk of the folder, as light as the measure)
        // and those stored already proven by their tails (a few bytes each); the others are
        // sent once the node runs (see beginTree). The listing runs beside the settling: it is
        // the frozen copy's unless a leftover table was pruned.
        const started = node.ensureStarted().then(() => {
          if (node.isStopped) throw notStarted(settings);
        });
        if (treeArgs && listing) {
          const early = listing.go();
          early.catch(() => undefined);
          treeRun = beginTree(
            treeArgs,
            settled.then((s) => (s.pruned > 0 ? host.listTree(frozen) : early)),
            started,
          );
        }
        const [start, prepared] = await Promise.allSettled([started, settled]);
        if (start.status === 'rejected') throw start.reason;
        timings.downtime = node.downtimeSeconds ?? 0;
        core.info(`The node was down for ${formatDuration(timings.downtime)}.`);
        if (prepared.status === 'rejected') throw prepared.reason;
        return prepared.value;
      });
    } else {
      await core.group('Stop the node', () => node.stop());
      sizes = await host.measure(source);
    }

    if (treeArgs) {
      const done = await backupTree(
        treeRun ?? beginTree(treeArgs, host.listTree(source), Promise.resolve()),
      );
      published = true;
      timings.stopToListed =
        node.stoppedAt !== undefined ? (performance.now() - node.stoppedAt) / 1000 : 0;
      const permanent = settings.backup.permanentCopy
        ? await core.group('Permanent copy', () => permanentTreeCopy(client, settings, name))
        : undefined;
      const removed = await core.group('Retention', () => applyRetention(client, settings, now()));
      const m = done.manifest;
      core.setOutput(Outputs.Skipped, 'false');
      core.setOutput(Outputs.Key, done.key);
      core.setOutput(Outputs.Url, done.indexUrl);
      core.setOutput(Outputs.BlockHeight, String(height));
      core.setOutput(Outputs.Size, String(m.bytes));
      core.setOutput(Outputs.Files, String(m.files.length));
      core.setOutput(Outputs.DowntimeSeconds, (timings.downtime ?? 0).toFixed(3));
      timings.total = secondsSince(t0);
      await writeTreeSummary(m, done.indexUrl, timings, permanent, removed);
      return { skipped: false, key: done.key };
    }

    const { partSize, queueSize } = parts;

    const stream = await core.group(`Stream ${key}`, async () => {
      core.info(
        `${sizes.files} files, ${formatBytes(sizes.bytes)}; ${settings.backup.compression} level ${settings.backup.compressionLevel}; ` +
          `parts of ${formatBytes(partSize)} x ${queueSize} in flight.`,
      );
      uploaded = [key];
      // For the post step: an upload that this run cannot finish or abort is removed there.
      core.saveState(State.UploadKey, key);
      core.saveState(State.UploadPublished, 'false');
      streamStarted = true;
      const r = await streamArchive({
        remote: remote!,
        host,
        client,
        settings,
        source,
        key,
        partSize,
        queueSize,
        totalBytes: sizes.bytes,
        frozenDigest: sizes.digest,
      });

      core.info(
        `Uploaded ${formatBytes(r.bytes)} in ${formatDuration(r.seconds)} (${formatRate(r.bytes, r.seconds)}), sha256 ${r.sha256}.`,
      );
      return r;
    });
    timings.stream = stream.seconds;
    if (settings.backup.consistency === 'stop') {
      await node.start();
      timings.downtime = node.downtimeSeconds ?? 0;
      // tar read the live files: they were still only while the run held the node down.
      node.assertOwned(
        `The archive may hold files that changed while tar read them: nothing was published. Raise ` +
          `'max-downtime' above the time the stream takes, or use 'consistency: hardlink'.`,
      );
    }

    const manifest: Manifest = {
      format: 'prep-snapshot/1',
      key,
      entry: listEntry(name),
      nodeKind: host.kind,
      blockHeight: height,
      sha256: stream.sha256,
      compressedBytes: stream.bytes,
      uncompressedBytes: stream.tarBytes ?? sizes.bytes,
      files: sizes.files,
      compression: settings.backup.compression,
      compressor: stream.compressor,
      compressionLevel: settings.backup.compressionLevel,
      consistency: settings.backup.consistency,
      ...(facts.placeholder !== undefined ? { placeholder: String(facts.placeholder) } : {}),
      facts,
      source: {
        host: ssh.host,
        dataDir: host.dataDir,
        ...(facts.identity !== undefined ? { identity: String(facts.identity) } : {}),
      },
      createdAt: snapshotAt.toISOString(),
      actionVersion: ACTION_VERSION,
      timings,
    };
    const mKey = manifestKey(settings.s3.manifestPrefix, key);
    uploaded.push(mKey);
    await writeJson(client, settings.s3.bucket, mKey, manifest);

    if (settings.backup.verify) {
      await core.group('Verify the stored archive', async () => {
        await verifyStored(client, settings, key, manifest);
      });
    }

    const tPublish = performance.now();
    await core.group('Publish in backup_list', async () => {
      const entries = await updateBackupList(
        client,
        settings.s3.bucket,
        `${settings.s3.prefix}/backup_list`,
        (e) => addEntry(e, listEntry(name)),
      );
      published = true;
      core.saveState(State.UploadPublished, 'true');
      core.info(
        `backup_list now names ${entries.length} snapshot(s); the newest is ${entries[0]}.`,
      );
    });
    timings.publish = secondsSince(tPublish);
    timings.stopToListed =
      node.stoppedAt !== undefined ? (performance.now() - node.stoppedAt) / 1000 : 0;

    const permanent = settings.backup.permanentCopy
      ? await core.group('Permanent copy', () =>
          permanentCopy(client, settings, name, key, stream.bytes, manifest),
        )
      : undefined;

    const removed = await core.group('Retention', () => applyRetention(client, settings, now()));

    if (localCopy) {
      await core.group('Local copies on the host', async () => {
        const cutoff = dateDaysAgo(now(), settings.backup.localCopyDays);
        const out = await shell.run(
          'Pruning local copies',
          pruneLocalCopiesCommand(`${settings.node.prepDir}/data/Backup`, cutoff),
        );
        core.info(
          `Kept ${localCopy} on the host.${out.trim() ? ` ${out.trim().replace(/\n/g, '; ')}.` : ''}`,
        );
      });
    }

    const url = objectUrl(settings.s3, key);
    core.setOutput(Outputs.Skipped, 'false');
    core.setOutput(Outputs.Key, key);
    core.setOutput(Outputs.Url, url);
    core.setOutput(Outputs.BlockHeight, String(height));
    core.setOutput(Outputs.Size, String(stream.bytes));
    core.setOutput(Outputs.Sha256, stream.sha256);
    core.setOutput(Outputs.DowntimeSeconds, (timings.downtime ?? 0).toFixed(3));
    timings.total = secondsSince(t0);
    await writeSummary(manifest, url, timings, permanent, removed, stream.compressor);
    core.saveState(State.UploadKey, '');
    return { skipped: false, key };
  } catch (caught) {
    let error = caught;
    if (node.isStopped) await node.ensureStarted();
    if (!(error instanceof NodeLostError)) {
      // What failed may be the watchdog's doing (tar sees files change under it): say so first.
      error = node.lostError(errorMessage(caught)) ?? error;
    }
    if (!published && uploaded.length > 0) {
      // Nothing half-made stays behind: an archive that is not listed is removed.
      await deleteKeys(client, settings.s3.bucket, uploaded).catch((e) =>
        core.warning(`Could not remove the unpublished ${uploaded.join(', ')}: ${errorMessage(e)}`),
      );
    }
    throw error;
  } finally {
    // What a tree's send said before the run failed elsewhere.
    treeRun?.log.open();
    if (remote && !streamStarted) await closeUnused(remote);
    if (treeStart) await treeStart.close();
    await node.ensureStarted();
    if (stage) {
      const s = stage;
      await host
        .remove(s)
        .then(() => core.saveState(State.StagingDir, ''))
        .catch((e) => core.warning(`Could not remove the staging folder ${s}: ${errorMessage(e)}`));
    }
    connection.close();
    core.saveState(State.KeyDir, '');
  }
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
