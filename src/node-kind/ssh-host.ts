/**
 * What every kind of node does the same way over SSH, once it has said which files make up
 * its snapshot (`tree`): the frozen copy settled and measured, the stat digest, a step opened
 * ahead that waits for its line, and removals.
 */
import * as core from '@actions/core';
import { parseManifestsOutput, planPrune } from '../freeze.js';
import type { ExecResult, SshSession } from '../ssh/session.js';
import { HostError } from '../errors.js';
import type { RemoteStream } from '../ssh/session.js';
import type {
  ArchiveOptions,
  PreparedListing,
  PreparedStep,
  Settled,
  Sizes,
  Tree,
  TreeEntry,
  TreeListing,
} from './host.js';
import { extractCommand, receiveMoreCommand } from './extract.js';
import {
  appendCommand,
  hashFilesCommand,
  linkInput,
  linkIntoStageCommand,
  listTreeCommand,
  parseHashes,
  parseListing,
  parseStaged,
  removeStagedCommand,
  sendFilesCommand,
  stagedFilesCommand,
  tableFilesCommand,
  tailsCommand,
} from './tree-remote.js';
import { isTableFile } from '../tree/layout.js';
import {
  aheadDir,
  archiveAheadCommand,
  archiveCommand,
  linkAheadCommand,
} from './archive-remote.js';
import {
  manifestsCommand,
  parseSizes,
  pruneCommand,
  removeCommand,
  removeStagingCommand,
  sizeCommand,
  statDigestCommand,
} from './remote.js';

/** A listing's limits: a large tree's is tens of megabytes, and its walk may take minutes. */
const LISTING = { maxOutputBytes: 256 * 1024 ** 2, timeoutMs: 30 * 60_000 };

export abstract class SshHost {
  constructor(protected readonly session: SshSession) {}

  /** The files of this kind's snapshot, as the commands on the host see them. */
  protected abstract get tree(): Tree;

  /** Where the node names a directory after itself (loopchain), that directory's name. */
  protected identityName(): string | undefined {
    return undefined;
  }

  /** What a snapshot leaves out under the roots (paths relative to the data dir). */
  protected leaveOut(): string[] {
    return [];
  }

  /** The node's data dir on the host. */
  abstract get dataDir(): string;

  /** The prep dir, under which a restore's staging folder is made. */
  protected abstract get prepDir(): string;

  async listTree(dir: string, options: { live?: boolean } = {}): Promise<TreeListing> {
    return this.treeListing(
      dir,
      await this.session.run(
        options.live ? 'Listing the data dir' : 'Listing the snapshot',
        listTreeCommand(this.tree, dir, { live: options.live, leaveOut: this.leaveOut() }),
        LISTING,
      ),
    );
  }

  listTreeAhead(dir: string): PreparedListing {
    const p = this.session.prepare(
      'Listing the snapshot',
      listTreeCommand(this.tree, dir, { leaveOut: this.leaveOut() }),
      LISTING,
    );
    return {
      go: async () => this.treeListing(dir, await p.go()),
      cancel: () => p.cancel(),
    };
  }

  private treeListing(dir: string, stdout: string): TreeListing {
    const listing = parseListing(stdout);
    const { identityParent, placeholder } = this.tree;
    const identity = this.identityName();
    const from = identity && identityParent ? `${identityParent}/${identity}` : undefined;
    const rename = (p: string): string =>
      from && placeholder && (p === from || p.startsWith(`${from}/`))
        ? `${identityParent}/${placeholder}${p.slice(from.length)}`
        : p;
    const entries: TreeEntry[] = [];
    for (const e of listing.entries) {
      if (e.type === 'other') {
        throw new HostError(
          `${dir}/${e.path} is neither a file nor a directory: a tree snapshot holds only those. Remove it, or use 'format: archive'.`,
        );
      }
      entries.push({ ...e, type: e.type, hostPath: e.path, path: rename(e.path) });
    }
    return { device: listing.device, now: listing.now, entries };
  }

  fileTails(dir: string): RemoteStream {
    return this.session.stream(tailsCommand(dir));
  }

  async hashFiles(dir: string, paths: string[]): Promise<Map<string, string>> {
    if (paths.length === 0) return new Map();
    return parseHashes(
      await this.session.run('Hashing files on the host', hashFilesCommand(dir), {
        stdin: paths.map((p) => `${p}\0`).join(''),
        maxOutputBytes: 64 * 1024 ** 2,
        timeoutMs: 24 * 60 * 60_000,
      }),
    );
  }

  async linkAhead(stage: string): Promise<{ files: number; bytes: number }> {
    const { files, bytes } = parseSizes(
      await this.session.run(
        'Linking the table files',
        linkAheadCommand(this.tree, this.dataDir, aheadDir(stage), this.leaveOut()),
        LISTING,
      ),
    );
    return { files, bytes };
  }

  archiveAhead(stage: string, options: ArchiveOptions): Promise<RemoteStream> {
    return this.session.streamOut(
      archiveAheadCommand(this.tree, aheadDir(stage), this.identityName(), {
        compression: options.compression,
        level: options.level,
        localCopy: options.localCopy,
      }),
    );
  }

  /** `archive` with what the kind's archive command needs of this class. */
  protected archiveOf(dir: string, options: ArchiveOptions): Promise<RemoteStream> {
    return this.session.streamOut(
      archiveCommand(this.tree, dir, this.identityName(), {
        ...options,
        ahead: options.ahead ? aheadDir(dir) : undefined,
      }),
    );
  }

  sendFiles(dir: string, options: { live?: boolean } = {}): Promise<RemoteStream> {
    return this.session.streamOut(sendFilesCommand(dir, options.live));
  }

  receiveTree(stage: string): RemoteStream {
    return this.session.stream(extractCommand(this.tree, this.prepDir, stage, { keep: true }));
  }

  receiveMore(stage: string): RemoteStream {
    return this.session.stream(receiveMoreCommand(stage));
  }

  async tablesInDataDir(
    files: Array<{ path: string; size: number }>,
    address: string,
  ): Promise<string[]> {
    const wanted = files
      .filter((f) => isTableFile(f.path))
      .map((f) => ({ ...f, from: this.onHost(f.path, address) }));
    if (wanted.length === 0) return [];
    const roots = [...new Set(wanted.map((w) => w.from.split('/')[0] as string))];
    const present = parseStaged(
      await this.session.run(
        "Listing the data dir's table files",
        tableFilesCommand(this.dataDir, roots),
        { maxOutputBytes: 256 * 1024 ** 2, timeoutMs: 30 * 60_000 },
      ),
    );
    return wanted.filter((w) => present.get(w.from) === w.size).map((w) => w.path);
  }

  async linkTables(stage: string, paths: string[], address: string): Promise<void> {
    if (paths.length === 0) return;
    await this.session.run(
      "Linking the data dir's table files into the staging folder",
      linkIntoStageCommand(this.dataDir, stage),
      {
        stdin: linkInput(paths.map((p) => ({ from: this.onHost(p, address), to: p }))),
        timeoutMs: 30 * 60_000,
      },
    );
  }

  /** A snapshot's path as the data dir has it: loopchain's block DB under the node's address. */
  private onHost(path: string, address: string): string {
    const { identityParent, placeholder, identityDir } = this.tree;
    const archived = identityParent && placeholder ? `${identityParent}/${placeholder}/` : '';
    return archived && identityDir && path.startsWith(archived)
      ? `${identityParent}/${identityDir(address)}/${path.slice(archived.length)}`
      : path;
  }

  async stagedFiles(stage: string): Promise<Map<string, number>> {
    return parseStaged(
      await this.session.run('Reading the staging folder', stagedFilesCommand(stage), {
        maxOutputBytes: 256 * 1024 ** 2,
      }),
    );
  }

  appendStaged(stage: string, path: string, offset: number): RemoteStream {
    return this.session.stream(appendCommand(stage, path, offset));
  }

  async removeStaged(stage: string, paths: string[]): Promise<void> {
    if (paths.length === 0) return;
    await this.session.run(
      'Removing damaged files from the staging folder',
      removeStagedCommand(stage),
      {
        stdin: paths.map((p) => `${p}\0`).join(''),
      },
    );
  }

  /**
   * Leaves out of a frozen `stage` the tables that its MANIFESTs do not list (the leftovers
   * of a compaction the node was stopped in), then measures what is left, with the stat
   * digest that the stream is checked against.
   */
  async settleFrozen(stage: string): Promise<Settled> {
    // Measured at the same time as the MANIFESTs are read: that is the answer unless there
    // is something to prune, which is rare.
    const measure = () =>
      this.session.run('Measuring the snapshot', sizeCommand(this.tree, stage, true));
    const measuring = measure();
    measuring.catch(() => undefined);
    const plan = planPrune(
      parseManifestsOutput(
        await this.session.run('Reading the MANIFESTs', manifestsCommand(this.tree, stage)),
      ),
    );
    core.info(
      `${plan.databases} LevelDB database(s), ${plan.liveTables} live tables; ` +
        `${plan.garbage.length} leftover table(s) of an interrupted compaction left out.`,
    );
    if (plan.garbage.length === 0) return { ...parseSizes(await measuring), pruned: 0 };
    await measuring.catch(() => undefined);
    await this.session.run('Pruning the staging folder', pruneCommand(stage), {
      stdin: plan.garbage.map((g) => `${g}\0`).join(''),
    });
    return { ...parseSizes(await measure()), pruned: plan.garbage.length };
  }

  async measure(dir: string): Promise<Sizes> {
    return parseSizes(
      await this.session.run('Measuring the snapshot', sizeCommand(this.tree, dir)),
    );
  }

  async statDigest(dir: string): Promise<string> {
    return (
      await this.session.run('Reading the staged files', statDigestCommand(this.tree, dir))
    ).trim();
  }

  async remove(path: string): Promise<void> {
    await this.session.run(`Removing ${path}`, removeCommand(path), { timeoutMs: 60 * 60_000 });
  }

  async removeStaging(stage: string): Promise<void> {
    await this.session.run('Removing the staging folder', removeStagingCommand(stage), {
      timeoutMs: 30 * 60_000,
    });
  }

  /** `command`, started now; it runs once `line` is written to it (see the swap commands). */
  protected openAhead(command: string, line: string): PreparedStep {
    let release: (text: string) => void = () => undefined;
    const result: Promise<ExecResult> = this.session.exec(command, {
      stdin: new Promise<string>((resolve) => (release = resolve)),
    });
    result.catch(() => undefined);
    return {
      go: () => {
        release(line);
        return result;
      },
      cancel: () => release(''),
    };
  }
}
