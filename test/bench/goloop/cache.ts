/**
 * The grown node, made once per size in ~/.cache/prep-snapshot/bench-goloop-<size>: a fresh
 * single-validator chain, stopped, its database grown with ballast (see index.ts), checked.
 */
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeBallast } from '../../bed/goloop-ballast.js';
import { startGoloop } from '../../bed/goloop.js';
import { cacheDir } from '../../bed/paths.js';
import { cachedOnce, exec, GiB, logger, sleep } from '../kit.js';
import { alive, prepareHome, startHome, stopHome, waitAbove, type NodeMeta } from './node.js';

const log = logger('goloop');
const BLOCK_INTERVAL_MS = 100;

export { tableFiles } from '../../bed/goloop-ballast.js';
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
