// A real ICON 2 node (goloop v1.4.4) on 127.0.0.1 for tests: a single-validator chain in a
// fresh temp dir, laid out and driven the way iconloop/icon2-node runs it (node dir with
// cli.sock, one folder per chain named by its cid in hex). Binary built by test/bed/install.sh.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { goloopBin } from './paths.js';
import { freePort } from './ports.js';
import { removeAtExit, run, spawnServer, type Server } from './proc.js';

/** One entry of `GET /admin/chain`. */
export interface GoloopChainInfo {
  cid: string;
  nid: string;
  channel: string;
  /** "started", "stopped", "backup manual", "backup done", ... */
  state: string;
  height: number;
  lastError: string;
}

export interface GoloopTransfer {
  to: string;
  amount: bigint;
  txHash: string;
}

export interface GoloopNode {
  /** The temp dir that holds everything (keystore, genesis, node dir, log); removed by stop(). */
  dir: string;
  /** goloop's node dir (`--node_dir`), as `/goloop/data` in icon2-node. */
  nodeDir: string;
  /** Chain id in hex without 0x, as goloop names the chain folder (`{nodeDir}/{cid}`). */
  cid: string;
  /** Network id in hex without 0x, as goloop names the database (`{chainDir}/db/{nid}`). */
  nid: string;
  /** `{nodeDir}/{cid}` */
  chainDir: string;
  /** `{chainDir}/db/{nid}`: the goleveldb database. */
  dbDir: string;
  channel: string;
  /** "http://127.0.0.1:PORT" (JSON-RPC at /api/v3/{channel}, admin at /admin/chain). */
  rpcUrl: string;
  rpcPort: number;
  p2pPort: number;
  /** The control socket, `{nodeDir}/cli.sock`. */
  sock: string;
  /** Keystore of the node's wallet (validator, and owner of the whole supply). */
  keystore: string;
  keyPassword: string;
  /** The wallet's address (hx...). */
  address: string;
  /** Total supply in loop; all of it is the wallet's at genesis. */
  supply: bigint;
  /** Milliseconds from `server start` to the first block after `chain start`. */
  startMs: number;
  pid: number;
  /** The chain's entry in `GET /admin/chain`. */
  chain(): Promise<GoloopChainInfo>;
  /** Last block height from /admin/chain (0 while the database is closed by a manual backup). */
  height(): Promise<number>;
  /** Block hash (hex, no 0x) at height h, from icx_getBlockByHeight. */
  blockHash(h: number): Promise<string>;
  /** Balance in loop (icx_getBalance). */
  balance(address: string): Promise<bigint>;
  /** Send amount loop from the wallet to `to` and wait until the transaction is in a block. */
  transfer(to: string, amount: bigint): Promise<GoloopTransfer>;
  /** Send n transfers to fresh addresses (a few at a time) and wait for all of them. */
  load(n: number, opts?: { amount?: bigint; concurrency?: number }): Promise<GoloopTransfer[]>;
  /** Resolve once the chain is started and at height h or above. */
  waitForHeight(h: number, timeoutMs?: number): Promise<number>;
  /** POST /chain/{cid}/stop on the control socket; resolves once the chain has left the stopping state. */
  chainStop(): Promise<string>;
  /** POST /chain/{cid}/start on the control socket. */
  chainStart(): Promise<string>;
  /** POST /chain/{cid}/backup {"manual":true} on the control socket: only closes the database. */
  chainBackupManual(): Promise<string>;
  /** Run the goloop CLI with GOLOOP_NODE_SOCK set to this node's socket. */
  cli(args: string[]): Promise<string>;
  /** Server output (warnings and errors) so far, then the tail of its log file. */
  log(): Promise<string>;
  /** Stop the server by its PID (SIGTERM, or SIGKILL for a hard stop) and remove dir. */
  stop(opts?: { signal?: 'SIGTERM' | 'SIGKILL' }): Promise<void>;
}

export interface GoloopOptions {
  /** Channel name (default icon_dex, as on MainNet). */
  channel?: string;
  /** Network id (default 1, as on MainNet); the cid comes from the genesis hash. */
  nid?: number;
  /** Target block interval in ms (default 100; goloop's default is 1000). */
  blockIntervalMs?: number;
  /** How long to wait for the first block (default 60 s). */
  startTimeoutMs?: number;
}

const KEY_PASSWORD = 'bed-goloop';

function hex(n: number | bigint): string {
  return '0x' + n.toString(16);
}

/** HTTP over the control socket; rejects on a status other than 2xx. */
function socketRequest(
  sock: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<string> {
  return new Promise((res, rej) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = request(
      {
        socketPath: sock,
        method,
        path,
        headers: data === undefined ? {} : { 'content-type': 'application/json' },
        timeout: 60_000,
      },
      (r) => {
        let text = '';
        r.setEncoding('utf8');
        r.on('data', (c: string) => (text += c));
        r.on('end', () => {
          const code = r.statusCode ?? 0;
          if (code >= 200 && code < 300) res(text);
          else rej(new Error(`${method} ${path} on ${sock}: HTTP ${code} ${text}`));
        });
        r.on('error', rej);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`${method} ${path} on ${sock}: timed out`)));
    req.on('error', rej);
    req.end(data);
  });
}

/** One JSON-RPC call (`url` is `{rpc}/api/v3/{channel}`); an error answer throws. */
export async function jsonRpc<T>(url: string, method: string, params: unknown): Promise<T> {
  const r = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ jsonrpc: '2.0', id: 1, method, params }),
    signal: AbortSignal.timeout(10_000),
  });
  const j = (await r.json()) as { result?: T; error?: { code: number; message: string } };
  if (j.error !== undefined || j.result === undefined)
    throw new Error(`${method} at ${url}: ${JSON.stringify(j.error ?? j)}`);
  return j.result;
}

/** The block hash (hex, no 0x) at `height` of the node whose JSON-RPC is `url`: of any node, not only one started here. */
export async function blockHashAt(url: string, height: number): Promise<string> {
  const b = await jsonRpc<{ block_hash: string }>(url, 'icx_getBlockByHeight', {
    height: `0x${height.toString(16)}`,
  });
  return b.block_hash.replace(/^0x/, '');
}

/** The balance in loop of `address` on the node whose JSON-RPC is `url`. */
export async function balanceAt(url: string, address: string): Promise<bigint> {
  return BigInt(await jsonRpc<string>(url, 'icx_getBalance', { address }));
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Resolves once the transaction is in a block of the node whose JSON-RPC is `url`; throws if it failed. */
export async function waitForTransaction(
  url: string,
  txHash: string,
  timeoutMs = 30_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let r: { status: string; failure?: unknown } | undefined;
    let pending: unknown;
    try {
      r = await jsonRpc<{ status: string; failure?: unknown }>(url, 'icx_getTransactionResult', {
        txHash,
      });
    } catch (err) {
      // Pending or not yet known: poll.
      pending = err;
    }
    if (r !== undefined) {
      if (r.status === '0x1') return;
      throw new Error(`transaction ${txHash} failed: ${JSON.stringify(r)}`);
    }
    if (Date.now() > deadline)
      throw new Error(
        `transaction ${txHash} not in a block within ${timeoutMs} ms: ${String(pending)}`,
        { cause: pending },
      );
    await sleep(50);
  }
}

/** The wallet that signs a transfer: its keystore file, password, and the network's nid (0x…). */
export interface GoloopWallet {
  keystore: string;
  password: string;
  nid: string;
}

/**
 * Sends `amount` loop from `wallet` to `to` on the node whose JSON-RPC is `url` (any node, not
 * only one started here), with the goloop CLI, and waits until the transfer is in a block.
 */
export async function transferAt(
  url: string,
  wallet: GoloopWallet,
  to: string,
  amount: bigint,
): Promise<GoloopTransfer> {
  const { stdout } = await run(
    goloopBin(),
    [
      'rpc',
      'sendtx',
      'transfer',
      '--uri',
      url,
      '--nid',
      wallet.nid,
      '--key_store',
      wallet.keystore,
      '--key_password',
      wallet.password,
      '--step_limit',
      '100000',
      '--to',
      to,
      '--value',
      hex(amount),
    ],
    // GOLOOP_* variables of the caller would change what the CLI does: a clean env.
    { env: { PATH: process.env.PATH, HOME: process.env.HOME } },
  );
  const txHash = JSON.parse(stdout) as string;
  await waitForTransaction(url, txHash);
  return { to, amount, txHash };
}

/** A random, valid-looking EOA address (hx + 20 bytes). */
export function randomAddress(): string {
  return 'hx' + randomBytes(20).toString('hex');
}

/** Start a goloop server with one single-validator chain, and wait for its first block. */
export async function startGoloop(opts: GoloopOptions = {}): Promise<GoloopNode> {
  const bin = goloopBin();
  if (!existsSync(bin)) throw new Error(`${bin} not found: run bash test/bed/install.sh`);
  const channel = opts.channel ?? 'icon_dex';
  const nidNum = opts.nid ?? 1;
  const blockIntervalMs = opts.blockIntervalMs ?? 100;
  const startTimeoutMs = opts.startTimeoutMs ?? 60_000;

  const dir = await mkdtemp(join(tmpdir(), 'bed-goloop-'));
  removeAtExit(dir);
  const nodeDir = join(dir, 'data');
  const sock = join(nodeDir, 'cli.sock');
  const keystore = join(dir, 'keystore.json');
  const logFile = join(dir, 'goloop.log');
  // GOLOOP_* variables of the caller would change what the CLI does: start from a clean env.
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: dir, GOLOOP_NODE_SOCK: sock };
  const goloop = async (args: string[]): Promise<string> =>
    (await run(bin, args, { cwd: dir, env })).stdout;

  let server: Server | undefined;
  try {
    await mkdir(nodeDir);
    await goloop(['ks', 'gen', '--out', keystore, '--password', KEY_PASSWORD]);
    const address = (JSON.parse(await readFile(keystore, 'utf8')) as { address: string }).address;

    // Genesis: the wallet is the only validator and holds the whole supply (god). Fee "none"
    // (the default) makes a transfer cost nothing, so balances add up exactly.
    // blockInterval/commitTimeout are ms in hex (goloop chainscore `Chain` config).
    const genesisJson = join(dir, 'genesis.json');
    await goloop([
      'gn',
      'gen',
      '--out',
      genesisJson,
      '--god',
      keystore,
      '--config',
      `blockInterval=${hex(blockIntervalMs)}`,
      '--config',
      `commitTimeout=${hex(Math.max(1, Math.floor(blockIntervalMs / 2)))}`,
      keystore,
    ]);
    const genesis = JSON.parse(await readFile(genesisJson, 'utf8')) as {
      nid?: string;
      accounts: { address: string; balance: string; name: string }[];
    };
    genesis.nid = hex(nidNum);
    await writeFile(genesisJson, JSON.stringify(genesis, null, 2));
    const supply = BigInt(genesis.accounts.find((a) => a.name === 'god')?.balance ?? '0x0');
    const gsZip = join(dir, 'gs.zip');
    await goloop(['gs', 'gen', '--input', genesisJson, '--out', gsZip]);

    const rpcPort = await freePort();
    let p2pPort = await freePort();
    while (p2pPort === rpcPort) p2pPort = await freePort();
    const rpcUrl = `http://127.0.0.1:${rpcPort}`;
    const t0 = Date.now();
    const srv = spawnServer(
      bin,
      [
        'server',
        'start',
        '--node_dir',
        nodeDir,
        '--node_sock',
        sock,
        '--rpc_addr',
        `127.0.0.1:${rpcPort}`,
        '--p2p',
        `127.0.0.1:${p2pPort}`,
        '--p2p_listen',
        `127.0.0.1:${p2pPort}`,
        '--key_store',
        keystore,
        '--key_password',
        KEY_PASSWORD,
        // Several lines per block at info level: keep the console for warnings, the rest in a file.
        '--console_level',
        'warn',
        '--log_level',
        'info',
        '--log_writer_filename',
        logFile,
        '--log_writer_maxsize',
        '20',
        '--log_writer_maxbackups',
        '1',
      ],
      { cwd: dir, env, group: true },
    );
    server = srv;
    const log = async (): Promise<string> => {
      let file = '';
      try {
        file = (await readFile(logFile, 'utf8')).slice(-20_000);
      } catch {
        /* no log yet */
      }
      return `${srv.log()}\n--- ${logFile} (tail) ---\n${file}`;
    };
    const alive = async (): Promise<void> => {
      if (srv.child.exitCode !== null || srv.child.signalCode !== null)
        throw new Error(`goloop server exited:\n${await log()}`);
    };

    // The control socket answers once the server is up.
    const sockDeadline = Date.now() + startTimeoutMs;
    for (;;) {
      await alive();
      try {
        await socketRequest(sock, 'GET', '/chain');
        break;
      } catch {
        if (Date.now() > sockDeadline)
          throw new Error(
            `goloop: ${sock} not answering within ${startTimeoutMs} ms:\n${await log()}`,
          );
        await sleep(50);
      }
    }

    const joined = await goloop([
      'chain',
      'join',
      '--genesis',
      gsZip,
      '--channel',
      channel,
      '--seed',
      `127.0.0.1:${p2pPort}`,
    ]);
    const cidParam = joined.trim();
    if (!/^0x[0-9a-f]+$/.test(cidParam)) throw new Error(`goloop chain join printed ${joined}`);
    await goloop(['chain', 'start', cidParam]);
    const cid = cidParam.slice(2);
    const nid = nidNum.toString(16);
    const chainDir = join(nodeDir, cid);
    const rpc = `${rpcUrl}/api/v3/${channel}`;

    const chain = async (): Promise<GoloopChainInfo> => {
      const r = await fetch(`${rpcUrl}/admin/chain`, { signal: AbortSignal.timeout(10_000) });
      if (!r.ok) throw new Error(`GET ${rpcUrl}/admin/chain: HTTP ${r.status}`);
      const list = (await r.json()) as GoloopChainInfo[];
      const c = list.find((x) => x.cid === cidParam);
      if (c === undefined)
        throw new Error(`chain ${cidParam} not in /admin/chain: ${JSON.stringify(list)}`);
      return c;
    };
    const waitForHeight = async (h: number, timeoutMs = 60_000): Promise<number> => {
      const deadline = Date.now() + timeoutMs;
      let last: GoloopChainInfo | undefined;
      for (;;) {
        await alive();
        try {
          last = await chain();
          if (last.state === 'started' && last.height >= h) return last.height;
        } catch {
          /* RPC not up yet */
        }
        if (Date.now() > deadline)
          throw new Error(
            `goloop: height ${h} not reached within ${timeoutMs} ms (last: ${JSON.stringify(last)}):\n${await log()}`,
          );
        await sleep(50);
      }
    };
    await waitForHeight(1, startTimeoutMs);
    const startMs = Date.now() - t0;

    const wallet = { keystore, password: KEY_PASSWORD, nid: hex(nidNum) };
    const transfer = (to: string, amount: bigint): Promise<GoloopTransfer> =>
      transferAt(rpc, wallet, to, amount);
    const load = async (
      n: number,
      o: { amount?: bigint; concurrency?: number } = {},
    ): Promise<GoloopTransfer[]> => {
      const done: GoloopTransfer[] = [];
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < n) {
          const i = next++;
          done[i] = await transfer(randomAddress(), o.amount ?? 10n ** 18n + BigInt(i));
        }
      };
      await Promise.all(Array.from({ length: Math.min(n, o.concurrency ?? 4) }, worker));
      return done;
    };

    let stopped = false;
    return {
      dir,
      nodeDir,
      cid,
      nid,
      chainDir,
      dbDir: join(chainDir, 'db', nid),
      channel,
      rpcUrl,
      rpcPort,
      p2pPort,
      sock,
      keystore,
      keyPassword: KEY_PASSWORD,
      address,
      supply,
      startMs,
      pid: srv.child.pid ?? -1,
      chain,
      height: async () => (await chain()).height,
      blockHash: (h) => blockHashAt(rpc, h),
      balance: (a) => balanceAt(rpc, a),
      transfer,
      load,
      waitForHeight,
      // The socket answers a stop before the chain has stopped ('stopping'): a start or a
      // backup sent then is refused with InvalidState, so the stop waits for the state to settle.
      chainStop: async () => {
        const answer = await socketRequest(sock, 'POST', `/chain/${cidParam}/stop`);
        const deadline = Date.now() + 30_000;
        while ((await chain()).state === 'stopping') {
          if (Date.now() > deadline) throw new Error(`chain ${cidParam} still stopping after 30 s`);
          await sleep(20);
        }
        return answer;
      },
      chainStart: () => socketRequest(sock, 'POST', `/chain/${cidParam}/start`),
      chainBackupManual: () =>
        socketRequest(sock, 'POST', `/chain/${cidParam}/backup`, { manual: true }),
      cli: goloop,
      log,
      stop: async (o = {}) => {
        if (stopped) return;
        stopped = true;
        if (o.signal === 'SIGKILL') {
          try {
            process.kill(-(srv.child.pid as number), 'SIGKILL');
          } catch {
            /* gone */
          }
        }
        // goloop closes its chains on SIGTERM; that takes a second or two.
        await srv.kill(15_000);
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await server?.kill(15_000);
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
