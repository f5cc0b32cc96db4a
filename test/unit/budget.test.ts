/**
 * The tree backup's budget of files and bytes in flight, and the memory it lends for them.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Budget } from '../../src/tree/budget.ts';

const MiB = 1024 * 1024;

describe('Budget', () => {
  it('lends a buffer of the size asked for, and lends the same memory again once given back', async () => {
    const budget = new Budget(4, 64 * MiB);
    const a = await budget.take(3 * MiB + 5);
    assert.equal(a.length, 3 * MiB + 5);
    budget.give(a);
    const b = await budget.take(2 * MiB);
    assert.equal(b.length, 2 * MiB);
    assert.equal(b.buffer, a.buffer, 'the buffer given back is lent again');
    const c = await budget.take(2 * MiB);
    assert.notEqual(c.buffer, a.buffer, 'one buffer is lent to one file at a time');
    budget.give(b);
    budget.give(c);
    assert.ok(budget.idle);
  });

  it('waits while the files or the bytes in flight are at their limit', async () => {
    const budget = new Budget(2, 10 * MiB);
    const a = await budget.take(6 * MiB);
    const b = await budget.take(1 * MiB);
    const got: { third?: Buffer; big?: Buffer } = {};
    const waiting = budget.take(1 * MiB).then((x) => (got.third = x));
    await new Promise((r) => setImmediate(r));
    assert.equal(got.third, undefined, 'two files are in flight: the third waits');
    budget.give(b);
    budget.give(await waiting);
    // One file in flight, of 6 MiB: another of 8 MiB would be over the 10 MiB budget.
    const bigWait = budget.take(8 * MiB).then((x) => (got.big = x));
    await new Promise((r) => setImmediate(r));
    assert.equal(got.big, undefined, '6 + 8 MiB is over the 10 MiB budget');
    budget.give(a);
    const big = await bigWait;
    assert.equal(big.length, 8 * MiB);
    budget.give(big);
    assert.ok(budget.idle);
  });

  it('keeps no more memory than the budget when the sizes change', async () => {
    const budget = new Budget(4, 8 * MiB);
    const seen = new Set<ArrayBufferLike>();
    // Small files first, then larger ones that none of the buffers given back can hold.
    for (const size of [MiB, MiB, MiB, MiB, 3 * MiB, 3 * MiB, 5 * MiB, 7 * MiB]) {
      const lent = await budget.take(size);
      seen.add(lent.buffer);
      budget.give(lent);
    }
    const kept = (budget as unknown as { freeBytes: number }).freeBytes;
    assert.ok(kept <= 8 * MiB, `${kept / MiB} MiB kept`);
    assert.ok(seen.size < 8, 'buffers that fit were lent again');
  });

  it('refuses a buffer it did not lend', () => {
    assert.throws(() => new Budget(1, MiB).give(Buffer.alloc(10)), /did not lend/);
  });
});
