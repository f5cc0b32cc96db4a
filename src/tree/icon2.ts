/**
 * A tree in the form that icon2-node's own restore reads (icon2-docker, `FASTEST_START` with
 * `DOWNLOAD_URL_TYPE=indexing`), and the reading of a tree that someone else published in that
 * form. What that restore does, and so what these files must give it:
 *
 * 1. `GET {DOWNLOAD_URL}/{SERVICE}.json` -> `{"index_url": …, "checksum_url": …}`. Both files
 *    are saved under `{node dir}/restore/` by the last segment of their URL's path (query left
 *    out), so the two must end in different names.
 * 2. `aria2c -i {index} -d {node dir} -V -j10 -x8 --http-accept-gzip --disk-cache=64M -c
 *    --allow-overwrite --log-level=error`. The index is an aria2c input file: a line with the
 *    URL, then a line of a TAB and `out=` the path relative to the node dir.
 * 3. For every entry of the checksum JSON `{path: {file_size, checksum}}`: the file exists, has
 *    that size, and xxh3_64 of its last 10,240 bytes (all of it when smaller) is `checksum`.
 *    Only the checksum file's entries are checked: a file that the index names and it does not
 *    is fetched and never looked at.
 * 4. The files that failed are deleted and fetched once more with aria2c, from a list whose
 *    URLs it finds again in the index by a pattern: a URL with `{name}?version=` and four
 *    digits, where name is the relative path (only its last segment when the path starts with
 *    `data/`). A URL not of that form is not found, and the file is not fetched again. See
 *    `indexText`.
 * 5. All good: it writes `{node dir}/restore/RESTORED` (and `restore/checksum_result.json`
 *    with state OK). While `RESTORED` is there, a later start does not restore again.
 *
 * Everything here is pure but the hashing (WebAssembly, bundled) and `readForeignTree`'s
 * fetches.
 */
import { xxhash3 } from 'hash-wasm';
import { IntegrityError, StorageError } from '../errors.js';
import type { S3Settings } from '../settings.js';
import { isSafePath, type TreeFile } from './layout.js';

/** How many bytes at a file's end icon2-node's checksum covers. */
export const TAIL_BYTES = 10_240;

/**
 * icon2-node's checksum of a file whose bytes are all here: xxh3_64 (seed 0) of its last
 * 10,240 bytes, as 16 lower-case hex digits (Python's `xxhash.xxh3_64_hexdigest`).
 */
export async function tailHash(bytes: Uint8Array): Promise<string> {
  return xxhash3(bytes.subarray(Math.max(0, bytes.length - TAIL_BYTES)));
}

/**
 * The same checksum for a file that passes by in chunks (a stream from the host, a download):
 * it keeps only the last 10,240 bytes seen, so its memory does not grow with the file.
 */
export class TailHasher {
  private tail = new Uint8Array(0);
  private seen = 0;

  update(chunk: Uint8Array): this {
    this.seen += chunk.length;
    if (chunk.length >= TAIL_BYTES) {
      // Copied: the caller may reuse its buffer once update returns (and a Buffer's own
      // slice() would not copy).
      this.tail = Uint8Array.prototype.slice.call(chunk, chunk.length - TAIL_BYTES);
    } else if (chunk.length > 0) {
      const keep = Math.min(this.tail.length, TAIL_BYTES - chunk.length);
      const next = new Uint8Array(keep + chunk.length);
      next.set(this.tail.subarray(this.tail.length - keep), 0);
      next.set(chunk, keep);
      this.tail = next;
    }
    return this;
  }

  /** Bytes passed to `update` so far: the file's size once it has all gone by. */
  get size(): number {
    return this.seen;
  }

  digest(): Promise<string> {
    return xxhash3(this.tail);
  }
}

/** A file as an aria2c index names it: where to fetch it, and where it goes. */
export interface IndexEntry {
  /** Relative to the node dir (`out=`). */
  path: string;
  url: string;
}

const VERSION = /^[0-9]{4}[0-9A-Za-z._-]*$/;

/**
 * The aria2c input file that icon2-node's restore runs: per file, its URL and `out=` its path.
 *
 * Each URL gets `?file={path}?version={version}` (or `&file=…` when it has a query already):
 * S3 and MinIO ignore a query parameter they do not know, and it is what lets icon2-node's
 * second pass (step 4 above) find the URL of a file that failed its check. Our objects are
 * named by their sha256, so without it their retry finds nothing and the file stays bad.
 * `version`: four digits first, as their pattern wants; the snapshot's date (YYYYMMDD) is a
 * good one.
 */
export function indexText(files: readonly IndexEntry[], opts: { version?: string } = {}): string {
  const version = opts.version ?? '0001';
  if (!VERSION.test(version)) {
    throw new Error(`index version '${version}' must start with four digits (e.g. YYYYMMDD)`);
  }
  let text = '';
  for (const f of files) {
    if (!isSafePath(f.path)) throw new Error(`cannot index the path '${f.path}'`);
    // aria2c reads one URL per line, TAB between mirrors: none of those may be in it.
    if (!/^https?:\/\/[^\s]+$/.test(f.url)) throw new Error(`cannot index the URL '${f.url}'`);
    const join = f.url.includes('?') ? '&' : '?';
    text += `${f.url}${join}file=${f.path}?version=${version}\n\tout=${f.path}\n`;
  }
  return text;
}

/** The checksum JSON that icon2-node's restore checks every file against. */
export function checksumJson(files: readonly Pick<TreeFile, 'path' | 'size' | 'tail'>[]): string {
  // No prototype: a path such as `__proto__` is an entry like any other.
  const out: Record<string, { file_size: number; checksum: string }> = Object.create(null);
  for (const f of files) {
    if (!isSafePath(f.path)) throw new Error(`cannot list the path '${f.path}'`);
    if (!/^[0-9a-f]{16}$/.test(f.tail))
      throw new Error(`${f.path}: tail hash '${f.tail}' is not xxh3_64 hex`);
    if (Object.hasOwn(out, f.path)) throw new Error(`${f.path} is listed twice`);
    out[f.path] = { file_size: f.size, checksum: f.tail };
  }
  return JSON.stringify(out);
}

/**
 * `{SERVICE}.json`: where icon2-node's restore finds the index and the checksum file. `extra`
 * adds fields of ours (their reader ignores them); it cannot replace the two URLs.
 */
export function pointerJson(
  indexUrl: string,
  checksumUrl: string,
  extra: Record<string, unknown> = {},
): string {
  if (lastSegment(indexUrl) === lastSegment(checksumUrl)) {
    // Both are saved in one folder under that name: the second would overwrite the first.
    throw new Error(
      `the index and the checksum URLs end in the same name (${lastSegment(indexUrl)})`,
    );
  }
  return (
    JSON.stringify({ ...extra, index_url: indexUrl, checksum_url: checksumUrl }, null, 2) + '\n'
  );
}

/** The file name that icon2-node saves a downloaded URL under. */
export function lastSegment(url: string): string {
  return url.split('?')[0]!.split('/').pop() ?? '';
}

/** The URL of `{SERVICE}.json` for a DOWNLOAD_URL, as icon2-node builds it (no `/` trimmed). */
export function pointerUrl(downloadUrl: string, service: string): string {
  return `${downloadUrl}/${service}.json`;
}

/** What of the S3 settings says where a bucket is. */
export type AddressedBucket = Pick<S3Settings, 'bucket' | 'region' | 'endpoint' | 'forcePathStyle'>;

/**
 * The URL by which a reader with no credentials (aria2c, an icon2-node) fetches `key`, the
 * bucket being readable by anyone:
 * - `publicUrl` + key when given (a CDN or website endpoint in front of the bucket);
 * - with an endpoint: path-style `{endpoint}/{bucket}/{key}`, or `{bucket}.{endpoint host}`
 *   when path-style was turned off, as the SDK addresses it;
 * - on AWS: `https://{bucket}.s3.{region}.amazonaws.com/{key}`, or path-style when asked or
 *   when the bucket's name has a dot (which no `*.s3…` certificate covers).
 * Every segment of the key is percent-encoded (loopchain's `db_…:7100_…` has a colon).
 */
export function httpUrl(s3: AddressedBucket, key: string, publicUrl?: string): string {
  const path = key
    .split('/')
    .map((s) => encodeURIComponent(s))
    .join('/');
  if (publicUrl) {
    if (!/^https?:\/\/[^\s?#]+$/.test(publicUrl)) {
      throw new Error(`the public URL '${publicUrl}' is not an http(s) URL without query`);
    }
    return `${publicUrl.replace(/\/+$/, '')}/${path}`;
  }
  if (s3.endpoint) {
    const u = new URL(s3.endpoint);
    const base = u.pathname.replace(/\/+$/, '');
    if (s3.forcePathStyle) return `${u.protocol}//${u.host}${base}/${s3.bucket}/${path}`;
    return `${u.protocol}//${s3.bucket}.${u.host}${base}/${path}`;
  }
  // Without a region, the global names: virtual-hosted ones reach a bucket of any region.
  const host = s3.region ? `s3.${s3.region}.amazonaws.com` : 's3.amazonaws.com';
  if (s3.forcePathStyle || s3.bucket.includes('.')) return `https://${host}/${s3.bucket}/${path}`;
  return `https://${s3.bucket}.${host}/${path}`;
}

// ---------------------------------------------------------------------------------------
// Reading a tree published in icon2-node's form (no manifest of ours).

/** A file of a foreign tree. */
export interface ForeignFile {
  /** Relative to the node dir. */
  path: string;
  url: string;
  size: number;
  /**
   * icon2-node's checksum from the checksum file; undefined where it gives none (their own
   * size-only indexer writes null), and then only the size can be checked.
   */
  tail?: string;
}

/**
 * Parses an aria2c input file as icon2-node's index uses it. Refuses (IntegrityError) what
 * would write outside the node dir or where the path is not known: an `out=` path that is
 * absolute, has `..` or characters a data dir does not use; a `dir=` option; an entry without
 * `out=`; a path named twice; a URL that is not http(s). Other aria2c options are ignored.
 */
export function parseIndex(text: string, source = 'the index'): IndexEntry[] {
  const bad = (line: number, what: string): never => {
    throw new IntegrityError(`${source}, line ${line}: ${what}. The tree cannot be used.`);
  };
  const entries: (IndexEntry & { line: number })[] = [];
  let current: { url: string; path?: string; line: number } | undefined;
  const close = (): void => {
    if (!current) return;
    if (current.path === undefined) bad(current.line, `no 'out=' for ${current.url.slice(0, 200)}`);
    entries.push({ path: current.path!, url: current.url, line: current.line });
    current = undefined;
  };
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const n = i + 1;
    const line = lines[i]!.replace(/\r$/, '');
    if (line.trim() === '' || line.startsWith('#')) continue;
    if (/^\s/.test(line)) {
      // An option of the entry above.
      if (!current) bad(n, 'an option before any URL');
      const opt = line.trim();
      const eq = opt.indexOf('=');
      const name = eq < 0 ? opt : opt.slice(0, eq);
      const value = eq < 0 ? '' : opt.slice(eq + 1);
      if (name === 'dir') bad(n, `'dir=${value.slice(0, 200)}' would write outside the node dir`);
      if (name !== 'out') continue;
      if (current!.path !== undefined) bad(n, "a second 'out='");
      if (!isSafePath(value)) {
        bad(
          n,
          `the path '${value.slice(0, 200)}' is absolute, leaves the node dir or has characters a data dir does not use`,
        );
      }
      current!.path = value;
      continue;
    }
    close();
    // TAB separates mirrors of one file; the first is the one we fetch.
    const url = line.split('\t')[0]!.trim();
    if (!/^https?:\/\/\S+$/.test(url)) bad(n, `'${url.slice(0, 200)}' is not an http(s) URL`);
    current = { url, line: n };
  }
  close();
  const seen = new Set<string>();
  for (const e of entries) {
    if (seen.has(e.path)) bad(e.line, `${e.path} is named twice`);
    seen.add(e.path);
  }
  return entries.map(({ path, url }) => ({ path, url }));
}

/** Parses icon2-node's checksum JSON; refuses (IntegrityError) an entry without a good size. */
export function parseChecksums(
  text: string,
  source = 'the checksum file',
): Map<string, { size: number; tail?: string }> {
  const bad = (what: string): never => {
    throw new IntegrityError(`${source}: ${what}. The tree cannot be used.`);
  };
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    bad(`not JSON (${(err as Error).message})`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) bad('not a JSON object');
  const out = new Map<string, { size: number; tail?: string }>();
  for (const [path, v] of Object.entries(doc as Record<string, unknown>)) {
    const shown = path.slice(0, 200);
    if (!isSafePath(path))
      bad(
        `the path '${shown}' is absolute, leaves the node dir or has characters a data dir does not use`,
      );
    if (typeof v !== 'object' || v === null) bad(`${shown} has no { file_size, checksum }`);
    const { file_size: size, checksum } = v as { file_size?: unknown; checksum?: unknown };
    if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
      bad(`${shown} has no size (file_size: ${JSON.stringify(size)})`);
    }
    if (checksum === null || checksum === undefined) {
      out.set(path, { size: size as number });
      continue;
    }
    if (typeof checksum !== 'string' || !/^[0-9a-fA-F]{16}$/.test(checksum)) {
      bad(`${shown} has the checksum ${JSON.stringify(checksum).slice(0, 80)}, not xxh3_64 hex`);
    }
    out.set(path, { size: size as number, tail: (checksum as string).toLowerCase() });
  }
  return out;
}

/** The pointer's two URLs; refuses (IntegrityError) anything else. */
export function parsePointer(
  text: string,
  source = 'the pointer',
): { indexUrl: string; checksumUrl: string } {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new IntegrityError(`${source} is not JSON (${(err as Error).message}).`);
  }
  const d = (doc ?? {}) as { index_url?: unknown; checksum_url?: unknown };
  const url = (name: 'index_url' | 'checksum_url'): string => {
    const v = d[name];
    if (typeof v !== 'string' || !/^https?:\/\/\S+$/.test(v)) {
      throw new IntegrityError(
        `${source} has no http(s) '${name}' (it has ${JSON.stringify(v)?.slice(0, 200)}).`,
      );
    }
    return v;
  };
  return { indexUrl: url('index_url'), checksumUrl: url('checksum_url') };
}

/** Joins a parsed index and checksum file: every file of one must be in the other. */
export function joinForeign(
  index: readonly IndexEntry[],
  sums: ReadonlyMap<string, { size: number; tail?: string }>,
  source = 'the tree',
): ForeignFile[] {
  const files: ForeignFile[] = [];
  for (const e of index) {
    const s = sums.get(e.path);
    if (!s) {
      throw new IntegrityError(
        `${source}: the index names ${e.path} and the checksum file gives no size for it. The tree cannot be used.`,
      );
    }
    files.push(
      s.tail === undefined ? { ...e, size: s.size } : { ...e, size: s.size, tail: s.tail },
    );
  }
  const named = new Set(index.map((e) => e.path));
  const missing = [...sums.keys()].filter((p) => !named.has(p));
  if (missing.length > 0) {
    throw new IntegrityError(
      `${source}: the checksum file lists ${missing.length} file(s) that the index does not fetch ` +
        `(${missing.slice(0, 5).join(', ')}${missing.length > 5 ? ', …' : ''}). The tree cannot be used.`,
    );
  }
  return files;
}

export type FetchText = (url: string) => Promise<string>;

/** GET a small text file over HTTP(S); a failure is a StorageError that names the URL. */
export const fetchText: FetchText = async (url) => {
  let r: Response;
  try {
    r = await fetch(url, { signal: AbortSignal.timeout(300_000) });
  } catch (err) {
    throw new StorageError(`GET ${url} failed: ${(err as Error).message}`);
  }
  if (!r.ok) {
    await r.body?.cancel();
    throw new StorageError(`GET ${url} answered HTTP ${r.status} ${r.statusText}`.trim() + '.');
  }
  return r.text();
};

/**
 * A tree published in icon2-node's form: fetches the pointer (`{DOWNLOAD_URL}/{SERVICE}.json`,
 * see `pointerUrl`), its index and its checksum file, and returns every file with where to
 * fetch it and what to check. Only sizes and tail hashes can be checked for such a tree.
 */
export async function readForeignTree(
  pointer: string,
  get: FetchText = fetchText,
): Promise<ForeignFile[]> {
  const { indexUrl, checksumUrl } = parsePointer(await get(pointer), pointer);
  const [index, sums] = await Promise.all([get(indexUrl), get(checksumUrl)]);
  return joinForeign(parseIndex(index, indexUrl), parseChecksums(sums, checksumUrl), pointer);
}
