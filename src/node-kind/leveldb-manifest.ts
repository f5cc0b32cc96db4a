/**
 * Reads a LevelDB MANIFEST: a log file (32 KiB blocks of checksummed records) whose
 * records are VersionEdits. Replaying the edits gives the set of table files that the
 * database's current version uses. Tables on disk that are not in that set are left over
 * from an interrupted compaction: they belong to nobody and must not enter a snapshot.
 */

const BLOCK_SIZE = 32 * 1024;
const HEADER_SIZE = 7;

enum RecordType {
  Zero = 0,
  Full = 1,
  First = 2,
  Middle = 3,
  Last = 4,
}

enum Tag {
  Comparator = 1,
  LogNumber = 2,
  NextFileNumber = 3,
  LastSequence = 4,
  CompactPointer = 5,
  DeletedFile = 6,
  NewFile = 7,
  PrevLogNumber = 9,
}

export class ManifestError extends Error {
  override name = 'ManifestError';
}

export interface LiveTable {
  level: number;
  fileNumber: number;
  size: number;
}

export interface ManifestState {
  comparator?: string;
  logNumber?: number;
  nextFileNumber?: number;
  /** Tables of the current version, keyed by file number. */
  tables: Map<number, LiveTable>;
}

/** Splits a LevelDB log into its logical records, checking each record's CRC32C. */
export function readLogRecords(buf: Buffer): Buffer[] {
  const records: Buffer[] = [];
  let pending: Buffer[] | undefined;
  let offset = 0;
  while (offset < buf.length) {
    const leftInBlock = BLOCK_SIZE - (offset % BLOCK_SIZE);
    if (leftInBlock < HEADER_SIZE) {
      offset += leftInBlock; // trailer padding
      continue;
    }
    if (offset + HEADER_SIZE > buf.length) break;
    const storedCrc = buf.readUInt32LE(offset);
    const length = buf.readUInt16LE(offset + 4);
    const type = buf[offset + 6] as RecordType;
    if (type === RecordType.Zero && length === 0) {
      offset += leftInBlock; // preallocated, zero-filled tail of a block
      continue;
    }
    const start = offset + HEADER_SIZE;
    const end = start + length;
    if (end > buf.length || length > leftInBlock - HEADER_SIZE) {
      // A record cut short by a crash: LevelDB ignores the torn tail as well.
      break;
    }
    const actual = maskCrc(crc32c(buf.subarray(offset + 6, end)));
    if (actual !== storedCrc) {
      throw new ManifestError(`MANIFEST record at byte ${offset} fails its checksum`);
    }
    const data = buf.subarray(start, end);
    switch (type) {
      case RecordType.Full:
        records.push(Buffer.from(data));
        pending = undefined;
        break;
      case RecordType.First:
        pending = [Buffer.from(data)];
        break;
      case RecordType.Middle:
        if (pending) pending.push(Buffer.from(data));
        break;
      case RecordType.Last:
        if (pending) {
          pending.push(Buffer.from(data));
          records.push(Buffer.concat(pending));
        }
        pending = undefined;
        break;
      default:
        throw new ManifestError(`MANIFEST record at byte ${offset} has unknown type ${type}`);
    }
    offset = end;
  }
  return records;
}

class Reader {
  private pos = 0;
  constructor(private readonly buf: Buffer) {}

  get done(): boolean {
    return this.pos >= this.buf.length;
  }

  varint(): number {
    let result = 0;
    let factor = 1;
    for (let i = 0; i < 10; i++) {
      const byte = this.buf[this.pos++];
      if (byte === undefined) throw new ManifestError('VersionEdit ends inside a varint');
      result += (byte & 0x7f) * factor;
      if ((byte & 0x80) === 0) return result;
      factor *= 128;
    }
    throw new ManifestError('VersionEdit has a varint longer than 10 bytes');
  }

  bytes(): Buffer {
    const length = this.varint();
    if (this.pos + length > this.buf.length) {
      throw new ManifestError('VersionEdit ends inside a string');
    }
    const out = this.buf.subarray(this.pos, this.pos + length);
    this.pos += length;
    return out;
  }
}

/** Replays every VersionEdit of a MANIFEST and returns the resulting version. */
export function parseManifest(buf: Buffer): ManifestState {
  const state: ManifestState = { tables: new Map() };
  for (const record of readLogRecords(buf)) {
    const r = new Reader(record);
    while (!r.done) {
      const tag = r.varint();
      switch (tag) {
        case Tag.Comparator:
          state.comparator = r.bytes().toString('utf8');
          break;
        case Tag.LogNumber:
          state.logNumber = r.varint();
          break;
        case Tag.NextFileNumber:
          state.nextFileNumber = r.varint();
          break;
        case Tag.LastSequence:
        case Tag.PrevLogNumber:
          r.varint();
          break;
        case Tag.CompactPointer:
          r.varint();
          r.bytes();
          break;
        case Tag.DeletedFile: {
          r.varint(); // level
          state.tables.delete(r.varint());
          break;
        }
        case Tag.NewFile: {
          const level = r.varint();
          const fileNumber = r.varint();
          const size = r.varint();
          r.bytes(); // smallest key
          r.bytes(); // largest key
          state.tables.set(fileNumber, { level, fileNumber, size });
          break;
        }
        default:
          throw new ManifestError(`VersionEdit has unknown tag ${tag}`);
      }
    }
  }
  return state;
}

/** The table file number of `000123.ldb` or `000123.sst`, or undefined for other files. */
export function tableFileNumber(name: string): number | undefined {
  const m = /^(\d+)\.(ldb|sst)$/.exec(name);
  return m ? Number(m[1]) : undefined;
}

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

export function crc32c(buf: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of buf) crc = (CRC_TABLE[(crc ^ byte) & 0xff] as number) ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

function maskCrc(crc: number): number {
  return ((((crc >>> 15) | (crc << 17)) >>> 0) + 0xa282ead8) >>> 0;
}
