/**
 * The grown node, made once per size in ~/.cache/prep-snapshot/bench-goloop-<size>: a fresh
 * single-validator chain, stopped, its database grown with ballast (see index.ts), checked.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ClassicLevel } from 'classic-level';
import { startGoloop } from '../../bed/goloop.js';
import { cacheDir } from '../../bed/paths.js';
import { cachedOnce, exec, GiB, logger, MiB, sleep } from '../kit.js';
import { alive, prepareHome, startHome, stopHome, waitAbove, type NodeMeta } from './node.js';

const log = logger('goloop');
/** Eight 0xff bytes and a name: after every key goloop writes, and never 32 bytes long. */
const BALLAST_PREFIX = Buffer.concat([Buffer.alloc(8, 0xff), Buffer.from('bench-ballast/')]);
const BALLAST_VALUE_BYTES = 4096;
const BLOCK_INTERVAL_MS = 100;

/** Bytes and count of the table files (`*.ldb`) in a LevelDB directory. */
export function tableFiles(dbDir: string): { bytes: number; files: number } {
  let bytes = 0;
  let files = 0;
  for (const f of readdirSync(dbDir)) {
    if (!f.endsWith('.ldb')) continue;
    try {
      bytes += statSync(join(dbDir, f)).size;
      files++;
    } catch {
      /* compacted away meanwhile */
    }
  }
  return { bytes, files };
}

async function writeBallast(dbDir: string, targetBytes: number): Promise<number> {
  let counter = 0;
  for (let round = 0; round < 10; round++) {
    const have = tableFiles(dbDir).bytes;
    if (have >= targetBytes) return have;
    const values = Math.ceil((targetBytes - have) / BALLAST_VALUE_BYTES) + 16;
    const db = new ClassicLevel<Buffer, Buffer>(dbDir, {
      keyEncoding: 'buffer',
      valueEncoding: 'buffer',
      createIfMissing: false,
      compression: false,
      writeBufferSize: 4 * MiB,
    });
    await db.open();
    const perBatch = 256;
    for (let done = 0; done < values; done += perBatch) {
      const n = Math.min(perBatch, values - done);
      const data = randomBytes(n * BALLAST_VALUE_BYTES);
      const ops = [];
      for (let i = 0; i < n; i++) {
        const key = Buffer.alloc(BALLAST_PREFIX.length + 8);
        BALLAST_PREFIX.copy(key);
        key.writeBigUInt64BE(BigInt(counter++), BALLAST_PREFIX.length);
        ops.push({
          type: 'put' as const,
          key,
          value: data.subarray(i * BALLAST_VALUE_BYTES, (i + 1) * BALLAST_VALUE_BYTES),
        });
      }
      await db.batch(ops);
    }
    await db.close();
    // LevelDB writes what is still in its log to a table when it opens: open once more, let the
    // compactions it schedules (moves of whole tables: the keys are in order) finish, and close.
    const again = new ClassicLevel(dbDir, { createIfMissing: false, compression: false });
    await again.open();
    await sleep(2000);
    await again.close();
  }
  return tableFiles(dbDir).bytes;
}

/** The node home grown to `sizeGib`, made once (a fresh chain, stopped, ballast, checked). */
export async function cachedNode(sizeGib: number): Promise<string> {
  const say = {
    log,
    reusing: `reusing the ${sizeGib} GiB node`,
    making: (partial: string) => `growing a ${sizeGib} GiB node in ${partial} (once)`,
    made: 'grown',
  };
  return cachedOnce(join(cacheDir(), `bench-goloop-${sizeGib}`), say, async (partial) => {
    const node = await startGoloop({ blockIntervalMs: BLOCK_INTERVAL_MS });
    let meta: NodeMeta;
    try {
      await node.load(20);
      const height = await node.waitForHeight(50);
      meta = {
        cid: node.cid,
        nid: node.nid,
        channel: node.channel,
        keyPassword: node.keyPassword,
        height,
      };
      // Stop the server by its PID (it leads its process group), keep its files.
      process.kill(-node.pid, 'SIGTERM');
      const deadline = Date.now() + 30_000;
      while (alive(node.pid) && Date.now() < deadline) await sleep(50);
      if (alive(node.pid)) throw new Error(`goloop ${node.pid} did not stop within 30 s`);
      mkdirSync(partial);
      await exec('cp', ['-a', node.keystore, join(partial, 'keystore.json')]);
      await exec('cp', ['-a', node.nodeDir, join(partial, 'data')]);
    } finally {
      await node.stop();
    }
    rmSync(join(partial, 'data', 'cli.sock'), { force: true });
    const dbDir = join(partial, 'data', meta.cid, 'db', meta.nid);
    const bytes = await writeBallast(dbDir, sizeGib * GiB);
    log(`ballast written: ${(bytes / GiB).toFixed(2)} GiB of table files`);
    // Check that goloop opens the grown database and goes on producing blocks.
    const check = await prepareHome(partial, meta);
    try {
      await startHome(check);
      meta.height = await waitAbove(check, meta.height + 20);
    } finally {
      await stopHome(check);
    }
    for (const f of ['start.sh', 'server.out', 'goloop.log', 'goloop.pid', 'data/cli.sock'])
      rmSync(join(partial, f), { force: true });
    writeFileSync(join(partial, 'node.json'), JSON.stringify(meta, null, 2) + '\n');
  });
}
