/**
 * Marks that a sweep of tree objects ran: one small object under `{prefix}/sweeps/`, written
 * before the sweep reads any lease and left in place until long after it could delete anything.
 *
 * A backup needs them to know that no sweep can have deleted what it relies on. Its lease
 * protects the objects it names from every sweep that reads the leases after the lease's first
 * write; the case left is a sweep already running then, which read the leases earlier. Such a
 * sweep deletes nothing more than SWEEP_MAX_MS after its mark, and the mark is in the bucket
 * from before its first reading until SWEEP_MAX_MS and MARK_MARGIN_MS after it was written. So
 * a run that wrote its lease at T, named there every object it relies on, and then finds no
 * mark newer than T - SWEEP_MAX_MS - MARK_MARGIN_MS, knows:
 * - a sweep that started before that ended before T: what it deleted was gone before the run
 *   listed the stored objects, and the run relies on none of it;
 * - a sweep that starts after that listing reads the run's lease, which names everything.
 * Where a mark is that recent, the run waits out the sweep's window and checks that every
 * object is still stored (see modes/backup-tree.ts). The marks' times are S3's (LastModified)
 * and the run's clock; MARK_MARGIN_MS covers the skew between them.
 */
import type { S3Client } from '@aws-sdk/client-s3';
import { randomBytes } from 'node:crypto';
import { deleteKeys, listObjects, writeJson } from '../s3/store.js';
import { sweepsPrefix } from './layout.js';

/** A sweep deletes nothing once this long has passed since its mark was written. */
export const SWEEP_MAX_MS = 6 * 3600_000;
/** The clocks' skew and S3's whole seconds, and then some. */
export const MARK_MARGIN_MS = 10 * 60_000;

/** Writes a sweep's mark; resolves once it is in the bucket. */
export async function markSweep(
  client: S3Client,
  bucket: string,
  prefix: string,
  now: Date,
): Promise<string> {
  const key = `${sweepsPrefix(prefix)}${now.toISOString().replace(/[:.]/g, '')}-${randomBytes(4).toString('hex')}.json`;
  await writeJson(client, bucket, key, {
    startedAt: now.toISOString(),
    deletesNothingAfterMs: SWEEP_MAX_MS,
  });
  return key;
}

/** The marks of sweeps that may have deleted objects at `since` (wall clock, ms) or later. */
export async function sweepsSince(
  client: S3Client,
  bucket: string,
  prefix: string,
  since: number,
): Promise<string[]> {
  const from = since - SWEEP_MAX_MS - MARK_MARGIN_MS;
  return (await listObjects(client, bucket, sweepsPrefix(prefix)))
    .filter((o) => o.lastModified === undefined || o.lastModified.getTime() > from)
    .map((o) => o.key);
}

/** Removes the marks that no run can need any more (a week past their sweep's end). */
export async function removeOldSweepMarks(
  client: S3Client,
  bucket: string,
  prefix: string,
  now: Date,
): Promise<number> {
  const before = now.getTime() - SWEEP_MAX_MS - MARK_MARGIN_MS - 7 * 24 * 3600_000;
  const old = (await listObjects(client, bucket, sweepsPrefix(prefix)))
    .filter((o) => o.lastModified !== undefined && o.lastModified.getTime() < before)
    .map((o) => o.key);
  if (old.length > 0) await deleteKeys(client, bucket, old);
  return old.length;
}
