/**
 * A tree restore's transfer: the snapshot's files fetched in parallel (within a budget of
 * files and bytes on the runner), each checked, and written to the host as one plain tar into
 * a staging folder that outlives a failed run. What an earlier run left there is used: a file
 * complete and proven by its sha256 on the host is kept, a file cut short goes on from its
 * last byte, anything else is removed. So are the data dir's table files that are the
 * snapshot's by path and size, linked into the staging folder first: a restore onto the node
 * that the snapshot came from fetches only what changed since.
 */
import * as core from '@actions/core';
import { ActionError, IntegrityError } from '../errors.js';
import { formatBytes } from '../format.js';
import { goLine } from '../node-kind/extract.js';
import type { NodeHost } from '../node-kind/host.js';
import { GO_LINE } from '../shell.js';
import { closeUnused, type RemoteStream } from '../ssh/session.js';
import { FileProgress } from '../progress.js';
import { MemoryPool } from '../s3/pieces.js';
import { Channel } from './fetch-channel.js';
import { checker, FileFetch, type FetchItem } from './fetch-file.js';
import { fetchOnHost, readableOnHost, type HostReads } from './fetch-on-host.js';
import { END_OF_TAR, memberHeader, padding } from './tar-stream.js';

/** The go line of a plain tar (no decompressor): what a tree's channels carry. */
const PLAIN_GO = goLine({ name: 'none' });

export interface FetchOptions {
  host: NodeHost;
  stage: string;
  /** Whether the host's check found the staging folder: an earlier run's files are looked for only then. */
  stageFound: boolean;
  /** Tables of the data dir that may be the snapshot's (NodeHost.tablesInDataDir), for `address`. */
  inDataDir: { paths: string[]; address: string };
  /** `host.receiveTree(stage)`, opened ahead: it starts on its go line. */
  remote: RemoteStream;
  /**
   * `host.receiveMore(stage)`, opened ahead: more channels that share the files (one SSH
   * connection moves at most its window per round trip; see README, Across a real network).
   */
  more: RemoteStream[];
  onGo: () => void;
  items: FetchItem[];
  dirs: string[];
  filesInFlight: number;
  bytesInFlight: number;
  /** When the host is to read the files itself (download-on), how. */
  onHost?: HostReads;
}

export interface Fetched {
  files: number;
  bytes: number;
  /** Files an earlier run left complete (proven) and partial (continued). */
  kept: number;
  continued: number;
  /** Files linked from the data dir and proven. */
  fromDataDir: number;
  /** What the extraction counted in the staging folder. */
  counted: number;
  /** How many SSH channels the files came over (0: the host read them from S3). */
  channels: number;
}

export async function fetchTree(o: FetchOptions): Promise<Fetched> {
  const { host, stage } = o;
  const byPath = new Map(o.items.map((i) => [i.path, i]));
  let staged = o.stageFound ? await host.stagedFiles(stage) : new Map<string, number>();
  // Only our manifests resume, and only they take files from the data dir: the sha256 is what
  // proves a kept file on the host.
  const linked = new Set<string>();
  const linkable = o.inDataDir.paths.filter((p) => byPath.get(p)?.sha256 && !staged.has(p));
  if (linkable.length > 0) {
    const before = staged;
    await host.linkTables(stage, linkable, o.inDataDir.address);
    staged = await host.stagedFiles(stage);
    for (const path of staged.keys()) if (!before.has(path)) linked.add(path);
    core.info(
      `${linked.size} table files of the data dir are the snapshot's by path and size: linked into the staging folder, to be proven by their sha256.`,
    );
  }
  const complete: FetchItem[] = [];
  const partial: Array<{ item: FetchItem; have: number }> = [];
  const stray: string[] = [];
  for (const [path, size] of staged) {
    const item = byPath.get(path);
    // Only our manifests resume: the sha256 is what proves a kept file on the host.
    if (!item?.sha256 || size > item.size) stray.push(path);
    else if (size === item.size) complete.push(item);
    else if (size > 0) partial.push({ item, have: size });
    else stray.push(path);
  }
  let fromDataDir = 0;
  if (complete.length + partial.length > 0) {
    const hashes = await host.hashFiles(
      stage,
      complete.map((i) => i.path),
    );
    for (const item of complete.splice(0)) {
      if (hashes.get(item.path) === item.sha256) complete.push(item);
      else stray.push(item.path);
    }
    fromDataDir = complete.filter((i) => linked.has(i.path)).length;
    const differ = linked.size - fromDataDir;
    core.info(
      `The staging folder holds ${complete.length} complete files of this snapshot (proven by their sha256` +
        `${linked.size > 0 ? `; ${fromDataDir} of them linked from the data dir` : ''}), and ${partial.length} cut short: they are kept.` +
        `${differ > 0 ? ` ${differ} linked files differ from the snapshot's: they are fetched.` : ''}`,
    );
  }
  if (stray.length > 0) await host.removeStaged(stage, stray);

  // A file cut short goes on from where it stopped, then is proven whole on the host.
  for (const p of partial) {
    const append = host.appendStaged(stage, p.item.path, p.have);
    append.stdin.write(GO_LINE);
    const out: string[] = [];
    append.stdout.setEncoding('utf8');
    append.stdout.on('data', (t: string) => out.push(t));
    await p.item.read(
      p.have,
      (chunk) => new Promise<void>((r) => append.stdin.write(chunk, () => r())),
    );
    append.stdin.end();
    const code = await append.exit;
    const sha = out.join('').trim();
    if (code !== 0 || sha !== p.item.sha256) {
      await host.removeStaged(stage, [p.item.path]);
      throw new IntegrityError(
        `${p.item.path}, continued from byte ${p.have}, does not match the manifest's sha256: it was removed; run again.`,
      );
    }
  }

  const done = new Set([...complete, ...partial.map((p) => p.item)].map((i) => i.path));
  const todo = o.items.filter((i) => !done.has(i.path));
  const total = todo.reduce((s, i) => s + i.size, 0);
  const run: { failed: boolean; cause?: unknown } = { failed: false };
  const main = new Channel(o.remote, run);
  // The other channels join once the main one holds the staging folder, when there is more
  // than one file to share.
  const shared = todo.length > 1;
  const more = shared ? o.more.map((r) => new Channel(r, run)) : [];
  const unused = shared ? [] : o.more;
  const pool = new MemoryPool();
  o.onGo();
  if (o.onHost && readableOnHost(todo)) {
    const got = await fetchOnHost(main, o.remote, todo, o.onHost);
    if (!('unreachable' in got)) {
      await Promise.all(o.more.map((r) => closeUnused(r)));
      return {
        files: todo.length,
        bytes: got.bytes,
        kept: complete.length,
        continued: partial.length,
        fromDataDir,
        counted: Number(main.out.trim().split('\n').at(-1)),
        channels: 0,
      };
    }
    // The extraction now takes the files as a tar, as if its go line had been PLAIN_GO.
    core.info(
      `The host cannot read S3 (${got.unreachable}): the runner fetches the files and sends them over SSH.`,
    );
  } else {
    o.remote.stdin.write(PLAIN_GO);
  }
  const progress = new FileProgress('Restore', todo.length, total);
  try {
    await Promise.all(unused.map((r) => closeUnused(r)));
    if (more.length > 0) await main.locked();
    // Every channel makes the folders first: a tar that opens a file in a folder that another
    // is making failed now and then with "Cannot open: No such file or directory" (GNU tar
    // 1.34), where a folder made by its own stream is there before its files.
    for (const c of more) c.remote.stdin.write(PLAIN_GO);
    for (const c of [main, ...more])
      for (const d of o.dirs) await c.write(memberHeader(d, 'Directory', 0, 0o755));
    const alone = Math.max(8 * 1024 ** 2, Math.floor(o.bytesInFlight / 4));
    let held = 0;
    const queue: Array<{ item: FetchItem; fetch: FileFetch }> = [];
    let next = 0;
    const fill = (): void => {
      while (next < todo.length) {
        const item = todo[next] as FetchItem;
        if (item.size > alone) {
          if (queue.length > 0) return;
          break;
        }
        if (
          queue.length >= o.filesInFlight ||
          (queue.length > 0 && held + item.size > o.bytesInFlight)
        )
          return;
        held += item.size;
        queue.push({ item, fetch: new FileFetch(item, pool) });
        next++;
      }
    };
    // Each channel takes the next file that is in flight, in the order they were asked for;
    // a large file, when it comes to the front, streams alone in the channel that takes it.
    const work = async (c: Channel): Promise<void> => {
      while (!run.failed && (next < todo.length || queue.length > 0)) {
        fill();
        const head = queue.shift();
        if (head) {
          const { fetch } = head;
          const size = head.item.size;
          await c.write(memberHeader(head.item.path, 'File', size, head.item.mode));
          for (;;) {
            // Whole pieces while the file comes; once it has ended, the rest.
            const ended = fetch.ended;
            if (fetch.failure !== undefined) throw fetch.failure;
            for (let p = fetch.pieces.shift(ended); p; p = fetch.pieces.shift(ended)) {
              fetch.taken = true;
              await c.write(p.bytes);
              pool.give(p.piece);
              progress.bytes += p.bytes.length;
            }
            if (ended) break;
            await fetch.more();
          }
          // The file's check: bytes already on the host that fail it stop the restore.
          await fetch.done;
          held -= size;
          await c.write(Buffer.alloc(padding(size)));
          progress.files++;
          continue;
        }
        if (next >= todo.length) return;
        // A large file streams alone: header first, its bytes checked as they pass.
        const item = todo[next++] as FetchItem;
        await c.write(memberHeader(item.path, 'File', item.size, item.mode));
        const check = checker(item);
        let got = 0;
        await item.read(0, async (chunk) => {
          got += chunk.length;
          check.update(chunk);
          await c.write(chunk);
          progress.bytes += chunk.length;
        });
        if (got !== item.size) {
          throw new ActionError(
            `The download of ${item.path} broke off after ${formatBytes(got)}; run again to go on from there.`,
          );
        }
        await check.verify();
        await c.write(Buffer.alloc(padding(item.size)));
        progress.files++;
      }
    };
    const workers = [main, ...more].map((c) =>
      work(c).catch((error: unknown) => {
        // The first failure is the cause; the other channels then stop on it.
        if (!run.failed) run.cause = error;
        run.failed = true;
      }),
    );
    await Promise.all(workers);
    if (run.failed) throw run.cause;
    // The other channels end first: the main one's checks of the folder then see every file.
    for (const c of more) await c.finish();
    await main.write(END_OF_TAR);
    o.remote.stdin.end();
  } catch (error) {
    run.failed = true;
    // What reached the host stays for the next run; the tars are cut, not ended.
    for (const c of [main, ...more]) c.remote.kill();
    await Promise.all([main, ...more].map((c) => c.remote.exit.catch(() => undefined)));
    throw error;
  } finally {
    progress.stop();
  }
  const code = await o.remote.exit;
  if (code !== 0) throw main.failed(stage, code);
  core.info(progress.line());
  return {
    files: todo.length,
    bytes: total,
    kept: complete.length,
    continued: partial.length,
    fromDataDir,
    counted: Number(main.out.trim().split('\n').at(-1)),
    channels: 1 + more.length,
  };
}
