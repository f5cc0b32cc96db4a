/**
 * The read client's sockets (socket-get.ts): each reads into one buffer of its own (`onread`),
 * and a body that Content-Length delimits is handed on from that buffer.
 */
import * as net from 'node:net';
import { Readable } from 'node:stream';
import * as tls from 'node:tls';
import { abortError, networkError, type OutgoingRequest } from './http-wire.js';

/** Each socket's read buffer: a plain socket reads up to this at once, TLS a record (16 KiB). */
const READ_BUFFER_BYTES = 64 * 1024;
/** A kept-alive socket with no request for this long is closed (S3 closes them after 20 s). */
const IDLE_MS = 4000;
/** Connecting, and the TLS handshake, may take this long. */
const CONNECT_MS = 30_000;

/** Told of each read of a socket: its bytes, valid during the call only. False pauses the socket. */
type OnBytes = (view: Buffer) => boolean;

/** A socket of the pool, with the buffer that every read of it lands in. */
export class Connection {
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
