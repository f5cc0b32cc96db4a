/**
 * The send of a tree backup (modes/backup-tree.ts): the files that no earlier run proves
 * stored go up over the host's tar (tree/send.ts); those whose object may be stored under
 * another name are hashed on the host meanwhile and follow unless it is. What is stored is
 * journaled as it goes, so that a run cut short is resumed; where tar saw a ctime move, the
 * frozen copy is proven still.
 */
import * as core from '@actions/core';
import { errorMessage, HostError } from '../errors.js';
import { formatBytes, formatDuration, formatRate, secondsSince } from '../format.js';
import type { NodeHost, TreeEntry, TreeListing } from '../node-kind/host.js';
import type { TreeFile } from '../tree/layout.js';
import type { LeaseKeeper } from '../tree/lease.js';
import { pool } from '../tree/pool.js';
import type { Say } from '../progress.js';
import { fileOf, storedTail, type Source, type Stored } from '../tree/reuse.js';
import { heldWhole, sendFiles, type SendFile, type Sent } from '../tree/send.js';
import type { RemoteStream } from '../ssh/session.js';
import type { Journal, RunJournal } from '../tree/store.js';
import type { TreeBackupArgs } from './backup-tree.js';

/** What a send needs of the run: `dir` is the folder the host's paths are relative to. */
export type SendArgs = Pick<
  TreeBackupArgs,
  'settings' | 'client' | 'host' | 'dir' | 'runId' | 'timings'
>;

/**
 * What a send stored, kept where a later run finds it: in the run's journal (written every
 * 30 s) and in its lease (a sweep meanwhile leaves the object alone). Neither failing fails
 * the send: the journal is written again at the end, and the lease only shortens a sweep.
 */
export function recordStored(journal: RunJournal, lease: LeaseKeeper, f: TreeFile): void {
  journal.record(f, (e) => core.debug(`journal: ${errorMessage(e)}`));
  lease.add([f.sha256]).catch((e) => core.debug(`lease: ${errorMessage(e)}`));
}

/**
 * Writes the journal of a run that failed, when it stored something: the next run of this host
 * finds those files there (tree/reuse.ts) and does not send them again.
 */
export async function keepJournal(journal: RunJournal, say: Say): Promise<void> {
  if (journal.files.length === 0) return;
  await journal.write().then(
    () =>
      say(
        `${journal.files.length} files stored before the failure are kept: the next backup does not send them again.`,
      ),
    () => undefined,
  );
}

/**
 * Whether the file at `path` holds data that no snapshot has seen, so that it goes up as read
 * and is hashed on the runner as it arrives, rather than hashed on the host first. Hashing on
 * the host reads a file there once more; that pays only where its object may be stored already,
 * under another name (a node restored from this bucket, a file moved, a run cut short whose
 * journal was not written). It does not when nothing is stored yet, nor for a file that
 * appeared since this host's last snapshot or since this run's send ahead of the stop (a table,
 * a journal, a wal segment). A wrong guess costs bytes sent again, never a wrong object: every
 * key is the hash of the bytes put under it.
 */
export function newSinceRecord(
  plan: Pick<Stored, 'stored' | 'hasPrevious' | 'known'>,
  path: string,
): boolean {
  return plan.stored.size === 0 || (plan.hasPrevious && !plan.known.has(path));
}

/**
 * Sends what the bucket lacks. It may begin while another group is open (the node's start):
 * every line goes to `say`, a HeldLog that backupTree opens in the send's own group.
 */
export async function sendMissing(o: {
  a: SendArgs;
  plan: Stored;
  listing: TreeListing;
  lease: LeaseKeeper;
  /** `host.sendFiles(a.dir)`, opened ahead. */
  channel: Promise<RemoteStream>;
  source: Source;
  /** The run's journal, which may hold what its send ahead of the stop stored. */
  journal: RunJournal;
  say: Say;
}): Promise<{ sent: Sent; journal: Journal }> {
  const { a, plan, listing, lease, channel, source, journal, say } = o;
  const { settings, client, host } = a;
  const { bucket, prefix } = settings.s3;
  const unseen = (e: TreeEntry): boolean => newSinceRecord(plan, e.path);
  const hashFirst = plan.unproven.filter(
    (e) => !unseen(e) || !heldWhole(e.size, settings.s3.bytesInFlight),
  );
  const hashedFirst = new Set(hashFirst);
  const toSend: SendFile[] = plan.unproven
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
      const more: SendFile[] = [];
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
      say(
        `${hashes.size} files hashed in ${formatDuration(a.timings.hash)} (${formatBytes(hashedBytes)}), ` +
          `${storedAlready.length} of them stored already; ${toSend.length} ` +
          `${plan.stored.size === 0 ? 'other files (nothing is stored yet)' : 'files new since the last snapshot'} are hashed as they arrive.`,
      );
      return more;
    });
  later.catch(() => undefined);

  journal.journal.source = source;
  const tSend = performance.now();
  say(
    `${toSend.length} files (${formatBytes(toSend.reduce((s, f) => s + f.entry.size, 0))}) go up now` +
      (hashFirst.length > 0
        ? `; ${hashFirst.length} more (${formatBytes(hashedBytes)}) are hashed on the host meanwhile, and follow unless stored already.`
        : '.'),
  );
  let sent: Sent;
  try {
    sent = await sendFiles({
      channel,
      host,
      client,
      bucket,
      prefix,
      dir: a.dir,
      files: toSend,
      later,
      filesInFlight: settings.s3.filesInFlight,
      bytesInFlight: settings.s3.bytesInFlight,
      say,
      onStored: (entry, sha, tail) => {
        const f = fileOf(entry, sha, tail);
        plan.done.set(entry.path, f);
        for (const w of waiting.get(sha) ?? []) plan.done.set(w.path, fileOf(w, sha, tail));
        recordStored(journal, lease, f);
      },
    });
  } catch (error) {
    await keepJournal(journal, say);
    throw error;
  }
  a.timings.stream = secondsSince(tSend);
  if (sent.files > 0) {
    say(
      `Sent ${sent.files} files, ${formatBytes(sent.bytes)} in ${formatDuration(a.timings.stream)} ` +
        `(${formatRate(sent.bytes, a.timings.stream)}).`,
    );
  }
  if (sent.linksChanged) await proveStill(host, a.dir, listing, say);

  // A stored object's tail hash, where no manifest of this host gives it: its last bytes, read
  // many at once (after a restore onto a new host, every file is one of these).
  await pool(storedAlready, settings.s3.filesInFlight, async ({ e, sha }) => {
    const tail = plan.tails.get(sha) ?? (await storedTail(client, bucket, prefix, sha, e.size));
    plan.tails.set(sha, tail);
    plan.done.set(e.path, fileOf(e, sha, tail));
  });
  return { sent, journal: journal.journal };
}

/**
 * Where tar saw an inode's ctime move while it read (`Sent.linksChanged`): proves that no file
 * of the frozen copy changed, every size and mtime as listed. A table whose own link the node
 * removed meanwhile (a compaction, once the node runs again) keeps both; a byte written would
 * move one.
 */
export async function proveStill(
  host: NodeHost,
  dir: string,
  listing: TreeListing,
  say: Say = (line) => core.info(line),
): Promise<void> {
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
  say(
    `tar saw link counts change (the node compacted tables away meanwhile); no file's size or mtime changed.`,
  );
}
