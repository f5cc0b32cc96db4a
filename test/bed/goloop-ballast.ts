/**
 * Ballast for a goloop node's database: random 4 KiB values under keys that start with eight
 * 0xff bytes and are not 32 bytes long. goloop reads its database only by key (a 32-byte hash,
 * or a key under one of its bucket prefixes) and never iterates it, so it never reads them;
 * they sort after every key it writes, so its compactions leave them alone. Written with
 * classic-level (LevelDB 1.20, the same on-disk format), compression off, while the database
 * is closed: by the bench's cached node, and by tests that need table files of some size.
 */
import { randomBytes } from 'node:crypto';
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { ClassicLevel } from 'classic-level';
import type { GoloopNode } from './goloop.js';

const MiB = 1024 ** 2;

/** Eight 0xff bytes and a name: after every key goloop writes, and never 32 bytes long. */
const BALLAST_PREFIX = Buffer.concat([Buffer.alloc(8, 0xff), Buffer.from('ballast/')]);
const BALLAST_VALUE_BYTES = 4096;

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

export async function writeBallast(dbDir: string, targetBytes: number): Promise<number> {
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

/**
 * Grows a running node's database by about `bytes` of table files: the chain is stopped and its
 * database closed through the control socket, the ballast written, and the chain started again.
 */
export async function growDatabase(g: GoloopNode, bytes: number): Promise<void> {
  const dbDir = g.dbDir;
  await g.chainStop();
  await g.chainBackupManual();
  try {
    await writeBallast(dbDir, tableFiles(dbDir).bytes + bytes);
  } finally {
    await g.chainStop();
    await g.chainStart();
  }
}
