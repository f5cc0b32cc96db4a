// A TCP proxy on 127.0.0.1 that can cut every connection it carries: on demand, or once
// a number of bytes has gone through in one direction. For "connection lost mid-stream" tests.
// It can also cap each connection's throughput in each direction, as a slow link does.
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
}

export interface CutProxy {
  port: number;
  /** Bytes moved since start (all connections): up = client -> target, down = target -> client. */
  bytes: { up: number; down: number };
  /** Number of connections accepted so far. */
  connections: number;
  /** Number of cuts done (automatic or on demand). */
  cuts: number;
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

export function startCutProxy(opts: CutProxyOptions): Promise<CutProxy> {
  const targetHost = opts.targetHost ?? '127.0.0.1';
  const pairs = new Set<{ client: Socket; upstream: Socket }>();
  let refusing = false;
  let limits: { up?: number; down?: number } = {};
  let base = { up: 0, down: 0 };
  let waiters: Array<() => void> = [];
  let pendingCut = false;

  const state = {
    bytes: { up: 0, down: 0 },
    connections: 0,
    cuts: 0,
  };

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

  // Forward chunk from src to dst, counting it in direction dir; cut at the limit.
  const pipe = (src: Socket, dst: Socket, dir: 'up' | 'down'): void => {
    let due = 0;
    src.on('data', (chunk: Buffer) => {
      if (pendingCut) return; // a cut is under way: nothing more goes through
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
      state.bytes[dir] += chunk.length;
      const rate = opts.bytesPerSecond;
      if (rate !== undefined) {
        // The chunk goes now; the connection takes nothing more until its time has passed.
        dst.write(chunk);
        src.pause();
        const now = performance.now();
        due = Math.max(due, now) + (chunk.length / rate) * 1000;
        setTimeout(() => src.resume(), due - now);
        return;
      }
      if (!dst.write(chunk)) {
        src.pause();
        dst.once('drain', () => src.resume());
      }
    });
    src.on('end', () => dst.end());
  };

  const server = createServer((client) => {
    state.connections++;
    if (refusing) {
      client.resetAndDestroy();
      return;
    }
    client.pause();
    const upstream = connect({ host: targetHost, port: opts.targetPort });
    const pair = { client, upstream };
    pairs.add(pair);
    const close = (): void => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close);
    upstream.on('error', close);
    client.on('close', close);
    upstream.on('close', close);
    upstream.once('connect', () => client.resume());
    pipe(client, upstream, 'up');
    pipe(upstream, client, 'down');
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
