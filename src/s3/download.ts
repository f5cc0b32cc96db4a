/**
 * Reads a stored object as one stream, in order, with several ranged GETs in flight.
 *
 * Over the internet one S3 connection runs far below what the runner and the node can take (the
 * original restore downloads with `axel -a`, icon2-node with `aria2c -x8`). The object is read
 * in ranges, `connections` of them coming at once; each range copies what it receives into
 * pieces of reused memory (s3/pieces.ts), and the read hands the pieces on in the object's
 * order, those of the first range as they fill.
 *
 * Three things keep the connections busy (measured on the benchmark's link, each connection
 * capped at 20 MiB/s with 20 ms each way, 8 connections):
 * - The window of ranges held (coming, or whole and waiting for the ranges before them to be
 *   handed on) is twice the connections: a range whose bytes are all in lets the next one start
 *   at once. Ranges that start together end together, and with a window of only `connections`
 *   every connection but one sat idle while the consumer took that burst (100 MiB/s, not 140).
 * - A range asks for the next one when an eighth of it is left: the round trip to ask, and S3's
 *   time to answer, overlap its last bytes instead of following them (so for that moment one
 *   more GET is open). One connection moved 0.80 to 0.87 of its cap without it, 0.98 with it.
 * - Ranges of 8 MiB: 16 MiB moved no more and held twice the memory.
 * Memory is the bytes received and not yet handed on, at most `heldBytes` (connections x range
 * size by default) and a chunk per connection, whatever the object's size. When the consumer is
 * the slower side (a restore into a host whose SSH channel or disk is slower than S3), the ranges
 * past the first stop reading at that bound and their connections wait, as TCP makes them; the
 * first range waits only for the consumer. A range takes pieces as its bytes come, not a
 * buffer of its size: a window of ready-made 8 MiB buffers took the runner's RSS to 490 MiB in
 * a restore whose consumer was slow, for bytes that were not needed yet.
 *
 * A range that fails (a connection cut, a reset, a 5xx, a stall) is asked again from the byte
 * where it stopped; the bytes already received are kept. Every GET is pinned to the ETag seen
 * first (If-Match): bytes of two versions of an object are never mixed, and an object replaced
 * during the read fails it with ObjectChangedError.
 */
import { GetObjectCommand, HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { DownloadError, ObjectChangedError } from '../errors.js';
import { formatBytes } from '../format.js';
import { describeS3Error } from './client.js';
import { backoffMs, httpStatus, isTransient, reason, StallWatch, TransientError } from './retry.js';
import { MemoryPool, PieceList, type Piece } from './pieces.js';
import { SocketBody } from './socket-body.js';

const MiB = 1024 * 1024;
/** Ranges are at least this large (fewer, cheaper requests)... */
export const MIN_RANGE_BYTES = MiB;
/** ...and at most this: 64 MiB held with the default 8 connections, 128 MiB at the input's most, 16. */
export const MAX_RANGE_BYTES = 8 * MiB;

/**
 * The range size for `size` bytes to read with `connections`: the largest that still gives every
 * connection two ranges (a small archive is spread over the connections too), in whole MiB, from
 * MIN_RANGE_BYTES to MAX_RANGE_BYTES.
 */
export function chooseRangeBytes(size: number, connections: number): number {
  const share = Math.ceil(size / Math.max(1, connections) / 2 / MiB) * MiB;
  return Math.min(MAX_RANGE_BYTES, Math.max(MIN_RANGE_BYTES, share));
}

/** What a HEAD of the object said: its size, and the ETag that every range is pinned to. */
export interface StoredObjectInfo {
  size: number;
  etag?: string;
}

export async function headObject(
  client: S3Client,
  bucket: string,
  key: string,
): Promise<StoredObjectInfo> {
  try {
    const head = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    return { size: head.ContentLength ?? 0, etag: head.ETag };
  } catch (error) {
    throw describeS3Error(error, `s3://${bucket}/${key}`);
  }
}

export interface RangedReadOptions {
  client: S3Client;
  bucket: string;
  key: string;
  /** From headObject, before the read: the size to read up to and the ETag to pin. */
  object: StoredObjectInfo;
  /**
   * Ranges coming at once (at least 1); as one nears its end, the next is asked for already, so
   * for that moment one more GET is open.
   */
  connections: number;
  /** The first byte to read (default 0). */
  start?: number;
  /** Default: chooseRangeBytes of what is left to read. */
  rangeBytes?: number;
  /**
   * The most bytes received and not yet handed on, beyond which the ranges past the first wait
   * (default connections x range size; never less than one range).
   */
  heldBytes?: number;
  /**
   * Failed attempts in a row, without a byte received in between, after which a range gives up
   * (default 6). An attempt that brings bytes starts the count again: a connection cut every
   * few MB still moves the read on.
   */
  attempts?: number;
  /** The wait after a first failure, doubled after each further one up to 30 s (default 1 s). */
  backoffMs?: number;
  /** An attempt that receives nothing for this long is abandoned and retried (default 60 s). */
  stallMs?: number;
  /** Told of each retry, with the range, the reason and where it goes on from. */
  onRetry?: (message: string) => void;
}

interface Range {
  /** The object's bytes [start, end). */
  start: number;
  end: number;
  /** What was received and not yet handed on, in order. */
  pieces: PieceList;
  /** Bytes of the range received, and handed on. */
  filled: number;
  emitted: number;
  /** Aborts the attempt in flight. */
  abort?: AbortController;
  /** Near its end: its connection is counted free, so that the next range is asked for now. */
  ending: boolean;
}

/** The object's bytes [start, size), in order: see the module's comment. */
export class RangedDownload implements AsyncIterable<Buffer> {
  /** Attempts that failed and were made again, over all ranges. */
  retries = 0;
  /** Bytes received from S3, over all ranges (retried bytes are not received twice). */
  received = 0;
  /** The range size in use. */
  readonly rangeBytes: number;
  /** The bound on bytes held (received and not handed on). */
  readonly heldBytes: number;
  /** The most bytes held at once: at most heldBytes and a chunk per connection. */
  peakHeldBytes = 0;
  /** Resolves at the first byte received (at once for nothing to read); rejects if the read fails first. */
  readonly started: Promise<void>;

  private readonly o: RangedReadOptions;
  private readonly end: number;
  private readonly attempts: number;
  private readonly window: Range[] = [];
  private readonly pool = new MemoryPool();
  /** Ranges that hold a connection: coming, and not yet within an eighth of their end. */
  private inFlight = 0;
  private next: number;
  /** Whether the consumer waits for bytes (it holds none of the download's memory). */
  private wanted = false;
  /** Why the read stopped, once it has (undefined while it goes on, or at its end). */
  private failure: Error | undefined;
  private stopped = false;
  /** Bytes received and not handed on, over the window. */
  private held = 0;
  /** Ranges that wait for the held bytes to go down (or, the first, for the consumer). */
  private waiting: (() => void)[] = [];
  /** The consumer, waiting for the first range to bring bytes. */
  private consumer: (() => void) | undefined;
  private readonly stopping = new AbortController();
  private markStarted!: () => void;
  private failStart!: (error: Error) => void;

  constructor(options: RangedReadOptions) {
    this.o = options;
    this.end = options.object.size;
    this.next = Math.min(options.start ?? 0, this.end);
    this.attempts = Math.max(1, options.attempts ?? 6);
    this.rangeBytes =
      options.rangeBytes ?? chooseRangeBytes(this.end - this.next, options.connections);
    this.heldBytes = Math.max(
      this.rangeBytes,
      options.heldBytes ?? Math.max(1, options.connections) * this.rangeBytes,
    );
    this.started = new Promise<void>((resolve, reject) => {
      this.markStarted = resolve;
      this.failStart = reject;
    });
    // A caller that never waits for the start must not meet an unhandled rejection.
    this.started.catch(() => undefined);
    if (this.next >= this.end) this.markStarted();
    this.fill();
  }

  /**
   * The bytes in order. Each chunk is the download's memory, filled again once the next one is
   * asked for: a consumer that keeps bytes beyond that (a write still under way, a list of
   * chunks) waits for it to finish or copies them. Leaving the loop early stops the read.
   */
  async *[Symbol.asyncIterator](): AsyncGenerator<Buffer> {
    let lent: Buffer | undefined;
    try {
      for (;;) {
        if (lent) this.pool.give(lent);
        lent = undefined;
        const chunk = await this.nextChunk();
        if (!chunk) return;
        lent = chunk.piece;
        yield chunk.bytes;
      }
    } finally {
      if (lent) this.pool.give(lent);
      if (!this.stopped) this.destroy();
    }
  }

  /** Stops the read: the ranges' requests are aborted and the consumer gets `error`, if any. */
  destroy(error?: Error): void {
    if (this.stopped) return;
    this.stopped = true;
    this.failure = error;
    this.stopping.abort();
    for (const r of this.window) {
      r.abort?.abort();
      r.pieces.clear();
    }
    this.window.length = 0;
    this.wake();
    this.failStart(error ?? new Error('the read was stopped'));
  }

  /** Starts ranges while a connection is free and the window has room. */
  private fill(): void {
    const connections = Math.max(1, this.o.connections);
    while (
      !this.stopped &&
      this.inFlight < connections &&
      this.window.length < 2 * connections &&
      this.next < this.end
    ) {
      const start = this.next;
      const end = Math.min(this.end, start + this.rangeBytes);
      this.next = end;
      const range: Range = {
        start,
        end,
        pieces: new PieceList(this.pool),
        filled: 0,
        emitted: 0,
        ending: false,
      };
      this.window.push(range);
      this.inFlight++;
      this.load(range).then(
        () => this.release(range),
        (error: Error) => this.destroy(error),
      );
    }
  }

  /** Counts the range's connection free (once), and starts the next range. */
  private release(r: Range): void {
    if (r.ending) return;
    r.ending = true;
    this.inFlight--;
    this.fill();
  }

  /**
   * The first range's next piece, once it is full (or the range is whole), moving the window
   * on past the ranges that are whole and handed on; undefined at the end of the object.
   */
  private async nextChunk(): Promise<Piece | undefined> {
    for (;;) {
      if (this.stopped) {
        if (this.failure) throw this.failure;
        return undefined;
      }
      const head = this.window[0];
      if (!head) {
        if (this.next >= this.end) {
          this.stopped = true;
          return undefined;
        }
      } else {
        const whole = head.filled === head.end - head.start;
        const next = head.pieces.shift(whole);
        if (next) {
          head.emitted += next.bytes.length;
          this.held -= next.bytes.length;
          this.wanted = false;
          this.wake();
          return next;
        }
        if (whole) {
          this.window.shift();
          this.wake();
          this.fill();
          continue;
        }
      }
      this.wanted = true;
      // A first range that waited for the consumer reads on.
      this.wake();
      await new Promise<void>((go) => (this.consumer = go));
    }
  }

  /** Lets the waiting ranges look again at what is held, and the consumer at what came. */
  private wake(): void {
    const waiting = this.waiting;
    this.waiting = [];
    for (const go of waiting) go();
    const consumer = this.consumer;
    this.consumer = undefined;
    consumer?.();
  }

  /**
   * Whether `r` must wait before it reads on: the others while the held bytes are at their
   * bound; the first range only while the consumer wants nothing, and then once a range's
   * worth of it is held or the held bytes are at their bound (it would otherwise take them a
   * range past it). What the consumer wants, the first range reads at once.
   */
  private mustWait(r: Range): boolean {
    if (this.stopped) return false;
    if (r === this.window[0]) {
      return (
        !this.wanted && (r.filled - r.emitted >= this.rangeBytes || this.held >= this.heldBytes)
      );
    }
    return this.held >= this.heldBytes;
  }

  private label(r: Range): string {
    return `bytes ${r.start}-${r.end - 1} of s3://${this.o.bucket}/${this.o.key}`;
  }

  private async load(r: Range): Promise<void> {
    let failures = 0;
    for (;;) {
      const before = r.filled;
      try {
        await this.attempt(r);
        return;
      } catch (error) {
        if (this.stopped) return;
        const final = this.finalError(r, error);
        if (final) throw final;
        // An attempt that brought bytes was cut, not refused: it goes on at once. Attempts that
        // bring nothing wait longer each time, and are counted.
        const moved = r.filled > before;
        failures = moved ? 0 : failures + 1;
        if (failures >= this.attempts) {
          throw new DownloadError(
            `${this.label(r)}: ${failures} attempts in a row failed at byte ${r.start + r.filled}, the last with ${reason(error)}`,
          );
        }
        this.retries++;
        const wait = moved ? 0 : backoffMs(failures, this.o.backoffMs ?? 1000);
        this.o.onRetry?.(
          `${this.label(r)}: ${reason(error)}; again from byte ${r.start + r.filled}` +
            `${wait ? ` in ${(wait / 1000).toFixed(1)} s` : ''} (${formatBytes(r.filled)} of ${formatBytes(r.end - r.start)} kept).`,
        );
        try {
          await sleep(wait, undefined, { signal: this.stopping.signal });
        } catch {
          return; // stopped while it waited
        }
      }
    }
  }

  /** The error that ends the read, or undefined when another attempt may cure `error`. */
  private finalError(r: Range, error: unknown): Error | undefined {
    if (error instanceof ObjectChangedError || error instanceof DownloadError) return error;
    const status = httpStatus(error);
    const object = `s3://${this.o.bucket}/${this.o.key}`;
    if (status === 412) {
      return new ObjectChangedError(
        `${object} was replaced while it was read: S3 answered 412 (Precondition Failed) to a read of ` +
          `bytes ${r.start + r.filled}-${r.end - 1} pinned to the ETag it had when the read began, ${String(this.o.object.etag)}.`,
      );
    }
    if (status === 404) return new ObjectChangedError(`${object} was deleted while it was read.`);
    if (status === 416) {
      return new ObjectChangedError(
        `${object} is shorter than when its read began: it was replaced.`,
      );
    }
    if (!isTransient(error)) return new DownloadError(`${this.label(r)}: ${reason(error)}`);
    return undefined;
  }

  /** One GET of what the range still lacks; resolves when the range is full. */
  private async attempt(r: Range): Promise<void> {
    const from = r.start + r.filled;
    const stall = new StallWatch(this.o.stallMs);
    r.abort = stall.controller;
    stall.arm();
    let body: Readable | undefined;
    try {
      const res = await this.o.client.send(
        new GetObjectCommand({
          Bucket: this.o.bucket,
          Key: this.o.key,
          Range: `bytes=${from}-${r.end - 1}`,
          IfMatch: this.o.object.etag,
        }),
        { abortSignal: stall.signal },
      );
      body = res.Body as Readable;
      // A server that ignored the Range would send the object from its first byte.
      const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(res.ContentRange ?? '');
      if (!range || Number(range[1]) !== from || Number(range[2]) !== r.end - 1) {
        throw new DownloadError(
          `${this.label(r)}: asked for bytes ${from}-${r.end - 1}, S3 sent '${res.ContentRange ?? 'the whole object'}'`,
        );
      }
      if (this.o.object.etag && res.ETag && res.ETag !== this.o.object.etag) {
        throw new ObjectChangedError(
          `s3://${this.o.bucket}/${this.o.key} changed while it was read: its ETag was ${this.o.object.etag}, now ${res.ETag}.`,
        );
      }
      const size = r.end - r.start;
      const take = (view: Uint8Array): Promise<void> | undefined => {
        if (this.stopped) throw new Error('the read was stopped');
        const n = Math.min(view.length, size - r.filled);
        if (n > 0) r.pieces.add(n === view.length ? view : view.subarray(0, n));
        r.filled += n;
        this.held += n;
        this.peakHeldBytes = Math.max(this.peakHeldBytes, this.held);
        this.received += n;
        this.markStarted();
        // The next range is asked for while this one's last bytes come: the round trip to ask
        // for it, and S3's time to answer, overlap them instead of following them.
        if (size - r.filled <= size / 8) this.release(r);
        if (r === this.window[0]) this.wake();
        stall.arm();
        if (!this.mustWait(r)) return undefined;
        // Waiting for room is not a stall: the clock runs only while the range reads.
        stall.pause();
        return (async () => {
          while (this.mustWait(r)) await new Promise<void>((go) => this.waiting.push(go));
          stall.arm();
        })();
      };
      if (body instanceof SocketBody) {
        await body.readInto(take);
      } else {
        for await (const chunk of body as AsyncIterable<Uint8Array>) await take(chunk);
      }
      if (r.filled < size) {
        throw new TransientError(
          `the response ended after ${formatBytes(r.filled)} of ${formatBytes(size)}`,
        );
      }
    } catch (error) {
      if (stall.stalled) throw stall.error();
      throw error;
    } finally {
      stall.pause();
      body?.destroy();
      r.abort = undefined;
    }
  }
}

/** Starts reading `options.object` (see RangedDownload). */
export function rangedDownload(options: RangedReadOptions): RangedDownload {
  return new RangedDownload(options);
}
