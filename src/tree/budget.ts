/**
 * The memory a tree backup holds for its files in flight (tree/send.ts): counted and lent by
 * one budget of files and bytes (the inputs files-in-flight, bytes-in-flight).
 */
import { PIECE_BYTES } from '../s3/pieces.js';

/**
 * A budget of files and bytes, which lends the memory it counts: `take` waits until both fit,
 * then lends a buffer that `give` takes back for the next file. Reused, the buffers are never
 * garbage: allocated anew per file, each waited for a full collection to be freed, and the
 * runner held up to twice the budget (221 MiB at the peak of a 2 GiB backup, 64 MiB budget).
 */
export class Budget {
  private files = 0;
  private bytes = 0;
  private waiting: Array<() => void> = [];
  /** Buffers given back, smallest first; sizes rounded up to a piece, so that they fit again. */
  private free: Buffer[] = [];
  private freeBytes = 0;
  /** What each lent view is a view of. */
  private lent = new Map<Buffer, Buffer>();

  constructor(
    private readonly maxFiles: number,
    private readonly maxBytes: number,
  ) {}

  async take(bytes: number): Promise<Buffer> {
    while (this.files >= this.maxFiles || (this.files > 0 && this.bytes + bytes > this.maxBytes))
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    this.files++;
    this.bytes += bytes;
    const at = this.free.findIndex((b) => b.length >= bytes);
    let whole: Buffer;
    if (at >= 0) {
      whole = this.free.splice(at, 1)[0] as Buffer;
      this.freeBytes -= whole.length;
    } else {
      // None fits: the smallest given back make room for a new one, within the budget.
      while (this.free.length > 0 && this.freeBytes + this.bytes > this.maxBytes) {
        this.freeBytes -= (this.free.shift() as Buffer).length;
      }
      whole = Buffer.allocUnsafeSlow(Math.max(1, Math.ceil(bytes / PIECE_BYTES)) * PIECE_BYTES);
    }
    const view = whole.subarray(0, bytes);
    this.lent.set(view, whole);
    return view;
  }

  give(view: Buffer): void {
    const whole = this.lent.get(view);
    if (!whole) throw new Error('a buffer given back that the budget did not lend');
    this.lent.delete(view);
    this.files--;
    this.bytes -= view.length;
    const at = this.free.findIndex((b) => b.length >= whole.length);
    this.free.splice(at < 0 ? this.free.length : at, 0, whole);
    this.freeBytes += whole.length;
    for (const w of this.waiting.splice(0)) w();
  }

  get idle(): boolean {
    return this.files === 0;
  }
}
