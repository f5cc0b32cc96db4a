/**
 * The data channel's reader on the runner: a real child process (`cat`, as `ssh` would)
 * writes into a Unix socket, and the reader lands each read in the buffer it was lent; and
 * the ring that a tree's transfer reads such a source through.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Readable } from 'node:stream';
import {
  readableSource,
  ringChunks,
  socketSource,
  type ByteSink,
  type ByteSource,
} from '../../src/byte-source.ts';
import { ChunkReader } from '../../src/tree/tar-stream.ts';

const MiB = 1024 * 1024;

/** A sink that lends slices of one buffer, copies what lands elsewhere, and records how. */
class RecordingSink implements ByteSink {
  readonly out: Buffer;
  filled = 0;
  inPlace = 0;
  copied = 0;
  /** When set, space() has nothing to lend (as when every part is in flight). */
  full = false;
  constructor(
    size: number,
    private readonly onWrote: (sink: RecordingSink) => boolean = () => true,
  ) {
    this.out = Buffer.alloc(size);
  }
  space(): Buffer | undefined {
    return this.full ? undefined : this.out.subarray(this.filled);
  }
  wrote(chunk: Buffer): boolean {
    if (
      chunk.buffer === this.out.buffer &&
      chunk.byteOffset === this.out.byteOffset + this.filled
    ) {
      this.inPlace++;
    } else {
      chunk.copy(this.out, this.filled);
      this.copied++;
    }
    this.filled += chunk.length;
    return this.onWrote(this);
  }
}

describe('socketSource: a child writes, the reader lends the buffers', () => {
  let dir: string;
  let file: string;
  const data = randomBytes(24 * MiB + 4321);
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'byte-source-'));
    file = join(dir, 'data');
    writeFileSync(file, data);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  async function catInto(): Promise<ByteSource> {
    const { writer, source } = await socketSource(dir);
    const child = spawn('cat', [file], { stdio: ['ignore', writer, 'inherit'] });
    writer.destroy();
    child.on('error', (e) => source.destroy(e));
    return source;
  }

  it('every byte lands in the lent space, in order, and the end is seen', async () => {
    const source = await catInto();
    const sink = new RecordingSink(data.length + MiB);
    await source.flow(sink);
    assert.equal(sink.filled, data.length);
    assert.ok(sink.out.subarray(0, data.length).equals(data), 'the bytes are those written');
    // The socket was handed its first buffer (the parking space) before the flow began: at
    // most that first read is copied, every later one lands in the lent space.
    assert.ok(sink.copied <= 1, `${sink.copied} reads copied`);
    // How many reads it takes depends on how far cat runs ahead of the reader (a loaded
    // machine gives fewer, larger reads): it is more than the one that may be copied.
    assert.ok(sink.inPlace >= 2, `${sink.inPlace} reads in place`);
  });

  it('a sink that pauses after every read gets every byte when it resumes, even from the parking space', async () => {
    const source = await catInto();
    let pauses = 0;
    const sink = new RecordingSink(data.length + MiB, (s) => {
      // Nothing to lend while paused: the next read after the resume lands in the parking
      // space and is copied; then lending starts again.
      s.full = true;
      pauses++;
      setTimeout(() => {
        s.full = false;
        source.resume();
      }, 1);
      return false;
    });
    await source.flow(sink);
    assert.ok(sink.out.subarray(0, data.length).equals(data), 'the bytes are those written');
    assert.equal(sink.filled, data.length);
    assert.ok(pauses > 10, `${pauses} pauses`);
    assert.ok(sink.copied > 0, 'reads after a resume went through the parking space');
  });

  it('bytes written before the flow starts are kept and come first', async () => {
    const { writer, source } = await socketSource(dir);
    const head = randomBytes(100_000);
    const tail = randomBytes(3 * MiB);
    writer.write(head);
    await new Promise((r) => setTimeout(r, 100));
    const sink = new RecordingSink(head.length + tail.length + MiB);
    const flowing = source.flow(sink);
    writer.end(tail);
    await flowing;
    assert.ok(sink.out.subarray(0, sink.filled).equals(Buffer.concat([head, tail])));
  });

  it('destroy() ends a flow with its error', async () => {
    const { writer, source } = await socketSource(dir);
    const flowing = source.flow(new RecordingSink(MiB));
    writer.write(randomBytes(1000));
    source.destroy(new Error('cut'));
    await assert.rejects(flowing, /cut/);
    writer.destroy();
  });
});

/** Wraps a source to count how each read reached the sink: in the space lent, or copied. */
function counted(source: ByteSource): {
  source: ByteSource;
  counts: { inPlace: number; elsewhere: number; resumes: number };
} {
  const counts = { inPlace: 0, elsewhere: 0, resumes: 0 };
  return {
    counts,
    source: {
      flow: (sink) => {
        let lent: Buffer | undefined;
        return source.flow({
          space: () => (lent = sink.space()),
          wrote: (chunk) => {
            const inPlace =
              lent !== undefined &&
              chunk.buffer === lent.buffer &&
              chunk.byteOffset === lent.byteOffset;
            if (inPlace) counts.inPlace++;
            else counts.elsewhere++;
            return sink.wrote(chunk);
          },
        });
      },
      resume: () => {
        counts.resumes++;
        source.resume();
      },
      destroy: (error) => source.destroy(error),
    },
  };
}

/** Reads `total` bytes through a ChunkReader in uneven steps, with a pause now and then. */
async function readUnevenly(reader: ChunkReader, total: number): Promise<Buffer> {
  const out = Buffer.alloc(total);
  let at = 0;
  let step = 0;
  while (at < total) {
    const piece = await reader.some([1, 511, 4096, 70_000, 300_000][step % 5] as number);
    if (!piece) break;
    piece.copy(out, at);
    at += piece.length;
    if (++step % 7 === 0) await new Promise((r) => setTimeout(r, 1));
  }
  assert.equal(await reader.some(1), undefined, 'the end comes after the last byte');
  return out.subarray(0, at);
}

describe('ringChunks: a source read through one ring', () => {
  let dir: string;
  let file: string;
  const data = randomBytes(16 * MiB + 777);
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'ring-chunks-'));
    file = join(dir, 'data');
    writeFileSync(file, data);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('from a socket: every byte in order, most reads in place, the source paused while the ring is full', async () => {
    const { writer, source } = await socketSource(dir);
    const child = spawn('cat', [file], { stdio: ['ignore', writer, 'inherit'] });
    writer.destroy();
    child.on('error', (e) => source.destroy(e));
    const c = counted(source);
    const got = await readUnevenly(new ChunkReader(ringChunks(c.source, 256 * 1024)), data.length);
    assert.ok(got.equals(data), 'the bytes are those written');
    // The reader is slower than cat: the ring fills, the socket pauses and resumes, and the read
    // it was lent space for at a pause lands in the ring (a quarter is kept for it).
    assert.ok(c.counts.resumes > 5, `${c.counts.resumes} resumes`);
    assert.ok(
      c.counts.elsewhere * 10 <= c.counts.inPlace,
      `${c.counts.inPlace} reads in place, ${c.counts.elsewhere} copied`,
    );
  });

  it('from a Readable whose chunks are larger than the ring: they wait, in order, after it', async () => {
    const sizes = [10, 300_000, 65_536, 1, 1_000_000, 4096, 250_000];
    const chunks: Buffer[] = [];
    for (let at = 0, i = 0; at < data.length; i++) {
      const n = Math.min(sizes[i % sizes.length] as number, data.length - at);
      chunks.push(data.subarray(at, at + n));
      at += n;
    }
    const c = counted(readableSource(Readable.from(chunks)));
    const got = await readUnevenly(new ChunkReader(ringChunks(c.source, 128 * 1024)), data.length);
    assert.ok(got.equals(data), 'the bytes are those given');
    assert.ok(c.counts.resumes > 5, `${c.counts.resumes} resumes`);
  });

  it("a chunk is the ring's own memory, lent until the next is asked for", async () => {
    const ring = ringChunks(readableSource(Readable.from([data.subarray(0, 1000)])), 4096);
    const first = await ring.next();
    assert.equal(first.done, false);
    assert.ok(first.value.equals(data.subarray(0, 1000)));
    assert.equal(first.value.buffer.byteLength >= 4096, true, 'a view of the ring');
    assert.equal((await ring.next()).done, true);
  });

  it("the source's failure reaches the reader", async () => {
    const failing = new Readable({
      read() {
        this.push(data.subarray(0, 5000));
        this.destroy(new Error('the channel was cut'));
      },
    });
    const reader = new ChunkReader(ringChunks(readableSource(failing), 64 * 1024));
    await assert.rejects(readUnevenly(reader, data.length), /the channel was cut/);
  });
});
