/**
 * The archive part of mode: backup, once the copy is frozen (or the node stopped): stream it
 * to S3, write its manifest, verify it if asked, publish it in backup_list, then the permanent
 * copy, retention and the host's local copies.
 */
import * as core from '@actions/core';
import type { S3Client } from '@aws-sdk/client-s3';
import { ACTION_VERSION, Outputs, State } from '../constants.js';
import { formatBytes, formatDuration, formatRate, secondsSince } from '../format.js';
import type { Manifest } from '../manifest.js';
import { dateDaysAgo, listEntry, manifestKey, type ArchiveName } from '../naming.js';
import type { NodeControl } from '../node-control.js';
import type { KindFacts, Sizes } from '../node-kind/host.js';
import type { NodeHost, Shell } from '../node-kind/index.js';
import { pruneLocalCopiesCommand } from '../node-kind/remote.js';
import { addEntry, updateBackupList } from '../s3/backup-list.js';
import { objectUrl } from '../s3/client.js';
import { writeJson } from '../s3/store.js';
import type { Settings, SshSettings } from '../settings.js';
import type { RemoteStream } from '../ssh/session.js';
import { verifyStored } from './verify.js';
import { streamArchive } from './backup-stream.js';
import type { ArchiveAhead } from './backup-archive-ahead.js';
import { applyRetention, permanentCopy, writeSummary, type Timings } from './backup-publish.js';

/** What an archive run has stored: removed again (by the caller) unless it was published. */
export interface ArchiveMade {
  uploaded: string[];
  published: boolean;
  /** Whether the stream took the host's archive channel (else the caller closes it). */
  streamStarted: boolean;
}

export interface ArchiveRun {
  settings: Settings;
  client: S3Client;
  host: NodeHost;
  shell: Shell;
  node: NodeControl;
  /** The host's archive, opened before the stop; it starts on its go line. */
  remote: RemoteStream;
  /** The frozen copy, or the data dir itself (`consistency: stop`). */
  source: string;
  name: ArchiveName;
  key: string;
  height: number;
  facts: KindFacts;
  sizes: Sizes;
  parts: { partSize: number; queueSize: number };
  localCopy: string | undefined;
  snapshotAt: Date;
  timings: Timings;
  /** When the run began (performance.now()). */
  t0: number;
  now: () => Date;
  made: ArchiveMade;
  /** The archive's first part, sent while the node ran (backup-archive-ahead.ts). */
  ahead?: ArchiveAhead;
}

/** Streams, publishes and keeps the archive; returns its key. */
export async function backupArchive(run: ArchiveRun): Promise<string> {
  const { settings, client, host, shell, node, remote, source, name, key, height, facts } = run;
  const { sizes, parts, localCopy, snapshotAt, timings, t0, now, made, ahead } = run;
  const ssh = settings.ssh as SshSettings;
  const { partSize, queueSize } = parts;

  const stream = await core.group(`Stream ${key}`, async () => {
    core.info(
      `${sizes.files} files, ${formatBytes(sizes.bytes)}; ${settings.backup.compression} level ${settings.backup.compressionLevel}; ` +
        `parts of ${formatBytes(partSize)} x ${queueSize} in flight` +
        (ahead
          ? `; ${ahead.files} table files went up ahead of the stop, the rest follows them.`
          : '.'),
    );
    made.uploaded = [key];
    // For the post step: an upload that this run cannot finish or abort is removed there.
    core.saveState(State.UploadKey, key);
    core.saveState(State.UploadPublished, 'false');
    made.streamStarted = true;
    const r = await streamArchive({
      remote,
      host,
      client,
      settings,
      source,
      key,
      partSize,
      queueSize,
      totalBytes: sizes.bytes,
      frozenDigest: sizes.digest,
      ahead,
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
    // What the archive extracts to: the snapshot's files, and the tables sent ahead that the
    // node removed before the stop (a restore counts them).
    files: sizes.files + (stream.aheadRemoved ?? 0),
    compression: settings.backup.compression,
    compressor: stream.compressor,
    compressionLevel: settings.backup.compressionLevel,
    consistency: settings.backup.consistency,
    ...(ahead
      ? {
          ahead: {
            files: ahead.files,
            tarBytes: ahead.tarBytes,
            bytes: ahead.bytes,
            removed: stream.aheadRemoved ?? 0,
          },
        }
      : {}),
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
  made.uploaded.push(mKey);
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
    made.published = true;
    core.saveState(State.UploadPublished, 'true');
    core.info(`backup_list now names ${entries.length} snapshot(s); the newest is ${entries[0]}.`);
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
  return key;
}
