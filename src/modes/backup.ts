/**
 * mode: backup. Reads like the procedure: connect, check, send table files while the node
 * runs (a tree's new ones, backup-tree-ahead.ts; an archive's settled ones as its first part,
 * backup-archive-ahead.ts), stop, freeze, start (backup-freeze.ts), then send the rest and
 * publish a tree (backup-tree.ts) or stream the rest of the archive and publish it
 * (backup-archive.ts), copy, retain. The node is down only for the stop, the freeze and the
 * start.
 */
import * as core from '@actions/core';
import { Outputs, State } from '../constants.js';
import { NodeLostError, errorMessage } from '../errors.js';
import { formatBytes, secondsSince } from '../format.js';
import { archiveKey, archiveName } from '../naming.js';
import { NodeControl, currentRunId } from '../node-control.js';
import type { Sizes } from '../node-kind/host.js';
import { connectNode, type Connect } from '../node-kind/index.js';
import { dirname } from '../node-kind/remote.js';
import { checkBucket, createClient } from '../s3/client.js';
import { deleteKeys } from '../s3/store.js';
import { planParts } from '../s3/upload.js';
import { MAX_UPLOAD_BUFFER_BYTES, type Settings, type SshSettings } from '../settings.js';
import { closeUnused, type RemoteStream } from '../ssh/session.js';
import { readEarlier } from '../tree/reuse.js';
import { sendAhead } from './backup-tree-ahead.js';
import { archiveAhead, type ArchiveAhead } from './backup-archive-ahead.js';
import { aheadDir } from '../node-kind/archive-remote.js';
import { archiveBound } from './backup-stream.js';
import { stopFreezeStart } from './backup-freeze.js';
import { backupArchive, type ArchiveMade } from './backup-archive.js';
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
  permanentTreeCopy,
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
  let aheadRun: ArchiveAhead | undefined;
  const made: ArchiveMade = { uploaded: [], published: false, streamStarted: false };
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

    const readHeight = () =>
      core.group('Block height', async () => {
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
    const notInService = async (): Promise<BackupResult> => {
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
    };
    let at = await readHeight();
    if (at === undefined) return await notInService();

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

    let source = host.dataDir;
    let sizes: Sizes;
    if (settings.backup.consistency === 'hardlink') {
      stage = layout.sameDevice
        ? `${dirname(host.dataDir)}/.prep-snapshot-staging-${runId}`
        : `${host.dataDir}/.prep-snapshot-staging-${runId}`;
      core.saveState(State.StagingDir, stage);
      source = stage;
    }
    // An archive is named before its table files go up ahead of the stop (its key is the
    // upload's): by the height and time at which the run began, which its manifest records too
    // (with the block's hash, read then). Its data holds that block, and those the node made
    // until the stop.
    const early = tree
      ? undefined
      : archiveName(settings.s3.service, at.height, now(), settings.backup.compression);
    const localCopy =
      early && settings.backup.localCopy
        ? `${settings.node.prepDir}/data/Backup/${early.date}/${early.file}`
        : undefined;
    if (tree) {
      // What the bucket holds is read, and the data channels onto the frozen copy connect; the
      // new table files go up while the node runs (backup-tree-ahead.ts).
      treeStart = startTree({
        settings,
        client,
        host,
        dir: source,
        device: layout.device,
        facts: at.facts,
        runId,
        earlier,
      });
      const start = treeStart;
      start.sentAhead = await core.group('Send the new table files while the node runs', () =>
        sendAhead({ settings, client, host, start }),
      );
      // A tree's height is the node's at the stop: read again after the send ahead.
      const atStop = await readHeight();
      if (atStop === undefined) return await notInService();
      at = atStop;
    } else if (early && stage !== undefined) {
      // The settled table files go up as the archive's first part (backup-archive-ahead.ts).
      const key = archiveKey(settings.s3.prefix, early);
      made.uploaded = [key];
      core.saveState(State.UploadKey, key);
      core.saveState(State.UploadPublished, 'false');
      const frozen = stage;
      aheadRun = await core.group('Send the table files while the node runs', () =>
        archiveAhead({ settings, client, host, stage: frozen, key, parts, localCopy }),
      );
      if (aheadRun) timings.ahead = aheadRun.seconds;
    }
    const { height, facts } = at;

    const snapshotAt = now();
    const name =
      early ??
      archiveName(
        settings.s3.service,
        height,
        snapshotAt,
        tree ? 'tree' : settings.backup.compression,
      );
    const key = archiveKey(settings.s3.prefix, name);
    // The data channel connects while the node stops and the copy freezes; it archives
    // nothing before its go line. A tree's two channels do the same.
    let treeArgs: TreeBackupArgs | undefined;
    if (treeStart) {
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
        ahead: aheadRun !== undefined,
      });
    }

    if (settings.backup.consistency === 'hardlink') {
      sizes = await stopFreezeStart({
        host,
        node,
        settings,
        frozen: source,
        timings,
        tree: treeArgs,
        onTreeRun: (run) => (treeRun = run),
      });
    } else {
      await core.group('Stop the node', () => node.stop());
      sizes = await host.measure(source);
    }

    if (treeArgs) {
      const done = await backupTree(
        treeRun ?? beginTree(treeArgs, host.listTree(source), Promise.resolve()),
      );
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

    const archived = await backupArchive({
      settings,
      client,
      host,
      shell,
      node,
      remote: remote as RemoteStream,
      source,
      name,
      key,
      height,
      facts,
      sizes,
      parts,
      localCopy,
      snapshotAt,
      timings,
      t0,
      now,
      made,
      ahead: aheadRun,
    });
    return { skipped: false, key: archived };
  } catch (caught) {
    let error = caught;
    if (node.isStopped) await node.ensureStarted();
    if (!(error instanceof NodeLostError)) {
      // What failed may be the watchdog's doing (tar sees files change under it): say so first.
      error = node.lostError(errorMessage(caught)) ?? error;
    }
    if (!made.published && made.uploaded.length > 0) {
      // Nothing half-made stays behind: an archive that is not listed is removed.
      await deleteKeys(client, settings.s3.bucket, made.uploaded).catch((e) =>
        core.warning(
          `Could not remove the unpublished ${made.uploaded.join(', ')}: ${errorMessage(e)}`,
        ),
      );
    }
    throw error;
  } finally {
    // What a tree's send said before the run failed elsewhere.
    treeRun?.log.open();
    if (remote && !made.streamStarted) await closeUnused(remote);
    // A first part that no stream followed: its upload ends, and the catch above removed it.
    if (aheadRun && !made.streamStarted) await aheadRun.abandon(new Error('the run ended'));
    if (treeStart) await treeStart.close();
    await node.ensureStarted();
    if (stage) {
      const s = stage;
      await host
        .remove(s)
        .then(() => host.remove(aheadDir(s)))
        .then(() => core.saveState(State.StagingDir, ''))
        .catch((e) => core.warning(`Could not remove the staging folder ${s}: ${errorMessage(e)}`));
    }
    connection.close();
    core.saveState(State.KeyDir, '');
  }
}
