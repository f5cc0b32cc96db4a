/**
 * The watchdog on the node host, and the run's hold on a stopped node: the commands that arm
 * and disarm it, and the script lines a step runs under the hold. Built as strings from quoted
 * values, as every command on the host is (see remote.ts).
 */
import { bashScript, OWN_MARK, quote } from '../shell.js';

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
