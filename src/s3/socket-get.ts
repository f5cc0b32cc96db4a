/**
 * The GETs of a restore's and a verify's bytes, read into memory that is used again.
 *
 * Node's HTTP client reads each socket into a new buffer and hands the body on in those
 * buffers; the runner frees them only when the garbage collector runs, which Node 24 does
 * after tens of megabytes of them. Measured on this project's bench, reading 1 GiB from MinIO
 * with 8 ranged GETs into a pipe: through the SDK's handler, 2.2 CPU-seconds and a peak RSS of
 * 300 MiB; each socket read into one buffer of its own and copied into reused memory, 0.8
 * CPU-seconds with a sha256 of every byte, and 138 MiB. On a restore the runner's one thread
 * is the slowest stage, so its CPU is the restore's speed.
 *
 * The SDK builds, signs and retries the request as always; only the exchange goes through
 * here: one request at a time on a socket kept alive between them (TLS for https), whose
 * every read lands in the same buffer (`onread`). The answer's head is parsed here. A body
 * that Content-Length delimits is a SocketBody: `readInto` hands its bytes to a reader as
 * views of that buffer, valid during the call only, and read as a stream it gives copies, as
 * any stream does. Whatever this does not read (another method than GET, a body without a
 * Content-Length, an interim answer) is asked again through the SDK's own handler.
 */
import { NodeHttpHandler } from '@smithy/node-http-handler';
import * as net from 'node:net';
import { Readable } from 'node:stream';
import * as tls from 'node:tls';

/** What the SDK hands a request handler (@smithy/types' HttpRequest, the fields a GET uses). */
export interface OutgoingRequest {
  method: string;
  protocol: string;
  hostname: string;
  port?: number;
  path: string;
  query?: Record<string, string | string[] | null>;
  headers: Record<string, string>;
  body?: unknown;
  fragment?: string;
  username?: string;
  password?: string;
}

/** What a request handler answers (@smithy/types' HttpResponse). */
export interface IncomingResponse {
  statusCode: number;
  reason?: string;
  headers: Record<string, string>;
  body: Readable;
}

type Fallback = Pick<NodeHttpHandler, 'handle'>;

/** Each socket's read buffer: a plain socket reads up to this at once, TLS a record (16 KiB). */
const READ_BUFFER_BYTES = 64 * 1024;
/** A kept-alive socket with no request for this long is closed (S3 closes them after 20 s). */
const IDLE_MS = 4000;
/** Connecting, and the TLS handshake, may take this long. */
const CONNECT_MS = 30_000;

/**
 * Whether the runner names an HTTP proxy: its reads then go through the SDK's handler, as
 * every other request does (Node 24 sends those through the proxy with NODE_USE_ENV_PROXY).
 */
function behindProxy(): boolean {
  return ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy'].some((v) => process.env[v]);
}

/** An error that the retries (s3/retry.ts) count as a network failure. */
function networkError(message: string, code = 'ECONNRESET'): Error {
  return Object.assign(new Error(message), { code });
}

function abortError(): Error {
  return Object.assign(new Error('The request was aborted'), { name: 'AbortError' });
}

/** RFC 3986 escaping, as the SDK signs the query. */
function escape(text: string): string {
  return encodeURIComponent(text).replace(
    /[!'()*]/g,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`,
  );
}

/** The request's path and query, as the SDK's own handler writes them. */
export function requestTarget(request: OutgoingRequest): string {
  const parts: string[] = [];
  for (const key of Object.keys(request.query ?? {}).sort()) {
    const value = request.query?.[key];
    if (Array.isArray(value)) for (const v of value) parts.push(`${escape(key)}=${escape(v)}`);
    else if (value === null || value === undefined) parts.push(escape(key));
    else parts.push(`${escape(key)}=${escape(value)}`);
  }
  return `${request.path}${parts.length > 0 ? `?${parts.join('&')}` : ''}`;
}

/** The head of an answer: its status line and its headers, names in lower case. */
export interface ResponseHead {
  version: string;
  statusCode: number;
  reason: string;
  headers: Record<string, string>;
}

/** Parses an answer's head (without its blank line); undefined when it is not HTTP/1.x. */
export function parseHead(text: string): ResponseHead | undefined {
  const lines = text.split('\r\n');
  const status = /^HTTP\/(1\.[01]) (\d{3})(?: (.*))?$/.exec(lines[0] ?? '');
  if (!status) return undefined;
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    const colon = line.indexOf(':');
    if (colon <= 0) return undefined;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = name in headers ? `${headers[name]}, ${value}` : value;
  }
  return {
    version: status[1] as string,
    statusCode: Number(status[2]),
    reason: status[3] ?? '',
    headers,
  };
}

/** Told of each read of a socket: its bytes, valid during the call only. False pauses the socket. */
type OnBytes = (view: Buffer) => boolean;

/** A socket of the pool, with the buffer that every read of it lands in. */
class Connection {
  readonly socket: net.Socket;
  /** The exchange that the socket's bytes go to, if any. */
  onBytes: OnBytes | undefined;
  /** Told when the socket ends or fails during an exchange. */
  onGone: ((error: Error) => void) | undefined;
  /** Answers that were read whole from it: a reused socket may have been closed by the server. */
  served = 0;
  private idle: NodeJS.Timeout | undefined;
  readonly ready: Promise<void>;

  constructor(
    readonly origin: string,
    request: OutgoingRequest,
    private readonly forget: (c: Connection) => void,
    tlsOptions: tls.ConnectionOptions,
  ) {
    const buffer = Buffer.allocUnsafeSlow(READ_BUFFER_BYTES);
    const onread = {
      buffer,
      callback: (n: number, b: Uint8Array): boolean => {
        const view = Buffer.from(b.buffer, b.byteOffset, n);
        if (!this.onBytes) {
          // Bytes that no request asked for: the socket cannot be trusted for another.
          this.socket.destroy();
          return false;
        }
        return this.onBytes(view);
      },
    };
    const host = request.hostname.replace(/^\[(.*)\]$/, '$1');
    const https = request.protocol === 'https:';
    const port = request.port ?? (https ? 443 : 80);
    // Node's types lack tls.connect's onread, which it takes as net.connect does (Node >= 15).
    const secure: tls.ConnectionOptions & { onread: typeof onread } = {
      ...tlsOptions,
      host,
      port,
      servername: net.isIP(host) ? undefined : host,
      ALPNProtocols: ['http/1.1'],
      onread,
    };
    this.socket = https ? tls.connect(secure) : net.connect({ host, port, onread });
    this.socket.setNoDelay(true);
    this.ready = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.socket.destroy(
          networkError(`no connection to ${this.origin} in ${CONNECT_MS / 1000} s`, 'ETIMEDOUT'),
        );
      }, CONNECT_MS);
      // A socket destroyed while it connects (its read stopped) must not hold the run's end.
      timer.unref();
      this.socket.once('close', () => clearTimeout(timer));
      this.socket.once(https ? 'secureConnect' : 'connect', () => {
        clearTimeout(timer);
        resolve();
      });
      this.socket.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
    this.ready.catch(() => undefined);
    this.socket.on('error', (error) => this.gone(error));
    this.socket.on('end', () => this.gone(networkError('the server closed the connection')));
    this.socket.on('close', () => this.gone(networkError('socket hang up')));
  }

  /** Kept for the next request; closed after IDLE_MS without one. */
  rest(): void {
    this.onBytes = undefined;
    this.onGone = undefined;
    this.served++;
    this.socket.unref();
    this.idle = setTimeout(() => this.socket.destroy(), IDLE_MS);
    this.idle.unref();
  }

  /** Taken for a request. */
  wake(): void {
    clearTimeout(this.idle);
    this.socket.ref();
    this.socket.resume();
  }

  get usable(): boolean {
    return !this.socket.destroyed && this.socket.readyState === 'open';
  }

  private gone(error: Error): void {
    clearTimeout(this.idle);
    this.forget(this);
    if (!this.socket.destroyed) this.socket.destroy();
    const tell = this.onGone;
    this.onGone = undefined;
    this.onBytes = undefined;
    tell?.(error);
  }
}

/**
 * A body that Content-Length delimits, read from a socket of the pool: see the module's
 * comment. The socket goes back to the pool once the last byte is read.
 */
export class SocketBody extends Readable {
  private left: number;
  private reader: ((view: Buffer) => void | Promise<void>) | undefined;
  private finished: { resolve: () => void; reject: (error: Error) => void } | undefined;
  /** Bytes that came with the head, kept until someone reads the body. */
  private pending: Buffer | undefined;
  private done = false;

  constructor(
    private readonly conn: Connection,
    length: number,
    first: Buffer,
    private readonly release: (reuse: boolean) => void,
    private readonly reusable: boolean,
  ) {
    super({ highWaterMark: 1024 * 1024 });
    this.left = length;
    this.pending = first.length > 0 ? first : undefined;
    conn.onBytes = (view) => this.bytes(view);
    conn.onGone = (error) => this.fail(error);
    if (length === 0) queueMicrotask(() => this.finish());
  }

  /**
   * Hands every byte of the body to `read`, as views valid during the call only (the socket's
   * next read overwrites them); a promise from `read` pauses the socket until it settles.
   * Resolves once the body is read whole. A body is read this way or as a stream, not both.
   */
  readInto(read: (view: Buffer) => void | Promise<void>): Promise<void> {
    this.reader = read;
    // Its failure is the promise's: the stream's 'error' event has no one to tell.
    this.on('error', () => undefined);
    const whole = new Promise<void>((resolve, reject) => {
      this.finished = { resolve, reject };
    });
    if (this.done) this.finished?.resolve();
    else if (this.errored) this.finished?.reject(this.errored);
    else this.start();
    return whole;
  }

  override _read(): void {
    if (!this.reader && !this.done) this.start();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (!this.done) {
      // A body left unread leaves the socket mid-answer: it cannot serve another.
      this.done = true;
      this.conn.onBytes = undefined;
      this.conn.onGone = undefined;
      this.release(false);
      this.finished?.reject(error ?? abortError());
    }
    callback(error);
  }

  /** The bytes that came with the head first, then the socket's. */
  private start(): void {
    const first = this.pending;
    this.pending = undefined;
    if (first && !this.bytes(first)) return;
    if (!this.done) this.conn.socket.resume();
  }

  /** Takes bytes of the body; false when the socket must wait. */
  private bytes(view: Buffer): boolean {
    if (view.length > this.left) {
      this.fail(
        networkError(`the server sent ${view.length - this.left} bytes past the body's length`),
      );
      return false;
    }
    this.left -= view.length;
    let more = true;
    if (this.reader) {
      let wait: void | Promise<void>;
      try {
        wait = this.reader(view);
      } catch (error) {
        this.destroy(error as Error);
        return false;
      }
      if (wait) {
        // The reader may still use the view: the socket (and its buffer) waits with it, even
        // after the body's last byte.
        wait.then(
          () => {
            if (this.left === 0) this.finish();
            else if (!this.done) this.conn.socket.resume();
          },
          (error: Error) => this.destroy(error),
        );
        return false;
      }
    } else {
      more = this.push(Buffer.from(view));
    }
    if (this.left === 0) {
      this.finish();
      return true;
    }
    return more;
  }

  private finish(): void {
    if (this.done) return;
    this.done = true;
    this.conn.onBytes = undefined;
    this.conn.onGone = undefined;
    this.release(this.reusable);
    if (this.reader) this.finished?.resolve();
    else this.push(null);
  }

  private fail(error: Error): void {
    if (!this.done) this.destroy(error);
  }
}

/**
 * The request handler of the read client (see the module's comment): GETs on pooled sockets,
 * everything else through `fallback`.
 */
export class SocketGetHandler {
  readonly metadata = { handlerProtocol: 'http/1.1' };
  private readonly idle = new Map<string, Connection[]>();

  /**
   * `tlsOptions` add to tls.connect's (a `ca` in tests; Node's CAs and
   * NODE_EXTRA_CA_CERTS otherwise, as for the SDK's handler).
   */
  constructor(
    private readonly fallback: Fallback = new NodeHttpHandler(),
    private readonly tlsOptions: tls.ConnectionOptions = {},
  ) {}

  async handle(
    request: OutgoingRequest,
    options: { abortSignal?: unknown } = {},
  ): Promise<{ response: IncomingResponse }> {
    if (
      request.method !== 'GET' ||
      request.body !== undefined ||
      request.username ||
      request.password ||
      behindProxy()
    ) {
      return this.fallback.handle(request as never, options as never) as never;
    }
    // The SDK passes the AbortSignal given to its send().
    const signal = options.abortSignal as AbortSignal | undefined;
    if (signal?.aborted) throw abortError();
    for (let attempt = 1; ; attempt++) {
      const conn = this.take(request);
      try {
        const answer = await this.exchange(conn, request, signal);
        if (answer === 'fallback') {
          return this.fallback.handle(request as never, options as never) as never;
        }
        return { response: answer };
      } catch (error) {
        // A kept-alive socket that the server had closed fails before any answer: the GET
        // goes once more on a new socket, as Node's own client does.
        const stale = (error as { stale?: boolean }).stale === true;
        if (!stale || attempt > 1 || signal?.aborted) throw error;
      }
    }
  }

  /** Closes every idle socket. */
  destroy(): void {
    for (const list of this.idle.values()) for (const c of list) c.socket.destroy();
    this.idle.clear();
  }

  updateHttpClientConfig(): void {}

  httpHandlerConfigs(): Record<string, never> {
    return {};
  }

  private take(request: OutgoingRequest): Connection {
    const origin = `${request.protocol}//${request.hostname}:${request.port ?? ''}`;
    const list = this.idle.get(origin) ?? [];
    for (let c = list.pop(); c; c = list.pop()) {
      if (c.usable) {
        c.wake();
        return c;
      }
    }
    return new Connection(origin, request, (c) => this.forget(c), this.tlsOptions);
  }

  private forget(c: Connection): void {
    const list = this.idle.get(c.origin);
    const i = list?.indexOf(c) ?? -1;
    if (list && i >= 0) list.splice(i, 1);
  }

  private rest(c: Connection): void {
    if (!c.usable) return;
    c.rest();
    const list = this.idle.get(c.origin) ?? [];
    list.push(c);
    this.idle.set(c.origin, list);
  }

  /** One request and the head of its answer; the body follows as the answer's SocketBody. */
  private exchange(
    conn: Connection,
    request: OutgoingRequest,
    signal: AbortSignal | undefined,
  ): Promise<IncomingResponse | 'fallback'> {
    const reused = conn.served > 0;
    return new Promise<IncomingResponse | 'fallback'>((resolve, reject) => {
      let settled = false;
      let head = Buffer.alloc(0);
      let body: SocketBody | undefined;
      const onAbort = (): void => {
        conn.socket.destroy();
        if (body) body.destroy(abortError());
        else settle(() => reject(abortError()));
      };
      const settle = (then: () => void): void => {
        if (settled) return;
        settled = true;
        then();
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const unlisten = (): void => signal?.removeEventListener('abort', onAbort);
      conn.onGone = (error) => {
        unlisten();
        // Nothing of the answer came on a socket that had served one: the server closed it.
        settle(() => reject(Object.assign(error, { stale: reused && head.length === 0 })));
      };
      conn.onBytes = (view) => {
        head = Buffer.concat([head, view]);
        const end = head.indexOf('\r\n\r\n');
        if (end < 0) {
          if (head.length > 64 * 1024) {
            conn.socket.destroy();
            settle(() => reject(networkError("the answer's head is longer than 64 KiB")));
          }
          return true;
        }
        const parsed = parseHead(head.subarray(0, end).toString('latin1'));
        const rest = head.subarray(end + 4);
        const length = Number(parsed?.headers['content-length'] ?? NaN);
        if (
          !parsed ||
          parsed.statusCode < 200 ||
          parsed.headers['transfer-encoding'] !== undefined ||
          !Number.isSafeInteger(length) ||
          length < 0
        ) {
          // Not an answer this reads: the SDK's handler asks again.
          conn.onBytes = undefined;
          conn.onGone = undefined;
          conn.socket.destroy();
          unlisten();
          settle(() => resolve('fallback'));
          return false;
        }
        const reusable =
          parsed.version === '1.1' && !/\bclose\b/i.test(parsed.headers.connection ?? '');
        // Until someone reads the body, the socket waits.
        conn.socket.pause();
        body = new SocketBody(
          conn,
          length,
          rest,
          (reuse) => {
            unlisten();
            if (reuse) this.rest(conn);
            else conn.socket.destroy();
          },
          reusable,
        );
        const response: IncomingResponse = {
          statusCode: parsed.statusCode,
          reason: parsed.reason,
          headers: parsed.headers,
          body,
        };
        settle(() => resolve(response));
        return false;
      };
      conn.ready.then(
        () => {
          if (settled) return;
          const lines = [`GET ${requestTarget(request)} HTTP/1.1`];
          const headers = Object.entries(request.headers);
          if (!headers.some(([name]) => name.toLowerCase() === 'host')) {
            lines.push(`host: ${request.hostname}${request.port ? `:${request.port}` : ''}`);
          }
          for (const [name, value] of headers) lines.push(`${name}: ${value}`);
          conn.socket.write(`${lines.join('\r\n')}\r\n\r\n`, 'latin1');
        },
        (error: Error) => {
          unlisten();
          settle(() => reject(error));
        },
      );
    });
  }
}
