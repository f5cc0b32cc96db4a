/**
 * Churn on a running goloop node: ICX transfers through its JSON-RPC, each carrying a message of
 * random bytes, until the table files that a snapshot did not hold make up a share of the
 * database. goloop stores each transaction (its message in hex) in its blocks, flushes them to
 * new table files and compacts those with its own earlier ones: every byte of churn is the
 * node's own writing.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomAddress } from '../../bed/goloop.js';
import { goloopBin } from '../../bed/paths.js';
import { errorText, exec, fmtB, logger, sleep } from '../kit.js';
import { chainInfo, jsonRpc, type Home } from '../goloop/node.js';

const log = logger('churn');

/**
 * Bytes of random message in each transfer (32 KiB of hex in the transaction; goloop takes up to
 * 512 KiB): at the pace of two senders, a block of some tens of KiB every 100 ms.
 */
export const MESSAGE_BYTES = 16 * 1024;
/** Transfers signed and sent at once (each is a `goloop rpc sendtx` process: scrypt, then a POST). */
const SENDERS = 2;

/** The regular files of a LevelDB dir, name to size (a file compacted away meanwhile is left out). */
export function dbFiles(dbDir: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const f of readdirSync(dbDir)) {
    try {
      const st = statSync(join(dbDir, f));
      if (st.isFile()) out.set(f, st.size);
    } catch {
      /* compacted away meanwhile */
    }
  }
  return out;
}

export interface NewTables {
  /** Bytes and count of the table files (`*.ldb`) whose names are not in the earlier set. */
  bytes: number;
  files: number;
  /** Bytes of every file counted. */
  total: number;
  /** bytes / total */
  share: number;
}

/** What of `files` (name or path to size) is in table files that `before` does not name. */
export function newTables(files: Map<string, number>, before: Set<string>): NewTables {
  let bytes = 0;
  let count = 0;
  let total = 0;
  for (const [name, size] of files) {
    total += size;
    if (name.endsWith('.ldb') && !before.has(name)) {
      bytes += size;
      count++;
    }
  }
  return { bytes, files: count, total, share: total > 0 ? bytes / total : 0 };
}

export interface LoadFigures {
  /** Transfers the node accepted, and those in a block with status 1 when the load ended. */
  transfers: number;
  confirmed: number;
  /** Sends the node refused (the CLI failed), and accepted transfers that failed or never came. */
  refused: number;
  unconfirmed: number;
  messageBytes: number;
  /** From the first transfer to the last count, the settling included. */
  seconds: number;
  /** Loads until the count held after the compactions settled. */
  rounds: number;
  fromHeight: number;
  toHeight: number;
  /** The db dir once the load stopped and the compactions settled, against the full backup's table files. */
  reached: NewTables;
  target: number;
  /** Whether the target share was reached before the time limit. */
  met: boolean;
}

/**
 * Sends transfers from the node's wallet to fresh addresses, SENDERS at a time, until the table
 * files of `dbDir` that `before` does not name hold `target` of its bytes once the load has
 * stopped and the node's compactions have settled, or `limitMs` passed.
 */
export async function churn(
  home: Home,
  dbDir: string,
  before: Set<string>,
  opts: { target: number; limitMs: number; workDir: string },
): Promise<LoadFigures> {
  mkdirSync(opts.workDir, { recursive: true });
  const rpc = `${home.rpcUrl}/api/v3/${home.meta.channel}`;
  const keystore = join(home.dir, 'keystore.json');
  const env = { PATH: process.env.PATH ?? '', HOME: home.dir };
  const hashes: string[] = [];
  let refused = 0;
  let lastRefusal = '';
  let done = false;
  let n = 0;
  const sender = async (): Promise<void> => {
    while (!done) {
      const file = join(opts.workDir, `tx-${n++}.json`);
      writeFileSync(
        file,
        JSON.stringify({
          to: randomAddress(),
          value: '0x' + (10n ** 18n + BigInt(n)).toString(16),
          dataType: 'message',
          data: '0x' + randomBytes(MESSAGE_BYTES).toString('hex'),
        }),
      );
      try {
        const { stdout } = await exec(
          goloopBin(),
          [
            'rpc',
            'sendtx',
            'raw',
            file,
            '--uri',
            rpc,
            '--nid',
            `0x${home.meta.nid}`,
            '--key_store',
            keystore,
            '--key_password',
            home.meta.keyPassword,
            '--step_limit',
            '100000000',
          ],
          { env, maxBuffer: 1 << 20 },
        );
        hashes.push(JSON.parse(stdout) as string);
      } catch (error) {
        refused++;
        lastRefusal = errorText(error).slice(0, 300);
        await sleep(200);
      } finally {
        rmSync(file, { force: true });
      }
    }
  };

  const fromHeight = (await chainInfo(home)).height;
  const t0 = Date.now();
  const timeUp = (): boolean => Date.now() - t0 >= opts.limitMs;
  let now = newTables(dbFiles(dbDir), before);
  let lastLog = Date.now();
  let rounds = 0;
  // Load until the dir shows the target; then, the load stopped, let the node's compactions
  // settle (a compaction's outputs are there before its inputs go) and count again.
  for (;;) {
    rounds++;
    done = false;
    const senders = Array.from({ length: SENDERS }, sender);
    try {
      while (now.share < opts.target && !timeUp()) {
        if (refused > 20 && hashes.length === 0)
          throw new Error(`the node refuses every transfer: ${lastRefusal}`);
        await sleep(500);
        now = newTables(dbFiles(dbDir), before);
        if (Date.now() - lastLog > 10_000) {
          lastLog = Date.now();
          log(
            `${hashes.length} transfers, ${fmtB(now.bytes)} in ${now.files} new table files: ` +
              `${(now.share * 100).toFixed(2)} % of ${fmtB(now.total)}`,
          );
        }
      }
    } finally {
      done = true;
      await Promise.all(senders);
    }
    now = await settled(dbDir, before);
    if (now.share >= opts.target || timeUp()) break;
    log(
      `${(now.share * 100).toFixed(2)} % once the compactions settled (${hashes.length} transfers): more load`,
    );
  }
  const seconds = (Date.now() - t0) / 1000;
  const toHeight = (await chainInfo(home)).height;
  if (refused > 0) log(`${refused} sends refused; the last: ${lastRefusal}`);
  const confirmed = await confirm(home, hashes);
  return {
    transfers: hashes.length,
    confirmed,
    refused,
    unconfirmed: hashes.length - confirmed,
    messageBytes: hashes.length * MESSAGE_BYTES,
    seconds,
    rounds,
    fromHeight,
    toHeight,
    reached: now,
    target: opts.target,
    met: now.share >= opts.target,
  };
}

/** The new tables once the dir's names have not changed for 3 s (at most 60 s). */
async function settled(dbDir: string, before: Set<string>): Promise<NewTables> {
  const names = (): string => [...dbFiles(dbDir).keys()].sort().join(' ');
  const deadline = Date.now() + 60_000;
  let last = names();
  let since = Date.now();
  while (Date.now() - since < 3000 && Date.now() < deadline) {
    await sleep(250);
    const n = names();
    if (n !== last) {
      last = n;
      since = Date.now();
    }
  }
  return newTables(dbFiles(dbDir), before);
}

/** How many of the transactions are in a block with status 1 (each waited for up to 60 s). */
async function confirm(home: Home, hashes: string[]): Promise<number> {
  let ok = 0;
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < hashes.length) {
      const txHash = hashes[next++] as string;
      const deadline = Date.now() + 60_000;
      for (;;) {
        const r = await jsonRpc<{ status: string }>(home, 'icx_getTransactionResult', {
          txHash,
        }).catch(() => undefined);
        if (r) {
          if (r.status === '0x1') ok++;
          break;
        }
        if (Date.now() > deadline) break;
        await sleep(100);
      }
    }
  };
  await Promise.all(Array.from({ length: 8 }, worker));
  return ok;
}
