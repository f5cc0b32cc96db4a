/**
 * The data channel's reader on the runner: a real child process (`cat`, as `ssh` would)
 * writes into a Unix socket, and the reader lands each read in the buffer it was lent.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { socketSource, type ByteSink, type ByteSource } from '../../src/byte-source.ts';

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
