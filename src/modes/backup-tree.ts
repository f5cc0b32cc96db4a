/**
 * The tree part of mode: backup, once the copy is frozen: list its files, prove which are
 * stored already, hash on the host those that may be stored under another name, send those
 * whose content is missing (hashed as they arrive where the host did not hash them), check
 * that every object the snapshot names exists, then publish its manifest, index and checksum
 * file, backup_list and the pointer (tree/publish.ts). See tree/layout.ts for the bucket's layout.
 */
import * as core from '@actions/core';
import type { S3Client } from '@aws-sdk/client-s3';
import { ACTION_VERSION } from '../constants.js';
import { errorMessage, HostError } from '../errors.js';
import { formatBytes, formatDuration, formatRate, secondsSince } from '../format.js';
import { listEntry, type ArchiveName } from '../naming.js';
import type { KindFacts, NodeHost, TreeEntry, TreeListing } from '../node-kind/host.js';
import { createReadClient } from '../s3/client.js';
import { deleteKeys, writeJson } from '../s3/store.js';
import type { Settings } from '../settings.js';
import {
  isTableFile,
  objectKey,
  TREE_FORMAT,
  treeFolder,
  type TreeFile,
  type TreeManifest,
} from '../tree/layout.js';
import { LeaseKeeper } from '../tree/lease.js';
import { SWEEP_WINDOW_MS } from '../tree/sweep.js';
import { MARK_MARGIN_MS, SWEEP_MAX_MS, sweepsSince } from '../tree/sweep-marks.js';
import { verifyTree } from '../tree/verify.js';
import { pool } from '../tree/pool.js';
import { setTimeout as sleep } from 'node:timers/promises';
import { publishTree } from '../tree/publish.js';
import {
  closeTreeChannels,
  heldWhole,
  openTreeChannels,
  sendFiles,
  type TreeChannels,
} from '../tree/send.js';
import {
  fileOf,
  proveUnchanged,
  readAhead,
  storedTail,
  type Ahead,
  type Source,
} from '../tree/reuse.js';
import { journalKey, storedObjects, type Journal } from '../tree/store.js';

/**
 * What a tree backup sets going before the node stops, to run while it stops, freezes and
 * starts: its two data channels (tree/send.ts), which connect and wait for their go line, and
 * the bucket's side of what is stored already (tree/reuse.ts, `readAhead`), which needs
 * nothing of the frozen copy. `close` ends what the run did not: the channels, and the lease
 * of a run that published nothing.
 */
export interface TreeStart {
  channels: TreeChannels;
  lease: LeaseKeeper;
  source: Source;
  ahead: Promise<Ahead>;
  close(): Promise<void>;
}

export function startTree(a: {
  settings: Settings;
  client: S3Client;
  host: NodeHost;
  /** The folder that will hold the frozen copy (or the data dir, with consistency: stop). */
  dir: string;
  /** The data dir's device (BackupLayout.device). */
  device: string;
  facts: KindFacts;
  runId: string;
}): TreeStart {
  const { settings, client } = a;
  const channels = openTreeChannels(a.host, a.dir);
  const lease = new LeaseKeeper(client, settings.s3.bucket, settings.s3.prefix, a.runId);
  const source: Source = {
    host: settings.ssh?.host ?? '',
    dataDir: a.host.dataDir,
    device: a.device,
    ...(a.facts.identity !== undefined ? { identity: String(a.facts.identity) } : {}),
  };
  const ahead = readAhead({ client, settings, lease, source });
  ahead.catch(() => undefined);
  return {
    channels,
    lease,
    source,
    ahead,
    close: async () => {
      await lease.stop({ hold: false }).catch(() => undefined);
      await closeTreeChannels(channels);
    },
  };
}

export interface TreeBackupArgs {
  settings: Settings;
  client: S3Client;
  host: NodeHost;
  /** The frozen copy (or the data dir, with consistency: stop). */
  dir: string;
  name: ArchiveName;
  height: number;
  facts: KindFacts;
  snapshotAt: Date;
  runId: string;
  timings: Record<string, number>;
  /** The frozen copy's listing, begun while the node started; listed here when not given. */
  listing?: Promise<TreeListing>;
  /** Begun before the stop (startTree); the caller closes it. */
  start: TreeStart;
  /** Runs once every object is stored, before anything is published (a node stopped for the read starts). */
  beforePublish: () => Promise<void>;
}

export interface TreeBackupResult {
  manifest: TreeManifest;
  key: string;
  /** Where icon2-node's restore (DOWNLOAD_URL) and aria2c find it. */
  indexUrl: string;
}

export async function backupTree(a: TreeBackupArgs): Promise<TreeBackupResult> {
  const done = await backupWithLease(a, a.start.lease, a.start.channels);
  // Published: the manifest protects its objects now; the lease expires on its own.
  await a.start.lease.release();
  return done;
}

async function backupWithLease(
  a: TreeBackupArgs,
  lease: LeaseKeeper,
  channels: TreeChannels,
): Promise<TreeBackupResult> {
  const { settings, client, host } = a;
  const { bucket, prefix } = settings.s3;
  const folder = treeFolder(prefix, a.name);

  const listing = await core.group('List the snapshot', async () => {
    const l = await (a.listing ?? host.listTree(a.dir));
    const files = l.entries.filter((e) => e.type === 'file');
    core.info(
      `${files.length} files, ${formatBytes(files.reduce((s, f) => s + f.size, 0))}, in ` +
        `${l.entries.length - files.length} directories.`,
    );
    return l;
  });
  const source: Source = { ...a.start.source, device: listing.device };
  const files = listing.entries.filter((e) => e.type === 'file');

  // What is stored, and what earlier runs of this host prove (tree/reuse.ts).
  const plan = await core.group('Find what is stored already', async () => {
    const ahead = await a.start.ahead;
    // The earlier runs were found by the data dir's device, read before the freeze; the frozen
    // copy is on it by construction. Were it not, an inode would prove nothing: none is used.
    const sameDevice = listing.device === a.start.source.device;
    return proveUnchanged(
      sameDevice ? ahead : { ...ahead, before: new Map() },
      files,
      channels.tails,
      lease,
    );
  });

  // Hashing a file on the host reads it there once more; that pays only where its object may
  // be stored already, under another name (a node restored from this bucket, a file moved, a
  // run cut short whose journal was not written). It does not when nothing is stored yet, nor
  // for a table file that appeared since this host's last snapshot: it holds data that no
  // snapshot has seen. Such a file, when it is held whole on the runner, is hashed there as
  // it arrives. A wrong guess costs bytes sent again, never a wrong object: every key is the
  // hash of the bytes put under it.
  const unseen = (e: TreeEntry): boolean =>
    plan.stored.size === 0 || (plan.hasPrevious && isTableFile(e.path) && !plan.known.has(e.path));
  const hashFirst = plan.unproven.filter(
    (e) => !unseen(e) || !heldWhole(e.size, settings.s3.bytesInFlight),
  );
  const hashedFirst = new Set(hashFirst);
  const toSend: Array<{ entry: TreeEntry; sha256?: string }> = plan.unproven
    .filter((e) => !hashedFirst.has(e))
    .map((entry) => ({ entry }));
  const hashedBytes = hashFirst.reduce((s, e) => s + e.size, 0);
  const waiting = new Map<string, TreeEntry[]>();
  const storedAlready: Array<{ e: TreeEntry; sha: string }> = [];
  // The host hashes those while the others go up; the ones whose objects are missing follow.
  const t = performance.now();
  const later = host
    .hashFiles(
      a.dir,
      hashFirst.map((e) => e.hostPath),
    )
    .then((hashes) => {
      a.timings.hash = secondsSince(t);
      const sending = new Set<string>();
      const more: typeof toSend = [];
      for (const e of hashFirst) {
        const sha = hashes.get(e.hostPath);
        if (!sha) throw new Error(`the host gave no sha256 for ${e.hostPath}`);
        if (plan.stored.get(sha) === e.size) storedAlready.push({ e, sha });
        else if (sending.has(sha)) waiting.set(sha, [...(waiting.get(sha) ?? []), e]);
        else {
          sending.add(sha);
          more.push({ entry: e, sha256: sha });
        }
      }
      core.info(
        `${hashes.size} files hashed in ${formatDuration(a.timings.hash)} (${formatBytes(hashedBytes)}), ` +
          `${storedAlready.length} of them stored already; ${toSend.length} ` +
          `${plan.stored.size === 0 ? 'other files (nothing is stored yet)' : 'table files new since the last snapshot'} are hashed as they arrive.`,
      );
      return more;
    });
  later.catch(() => undefined);

  const journal: Journal = {
    run: a.runId,
    source,
    updatedAt: new Date().toISOString(),
    files: [],
  };
  let lastJournal = performance.now();
  const writeJournal = async (): Promise<void> => {
    journal.updatedAt = new Date().toISOString();
    await writeJson(client, bucket, journalKey(prefix, a.runId), journal);
  };
  const tSend = performance.now();
  const sent = await core.group('Send the files that the bucket lacks', async () => {
    core.info(
      `${toSend.length} files (${formatBytes(toSend.reduce((s, f) => s + f.entry.size, 0))}) go up now` +
        (hashFirst.length > 0
          ? `; ${hashFirst.length} more (${formatBytes(hashedBytes)}) are hashed on the host meanwhile, and follow unless stored already.`
          : '.'),
    );
    try {
      return await sendFiles({
        channel: channels.send,
        host,
        client,
        bucket,
        prefix,
        dir: a.dir,
        files: toSend,
        later,
        filesInFlight: settings.s3.filesInFlight,
        bytesInFlight: settings.s3.bytesInFlight,
        onStored: (entry, sha, tail) => {
          const f = fileOf(entry, sha, tail);
          plan.done.set(entry.path, f);
          for (const w of waiting.get(sha) ?? []) plan.done.set(w.path, fileOf(w, sha, tail));
          journal.files.push(f);
          lease.add([sha]).catch((e) => core.debug(`lease: ${errorMessage(e)}`));
          // Every 30 s, what is stored so far: a run cut short is resumed from it.
          if (performance.now() - lastJournal > 30_000) {
            lastJournal = performance.now();
            writeJournal().catch((e) => core.debug(`journal: ${errorMessage(e)}`));
          }
        },
      });
    } catch (error) {
      if (journal.files.length > 0) {
        await writeJournal().then(
          () =>
            core.info(
              `${journal.files.length} files stored before the failure are kept: the next backup does not send them again.`,
            ),
          () => undefined,
        );
      }
      throw error;
    }
  });
  a.timings.stream = secondsSince(tSend);
  if (sent.files > 0) {
    core.info(
      `Sent ${sent.files} files, ${formatBytes(sent.bytes)} in ${formatDuration(a.timings.stream)} ` +
        `(${formatRate(sent.bytes, a.timings.stream)}).`,
    );
  }
  if (sent.linksChanged) await proveStill(host, a.dir, listing);

  // A stored object's tail hash, where no manifest of this host gives it: its last bytes, read
  // many at once (after a restore onto a new host, every file is one of these).
  await pool(storedAlready, settings.s3.filesInFlight, async ({ e, sha }) => {
    const tail = plan.tails.get(sha) ?? (await storedTail(client, bucket, prefix, sha, e.size));
    plan.tails.set(sha, tail);
    plan.done.set(e.path, fileOf(e, sha, tail));
  });

  // Every stored object this run relies on is named in its lease before it is relied on: a
  // sweep from now on keeps them. A sweep already running may not have seen the lease; its
  // mark says so (tree/sweep-marks.ts), and then the run checks before it publishes.
  await lease.add(
    [...plan.done.values()].map((f) => f.sha256),
    { flush: true },
  );
  const leasedAt = performance.now();
  const sweeps = await sweepsSince(client, bucket, prefix, plan.leasedWall);

  // Every object the snapshot names must exist now: a sweep may have removed one that an
  // earlier snapshot held while this run decided to reuse it (see tree/sweep.ts).
  const ordered = files.map((e) => plan.done.get(e.path));
  const missingFile = files.find((e) => !plan.done.has(e.path));
  if (missingFile) throw new Error(`no object was recorded for ${missingFile.path}`);
  const treeList = ordered as TreeFile[];
  await core.group('Check that every object is stored', async () => {
    if (sweeps.length === 0) {
      core.info(
        `No sweep of objects ran since ${formatDuration((SWEEP_MAX_MS + MARK_MARGIN_MS) / 1000)} before this run's lease: ` +
          `every object it relies on is kept by the lease.`,
      );
      return;
    }
    core.info(
      `A sweep of objects may have run while this run started (${sweeps.join(', ')}): checking that every object is still stored.`,
    );
    // A sweep that read the leases before the last write that this run relies on deletes within
    // its window: the check comes after that window, so it sees whatever such a sweep removed.
    const wait = SWEEP_WINDOW_MS - (performance.now() - leasedAt);
    if (wait > 0) await sleep(wait);
    const now = await storedObjects(client, bucket, prefix);
    const gone = treeList.filter((f) => now.get(f.sha256) !== f.size);
    if (gone.length === 0) {
      core.info(`All ${new Set(treeList.map((f) => f.sha256)).size} objects are stored.`);
      return;
    }
    core.warning(
      `${gone.length} objects went missing meanwhile (a retention sweep): sending them again.`,
    );
    const bySha = new Map(gone.map((f) => [f.sha256, f]));
    const entries = [...bySha.values()].map((f) => ({
      entry: files.find((e) => e.path === f.path) as TreeEntry,
      sha256: f.sha256,
    }));
    const again = await sendFiles({
      host,
      client,
      bucket,
      prefix,
      dir: a.dir,
      files: entries,
      filesInFlight: settings.s3.filesInFlight,
      bytesInFlight: settings.s3.bytesInFlight,
      onStored: () => undefined,
    });
    if (again.linksChanged) await proveStill(host, a.dir, listing);
  });

  const bytes = treeList.reduce((s, f) => s + f.size, 0);
  const manifest: TreeManifest = {
    format: TREE_FORMAT,
    key: folder,
    entry: listEntry(a.name),
    nodeKind: host.kind,
    blockHeight: a.height,
    ...(a.facts.placeholder !== undefined ? { placeholder: String(a.facts.placeholder) } : {}),
    facts: a.facts,
    objects: objectKey(prefix, ''),
    files: treeList,
    dirs: listing.entries.filter((e) => e.type === 'dir').map((e) => e.path),
    bytes,
    sent: { files: sent.files, bytes: sent.bytes },
    consistency: settings.backup.consistency,
    source,
    createdAt: a.snapshotAt.toISOString(),
    actionVersion: ACTION_VERSION,
    timings: a.timings,
  };

  if (settings.backup.verify && journal.files.length > 0) {
    // Every object is known to be stored with its size (above); what this run sent is read back.
    await core.group('Verify what was sent', () =>
      verifyTree(
        client,
        bucket,
        { ...manifest, files: journal.files },
        {
          deep: true,
          inFlight: settings.s3.filesInFlight,
          reads: createReadClient(settings.s3),
        },
      ),
    );
  }
  await a.beforePublish();
  const indexUrl = await core.group('Publish', () =>
    publishTree(client, settings.s3, folder, a.name, manifest),
  );

  // Published: what this host's unfinished runs stored is in the manifest now.
  const journals = [...plan.journals.map((j) => j.key), journalKey(prefix, a.runId)];
  await deleteKeys(client, bucket, journals).catch((e) =>
    core.warning(`Could not remove the journals ${journals.join(', ')}: ${errorMessage(e)}`),
  );
  return { manifest, key: folder, indexUrl };
}

/**
 * Where tar saw an inode's ctime move while it read (`Sent.linksChanged`): proves that no file
 * of the frozen copy changed, every size and mtime as listed. A table whose own link the node
 * removed meanwhile (a compaction, once the node runs again) keeps both; a byte written would
 * move one.
 */
export async function proveStill(host: NodeHost, dir: string, listing: TreeListing): Promise<void> {
  const now = new Map((await host.listTree(dir)).entries.map((e) => [e.hostPath, e]));
  const moved = listing.entries.find((e) => {
    const n = now.get(e.hostPath);
    return e.type === 'file' && (n?.size !== e.size || n.mtime !== e.mtime);
  });
  if (moved) {
    throw new HostError(
      `${moved.path} changed in the frozen copy while the files were sent (its size or mtime): the snapshot ` +
        `is not consistent, and nothing was published. Run again.`,
    );
  }
  core.info(
    `tar saw link counts change (the node compacted tables away meanwhile); no file's size or mtime changed.`,
  );
}
