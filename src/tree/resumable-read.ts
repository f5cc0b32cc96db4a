/**
 * One file of a tree read from `start` to its end, under the rule of the ranged archive reads
 * (s3/download.ts): an attempt that receives no byte for `stallMs` (60 s) is abandoned, as is
 * one that breaks or ends short; the next asks for the bytes from where the last one stopped.
 * An attempt that brought bytes was cut, not refused: the next goes at once and the count of
 * failures starts again. Attempts that bring nothing wait longer each time (1 s, doubled, at
 * most 30 s), and after `attempts` of them in a row the read ends with a DownloadError that
 * names the file, the byte and the last reason. An answer that no attempt changes (a 403, a
 * 404) ends it at once.
 *
 * The time the consumer takes with a chunk is not a stall: the clock runs only while the read
 * waits for the server. A chunk may be a view of a buffer that the next read fills again (the
 * read client's, s3/socket-get.ts): it is valid until the next chunk is asked for.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { ActionError, DownloadError, IntegrityError, StorageError } from '../errors.js';
import { formatBytes } from '../format.js';
import { Readable } from 'node:stream';
import { backoffMs, isTransient, reason, StallWatch, TransientError } from '../s3/retry.js';
import { SocketBody } from '../s3/socket-body.js';

export interface ResumableReadOptions {
  /** The file, for messages: its path in the snapshot and where it is read from. */
  what: string;
  /** The file's size: the read ends there. */
  size: number;
  /** The first byte to read (default 0). */
  start?: number;
  /**
   * One request for the bytes from `from` to the end, aborted by `signal`. Its errors are
   * judged by `isTransient` (s3/retry.ts): a TransientError, a network error or a 5xx is tried
   * again; anything else ends the read as it is.
   */
  request(from: number, signal: AbortSignal): Promise<AsyncIterable<Uint8Array>>;
  /** Failed attempts in a row, without a byte received in between, after which the read gives up (default 6). */
  attempts?: number;
  /** The wait after a first failure, doubled after each further one up to 30 s (default 1 s). */
  backoffMs?: number;
  /** An attempt that receives nothing for this long is abandoned and made again (default 60 s). */
  stallMs?: number;
  /** Told of each attempt made again, with the reason and where it goes on from. */
  onRetry?: (message: string) => void;
}

/** The timing of a resumable read, for a caller that passes it on (tests shorten it). */
export type ReadTiming = Pick<ResumableReadOptions, 'attempts' | 'backoffMs' | 'stallMs'>;

/** Takes each chunk of a read; a promise holds the read (not a stall) until it settles. */
export type Take = (chunk: Uint8Array) => void | Promise<void>;

/**
 * The file's bytes from `start` to its end, handed to `take` in order: see the module's
 * comment. A chunk may be a view of a buffer that the next read fills again (the read
 * client's, s3/socket-get.ts): it is valid during the call, and until a promise that `take`
 * returns settles.
 */
export async function resumableRead(o: ResumableReadOptions, take: Take): Promise<void> {
  const attempts = Math.max(1, o.attempts ?? 6);
  let at = Math.min(o.start ?? 0, o.size);
  let failures = 0;
  while (at < o.size) {
    const before = at;
    const stall = new StallWatch(o.stallMs);
    let body: AsyncIterable<Uint8Array> | undefined;
    let failed: unknown;
    const handle = (chunk: Uint8Array): Promise<void> | undefined => {
      // Bytes came, though none for the file (a server that ignored the Range sends the ones
      // before it first): not a stall.
      stall.arm();
      if (chunk.length === 0) return undefined;
      if (chunk.length > o.size - at) {
        throw new IntegrityError(
          `${o.what} is longer than the ${o.size} bytes recorded for it: the stored file is not the one the snapshot names.`,
        );
      }
      at += chunk.length;
      const wait = take(chunk);
      if (!wait) return undefined;
      stall.pause();
      return wait.then(() => stall.arm());
    };
    try {
      stall.arm();
      body = await o.request(at, stall.signal);
      if (body instanceof SocketBody) {
        await body.readInto(handle);
      } else {
        for await (const chunk of body) await handle(chunk);
      }
      if (at < o.size) {
        throw new TransientError(
          `the response ended after ${formatBytes(at - before)}, at byte ${at} of ${o.size}`,
        );
      }
    } catch (error) {
      failed = stall.stalled ? stall.error() : error;
    } finally {
      stall.pause();
      // Whatever ended the attempt (an error, or a consumer that stopped reading), its
      // connection is let go.
      stall.controller.abort();
      if (body instanceof Readable) body.destroy();
    }
    if (failed === undefined) return;
    if (!isTransient(failed)) {
      throw failed instanceof ActionError
        ? failed
        : new StorageError(`The download of ${o.what} failed at byte ${at}: ${reason(failed)}.`);
    }
    const moved = at > before;
    failures = moved ? 0 : failures + 1;
    if (failures >= attempts) {
      throw new DownloadError(
        `The download of ${o.what} stopped at byte ${at} of ${o.size}: ${failures} attempts in a row failed, ` +
          `the last with ${reason(failed)}.`,
      );
    }
    const wait = moved ? 0 : backoffMs(failures, o.backoffMs ?? 1000);
    o.onRetry?.(
      `${o.what}: ${reason(failed)}; again from byte ${at}${wait ? ` in ${(wait / 1000).toFixed(1)} s` : ''}.`,
    );
    await sleep(wait);
  }
}

/** The error under a fetch's own: undici's `fetch failed` and `terminated` carry the reason as a cause. */
function causeOf(error: unknown): unknown {
  const cause = (error as { cause?: unknown } | undefined)?.cause;
  return cause instanceof Error ? cause : error;
}

/**
 * `request` for a file served over HTTP(S) (a tree in icon2-node's form): a GET with a Range
 * from `from`. A server that ignores the Range (200) has the bytes before `from` skipped. A
 * connection that fails or breaks, a 5xx, a 408 or a 429 may pass on another attempt; any
 * other answer is final.
 */
export function httpRange(url: string): ResumableReadOptions['request'] {
  return async (from, signal) => {
    let res: Response;
    try {
      res = await fetch(url, { headers: from > 0 ? { Range: `bytes=${from}-` } : {}, signal });
    } catch (error) {
      if (signal.aborted) throw error;
      throw new TransientError(`GET ${url} failed: ${reason(causeOf(error))}`, { cause: error });
    }
    const said = `GET ${url} answered HTTP ${res.status} ${res.statusText}`.trim();
    if (res.status !== 200 && res.status !== 206) {
      await res.body?.cancel().catch(() => undefined);
      if (res.status >= 500 || res.status === 408 || res.status === 429)
        throw new TransientError(said);
      throw new StorageError(`${said}.`);
    }
    let skip = 0;
    if (res.status === 206) {
      const first = /^bytes (\d+)-/.exec(res.headers.get('content-range') ?? '')?.[1];
      if (Number(first) !== from) {
        await res.body?.cancel().catch(() => undefined);
        throw new DownloadError(
          `GET ${url} asked for the bytes from ${from}; the server sent '${res.headers.get('content-range') ?? 'no Content-Range'}'.`,
        );
      }
    } else {
      skip = from;
    }
    return bodyOf(res, skip, signal, url);
  };
}

/**
 * A response's bytes after the first `skip` (an empty chunk for each one skipped whole); a
 * break that the caller did not ask for may pass on another attempt.
 */
async function* bodyOf(
  res: Response,
  skip: number,
  signal: AbortSignal,
  url: string,
): AsyncGenerator<Uint8Array> {
  if (!res.body) return;
  let left = skip;
  try {
    for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
      if (left >= chunk.length) {
        left -= chunk.length;
        yield chunk.subarray(0, 0);
        continue;
      }
      yield left > 0 ? chunk.subarray(left) : chunk;
      left = 0;
    }
  } catch (error) {
    if (signal.aborted) throw error;
    throw new TransientError(`GET ${url} broke off: ${reason(causeOf(error))}`, { cause: error });
  }
}
