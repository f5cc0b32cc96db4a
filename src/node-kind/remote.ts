/**
 * The commands that run on the node host, built as strings from quoted values. Each is a
 * pure function of its arguments, so that tests can read exactly what the host will run.
 */
import { HostError } from '../errors.js';
import { argv, bashScript, OWN_MARK, quote } from '../shell.js';
import type { Compression } from '../settings.js';
import type { Sizes, StagingFolder, Tree } from './host.js';
import { heldLines } from './watchdog.js';

export function dirname(path: string): string {
  const i = path.lastIndexOf('/');
  return i <= 0 ? '/' : path.slice(0, i);
}

/**
 * Looks at the host before anything changes: the layout of the data dir, the identity
 * directories, the tools, and whether the data dir's parent is on the same filesystem.
 * Prints `key=value` lines.
 */
export function probeCommand(kind: Tree, dataDir: string): string {
  const parent = dirname(dataDir);
  return bashScript([
    `data=${quote(dataDir)}`,
    `if [ ! -d "$data" ]; then echo "datadir=missing"; exit 0; fi`,
    `echo "datadir=present"`,
    ...kind.roots.map(
      (r) =>
        `[ -d "$data"/${quote(r)} ] && echo ${quote(`root=${r}`)} || echo ${quote(`missingroot=${r}`)}`,
    ),
    ...(kind.identityParent && kind.identityGlob
      ? [
          `for d in "$data"/${quote(kind.identityParent)}/${kind.identityGlob}; do [ -d "$d" ] && printf 'identity=%s\\n' "\${d##*/}"; done; true`,
        ]
      : []),
    `for t in tar pigz gzip zstd curl wget base64 setsid; do command -v "$t" >/dev/null 2>&1 && echo "tool=$t"; done; true`,
    `echo "dev_data=$(stat -c %d "$data")"`,
    `echo "dev_parent=$(stat -c %d ${quote(parent)})"`,
    `echo "free_parent=$(df -P -B1 ${quote(parent)} | awk 'NR==2 {print $4}')"`,
    // The size before the stop, to plan the upload's parts while nothing is down yet.
    `echo "data_bytes=$(cd -- "$data" && find ${kind.roots.map(quote).join(' ')} -type f -printf '%s\\n' 2>/dev/null | awk '{s+=$1} END {printf "%d", s}' || true)"`,
    // Staging folders of runs that vanished a day or more ago: links that pin deleted tables.
    // One that a stream still reads holds a lock on it (see archiveCommand): not stale.
    `find ${quote(parent)} "$data" -maxdepth 1 -type d -name '.prep-snapshot-staging-*' -mmin +1440 -print 2>/dev/null | while IFS= read -r d; do`,
    `  if command -v flock >/dev/null 2>&1 && ! flock -n -- "$d" true 2>/dev/null; then continue; fi`,
    `  printf 'stale=%s\\n' "$d"`,
    `done; true`,
  ]);
}

/** A restore's staging folder found beside the data dir (see `restoreProbeCommand`). */
export interface ProbedStage {
  /** Its name in the folder listed. */
  name: string;
  /** What it takes on the disk. */
  bytes: number;
  /** An extraction into it holds its lock: a restore still writes there. */
  busy: boolean;
}

export interface Probe {
  dataDirPresent: boolean;
  roots: string[];
  missingRoots: string[];
  identities: string[];
  /** Staging folders left by runs that vanished over a day ago. */
  stale: string[];
  tools: Set<string>;
  sameDevice: boolean;
  /** The data dir's device number; empty when the probe could not tell. */
  device: string;
  freeBytes: number;
  /** Bytes under the snapshot's roots when the probe ran. */
  dataBytes: number;
  /** A restore's: the names of the paths asked about that exist. */
  has: Set<string>;
  /** A restore's: the staging folders of restores beside the data dir. */
  stages: ProbedStage[];
}

/** The staging folders that a restore probe found in `parent`, by their paths. */
export function stagingFolders(parent: string, probe: Probe): StagingFolder[] {
  return probe.stages.map((s) => ({ path: `${parent}/${s.name}`, bytes: s.bytes, busy: s.busy }));
}

export function parseProbe(stdout: string): Probe {
  const probe: Probe = {
    dataDirPresent: false,
    roots: [],
    missingRoots: [],
    identities: [],
    stale: [],
    tools: new Set(),
    sameDevice: false,
    device: '',
    freeBytes: 0,
    dataBytes: 0,
    has: new Set(),
    stages: [],
  };
  let devData = '';
  let devParent = '';
  for (const line of stdout.split('\n')) {
    const eq = line.indexOf('=');
    if (eq < 0) continue;
    const key = line.slice(0, eq);
    const value = line.slice(eq + 1);
    if (key === 'datadir') probe.dataDirPresent = value === 'present';
    else if (key === 'root') probe.roots.push(value);
    else if (key === 'missingroot') probe.missingRoots.push(value);
    else if (key === 'identity') probe.identities.push(value);
    else if (key === 'tool') probe.tools.add(value);
    else if (key === 'dev_data') devData = value;
    else if (key === 'dev_parent') devParent = value;
    else if (key === 'free_parent') probe.freeBytes = Number(value) || 0;
    else if (key === 'data_bytes') probe.dataBytes = Number(value) || 0;
    else if (key === 'stale') probe.stale.push(value);
    else if (key === 'has') probe.has.add(value);
    else if (key === 'stage') {
      const m = /^([01]) (\d*) (\.prep-snapshot-restore-[A-Za-z0-9._-]+)$/.exec(value);
      if (m) probe.stages.push({ busy: m[1] === '1', bytes: Number(m[2]) || 0, name: m[3]! });
    }
  }
  probe.sameDevice = devData !== '' && devData === devParent;
  probe.device = devData;
  return probe;
}

/**
 * Checks that the host has tar and a program for `compression`: to write gzip, pigz or gzip;
 * to read it (`reading`), igzip too; zstd either way. `what` names the archive in the error.
 */
export function requireArchiveTools(
  tools: Set<string>,
  compression: Compression,
  what: string,
  reading = false,
): void {
  if (!tools.has('tar')) throw new HostError(`The host has no 'tar'.`);
  if (compression === 'zstd' && !tools.has('zstd')) {
    throw new HostError(
      `${what} is zstd-compressed and the host has no 'zstd': install it (apt install zstd) or use gzip.`,
    );
  }
  const gzips = reading ? ['igzip', 'pigz', 'gzip'] : ['pigz', 'gzip'];
  if (compression === 'gzip' && !gzips.some((t) => tools.has(t))) {
    throw new HostError(
      `The host has none of ${gzips.join(', ')} for ${what}: install one (apt install pigz).`,
    );
  }
}

/** Asks the node's own API for its height, from the host (the API listens on the host's loopback). */
export function peerCommand(peerUrl: string): string {
  const url = quote(peerUrl);
  return bashScript([
    `if command -v curl >/dev/null 2>&1; then curl -fsS --max-time 10 ${url}; else wget -q -T 10 -O - ${url}; fi`,
  ]);
}

/**
 * Freezes the node's files into `stage` while the node is stopped: a hard link for every
 * file (metadata only, seconds for any size), then a real copy in place of every file that
 * the node may change after it starts again (everything but the immutable table files).
 */
export function freezeCommand(
  kind: Tree,
  dataDir: string,
  stage: string,
  watchdogFlag: string,
  /** Paths under the roots (relative to the data dir) that a snapshot leaves out. */
  leaveOut: string[] = [],
): string {
  const mutable = ['*.ldb', '*.sst'].map((p) => `! -name ${quote(p)}`).join(' ');
  return bashScript([
    // The copy is consistent only while the node is down: the watchdog waits for it.
    ...heldLines(watchdogFlag),
    `data=${quote(dataDir)}`,
    `stage=${quote(stage)}`,
    `rm -rf -- "$stage"`,
    `mkdir -p -- "$stage"`,
    `cd -- "$data"`,
    `cp -al -- ${kind.roots.map(quote).join(' ')} "$stage"/`,
    `cd -- "$stage"`,
    ...(leaveOut.length ? [`rm -rf -- ${leaveOut.map(quote).join(' ')}`] : []),
    `find ${kind.roots.map(quote).join(' ')} -type f ${mutable} -print0 | while IFS= read -r -d '' f; do cp -p --remove-destination -- "$data/$f" "$f"; done`,
  ]);
}

/**
 * Lists, for each LevelDB database in `stage`, its CURRENT manifest (base64) and its table
 * files, so the runner can tell live tables from the leftovers of a compaction.
 */
export function manifestsCommand(kind: Tree, stage: string): string {
  return bashScript([
    `cd -- ${quote(stage)}`,
    `find ${kind.roots.map(quote).join(' ')} -type f -name CURRENT -printf '%h\\n' | sort | while IFS= read -r d; do`,
    `  m=$(head -n 1 -- "$d/CURRENT")`,
    `  printf 'db\\t%s\\t%s\\n' "$d" "$m"`,
    `  case "$m" in MANIFEST-[0-9]*) printf 'manifest\\t'; base64 -w 0 -- "$d/$m"; printf '\\n' ;; esac`,
    `  find "$d" -maxdepth 1 -type f \\( -name '*.ldb' -o -name '*.sst' \\) -printf 'table\\t%f\\n'`,
    `done`,
  ]);
}

/** Removes the files named on stdin (NUL-separated, relative to `stage`). */
export function pruneCommand(stage: string): string {
  return bashScript([`cd -- ${quote(stage)}`, `xargs -0 -r rm -f --`]);
}

/**
 * Counts files and bytes under the snapshot's roots: prints `files=` and `bytes=`, and with
 * `withDigest` also `digest=`, the stat digest below (one round trip instead of two).
 */
export function sizeCommand(kind: Tree, dir: string, withDigest = false): string {
  return bashScript([
    `cd -- ${quote(dir)}`,
    `find ${kind.roots.map(quote).join(' ')} -type f -printf '%s\\n' | awk '{n++; s+=$1} END {printf "files=%d\\nbytes=%d\\n", n, s}'`,
    ...(withDigest ? [`echo "digest=$(${statDigestPipeline(kind)})"`] : []),
  ]);
}

/** The output of `sizeCommand`. */
export function parseSizes(stdout: string): Sizes {
  const files = Number(/files=(\d+)/.exec(stdout)?.[1] ?? NaN);
  const bytes = Number(/bytes=(\d+)/.exec(stdout)?.[1] ?? NaN);
  if (!Number.isFinite(files) || !Number.isFinite(bytes))
    throw new HostError(`Could not measure the snapshot: '${stdout}'.`);
  return { files, bytes, digest: /digest=([0-9a-f]{64})/.exec(stdout)?.[1] };
}

/**
 * A digest of every file's path, size and mtime under the snapshot's roots. Equal before and
 * after the stream: no file's content was written meanwhile (a link count change is not a write).
 */
export function statDigestCommand(kind: Tree, dir: string): string {
  return bashScript([`cd -- ${quote(dir)}`, statDigestPipeline(kind)]);
}

function statDigestPipeline(kind: Tree): string {
  return `find ${kind.roots.map(quote).join(' ')} -type f -printf '%p\\t%s\\t%T@\\n' | LC_ALL=C sort | sha256sum | cut -d ' ' -f 1`;
}

/** Deletes local copies (folders named YYYYMMDD under `backupDir`) older than `cutoff`. */
export function pruneLocalCopiesCommand(backupDir: string, cutoff: string): string {
  return bashScript([
    `cd -- ${quote(backupDir)} 2>/dev/null || exit 0`,
    `for d in [0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]; do`,
    `  [ -d "$d" ] || continue`,
    `  if [[ "$d" < ${quote(cutoff)} ]]; then rm -rf -- "$d"; echo "removed $d"; fi`,
    `done`,
  ]);
}

/** Removes a folder; safe to run twice. */
export function removeCommand(path: string): string {
  return argv('rm', '-rf', '--', path);
}

/** Seconds that a removal waits for an extraction into the folder to end. */
export const STAGE_LOCK_WAIT_SECONDS = 300;

/**
 * Removes a staging folder once nothing extracts into it. An extraction holds a lock on the
 * folder (see `extractCommand`) until its last process ends; a cut connection can leave
 * tar writing for a while after the runner has given up on it, and a removal racing it
 * would leave a partial folder behind.
 */
export function removeStagingCommand(stage: string, waitSeconds = STAGE_LOCK_WAIT_SECONDS): string {
  return bashScript([
    `if [ -d ${quote(stage)} ] && command -v flock >/dev/null 2>&1; then`,
    `  flock -w ${waitSeconds} ${quote(stage)} true || echo ${quote(`an extraction into the staging folder still runs after ${waitSeconds} s`)} >&2`,
    `fi`,
    `rm -rf -- ${quote(stage)}`,
  ]);
}

/**
 * Runs an operator's command (the node's start) detached from the SSH session: in its own
 * session, its output in a file that is printed when it ends. A connection lost meanwhile
 * no longer kills it halfway (through SIGPIPE on its next line of output); it finishes on the
 * host. Exits with the command's status.
 */
export function detachedCommand(command: string): string {
  return bashScript([
    `log=$(mktemp)`,
    `if command -v setsid >/dev/null 2>&1; then detach=setsid; else detach=; fi`,
    `$detach nohup "\${SHELL:-/bin/sh}" -c ${quote(command)} </dev/null >"$log" 2>&1 &`,
    `pid=$!`,
    `set +e`,
    `wait "$pid"`,
    `rc=$?`,
    `cat -- "$log" >&2`,
    `rm -f -- "$log"`,
    `exit "$rc"`,
  ]);
}

/**
 * Is a node process running? Prints the matching `pid args` lines. The action's own shells
 * (marked with `OWN_MARK`, see `bashScript`) and this check's grep are left out: they name
 * the data dir too.
 */
export function processCheckCommand(pattern: string): string {
  return bashScript([
    `ps -eo pid=,args= | awk -v self="$$" '$1 != self' | grep -v -F -e ${OWN_MARK} | grep -E -- ${quote(pattern)} | grep -v -e 'grep -E' || true`,
  ]);
}

/** The host's primary IPv4 address: the source address of its default route. */
export function detectIpCommand(): string {
  return bashScript([
    `ip=""`,
    `if command -v ip >/dev/null 2>&1; then ip=$(ip -4 -o route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \\([0-9.]*\\).*/\\1/p'); fi`,
    `if [ -z "$ip" ] && command -v hostname >/dev/null 2>&1; then ip=$(hostname -I 2>/dev/null | awk '{print $1}'); fi`,
    `printf '%s\\n' "$ip"`,
  ]);
}

/**
 * Runs read-only commands at once on the host, in one round trip. Prints one line per
 * command: its name, its exit status and its stdout in base64. See `parseBatch`.
 */
export function batchCommand(commands: Record<string, string>): string {
  const names = Object.keys(commands);
  for (const n of names) if (!/^[a-z][a-z0-9_]*$/.test(n)) throw new Error(`bad batch name ${n}`);
  return bashScript([
    `out=$(mktemp -d)`,
    `trap 'rm -rf -- "$out"' EXIT`,
    ...names.map(
      (n) =>
        `{ ${commands[n]} > "$out"/${n} && s=0 || s=$?; echo $s > "$out"/${n}.status; } 2>/dev/null &`,
    ),
    `wait`,
    ...names.map(
      (n) => `printf '%s %s %s\\n' ${n} "$(cat "$out"/${n}.status)" "$(base64 -w0 < "$out"/${n})"`,
    ),
  ]);
}

/** The output of `batchCommand`: each command's exit status and stdout. */
export function parseBatch(stdout: string): Map<string, { code: number; stdout: string }> {
  const results = new Map<string, { code: number; stdout: string }>();
  for (const line of stdout.split('\n')) {
    const m = /^([a-z][a-z0-9_]*) (\d+) ?([A-Za-z0-9+/=]*)$/.exec(line.trim());
    if (m)
      results.set(m[1]!, {
        code: Number(m[2]),
        stdout: Buffer.from(m[3]!, 'base64').toString('utf8'),
      });
  }
  return results;
}
