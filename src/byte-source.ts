/**
 * Where the archive's bytes come from on the runner, read into buffers that the reader lends.
 *
 * The upload keeps a few part-sized buffers and reuses them. A Readable hands it one new
 * 64 KiB buffer per read, which it copies into a part; over a 1 GiB archive those 16,000
 * buffers kept the garbage collector busy for a fifth of the runner's CPU. A Unix socket
 * read with `onread` writes each read straight into the part: nothing is allocated per
 * read, nothing is copied, and a read takes what the socket holds (about 4x fewer reads).
 */
import { randomBytes } from 'node:crypto';
import { createConnection, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';

export interface ByteSink {
  /** Free space in the part being filled, or undefined when every part buffer is busy. */
  space(): Buffer | undefined;
  /**
   * `chunk` holds the bytes just read. They are in place when `chunk` is the start of the
   * last `space()`, copied otherwise. Returns false when the source should pause.
   */
  wrote(chunk: Buffer): boolean;
}

export interface ByteSource {
  /** Starts the flow into `sink`: resolves when the bytes end, rejects when they stop short. */
  flow(sink: ByteSink): Promise<void>;
  /** Resumes a flow that `wrote` paused. */
  resume(): void;
  destroy(error?: Error): void;
}

/**
 * A Readable as a ByteSource: each chunk is copied into the sink. Its end is watched from the
 * start, so that a destroy before the flow (a failure elsewhere) has a listener; one after its
 * end does nothing.
 */
export function readableSource(body: Readable): ByteSource {
  const ended = finished(body, { writable: false });
  ended.catch(() => undefined);
  return {
    flow: (sink) => {
      body.on('data', (chunk: Buffer) => {
        if (!sink.wrote(chunk)) body.pause();
      });
      // Resolves at the end, rejects on an error or a close before the end.
      return ended;
    },
    resume: () => body.resume(),
    destroy: (error) => {
      if (!body.destroyed && !body.readableEnded) body.destroy(error);
    },
  };
}

/** Where reads land while the sink has no space: the source is paused then, so it is rarely used. */
const PARKING_BYTES = 256 * 1024;

/**
 * A connected pair of Unix sockets in `dir`: `writer` goes to a child process as its stdout
 * (spawn's stdio; close it here once spawned), `source` reads what the child writes.
 */
export async function socketSource(dir: string): Promise<{ writer: Socket; source: ByteSource }> {
  const path = join(dir, `o-${randomBytes(4).toString('hex')}.sock`);
  // sun_path holds 108 bytes with its NUL. Some Node versions cut a longer path short
  // silently, which would put the socket outside `dir`: refuse it here, whatever the version.
  if (Buffer.byteLength(path) > 107) throw new Error(`the socket path would be too long: ${path}`);
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  let sink: ByteSink | undefined;
  const parking = Buffer.allocUnsafe(PARKING_BYTES);
  const early: Buffer[] = [];
  let paused = false;
  let reader: Socket | undefined;
  try {
    const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
    reader = createConnection({
      path,
      onread: {
        buffer: () => sink?.space() ?? parking,
        callback: (n: number, buffer: Uint8Array) => {
          const chunk = Buffer.from(buffer.buffer, buffer.byteOffset, n);
          if (!sink) {
            // Bytes before the flow starts: kept (copied, the parking space is reused) and held.
            early.push(Buffer.from(chunk));
            paused = true;
            return false;
          }
          const more = sink.wrote(chunk);
          paused = !more;
          return more;
        },
      },
    });
    const r = reader;
    await new Promise<void>((resolve, reject) => {
      r.once('connect', resolve);
      r.once('error', reject);
    });
    const writer = await accepted;
    const ended = finished(r, { writable: false });
    ended.catch(() => undefined);
    const source: ByteSource = {
      flow: (s) => {
        sink = s;
        for (const chunk of early.splice(0)) paused = !s.wrote(chunk);
        if (!paused) r.resume();
        return ended;
      },
      resume: () => {
        if (!paused) return;
        paused = false;
        r.resume();
      },
      // One that has ended is not destroyed again: its error would have no listener left.
      destroy: (error) => {
        if (!r.destroyed && !r.readableEnded) r.destroy(error);
      },
    };
    return { writer, source };
  } catch (error) {
    reader?.destroy();
    throw error;
  } finally {
    // The pair is connected (or failed): the listening socket and its path are not needed.
    server.close();
  }
}

/**
 * A ByteSource read as a sequence of chunks, each valid until the next is asked for: the reads
 * land in one ring of `size` bytes (in place where the source can), and the source pauses
 * once three quarters of the ring hold bytes not yet read, until half of it is free again. Bytes that came while it had no room (a Readable's chunk larger
 * than the room left) are kept as copies, after the ring's, until it drains.
 */
export function ringChunks(source: ByteSource, size = 1024 * 1024): AsyncIterator<Buffer> {
  const ring = Buffer.allocUnsafe(size);
  let start = 0; // the first unread byte
  let filled = 0; // unread bytes from `start`, wrapping at the end
  let lent = 0; // the last chunk handed out: still unread until the next call
  const spill: Buffer[] = [];
  let paused = false;
  let ended = false;
  let failure: Error | undefined;
  let wake: (() => void) | undefined;
  const notify = (): void => {
    const w = wake;
    wake = undefined;
    w?.();
  };
  const writeAt = (): number => (start + filled) % size;
  const room = (): Buffer | undefined => {
    if (filled === size || spill.length > 0) return undefined;
    const at = writeAt();
    return ring.subarray(at, at < start ? start : size);
  };
  // A quarter of the ring is kept for the read that the socket is lent space for when the flow
  // pauses: it comes after the resume, and lands in the ring rather than in a parking space.
  const reserve = Math.floor(size / 4);
  const lend = (): Buffer | undefined => {
    const free = room();
    return paused || !free ? free : free.subarray(0, Math.max(1, size - filled - reserve));
  };
  const sink: ByteSink = {
    space: lend,
    wrote: (chunk) => {
      let from = 0;
      if (spill.length === 0) {
        if (chunk.buffer === ring.buffer && chunk.byteOffset === ring.byteOffset + writeAt()) {
          filled += chunk.length;
          from = chunk.length;
        }
        // Copied into the room there is, in at most two pieces (the ring wraps).
        for (let free = room(); from < chunk.length && free; free = room()) {
          const n = chunk.copy(free, 0, from);
          filled += n;
          from += n;
        }
      }
      if (from < chunk.length) spill.push(Buffer.from(chunk.subarray(from)));
      notify();
      paused = size - filled <= reserve || spill.length > 0;
      return !paused;
    },
  };
  let flowing: Promise<void> | undefined;
  const begin = (): void => {
    flowing = source.flow(sink).then(
      () => {
        ended = true;
        notify();
      },
      (error: unknown) => {
        failure = error instanceof Error ? error : new Error(String(error));
        notify();
      },
    );
  };
  return {
    async next(): Promise<IteratorResult<Buffer>> {
      if (!flowing) begin();
      // The last chunk is read now: its room is free again.
      start = (start + lent) % size;
      filled -= lent;
      lent = 0;
      // Resumed once half the ring is free: reads then come in large pieces.
      if (paused && filled <= size / 2 && spill.length === 0) {
        paused = false;
        source.resume();
      }
      for (;;) {
        if (failure) throw failure;
        if (filled > 0) {
          lent = Math.min(filled, size - start);
          return { done: false, value: ring.subarray(start, start + lent) };
        }
        const copy = spill.shift();
        if (copy) {
          if (spill.length === 0 && paused) {
            paused = false;
            source.resume();
          }
          return { done: false, value: copy };
        }
        if (ended) return { done: true, value: undefined };
        await new Promise<void>((resolve) => (wake = resolve));
      }
    },
  };
}
