// A TCP proxy on 127.0.0.1 that can cut every connection it carries: on demand, or once
// a number of bytes has gone through in one direction. For "connection lost mid-stream" tests.
// It can also act as a network does between a runner and S3: cap each connection's throughput
// in each direction, delay what it carries, cut each connection after it alone carried N bytes,
// and answer an HTTP request now and then with S3's 503 Slow Down instead of forwarding it.
import { createServer, connect, type Socket } from 'node:net';

export interface CutLimits {
  /** Cut once this many bytes went client -> target (e.g. restore: data sent to sshd). */
  upBytes?: number;
  /** Cut once this many bytes went target -> client (e.g. backup: archive coming from sshd). */
  downBytes?: number;
}

export interface CutProxyOptions extends CutLimits {
  targetPort: number;
  targetHost?: string;
  /** After a cut, refuse (reset) new connections too, until heal(). Default false: new connections go through. */
  refuseAfterCut?: boolean;
  /** Caps each connection, in each direction, at this many bytes a second. */
  bytesPerSecond?: number;
  /** Delays what each connection carries, in each direction, by this long (a round trip gains twice it). */
  latencyMs?: number;
  /**
   * Resets each connection once it alone has carried this many bytes in a direction (a flaky
   * link: every connection dies after a while), unlike upBytes/downBytes, which count all
   * connections together and cut once.
   */
  perConnection?: CutLimits;
  /** With perConnection: cut at most this many connections, then let the rest through. Default: no end. */
  perConnectionCuts?: number;
  /** With perConnection: 'stall' holds the connection open and silent instead of resetting it. */
  perConnectionMode?: 'reset' | 'stall';
  /**
   * Answers every Nth HTTP request with 503 Slow Down (S3's answer under load) and closes that
   * connection, instead of forwarding the request. A request is known by its request line at
   * the start of what the client sends: the HTTP/1.1 clients here send one request at a time
   * and write its head in one piece, and a body of archive bytes does not start with one.
   */
  slowDownEvery?: number;
}

export interface CutProxy {
  port: number;
  /** Bytes moved since start (all connections): up = client -> target, down = target -> client. */
  bytes: { up: number; down: number };
  /** Number of connections accepted so far. */
  connections: number;
  /** Number of cuts done (automatic or on demand), and connections cut by perConnection. */
  cuts: number;
  /** HTTP requests seen (counted only with slowDownEvery). */
  requests: number;
  /** Requests answered with 503 Slow Down. */
  slowDowns: number;
  /** Resolves at the next cut. */
  cutHappened(): Promise<void>;
  /** Reset (RST) every open connection now. */
  cut(): void;
  /** Arm (again) byte limits, counted from now. */
  arm(limits: CutLimits): void;
  /** Accept new connections again after a cut with refuseAfterCut. */
  heal(): void;
  stop(): Promise<void>;
}

interface Pair {
  client: Socket;
  upstream: Socket;
  /** Bytes this connection carried: up = client -> target, down = target -> client. */
  bytes: { up: number; down: number };
  /** Ended cleanly: up = the client sent its end, down = the target did. */
  ended: { up: boolean; down: boolean };
  /** Cut or answered: nothing more is forwarded. */
  done: boolean;
}

export function startCutProxy(opts: CutProxyOptions): Promise<CutProxy> {
  const targetHost = opts.targetHost ?? '127.0.0.1';
  const pairs = new Set<Pair>();
  let refusing = false;
  let limits: { up?: number; down?: number } = {};
  let base = { up: 0, down: 0 };
  let waiters: Array<() => void> = [];
  let pendingCut = false;

  const state = {
    bytes: { up: 0, down: 0 },
    connections: 0,
    cuts: 0,
    requests: 0,
    slowDowns: 0,
  };
  let perConnectionCuts = 0;

  const doCut = (): void => {
    pendingCut = false;
    state.cuts++;
    limits = {};
    if (opts.refuseAfterCut) refusing = true;
    for (const p of pairs) {
      p.client.resetAndDestroy();
      p.upstream.resetAndDestroy();
    }
    pairs.clear();
    const w = waiters;
    waiters = [];
    for (const f of w) f();
  };

  /** Resets one connection (both of its sockets). */
  const cutPair = (pair: Pair): void => {
    pair.done = true;
    pairs.delete(pair);
    pair.client.resetAndDestroy();
    pair.upstream.resetAndDestroy();
  };

  /** Answers the client with 503 Slow Down and closes the connection; the request goes nowhere. */
  const slowDown = (pair: Pair, head: boolean): void => {
    state.slowDowns++;
    pair.done = true;
    pairs.delete(pair);
    pair.upstream.destroy();
    const body =
      '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>' +
      '<Message>Please reduce your request rate.</Message></Error>';
    pair.client.end(
      `HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${head ? '' : body}`,
    );
  };

  // Forward chunk from src to dst, counting it in direction dir; cut at the limit.
  const pipe = (pair: Pair, src: Socket, dst: Socket, dir: 'up' | 'down'): void => {
    let due = 0;
    const latency = opts.latencyMs ?? 0;
    const deliver = (chunk: Buffer): boolean => {
      if (latency <= 0) return dst.write(chunk);
      // Timers of one duration fire in the order they were set: the bytes stay in order.
      setTimeout(() => {
        if (!dst.destroyed) dst.write(chunk);
      }, latency);
      return true;
    };
    src.on('data', (chunk: Buffer) => {
      if (pendingCut || pair.done) return; // a cut is under way: nothing more goes through
      if (dir === 'up' && opts.slowDownEvery !== undefined) {
        const start = chunk.subarray(0, 8).toString('latin1');
        if (/^(GET|HEAD|PUT|POST|DELETE) \//.test(start)) {
          state.requests++;
          if (state.requests % opts.slowDownEvery === 0) {
            slowDown(pair, start.startsWith('HEAD'));
            return;
          }
        }
      }
      const limit = limits[dir];
      if (limit !== undefined) {
        const used = state.bytes[dir] - base[dir];
        const room = limit - used;
        if (chunk.length >= room) {
          const part = chunk.subarray(0, Math.max(0, room));
          state.bytes[dir] += part.length;
          limits = {};
          pendingCut = true;
          // Hand the partial chunk to the kernel, then cut. (The peer may still lose
          // bytes that were in flight when the RST arrives: treat N as approximate.)
          if (part.length > 0) dst.write(part, () => doCut());
          else doCut();
          return;
        }
      }
      const each = opts.perConnection?.[dir === 'up' ? 'upBytes' : 'downBytes'];
      if (
        each !== undefined &&
        (opts.perConnectionCuts === undefined || perConnectionCuts < opts.perConnectionCuts)
      ) {
        const room = each - pair.bytes[dir];
        if (chunk.length >= room) {
          const part = chunk.subarray(0, Math.max(0, room));
          state.bytes[dir] += part.length;
          perConnectionCuts++;
          state.cuts++;
          pair.done = true;
          if (opts.perConnectionMode === 'stall') {
            // Nothing more goes through either way; the sockets stay open until a peer closes.
            if (part.length > 0) dst.write(part);
            return;
          }
          if (part.length > 0) dst.write(part, () => cutPair(pair));
          else cutPair(pair);
          return;
        }
      }
      pair.bytes[dir] += chunk.length;
      state.bytes[dir] += chunk.length;
      const rate = opts.bytesPerSecond;
      if (rate !== undefined) {
        // The chunk goes now; the connection takes nothing more until its time has passed.
        deliver(chunk);
        src.pause();
        const now = performance.now();
        due = Math.max(due, now) + (chunk.length / rate) * 1000;
        setTimeout(() => src.resume(), due - now);
        return;
      }
      if (!deliver(chunk)) {
        src.pause();
        dst.once('drain', () => src.resume());
      }
    });
    src.on('end', () => {
      pair.ended[dir] = true;
      if (latency > 0) setTimeout(() => dst.end(), latency);
      else dst.end();
    });
  };

  const server = createServer((client) => {
    state.connections++;
    if (refusing) {
      client.resetAndDestroy();
      return;
    }
    client.pause();
    const upstream = connect({ host: targetHost, port: opts.targetPort });
    const pair: Pair = {
      client,
      upstream,
      bytes: { up: 0, down: 0 },
      ended: { up: false, down: false },
      done: false,
    };
    pairs.add(pair);
    const close = (): void => {
      pairs.delete(pair);
      // A connection answered by slowDown() closes once its answer is flushed.
      if (!pair.done) client.destroy();
      upstream.destroy();
    };
    client.on('error', close);
    upstream.on('error', close);
    // A side that ended cleanly passed its end on (after the delay, behind what the delay still
    // holds): the other side is ended, not destroyed, and closes once it has written the rest.
    const closed = (dir: 'up' | 'down') => (): void => {
      if (pair.ended[dir] && !pair.done && !(client.destroyed && upstream.destroyed)) return;
      close();
    };
    client.on('close', closed('up'));
    upstream.on('close', closed('down'));
    upstream.once('connect', () => client.resume());
    pipe(pair, client, upstream, 'up');
    pipe(pair, upstream, client, 'down');
  });

  const armLimits = (l: CutLimits): void => {
    base = { ...state.bytes };
    limits = { up: l.upBytes, down: l.downBytes };
  };
  armLimits(opts);

  return new Promise((resolveProxy, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const addr = server.address();
      if (addr === null || typeof addr === 'string') {
        reject(new Error('cut-proxy: no address'));
        return;
      }
      resolveProxy({
        port: addr.port,
        get bytes() {
          return { ...state.bytes };
        },
        get connections() {
          return state.connections;
        },
        get cuts() {
          return state.cuts;
        },
        get requests() {
          return state.requests;
        },
        get slowDowns() {
          return state.slowDowns;
        },
        cutHappened: () => new Promise<void>((r) => waiters.push(r)),
        cut: doCut,
        arm: armLimits,
        heal: () => {
          refusing = false;
        },
        stop: () =>
          new Promise<void>((r) => {
            for (const p of pairs) {
              p.client.destroy();
              p.upstream.destroy();
            }
            pairs.clear();
            server.close(() => r());
          }),
      } as CutProxy);
    });
  });
}
