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
import type * as tls from 'node:tls';
import {
  abortError,
  networkError,
  parseHead,
  requestTarget,
  type IncomingResponse,
  type OutgoingRequest,
} from './http-wire.js';
import { Connection, SocketBody } from './socket-body.js';

type Fallback = Pick<NodeHttpHandler, 'handle'>;

/**
 * Whether the runner names an HTTP proxy: its reads then go through the SDK's handler, as
 * every other request does (Node 24 sends those through the proxy with NODE_USE_ENV_PROXY).
 */
function behindProxy(): boolean {
  return ['HTTPS_PROXY', 'https_proxy', 'HTTP_PROXY', 'http_proxy'].some((v) => process.env[v]);
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
