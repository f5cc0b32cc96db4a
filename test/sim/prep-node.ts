/**
 * prep-node: a simulated ICON 1 (loopchain) P-Rep node that keeps REAL LevelDB databases.
 *
 * Usage (run with `node --import tsx test/sim/prep-node.ts ...` or `node_modules/.bin/tsx ...`):
 *
 *   init     --home H --ip 10.1.2.3 [--blocks 100] [--value-bytes 2048]
 *   start    --home H --port P [--rate 20] [--value-bytes 2048] [--write-buffer-kb 256]
 *            [--timeout 120] [--verify auto|full|tail|none] [--data-dir H/data/loopchain]
 *   stop     --home H [--mode graceful|kill-mid-compaction] [--timeout 120]
 *   check    --home H [--data DIR]          (DIR defaults to H/data/loopchain)
 *   status   --home H
 *   generate --home H --ip IP --gib 2 [--block-bytes 32768]
 *   (daemon  --home H --port P ...          internal: the node process itself)
 *
 * `--data-dir` (it must be H/data/loopchain) is passed on to the daemon's command line, so
 * that the node's process names its data dir as a real loopchain node's does: a process
 * check with the default pattern `icon_service|loopchain` then finds it (a daemon started
 * without it matches nothing of that pattern).
 *
 * Layout under H (H plays /app/prep):
 *   H/data/loopchain/.score_data/db/{icon_dex,iiss,meta,rc}   LevelDB
 *   H/data/loopchain/.score_data/score                        LevelDB
 *   H/data/loopchain/.storage/db_{IP}:7100_icon_dex           LevelDB, the block DB
 *   H/node.pid (just the pid), H/node.port, H/node.log (daemon stdout/stderr),
 *   H/node-events.log (one JSON object per line, see below).
 *
 * Block DB keys: `block:` + 12-digit height -> `{"height","prevHash","hash","time","txs"}`
 * with hash = sha256(prevHash + height + JSON(txs)); `last_block` -> height; `tx:...`
 * index/receipt entries (ignored by the chain check).
 *
 * Events (`H/node-events.log`), each `{"ms":<epoch ms>,"t":"<ISO>","event":"...",...}`:
 *   start-requested {port}                       by `start`
 *   started   {pid, port, block_height, first_block_ms}   daemon, once it serves HTTP and
 *                                                 has written its first new block
 *   stop-requested {mode, pid}                   by `stop`
 *   stopped   {mode, pid, block_height, last_block_ms}    daemon, the moment it has stopped
 *                                                 writing blocks (graceful: logged after the
 *                                                 DBs are closed; last_block_ms is honest)
 *   compacting {pid, burst_bytes}                daemon, kill mode: compaction begins
 *   killed    {mode, pid, orphan_tables, ...}     by `stop`, after SIGKILL
 *   refused   {reason}                           daemon/start: DB missing or corrupt
 *   start-conflict / crashed                     rare
 * Node downtime = started.first_block_ms - stopped.last_block_ms (see downtimes() in chain.ts).
 *
 * Stop mode, first that is set wins:
 *   1. `stop --mode graceful|kill-mid-compaction`
 *   2. env PREP_SIM_STOP_MODE          (of the `stop` process)
 *   3. file H/stop-mode (its trimmed content; handy over SSH, where env does not travel)
 *   4. graceful
 * kill-mid-compaction: SIGUSR2 to the daemon, which stops writing blocks, logs `stopped`,
 * writes a burst of PREP_SIM_BURST_MB (default 24) MiB of random-keyed entries and runs
 * compactRange() on every DB; `stop` watches the DB directories until a table file that
 * the MANIFEST does not list exists, then SIGKILLs the daemon (like `docker-compose down`
 * killing a container mid-compaction) and logs `killed` with the orphan tables it left.
 *
 * `start` verifies the block chain inside the daemon before serving; a corrupt or missing
 * DB gives event `refused` and exit 1. `--verify` (or env PREP_SIM_VERIFY): `full` = the
 * whole chain from genesis (reads the whole block DB: ~15 s for a 2 GiB generated node),
 * `tail` = last_block consistent, genesis present, last 1000 blocks hashed and linked,
 * `none` = last_block and its block only; `auto` (default) = full when the block DB is
 * <= 256 MiB on disk, else tail, so that a big benchmark node starts in about a second.
 * `check` always verifies the whole chain and reads every entry of every DB.
 * Exit codes: 0 ok, 1 failure, 2 usage.
 */
import { spawn } from 'node:child_process';
import {
  appendFileSync,
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, get as httpGet, type Server } from 'node:http';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClassicLevel } from 'classic-level';
import { parseManifest, tableFileNumber } from '../../src/node-kind/leveldb-manifest.js';
import {
  BLOCK_KEY_END,
  BLOCK_KEY_PREFIX,
  ChainError,
  ChainVerifier,
  LAST_BLOCK_KEY,
  blockDirName,
  blockKey,
  dbLayout,
  decodeBlock,
  encodeBlock,
  eventLine,
  makeStateValue,
  makeTxsJson,
  parseEvents,
  peerStatus,
  type DbLocation,
  type DbName,
  type EventName,
  type NodeEvent,
} from './chain.js';

const SELF = fileURLToPath(import.meta.url);
type Db = ClassicLevel<string, Buffer>;
type Opts = Record<string, string>;

class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode = 1,
  ) {
    super(message);
  }
}

// ---- small helpers ---------------------------------------------------------------------

function parseArgs(argv: string[]): { cmd: string; opts: Opts } {
  const [cmd = '', ...rest] = argv;
  const opts: Opts = {};
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i] as string;
    if (!a.startsWith('--')) throw new CliError(`unexpected argument ${a}`, 2);
    const eq = a.indexOf('=');
    if (eq > 0) opts[a.slice(2, eq)] = a.slice(eq + 1);
    else {
      const v = rest[i + 1];
      if (v === undefined || v.startsWith('--')) opts[a.slice(2)] = 'true';
      else {
        opts[a.slice(2)] = v;
        i++;
      }
    }
  }
  return { cmd, opts };
}

function need(opts: Opts, k: string): string {
  const v = opts[k];
  if (v === undefined || v === 'true') throw new CliError(`--${k} is required`, 2);
  return v;
}

function num(opts: Opts, k: string, dflt: number): number {
  const v = opts[k];
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new CliError(`--${k} must be a number`, 2);
  return n;
}

function paths(home: string) {
  return {
    home,
    data: join(home, 'data', 'loopchain'),
    pid: join(home, 'node.pid'),
    port: join(home, 'node.port'),
    log: join(home, 'node.log'),
    events: join(home, 'node-events.log'),
    stopMode: join(home, 'stop-mode'),
  };
}

function logEvent(
  home: string,
  event: EventName,
  fields: Record<string, unknown> = {},
  ms?: number,
): void {
  appendFileSync(join(home, 'node-events.log'), eventLine(event, fields, ms));
}

function readEvents(home: string): NodeEvent[] {
  try {
    return parseEvents(readFileSync(join(home, 'node-events.log'), 'utf8'));
  } catch {
    return [];
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** True if the process exists and is not a zombie. */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    if (state === 'Z' || state === 'X') return false;
  } catch {
    /* no /proc: trust kill(0) */
  }
  return true;
}

/** The pid of a live daemon of this home, or undefined (removing a stale pid file). */
function runningPid(home: string): number | undefined {
  const p = paths(home);
  let pid: number;
  try {
    pid = Number(readFileSync(p.pid, 'utf8').trim());
  } catch {
    return undefined;
  }
  if (Number.isInteger(pid) && pid > 0 && alive(pid)) {
    try {
      const cmdline = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
      if (!cmdline.includes('prep-node') || !cmdline.includes('daemon')) return staleRemove(p.pid);
    } catch {
      /* no /proc */
    }
    return pid;
  }
  return staleRemove(p.pid);
}

function staleRemove(pidFile: string): undefined {
  rmSync(pidFile, { force: true });
  return undefined;
}

function httpGetJson(
  port: number,
  path: string,
  timeoutMs = 1000,
): Promise<Record<string, unknown>> {
  return new Promise((res, rej) => {
    const req = httpGet({ host: '127.0.0.1', port, path, timeout: timeoutMs }, (r) => {
      const chunks: Buffer[] = [];
      r.on('data', (c: Buffer) => chunks.push(c));
      r.on('end', () => {
        try {
          if (r.statusCode !== 200) throw new Error(`HTTP ${r.statusCode}`);
          res(JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>);
        } catch (e) {
          rej(e as Error);
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', rej);
  });
}

function dirFiles(dir: string): { files: number; bytes: number } {
  let files = 0;
  let bytes = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (!e.isFile()) continue;
    // LevelDB may delete a file between the listing and the stat (a finished compaction).
    const size = statSync(join(dir, e.name), { throwIfNoEntry: false })?.size;
    if (size === undefined) continue;
    files++;
    bytes += size;
  }
  return { files, bytes };
}

// ---- databases -------------------------------------------------------------------------

interface DbOpenOpts {
  create?: boolean;
  writeBufferSize?: number;
}

async function openDb(loc: DbLocation, o: DbOpenOpts = {}): Promise<Db> {
  const db = new ClassicLevel<string, Buffer>(loc.path, {
    keyEncoding: 'utf8',
    valueEncoding: 'buffer',
    writeBufferSize: o.writeBufferSize,
  });
  try {
    await db.open({ createIfMissing: !!o.create, errorIfExists: !!o.create });
  } catch (e) {
    const err = e as Error & { cause?: Error & { code?: string } };
    const why = err.cause?.message ?? err.message;
    const locked = err.cause?.code === 'LEVEL_LOCKED';
    const ce = new CliError(
      `cannot open ${loc.name} DB (${loc.rel}): ${why}${locked ? ' (node running?)' : ''}`,
    );
    (ce as CliError & { locked?: boolean }).locked = locked;
    throw ce;
  }
  return db;
}

type Dbs = Record<DbName, Db>;

async function openAll(layout: DbLocation[], o: DbOpenOpts = {}): Promise<Dbs> {
  const out: Partial<Dbs> = {};
  try {
    for (const loc of layout) out[loc.name] = await openDb(loc, o);
  } catch (e) {
    await closeAll(out);
    throw e;
  }
  return out as Dbs;
}

async function closeAll(dbs: Partial<Dbs>): Promise<void> {
  await Promise.all(Object.values(dbs).map((d) => d?.close().catch(() => undefined)));
}

/** Reads the whole block chain; throws ChainError/CliError when it is not whole. */
async function verifyChain(
  db: Db,
  tail?: number,
): Promise<{ height: number; lastHash: string; bytes: number }> {
  const v = new ChainVerifier();
  let from = BLOCK_KEY_PREFIX;
  if (tail !== undefined) {
    // Only the last `tail` blocks: linked to the stored hash of the block before them.
    const last = await db.get(LAST_BLOCK_KEY).catch(() => undefined);
    const h = last === undefined ? NaN : Number(last.toString('utf8'));
    if (!Number.isInteger(h)) throw new ChainError('block DB has no valid last_block key');
    const first = Math.max(0, h - tail);
    if (first > 0) {
      const before = await db.get(blockKey(first - 1)).catch(() => undefined);
      if (!before) throw new ChainError(`block ${first - 1} is missing`);
      v.height = first - 1;
      v.lastHash = decodeBlock(before).hash;
      if (!(await db.get(blockKey(0)).catch(() => undefined)))
        throw new ChainError('genesis block is missing');
    }
    from = blockKey(first);
  }
  const it = db.iterator({ gte: from, lt: BLOCK_KEY_END });
  try {
    for (;;) {
      const entries = await it.nextv(1000);
      if (entries.length === 0) break;
      for (const [k, val] of entries) v.add(k, val);
    }
  } catch (e) {
    if (e instanceof ChainError) throw e;
    const err = e as Error & { cause?: Error };
    throw new ChainError(`reading the block DB failed: ${err.cause?.message ?? err.message}`);
  } finally {
    await it.close();
  }
  const last = await db.get(LAST_BLOCK_KEY).catch((e: Error) => {
    throw new ChainError(`reading last_block failed: ${e.message}`);
  });
  const height = v.finish(last?.toString('utf8'));
  return { height, lastHash: v.lastHash, bytes: v.bytes };
}

/** Reads every entry of a DB, to prove its tables are readable. */
async function scanAll(db: Db, name: string): Promise<number> {
  let n = 0;
  const it = db.iterator();
  try {
    for (;;) {
      const entries = await it.nextv(1000);
      if (entries.length === 0) break;
      n += entries.length;
    }
  } catch (e) {
    const err = e as Error & { cause?: Error };
    throw new ChainError(`reading the ${name} DB failed: ${err.cause?.message ?? err.message}`);
  } finally {
    await it.close();
  }
  return n;
}

interface NodeState {
  ip: string;
  height: number;
  lastHash: string;
  totalTx: number;
}

const SCORE_KEYS = 20000;
/** `--verify auto`: the whole chain when the block DB is at most this big, else the tail. */
const AUTO_FULL_VERIFY_BYTES = 256 * 1024 * 1024;
const TAIL_BLOCKS = 1000;

/** Writes the next block and its state changes to all DBs; the block DB last (commit point). */
async function writeBlock(
  dbs: Dbs,
  st: NodeState,
  valueBytes: number,
  time = Date.now(),
): Promise<void> {
  const h = st.height + 1;
  const { json, count } = makeTxsJson(valueBytes, h, time);
  const blk = encodeBlock(h, st.lastHash, time, json);
  const scoreOps = [0, 1].map((i) => ({
    type: 'put' as const,
    key:
      'score:' +
      createHash('sha1')
        .update(String((h * 3 + i * 7919) % SCORE_KEYS))
        .digest('hex'),
    value: Buffer.from(makeStateValue(Math.floor(valueBytes / 2), `s${h % 97}`)),
  }));
  await Promise.all([
    dbs.score.batch(scoreOps),
    dbs.icon_dex.put(
      `txresult:${blk.hash}`,
      Buffer.from(makeStateValue(Math.floor(valueBytes / 4), 'result')),
    ),
    dbs.iiss.put(
      `iiss:${String(h % 5000).padStart(6, '0')}`,
      Buffer.from(makeStateValue(256, 'iiss')),
    ),
    dbs.rc.put(`rc:${String(h).padStart(12, '0')}`, Buffer.from(makeStateValue(128, 'rc'))),
    dbs.meta.batch([
      { type: 'put', key: 'last_block', value: Buffer.from(String(h)) },
      { type: 'put', key: 'total_tx', value: Buffer.from(String(st.totalTx + count)) },
    ]),
  ]);
  await dbs.block.batch([
    { type: 'put', key: blk.key, value: blk.value },
    { type: 'put', key: `tx:${blk.hash}`, value: Buffer.from(String(h)) },
    { type: 'put', key: LAST_BLOCK_KEY, value: Buffer.from(String(h)) },
  ]);
  st.height = h;
  st.lastHash = blk.hash;
  st.totalTx += count;
}

async function loadTotalTx(dbs: Dbs): Promise<number> {
  const v = await dbs.meta.get('total_tx');
  return v ? Number(v.toString('utf8')) || 0 : 0;
}

// ---- orphan tables (for kill-mid-compaction) -------------------------------------------

/** Table files in a DB directory that the current MANIFEST does not list. */
export function orphanTables(dbPath: string): { name: string; size: number }[] {
  const names = readdirSync(dbPath);
  const current = readFileSync(join(dbPath, 'CURRENT'), 'utf8').trim();
  const live = parseManifest(readFileSync(join(dbPath, current))).tables;
  const out: { name: string; size: number }[] = [];
  for (const n of names) {
    const num = tableFileNumber(n);
    if (num === undefined || live.has(num)) continue;
    try {
      out.push({ name: n, size: statSync(join(dbPath, n)).size });
    } catch {
      /* deleted meanwhile */
    }
  }
  return out;
}

// ---- commands --------------------------------------------------------------------------

/** The empty directories of a node that does not exist yet (init, generate). */
function newHome(opts: Opts) {
  const home = resolve(need(opts, 'home'));
  const ip = need(opts, 'ip');
  const p = paths(home);
  if (existsSync(join(p.data, '.storage')) || existsSync(join(p.data, '.score_data'))) {
    throw new CliError(`${p.data} is already initialised`);
  }
  const layout = dbLayout(p.data, blockDirName(ip));
  for (const l of layout) mkdirSync(l.path, { recursive: true });
  writeFileSync(join(home, 'node.ip'), ip + '\n');
  return { home, ip, p, layout };
}

async function cmdInit(opts: Opts): Promise<void> {
  const { home, ip, p, layout } = newHome(opts);
  const blocks = num(opts, 'blocks', 100);
  const valueBytes = num(opts, 'value-bytes', 2048);
  const dbs = await openAll(layout, { create: true });
  try {
    const st: NodeState = { ip, height: -1, lastHash: '0'.repeat(64), totalTx: 0 };
    const t0 = Date.now() - (blocks + 1) * 2000;
    for (let h = 0; h <= blocks; h++) await writeBlock(dbs, st, valueBytes, t0 + h * 2000);
    // Flush memtables into real .ldb tables.
    await Promise.all(Object.values(dbs).map((d) => d.compactRange('', '\xff')));
    console.log(JSON.stringify({ ok: true, home, ip, height: st.height, data: p.data }));
  } finally {
    await closeAll(dbs);
  }
}

async function cmdCheck(opts: Opts): Promise<void> {
  const home = opts.home ? resolve(opts.home) : undefined;
  const data = opts.data ? resolve(opts.data) : home ? paths(home).data : undefined;
  if (!data) throw new CliError('--home or --data is required', 2);
  const layout = dbLayout(data);
  const stats: Record<string, { files: number; bytes: number; entries?: number }> = {};
  let files = 0;
  let bytes = 0;
  for (const l of layout) {
    if (!existsSync(l.path)) throw new ChainError(`${l.name} DB is missing: ${l.rel}`);
    const s = dirFiles(l.path);
    stats[l.name] = s;
    files += s.files;
    bytes += s.bytes;
  }
  const dbs = await openAll(layout);
  try {
    const chain = await verifyChain(dbs.block);
    for (const l of layout) {
      if (l.name === 'block') continue;
      (stats[l.name] as { entries?: number }).entries = await scanAll(dbs[l.name], l.name);
    }
    console.log(
      JSON.stringify({
        ok: true,
        height: chain.height,
        last_hash: chain.lastHash,
        files,
        bytes,
        block_dir: layout[0]?.rel,
        dbs: stats,
      }),
    );
  } finally {
    await closeAll(dbs);
  }
}

async function cmdStatus(opts: Opts): Promise<void> {
  const home = resolve(need(opts, 'home'));
  const p = paths(home);
  const pid = runningPid(home);
  let height: number | null = null;
  let port: number | null = null;
  if (pid) {
    try {
      port = Number(readFileSync(p.port, 'utf8').trim());
      const s = await httpGetJson(port, '/api/v1/avail/peer');
      height = Number(s.block_height);
    } catch {
      /* starting or stopping */
    }
  } else {
    try {
      const db = await openDb(dbLayout(p.data)[0] as DbLocation);
      try {
        const v = await db.get(LAST_BLOCK_KEY);
        height = v ? Number(v.toString('utf8')) : null;
      } finally {
        await db.close();
      }
    } catch {
      /* no DB */
    }
  }
  console.log(JSON.stringify({ running: !!pid, pid: pid ?? null, port, height }));
}

async function cmdStart(opts: Opts): Promise<void> {
  const home = resolve(need(opts, 'home'));
  const port = num(opts, 'port', NaN);
  if (!Number.isInteger(port) || port <= 0) throw new CliError('--port is required', 2);
  const timeoutMs = num(opts, 'timeout', 120) * 1000;
  const p = paths(home);
  const dataDirArg = opts['data-dir'];
  if (dataDirArg !== undefined && resolve(dataDirArg) !== p.data)
    throw new CliError(`--data-dir must be ${p.data}, the data dir of --home`, 2);
  mkdirSync(home, { recursive: true });
  const existing = runningPid(home);
  if (existing) {
    console.log(JSON.stringify({ ok: true, already_running: true, pid: existing }));
    console.error(`prep-node: already running (pid ${existing})`);
    return;
  }
  const requestedMs = Date.now();
  logEvent(home, 'start-requested', { port }, requestedMs);
  const args = [
    '--import',
    import.meta.resolve('tsx'),
    SELF,
    'daemon',
    '--home',
    home,
    '--port',
    String(port),
    '--rate',
    String(num(opts, 'rate', 20)),
    '--value-bytes',
    String(num(opts, 'value-bytes', 2048)),
    '--write-buffer-kb',
    String(num(opts, 'write-buffer-kb', 256)),
    '--verify',
    opts.verify ?? process.env.PREP_SIM_VERIFY ?? 'auto',
    ...(dataDirArg === undefined ? [] : ['--data-dir', p.data]),
  ];
  const logFd = openSync(p.log, 'a');
  const child = spawn(process.execPath, args, {
    detached: true,
    stdio: ['ignore', logFd, logFd],
    cwd: home,
  });
  closeSync(logFd);
  let exitCode: number | null | undefined;
  child.on('exit', (code, sig) => (exitCode = code ?? (sig ? 128 : 1)));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exitCode !== undefined) {
      const evs = readEvents(home).filter((e) => e.ms >= requestedMs);
      const conflict = evs.find((e) => e.event === 'start-conflict');
      const other = runningPid(home);
      if (conflict && other) {
        console.log(JSON.stringify({ ok: true, already_running: true, pid: other }));
        return;
      }
      const refused = evs.find((e) => e.event === 'refused');
      throw new CliError(
        `node did not start (exit ${exitCode}): ${refused ? String(refused.reason) : 'see ' + p.log}`,
      );
    }
    try {
      // The daemon serves HTTP before it writes its first block: ask only once it has logged
      // `started`, so the height printed is one the node reached after this start.
      const started = readEvents(home).find(
        (e) => e.event === 'started' && e.ms >= requestedMs && e.pid === child.pid,
      );
      const s = started ? await httpGetJson(port, '/api/v1/avail/peer', 500) : undefined;
      if (s?.service_available === true) {
        console.log(
          JSON.stringify({ ok: true, pid: child.pid, port, block_height: s.block_height }),
        );
        child.unref();
        return;
      }
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline) {
      throw new CliError(
        `node did not answer on port ${port} within ${timeoutMs / 1000} s (pid ${child.pid})`,
      );
    }
    await sleep(50);
  }
}

function stopMode(opts: Opts, home: string): string {
  let m = opts.mode ?? process.env.PREP_SIM_STOP_MODE;
  if (!m) {
    try {
      m = readFileSync(paths(home).stopMode, 'utf8').trim();
    } catch {
      /* none */
    }
  }
  m = m || 'graceful';
  if (m !== 'graceful' && m !== 'kill-mid-compaction')
    throw new CliError(`unknown stop mode ${m}`, 2);
  return m;
}

async function waitGone(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (alive(pid)) {
    if (Date.now() > deadline) return false;
    await sleep(10);
  }
  return true;
}

async function cmdStop(opts: Opts): Promise<void> {
  const home = resolve(need(opts, 'home'));
  const p = paths(home);
  const mode = stopMode(opts, home);
  const timeoutMs = num(opts, 'timeout', 120) * 1000;
  const pid = runningPid(home);
  if (!pid) {
    console.log(JSON.stringify({ ok: true, running: false }));
    console.error('prep-node: not running');
    return;
  }
  const reqMs = Date.now();
  logEvent(home, 'stop-requested', { mode, pid }, reqMs);
  if (mode === 'graceful') {
    process.kill(pid, 'SIGTERM');
    if (!(await waitGone(pid, timeoutMs))) {
      process.kill(pid, 'SIGKILL');
      await waitGone(pid, 10_000);
      rmSync(p.pid, { force: true });
      logEvent(home, 'killed', { mode, pid, reason: 'graceful stop timed out' });
      throw new CliError(`graceful stop timed out after ${timeoutMs / 1000} s; killed pid ${pid}`);
    }
    const stopped = readEvents(home).find((e) => e.event === 'stopped' && e.ms >= reqMs);
    console.log(
      JSON.stringify({ ok: true, mode, pid, block_height: stopped?.block_height ?? null }),
    );
    return;
  }

  // kill-mid-compaction
  const layout = dbLayout(p.data);
  process.kill(pid, 'SIGUSR2');
  const deadline = Date.now() + timeoutMs;
  let compacting = false;
  let seen: { db: string; name: string; size: number } | undefined;
  while (Date.now() < deadline && alive(pid)) {
    if (!compacting) {
      compacting = readEvents(home).some(
        (e) => e.event === 'compacting' && e.ms >= reqMs && e.pid === pid,
      );
      if (!compacting) {
        await sleep(20);
        continue;
      }
    }
    for (const l of layout) {
      try {
        const o = orphanTables(l.path).find((t) => t.size > 0);
        if (o) seen = { db: l.name, ...o };
      } catch {
        /* MANIFEST mid-write: retry */
      }
      if (seen) break;
    }
    if (seen) break;
    await sleep(2);
  }
  if (alive(pid)) process.kill(pid, 'SIGKILL');
  await waitGone(pid, 10_000);
  rmSync(p.pid, { force: true });
  const orphans: Record<string, string[]> = {};
  let count = 0;
  for (const l of layout) {
    try {
      const o = orphanTables(l.path);
      if (o.length) orphans[l.name] = o.map((t) => t.name);
      count += o.length;
    } catch (e) {
      orphans[l.name] = [`<unreadable MANIFEST: ${(e as Error).message}>`];
    }
  }
  const stopped = readEvents(home).find(
    (e) => e.event === 'stopped' && e.ms >= reqMs && e.pid === pid,
  );
  logEvent(home, 'killed', {
    mode,
    pid,
    during_compaction: !!seen,
    orphan_count: count,
    orphan_tables: orphans,
    block_height: stopped?.block_height ?? null,
    last_block_ms: stopped?.last_block_ms ?? null,
  });
  if (!seen) console.error('prep-node: warning: did not catch the daemon mid-compaction');
  console.log(
    JSON.stringify({
      ok: true,
      mode,
      pid,
      during_compaction: !!seen,
      orphan_count: count,
      orphan_tables: orphans,
    }),
  );
}

async function cmdDaemon(opts: Opts): Promise<void> {
  const home = resolve(need(opts, 'home'));
  const port = num(opts, 'port', NaN);
  const rate = Math.max(0.1, num(opts, 'rate', 20));
  const valueBytes = num(opts, 'value-bytes', 2048);
  const writeBufferSize = num(opts, 'write-buffer-kb', 256) * 1024;
  let verify = opts.verify ?? 'auto';
  const p = paths(home);
  writeFileSync(p.pid, `${process.pid}\n`);
  writeFileSync(p.port, `${port}\n`);

  let stopMode: string | undefined;
  let wake: (() => void) | undefined;
  const request = (m: string) => {
    if (!stopMode) stopMode = m;
    wake?.();
  };
  process.on('SIGTERM', () => request('graceful'));
  process.on('SIGINT', () => request('graceful'));
  process.on('SIGUSR2', () => request('kill-mid-compaction'));

  const fail = (event: EventName, reason: string, code: number): never => {
    logEvent(home, event, { pid: process.pid, reason });
    console.error(`prep-node daemon: ${event}: ${reason}`);
    rmSync(p.pid, { force: true });
    process.exit(code);
  };

  let layout: DbLocation[];
  try {
    layout = dbLayout(p.data);
    for (const l of layout)
      if (!existsSync(l.path)) throw new ChainError(`${l.name} DB is missing: ${l.rel}`);
  } catch (e) {
    return fail('refused', (e as Error).message, 1);
  }
  let dbs: Dbs;
  try {
    dbs = await openAll(layout, { writeBufferSize });
  } catch (e) {
    if ((e as { locked?: boolean }).locked) return fail('start-conflict', (e as Error).message, 3);
    return fail('refused', (e as Error).message, 1);
  }
  const ip =
    /^db_(.+):7100_icon_dex$/.exec(layout[0]!.rel.slice('.storage/'.length))?.[1] ?? '127.0.0.1';
  const st: NodeState = { ip, height: -1, lastHash: '', totalTx: 0 };
  try {
    if (verify === 'auto') {
      const blockBytes = dirFiles(layout[0]!.path).bytes;
      verify = blockBytes <= AUTO_FULL_VERIFY_BYTES ? 'full' : 'tail';
    }
    if (verify === 'none') {
      const last = await dbs.block.get(LAST_BLOCK_KEY);
      if (!last) throw new ChainError('block DB has no last_block key');
      st.height = Number(last.toString('utf8'));
      const b = await dbs.block.get(blockKey(st.height));
      if (!b) throw new ChainError(`block ${st.height} named by last_block is missing`);
      st.lastHash = decodeBlock(b).hash;
    } else {
      const c = await verifyChain(dbs.block, verify === 'tail' ? TAIL_BLOCKS : undefined);
      st.height = c.height;
      st.lastHash = c.lastHash;
    }
    st.totalTx = await loadTotalTx(dbs);
  } catch (e) {
    await closeAll(dbs);
    return fail('refused', (e as Error).message, 1);
  }

  const server: Server = createServer((req, res) => {
    if (req.method === 'GET' && req.url?.split('?')[0] === '/api/v1/avail/peer') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(peerStatus({ height: st.height, totalTx: st.totalTx, ip: st.ip })));
    } else {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end('{"message":"not found"}');
    }
  });
  try {
    await new Promise<void>((res, rej) => {
      server.once('error', rej);
      server.listen(port, '127.0.0.1', () => res());
    });
  } catch (e) {
    await closeAll(dbs);
    return fail('refused', `cannot listen on 127.0.0.1:${port}: ${(e as Error).message}`, 1);
  }

  let lastBlockMs = 0;
  let firstBlockMs = 0;
  let next = performance.now();
  let crashed: Error | undefined;
  while (!stopMode) {
    try {
      await writeBlock(dbs, st, valueBytes);
    } catch (e) {
      crashed = e as Error;
      break;
    }
    lastBlockMs = Date.now();
    if (!firstBlockMs) {
      firstBlockMs = lastBlockMs;
      logEvent(home, 'started', {
        pid: process.pid,
        port,
        block_height: st.height,
        first_block_ms: firstBlockMs,
      });
    }
    next += 1000 / rate;
    const wait = next - performance.now();
    if (wait < -1000) next = performance.now();
    if (wait > 0 && !stopMode) {
      await new Promise<void>((r) => {
        const t = setTimeout(r, wait);
        wake = () => {
          clearTimeout(t);
          r();
        };
      });
      wake = undefined;
    }
  }
  server.close();
  server.closeAllConnections();
  if (crashed) {
    await closeAll(dbs);
    fail('crashed', crashed.message, 1);
  }
  const stoppedFields = {
    mode: stopMode,
    pid: process.pid,
    block_height: st.height,
    last_block_ms: lastBlockMs || null,
  };

  if (stopMode === 'graceful') {
    await closeAll(dbs);
    rmSync(p.pid, { force: true });
    logEvent(home, 'stopped', { ...stoppedFields, closed_ms: Date.now() });
    process.exit(0);
  }

  // kill-mid-compaction: stop writing blocks, give the compaction work, compact, wait to be killed.
  logEvent(home, 'stopped', stoppedFields);
  const burstBytes = Number(process.env.PREP_SIM_BURST_MB ?? 24) * 1024 * 1024;
  const entry = 4096;
  let written = 0;
  while (written < burstBytes) {
    const ops = [];
    for (let i = 0; i < 256 && written < burstBytes; i++, written += entry) {
      ops.push({
        type: 'put' as const,
        key: `tx:${randomBytes(16).toString('hex')}`,
        value: Buffer.from(makeStateValue(entry, 'receipt')),
      });
    }
    await dbs.block.batch(ops);
  }
  logEvent(home, 'compacting', { pid: process.pid, burst_bytes: written });
  await Promise.all(layout.map((l) => dbs[l.name].compactRange('', '\xff')));
  logEvent(home, 'compacting', { pid: process.pid, finished: true });
  // Not killed in time: keep holding the DBs open like a hung container until SIGKILL.
  setInterval(() => undefined, 60_000);
}

async function cmdGenerate(opts: Opts): Promise<void> {
  const { home, ip, layout } = newHome(opts);
  const gib = num(opts, 'gib', 2);
  const blockBytes = num(opts, 'block-bytes', 32768);
  const target = gib * 1024 ** 3;
  const t0 = Date.now();
  const dbs = await openAll(layout, { create: true, writeBufferSize: 4 * 1024 * 1024 });
  const share: Record<Exclude<DbName, 'block'>, number> = {
    score: 0.25,
    icon_dex: 0.08,
    iiss: 0.03,
    rc: 0.03,
    meta: 0.01,
  };
  const st: NodeState = { ip, height: -1, lastHash: '0'.repeat(64), totalTx: 0 };
  const baseTime = Date.now() - 90 * 24 * 3600 * 1000;
  const pending: Partial<Record<DbName, Promise<void>>> = {};
  const put = async (name: DbName, ops: { type: 'put'; key: string; value: Buffer }[]) => {
    await pending[name];
    pending[name] = dbs[name].batch(ops);
  };
  const sizeOnDisk = () => layout.reduce((s, l) => s + dirFiles(l.path).bytes, 0);
  const stateSeq: Record<string, number> = {};
  try {
    const roundBytes = 32 * 1024 * 1024; // block bytes per round
    for (;;) {
      // Blocks: batches of ~4 MiB.
      let blockBytesWritten = 0;
      while (blockBytesWritten < roundBytes) {
        const ops: { type: 'put'; key: string; value: Buffer }[] = [];
        let batchBytes = 0;
        while (batchBytes < 4 * 1024 * 1024) {
          const h = st.height + 1;
          const time = baseTime + h * 2000;
          const { json, count } = makeTxsJson(blockBytes, h, time);
          const blk = encodeBlock(h, st.lastHash, time, json);
          ops.push({ type: 'put', key: blk.key, value: blk.value });
          st.height = h;
          st.lastHash = blk.hash;
          st.totalTx += count;
          batchBytes += blk.value.length;
        }
        ops.push({ type: 'put', key: LAST_BLOCK_KEY, value: Buffer.from(String(st.height)) });
        await put('block', ops);
        blockBytesWritten += batchBytes;
      }
      // State DBs, in proportion to the block bytes (block is ~60%).
      for (const [name, frac] of Object.entries(share) as [Exclude<DbName, 'block'>, number][]) {
        let want = (roundBytes * frac) / 0.6;
        const valueSize = name === 'score' ? 8192 : name === 'meta' ? 1024 : 2048;
        while (want > 0) {
          const ops: { type: 'put'; key: string; value: Buffer }[] = [];
          for (let i = 0; i < 512 && want > 0; i++, want -= valueSize) {
            const seq = (stateSeq[name] = (stateSeq[name] ?? 0) + 1);
            ops.push({
              type: 'put',
              key: `${name}:${String(seq).padStart(12, '0')}`,
              value: Buffer.from(makeStateValue(valueSize, `${name}${seq % 13}`)),
            });
          }
          await put(name, ops);
        }
      }
      await Promise.all(Object.values(pending));
      const size = sizeOnDisk();
      if (size >= target) break;
      if (process.stderr.isTTY || opts.progress) {
        process.stderr.write(
          `generate: ${(size / 1024 ** 3).toFixed(2)} GiB, height ${st.height}\n`,
        );
      }
    }
    await dbs.meta.batch([
      { type: 'put', key: 'last_block', value: Buffer.from(String(st.height)) },
      { type: 'put', key: 'total_tx', value: Buffer.from(String(st.totalTx)) },
    ]);
  } finally {
    await Promise.all(Object.values(pending).map((x) => x?.catch(() => undefined)));
    await closeAll(dbs);
  }
  let files = 0;
  let bytes = 0;
  for (const l of layout) {
    const s = dirFiles(l.path);
    files += s.files;
    bytes += s.bytes;
  }
  console.log(
    JSON.stringify({
      ok: true,
      home,
      ip,
      height: st.height,
      files,
      bytes,
      seconds: (Date.now() - t0) / 1000,
    }),
  );
}

// ---- main ------------------------------------------------------------------------------

const USAGE = `usage: prep-node.ts <init|start|stop|check|status|generate> --home H [options]
  init     --home H --ip IP [--blocks 100] [--value-bytes 2048]
  start    --home H --port P [--rate 20] [--value-bytes 2048] [--write-buffer-kb 256] [--verify auto|full|tail|none] [--timeout 120] [--data-dir H/data/loopchain]
  stop     --home H [--mode graceful|kill-mid-compaction] [--timeout 120]
  check    --home H | --data DIR
  status   --home H
  generate --home H --ip IP --gib 2 [--block-bytes 32768]`;

async function main(): Promise<void> {
  const { cmd, opts } = parseArgs(process.argv.slice(2));
  switch (cmd) {
    case 'init':
      return cmdInit(opts);
    case 'start':
      return cmdStart(opts);
    case 'stop':
      return cmdStop(opts);
    case 'check':
      return cmdCheck(opts);
    case 'status':
      return cmdStatus(opts);
    case 'generate':
      return cmdGenerate(opts);
    case 'daemon':
      return cmdDaemon(opts);
    default:
      throw new CliError(USAGE, 2);
  }
}

if (process.argv[1] && resolve(process.argv[1]) === SELF) {
  main().then(
    () => {
      if (process.argv[2] !== 'daemon') process.exit(0);
    },
    (e: unknown) => {
      const err = e as Error;
      const code = e instanceof CliError ? e.exitCode : 1;
      if (process.argv[2] === 'check')
        console.log(JSON.stringify({ ok: false, error: err.message }));
      console.error(`prep-node: ${err.message}`);
      process.exit(code);
    },
  );
}
