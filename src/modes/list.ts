/** mode: list. What is stored, newest first, as a job summary table and a JSON output. */
import * as core from '@actions/core';
import { Outputs } from '../constants.js';
import { formatBytes } from '../format.js';
import { listEntry, manifestKey, parseArchivePath } from '../naming.js';
import { code, escapeHtml } from '../summary.js';
import { readBackupList } from '../s3/backup-list.js';
import { createClient } from '../s3/client.js';
import { listObjects, readManifest } from '../s3/store.js';
import { treeFiles } from '../tree/layout.js';
import { listSnapshots, readTreeManifest } from '../tree/store.js';
import type { Settings } from '../settings.js';

export interface ListedSnapshot {
  key: string;
  entry: string;
  blockHeight: number;
  /** An archive's size, or a tree's data. */
  size: number;
  format: 'archive' | 'tree';
  createdAt: string;
  ageHours: number;
  listed: boolean;
  manifest: boolean;
  sha256?: string;
  permanent: boolean;
}

export async function list(settings: Settings, now: Date = new Date()): Promise<ListedSnapshot[]> {
  const client = createClient(settings.s3);
  const { bucket, prefix, permanentPrefix, manifestPrefix } = settings.s3;
  const [archives, { entries }, permanents, manifests] = await Promise.all([
    listSnapshots(client, bucket, prefix),
    readBackupList(client, bucket, `${prefix}/backup_list`),
    listSnapshots(client, bucket, permanentPrefix),
    listObjects(client, bucket, `${manifestPrefix}/${prefix}/`),
  ]);
  const manifestKeys = new Set(manifests.map((m) => m.key));
  const permanentEntries = new Set(permanents.map((p) => listEntry(p.name)));
  const listed = new Set(entries);
  const byEntry = new Map(archives.map((a) => [listEntry(a.name), a]));
  // backup_list's order first (it is the published truth), then stored archives it does not name.
  const order = [
    ...entries.filter((e) => byEntry.has(e)),
    ...[...byEntry.keys()]
      .filter((e) => !listed.has(e))
      .sort()
      .reverse(),
  ];
  const rows: ListedSnapshot[] = [];
  for (const entry of order) {
    const a = byEntry.get(entry);
    const name = parseArchivePath(entry);
    if (!a || !name) continue;
    const mKey = manifestKey(manifestPrefix, a.key);
    // A tree's manifest is its own folder's; it gives the data's size (the tree has no one object).
    const tree =
      name.format === 'tree'
        ? await readTreeManifest(client, bucket, treeFiles(a.key).manifest).catch(() => undefined)
        : undefined;
    const manifest =
      tree ?? (manifestKeys.has(mKey) ? await readManifest(client, bucket, mKey) : undefined);
    const created = manifest?.createdAt
      ? new Date(manifest.createdAt)
      : (stampDate(name.stamp) ?? a.lastModified ?? now);
    rows.push({
      key: a.key,
      entry,
      blockHeight: name.height,
      size: tree ? tree.bytes : a.size,
      format: name.format,
      createdAt: created.toISOString(),
      ageHours: Math.max(0, (now.getTime() - created.getTime()) / 3_600_000),
      listed: listed.has(entry),
      manifest: manifest !== undefined,
      sha256: tree ? undefined : (manifest as { sha256?: string } | undefined)?.sha256,
      permanent: permanentEntries.has(entry),
    });
  }
  core.setOutput(Outputs.Snapshots, JSON.stringify(rows));
  for (const r of rows) {
    core.info(
      `${r.key}  BH${r.blockHeight}  ${formatBytes(r.size)}  ${formatAge(r.ageHours)}${r.listed ? '' : '  (not in backup_list)'}`,
    );
  }
  if (rows.length === 0) core.info(`Nothing is stored under s3://${bucket}/${prefix}/.`);
  await core.summary
    .addHeading(
      escapeHtml(`prep-snapshot: ${rows.length} snapshot(s) in s3://${bucket}/${prefix}`),
      3,
    )
    .addTable([
      ['Key', 'Block height', 'Size', 'Age', 'Listed', 'Manifest', 'Permanent copy'].map((h) => ({
        data: h,
        header: true,
      })),
      ...rows.map((r) => [
        code(r.key).markup,
        String(r.blockHeight),
        formatBytes(r.size),
        formatAge(r.ageHours),
        r.listed ? 'yes' : 'no',
        r.manifest ? 'yes' : 'no',
        r.permanent ? 'yes' : 'no',
      ]),
    ])
    .write();
  return rows;
}

function stampDate(stamp: string): Date | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})_(\d{2})(\d{2})$/.exec(stamp);
  return m ? new Date(Date.UTC(+m[1]!, +m[2]! - 1, +m[3]!, +m[4]!, +m[5]!)) : undefined;
}

export function formatAge(hours: number): string {
  if (hours < 1) return `${Math.round(hours * 60)} min`;
  if (hours < 48) return `${hours.toFixed(1)} h`;
  return `${(hours / 24).toFixed(1)} d`;
}
