/**
 * The plain tar that carries a tree's files over SSH, in both directions. Reading is pulled
 * (the next bytes are asked for only when the last file has room on the runner), so the
 * SSH channel's own back-pressure bounds memory; writing makes GNU tar's input: a header,
 * the bytes, the padding to 512.
 */
import { Header, Pax } from 'tar';

const BLOCK = 512;

/** The stream ended in the middle of a file: its writer died, or its connection was lost. */
export class TarEndedError extends Error {
  constructor() {
    super('the tar stream ended in the middle of a file');
  }
}

/**
 * Reads exact byte counts from a sequence of chunks. A chunk may be reused once the next is
 * asked for (see ringChunks): what `some` returns is read, or copied, before the next call.
 */
export class ChunkReader {
  private chunk: Buffer = Buffer.alloc(0);
  private offset = 0;

  constructor(private readonly source: AsyncIterator<Buffer>) {}

  /** Up to `max` bytes, at least one; undefined at the end of the input. */
  async some(max: number): Promise<Buffer | undefined> {
    while (this.offset >= this.chunk.length) {
      const next = await this.source.next();
      if (next.done) return undefined;
      this.chunk = next.value;
      this.offset = 0;
    }
    const n = Math.min(max, this.chunk.length - this.offset);
    const out = this.chunk.subarray(this.offset, this.offset + n);
    this.offset += n;
    return out;
  }

  /** Exactly `n` bytes copied into `into` (from `at`); throws TarEndedError when the input ends first. */
  async readInto(into: Buffer, at: number, n: number): Promise<void> {
    let done = 0;
    while (done < n) {
      const piece = await this.some(n - done);
      if (!piece) throw new TarEndedError();
      piece.copy(into, at + done);
      done += piece.length;
    }
  }

  async read(n: number): Promise<Buffer> {
    const out = Buffer.allocUnsafe(n);
    await this.readInto(out, 0, n);
    return out;
  }

  /** Reads what is left (tar pads its end to a whole record): the writer can then finish. */
  async drain(): Promise<void> {
    this.offset = this.chunk.length;
    while (!(await this.source.next()).done);
  }

  async skip(n: number): Promise<void> {
    let left = n;
    while (left > 0) {
      const piece = await this.some(left);
      if (!piece) throw new TarEndedError();
      left -= piece.length;
    }
  }
}

export const padding = (size: number): number => (BLOCK - (size % BLOCK)) % BLOCK;

/** A member of the tar stream: its name and size; its bytes follow in the reader. */
export interface Member {
  name: string;
  size: number;
  type: 'file' | 'dir' | 'other';
}

function field(header: Buffer, at: number, length: number): string {
  const raw = header.subarray(at, at + length);
  const end = raw.indexOf(0);
  return raw.subarray(0, end < 0 ? length : end).toString('utf8');
}

function number(header: Buffer, at: number, length: number): number {
  if ((header[at] ?? 0) & 0x80) {
    // GNU's base-256 for values that octal cannot hold (files of 8 GiB and more).
    let value = 0;
    for (let i = at + 1; i < at + length; i++) value = value * 256 + (header[i] ?? 0);
    return value;
  }
  const text = field(header, at, length).trim();
  return text ? parseInt(text, 8) : 0;
}

/**
 * The next member of a GNU tar stream (GNU long names and pax headers resolved), or undefined
 * at its end. Its bytes are then read by the caller, followed by `padding(size)`.
 */
export async function nextMember(reader: ChunkReader): Promise<Member | undefined> {
  let longName: string | undefined;
  for (;;) {
    const header = await reader.some(BLOCK).then(async (first) => {
      if (!first) return undefined;
      if (first.length === BLOCK) return Buffer.from(first);
      const whole = Buffer.allocUnsafe(BLOCK);
      first.copy(whole);
      await reader.readInto(whole, first.length, BLOCK - first.length);
      return whole;
    });
    if (!header || header.every((b) => b === 0)) return undefined;
    const sum = number(header, 148, 8);
    let check = 0;
    for (let i = 0; i < BLOCK; i++) check += i >= 148 && i < 156 ? 32 : (header[i] ?? 0);
    if (sum !== check) throw new Error('the tar stream holds a damaged header');
    const type = String.fromCharCode(header[156] ?? 0);
    const size = number(header, 124, 12);
    if (type === 'L' || type === 'x') {
      const meta = (await reader.read(size)).toString('utf8');
      await reader.skip(padding(size));
      if (type === 'L') longName = meta.replace(/\0+$/, '');
      else {
        const path = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(meta)?.[1];
        if (path !== undefined) longName = path;
      }
      continue;
    }
    const prefix = field(header, 345, 155);
    const short = field(header, 0, 100);
    const name = longName ?? (prefix ? `${prefix}/${short}` : short);
    return {
      name,
      size,
      type: type === '0' || type === '\0' ? 'file' : type === '5' ? 'dir' : 'other',
    };
  }
}

/** The header (with a pax header before it for a long name) of a file or a directory. */
export function memberHeader(
  path: string,
  type: 'File' | 'Directory',
  size: number,
  mode: number,
): Buffer {
  const fields = {
    path: type === 'Directory' ? `${path}/` : path,
    type,
    size: type === 'File' ? size : 0,
    mode,
    mtime: new Date(),
    uid: 0,
    gid: 0,
  };
  const header = new Header(fields);
  const block = Buffer.alloc(BLOCK);
  const needsPax = header.encode(block, 0);
  if (!needsPax) return block;
  return Buffer.concat([new Pax({ ...fields, mtime: undefined } as never).encode(), block]);
}

/** The end of a tar stream: two zero blocks. */
export const END_OF_TAR = Buffer.alloc(2 * BLOCK);
