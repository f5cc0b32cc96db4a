/**
 * Pure pieces of the P-Rep node simulator (see prep-node.ts): the loopchain directory
 * layout, the block encoding, the hash chain and its verification, the peer-status answer.
 * No I/O on databases here, so that tests can import it cheaply.
 */
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';

/** The databases of a loopchain node, relative to `data/loopchain`. The block DB is added per IP. */
export const STATE_DBS = [
  { name: 'icon_dex', rel: '.score_data/db/icon_dex' },
  { name: 'iiss', rel: '.score_data/db/iiss' },
  { name: 'meta', rel: '.score_data/db/meta' },
  { name: 'rc', rel: '.score_data/db/rc' },
  { name: 'score', rel: '.score_data/score' },
] as const;

export type DbName = 'block' | (typeof STATE_DBS)[number]['name'];

export interface DbLocation {
  name: DbName;
  rel: string;
  path: string;
}

export const BLOCK_DIR_RE = /^db_(.+):7100_icon_dex$/;

export function blockDirName(ip: string): string {
  return `db_${ip}:7100_icon_dex`;
}

export class ChainError extends Error {
  override name = 'ChainError';
}

/** Finds the single `db_*:7100_icon_dex` directory under `{dataDir}/.storage`. */
export function findBlockDirName(dataDir: string): string {
  const storage = join(dataDir, '.storage');
  let entries: string[];
  try {
    entries = readdirSync(storage);
  } catch {
    throw new ChainError(`no .storage directory in ${dataDir}`);
  }
  const found = entries.filter((e) => BLOCK_DIR_RE.test(e));
  if (found.length !== 1) {
    throw new ChainError(
      `expected exactly one db_*:7100_icon_dex in ${storage}, found ${found.length}` +
        (found.length ? `: ${found.join(', ')}` : ''),
    );
  }
  return found[0] as string;
}

/** All six databases of a data dir; `blockDir` defaults to the one found on disk. */
export function dbLayout(dataDir: string, blockDir?: string): DbLocation[] {
  const b = blockDir ?? findBlockDirName(dataDir);
  const rel = `.storage/${b}`;
  return [
    { name: 'block', rel, path: join(dataDir, rel) },
    ...STATE_DBS.map((d) => ({ name: d.name, rel: d.rel, path: join(dataDir, d.rel) })),
  ];
}

export const GENESIS_PREV_HASH = '0'.repeat(64);
export const LAST_BLOCK_KEY = 'last_block';
export const BLOCK_KEY_PREFIX = 'block:';
/** Upper bound for an iterator over all block keys (`;` follows `:` in ASCII). */
export const BLOCK_KEY_END = 'block;';

export function blockKey(height: number): string {
  return BLOCK_KEY_PREFIX + String(height).padStart(12, '0');
}

/** hash = sha256(prevHash + height + payload), hex. `payload` is the JSON text of `txs`. */
export function blockHash(prevHash: string, height: number, payload: string | Uint8Array): string {
  return createHash('sha256').update(prevHash).update(String(height)).update(payload).digest('hex');
}

export interface EncodedBlock {
  height: number;
  hash: string;
  key: string;
  value: Buffer;
}

/**
 * Encodes a block as `{"height":H,"prevHash":"..","hash":"..","time":T,"txs":[...]}` with
 * that exact field order, so that a verifier can take the payload (`txs` text) as a slice
 * without JSON.parse. `txsJson` must be a JSON array text.
 */
export function encodeBlock(
  height: number,
  prevHash: string,
  time: number,
  txsJson: string,
): EncodedBlock {
  const hash = blockHash(prevHash, height, txsJson);
  const value = Buffer.from(
    `{"height":${height},"prevHash":"${prevHash}","hash":"${hash}","time":${time},"txs":${txsJson}}`,
  );
  return { height, hash, key: blockKey(height), value };
}

export interface BlockHeader {
  height: number;
  prevHash: string;
  hash: string;
  time: number;
  payload: Buffer;
}

const HEADER_RE =
  /^\{"height":(\d+),"prevHash":"([0-9a-f]{64})","hash":"([0-9a-f]{64})","time":(\d+),"txs":/;

export function decodeBlock(value: Buffer): BlockHeader {
  const head = value.subarray(0, 220).toString('latin1');
  const m = HEADER_RE.exec(head);
  if (!m || value[value.length - 1] !== 0x7d /* } */) {
    throw new ChainError('block value is not a well-formed block');
  }
  return {
    height: Number(m[1]),
    prevHash: m[2] as string,
    hash: m[3] as string,
    time: Number(m[4]),
    payload: value.subarray(m[0].length, value.length - 1),
  };
}

/** Verifies blocks fed in key order: heights 0..N contiguous, links and hashes right. */
export class ChainVerifier {
  height = -1;
  lastHash = GENESIS_PREV_HASH;
  bytes = 0;

  add(key: string, value: Buffer): void {
    const expected = this.height + 1;
    if (key !== blockKey(expected)) {
      throw new ChainError(`expected key ${blockKey(expected)} but found ${key} (gap or bad key)`);
    }
    const b = decodeBlock(value);
    if (b.height !== expected) throw new ChainError(`block ${key} says height ${b.height}`);
    if (b.prevHash !== this.lastHash) {
      throw new ChainError(
        `block ${expected}: prevHash does not match the hash of block ${expected - 1}`,
      );
    }
    const h = blockHash(b.prevHash, b.height, b.payload);
    if (h !== b.hash)
      throw new ChainError(`block ${expected}: stored hash does not match its content`);
    this.height = expected;
    this.lastHash = h;
    this.bytes += value.length;
  }

  /** Checks the `last_block` value against the chain that was fed. */
  finish(lastBlockValue: string | undefined): number {
    if (this.height < 0) throw new ChainError('block DB has no genesis block');
    if (lastBlockValue === undefined) throw new ChainError('block DB has no last_block key');
    if (Number(lastBlockValue) !== this.height) {
      throw new ChainError(
        `last_block says ${lastBlockValue} but the chain ends at ${this.height}`,
      );
    }
    return this.height;
  }
}

// ---- payload generation -------------------------------------------------------------

const ADDR_POOL = Array.from({ length: 64 }, (_, i) =>
  createHash('sha1').update(`addr${i}`).digest('hex'),
);
const SCORE_POOL = Array.from({ length: 16 }, (_, i) =>
  createHash('sha1').update(`score${i}`).digest('hex'),
);

/**
 * A JSON array of ICON-like transactions of about `bytes` bytes: hashes and signatures are
 * random (hex / base64), addresses and method names repeat, so gzip shrinks it ~1.5x and
 * snappy much less (so LevelDB tables stay big).
 */
export function makeTxsJson(
  bytes: number,
  height: number,
  time: number,
): { json: string; count: number } {
  const parts: string[] = [];
  let size = 2;
  let n = 0;
  const rnd = randomBytes(Math.max(256, Math.ceil(bytes * 0.75)));
  let off = 0;
  const take = (k: number): Buffer => {
    if (off + k > rnd.length) off = 0;
    const s = rnd.subarray(off, off + k);
    off += k;
    return s;
  };
  while (size < bytes || n === 0) {
    const a = ADDR_POOL[(height + n) % ADDR_POOL.length] as string;
    const s = SCORE_POOL[(height * 7 + n) % SCORE_POOL.length] as string;
    const tx =
      `{"version":"0x3","from":"hx${a}","to":"cx${s}","stepLimit":"0x${(100000 + n).toString(16)}",` +
      `"timestamp":"0x${(time * 1000 + n).toString(16)}","nid":"0x1","nonce":"0x${n.toString(16)}",` +
      `"dataType":"call","data":{"method":"transfer","params":{"_to":"hx${a}","_value":"0x${take(6).toString('hex')}"}},` +
      `"txHash":"0x${take(32).toString('hex')}","signature":"${take(65).toString('base64')}"}`;
    parts.push(tx);
    size += tx.length + 1;
    n++;
  }
  return { json: `[${parts.join(',')}]`, count: n };
}

/** Random-ish bytes as hex plus a repetitive tail: used for state DB values. */
export function makeStateValue(bytes: number, tag: string): string {
  const half = Math.max(1, Math.floor(bytes / 4));
  const rnd = randomBytes(half).toString('hex');
  const pad = bytes - rnd.length;
  return `{"tag":"${tag}","v":"${rnd}","pad":"${pad > 0 ? tag.repeat(Math.ceil(pad / Math.max(1, tag.length))).slice(0, pad) : ''}"}`;
}

// ---- HTTP answer ------------------------------------------------------------------------

export function peerId(ip: string): string {
  return 'hx' + createHash('sha1').update(ip).digest('hex');
}

export function peerStatus(opts: {
  height: number;
  totalTx: number;
  ip: string;
  peerPort?: number;
}) {
  const id = peerId(opts.ip);
  return {
    made_block_count: 0,
    status: 'Service is online: 0',
    state: 'Vote',
    peer_type: '0',
    audience_count: '0',
    consensus: 'siever',
    peer_id: id,
    block_height: opts.height,
    round: 0,
    epoch_height: opts.height,
    unconfirmed_block_height: 0,
    total_tx: opts.totalTx,
    unconfirmed_tx: 0,
    peer_target: `${opts.ip}:${opts.peerPort ?? 7100}`,
    leader_complaint: 1,
    peer_count: 22,
    leader: id,
    epoch_leader: id,
    mq: {
      peer: { message_count: 0 },
      channel: { message_count: 0 },
      score: { message_count: 0 },
    },
    service_available: true,
  };
}

// ---- events ----------------------------------------------------------------------------

export type EventName =
  | 'start-requested'
  | 'started'
  | 'stop-requested'
  | 'stopped'
  | 'refused'
  | 'killed'
  | 'compacting'
  | 'start-conflict'
  | 'crashed';

export interface NodeEvent {
  ms: number;
  t: string;
  event: EventName;
  [k: string]: unknown;
}

export function eventLine(
  event: EventName,
  fields: Record<string, unknown> = {},
  ms = Date.now(),
): string {
  return JSON.stringify({ ms, t: new Date(ms).toISOString(), event, ...fields }) + '\n';
}

export function parseEvents(text: string): NodeEvent[] {
  const out: NodeEvent[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      out.push(JSON.parse(line) as NodeEvent);
    } catch {
      /* a torn line of a killed writer */
    }
  }
  return out;
}

/**
 * Downtime periods from an event log: from each `stopped.last_block_ms` (or the `killed`
 * time when there is no `stopped`) to the next `started.first_block_ms`.
 */
export function downtimes(events: NodeEvent[]): { fromMs: number; toMs: number; ms: number }[] {
  const out: { fromMs: number; toMs: number; ms: number }[] = [];
  let down: number | undefined;
  for (const e of events) {
    if (e.event === 'stopped' && down === undefined) down = Number(e.last_block_ms ?? e.ms);
    if (e.event === 'killed' && down === undefined) down = Number(e.last_block_ms ?? e.ms);
    if (e.event === 'started' && down !== undefined) {
      const to = Number(e.first_block_ms ?? e.ms);
      out.push({ fromMs: down, toMs: to, ms: to - down });
      down = undefined;
    }
  }
  return out;
}
