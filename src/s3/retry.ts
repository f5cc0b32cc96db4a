/**
 * What a retry can cure, for the transfers of an archive's bytes (the ranges of a download, the
 * parts of an upload), and how long to wait before the next attempt.
 *
 * The SDK retries a request itself (maxAttempts in client.ts) while it waits for the response's
 * headers, within a retry budget that it shares across the client. It cannot retry a body that
 * breaks after the headers, nor a request once its budget is spent; over hundreds of GB both
 * happen. The transfers retry on top of it, with the bytes they still hold.
 */

/** Errors of the network itself: a connection reset, refused, timed out, or cut short. */
const NETWORK_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'ETIMEDOUT',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EAI_AGAIN',
  'ERR_STREAM_PREMATURE_CLOSE',
]);

/** Names under which the SDK reports a timeout or S3 asks the caller to slow down. */
const TRANSIENT_NAMES = new Set([
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeoutException',
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'InternalError',
  'ServiceUnavailable',
]);

/** An error that this code raises itself and that a new attempt may cure (a stall, a short body). */
export class TransientError extends Error {
  override name = 'TransientError';
}

interface Described {
  name?: string;
  code?: string;
  message?: string;
  cause?: unknown;
  $metadata?: { httpStatusCode?: number };
}

export function httpStatus(error: unknown): number | undefined {
  return (error as Described | undefined)?.$metadata?.httpStatusCode;
}

/**
 * True when another attempt may succeed: a network failure, a 5xx, a 408 or 429, or S3's
 * SlowDown. An answer that will not change (403, 404, 412, a 400) is not transient; neither is
 * an error this code does not know (a bug is not retried into a slower failure).
 */
export function isTransient(error: unknown, depth = 0): boolean {
  if (error instanceof TransientError) return true;
  const e = error as Described | undefined;
  if (!e || typeof e !== 'object') return false;
  const status = httpStatus(e);
  if (status !== undefined && status >= 400)
    return status >= 500 || status === 408 || status === 429;
  if (e.code && NETWORK_CODES.has(e.code)) return true;
  if (e.name && TRANSIENT_NAMES.has(e.name)) return true;
  if (/socket hang up|aborted|premature close/i.test(e.message ?? '')) return true;
  return e.cause !== undefined && depth < 5 && isTransient(e.cause, depth + 1);
}

/** A short reason for a log line: the status or code, and the message. */
export function reason(error: unknown): string {
  const e = error as Described | undefined;
  if (!e || typeof e !== 'object') return String(error);
  const status = httpStatus(e);
  const head =
    status !== undefined && status >= 400 ? `HTTP ${status} ${e.name ?? ''}`.trim() : e.code;
  const message = (e.message ?? '').trim() || e.name || 'unknown error';
  return head && !message.includes(head) ? `${head}: ${message}` : message;
}

/**
 * The wait before attempt `failures + 1`: `firstMs`, doubled after each failure, at most
 * `maxMs`. No jitter: one runner's few connections are not a herd.
 */
export function backoffMs(failures: number, firstMs: number, maxMs = 30_000): number {
  return Math.min(maxMs, firstMs * 2 ** Math.max(0, failures - 1));
}

/** How long an attempt may receive nothing before it is abandoned (and made again). */
export const STALL_MS = 60_000;

/**
 * The stall clock of one attempt: `arm()` when it starts waiting for the server (at its start,
 * and after each chunk is taken), `pause()` while the consumer has a chunk and at its end.
 * When it runs out, the attempt's signal aborts and `stalled` says why.
 */
export class StallWatch {
  readonly controller = new AbortController();
  stalled = false;
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly ms: number = STALL_MS) {}

  get signal(): AbortSignal {
    return this.controller.signal;
  }

  arm(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.stalled = true;
      this.controller.abort();
    }, this.ms);
  }

  pause(): void {
    clearTimeout(this.timer);
  }

  /** The error that a stalled attempt ends with. */
  error(): TransientError {
    return new TransientError(`no byte arrived for ${this.ms / 1000} s`);
  }
}
