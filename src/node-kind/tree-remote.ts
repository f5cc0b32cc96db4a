/**
 * The commands on the host for tree snapshots (see tree/layout.ts): the listing of a snapshot's
 * files with what proves them unchanged, their sha256, the tar of the files a backup sends,
 * and the staging folder of a restore, which a later run resumes.
 */
import { HostError } from '../errors.js';
import { bashScript, quote, WAIT_FOR_GO } from '../shell.js';
import type { Tree } from './host.js';
import { CHANGED_MARK, pruned } from './archive-remote.js';

/** One entry of a snapshot on the host, as `listTreeCommand` prints it. */
export interface ListedEntry {
  type: 'file' | 'dir' | 'other';
  /** Relative to the folder listed, as on the host. */
  path: string;
  size: number;
  ino: number;
  /** Seconds since the epoch with the nanoseconds, as `find -printf %T@` prints it. */
  mtime: string;
  mode: number;
}

export interface Listing {
  /** The device number of the folder listed (`stat -c %d`). */
  device: string;
  /** The host's clock as the listing began, in whole seconds since the epoch. */
  now: number;
  entries: ListedEntry[];
}

/**
 * Every entry under the kind's roots in `dir`, NUL-terminated: type, size, inode, mtime, mode
 * and path, less `leaveOut` (paths under the roots that a snapshot leaves out). A shared lock
 * on the folder while it is read, as for an archive. `live`: the node runs in `dir`, and an
 * entry that it removes while find reads its folder is no error.
 */
export function listTreeCommand(
  kind: Tree,
  dir: string,
  options: { live?: boolean; leaveOut?: string[] } = {},
): string {
  const find =
    `find ${kind.roots.map(quote).join(' ')} ${pruned(options.leaveOut ?? [])} ` +
    `-printf '%y %s %i %T@ %m %p\\0'`;
  return bashScript([
    `cd -- ${quote(dir)}`,
    `exec 9<.`,
    `if command -v flock >/dev/null 2>&1; then flock -s 9; fi`,
    `printf 'device=%s\\0now=%s\\0' "$(stat -c %d .)" "$(date +%s)"`,
    options.live ? `${find} 2>/dev/null || true` : find,
  ]);
}

export function parseListing(stdout: string): Listing {
  const records = stdout.split('\0').filter((r) => r.length > 0);
  const device = /^device=(\d+)$/.exec(records[0] ?? '')?.[1];
  const now = /^now=(\d+)$/.exec(records[1] ?? '')?.[1];
  if (device === undefined || now === undefined)
    throw new HostError(`Could not list the snapshot's files on the host.`);
  const entries: ListedEntry[] = [];
  for (const r of records.slice(2)) {
    const m = /^(\S) (\d+) (\d+) (\d+(?:\.\d+)?) ([0-7]+) ([\s\S]+)$/.exec(r);
    if (!m) throw new HostError(`Could not read the host's listing line '${r.slice(0, 200)}'.`);
    entries.push({
      type: m[1] === 'f' ? 'file' : m[1] === 'd' ? 'dir' : 'other',
      size: Number(m[2]),
      ino: Number(m[3]),
      mtime: m[4] as string,
      mode: parseInt(m[5] as string, 8),
      path: m[6] as string,
    });
  }
  return { device, now: Number(now), entries };
}

/** `sha256sum` of the NUL-separated paths on stdin (relative to `dir`), on every core. */
export function hashFilesCommand(dir: string): string {
  return bashScript([
    `cd -- ${quote(dir)}`,
    `n=$(nproc 2>/dev/null || echo 2)`,
    `xargs -0 -r -n 16 -P "$n" sha256sum --`,
  ]);
}

/** The output of `hashFilesCommand`: path → sha256. */
export function parseHashes(stdout: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of stdout.split('\n')) {
    if (!line) continue;
    // sha256sum escapes a name with a backslash or a newline, and starts its line with '\'.
    const m = /^(\\?)([0-9a-f]{64}) [ *]([\s\S]+)$/.exec(line);
    if (!m || m[1]) throw new HostError(`Could not read sha256sum's line '${line.slice(0, 200)}'.`);
    out.set(m[3] as string, m[2] as string);
  }
  return out;
}

/**
 * The last 10,240 bytes of each NUL-separated path on stdin after `GO_LINE` (the whole file when
 * smaller), one after the other with nothing between: the runner cuts them apart by the sizes
 * it listed. Opened ahead, it waits for the line: `dir` may not exist before.
 */
export function tailsCommand(dir: string): string {
  return bashScript([...WAIT_FOR_GO, `cd -- ${quote(dir)}`, `xargs -0 -r tail -q -c 10240 --`]);
}

/**
 * An uncompressed tar of the NUL-separated paths on stdin after `GO_LINE` (relative to `dir`),
 * in that order, on stdout; files only, each under its name on the host. tar's "file changed
 * as we read it" (exit 1) is reported as `CHANGED_MARK` on stderr, not as a failure: in a
 * staging folder of hard links the node removing its own link of a table it compacted away
 * moves the inode's ctime, though no byte changed; the runner proves that (tree/send.ts).
 * `live`: the node runs in `dir`, and a file it removed before tar opened it is left out of
 * the tar (a warning on stderr), not a failure.
 */
export function sendFilesCommand(dir: string, live = false): string {
  return bashScript([
    ...WAIT_FOR_GO,
    `cd -- ${quote(dir)}`,
    `exec 9<.`,
    `if command -v flock >/dev/null 2>&1; then flock -s 9; fi`,
    `rc=0`,
    `LC_ALL=C tar --create --file=- --blocking-factor=2048 ${live ? '--ignore-failed-read ' : ''}--null --no-recursion --files-from=- || rc=$?`,
    `case "$rc" in 0) ;; 1) echo ${CHANGED_MARK} >&2 ;; *) exit "$rc" ;; esac`,
  ]);
}

/** Regular files under `stage`, NUL-terminated `SIZE PATH`; nothing when it does not exist. */
export function stagedFilesCommand(stage: string): string {
  return bashScript([
    `[ -d ${quote(stage)} ] || exit 0`,
    `cd -- ${quote(stage)}`,
    `find . -type f -printf '%s %P\\0'`,
  ]);
}

export function parseStaged(stdout: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const r of stdout.split('\0')) {
    const m = /^(\d+) ([\s\S]+)$/.exec(r);
    if (m) out.set(m[2] as string, Number(m[1]));
  }
  return out;
}

/**
 * The table files (`*.ldb`, `*.sst`) under `roots` of `dir`, NUL-terminated `SIZE PATH` (read
 * with parseStaged); nothing for a root, or a `dir`, that is not there.
 */
export function tableFilesCommand(dir: string, roots: string[]): string {
  return bashScript([
    `cd -- ${quote(dir)} 2>/dev/null || exit 0`,
    `for r in ${roots.map(quote).join(' ')}; do`,
    // A table that compaction removes while find reads its folder is no error.
    `  [ ! -d "$r" ] || find "$r" -type f \\( -name '*.ldb' -o -name '*.sst' \\) -printf '%s %p\\0' 2>/dev/null || true`,
    `done`,
    `true`,
  ]);
}

/**
 * Hard-links files of `dir` into folders of `stage`, each under its own name. Stdin holds
 * NUL-terminated records: `D` and a folder of `stage`, then `F` and a path under `dir` for each
 * file to link into that folder (see linkInput). A file gone meanwhile, or one that the folder
 * holds already, is passed over.
 */
export function linkIntoStageCommand(dir: string, stage: string): string {
  return bashScript([
    `cd -- ${quote(dir)} || exit 0`,
    `files=(); target=`,
    `flush() {`,
    `  [ \${#files[@]} -gt 0 ] || return 0`,
    `  mkdir -p -- "$target" && ln -t "$target" -- "\${files[@]}" 2>/dev/null || true`,
    `  files=()`,
    `}`,
    `while IFS= read -r -d '' what && IFS= read -r -d '' value; do`,
    `  if [ "$what" = D ]; then flush; target=${quote(stage)}/$value`,
    `  else files+=("$value"); [ \${#files[@]} -lt 1000 ] || flush; fi`,
    `done`,
    `flush`,
    `true`,
  ]);
}

/** The stdin of linkIntoStageCommand: each file of `dir` (`from`) to link as `to` in the stage. */
export function linkInput(links: Array<{ from: string; to: string }>): string {
  const byFolder = new Map<string, string[]>();
  for (const l of links) {
    const cut = l.to.lastIndexOf('/');
    const folder = cut < 0 ? '.' : l.to.slice(0, cut);
    if (l.from.slice(l.from.lastIndexOf('/') + 1) !== l.to.slice(cut + 1)) {
      throw new Error(`${l.from} cannot be linked as ${l.to}: the names differ`);
    }
    const files = byFolder.get(folder);
    if (files) files.push(l.from);
    else byFolder.set(folder, [l.from]);
  }
  let out = '';
  for (const [folder, files] of byFolder) {
    out += `D\0${folder}\0`;
    for (const f of files) out += `F\0${f}\0`;
  }
  return out;
}

/**
 * Appends stdin to `path` in `stage` from byte `offset` (what an earlier run wrote of it is
 * kept), once the go line arrives; then prints the file's sha256.
 */
export function appendCommand(stage: string, path: string, offset: number): string {
  return bashScript([
    `IFS= read -r word || exit 0`,
    `[ "$word" = go ] || exit 0`,
    `cd -- ${quote(stage)}`,
    `truncate -s ${offset} -- ${quote(path)}`,
    `cat >> ${quote(path)}`,
    `sha256sum -- ${quote(path)} | cut -d ' ' -f 1`,
  ]);
}

/** Removes the named files (NUL-separated on stdin) from `stage`. */
export function removeStagedCommand(stage: string): string {
  return bashScript([`cd -- ${quote(stage)}`, `xargs -0 -r rm -f --`]);
}
