/**
 * The archive's stream on the host: tar of the snapshot's roots, compressed there, to stdout,
 * with its progress and what tar saw on stderr. Pure functions of their arguments, like the
 * other commands (remote.ts).
 */
import { bashScript, quote, sedLiteral, WAIT_FOR_GO } from '../shell.js';
import type { Compression } from '../settings.js';
import type { Tree } from './host.js';
import { dirname } from './remote.js';

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
  /**
   * The folder of this run's send ahead of the stop (archiveAheadCommand): the archive leaves
   * out what that sent, and follows it.
   */
  ahead?: string;
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
 * Where a backup's send ahead of the stop keeps the table files it archives: a folder of hard
 * links beside the staging folder, removed with it.
 */
export function aheadDir(stage: string): string {
  return `${stage}-ahead`;
}

/**
 * Seconds that a table file must have stood unchanged to go ahead of the stop. The node writes
 * a table in well under a second and then never again: one younger may still be written, and
 * is left to the frozen copy.
 */
export const AHEAD_SETTLED_SECONDS = 10;

/** In the send ahead's folder: its files' path, inode, size and mtime (NUL-terminated, sorted). */
const AHEAD_STAT = '.prep-snapshot-stat';
/** In the send ahead's folder: the paths it archived (NUL-terminated). */
const AHEAD_LIST = '.prep-snapshot-list';
/** In the send ahead's folder: the tar bytes it sent. */
const AHEAD_BYTES = '.prep-snapshot-bytes';
/** The send ahead's files changed while it read them: its part of the archive is not used. */
export const AHEAD_CHANGED_MARK = 'prep-snapshot-ahead-changed';
/** The exit code that goes with it. */
export const AHEAD_CHANGED_CODE = 3;

/** The `find` tests that leave out `leaveOut` (paths under the roots) and what is under them. */
export function pruned(leaveOut: string[]): string {
  if (leaveOut.length === 0) return '';
  return `\\( ${leaveOut.map((p) => `-path ${quote(p)}`).join(' -o ')} \\) -prune -o`;
}

/**
 * Hard-links the running node's table files (`*.ldb`, `*.sst`) that have stood unchanged for
 * AHEAD_SETTLED_SECONDS into `ahead`, under their paths relative to the data dir; prints
 * `files=` and `bytes=`. A table the node removes meanwhile is left out. The links hold the
 * tables while they are read, whatever the node compacts meanwhile.
 */
export function linkAheadCommand(
  kind: Tree,
  dataDir: string,
  ahead: string,
  leaveOut: string[] = [],
): string {
  const roots = kind.roots.map(quote).join(' ');
  return bashScript([
    `ahead=${quote(ahead)}`,
    `rm -rf -- "$ahead"`,
    `mkdir -p -- "$ahead"`,
    `cd -- ${quote(dataDir)}`,
    `cutoff=$(( $(date +%s) - ${AHEAD_SETTLED_SECONDS} ))`,
    `{ find ${roots} ${pruned(leaveOut)} -type f \\( -name '*.ldb' -o -name '*.sst' \\) ! -newermt "@$cutoff" -print0 2>/dev/null || true; } |`,
    `  { xargs -0 -r cp -al --parents -t "$ahead" -- 2>/dev/null || true; }`,
    `cd -- "$ahead"`,
    `find . -type f -printf '%s\\n' | awk '{n++; s+=$1} END {printf "files=%d\\nbytes=%d\\n", n, s}'`,
  ]);
}

/** `tar --transform` that names the identity directory after the placeholder (loopchain). */
function identityTransform(kind: Tree, identity: string | undefined): string[] {
  if (identity === undefined || !kind.identityParent || !kind.placeholder) return [];
  // The directory itself and what is under it; not a sibling whose name merely starts the same.
  const from = `^${sedLiteral(kind.identityParent)}/${sedLiteral(identity)}\\(/\\|$\\)`;
  const to = `${kind.identityParent}/${kind.placeholder}`;
  return [`--transform=${quote(`s|${from}|${to.replace(/[\\&|]/g, (c) => `\\${c}`)}\\1|`)}`];
}

function compressFunction(options: StreamOptions): string {
  const level = String(options.level);
  return options.compression === 'zstd'
    ? `compress() { echo "${COMPRESSOR_MARK} zstd" >&2; zstd -q -T0 -${level} -c; }`
    : `compress() { if command -v pigz >/dev/null 2>&1; then echo "${COMPRESSOR_MARK} pigz" >&2; pigz -c -${level}; ` +
        `else echo "${COMPRESSOR_MARK} gzip" >&2; gzip -c -${level}; fi; }`;
}

const TAR_CREATE = [
  'tar --create --file=- --totals --blocking-factor=2048',
  `--checkpoint=10 --checkpoint-action=${quote(`echo=${PROGRESS_MARK} %u`)}`,
].join(' ');

/** The lines that take the folder's shared lock: a later run's probe leaves it alone (probeCommand). */
const SHARED_LOCK = [`exec 9<.`, `if command -v flock >/dev/null 2>&1; then flock -s 9; fi`];

/** The stat lines of the files under the current folder (`find` arguments `where`), sorted. */
function statLines(where: string, name: '%p' | '%P'): string {
  return `find ${where} -type f -printf '${name}\\t%i\\t%s\\t%T@\\0' | LC_ALL=C sort -z`;
}

/**
 * Sets the shell variable `name` to the bytes that tar makes of the files in `list` (its members
 * and its two end blocks, no padding), from a tar to /dev/null, which reads no file.
 */
function tarSize(name: string, list: string, transform: string, what: string): string[] {
  return [
    `${name}=$(LC_ALL=C tar --create --file=/dev/null --totals --blocking-factor=1 ${list} ${transform} 2>&1 | sed -n 's/^Total bytes written: \\([0-9]*\\).*/\\1/p')`,
    `[ -n "$${name}" ] || { echo ${quote(`tar did not say the size of ${what}`)} >&2; exit 1; }`,
  ];
}

/**
 * The first part of an archive, made while the node runs: tar of the tables in `ahead`
 * (linkAheadCommand), compressed, to stdout, without tar's end-of-archive blocks, so that the
 * frozen copy's archive (archiveCommand with `ahead`) follows it as one tar. Compressed
 * streams concatenate (gzip members, zstd frames), and so do tar members: the whole reads as
 * one archive with any tar, the original scripts' included.
 *
 * tar's size without writing it (to /dev/null, it reads no file) says where its end blocks
 * begin; the stat lines before and after prove that no file changed while tar read it. If
 * one did, the command fails with AHEAD_CHANGED_CODE. Starts on its go line.
 */
export function archiveAheadCommand(
  kind: Tree,
  ahead: string,
  identity: string | undefined,
  options: StreamOptions,
): string {
  const transform = identityTransform(kind, identity).join(' ');
  const files = `. ! -name ${quote(AHEAD_STAT)} ! -name ${quote(AHEAD_LIST)}`;
  const list = `--null --no-recursion --files-from=${AHEAD_LIST}`;
  const copy = options.localCopy ? quote(options.localCopy) : undefined;
  return bashScript([
    ...WAIT_FOR_GO,
    compressFunction(options),
    `cd -- ${quote(ahead)}`,
    ...SHARED_LOCK,
    `${statLines(files, '%P')} > ${AHEAD_STAT}`,
    `find ${files} -type f -printf '%P\\0' | LC_ALL=C sort -z > ${AHEAD_LIST}`,
    ...tarSize('total', list, transform, 'the tables ahead'),
    // The archive's end: two blocks of zeros (with a blocking factor of 1, no padding after).
    `members=$(( total - 1024 ))`,
    ...(options.localCopy ? [`mkdir -p -- ${quote(dirname(options.localCopy))}`] : []),
    'set +e',
    `${TAR_CREATE} ${list} ${transform} | head -c "$members" | compress${copy ? ` | tee -- ${copy}.partial` : ''}`,
    'codes=("${PIPESTATUS[@]}")',
    'set -e',
    // tar ends by a broken pipe once head has its members; any other failure fails the stream.
    'case "${codes[0]}" in 0|1|141) ;; *) exit "${codes[0]}" ;; esac',
    'for c in "${codes[@]:1}"; do [ "$c" = 0 ] || exit "$c"; done',
    `if ! ${statLines(files, '%P')} | cmp -s - ${AHEAD_STAT}; then echo ${AHEAD_CHANGED_MARK} >&2; exit ${AHEAD_CHANGED_CODE}; fi`,
    `echo "$members" > ${AHEAD_BYTES}`,
    `echo "${AHEAD_BYTES_MARK} $members" >&2`,
  ]);
}

/** On the send ahead's stderr at its end: the tar bytes it sent. */
export const AHEAD_BYTES_MARK = 'prep-snapshot-ahead-bytes';
/**
 * On the stderr of the archive that follows a send ahead: how many of the tables sent ahead the
 * frozen copy no longer holds (the node removed them meanwhile), which the archive holds besides
 * the snapshot's files.
 */
export const AHEAD_REMOVED_MARK = 'prep-snapshot-ahead-removed';

/**
 * Streams the archive to stdout: tar of the roots, with the identity directory renamed to
 * the placeholder, compressed by pigz (gzip where pigz is missing) or zstd.
 *
 * With `ahead` (the folder of a send ahead of the stop, archiveAheadCommand), the archive
 * follows what that sent: it leaves out every file that the send ahead read and the frozen
 * copy holds still, the same file (path, inode, size and mtime). A table it read that the node
 * wrote again, or removed, is archived here as it is now, or not at all; one that the node
 * removed stays in the first part, a table no MANIFEST lists, which the database deletes when
 * it opens.
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
  const transform = identityTransform(kind, identity);
  const roots = kind.roots.map(quote).join(' ');
  const lines = [...WAIT_FOR_GO, compressFunction(options), `cd -- ${quote(dir)}`, ...SHARED_LOCK];
  let tar: string;
  if (options.ahead !== undefined) {
    const a = quote(options.ahead);
    lines.push(
      `sent=$(mktemp) rest=$(mktemp)`,
      `trap 'rm -f -- "$sent" "$rest"' EXIT`,
      `${statLines(roots, '%p')} | LC_ALL=C comm -z -12 - ${a}/${AHEAD_STAT} | cut -z -f 1 | LC_ALL=C sort -z > "$sent"`,
      `find ${roots} -print0 | LC_ALL=C sort -z | LC_ALL=C comm -z -23 - "$sent" > "$rest"`,
      // The tables sent ahead that the frozen copy no longer holds: the archive holds them too.
      `removed=$(find ${roots} -type f -print0 | LC_ALL=C sort -z | LC_ALL=C comm -z -13 - ${a}/${AHEAD_LIST} | tr -cd '\\0' | wc -c)`,
      `echo "${AHEAD_REMOVED_MARK} $removed" >&2`,
    );
    // tar pads its end to a whole record counted from where it began. A reader of whole records
    // (the restore's tar -b 2048 -B) counts from the send ahead's start, and stops after the
    // record that holds the end: what follows it would be left unread, and the decompressor
    // would end by a broken pipe. So this part is tar's members and end (its size, as the send
    // ahead finds its own), then zeros to a whole record of the archive.
    const list = '--null --no-recursion --files-from="$rest"';
    lines.push(
      ...tarSize('size', list, transform.join(' '), 'the rest'),
      `pad=$(( (${TAR_RECORD_BYTES} - ($(cat -- ${a}/${AHEAD_BYTES}) + size) % ${TAR_RECORD_BYTES}) % ${TAR_RECORD_BYTES} ))`,
    );
    const create = [TAR_CREATE, ...transform, list].join(' ');
    // tar's status, where head's cut of its padding (a broken pipe) is not a failure.
    tar =
      `( set +e; ${create} | head -c "$size"; c=("\${PIPESTATUS[@]}"); head -c "$pad" /dev/zero; ` +
      `[ "\${c[1]}" = 0 ] || exit "\${c[1]}"; [ "\${c[0]}" = 141 ] && exit 0; exit "\${c[0]}" )`;
  } else {
    tar = [TAR_CREATE, ...transform, `-- ${roots}`].join(' ');
  }
  const copy = options.localCopy ? quote(options.localCopy) : undefined;
  if (options.localCopy && options.ahead === undefined)
    lines.push(`mkdir -p -- ${quote(dirname(options.localCopy))}`);
  // After a send ahead, the local copy goes on from what that wrote.
  const tee = options.ahead !== undefined ? 'tee -a' : 'tee';
  const pipeline = copy ? `${tar} | compress | ${tee} -- ${copy}.partial` : `${tar} | compress`;
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
