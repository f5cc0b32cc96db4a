// The test bed's ICON 2 node: a real goloop v1.4.4 single-validator chain.
//
// Start (keystore, genesis, `server start`, `chain join`, `chain start`, first block) took
// 0.6 to 0.75 s on a 2-core machine with a load average of 3; more on a busier one. The
// node's startMs says how long it took. With the bed's 100 ms block interval the chain
// makes about 10 blocks per second; 20 transfers (CLI, 4 at a time) take 2 to 5 s. Nothing
// here asserts a timing.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { randomAddress, startGoloop, type GoloopNode } from '../bed/goloop.js';
import { goloopMissing } from '../bed/paths.js';

describe('goloop node', { skip: goloopMissing() }, () => {
  let g: GoloopNode;
  before(async () => {
    g = await startGoloop();
  });
  after(async () => {
    await g?.stop();
  });

  it('describes itself', () => {
    assert.match(g.cid, /^[0-9a-f]+$/);
    assert.equal(g.nid, '1');
    assert.equal(g.channel, 'icon_dex');
    assert.equal(g.chainDir, join(g.nodeDir, g.cid));
    assert.equal(g.dbDir, join(g.nodeDir, g.cid, 'db', '1'));
    assert.equal(g.sock, join(g.nodeDir, 'cli.sock'));
    assert.match(g.rpcUrl, /^http:\/\/127\.0\.0\.1:\d+$/);
    assert.match(g.address, /^hx[0-9a-f]{40}$/);
  });

  it('produces blocks, reported by /admin/chain', async () => {
    const c = await g.chain();
    assert.equal(c.state, 'started');
    assert.equal(c.cid, `0x${g.cid}`);
    assert.equal(c.nid, `0x${g.nid}`);
    assert.equal(c.channel, 'icon_dex');
    const h0 = await g.height();
    const h1 = await g.waitForHeight(h0 + 5);
    assert.ok(h1 >= h0 + 5);
    assert.match(await g.blockHash(h1), /^[0-9a-f]{64}$/);
    assert.notEqual(await g.blockHash(h1), await g.blockHash(h1 - 1));
  });

  it('takes 20 transfers and the balances add up', async () => {
    const before = await g.balance(g.address);
    assert.equal(before, g.supply);
    const sent = await g.load(20);
    assert.equal(sent.length, 20);
    assert.equal(new Set(sent.map((t) => t.to)).size, 20);
    let total = 0n;
    for (const t of sent) {
      assert.equal(await g.balance(t.to), t.amount);
      total += t.amount;
    }
    // Fee "none": the sender pays exactly what it sent.
    assert.equal(await g.balance(g.address), before - total);
    const one = await g.transfer(randomAddress(), 7n);
    assert.equal(await g.balance(one.to), 7n);
  });

  it('keeps the chain folder as goloop lays it out', () => {
    const top = readdirSync(g.nodeDir).sort();
    for (const name of [g.cid, 'cli.sock', 'auth.json', 'rconfig.json'])
      assert.ok(top.includes(name), `${name} in ${top.join(', ')}`);
    assert.ok(statSync(g.sock).isSocket());
    for (const name of ['config.json', 'genesis.zip'])
      assert.ok(statSync(join(g.chainDir, name)).isFile(), name);
    for (const name of ['wal', 'contract', 'db'])
      assert.ok(statSync(join(g.chainDir, name)).isDirectory(), name);
    assert.deepEqual(readdirSync(join(g.chainDir, 'db')), [g.nid]);
    const db = readdirSync(g.dbDir);
    assert.ok(db.includes('CURRENT'), db.join(', '));
    assert.ok(
      db.some((f) => /^MANIFEST-\d+$/.test(f)),
      db.join(', '),
    );
    assert.ok(
      db.some((f) => /^\d+\.(ldb|log)$/.test(f)),
      db.join(', '),
    );
    assert.ok(readdirSync(join(g.chainDir, 'wal')).length > 0);
  });

  it('stop, backup --manual, stop, start over the socket; the chain goes on', async () => {
    const h = await g.waitForHeight((await g.height()) + 2);
    const hash = await g.blockHash(h);

    assert.equal(await g.chainStop(), 'OK');
    assert.equal((await g.chain()).state, 'stopped');
    assert.equal(await g.chainBackupManual(), 'manual');
    assert.equal((await g.chain()).state, 'backup manual');
    // The database is closed: its files are all there for a copy.
    assert.ok(existsSync(join(g.dbDir, 'CURRENT')));
    assert.equal(await g.chainStop(), 'OK');
    assert.equal(await g.chainStart(), 'OK');

    const after = await g.waitForHeight(h + 5);
    assert.ok(after >= h + 5);
    assert.equal(await g.blockHash(h), hash);
    assert.equal((await g.chain()).lastError, '');
  });

  it('the goloop CLI drives the same socket', async () => {
    const cid = `0x${g.cid}`;
    // Like the socket, the CLI's stop returns while the chain may still be stopping.
    const settled = async () => {
      while ((await g.chain()).state === 'stopping') await new Promise((r) => setTimeout(r, 20));
    };
    await g.cli(['chain', 'stop', cid]);
    await settled();
    await g.cli(['chain', 'backup', '--manual', cid]);
    assert.equal((await g.chain()).state, 'backup manual');
    await g.cli(['chain', 'stop', cid]);
    await settled();
    await g.cli(['chain', 'start', cid]);
    await g.waitForHeight((await g.height()) + 3);
  });
});

describe('goloop node stop', { skip: goloopMissing() }, () => {
  it('stop() ends the server and removes its dir, also with SIGKILL', async () => {
    for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
      const g = await startGoloop();
      await g.waitForHeight(2);
      await g.stop({ signal });
      assert.equal(existsSync(g.dir), false);
      assert.throws(() => process.kill(g.pid, 0), /ESRCH/);
      await assert.rejects(fetch(`${g.rpcUrl}/admin/chain`));
    }
  });
});
