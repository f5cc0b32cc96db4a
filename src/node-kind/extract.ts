/**
 * Extracting an archive on the node host, which is not trusted: the decompressors, the pipes
 * widened for them, and the extraction with its checks of what the archive holds.
 */
import { bashScript, quote } from '../shell.js';
import type { Compression } from '../settings.js';
import type { Tree } from './host.js';
import {
  FETCH_END,
  FETCH_FUNCTIONS,
  FETCH_REPORT,
  FETCH_SETUP,
  TREE_FETCH_SETUP,
} from './host-fetch.js';

/**
 * A program on the host that turns the archive back into a tar stream, or `none`: a tree's
 * files travel as a plain tar (they are LevelDB tables, compressed already), which tar reads
 * itself.
 */
export interface Decoder {
  /** Its command is `DECODERS[name]`, chosen on the host by this name (see `goLine`). */
  name: keyof typeof DECODERS | 'none';
}

/** Every decompressor a restore may use, by name. */
export const DECODERS = {
  igzip: 'igzip -d -c',
  pigz: 'pigz -d -c',
  gzip: 'gzip -d -c',
  zstd: 'zstd -d -q -c',
} as const;

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
 * Starts the line of stderr that says what a refused archive lacks. The host's shell may write
 * to stderr too (a login file that prints, a version manager that complains): the message is
 * taken from the marked line only.
 */
export const MISSING_MARK = 'prep-snapshot-missing';

/**
 * Exit status of the extraction when the archive holds what a snapshot never does (see
 * `extractCommand`); EX_DATAERR of sysexits.h, which neither tar nor a decompressor uses.
 */
export const UNSAFE_ARCHIVE = 65;

/** Starts each line of stderr that names an entry for which the extraction refused an archive. */
export const UNSAFE_MARK = 'prep-snapshot-unsafe';

/** The lines of `stderr` that start with `mark`, without it. */
export function markedLines(stderr: string, mark: string): string[] {
  return stderr
    .split('\n')
    .filter((l) => l.startsWith(`${mark} `))
    .map((l) => l.slice(mark.length + 1));
}

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
 * with more than one name (except in a tree's staging folder, `linked`, where the data dir's
 * tables are linked on purpose; a link in the tar itself is refused by the listing check), a
 * file with the setuid, setgid or sticky bit. It looks at what tar made rather than at what
 * the headers said, so it holds whatever tar does with them.
 */
function treeCheck(kind: Tree, linked: boolean): string {
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
      ...(linked ? [] : [entry('-type f -links +1', 'a hard link, %n names')]),
      entry('-type f -perm /7000', 'mode %m: setuid, setgid or sticky'),
    ].map((e) => `-o ${e}`),
  ].join(' ');
}

/** The first line that the extraction reads, before the archive: it names the decompressor. */
export function goLine(decoder: Decoder): string {
  return `go ${decoder.name}\n`;
}

// 1 MiB records: tar reads and writes in pieces a hundred times bigger than its default
// 10 KiB, which halved its system time on the bench archive. -B gathers the short reads of a
// pipe into whole records.
const TAR_X =
  'tar -x -b 2048 -B --no-same-owner --no-same-permissions --numeric-owner -vv -f - -C "$stage"';

/** tar itself on a plain tar: a cat in between cost the host a core-second for every 2 GiB. */
const PLAIN_TAR_X = `LC_ALL=C wide ${TAR_X}`;

/** Exits `UNSAFE_ARCHIVE` with a marked line on stderr for each line of its argument. */
const REFUSE = `refuse() { printf '%s\\n' "$1" | sed ${quote(`s/^/${UNSAFE_MARK} /`)} >&2; exit ${UNSAFE_ARCHIVE}; }`;

/**
 * Runs `extract` (a decoder into tar, or tar) with tar's listing through one check and its
 * stderr through the other; what they find is in $found, the status in $rc.
 */
const checkedExtraction = (extract: string): string =>
  `found=$({ { ${extract} | awk ${quote(LISTING_CHECK)}; } 2>&1 >&3 | awk ${quote(ERRORS_CHECK)}; } 3>&1) || rc=$?`;

/** What a tree's extraction prints once it holds the lock of its staging folder. */
export const LOCKED_LINE = 'prep-snapshot-locked';

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
export function extractCommand(
  kind: Tree,
  prepDir: string,
  stage: string,
  options: { keep?: boolean } = {},
): string {
  const required = [
    ...(kind.required ?? []),
    ...(kind.identityParent && kind.placeholder
      ? [`${kind.identityParent}/${kind.placeholder}`]
      : []),
  ];
  const missing = (what: string): string =>
    `{ echo ${quote(`${MISSING_MARK} the archive holds no ${what}`)} >&2; exit ${NOT_A_SNAPSHOT}; }`;
  // A real directory: `-d` alone follows a symbolic link.
  const isDir = (path: string): string => `[ -d ${quote(path)} ] && [ ! -L ${quote(path)} ]`;
  return bashScript([
    WIDE_PIPES,
    // bash reads a pipe a byte at a time: the archive starts right after this line, or, with
    // `fetch`, the order of the host's own read of it (host-fetch.ts).
    `IFS=' ' read -r word name how || exit 0`,
    `[ "$word" = go ] || exit 0`,
    `case "$name" in`,
    ...Object.entries(DECODERS).map(
      ([n, c]) => `  ${n}) decode() { wide ${c} | LC_ALL=C ${TAR_X}; } ;;`,
    ),
    `  none) decode() { ${PLAIN_TAR_X}; } ;;`,
    `  *) echo "unknown decompressor: $name" >&2; exit 2 ;;`,
    `esac`,
    // A failed extraction (cut input, full disk, not a snapshot, unsafe) removes its own
    // folder: the runner that would remove it may be gone. A tree's folder is kept: the next
    // run goes on from the files it holds (see tree/fetch.ts), some linked from the data dir.
    `stage=${quote(stage)}`,
    ...FETCH_FUNCTIONS,
    ...(options.keep
      ? [`dl=`, `trap 'if [ -n "$dl" ]; then rm -rf -- "$dl"; fi' EXIT`]
      : [
          ...FETCH_SETUP,
          `trap 'st=$?; if [ -n "$dl" ]; then rm -rf -- "$dl"; fi; if [ $st -ne 0 ]; then cd /; rm -rf -- "$stage"; fi' EXIT`,
        ]),
    REFUSE,
    `mkdir -p -- ${quote(prepDir)}`,
    ...(options.keep ? [] : [`rm -rf -- "$stage"`]),
    `mkdir -p -- "$stage"`,
    // The lock lives on the folder's open file, which every process below inherits: it is
    // released when the last of them ends, however the script itself ends.
    `exec 9<"$stage"`,
    `if command -v flock >/dev/null 2>&1; then flock 9; fi`,
    // A tree's files may come over more channels as well (receiveMoreCommand): they begin
    // once this line says that the folder is this run's.
    ...(options.keep ? [`echo ${LOCKED_LINE}`, ...TREE_FETCH_SETUP] : []),
    // tar's listing goes to one check and its stderr (and the decompressor's) through the
    // other; what they find comes out on fd 3. The status is the decompressor's or tar's.
    `rc=0`,
    `case "$how" in`,
    `  fetch) ${checkedExtraction('fetched | decode')} ;;`,
    `  fetch-tree) found=; ( tree_fetched ) || rc=$? ;;`,
    `  *) ${checkedExtraction('decode')} ;;`,
    `esac`,
    ...FETCH_END,
    `if [ -n "$found" ]; then refuse "$found"; fi`,
    `[ "$rc" = 0 ] || exit "$rc"`,
    `cd -- "$stage"`,
    // A root that is a symbolic link passes here, for the tree check to name it.
    ...kind.roots.map((r) => `[ -d ${quote(r)} ] || ${missing(r)}`),
    // Names go to the runner's log: whatever is not printable becomes '?'.
    `found=$(${treeCheck(kind, options.keep === true)} | LC_ALL=C tr -c '[:print:]\\0' '?' | tr '\\0' '\\n' | awk ${quote(FIRST_FEW)})`,
    `if [ -n "$found" ]; then refuse "$found"; fi`,
    ...[...kind.roots, ...required].map((d) => `${isDir(d)} || ${missing(d)}`),
    FETCH_REPORT,
    `find ${kind.roots.map(quote).join(' ')} -type f | wc -l`,
  ]);
}

/**
 * More of a tree's files, over a channel of their own, into the staging folder that the
 * main extraction (`extractCommand` with `keep`) holds: the runner gives its go line only
 * once that one has printed `LOCKED_LINE`, and ends the main tar only after every such
 * channel has exited, so that the main one's checks of the folder see all that came. This
 * one refuses what the listing shows as it goes (the same marks and exit status); the check
 * of what tar made, and the count, are the main one's.
 */
export function receiveMoreCommand(stage: string): string {
  return bashScript([
    WIDE_PIPES,
    `IFS=' ' read -r word name || exit 0`,
    `[ "$word" = go ] || exit 0`,
    `stage=${quote(stage)}`,
    `[ -d "$stage" ] && [ ! -L "$stage" ] || { echo "$stage is not a folder" >&2; exit 2; }`,
    REFUSE,
    `rc=0`,
    checkedExtraction(PLAIN_TAR_X),
    `if [ -n "$found" ]; then refuse "$found"; fi`,
    `exit "$rc"`,
  ]);
}
