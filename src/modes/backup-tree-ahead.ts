/**
 * A tree backup's send ahead of the stop: the table files of the running node that no earlier
 * run stored go up while it runs, and the node stops only once they are in the bucket.
 *
 * LevelDB and goleveldb write a table file once and never change it. One sent now is the frozen
 * copy's own when, at the freeze, it is still there unchanged: the frozen copy's proof takes it
 * as it takes an earlier snapshot's files (same path, size, inode and mtime, and the same last
 * 10,240 bytes; tree/reuse.ts), and what the node wrote meanwhile goes up after the freeze. A
 * table still being written, or removed by a compaction before tar opened it, is left out here
 * and read from the frozen copy if the snapshot holds it. So the bulk of a first backup, and a
 * day's new tables, go up with the node running: the snapshot is listed seconds after the stop,
 * and the frozen copy's hard links keep the tables a compaction removes for seconds, not hours.
 * The other new files that have stood unchanged for a while (the wal segments a goloop node has
 * moved past) go too; those are hashed on the host once frozen, as every file but a table is.
 */
import * as core from '@actions/core';
import type { S3Client } from '@aws-sdk/client-s3';
import { formatBytes, formatDuration, formatRate, secondsSince } from '../format.js';
import type { NodeHost, TreeEntry, TreeListing } from '../node-kind/host.js';
import type { Settings } from '../settings.js';
import { AHEAD_SETTLED_SECONDS } from '../node-kind/archive-remote.js';
import { isTableFile, reusable, type TreeFile } from '../tree/layout.js';
import { fileOf, type Ahead } from '../tree/reuse.js';
import { heldWhole, sendFiles } from '../tree/send.js';
import { Budget } from '../tree/budget.js';
import { FileProgress } from '../progress.js';
import { keepJournal, recordStored } from './backup-tree-send.js';
import type { TreeStart } from './backup-tree.js';

/**
 * A round of the send ahead that took this long is followed by another, for what the node
 * wrote meanwhile (a first backup of a large node goes up for hours): each round is shorter
 * than the one before, and what is left for after the freeze is what the last one took.
 */
export const AHEAD_ROUND_SECONDS = 60;
/** The most rounds. */
export const AHEAD_ROUNDS = 4;

/** What the send ahead of the stop stored: the frozen copy's proof takes these as recorded. */
export interface SentAhead {
  files: TreeFile[];
  bytes: number;
  /** Table files the node removed, or was still writing, while they were read. */
  skipped: number;
  seconds: number;
}

/**
 * Sends the running node's new files: the table files that no earlier run of this host
 * recorded (every one, when nothing is stored yet), and the other such files that have
 * settled. A table an earlier run recorded is proven after the freeze as before; one that may
 * be stored under another name is hashed on the host after the freeze (backup-tree-send.ts),
 * as sending it now could send bytes the bucket holds. Resolves with what it stored, for the
 * frozen copy's proof; undefined where no record of this host tells a new file from a stored
 * one.
 */
export async function sendAhead(o: {
  settings: Settings;
  client: S3Client;
  host: NodeHost;
  start: TreeStart;
}): Promise<SentAhead | undefined> {
  const { settings, client, host, start } = o;
  const t = performance.now();
  const ahead = await start.ahead;
  const { journal, lease } = start;
  const result: SentAhead = { files: [], bytes: 0, skipped: 0, seconds: 0 };
  const onStored = (entry: TreeEntry, sha: string, tail: string): void => {
    const f = fileOf(entry, sha, tail);
    result.files.push(f);
    recordStored(journal, lease, f);
  };
  let live = await host.listTree(host.dataDir, { live: true });
  const tableCount = (l: TreeListing): number =>
    l.entries.filter((e) => e.type === 'file' && isTableFile(e.path)).length;
  // Where this host has a record (its last snapshot, or a run cut short), a file it lacks is
  // data that no snapshot has seen. Without one, a stored object may hold it already.
  const recorded = ahead.previousKey !== undefined || ahead.journals.length > 0;
  if (ahead.stored.size > 0 && !recorded) {
    core.info(
      `${tableCount(live)} table files in the data dir, and no snapshot of this host: the bucket's objects may ` +
        `hold them (a node restored from it), so they are hashed on the host once frozen and sent only where missing.`,
    );
    return undefined;
  }
  let channels = 0;
  let rounds = 0;
  for (;;) {
    const began = performance.now();
    // What is stored, with what the rounds so far sent: a later round sends only what is newer.
    const todo = aheadFiles(live, withSentAhead(ahead, result), settings.s3.bytesInFlight);
    if (todo.length === 0) {
      core.info(
        rounds === 0
          ? `${tableCount(live)} table files in the data dir, none new: earlier runs stored them, or they ` +
              `are hashed on the host once frozen.`
          : `Nothing new since: the rest goes after the freeze.`,
      );
      break;
    }
    rounds++;
    core.info(aheadLine(rounds, todo, tableCount(live)));
    try {
      const sent = await sendShared({ settings, client, host, files: todo, onStored });
      result.bytes += sent.bytes;
      // A file left out of an earlier round (still being written) is looked at again.
      result.skipped = sent.skipped;
      channels = sent.channels;
    } catch (error) {
      await keepJournal(journal, (line) => core.info(line));
      throw error;
    }
    const took = secondsSince(began);
    if (took < AHEAD_ROUND_SECONDS || rounds === AHEAD_ROUNDS) break;
    core.info(
      `That took ${formatDuration(took)}, in which the node wrote on: the data dir is listed again.`,
    );
    live = await host.listTree(host.dataDir, { live: true });
  }
  if (rounds === 0) return result;
  // Kept from now on: a run cut after this point sends none of it again.
  await journal.write();
  result.seconds = secondsSince(t);
  core.info(
    `Sent ${result.files.length} files, ${formatBytes(result.bytes)} in ${formatDuration(result.seconds)} ` +
      `(${formatRate(result.bytes, result.seconds)}, over ${channels} SSH channel${channels > 1 ? 's' : ''}` +
      `${rounds > 1 ? `, in ${rounds} rounds` : ''})` +
      (result.skipped > 0
        ? `; ${result.skipped} left out (removed by the node, or still being written): the frozen copy has what is current.`
        : '.'),
  );
  return result;
}

/** What a round of the send ahead takes, for the log. */
function aheadLine(round: number, todo: TreeEntry[], tables: number): string {
  const sizeOf = (list: TreeEntry[]): number => list.reduce((s, e) => s + e.size, 0);
  const newTables = todo.filter((e) => isTableFile(e.path));
  const others = todo.filter((e) => !isTableFile(e.path));
  const otherText = `${others.length} other new files (${formatBytes(sizeOf(others))}) that have stood unchanged for ${AHEAD_SETTLED_SECONDS} s`;
  if (round > 1) {
    return (
      `Written since the last round: ${newTables.length} table files (${formatBytes(sizeOf(newTables))})` +
      `${others.length > 0 ? ` and ${otherText}` : ''}; they go up now.`
    );
  }
  return (
    `${newTables.length} of the ${tables} table files (${formatBytes(sizeOf(newTables))}) are new: ` +
    `they go up now, while the node runs` +
    (others.length > 0 ? `, with ${otherText}.` : '.')
  );
}

/**
 * What the send ahead of the stop takes of the running node's listing: the files that no
 * record of this host names (every file, when nothing is stored), tables as they are and the
 * others once they have stood unchanged for AHEAD_SETTLED_SECONDS by the host's clock; not a
 * table whose record proves it after the freeze, nor a file larger than the runner holds whole.
 *
 * The other files (a journal, a MANIFEST, a wal segment, config) may be written in place by the
 * node. One that has settled (a wal segment the node has moved past) saves its send after the
 * stop: once frozen it is hashed on the host as every file but a table is (tree/layout.ts,
 * `reusable`), and found stored unless the node wrote to it meanwhile.
 */
export function aheadFiles(live: TreeListing, ahead: Ahead, bytesInFlight: number): TreeEntry[] {
  const provenLater = (e: TreeEntry): boolean => {
    const sha = reusable(e, ahead.before.get(e.path));
    return sha !== undefined && ahead.stored.get(sha) === e.size;
  };
  const fresh = (e: TreeEntry): boolean => ahead.stored.size === 0 || !ahead.before.has(e.path);
  const settled = (e: TreeEntry): boolean =>
    isTableFile(e.path) || Number(e.mtime) <= live.now - AHEAD_SETTLED_SECONDS;
  return live.entries.filter(
    (e) =>
      e.type === 'file' &&
      !provenLater(e) &&
      fresh(e) &&
      settled(e) &&
      heldWhole(e.size, bytesInFlight),
  );
}

/**
 * The running node's `files`, over `ssh-connections` channels at once (a connection each over
 * OpenSSH: one moves at most its window per round trip; README, Across a real network), dealt
 * by bytes. The runner holds one budget of files and bytes for all of them. The first failure
 * ends every channel, and it is the one thrown.
 */
async function sendShared(o: {
  settings: Settings;
  client: S3Client;
  host: NodeHost;
  files: TreeEntry[];
  onStored: (entry: TreeEntry, sha256: string, tail: string) => void;
}): Promise<{ bytes: number; skipped: number; channels: number }> {
  const { settings, host } = o;
  const groups = deal(o.files, settings.ssh?.connections ?? 1);
  const shared = {
    budget: new Budget(settings.s3.filesInFlight, settings.s3.bytesInFlight),
    progress: new FileProgress(
      'Upload',
      o.files.length,
      o.files.reduce((s, e) => s + e.size, 0),
    ),
  };
  const channels = groups.map(() => host.sendFiles(host.dataDir, { live: true }));
  for (const c of channels) c.catch(() => undefined);
  let first: { error: unknown } | undefined;
  const sends = groups.map((files, i) =>
    sendFiles({
      host,
      client: o.client,
      bucket: settings.s3.bucket,
      prefix: settings.s3.prefix,
      dir: host.dataDir,
      files: files.map((entry) => ({ entry })),
      filesInFlight: settings.s3.filesInFlight,
      bytesInFlight: settings.s3.bytesInFlight,
      live: true,
      shared,
      channel: channels[i],
      onStored: o.onStored,
    }).catch((error: unknown) => {
      if (!first) {
        first = { error };
        for (const c of channels)
          void c.then(
            (r) => r.kill(),
            () => undefined,
          );
      }
      throw error;
    }),
  );
  const settled = await Promise.allSettled(sends);
  shared.progress.stop();
  if (first) throw first.error;
  const out = { bytes: 0, skipped: 0, channels: groups.length };
  for (const r of settled) {
    if (r.status !== 'fulfilled') continue;
    out.bytes += r.value.bytes;
    out.skipped += r.value.skipped;
  }
  return out;
}

/** `files` in at most `n` groups of about equal bytes, the largest files dealt first. */
export function deal<T extends { size: number }>(files: T[], n: number): T[][] {
  const groups = Array.from({ length: Math.max(1, Math.min(n, files.length)) }, () => ({
    bytes: 0,
    files: [] as T[],
  }));
  for (const f of [...files].sort((a, b) => b.size - a.size)) {
    const g = groups.reduce((least, x) => (x.bytes < least.bytes ? x : least));
    g.files.push(f);
    g.bytes += f.size;
  }
  return groups.map((g) => g.files);
}

/** The bucket's side of what is stored, with what the send ahead of the stop stored in it. */
export function withSentAhead(ahead: Ahead, sent: SentAhead | undefined): Ahead {
  if (!sent) return ahead;
  const stored = new Map(ahead.stored);
  const before = new Map(ahead.before);
  for (const f of sent.files) {
    stored.set(f.sha256, f.size);
    before.set(f.path, f);
  }
  return { ...ahead, stored, before, listedAhead: true };
}
