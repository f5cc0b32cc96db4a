/**
 * A tree backup's transfer: the files whose objects are missing come from the host as one
 * plain tar over SSH and are put under their sha256. Where the host hashed a file first, the
 * bytes that arrive are checked against that hash; a file the host did not hash (one held
 * whole on the runner, see `heldWhole`) is named by the hash of what arrived. Many files are
 * in flight to S3 at once, within a budget of files and bytes held on the runner; a file
 * larger than its share of the budget goes up alone, as a multipart upload, while the tar
 * waits: its key is needed before its bytes, so the host must have hashed it. The tar, and the
 * ends of the files that reuse.ts proves, come over data channels opened ahead (TreeChannels).
 */
import * as core from '@actions/core';
import type { S3Client } from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { IntegrityError, RemoteCommandError, StorageError, errorMessage } from '../errors.js';
import type { NodeHost, TreeEntry } from '../node-kind/host.js';
import { CHANGED_MARK } from '../node-kind/archive-remote.js';
import { ringChunks } from '../byte-source.js';
import { Budget } from './budget.js';
import { streamUpload } from '../s3/upload.js';
import { GO_LINE } from '../shell.js';
import { closeUnused, type RemoteStream } from '../ssh/session.js';
import { TailHasher, tailHash, TAIL_BYTES } from './icon2.js';
import { objectKey } from './layout.js';
import { putObject } from './store.js';
import { FileProgress, type Say } from '../progress.js';
import { ChunkReader, nextMember, padding, TarEndedError } from './tar-stream.js';

export interface SendFile {
  entry: TreeEntry;
  sha256?: string;
}

export interface SendOptions {
  host: NodeHost;
  client: S3Client;
  bucket: string;
  prefix: string;
  /** The folder on the host the paths are relative to. */
  dir: string;
  /**
   * What to send, in order, with the sha256 the host computed for each; without one, a file
   * must be held whole (`heldWhole`) and is named by the hash of the bytes that arrive.
   */
  files: SendFile[];
  /**
   * Files decided while the first go up (those the host hashes meanwhile whose objects are
   * missing): their paths follow the first ones on the tar's input once this resolves.
   */
  later?: Promise<SendFile[]>;
  filesInFlight: number;
  bytesInFlight: number;
  /** Called once a file's object is stored, with its tail hash. */
  onStored: (entry: TreeEntry, sha256: string, tail: string) => void;
  /** `host.sendFiles(dir)`, opened ahead (see TreeChannels); one is opened when not given. */
  channel?: Promise<RemoteStream>;
  /** Where the progress lines go (the log when not given). */
  say?: Say;
  /**
   * The files are the running node's (a send ahead of the stop): one that it removed, or that
   * no longer reads as listed (a table still being written), is left out, counted in
   * `Sent.skipped`, not a failure. Every file must be held whole.
   */
  live?: boolean;
  /**
   * Shared by sends that run at once over several channels: one budget of what the runner
   * holds, and one progress, which the caller reports and stops.
   */
  shared?: { budget: Budget; progress: FileProgress };
}

/**
 * Lets a data channel opened ahead go, with its NUL-terminated paths, and ends its input
 * unless more paths are to follow (`more`).
 */
function writePaths(remote: RemoteStream, paths: string[], more = false): void {
  const text = GO_LINE + nulPaths(paths);
  if (more) remote.stdin.write(text);
  else remote.stdin.end(text);
}

const nulPaths = (paths: string[]): string => paths.map((p) => `${p}\0`).join('');

const tailsFailed = (remote: RemoteStream, code: number | null): RemoteCommandError =>
  new RemoteCommandError('Reading the ends of the files', code, remote.stderrTail());

/**
 * The tail hash of each file, as the host's `fileTails` channel (opened ahead) reads them.
 * A file whose end the host cannot read in full fails the whole read.
 */
export async function readTails(
  remote: RemoteStream,
  files: Array<{ hostPath: string; size: number }>,
): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  writePaths(
    remote,
    files.map((f) => f.hostPath),
  );
  const reader = new ChunkReader(ringChunks(remote.source, 256 * 1024));
  try {
    for (const f of files) {
      out.set(f.hostPath, await tailHash(await reader.read(Math.min(f.size, TAIL_BYTES))));
    }
    await reader.drain();
  } catch (error) {
    remote.kill();
    const code = await remote.exit;
    throw code ? tailsFailed(remote, code) : error;
  }
  const code = await remote.exit;
  if (code !== 0) throw tailsFailed(remote, code);
  return out;
}

/**
 * Whether a file of `size` bytes is held whole on the runner before it is put (true), or goes
 * up alone, streamed as a multipart upload under a key known before its bytes (false).
 */
export function heldWhole(size: number, bytesInFlight: number): boolean {
  return size <= Math.max(8 * 1024 ** 2, Math.floor(bytesInFlight / 4));
}

export interface Sent {
  files: number;
  bytes: number;
  /**
   * tar saw an inode's ctime move while it read (CHANGED_MARK): a link count that changed, or
   * a byte written. The caller proves which (its listing's sizes and mtimes, read again).
   */
  linksChanged: boolean;
  /** With `live`: the files left out, gone or changed since they were listed. */
  skipped: number;
}

export async function sendFiles(o: SendOptions): Promise<Sent> {
  // Nothing to send meanwhile: what comes later is all there is.
  if (o.later && o.files.length === 0)
    return sendFiles({ ...o, files: await o.later, later: undefined });
  if (o.files.length === 0) return { files: 0, bytes: 0, linksChanged: false, skipped: 0 };
  const unhashed = (files: SendFile[]): Error | undefined => {
    const f = files.find((f) => (o.live || !f.sha256) && !heldWhole(f.entry.size, o.bytesInFlight));
    return f && new Error(`${f.entry.path} is streamed alone: it needs the host's hash`);
  };
  const first = unhashed(o.files);
  if (first) throw first;
  let total = o.files.reduce((s, f) => s + f.entry.size, 0);
  const say = o.say ?? ((line: string) => core.info(line));
  const progress =
    o.shared?.progress ?? new FileProgress('Upload', o.files.length, total, undefined, say);
  const budget = o.shared?.budget ?? new Budget(o.filesInFlight, o.bytesInFlight);
  const byPath = new Map(o.files.map((f) => [f.entry.hostPath, f]));
  const remote = await (o.channel ?? o.host.sendFiles(o.dir, { live: o.live }));
  let skipped = 0;
  let skippedBytes = 0;
  const skip = (size: number): void => {
    skipped++;
    skippedBytes += size;
    progress.grow(-1, -size);
  };
  let linksChanged = false;
  remote.onStderrLine((line) => {
    if (line === CHANGED_MARK) linksChanged = true;
  });
  let failure: Error | undefined;
  const uploads = new Set<Promise<void>>();
  const fail = (error: unknown): void => {
    failure ??= error instanceof Error ? error : new Error(String(error));
  };
  writePaths(
    remote,
    o.files.map((f) => f.entry.hostPath),
    o.later !== undefined,
  );
  // The host's tar reads its paths as they come: the later ones end its input. A failure to
  // decide them ends it too, and the transfer with it.
  void o.later
    ?.then((more) => {
      const error = unhashed(more);
      if (error) throw error;
      for (const f of more) byPath.set(f.entry.hostPath, f);
      const bytes = more.reduce((s, f) => s + f.entry.size, 0);
      total += bytes;
      progress.grow(more.length, bytes);
      remote.stdin.end(nulPaths(more.map((f) => f.entry.hostPath)));
    })
    .catch((error: unknown) => {
      fail(error);
      if (!remote.stdin.writableEnded) remote.stdin.end();
    });
  // The host's bytes land in one ring, each read copied out before the next: no buffer per read.
  const reader = new ChunkReader(ringChunks(remote.source));
  let sent = 0;
  try {
    for (;;) {
      if (failure) break;
      const member = await nextMember(reader);
      if (!member) {
        await reader.drain();
        break;
      }
      const file = byPath.get(member.name);
      if (o.live && file && member.type === 'file' && member.size !== file.entry.size) {
        // A table the node was still writing when it was listed: read from the frozen copy, if
        // the snapshot holds it.
        byPath.delete(member.name);
        await reader.skip(member.size + padding(member.size));
        skip(file.entry.size);
        continue;
      }
      if (!file || member.type !== 'file' || member.size !== file.entry.size) {
        throw new IntegrityError(
          `The host sent ${member.name} (${member.size} bytes), which is not the file it listed` +
            `${file ? ` (${file.entry.size} bytes)` : ''}: a file of the frozen copy changed. Nothing was published.`,
        );
      }
      byPath.delete(member.name);
      const { entry, sha256 } = file;
      if (sha256 && !heldWhole(entry.size, o.bytesInFlight)) {
        // Alone: the uploads in flight finish first, then this one streams.
        await Promise.all(uploads);
        if (failure) break;
        const tail = await uploadStreamed(o, reader, entry, sha256);
        o.onStored(entry, sha256, tail);
        progress.files++;
        progress.bytes += entry.size;
        sent++;
        continue;
      }
      const body = await budget.take(entry.size);
      await reader.readInto(body, 0, entry.size);
      await reader.skip(padding(entry.size));
      const upload = (async () => {
        try {
          const actual = createHash('sha256').update(body).digest('hex');
          if (sha256 && actual !== sha256) throw changedError(entry.path, sha256, actual);
          const tail = new TailHasher();
          tail.update(body);
          await putObject(o.client, o.bucket, o.prefix, actual, body);
          o.onStored(entry, actual, await tail.digest());
          progress.files++;
          progress.bytes += entry.size;
        } catch (error) {
          fail(error);
        } finally {
          budget.give(body);
        }
      })();
      uploads.add(upload);
      void upload.finally(() => uploads.delete(upload));
      sent++;
    }
    await Promise.all(uploads);
    if (failure) throw failure;
    const code = await remote.exit;
    if (code !== 0) {
      throw code === null
        ? new StorageError(
            `The SSH connection was lost while the files streamed. Nothing was published.`,
          )
        : new RemoteCommandError('Sending the files', code, remote.stderrTail());
    }
    if (o.live) {
      // The node removed them before tar opened them (a compaction): they are in no snapshot.
      for (const f of byPath.values()) skip(f.entry.size);
    } else if (byPath.size > 0) {
      throw new IntegrityError(
        `The host did not send ${byPath.size} of the files it listed (the first: ${[...byPath.keys()][0]}). Nothing was published.`,
      );
    }
    if (!o.shared) say(progress.line());
    return { files: sent, bytes: total - skippedBytes, linksChanged, skipped };
  } catch (error) {
    remote.kill();
    await Promise.allSettled([...uploads]);
    if (failure && !(error instanceof IntegrityError)) throw failure;
    throw error instanceof TarEndedError
      ? new StorageError(
          `The SSH connection was lost, or the host's tar ended, in the middle of a file. Nothing was published.`,
        )
      : error;
  } finally {
    if (!o.shared) progress.stop();
    if (!o.shared && !budget.idle) core.debug('uploads still in flight at the end of the transfer');
  }
}

function changedError(path: string, expected: string, actual: string): IntegrityError {
  return new IntegrityError(
    `${path} read as sha256 ${actual}, not the ${expected} the host computed a moment before: the file changed ` +
      `while the backup read it. Nothing was published.`,
  );
}

/** A large file, streamed from the tar into a multipart upload, proven before it completes. */
async function uploadStreamed(
  o: SendOptions,
  reader: ChunkReader,
  entry: TreeEntry,
  sha256: string,
): Promise<string> {
  const hash = createHash('sha256');
  const tail = new TailHasher();
  let left = entry.size;
  let settle: (error?: Error) => void = () => undefined;
  const sourceOk = new Promise<void>((resolve, reject) => {
    settle = (error) => (error ? reject(error) : resolve());
  });
  sourceOk.catch(() => undefined);
  const body = Readable.from(
    (async function* () {
      while (left > 0) {
        const piece = await reader.some(Math.min(left, 1024 * 1024));
        if (!piece) {
          settle(new Error('the tar stream ended in the middle of a file'));
          return;
        }
        left -= piece.length;
        hash.update(piece);
        tail.update(piece);
        yield Buffer.from(piece);
      }
      await reader.skip(padding(entry.size));
      const actual = hash.digest('hex');
      settle(actual === sha256 ? undefined : changedError(entry.path, sha256, actual));
    })(),
  );
  try {
    await streamUpload({
      client: o.client,
      bucket: o.bucket,
      key: objectKey(o.prefix, sha256),
      body,
      partSize: 16 * 1024 ** 2,
      queueSize: Math.max(1, Math.min(4, Math.floor(o.bytesInFlight / (16 * 1024 ** 2)) - 1)),
      sourceOk,
    });
  } catch (error) {
    throw error instanceof IntegrityError
      ? error
      : new StorageError(`The upload of ${entry.path} failed: ${errorMessage(error)}`);
  }
  return tail.digest();
}

/**
 * The two data channels a tree backup reads the host's files over. Each costs an SSH
 * handshake (a quarter of a second on the bench's host, more across a network): both connect
 * while the node stops and the copy freezes, and wait there for their go line and paths.
 */
export interface TreeChannels {
  tails: RemoteStream;
  send: Promise<RemoteStream>;
}

export function openTreeChannels(host: NodeHost, dir: string): TreeChannels {
  const send = host.sendFiles(dir);
  send.catch(() => undefined);
  return { tails: host.fileTails(dir), send };
}

/**
 * Ends both channels, whatever the run reached: one that was used has ended already; one that
 * was not (nothing to prove or to send, or a failure first) sees its input end without its go
 * line, and exits. Left open, its ssh would keep the action's process from ending.
 */
export async function closeTreeChannels(c: TreeChannels): Promise<void> {
  await Promise.all([closeUnused(c.tails), c.send.then(closeUnused, () => undefined)]);
}
