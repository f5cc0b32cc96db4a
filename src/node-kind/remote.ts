/**
 * The commands that run on the node host, built as strings from quoted values. Each is a
 * pure function of its arguments, so that tests can read exactly what the host will run.
 */
import { HostError } from '../errors.js';
import { argv, bashScript, OWN_MARK, quote, sedLiteral, WAIT_FOR_GO } from '../shell.js';
import type { Compression } from '../settings.js';
import type { Sizes, Tree } from './host.js';
import type { NodeKind } from './loopchain/layout.js';

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

export interface Probe {
  dataDirPresent: boolean;
  roots: string[];
  missingRoots: string[];
  identities: string[];
  /** Staging folders left by runs that vanished over a day ago. */
  stale: string[];
  tools: Set<string>;
  sameDevice: boolean;
  freeBytes: number;
  /** Bytes under the snapshot's roots when the probe ran. */
  dataBytes: number;
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
    freeBytes: 0,
    dataBytes: 0,
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
  }
  probe.sameDevice = devData !== '' && devData === devParent;
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

export interface StreamOptions {
  compression: Compression;
  level: number;
  /** Writes the archive to this path on the host too (renamed from `.partial` when whole). */
  localCopy?: string;
  /**
   * Accept tar's "file changed as we read it" (exit 1). In a staging folder of hard links,
   * the node deleting its own link of a table changes the inode's ctime, which tar reports,
   * though not a byte changed; the caller proves that with `statDigestCommand`.
   */
  tolerateChanged?: boolean;
}

export const PROGRESS_MARK = 'prep-snapshot-progress';
export const CHANGED_MARK = 'prep-snapshot-tar-changed';
export const COMPRESSOR_MARK = 'prep-snapshot-compressor';
/**
 * tar's record when it archives: 2048 blocks of 512 bytes. It reads the files and writes to
 * the compressor in 1 MiB at a time instead of its default 10 KiB, a hundred times fewer
 * system calls on both sides of the pipe; the stream ends padded to a whole record, which
 * every tar reads (its end is marked before the padding).
 */
const TAR_RECORD_BYTES = 1024 * 1024;

/**
 * The bytes tar has read, from one of its checkpoint lines (one every 10 records, 10 MiB):
 * `%u` is the number of records so far, not of checkpoints.
 */
export function checkpointBytes(line: string): number | undefined {
  const m = new RegExp(`${PROGRESS_MARK} (\\d+)`).exec(line);
  return m ? Number(m[1]) * TAR_RECORD_BYTES : undefined;
}

/**
 * Streams the archive to stdout: tar of the roots, with the identity directory renamed to
 * the placeholder, compressed by pigz (gzip where pigz is missing) or zstd.
 *
 * It starts by waiting for `GO_LINE` on stdin, so that its connection can be made while the
 * node stops and the copy freezes; an input that ends without it ends the command with no
 * output.
 */
export function archiveCommand(
  kind: Tree,
  dir: string,
  identity: string | undefined,
  options: StreamOptions,
): string {
  const transform: string[] = [];
  if (identity !== undefined && kind.identityParent && kind.placeholder) {
    // The directory itself and what is under it; not a sibling whose name merely starts the same.
    const from = `^${sedLiteral(kind.identityParent)}/${sedLiteral(identity)}\\(/\\|$\\)`;
    const to = `${kind.identityParent}/${kind.placeholder}`;
    transform.push(
      `--transform=${quote(`s|${from}|${to.replace(/[\\&|]/g, (c) => `\\${c}`)}\\1|`)}`,
    );
  }
  const tar = [
    'tar --create --file=- --totals --blocking-factor=2048',
    `--checkpoint=10 --checkpoint-action=${quote(`echo=${PROGRESS_MARK} %u`)}`,
    ...transform,
    `-- ${kind.roots.map(quote).join(' ')}`,
  ].join(' ');
  const level = String(options.level);
  const compress =
    options.compression === 'zstd'
      ? `compress() { echo "${COMPRESSOR_MARK} zstd" >&2; zstd -q -T0 -${level} -c; }`
      : `compress() { if command -v pigz >/dev/null 2>&1; then echo "${COMPRESSOR_MARK} pigz" >&2; pigz -c -${level}; ` +
        `else echo "${COMPRESSOR_MARK} gzip" >&2; gzip -c -${level}; fi; }`;
  const lines = [
    ...WAIT_FOR_GO,
    compress,
    `cd -- ${quote(dir)}`,
    // A shared lock on the folder while it is read: a later run's probe leaves it alone,
    // however old the folder is (see probeCommand).
    `exec 9<.`,
    `if command -v flock >/dev/null 2>&1; then flock -s 9; fi`,
  ];
  const copy = options.localCopy ? quote(options.localCopy) : undefined;
  if (options.localCopy) lines.push(`mkdir -p -- ${quote(dirname(options.localCopy))}`);
  const pipeline = copy ? `${tar} | compress | tee -- ${copy}.partial` : `${tar} | compress`;
  if (options.tolerateChanged) {
    lines.push(
      'set +e',
      pipeline,
      'codes=("${PIPESTATUS[@]}")',
      'set -e',
      // Any failure after tar (compressor, tee) fails the stream; tar's exit 1 alone is reported.
      'for c in "${codes[@]:1}"; do [ "$c" = 0 ] || exit "$c"; done',
      `case "\${codes[0]}" in 0) ;; 1) echo ${CHANGED_MARK} >&2 ;; *) exit "\${codes[0]}" ;; esac`,
    );
  } else {
    lines.push(pipeline);
  }
  if (copy) lines.push(`mv -f -- ${copy}.partial ${copy}`);
  return bashScript(lines);
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

/*
 * The watchdog's files on the host, beside the data dir. Whoever renames `flag` first owns
 * the stopped node: the watchdog, to start it (`flag.fired`), or the run, for a step that
 * needs the node down (`flag.held`, see `heldLines`). A rename is atomic, so the two can
 * never both act.
 *   flag        armed: the run holds the node down
 *   flag.held   the run is in a step that needs the node down; the watchdog waits for it
 *   flag.fired  the watchdog started the node (it holds the time); the run has lost the node
 *   flag.pid    the watchdog's PID, for the disarm
 *   flag.log    what the watchdog said, kept when it fired
 */

/**
 * How long past 'max-downtime' a hold lasts before the watchdog takes it as left by a run
 * that vanished in the middle of a step (its script killed with SIGKILL; an SSH cut ends it
 * through its HUP trap, which gives the hold back). Steps under a hold take seconds.
 */
export const ABANDONED_HOLD_SECONDS = 300;

/** Exit status of a step on the host that found that the watchdog had started the node. */
export const NODE_LOST = 75;

/**
 * Arms the watchdog: a detached process on the host that runs the start command once the
 * node has been down for `seconds`, unless the run has disarmed it by then. It holds when
 * the runner vanishes. A step the run holds (`heldLines`) is waited for, up to
 * `ABANDONED_HOLD_SECONDS` more. Prints the PID.
 */
export function armWatchdogCommand(flag: string, seconds: number, startCommand: string): string {
  const n = Math.ceil(seconds);
  const f = quote(flag);
  const inner = [
    `f=${f}`,
    `trap 'rm -f -- "$f.pid"' EXIT`,
    `deadline=$(( $(date +%s) + ${n} ))`,
    // Until the deadline: a disarm (no flag, held or not) ends the watchdog.
    `while [ "$(date +%s)" -lt "$deadline" ]; do`,
    `  [ -e "$f" ] || [ -e "$f.held" ] || exit 0`,
    `  sleep 1`,
    `done`,
    `while :; do`,
    `  if mv -- "$f" "$f.fired" 2>/dev/null; then break; fi`,
    `  [ -e "$f.held" ] || exit 0`,
    `  held=$(stat -c %Y -- "$f.held" 2>/dev/null || echo 0)`,
    `  if [ $(( $(date +%s) - held )) -ge ${n + ABANDONED_HOLD_SECONDS} ] && mv -- "$f.held" "$f.fired" 2>/dev/null; then break; fi`,
    `  sleep 1`,
    `done`,
    `date -u +%FT%TZ > "$f.fired"`,
    // The log is written only when the watchdog acts: nothing else it might print (a signal
    // that ends it when disarmed) can leave a file for the operator to wonder about.
    `exec >>"$f.log" 2>&1`,
    `echo "$(date -u +%FT%TZ) prep-snapshot watchdog: the node was still down after ${n} s; starting it"`,
    startCommand,
  ].join('\n');
  return bashScript([
    `rm -f -- ${quote(`${flag}.fired`)} ${quote(`${flag}.held`)}`,
    `printf '%s\\n' armed > ${f}`,
    `if command -v setsid >/dev/null 2>&1; then detach=setsid; else detach=; fi`,
    `$detach nohup bash -c ${quote(inner)} ${OWN_MARK} </dev/null >/dev/null 2>&1 &`,
    `printf '%s\\n' "$!" > ${quote(`${flag}.pid`)}`,
    `echo "$!"`,
  ]);
}

/**
 * Script lines that take the node from the watchdog for the rest of the script, or exit
 * with `NODE_LOST` when the watchdog has started it already. The hold is given back when
 * the script ends, however it ends. Where no watchdog was armed for this run (no flag of
 * any kind), they do nothing: the run did not stop the node.
 */
export function heldLines(flag: string): string[] {
  return [
    `wd_flag=${quote(flag)}`,
    `lost() { echo "prep-snapshot-node-lost: the watchdog started the node at $(cat -- "$wd_flag.fired" 2>/dev/null)" >&2; exit ${NODE_LOST}; }`,
    `if [ -e "$wd_flag.fired" ]; then lost; fi`,
    `if [ -e "$wd_flag" ]; then`,
    `  mv -- "$wd_flag" "$wd_flag.held" 2>/dev/null || lost`,
    `  touch -- "$wd_flag.held"`,
    // Given back at the end; a hold that is gone by then was taken as abandoned (see
    // `armWatchdogCommand`): what the step did may have raced the node's start.
    `  trap 'rc=$?; if mv -- "$wd_flag.held" "$wd_flag" 2>/dev/null; then exit $rc; fi; [ $rc -ne 0 ] && exit $rc; lost' EXIT`,
    `  trap 'exit 129' HUP; trap 'exit 143' TERM; trap 'exit 130' INT`,
    `fi`,
  ];
}

/** Prints the time the watchdog started the node, if it did (read only). */
export function watchdogFiredCommand(flag: string): string {
  return bashScript([`cat -- ${quote(`${flag}.fired`)} 2>/dev/null || true`]);
}

/** The time the watchdog started the node, from a step's stderr that exited with `NODE_LOST`. */
export function nodeLostAt(stderr: string): string | undefined {
  const m = /prep-snapshot-node-lost: the watchdog started the node at (\S*)/.exec(stderr);
  return m ? m[1] || 'an unknown time' : undefined;
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
 * Disarms the watchdog: the flag goes first, so that a watchdog that wakes now does
 * nothing. Prints `fired=TIME` when the watchdog had started the node before (its log,
 * written only then, stays for the operator).
 */
export function disarmWatchdogCommand(flag: string): string {
  const f = (suffix = '') => quote(`${flag}${suffix}`);
  return bashScript([
    `pid=$(cat -- ${f('.pid')} 2>/dev/null || true)`,
    `rm -f -- ${f()} ${f('.held')} ${f('.pid')}`,
    `if [ -n "$pid" ]; then kill -- "-$pid" 2>/dev/null || kill -- "$pid" 2>/dev/null || true; fi`,
    `if [ -e ${f('.fired')} ]; then echo "fired=$(cat -- ${f('.fired')})"; rm -f -- ${f('.fired')}; fi`,
  ]);
}

/** The time the watchdog fired, from the output of `disarmWatchdogCommand`; undefined if it did not. */
export function parseDisarm(stdout: string): string | undefined {
  const m = /^fired=(.*)$/m.exec(stdout);
  return m ? m[1]?.trim() || 'an unknown time' : undefined;
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
 * What the restore needs to know about the host, read only: free space where the staging
 * folder will be (the nearest existing folder above the data dir on a fresh host), whether
 * the data dir exists, and the tools.
 */
export function restoreProbeCommand(dataDir: string): string {
  return bashScript([
    `d=${quote(dirname(dataDir))}`,
    `while [ ! -d "$d" ]; do d=$(dirname -- "$d"); done`,
    `echo "free_parent=$(df -P -B1 -- "$d" | awk 'NR==2 {print $4}')"`,
    `[ -e ${quote(dataDir)} ] && echo "datadir=present" || echo "datadir=missing"`,
    `for t in tar igzip pigz gzip zstd curl wget; do command -v "$t" >/dev/null 2>&1 && echo "tool=$t"; done; true`,
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

/** A program on the host that turns the archive back into a tar stream. */
export interface Decoder {
  /** Its command is `DECODERS[name]`, chosen on the host by this name (see `goLine`). */
  name: 'igzip' | 'pigz' | 'gzip' | 'zstd';
}

/** Every decompressor a restore may use, by name. */
export const DECODERS: Record<Decoder['name'], string> = {
  igzip: 'igzip -d -c',
  pigz: 'pigz -d -c',
  gzip: 'gzip -d -c',
  zstd: 'zstd -d -q -c',
};

/**
 * The fastest decompressor the host has for `compression`. Inflate is single-threaded in
 * pigz and gzip alike and is the slowest stage of a restore; igzip (ISA-L, Debian's `isal`)
 * inflates about twice as fast on the same core and checks the CRC the same way.
 */
export function chooseDecoder(tools: Set<string>, compression: Compression): Decoder {
  const pick = (name: Decoder['name']): Decoder => ({ name });
  if (compression === 'zstd') return pick('zstd');
  if (tools.has('igzip')) return pick('igzip');
  if (tools.has('pigz')) return pick('pigz');
  return pick('gzip');
}

/**
 * `wide CMD...` runs CMD with the pipes on its stdin and stdout widened from 64 KiB to 1 MiB
 * (F_SETPIPE_SZ, through perl, which Debian and Ubuntu always have). Each time a pipe fills,
 * its writer sleeps and its reader is woken on the other core; on a VM those wake-ups cost
 * more than the copying. Measured on the 2 GiB bench archive: `igzip -d | tar -x` took
 * 13-15 s through 64 KiB pipes and 7.5-8.6 s through 1 MiB ones. Where perl or the fcntl is
 * missing, CMD runs as it is.
 */
export const WIDE_PIPES =
  `wide() { if command -v perl >/dev/null 2>&1; then ` +
  `perl -e 'for (*STDIN, *STDOUT) { fcntl($_, 1031, 1048576) if $^O eq "linux" } ` +
  `exec { $ARGV[0] } @ARGV or die "$ARGV[0]: $!\\n"' -- "$@"; else "$@"; fi; }`;

/** Exit status of the extraction when the archive is not a snapshot of the node's kind. */
export const NOT_A_SNAPSHOT = 3;

/**
 * Exit status of the extraction when the archive holds what a snapshot never does (see
 * `extractCommand`); EX_DATAERR of sysexits.h, which neither tar nor a decompressor uses.
 */
export const UNSAFE_ARCHIVE = 65;

/** Starts each line of stderr that names an entry for which the extraction refused an archive. */
export const UNSAFE_MARK = 'prep-snapshot-unsafe';

/** How many refused entries the extraction names; it counts the others. */
const UNSAFE_SHOWN = 5;

/** Prints the first lines of its input, then how many more there were. */
const FIRST_FEW = `NR <= ${UNSAFE_SHOWN} { print } END { if (NR > ${UNSAFE_SHOWN}) print "and " NR - ${UNSAFE_SHOWN} " more" }`;

/**
 * Reads tar's `-vv` listing of what it extracts (`--numeric-owner`, C locale: `MODE UID/GID
 * SIZE DATE TIME NAME`, with ` -> TARGET` or ` link to TARGET` after a link) and prints the
 * members that a snapshot never has: anything but a regular file or a directory, a file with
 * the setuid, setgid or sticky bit, an absolute name. tar has dropped those bits by then and
 * turned the absolute name into a relative one; the headers are where they still show.
 */
const LISTING_CHECK = [
  `{`,
  `  t = substr($0, 1, 1); name = $0; why = ""`,
  `  sub(/^[^ ]+ [^ ]+ +[^ ]+ [^ ]+ [^ ]+ /, "", name)`,
  `  if (t == "l") why = "a symbolic link"`,
  `  else if (t == "h") why = "a hard link"`,
  `  else if (t == "c") why = "a character device"`,
  `  else if (t == "b") why = "a block device"`,
  `  else if (t == "p") why = "a fifo"`,
  `  else if (t != "-" && t != "d") why = "an entry of type " t`,
  `  else if (t == "-" && substr($0, 4, 1) ~ /[sS]/) why = "a setuid file"`,
  `  else if (t == "-" && substr($0, 7, 1) ~ /[sS]/) why = "a setgid file"`,
  `  else if (t == "-" && substr($0, 10, 1) ~ /[tT]/) why = "a file with the sticky bit"`,
  `  else if (name ~ /^\\//) why = "an absolute name"`,
  `  if (why != "" && ++n <= ${UNSAFE_SHOWN}) print name " (" why ")"`,
  `}`,
  `END { if (n > ${UNSAFE_SHOWN}) print "and " n - ${UNSAFE_SHOWN} " more" }`,
].join('\n');

/**
 * Passes tar's stderr through and prints the members that tar skipped for a `..` in their
 * name: those never reach its listing.
 */
const ERRORS_CHECK = [
  `{ print > "/dev/stderr" }`,
  `/^tar: .*: Member name contains / {`,
  `  name = $0; sub(/^tar: /, "", name); sub(/: Member name contains .*$/, "", name)`,
  `  if (++n <= ${UNSAFE_SHOWN}) print name " (a name with ..)"`,
  `}`,
  `END { if (n > ${UNSAFE_SHOWN}) print "and " n - ${UNSAFE_SHOWN} " more" }`,
].join('\n');

/**
 * A `find` in the staging folder that prints (NUL-terminated) every entry that a snapshot of
 * `kind` never has: one outside its roots, anything but a regular file or a directory, a file
 * with more than one name, a file with the setuid, setgid or sticky bit. It looks at what
 * tar made rather than at what the headers said, so it holds whatever tar does with them.
 */
function treeCheck(kind: Tree): string {
  const glob = (path: string): string => path.replace(/[*?[\]\\]/g, (c) => `\\${c}`);
  // A root, a folder on the way to one, or anything under one.
  const allowed = new Set<string>();
  for (const root of kind.roots) {
    const parts = root.split('/');
    for (let i = 1; i <= parts.length; i++)
      allowed.add(`-path ${quote(`./${glob(parts.slice(0, i).join('/'))}`)}`);
    allowed.add(`-path ${quote(`./${glob(root)}/*`)}`);
  }
  const where = kind.roots.join(' and ').replace(/[%\\]/g, (c) => `${c}${c}`);
  const entry = (test: string, why: string): string =>
    `\\( ${test} -printf ${quote(`%P (${why})\\0`)} \\)`;
  return [
    `find . -mindepth 1`,
    `\\( ! \\( ${[...allowed].join(' -o ')} \\) -printf ${quote(`%P (outside ${where})\\0`)} -prune \\)`,
    ...[
      entry('-type l', 'a symbolic link to %l'),
      entry('-type c', 'a character device'),
      entry('-type b', 'a block device'),
      entry('-type p', 'a fifo'),
      entry('! -type f ! -type d', 'neither a file nor a directory'),
      entry('-type f -links +1', 'a hard link, %n names'),
      entry('-type f -perm /7000', 'mode %m: setuid, setgid or sticky'),
    ].map((e) => `-o ${e}`),
  ].join(' ');
}

/** The first line that the extraction reads, before the archive: it names the decompressor. */
export function goLine(decoder: Decoder): string {
  return `go ${decoder.name}\n`;
}

/**
 * Reads the archive from stdin into a fresh staging folder, checks that it holds a snapshot
 * and prints the number of files: one round trip.
 *
 * The command can start before the runner has decided to restore (its connection then
 * overlaps the checks of the host): it waits for `goLine` on stdin, and an input that ends
 * without it ends the command with nothing done.
 *
 * It runs as whoever the SSH user is, often root, and the archive is not trusted: tar keeps
 * no owner of the archive (files belong to the SSH user) and no mode bits beyond 0777 less
 * the umask. Then it refuses (exit `UNSAFE_ARCHIVE`, one `UNSAFE_MARK` line per entry on
 * stderr) an archive with anything but regular files and directories under the kind's roots:
 * a symbolic link (a placeholder that is one would take the block DB outside the data dir
 * at the swap), a device, a fifo, a hard link, a setuid, setgid or sticky file, an absolute
 * name or one with `..`. The staging folder is removed; the data dir is not touched.
 *
 * GNU tar (seen with 1.34, as root, umask 022) already keeps a hostile archive inside the
 * folder while it extracts: it skips a member whose name has a `..` and exits 2; it strips
 * the leading `/` of an absolute name and extracts it inside; it strips the leading `/` or
 * `../` of a hard link's target and links to that name inside the folder (and fails when
 * there is none); a symbolic link whose target is absolute or has a `..` holds its place as
 * a plain file until everything else is extracted, so that no member is written through it.
 * With `--no-same-permissions` it drops the setuid, setgid and sticky bits of files and
 * directories (a 4755 file becomes 0755), where the check cannot see them: the listing
 * check reads them from the headers.
 */
export function extractCommand(kind: Tree, prepDir: string, stage: string): string {
  const required = [
    ...(kind.required ?? []),
    ...(kind.identityParent && kind.placeholder
      ? [`${kind.identityParent}/${kind.placeholder}`]
      : []),
  ];
  const missing = (what: string): string =>
    `{ echo ${quote(`the archive holds no ${what}`)} >&2; exit ${NOT_A_SNAPSHOT}; }`;
  // A real directory: `-d` alone follows a symbolic link.
  const isDir = (path: string): string => `[ -d ${quote(path)} ] && [ ! -L ${quote(path)} ]`;
  // 1 MiB records: tar reads and writes in pieces a hundred times bigger than its default
  // 10 KiB, which halved its system time on the bench archive. -B gathers the short reads
  // of a pipe into whole records.
  const tar =
    'LC_ALL=C tar -x -b 2048 -B --no-same-owner --no-same-permissions --numeric-owner -vv -f - -C "$stage"';
  return bashScript([
    WIDE_PIPES,
    // bash reads a pipe a byte at a time: the archive starts right after this line.
    `IFS=' ' read -r word name || exit 0`,
    `[ "$word" = go ] || exit 0`,
    `case "$name" in`,
    ...Object.entries(DECODERS).map(([n, c]) => `  ${n}) decoder=${quote(c)} ;;`),
    `  *) echo "unknown decompressor: $name" >&2; exit 2 ;;`,
    `esac`,
    // A failed extraction (cut input, full disk, not a snapshot, unsafe) removes its own
    // folder: the runner that would remove it may be gone.
    `stage=${quote(stage)}`,
    `trap 'if [ $? -ne 0 ]; then cd /; rm -rf -- "$stage"; fi' EXIT`,
    `refuse() { printf '%s\\n' "$1" | sed ${quote(`s/^/${UNSAFE_MARK} /`)} >&2; exit ${UNSAFE_ARCHIVE}; }`,
    `mkdir -p -- ${quote(prepDir)}`,
    `rm -rf -- "$stage"`,
    `mkdir -p -- "$stage"`,
    // The lock lives on the folder's open file, which every process below inherits: it is
    // released when the last of them ends, however the script itself ends.
    `exec 9<"$stage"`,
    `if command -v flock >/dev/null 2>&1; then flock 9; fi`,
    // tar's listing goes to one check and its stderr (and the decompressor's) through the
    // other; what they find comes out on fd 3. The status is the decompressor's or tar's.
    `rc=0`,
    `found=$({ { wide $decoder | ${tar} | awk ${quote(LISTING_CHECK)}; } 2>&1 >&3 | awk ${quote(ERRORS_CHECK)}; } 3>&1) || rc=$?`,
    `if [ -n "$found" ]; then refuse "$found"; fi`,
    `[ "$rc" = 0 ] || exit "$rc"`,
    `cd -- "$stage"`,
    // A root that is a symbolic link passes here, for the tree check to name it.
    ...kind.roots.map((r) => `[ -d ${quote(r)} ] || ${missing(r)}`),
    // Names go to the runner's log: whatever is not printable becomes '?'.
    `found=$(${treeCheck(kind)} | LC_ALL=C tr -c '[:print:]\\0' '?' | tr '\\0' '\\n' | awk ${quote(FIRST_FEW)})`,
    `if [ -n "$found" ]; then refuse "$found"; fi`,
    ...[...kind.roots, ...required].map((d) => `${isDir(d)} || ${missing(d)}`),
    `find ${kind.roots.map(quote).join(' ')} -type f | wc -l`,
  ]);
}

/** The line that lets a waiting `swapCommand` go ahead. */
export const SWAP_LINE = 'swap\n';

/**
 * Gives the staged snapshot's identity directory the node's IP and moves the snapshot into
 * place; the previous data dir is kept as `previous`. Prints `swapped`.
 *
 * It starts ahead of time and waits for `SWAP_LINE` on stdin, which the runner sends once
 * the archive has proved whole; an input that ends without it changes nothing.
 */
export function swapCommand(
  kind: NodeKind,
  dataDir: string,
  stage: string,
  previous: string,
  ip: string,
  watchdogFlag: string,
): string {
  const ids = `${stage}/${kind.identityParent}`;
  return bashScript([
    `IFS= read -r word || exit 0`,
    `[ "$word" = swap ] || exit 0`,
    // Where this run stopped the node, it moves the data dir only while it still holds it.
    ...heldLines(watchdogFlag),
    `mv -- ${quote(`${ids}/${kind.placeholder}`)} ${quote(`${ids}/${kind.identityDir(ip)}`)}`,
    `if [ -e ${quote(dataDir)} ]; then mv -- ${quote(dataDir)} ${quote(previous)}; fi`,
    `mv -- ${quote(stage)} ${quote(dataDir)}`,
    `echo swapped`,
  ]);
}

/** Puts the previous data dir back; the failed one is kept beside it for a look. */
export function rollbackCommand(
  dataDir: string,
  previous: string,
  failed: string,
  watchdogFlag: string,
): string {
  return bashScript([
    ...heldLines(watchdogFlag),
    `[ -e ${quote(previous)} ] || { echo 'no previous data dir to roll back to' >&2; exit 3; }`,
    `if [ -e ${quote(dataDir)} ]; then mv -- ${quote(dataDir)} ${quote(failed)}; fi`,
    `mv -- ${quote(previous)} ${quote(dataDir)}`,
  ]);
}
