/**
 * What a backup does once its snapshot is published: the permanent copy of the day's first,
 * retention, and the job summary; for archives and trees alike.
 */
import * as core from '@actions/core';
import type { S3Client } from '@aws-sdk/client-s3';
import { formatBytes, formatDuration, formatRate } from '../format.js';
import type { Manifest } from '../manifest.js';
import { listEntry, manifestKey, type ArchiveName } from '../naming.js';
import { chooseExpired, entriesOf } from '../retention.js';
import { removeEntries, updateBackupList } from '../s3/backup-list.js';
import { copyObject } from '../s3/copy.js';
import { deleteKeys, listObjects, writeJson } from '../s3/store.js';
import type { Settings } from '../settings.js';
import { code, html, Html, writeSummaryTable, type Cell } from '../summary.js';
import { treeFiles, type TreeManifest } from '../tree/layout.js';
import { removeExpiredLeases } from '../tree/lease.js';
import { removeOldSweepMarks } from '../tree/sweep-marks.js';
import { sweepObjects } from '../tree/sweep.js';
import { journalPrefix, listSnapshots, readBytes, putText } from '../tree/store.js';

export type Timings = Record<string, number>;

/** Copies an archive to the permanent prefix when it is the first of its day there. */
export async function permanentCopy(
  client: S3Client,
  settings: Settings,
  name: ArchiveName,
  key: string,
  size: number,
  manifest: Manifest,
): Promise<string | undefined> {
  const target = await permanentTarget(client, settings, name);
  if (!target) return undefined;
  await copyObject(client, settings.s3.bucket, key, target, size);
  await writeJson(client, settings.s3.bucket, manifestKey(settings.s3.manifestPrefix, target), {
    ...manifest,
    key: target,
  });
  core.info(`First snapshot of ${name.date}: copied to ${target}.`);
  return target;
}

/**
 * A tree's permanent copy is its three small files under the permanent prefix: its objects
 * stay where they are, and the sweep keeps every object a permanent manifest names.
 */
export async function permanentTreeCopy(
  client: S3Client,
  settings: Settings,
  name: ArchiveName,
): Promise<string | undefined> {
  const target = await permanentTarget(client, settings, name);
  if (!target) return undefined;
  const { bucket, prefix } = settings.s3;
  const from = treeFiles(`${prefix}/${listEntry(name)}`);
  const to = treeFiles(target);
  const manifest = JSON.parse(
    (await readBytes(client, bucket, from.manifest))?.toString('utf8') ?? '{}',
  ) as TreeManifest;
  await putText(
    client,
    bucket,
    to.index,
    (await readBytes(client, bucket, from.index))?.toString('utf8') ?? '',
    'text/plain',
  );
  await putText(
    client,
    bucket,
    to.checksum,
    (await readBytes(client, bucket, from.checksum))?.toString('utf8') ?? '',
    'application/json',
  );
  // The manifest last: a permanent tree exists for readers once it is there.
  await writeJson(client, bucket, to.manifest, { ...manifest, key: target });
  core.info(`First snapshot of ${name.date}: its tree files copied to ${target}.`);
  return target;
}

async function permanentTarget(
  client: S3Client,
  settings: Settings,
  name: ArchiveName,
): Promise<string | undefined> {
  const folder = `${settings.s3.permanentPrefix}/${name.date}/`;
  const existing = await listObjects(client, settings.s3.bucket, folder);
  if (existing.length > 0) {
    core.info(`${folder} already holds today's permanent copy (${existing[0]?.key}).`);
    return undefined;
  }
  return `${settings.s3.permanentPrefix}/${listEntry(name)}`;
}

/** Journals of runs that never finished, older than this, are dropped (their objects swept). */
const JOURNAL_DAYS = 7;

/**
 * Removes the snapshots dated more than 'retention-days' ago: unlisted first, so that no
 * reader finds a listed snapshot gone; then an archive and its manifest, or a tree's three
 * files. Once a tree is removed, the objects that no tree left names are swept.
 */
export async function applyRetention(
  client: S3Client,
  settings: Settings,
  now: Date,
): Promise<string[]> {
  const { bucket, prefix } = settings.s3;
  const snapshots = await listSnapshots(client, bucket, prefix);
  const expired = chooseExpired(snapshots, now, settings.backup.retentionDays);
  const staleJournals = (await listObjects(client, bucket, journalPrefix(prefix))).filter(
    (o) => o.lastModified && now.getTime() - o.lastModified.getTime() > JOURNAL_DAYS * 86_400_000,
  );
  if (expired.length > 0) {
    await updateBackupList(client, bucket, `${prefix}/backup_list`, (e) =>
      removeEntries(e, entriesOf(expired)),
    );
    const keys = expired.flatMap((a) =>
      a.name.format === 'tree'
        ? Object.values(treeFiles(a.key))
        : [a.key, manifestKey(settings.s3.manifestPrefix, a.key)],
    );
    await deleteKeys(client, bucket, keys);
    for (const a of expired)
      core.info(`Removed ${a.key} (older than ${settings.backup.retentionDays} days).`);
  } else {
    core.info(`Nothing is older than ${settings.backup.retentionDays} days.`);
  }
  if (staleJournals.length > 0) {
    await deleteKeys(
      client,
      bucket,
      staleJournals.map((o) => o.key),
    );
    core.info(`Dropped ${staleJournals.length} journal(s) of runs that never finished.`);
  }
  if (expired.some((a) => a.name.format === 'tree') || staleJournals.length > 0) {
    const swept = await sweepObjects(
      client,
      {
        bucket,
        prefix,
        permanentPrefix: settings.s3.permanentPrefix,
        graceSeconds: 24 * 3600,
      },
      now,
    );
    core.info(
      `Objects: ${swept.deleted} no longer named by any snapshot removed (${formatBytes(swept.deletedBytes)}), ${swept.kept} kept.`,
    );
  }
  const leases = await removeExpiredLeases(client, bucket, prefix, now);
  if (leases > 0) core.info(`Removed ${leases} expired lease(s) of earlier runs.`);
  const marks = await removeOldSweepMarks(client, bucket, prefix, now);
  if (marks > 0) core.info(`Removed ${marks} mark(s) of sweeps that ended long ago.`);
  return expired.map((a) => a.key);
}

export async function writeSummary(
  m: Manifest,
  url: string,
  timings: Timings,
  permanent: string | undefined,
  removed: string[],
  compressor: string,
): Promise<void> {
  const ratio = m.compressedBytes > 0 ? (m.uncompressedBytes / m.compressedBytes).toFixed(2) : '?';
  const rows: Array<[string, Cell]> = [
    ['Block height', String(m.blockHeight)],
    ['Key', code(m.key)],
    ['Archive', `${formatBytes(m.compressedBytes)} (${compressor}, level ${m.compressionLevel})`],
    ['Data', `${formatBytes(m.uncompressedBytes)} in ${m.files} files`],
    ['Compression ratio', `${ratio} : 1`],
    ['Node downtime', formatDuration(timings.downtime ?? 0)],
    ...(m.ahead
      ? ([
          [
            'Sent while the node ran',
            `${m.ahead.files} table files, ${formatBytes(m.ahead.bytes)} of the archive in ${formatDuration(timings.ahead ?? 0)}`,
          ],
        ] as Array<[string, Cell]>)
      : []),
    [
      m.ahead ? 'Stream and upload after the freeze' : 'Stream and upload',
      `${formatDuration(timings.stream ?? 0)} (${formatRate(m.compressedBytes - (m.ahead?.bytes ?? 0), timings.stream ?? 0)})`,
    ],
    ['Stop to listed', formatDuration(timings.stopToListed ?? 0)],
    ['Total', formatDuration(timings.total ?? 0)],
    ['sha256', code(m.sha256)],
    ...housekeeping(permanent, removed),
  ];
  await writeSummaryTable('backup', rows, { text: 'Archive', href: url });
}

export async function writeTreeSummary(
  m: TreeManifest,
  indexUrl: string,
  timings: Timings,
  permanent: string | undefined,
  removed: string[],
): Promise<void> {
  const rows: Array<[string, Cell]> = [
    ['Block height', String(m.blockHeight)],
    ['Key', code(m.key)],
    ['Tree', `${formatBytes(m.bytes)} in ${m.files.length} files`],
    [
      'Sent',
      `${m.sent.files} files, ${formatBytes(m.sent.bytes)} (${m.bytes > 0 ? ((m.sent.bytes / m.bytes) * 100).toFixed(1) : '0'}% of the data); the rest was stored already`,
    ],
    ...(m.sent.ahead
      ? ([
          [
            'Sent while the node ran',
            `${m.sent.ahead.files} new table files, ${formatBytes(m.sent.ahead.bytes)} in ${formatDuration(timings.ahead ?? 0)}`,
          ],
        ] as Array<[string, Cell]>)
      : []),
    ['Node downtime', formatDuration(timings.downtime ?? 0)],
    ['Hash on the host', formatDuration(timings.hash ?? 0)],
    [
      'Upload after the freeze',
      `${formatDuration(timings.stream ?? 0)} (${formatRate(m.sent.bytes - (m.sent.ahead?.bytes ?? 0), timings.stream ?? 0)})`,
    ],
    ['Stop to listed', formatDuration(timings.stopToListed ?? 0)],
    ['Total', formatDuration(timings.total ?? 0)],
    ...housekeeping(permanent, removed),
  ];
  await writeSummaryTable('backup', rows, { text: 'aria2c index', href: indexUrl });
}

function housekeeping(permanent: string | undefined, removed: string[]): Array<[string, Cell]> {
  return [
    ['Permanent copy', permanent ? code(permanent) : 'not made (today has one, or it is off)'],
    [
      'Retention',
      removed.length
        ? html`removed ${removed.length}: ${new Html(removed.map((r) => code(r).markup).join(', '))}`
        : 'nothing removed',
    ],
  ];
}
