/**
 * Streams an archive into a multipart upload. The part size follows the expected size, so
 * that the archive fits in S3's 10,000 parts; memory stays near part size x queue size.
 * A failed or aborted stream aborts the multipart upload: no orphan parts. A part whose send
 * fails is sent again (its buffer is still held) before the upload gives up.
 */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  ListMultipartUploadsCommand,
  UploadPartCommand,
  type CompletedPart,
  type S3Client,
} from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import { InputError } from '../errors.js';
import { formatBytes } from '../format.js';
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { readableSource, type ByteSink, type ByteSource } from '../byte-source.js';
import { backoffMs, isTransient, reason } from './retry.js';

export const MIN_PART_SIZE = 8 * 1024 * 1024;
export const MAX_PART_SIZE = 5 * 1024 ** 3;
export const MAX_PARTS = 10_000;
/** Parts kept in reserve for an archive larger than expected (compression can expand data). */
const PART_HEADROOM = 0.8;

/** The smallest part size (a whole MiB, at least 8 MiB) that fits `expectedBytes` in 8,000 parts. */
export function choosePartSize(expectedBytes: number): number {
  const mib = 1024 * 1024;
  const needed = Math.ceil(expectedBytes / (MAX_PARTS * PART_HEADROOM) / mib) * mib;
  return Math.min(MAX_PART_SIZE, Math.max(MIN_PART_SIZE, needed));
}

/** The parts of an upload: their size, and how many are in flight at once. */
export interface PartPlan {
  partSize: number;
  queueSize: number;
}

/**
 * Plans the upload of an archive of at most `expectedBytes` before anything is stopped: an
 * explicit `partSize` must fit it in 10,000 parts, and the part buffers must stay within
 * `maxBufferBytes` of memory (fewer parts in flight where a large database needs large parts).
 */
export function planParts(
  expectedBytes: number,
  settings: { partSize?: number; queueSize: number },
  maxBufferBytes: number,
): PartPlan {
  const partSize = settings.partSize ?? choosePartSize(expectedBytes);
  if (settings.partSize !== undefined && settings.partSize * MAX_PARTS < expectedBytes) {
    throw new InputError(
      `Input 'part-size' (${formatBytes(settings.partSize)}) allows an archive of at most ` +
        `${formatBytes(settings.partSize * MAX_PARTS)} in S3's ${MAX_PARTS} parts; this one may reach ` +
        `${formatBytes(expectedBytes)}. Raise it, or leave it empty to have it chosen from the database's size.`,
    );
  }
  // One part fills while the others are in flight.
  const fits = Math.floor(maxBufferBytes / partSize) - 1;
  if (fits < 1) {
    throw new InputError(
      `An archive of up to ${formatBytes(expectedBytes)} needs parts of ${formatBytes(partSize)} (S3 takes at most ` +
        `${MAX_PARTS} parts); two of them exceed the ${formatBytes(maxBufferBytes)} of part buffers the runner may hold.`,
    );
  }
  return { partSize, queueSize: Math.min(settings.queueSize, fits) };
}

export interface StreamUploadOptions {
  client: S3Client;
  bucket: string;
  key: string;
  /** The bytes: a ByteSource writes them into the parts in place, a Readable is copied. */
  body: Readable | ByteSource;
  partSize: number;
  queueSize: number;
  contentType?: string;
  metadata?: Record<string, string>;
  /**
   * Resolves when the source has ended well, rejects when it has not. The upload is only
   * completed after it resolves: a stream that ends early is never a finished object.
   */
  sourceOk: Promise<void>;
  /** Called with the bytes read so far, after each chunk. */
  onProgress?: (bytes: number) => void;
  /**
   * Sends of one part before the upload fails (default 4). Each is the SDK's own request with
   * its own retries; a part is sent again only for a failure that another send may cure.
   */
  partAttempts?: number;
  /** The wait before a part's second send, doubled before each further one (default 1 s). */
  retryDelayMs?: number;
  /** Told of each part sent again, with its number and the reason. */
  onRetry?: (message: string) => void;
}

export interface StreamUploadResult {
  bytes: number;
  sha256: string;
  etag?: string;
}

function isByteSource(body: Readable | ByteSource): body is ByteSource {
  return typeof (body as ByteSource).flow === 'function';
}

/**
 * The multipart upload, fed from a small pool of part buffers that are reused. A ByteSource
 * reads straight into the part being filled; a Readable's chunks are copied into it. A full
 * part goes out while the next one fills; when queueSize parts are in flight the source
 * pauses until one comes back. Memory is (queueSize + 1) x partSize whatever the archive's
 * size, and the runner allocates no part-sized buffer per part (with fresh buffers per part,
 * the garbage collector, page faults and the concatenation took a third of its CPU).
 */
export async function streamUpload(options: StreamUploadOptions): Promise<StreamUploadResult> {
  const { client, bucket, key, partSize } = options;
  const queueSize = Math.max(1, options.queueSize);
  const source = isByteSource(options.body) ? options.body : readableSource(options.body);
  const hash = createHash('sha256');
  let bytes = 0;
  let failure: Error | undefined;
  // Ends the pauses of parts waiting to be sent again.
  const stopRetries = new AbortController();
  const fail = (error: Error): void => {
    failure ??= error;
    stopRetries.abort();
    source.destroy(error);
  };
  // A remote failure stops the stream at once, whatever it is waiting for.
  options.sourceOk.catch(fail);

  const created = await client.send(
    new CreateMultipartUploadCommand({
      Bucket: bucket,
      Key: key,
      ContentType: options.contentType ?? 'application/gzip',
      Metadata: options.metadata,
    }),
  );
  const uploadId = created.UploadId;
  if (!uploadId) throw new Error(`S3 returned no upload id for ${key}`);

  const free: Buffer[] = [];
  const inFlight = new Set<Promise<void>>();
  const parts: CompletedPart[] = [];
  let current: Buffer | undefined;
  let filled = 0;
  let partNumber = 0;
  // Bytes that arrived while every part buffer was busy (copies), and whether the source waits.
  const pending: Buffer[] = [];
  let waiting = false;

  /** The part being filled; a new one only while fewer than queueSize parts are in flight. */
  const take = (): Buffer | undefined => {
    if (!current && inFlight.size < queueSize && !failure) {
      current = free.pop() ?? Buffer.allocUnsafe(partSize);
      filled = 0;
    }
    return current;
  };
  const filledUp = (n: number): void => {
    filled += n;
    if (filled === partSize && current) {
      send(current, filled);
      current = undefined;
    }
  };
  /** Copies `chunk` into parts; what finds no part is kept in `pending`. False when some was kept. */
  const put = (chunk: Buffer): boolean => {
    let at = 0;
    while (at < chunk.length) {
      const part = take();
      if (!part) {
        pending.push(Buffer.from(chunk.subarray(at)));
        return false;
      }
      const n = chunk.copy(part, filled, at);
      at += n;
      filledUp(n);
    }
    return true;
  };
  /** A part came back: place what was kept, and let the source go on when there is room. */
  const drain = (): void => {
    while (pending.length > 0) {
      const chunk = pending.shift() as Buffer;
      if (!put(chunk)) {
        // put() kept the rest of this chunk at the end: move it back to the front.
        pending.unshift(pending.pop() as Buffer);
        return;
      }
    }
    if (waiting && take()) {
      waiting = false;
      source.resume();
    }
  };

  /**
   * Sends one part until S3 has it. The SDK already sends a request again when it fails before
   * its response (a reset, a refused connection, a 5xx: up to maxAttempts, client.ts), with the
   * same Buffer; but within a retry budget shared by the whole client, which a long upload over
   * a poor link can spend, and not after a send that ran out of its attempts. The part's buffer
   * is held until S3 has the part, so it is sent again here (partAttempts sends in all, after a
   * pause each): a blip costs a part, not the backup.
   */
  const uploadPart = async (number: number, buffer: Buffer, length: number) => {
    const attempts = Math.max(1, options.partAttempts ?? 4);
    for (let attempt = 1; ; attempt++) {
      try {
        return await client.send(
          unsignedPayload(
            new UploadPartCommand({
              Bucket: bucket,
              Key: key,
              UploadId: uploadId,
              PartNumber: number,
              Body: buffer.subarray(0, length),
              ContentLength: length,
            }),
          ),
        );
      } catch (error) {
        if (failure || !isTransient(error)) throw error;
        const what = `part ${number} (${formatBytes(length)} from byte ${(number - 1) * partSize})`;
        if (attempt >= attempts) {
          throw new Error(`${what} failed ${attempt} times, the last with ${reason(error)}`, {
            cause: error,
          });
        }
        const wait = backoffMs(attempt, options.retryDelayMs ?? 1000);
        options.onRetry?.(
          `${what}: ${reason(error)}; sending it again in ${(wait / 1000).toFixed(1)} s (attempt ${attempt + 1} of ${attempts}).`,
        );
        // Another part failed meanwhile: the upload is over.
        await sleep(wait, undefined, { signal: stopRetries.signal }).catch(() => undefined);
        if (failure) throw failure;
      }
    }
  };

  const send = (buffer: Buffer, length: number): void => {
    const number = ++partNumber;
    const sending: Promise<void> = uploadPart(number, buffer, length).then(
      (res) => {
        inFlight.delete(sending);
        parts.push({ PartNumber: number, ETag: res.ETag });
        free.push(buffer);
        drain();
      },
      (error: Error) => {
        inFlight.delete(sending);
        fail(error);
      },
    );
    inFlight.add(sending);
  };

  const sink: ByteSink = {
    space: () => take()?.subarray(filled),
    wrote: (chunk) => {
      hash.update(chunk);
      bytes += chunk.length;
      options.onProgress?.(bytes);
      if (pending.length > 0)
        pending.push(Buffer.from(chunk)); // in order, behind what waits
      else if (
        current !== undefined &&
        chunk.buffer === current.buffer &&
        chunk.byteOffset === current.byteOffset + filled
      )
        filledUp(chunk.length); // read in place
      else put(chunk);
      if (pending.length > 0 || !take()) {
        waiting = true;
        return false;
      }
      return true;
    },
  };

  try {
    await source.flow(sink);
    if (failure) throw failure;
    // Every byte in a part, then the last part goes out only once the remote side has
    // reported success.
    while (pending.length > 0 && !failure) await Promise.race(inFlight);
    if (failure) throw failure;
    await options.sourceOk;
    // The part being filled may be empty (taken ahead for the next read): it goes out only
    // with bytes in it, or as the single empty part of an empty archive.
    if (current && filled > 0) send(current, filled);
    else if (partNumber === 0) send(Buffer.alloc(0), 0);
    current = undefined;
    while (inFlight.size > 0) await Promise.race(inFlight);
    if (failure) throw failure;
    parts.sort((a, b) => (a.PartNumber ?? 0) - (b.PartNumber ?? 0));
    const done = await client.send(
      new CompleteMultipartUploadCommand({
        Bucket: bucket,
        Key: key,
        UploadId: uploadId,
        MultipartUpload: { Parts: parts },
      }),
    );
    return { bytes, sha256: hash.digest('hex'), etag: done.ETag };
  } catch (error) {
    const cause = failure ?? (error as Error);
    source.destroy();
    await Promise.allSettled([...inFlight]);
    await client
      .send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId }))
      .catch(() => undefined);
    throw cause;
  }
}

/**
 * Signs a part without hashing its payload first (the SDK hashes a Buffer body for the
 * signature, even over TLS). The archive's sha256, computed once on the way and kept in its
 * manifest, proves the bytes end to end; TLS guards each request.
 */
function unsignedPayload<C extends UploadPartCommand>(command: C): C {
  command.middlewareStack.add(
    (next) => async (args) => {
      const request = args.request as { headers?: Record<string, string> };
      if (request.headers) request.headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
      return next(args);
    },
    { step: 'build', name: 'prepSnapshotUnsignedPayload' },
  );
  return command;
}

/**
 * Aborts every in-progress multipart upload of exactly `key` (a safety net for an upload
 * whose own abort could not reach S3, and for the post step). Returns how many it aborted.
 * The Prefix is the key itself: S3 matches it as a prefix, MinIO as the exact key; only
 * uploads of `key` itself are touched either way.
 */
export async function abortUploads(client: S3Client, bucket: string, key: string): Promise<number> {
  let aborted = 0;
  let keyMarker: string | undefined;
  let uploadIdMarker: string | undefined;
  for (;;) {
    const res = await client.send(
      new ListMultipartUploadsCommand({
        Bucket: bucket,
        Prefix: key,
        KeyMarker: keyMarker,
        UploadIdMarker: uploadIdMarker,
      }),
    );
    for (const u of res.Uploads ?? []) {
      if (u.Key !== key || !u.UploadId) continue;
      await client
        .send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: u.UploadId }))
        .catch((error) => {
          // Gone already (its own abort won the race): nothing left to do.
          if (
            (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode !== 404
          )
            throw error;
        });
      aborted++;
    }
    if (!res.IsTruncated) return aborted;
    keyMarker = res.NextKeyMarker;
    uploadIdMarker = res.NextUploadIdMarker;
  }
}
