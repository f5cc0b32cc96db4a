/**
 * A goloop node in a home of its own: its start script, its chain's state and blocks, and the
 * copies of the cached node that each scenario runs on.
 */
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { goloopBin } from '../../bed/paths.js';
import { freePort } from '../../bed/ports.js';
import { exec, logger, q, secondsSince, sleep } from '../kit.js';

const log = logger('goloop');

/** What a cached node dir needs to be started again (node.json in its home). */
export interface NodeMeta {
  cid: string;
  nid: string;
  channel: string;
  keyPassword: string;
  /** Height when the cache was made (after the ballast check). */
  height: number;
}

/**
 * A home: `keystore.json`, `data/` (goloop's node dir: cli.sock, `{cid}/`), `node.json`, and
 * `start.sh`, which starts goloop server there detached (PID in goloop.pid), waits for cli.sock,
 * starts the chain unless it is started, and returns.
 */
/** The node.json of a home. */
export function readMeta(dir: string): NodeMeta {
  return JSON.parse(readFileSync(join(dir, 'node.json'), 'utf8')) as NodeMeta;
}

export interface Home {
  dir: string;
  nodeDir: string;
  meta: NodeMeta;
  rpcPort: number;
  rpcUrl: string;
  startScript: string;
}

export async function prepareHome(dir: string, meta: NodeMeta): Promise<Home> {
  const rpcPort = await freePort();
  let p2pPort = await freePort();
  while (p2pPort === rpcPort) p2pPort = await freePort();
  const nodeDir = join(dir, 'data');
  const startScript = join(dir, 'start.sh');
  writeFileSync(join(dir, 'node.json'), JSON.stringify(meta, null, 2) + '\n');
  writeFileSync(
    startScript,
    `#!/bin/bash
# Starts goloop server on ${nodeDir} (detached) and its chain; returns once the chain is started.
set -euo pipefail
home=${q(dir)}
sock="$home/data/cli.sock"
if [ -s "$home/goloop.pid" ] && kill -0 "$(cat "$home/goloop.pid")" 2>/dev/null; then
  echo "goloop already runs in $home" >&2; exit 1
fi
mkdir -p "$home/data"
rm -f "$sock"
env -i PATH="$PATH" HOME="$home" setsid ${q(goloopBin())} server start --node_dir "$home/data" \\
  --node_sock "$sock" --rpc_addr 127.0.0.1:${rpcPort} \\
  --p2p 127.0.0.1:${p2pPort} --p2p_listen 127.0.0.1:${p2pPort} \\
  --key_store "$home/keystore.json" --key_password ${q(meta.keyPassword)} \\
  --console_level warn --log_level info --log_writer_filename "$home/goloop.log" \\
  --log_writer_maxsize 20 --log_writer_maxbackups 1 >>"$home/server.out" 2>&1 </dev/null &
pid=$!
echo "$pid" > "$home/goloop.pid"
for _ in $(seq 1200); do
  curl -sf --unix-socket "$sock" http://localhost/chain >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "goloop exited:" >&2; tail -n 50 "$home/server.out" >&2; exit 1; }
  sleep 0.05
done
state=$(curl -sf --unix-socket "$sock" http://localhost/chain/0x${meta.cid} | jq -r .state)
if [ "$state" != started ]; then
  curl -sf -X POST --unix-socket "$sock" http://localhost/chain/0x${meta.cid}/start >/dev/null
fi
`,
  );
  chmodSync(startScript, 0o755);
  return {
    dir,
    nodeDir,
    meta,
    rpcPort,
    rpcUrl: `http://127.0.0.1:${rpcPort}`,
    startScript,
  };
}

interface ChainInfo {
  cid: string;
  state: string;
  height: number;
}

export async function chainInfo(home: Home): Promise<ChainInfo> {
  const r = await fetch(`${home.rpcUrl}/admin/chain`, { signal: AbortSignal.timeout(10_000) });
  if (!r.ok) throw new Error(`GET ${home.rpcUrl}/admin/chain: HTTP ${r.status}`);
  const list = (await r.json()) as ChainInfo[];
  const c = list.find((x) => x.cid === `0x${home.meta.cid}`);
  if (!c) throw new Error(`chain 0x${home.meta.cid} not in ${JSON.stringify(list)}`);
  return c;
}

/** Resolves with the height once the chain is started and above `h`. */
export async function waitAbove(home: Home, h: number, timeoutMs = 120_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  let last: ChainInfo | string | undefined;
  for (;;) {
    try {
      last = await chainInfo(home);
      if (last.state === 'started' && last.height > h) return last.height;
    } catch (error) {
      last = String(error);
    }
    if (Date.now() > deadline)
      throw new Error(
        `goloop in ${home.dir}: no block above ${h} within ${timeoutMs} ms (last: ${JSON.stringify(last)})\n${serverLog(home)}`,
      );
    await sleep(20);
  }
}

function serverLog(home: Home): string {
  const tail = (f: string): string =>
    existsSync(f) ? readFileSync(f, 'utf8').split('\n').slice(-30).join('\n') : '';
  return `${tail(join(home.dir, 'server.out'))}\n${tail(join(home.dir, 'goloop.log'))}`;
}

export async function startHome(home: Home): Promise<void> {
  await exec('bash', [home.startScript], { maxBuffer: 1 << 22 });
}

/** Whether the process runs (a zombie that nobody has reaped yet does not). */
export function alive(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

/** Stops the goloop server that start.sh started in this home, by the PID it wrote. */
export async function stopHome(home: Home): Promise<void> {
  const file = join(home.dir, 'goloop.pid');
  if (!existsSync(file)) return;
  const pid = Number(readFileSync(file, 'utf8').trim());
  rmSync(file, { force: true });
  if (!(pid > 0) || !alive(pid)) return;
  // Only that server: a PID taken over by another process since is left alone.
  const cmdline = (() => {
    try {
      return readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      return '';
    }
  })();
  if (!cmdline.includes(`--node_dir\0${home.nodeDir}\0`)) return;
  process.kill(pid, 'SIGTERM');
  // goloop closes its chains on SIGTERM; that takes a second or two.
  const deadline = Date.now() + 30_000;
  while (alive(pid)) {
    if (Date.now() > deadline) {
      process.kill(pid, 'SIGKILL');
      break;
    }
    await sleep(50);
  }
  while (alive(pid)) await sleep(50);
}

export async function removeHome(home: Home, keep: boolean): Promise<void> {
  await stopHome(home);
  if (!keep) rmSync(home.dir, { recursive: true, force: true });
}

/** A copy of the cached node in `dir`, with ports of its own, started. */
export async function startCopy(cache: string, dir: string): Promise<Home> {
  const t = Date.now();
  await exec('cp', ['-a', '--reflink=auto', cache, dir]);
  rmSync(join(dir, '.bench-complete'), { force: true });
  const meta = readMeta(cache);
  const home = await prepareHome(dir, meta);
  log(`copied the node to ${dir} in ${secondsSince(t)} s`);
  try {
    await startHome(home);
    await waitAbove(home, meta.height + 5);
  } catch (error) {
    await removeHome(home, true);
    throw error;
  }
  return home;
}

/** A fresh home for a restore: the operator's keystore, start.sh and an empty node dir. */
export async function freshHome(cache: string, dir: string): Promise<Home> {
  mkdirSync(join(dir, 'data'), { recursive: true });
  await exec('cp', ['-a', join(cache, 'keystore.json'), join(dir, 'keystore.json')]);
  const meta = readMeta(cache);
  return prepareHome(dir, meta);
}

// ---- the node's view of a stop ---------------------------------------------------------------

export interface Gap {
  /** time_stamp (ms) of the last block before the largest gap, and of the first after it. */
  lastBeforeMs: number;
  firstAfterMs: number;
  lastBeforeHeight: number;
  seconds: number;
  blocks: number;
}

/** A JSON-RPC call to the node's channel (`/api/v3/{channel}`); its error is thrown. */
export async function jsonRpc<T>(home: Home, method: string, params: unknown): Promise<T> {
  const r = await fetch(`${home.rpcUrl}/api/v3/${home.meta.channel}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }),
    signal: AbortSignal.timeout(10_000),
  });
  const j = (await r.json()) as { result?: T; error?: unknown };
  if (j.result === undefined) throw new Error(`${method}: ${JSON.stringify(j.error ?? j)}`);
  return j.result;
}

async function blockTimeUs(home: Home, h: number): Promise<number> {
  const b = await jsonRpc<{ time_stamp: number | string }>(home, 'icx_getBlockByHeight', {
    height: '0x' + h.toString(16),
  });
  return Number(b.time_stamp);
}

/** The largest gap between consecutive blocks' time stamps in heights [from, to]. */
export async function largestGap(
  home: Home,
  from: number,
  to: number,
  /** Only a gap that begins at or after this time (ms since the epoch) counts. */
  afterMs = 0,
): Promise<Gap> {
  const times = new Array<number>(to - from + 1);
  let next = from;
  const worker = async (): Promise<void> => {
    while (next <= to) {
      const h = next++;
      times[h - from] = await blockTimeUs(home, h);
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  let best: Gap | undefined;
  for (let i = 1; i < times.length; i++) {
    const a = times[i - 1] as number;
    const b = times[i] as number;
    if (a / 1000 < afterMs) continue;
    if (!best || b - a > (best.firstAfterMs - best.lastBeforeMs) * 1000)
      best = {
        lastBeforeMs: a / 1000,
        firstAfterMs: b / 1000,
        lastBeforeHeight: from + i - 1,
        seconds: (b - a) / 1e6,
        blocks: times.length,
      };
  }
  if (!best) throw new Error(`no blocks between ${from} and ${to}`);
  return best;
}

/**
 * The largest gap from height `h0` on (and from `afterMs` on, when given), read once the chain
 * is two blocks past where it is now.
 */
export async function gapSince(home: Home, h0: number, afterMs = 0): Promise<Gap> {
  const h1 = await waitAbove(home, (await chainInfo(home)).height + 2);
  return largestGap(home, h0, h1, afterMs);
}
