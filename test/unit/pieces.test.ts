/**
 * The pieces that a restore's reads hold their bytes in (src/s3/pieces.ts): bytes come out as
 * they went in, whatever the sizes of the views copied in, and a piece given back is the one
 * taken next.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { MemoryPool, PIECE_BYTES, PieceList } from '../../src/s3/pieces.ts';

describe('PieceList', () => {
  it('hands whole pieces on as they fill, the rest once asked for it, in order', () => {
    const pool = new MemoryPool();
    const list = new PieceList(pool);
    const data = randomBytes(2 * PIECE_BYTES + 1000);
    // Views of one buffer used again between the calls, as a socket's read buffer is.
    const reused = Buffer.alloc(70_000);
    for (let at = 0; at < data.length; at += reused.length) {
      const n = Math.min(reused.length, data.length - at);
      data.copy(reused, 0, at, at + n);
      list.add(reused.subarray(0, n));
      reused.fill(0);
    }
    const out: Buffer[] = [];
    for (let p = list.shift(false); p; p = list.shift(false)) {
      assert.equal(p.bytes.length, PIECE_BYTES);
      out.push(Buffer.from(p.bytes));
      pool.give(p.piece);
    }
    assert.equal(out.length, 2, 'the part-filled piece waits');
    const last = list.shift(true);
    assert.equal(last?.bytes.length, 1000);
    out.push(Buffer.from(last?.bytes ?? []));
    assert.equal(list.shift(true), undefined);
    assert.ok(Buffer.concat(out).equals(data));
  });

  it('a piece given back is taken again; clear gives back every piece', () => {
    const pool = new MemoryPool();
    const list = new PieceList(pool);
    list.add(randomBytes(PIECE_BYTES));
    const first = list.shift(false);
    assert.ok(first);
    pool.give(first.piece);
    list.add(randomBytes(10));
    const again = list.shift(true);
    assert.equal(again?.piece, first.piece);
    const other = new PieceList(pool);
    other.add(randomBytes(PIECE_BYTES + 1));
    other.clear();
    assert.equal(other.shift(true), undefined);
    const taken = new Set([pool.take(), pool.take()]);
    assert.equal(taken.size, 2);
  });
});
