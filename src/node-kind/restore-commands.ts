/**
 * The commands of a restore on the node host, around its staging folder: what the host has
 * before anything changes, the swap into place and the rollback. Pure functions of their
 * arguments, as in remote.ts.
 */
import { bashScript, quote } from '../shell.js';
import type { NodeKind } from './loopchain/layout.js';
import { dirname } from './remote.js';
import { heldLines } from './watchdog.js';

/** What a restore's staging folder is named, beside the data dir: `{RESTORE_STAGE_PREFIX}{id}`. */
export const RESTORE_STAGE_PREFIX = '.prep-snapshot-restore-';

/**
 * What the restore needs to know about the host, read only: free space where the staging
 * folder will be (the nearest existing folder above the data dir on a fresh host), whether
 * the data dir exists, and the tools. With `stagesIn`, the staging folders of restores in that
 * folder (`stage=BUSY BYTES NAME`: BUSY 1 while an extraction into it holds its lock, BYTES
 * what it takes on the disk); with `has`, `has=NAME` for each of those paths that exists.
 */
export function restoreProbeCommand(
  dataDir: string,
  more: { stagesIn?: string; has?: Record<string, string> } = {},
): string {
  const has = Object.entries(more.has ?? {});
  for (const [name] of has) if (!/^[a-z]+$/.test(name)) throw new Error(`bad probe name ${name}`);
  return bashScript([
    `d=${quote(dirname(dataDir))}`,
    `while [ ! -d "$d" ]; do d=$(dirname -- "$d"); done`,
    `echo "free_parent=$(df -P -B1 -- "$d" | awk 'NR==2 {print $4}')"`,
    `[ -e ${quote(dataDir)} ] && echo "datadir=present" || echo "datadir=missing"`,
    `for t in tar igzip pigz gzip zstd curl wget sha256sum openssl mkfifo; do command -v "$t" >/dev/null 2>&1 && echo "tool=$t"; done; true`,
    ...has.map(([name, path]) => `if [ -e ${quote(path)} ]; then echo has=${name}; fi`),
    ...(more.stagesIn === undefined
      ? []
      : [
          `(cd -- ${quote(more.stagesIn)} 2>/dev/null || exit 0`,
          `for s in ${RESTORE_STAGE_PREFIX}*; do`,
          `  if [ ! -d "$s" ] || [ -L "$s" ]; then continue; fi`,
          `  busy=0`,
          `  if command -v flock >/dev/null 2>&1 && ! flock -n -- "$s" true 2>/dev/null; then busy=1; fi`,
          `  printf 'stage=%s %s %s\\n' "$busy" "$(du -s -B1 -- "$s" 2>/dev/null | cut -f 1)" "$s"`,
          `done)`,
        ]),
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
