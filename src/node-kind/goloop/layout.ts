/**
 * What is specific to an ICON 2 (goloop) node, as pure functions: the chains that its admin
 * API lists, the chain a run wants (by channel or by cid), the chain folder's name, the
 * block hash in a JSON-RPC answer. goloop keeps one folder per chain in its node dir, named
 * by the cid in hex (`{node dir}/{cid}`), with the goleveldb database in `db/{nid}`.
 */
import { HostError } from '../../errors.js';

export interface Chain {
  /** `0x…`, as the admin API and the control socket name it. */
  cid: string;
  nid: string;
  channel: string;
  state: string;
  height: number;
  lastError: string;
}

/** The chain folder's name: the cid in hex, without `0x` (goloop's `_mkChainDir`). */
export function chainFolder(cid: string): string {
  return cid.replace(/^0x/, '');
}

/** The chains in an answer of `GET /admin/chain`. */
export function parseChains(body: string): Chain[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    throw new HostError(`The admin API did not answer with JSON: '${body.slice(0, 200)}'.`);
  }
  if (!Array.isArray(parsed)) {
    throw new HostError(`The admin API's answer is not a list of chains: '${body.slice(0, 200)}'.`);
  }
  return parsed.map((c: Record<string, unknown>) => {
    const cid = String(c.cid ?? '');
    if (!/^0x[0-9a-f]{1,8}$/.test(cid)) {
      throw new HostError(`The admin API names a chain with the cid '${cid.slice(0, 40)}'.`);
    }
    return {
      cid,
      nid: String(c.nid ?? ''),
      channel: String(c.channel ?? ''),
      state: String(c.state ?? ''),
      height: Number(c.height ?? NaN),
      lastError: String(c.lastError ?? ''),
    };
  });
}

/** The chain that `want` names: a cid (`0x…`) or a channel (`icon_dex` on MainNet). */
export function pickChain(chains: Chain[], want: string): Chain {
  const byCid = /^0x[0-9a-f]+$/i.test(want);
  const found = chains.filter((c) => (byCid ? c.cid === want.toLowerCase() : c.channel === want));
  if (found.length === 1) return found[0] as Chain;
  const known = chains.map((c) => `${c.channel} (${c.cid}, ${c.state})`).join(', ') || 'none';
  if (found.length === 0) {
    throw new HostError(
      `The node has no chain ${byCid ? 'with the cid' : 'on the channel'} '${want}' (it has: ${known}). Set 'chain' to one of them.`,
    );
  }
  throw new HostError(
    `The node has ${found.length} chains on the channel '${want}' (${known}): set 'chain' to the cid of one.`,
  );
}

/** A chain that produces blocks: the only kind a backup is taken of. */
export function isStarted(chain: Chain): boolean {
  return chain.state === 'started';
}

/** A chain whose database is closed or not open (a swap of its folder is safe). */
export function isAtRest(chain: Chain): boolean {
  return ['stopped', 'backup done', 'backup manual', 'failed', 'created'].includes(chain.state);
}

/** The block hash in an answer of `icx_getBlockByHeight` (hex, without `0x`). */
export function parseBlockHash(body: string): string {
  let hash: unknown;
  try {
    const parsed = JSON.parse(body) as { result?: { block_hash?: unknown }; error?: unknown };
    hash = parsed.result?.block_hash;
    if (hash === undefined && parsed.error !== undefined) {
      throw new HostError(
        `The node's JSON-RPC answered with an error: ${JSON.stringify(parsed.error)}.`,
      );
    }
  } catch (error) {
    if (error instanceof HostError) throw error;
    throw new HostError(`The node's JSON-RPC did not answer with JSON: '${body.slice(0, 200)}'.`);
  }
  if (typeof hash !== 'string' || !/^(0x)?[0-9a-f]{64}$/.test(hash)) {
    throw new HostError(`The node's JSON-RPC answer has no block_hash: '${body.slice(0, 200)}'.`);
  }
  return hash.replace(/^0x/, '');
}

/** The goloop version in an answer of `GET /admin/system` (`buildVersion`), or ''. */
export function parseBuildVersion(body: string): string {
  try {
    const v = (JSON.parse(body) as { buildVersion?: unknown }).buildVersion;
    return typeof v === 'string' && /^[\w.+-]{1,40}$/.test(v) ? v : '';
  } catch {
    return '';
  }
}

/** The RPC base URL (`http://host:port`) of an admin URL such as `http://localhost:9000/admin/chain`. */
export function rpcBase(adminUrl: string): string {
  const u = new URL(adminUrl);
  return `${u.protocol}//${u.host}`;
}
