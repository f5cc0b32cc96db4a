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
