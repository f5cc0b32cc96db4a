/**
 * Memory for bytes that a read holds until they are handed on (an archive's ranges, a tree's
 * files), in pieces that are used again once handed on: the bytes never become garbage for
 * the runner to collect (see socket-get.ts), and what a read holds is what its bound says.
 */

/** Pieces are this large: a range or a file rounds its memory up to it. */
export const PIECE_BYTES = 256 * 1024;

/** The pieces that are free, made as needed and never given back to the system. */
export class MemoryPool {
  private readonly free: Buffer[] = [];

  take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafeSlow(PIECE_BYTES);
  }

  give(piece: Buffer): void {
    this.free.push(piece);
  }
}

/** A piece taken from the list, and the bytes of it that are filled. */
export interface Piece {
  piece: Buffer;
  bytes: Buffer;
}

/** Bytes copied in, in order, into pieces of a pool. */
export class PieceList {
  private readonly pieces: Buffer[] = [];
  /** Bytes in the last piece. */
  private lastFill = 0;

  constructor(private readonly pool: MemoryPool) {}

  /** Copies `view` in (it may be a buffer used again after the call). */
  add(view: Uint8Array): void {
    for (let at = 0; at < view.length;) {
      let piece = this.pieces.at(-1);
      if (!piece || this.lastFill === PIECE_BYTES) {
        piece = this.pool.take();
        this.pieces.push(piece);
        this.lastFill = 0;
      }
      const n = Math.min(view.length - at, PIECE_BYTES - this.lastFill);
      piece.set(view.subarray(at, at + n), this.lastFill);
      this.lastFill += n;
      at += n;
    }
  }

  /**
   * The first piece, taken off the list when it is full, or with `partial` whatever it holds;
   * its holder gives it back to the pool once the bytes are handed on.
   */
  shift(partial: boolean): Piece | undefined {
    const piece = this.pieces[0];
    if (!piece) return undefined;
    const full = this.pieces.length > 1 || this.lastFill === PIECE_BYTES;
    if (!full && !partial) return undefined;
    this.pieces.shift();
    const length = full ? PIECE_BYTES : this.lastFill;
    if (this.pieces.length === 0) this.lastFill = 0;
    return { piece, bytes: piece.subarray(0, length) };
  }

  /** Gives every piece back to the pool. */
  clear(): void {
    for (const piece of this.pieces.splice(0)) this.pool.give(piece);
    this.lastFill = 0;
  }
}
