/**
 * The one seam between the modes and a kind of node. A mode reads as its procedure and
 * speaks only to a `NodeHost`: what the data looks like on the host, how high the node is,
 * how its files are frozen, archived, extracted and swapped, and whether it is healthy.
 * Each kind of node (ICON 1 loopchain, ICON 2 goloop) is one folder under `node-kind/` that
 * implements it over an SSH session; tests implement it in memory.
 */
import type { Compression, Consistency } from '../settings.js';
import type { ExecResult, Prepared, RemoteStream } from '../ssh/session.js';

export type NodeKindName = 'loopchain' | 'goloop';

/** The files of a snapshot, as the commands on the host see them. */
export interface Tree {
  /** The kind's name, for messages. */
  name: string;
  /** Paths relative to the data dir that make up a snapshot. */
  roots: string[];
  /** Directories that an archive must hold besides the roots (relative to the data dir). */
  required?: string[];
  /** Where the kind names a directory after the node (loopchain's block DB): its parent, glob and archived name. */
  identityParent?: string;
  identityGlob?: string;
  placeholder?: string;
  /** The directory's name for the node at `address`. */
  identityDir?: (address: string) => string;
}

/** What a backup found on the host before anything changed. */
export interface BackupLayout {
  /** One line for the log: the data dir and what it holds. */
  description: string;
  /** Hard links between the data dir and a staging folder beside it are possible. */
  sameDevice: boolean;
  /** The data dir's device number (`stat -c %d`): a staging folder for it is on the same. */
  device: string;
  /** Bytes under the archived paths: the upload is planned from it before the stop. */
  dataBytes: number;
  /** Staging folders left by runs that vanished (removed by the mode, with a warning). */
  stale: string[];
}

/** Files and bytes of a snapshot; `digest` is its stat digest (see `statDigest`). */
export interface Sizes {
  files: number;
  bytes: number;
  digest?: string;
}

/** A frozen copy once settled (NodeHost.settleFrozen). */
export interface Settled extends Sizes {
  /** How many leftover tables were removed from it: a listing made before is stale unless 0. */
  pruned: number;
}

export interface ArchiveOptions {
  compression: Compression;
  level: number;
  /** Also writes the archive to this path on the host. */
  localCopy?: string;
  /** The source is a staging folder of hard links that the running node shares. */
  tolerateChanged?: boolean;
  /** The archive follows this run's `archiveAhead` of the same staging folder. */
  ahead?: boolean;
}

/** What the node's kind records in a snapshot's manifest, and checks after a restore. */
export interface KindFacts {
  [fact: string]: string | number | undefined;
}

/** What a restore learns of the host in one round trip before anything changes. */
export interface RestoreChecks {
  /** What shows that the node runs (its API or a process); undefined when nothing does. */
  running?: string;
  freeBytes: number;
  dataDirPresent: boolean;
  tools: Set<string>;
  /**
   * The node's address where the kind names its data after it (loopchain: the block DB is
   * `db_{IP}:7100_icon_dex`): 'node-ip', else found on the host. Empty for other kinds.
   */
  address: string;
  /** The staging folders of restores beside the data dir: this run's, and those earlier runs left. */
  stages: StagingFolder[];
  /**
   * Why the start command could not start the node on this host, where that is known before
   * anything changes (the default Compose up with no compose file in 'prep-dir'); undefined
   * when nothing says so.
   */
  cannotStart?: string;
}

/** A restore's staging folder on the host. */
export interface StagingFolder {
  path: string;
  /** What it takes on the disk. */
  bytes: number;
  /** An extraction into it still runs (it holds the folder's lock). */
  busy: boolean;
}

/** The commands that stop and start the node (run by `NodeControl`, with its watchdog). */
export interface NodeCommands {
  stop: string;
  start: string;
  /** What they do, for the log, where they are the action's own scripts. */
  says?: { stop: string; start: string };
}

export interface NodeHost {
  readonly kind: NodeKindName;
  /** How this kind stops and starts the node: the inputs', or the kind's own default. */
  commands(): NodeCommands;
  /** The folder whose contents the archive holds (entries are relative to it). */
  readonly dataDir: string;
  /** The archived paths, for messages (e.g. '.score_data and .storage'). */
  expectedContent(): string;

  // --- backup ------------------------------------------------------------------------
  /** Checks the layout and the tools for a backup; throws a HostError naming what to fix. */
  /** `compression` is an archive's; undefined for a tree. */
  inspect(needs: { compression?: Compression; consistency: Consistency }): Promise<BackupLayout>;
  /** The node's block height, or undefined when it is not in service (its API silent). */
  height(): Promise<number | undefined>;
  /** The facts of the manifest, for a snapshot at `height`. */
  facts(height: number): Promise<KindFacts>;
  /** The archive of `dir` streamed to stdout, opened now; it starts on its go line. */
  archive(dir: string, options: ArchiveOptions): Promise<RemoteStream>;
  /**
   * Hard-links the running node's settled table files into the send ahead's folder of `stage`
   * (archive-remote.ts, `linkAheadCommand`); what it linked.
   */
  linkAhead(stage: string): Promise<{ files: number; bytes: number }>;
  /**
   * The archive's first part: what linkAhead linked, without tar's end, so that `archive` of
   * the frozen `stage` with `ahead` follows it. Opened now; it starts on its go line.
   */
  archiveAhead(stage: string, options: ArchiveOptions): Promise<RemoteStream>;
  /** Links and copies the node's files into `stage`, holding the watchdog's flag; run on `go`. */
  freeze(stage: string, watchdogFlag: string): Prepared;
  /** Leaves out of a frozen `stage` what is not part of the snapshot, then measures it. */
  settleFrozen(stage: string): Promise<Settled>;
  /** Files and bytes under `dir`. */
  measure(dir: string): Promise<Sizes>;
  /** A digest of every archived file's path, size and mtime under `dir`. */
  statDigest(dir: string): Promise<string>;

  // --- restore -----------------------------------------------------------------------
  /** The restore's checks of the host, in one round trip. */
  checkForRestore(options: { nodeIp: string }): Promise<RestoreChecks>;
  /** Whether the node runs now, and when the watchdog of `watchdogFlag` fired, if it did. */
  runningNow(watchdogFlag: string): Promise<{ running?: string; firedAt?: string }>;
  /** Reads an archive from stdin into `stage`, opened now; it starts on its go line. */
  extract(stage: string): RemoteStream;
  /** Moves `stage` into place (the previous data to `previous`) once `go` is called. */
  swap(stage: string, previous: string, address: string, watchdogFlag: string): PreparedStep;
  /** Puts `previous` back in place, the failed data kept as `failed`. */
  rollback(previous: string, failed: string, watchdogFlag: string): Promise<ExecResult>;
  /**
   * The height the restored node reports once it serves the snapshot (`facts` holds its
   * `blockHeight` and what the kind recorded, such as a block hash); undefined until then.
   * Throws an IntegrityError when the node answers with what is not the snapshot's chain.
   */
  restoredHeight(facts: KindFacts): Promise<number | undefined>;
  /** One line for the summary: where the restored data went (e.g. the block DB's name). */
  restoredAs(address: string): string;

  // --- trees (see tree/layout.ts) -----------------------------------------------------
  /**
   * The snapshot's files and directories under `dir`, named as a snapshot stores them. `live`:
   * `dir` is the data dir of the running node, whose files come and go while it is read.
   */
  listTree(dir: string, options?: { live?: boolean }): Promise<TreeListing>;
  /**
   * The same listing, its session opened now and the walk made on `go`: opened as the node
   * stops, the frozen copy's listing waits for no new session while the node starts.
   */
  listTreeAhead(dir: string): PreparedListing;
  // The next two take `GO_LINE`, then NUL-terminated paths (as on the host, under `dir`), on
  // stdin. Each is a data channel, which costs an SSH handshake: opened ahead (before `dir`
  // exists, as the node stops), it waits for its line.
  /** The last 10,240 bytes (the whole file when smaller) of each path, one after the other. */
  fileTails(dir: string): RemoteStream;
  /**
   * An uncompressed tar of the paths, in order (read `source`). `live`: `dir` is the running
   * node's data dir, and a path gone by the time tar opens it is left out.
   */
  sendFiles(dir: string, options?: { live?: boolean }): Promise<RemoteStream>;
  /** sha256 of files under `dir` (paths as on the host), computed on the host. */
  hashFiles(dir: string, paths: string[]): Promise<Map<string, string>>;
  /**
   * Reads a plain tar from stdin into `stage`, which is kept across runs; starts on its go
   * line, prints `LOCKED_LINE` once the folder is this run's, then the number of files.
   */
  receiveTree(stage: string): RemoteStream;
  /**
   * More of the files into the `stage` that receiveTree holds, over a channel of its own (a
   * connection of its own over OpenSSH, whose window per round trip adds to the others');
   * starts on its go line.
   */
  receiveMore(stage: string): RemoteStream;
  /**
   * Of `files` (paths as a snapshot names them), the table files (`*.ldb`, `*.sst`) that the
   * data dir holds at the same path with the same size (loopchain's block DB as the node at
   * `address` names it): their paths. Written once and never changed, they may be the
   * snapshot's own; the sha256 says, once they are linked (linkTables).
   */
  tablesInDataDir(files: Array<{ path: string; size: number }>, address: string): Promise<string[]>;
  /**
   * Hard-links those tables into `stage` under the snapshot's paths, where it holds none yet.
   * They are proven, or removed, like the files an earlier run left there.
   */
  linkTables(stage: string, paths: string[], address: string): Promise<void>;
  /** The regular files already in `stage` (from an earlier run), with their sizes. */
  stagedFiles(stage: string): Promise<Map<string, number>>;
  /** Appends stdin to a file in `stage` from `offset`; resolves with the file's sha256. */
  appendStaged(stage: string, path: string, offset: number): RemoteStream;
  removeStaged(stage: string, paths: string[]): Promise<void>;

  // --- housekeeping ------------------------------------------------------------------
  remove(path: string): Promise<void>;
  removeStaging(stage: string): Promise<void>;
}

/** A listing opened ahead (`NodeHost.listTreeAhead`): it walks the folder on `go`. */
export interface PreparedListing {
  go(): Promise<TreeListing>;
  /** Ends it unused; nothing runs. */
  cancel(): Promise<void>;
}

/** A file or directory of a snapshot on the host (see `NodeHost.listTree`). */
export interface TreeEntry {
  type: 'file' | 'dir';
  /** As the snapshot stores it (loopchain: the identity directory as its placeholder). */
  path: string;
  /** As it is on the host, relative to the folder listed. */
  hostPath: string;
  size: number;
  ino: number;
  mtime: string;
  mode: number;
}

export interface TreeListing {
  device: string;
  /** The host's clock as the listing began, in whole seconds since the epoch. */
  now: number;
  entries: TreeEntry[];
}

/** A command on the host opened ahead, that runs once `go` is called (with its result). */
export interface PreparedStep {
  go(): Promise<ExecResult>;
  /** Lets it end without running. */
  cancel(): void;
}
