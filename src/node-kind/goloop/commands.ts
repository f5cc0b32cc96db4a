/**
 * The commands that drive an ICON 2 (goloop) node on its host, built as strings from quoted
 * values. The chain is controlled through the node's own control socket (`{node dir}/cli.sock`,
 * what `goloop chain stop|backup|start` speaks to): the container keeps running and its peers
 * stay connected while the chain's database is closed for the freeze.
 */
import { bashScript, quote } from '../../shell.js';
import { heldLines } from '../watchdog.js';

/**
 * Shell functions over the control socket, for chain `cid` (`0x…`): `post ACTION [BODY]`,
 * `state` (the chain's state as the socket reports it), the tests `is_stopped`, `is_manual`,
 * `is_started` and `is_listed`, and `wait_for SECONDS WHAT TEST...`, which runs TEST until it
 * passes: every 20 ms for the first 2 s (a stop or a start of the chain takes tens of
 * milliseconds, and the node's downtime is made of these waits), then every 0.2 s. A stop is
 * answered before the chain has stopped ('stopping'), and a start or a backup sent then is
 * refused: hence the waits.
 */
export function socketFunctions(sock: string, cid: string): string[] {
  const url = (path: string) => `"http://localhost/chain/$cid${path}"`;
  const isIn = (name: string, states: string) =>
    `is_${name}() { case "$(state || true)" in ${states}) ;; *) return 1 ;; esac; }`;
  return [
    `sock=${quote(sock)}`,
    `cid=${quote(cid)}`,
    `post() { curl -fsS --max-time 120 --unix-socket "$sock" -X POST -H 'Content-Type: application/json' -d "\${2:-}" ${url('/$1')} >/dev/null; }`,
    `state() { curl -fsS --max-time 10 --unix-socket "$sock" ${url('')} | sed -n 's/.*"state" *: *"\\([^"]*\\)".*/\\1/p'; }`,
    isIn('stopped', `stopped|'backup done'|failed`),
    isIn('manual', `'backup manual'`),
    isIn('started', 'started'),
    // On its way to started: someone else's start (the node's own entrypoint) was accepted.
    isIn('starting', 'starting|started'),
    // Not between two states: a start or a stop sent now is not refused for the state.
    `is_settled() { case "$(state || true)" in ''|created|initializing|*starting|*stopping) return 1 ;; esac; }`,
    `is_listed() { [ -n "$(state || true)" ]; }`,
    // goloop answers on its socket (any HTTP answer will do): a socket file that a goloop which
    // died left behind refuses the connection.
    `answers() { curl -sS -o /dev/null --max-time 10 --unix-socket "$sock" http://localhost/chain 2>/dev/null; }`,
    // SECONDS counts whole seconds: one more makes the wait at least its time.
    `wait_for() { secs=$1; end=$((SECONDS + secs + 1)); what=$2; shift 2; i=0; until "$@"; do i=$((i + 1)); ` +
      `if [ "$SECONDS" -ge "$end" ]; then echo "$what within $secs s (the chain is '$(state || true)')" >&2; return 1; fi; ` +
      `if [ "$i" -le 100 ]; then sleep 0.02; else sleep 0.2; fi; done; }`,
  ];
}

/**
 * Stops the chain and releases its database (a manual backup, which only closes it), so that
 * its files are still: the freeze's stop. The goloop process and its peers stay up.
 */
export function chainReleaseCommand(sock: string, cid: string): string {
  return bashScript([
    ...socketFunctions(sock, cid),
    `case "$(state)" in started|starting) post stop ;; esac`,
    `wait_for 300 'the chain did not stop' is_stopped`,
    `post backup '{"manual":true}'`,
    `wait_for 300 'the database was not released' is_manual`,
  ]);
}

/**
 * Starts the chain again: a chain whose database was released is stopped first (which
 * reopens it), then started. Where nothing answers on the socket (goloop itself is down, as on
 * a fresh host, or died and left its socket file behind, which goloop replaces when it
 * starts), `fallback` (the operator's start, e.g. Compose up) runs first, and the chain is
 * started once the socket answers.
 *
 * The node may start the chain on its own meanwhile: icon2-node's entrypoint starts its
 * chains once goloop is up, and the chain is then 'starting' when this command looks, or
 * becomes so between its look and its start (which goloop refuses then). A chain on its way
 * is waited for, not stopped; a start refused because the chain is already starting is
 * taken as the start.
 */
export function chainStartCommand(sock: string, cid: string, fallback: string): string {
  return bashScript([
    ...socketFunctions(sock, cid),
    `if ! answers; then`,
    `  "\${SHELL:-/bin/sh}" -c ${quote(fallback)} </dev/null`,
    `  wait_for 300 "goloop did not answer on $sock after the start command" answers`,
    `fi`,
    // The socket may take a moment to list the chains after it appears.
    `wait_for 60 "the chain $cid is not on the node" is_listed`,
    `wait_for 300 'the chain did not settle' is_settled`,
    `case "$(state)" in`,
    `  started) exit 0 ;;`,
    `  stopped|failed|finished|'backup done') ;;`,
    `  *) post stop; wait_for 300 'the chain did not stop' is_stopped ;;`,
    `esac`,
    `if ! refused=$(post start 2>&1) && ! is_starting; then`,
    `  echo "the chain refused to start (it is '$(state || true)'): $refused" >&2`,
    `  exit 1`,
    `fi`,
    `wait_for 300 'the chain did not start' is_started`,
  ]);
}

/**
 * What a goloop backup needs to know about the host, read only: the node dir, its socket,
 * the chain folder and its database, the tools. Prints `key=value` lines.
 */
export function goloopProbeCommand(nodeDir: string, folder: string): string {
  return bashScript([
    `node=${quote(nodeDir)}`,
    `if [ ! -d "$node" ]; then echo "nodedir=missing"; exit 0; fi`,
    `echo "nodedir=present"`,
    `[ -S "$node/cli.sock" ] && echo "socket=present" || true`,
    `[ -f "$node"/${quote(folder)}/config.json ] && echo "chainconfig=present" || true`,
    `[ -d "$node"/${quote(folder)}/db ] && echo "db=present" || true`,
    `for t in tar pigz gzip zstd curl base64 setsid flock; do command -v "$t" >/dev/null 2>&1 && echo "tool=$t"; done; true`,
    `echo "dev_data=$(stat -c %d "$node")"`,
    `echo "dev_parent=$(stat -c %d "$(dirname -- "$node")")"`,
    `echo "free_parent=$(df -P -B1 "$(dirname -- "$node")" | awk 'NR==2 {print $4}')"`,
    `echo "data_bytes=$(cd -- "$node" && find ${quote(folder)} -type f -printf '%s\\n' 2>/dev/null | awk '{s+=$1} END {printf "%d", s}' || true)"`,
    `parent=$(dirname -- "$node")`,
    `find "$parent" "$node" -maxdepth 1 -type d -name '.prep-snapshot-staging-*' -mmin +1440 -print 2>/dev/null | while IFS= read -r d; do`,
    `  if command -v flock >/dev/null 2>&1 && ! flock -n -- "$d" true 2>/dev/null; then continue; fi`,
    `  printf 'stale=%s\\n' "$d"`,
    `done; true`,
  ]);
}

/** Asks the node's JSON-RPC for the block at `height`, from the host. */
export function blockCommand(rpcUrl: string, height: number): string {
  const body = JSON.stringify({
    jsonrpc: '2.0',
    id: 1,
    method: 'icx_getBlockByHeight',
    params: { height: `0x${height.toString(16)}` },
  });
  return bashScript([
    `curl -fsS --max-time 10 -H 'Content-Type: application/json' -d ${quote(body)} ${quote(rpcUrl)}`,
  ]);
}

/** The line that lets a waiting `chainSwapCommand` go ahead. */
export const CHAIN_SWAP_LINE = 'swap\n';

/**
 * Moves the staged chain folder into the node dir; the chain's previous folder goes into
 * `previous` (a folder beside the node dir: goloop loads every folder of its node dir that
 * holds a config.json as a chain, and two of one cid would stop it from starting). Prints
 * `swapped`. Waits for `CHAIN_SWAP_LINE`, as the loopchain swap does.
 */
export function chainSwapCommand(
  nodeDir: string,
  folder: string,
  stage: string,
  previous: string,
  watchdogFlag: string,
): string {
  const current = `${nodeDir}/${folder}`;
  return bashScript([
    `IFS= read -r word || exit 0`,
    `[ "$word" = swap ] || exit 0`,
    ...heldLines(watchdogFlag),
    `mkdir -p -- ${quote(nodeDir)}`,
    `if [ -e ${quote(current)} ]; then mkdir -p -- ${quote(previous)}; mv -- ${quote(current)} ${quote(`${previous}/${folder}`)}; fi`,
    `mv -- ${quote(`${stage}/${folder}`)} ${quote(current)}`,
    `rmdir -- ${quote(stage)} 2>/dev/null || rm -rf -- ${quote(stage)}`,
    `echo swapped`,
  ]);
}

/** Puts the chain's previous folder back; the failed one is kept beside it, in `failed`. */
export function chainRollbackCommand(
  nodeDir: string,
  folder: string,
  previous: string,
  failed: string,
  watchdogFlag: string,
): string {
  const current = `${nodeDir}/${folder}`;
  return bashScript([
    ...heldLines(watchdogFlag),
    `[ -e ${quote(`${previous}/${folder}`)} ] || { echo 'no previous chain folder to roll back to' >&2; exit 3; }`,
    `if [ -e ${quote(current)} ]; then mkdir -p -- ${quote(failed)}; mv -- ${quote(current)} ${quote(`${failed}/${folder}`)}; fi`,
    `mv -- ${quote(`${previous}/${folder}`)} ${quote(current)}`,
    `rmdir -- ${quote(previous)} 2>/dev/null || true`,
  ]);
}
