/**
 * The tree part of mode: backup. Before the stop, what the bucket holds is read (startTree);
 * once the copy is frozen: list its files, prove which are stored already, send those whose
 * content is missing (backup-tree-send.ts), check that every object the snapshot names
 * exists, then publish its manifest, index and checksum file, backup_list and the pointer
 * (tree/publish.ts). See tree/layout.ts for the bucket's layout.
 */
import * as core from '@actions/core';
import type { S3Client } from '@aws-sdk/client-s3';
import { ACTION_VERSION } from '../constants.js';
import { errorMessage } from '../errors.js';
import { formatBytes, formatDuration } from '../format.js';
import { listEntry, type ArchiveName } from '../naming.js';
import type { KindFacts, NodeHost, TreeEntry, TreeListing } from '../node-kind/host.js';
import { createReadClient } from '../s3/client.js';
import { deleteKeys } from '../s3/store.js';
import type { Settings } from '../settings.js';
import {
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
import { setTimeout as sleep } from 'node:timers/promises';
import { publishTree } from '../tree/publish.js';
import { proveStill, sendMissing } from './backup-tree-send.js';
import { closeTreeChannels, openTreeChannels, sendFiles, type TreeChannels } from '../tree/send.js';
import {
  proveUnchanged,
  readAhead,
  type Ahead,
  type Earlier,
  type Source,
  type Stored,
} from '../tree/reuse.js';
import { journalKey, RunJournal, storedObjects } from '../tree/store.js';
import { withSentAhead, type SentAhead } from './backup-tree-ahead.js';
import { HeldLog } from '../progress.js';

/**
 * What a tree backup sets going before the node stops: its two data channels (tree/send.ts),
 * which connect and wait for their go line (kept alive while the new table files go up ahead
 * of the stop, backup-tree-ahead.ts), and the bucket's side of what is stored already
 * (tree/reuse.ts, `readAhead`), which needs nothing of the frozen copy. `close` ends what the
 * run did not: the channels, and the lease of a run that published nothing.
 */
export interface TreeStart {
  channels: TreeChannels;
  lease: LeaseKeeper;
  source: Source;
  ahead: Promise<Ahead>;
  /** What this run stored, for the next run should it fail: begun ahead of the stop. */
  journal: RunJournal;
  /** What the send ahead of the stop stored, once it ran. */
  sentAhead?: SentAhead;
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
  /** The bucket's earlier trees and journals (readEarlier), begun once connected. */
  earlier?: Promise<Earlier>;
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
  const ahead = readAhead({ client, settings, lease, source, earlier: a.earlier });
  ahead.catch(() => undefined);
  return {
    channels,
    lease,
    source,
    ahead,
    journal: new RunJournal(client, settings.s3.bucket, settings.s3.prefix, a.runId, source),
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
  /** Begun before the stop (startTree); the caller closes it. */
  start: TreeStart;
  /** Runs once every object is stored, before anything is published (a node stopped for the read starts). */
  beforePublish: () => Promise<void>;
}

/** The frozen copy's files, and what of them is proven stored already (tree/reuse.ts). */
export interface FrozenPlan {
  listing: TreeListing;
  plan: Stored;
}

/**
 * A tree backup's work on the frozen copy, begun as soon as it is frozen (beginTree), while the
 * node starts: it says nothing meanwhile, the start's group being open; backupTree says it.
 */
export interface TreeRun {
  args: TreeBackupArgs;
  planned: Promise<FrozenPlan>;
  sending: Promise<Awaited<ReturnType<typeof sendMissing>>>;
  /** The send's lines, said once its group opens. */
  log: HeldLog;
}

/**
 * Lists the frozen copy (`listing`, begun by the caller) and proves which of its files earlier
 * runs stored once the bucket's side is read, while the node starts; sends the others once
 * `started` resolves. Sent during the start, a transfer that broke (a cut connection) failed
 * the start's session with it, and the two failures crossed.
 */
export function beginTree(
  args: TreeBackupArgs,
  listing: Promise<TreeListing>,
  started: Promise<void>,
): TreeRun {
  const planned = planFrozen(args.start, listing);
  const log = new HeldLog();
  const sending = Promise.all([planned, started]).then(([{ plan, listing: l }]) =>
    sendMissing({
      a: args,
      plan,
      listing: l,
      lease: args.start.lease,
      channel: args.start.channels.send,
      source: { ...args.start.source, device: l.device },
      journal: args.start.journal,
      say: log.say,
    }),
  );
  sending.catch(() => undefined);
  return { args, planned, sending, log };
}

/** Lists the frozen copy and proves which of its files earlier runs stored. */
function planFrozen(start: TreeStart, listing: Promise<TreeListing>): Promise<FrozenPlan> {
  const planned = listing.then(async (l) => {
    const files = l.entries.filter((e) => e.type === 'file');
    const ahead = withSentAhead(await start.ahead, start.sentAhead);
    // The earlier runs were found by the data dir's device, read before the freeze; the frozen
    // copy is on it by construction. Were it not, an inode would prove nothing: none is used.
    const sameDevice = l.device === start.source.device;
    const plan = await proveUnchanged(
      sameDevice ? ahead : { ...ahead, before: new Map(), listedAhead: false },
      files,
      start.channels.tails,
      start.lease,
    );
    return { listing: l, plan };
  });
  planned.catch(() => undefined);
  return planned;
}

export interface TreeBackupResult {
  manifest: TreeManifest;
  key: string;
  /** Where icon2-node's restore (DOWNLOAD_URL) and aria2c find it. */
  indexUrl: string;
}

export async function backupTree(run: TreeRun): Promise<TreeBackupResult> {
  const done = await backupWithLease(run);
  // Published: the manifest protects its objects now; the lease expires on its own.
  await run.args.start.lease.release();
  return done;
}

async function backupWithLease(run: TreeRun): Promise<TreeBackupResult> {
  const a = run.args;
  const { lease } = a.start;
  const { settings, client, host } = a;
  const { bucket, prefix } = settings.s3;
  const folder = treeFolder(prefix, a.name);

  const listing = await core.group('List the snapshot', async () => {
    const l = (await run.planned).listing;
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
    const { plan: p } = await run.planned;
    core.info(p.summary);
    return p;
  });

  const { sent, journal } = await core.group('Send the files that the bucket lacks', () => {
    run.log.open();
    return run.sending;
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
  const early = a.start.sentAhead?.files.length ? a.start.sentAhead : undefined;
  const ahead = early && { files: early.files.length, bytes: early.bytes };
  if (early) a.timings.ahead = early.seconds;
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
    // What this run moved: after the freeze, and ahead of the stop.
    sent: ahead
      ? {
          files: sent.files + ahead.files,
          bytes: sent.bytes + ahead.bytes,
          ahead,
        }
      : { files: sent.files, bytes: sent.bytes },
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
