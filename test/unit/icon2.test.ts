// icon2-node's form of a tree: the tail hash against Python's xxhash, the index, checksum and
// pointer files through our parser, the public URLs, and icon2-node's restore steps (real
// aria2c, real MinIO) on a tree published with them.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { IntegrityError } from '../../src/errors.ts';
import {
  type AddressedBucket,
  checksumJson,
  httpUrl,
  indexText,
  joinForeign,
  parseChecksums,
  parseIndex,
  parsePointer,
  pointerJson,
  pointerUrl,
  readForeignTree,
  tailHash,
  TailHasher,
  TAIL_BYTES,
} from '../../src/tree/icon2.ts';
import { objectKey, pointerKey, treeFiles } from '../../src/tree/layout.ts';
import { publicRead, startMinio, type S3Server } from '../bed/minio.ts';
import { repoRoot } from '../bed/paths.ts';

/**
 * A Python that has the xxhash module. install.sh puts Debian's python3-xxhash into the system
 * Python; a `python3` found first on PATH (pyenv's, a venv's) may not see it.
 */
function pythonWithXxhash(): string {
  for (const py of [process.env.PYTHON_XXHASH, '/usr/bin/python3', 'python3']) {
    if (!py) continue;
    const r = spawnSync(py, ['-c', 'import xxhash'], { stdio: 'ignore' });
    if (r.status === 0) return py;
  }
  throw new Error('no Python with the xxhash module: run bash test/bed/install.sh');
}

/** Python's xxhash, run as icon2-node runs it, on each file: [tail rule, whole file]. */
function pythonHashes(py: string, files: string[]): [string, string][] {
  const script = `
import json, os, sys, xxhash
out = []
for p in json.load(sys.stdin):
    with open(p, "rb") as f:
        f.seek(0, 2)
        n = f.tell()
        f.seek(n - 10240 if n >= 10240 else 0)
        tail = xxhash.xxh3_64_hexdigest(f.read())
        f.seek(0)
        whole = xxhash.xxh3_64_hexdigest(f.read())
    out.append([tail, whole])
print(json.dumps(out))
`;
  const r = spawnSync(py, ['-c', script], { input: JSON.stringify(files), encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as [string, string][];
}

/** Feeds bytes to a TailHasher in chunks of random sizes (some bigger than the tail). */
async function chunked(bytes: Uint8Array): Promise<{ hash: string; size: number }> {
  const h = new TailHasher();
  let at = 0;
  while (at < bytes.length) {
    const n = Math.min(bytes.length - at, 1 + Math.floor(Math.random() * (TAIL_BYTES * 3)));
    const buf = Buffer.from(bytes.subarray(at, at + n));
    h.update(buf);
    buf.fill(0); // the hasher must have copied what it keeps
    at += n;
  }
  return { hash: await h.digest(), size: h.size };
}

describe('tailHash: icon2-node checksum, against Python xxhash', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'icon2-tail-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('gives the same hex as xxhash.xxh3_64_hexdigest of the last 10,240 bytes', async () => {
    const py = pythonWithXxhash();
    // Around the tail's edge, XXH3's own length classes (<=16, <=128, <=240, long), and big.
    const sizes = [
      0,
      1,
      3,
      4,
      8,
      9,
      16,
      17,
      128,
      129,
      240,
      241,
      10239,
      10240,
      10241,
      5 * 1024 * 1024,
    ];
    const files: string[] = [];
    const data: Buffer[] = [];
    for (const size of sizes) {
      const b = randomBytes(size);
      const p = join(dir, `f${size}`);
      await writeFile(p, b);
      files.push(p);
      data.push(b);
    }
    const want = pythonHashes(py, files);
    for (const [i, size] of sizes.entries()) {
      const [tail, whole] = want[i]!;
      const b = data[i]!;
      assert.match(tail, /^[0-9a-f]{16}$/);
      assert.equal(await tailHash(b), tail, `tail of ${size} bytes`);
      assert.equal(await tailHash(b.subarray(0, b.length)), tail);
      const c = await chunked(b);
      assert.equal(c.hash, tail, `chunked tail of ${size} bytes`);
      assert.equal(c.size, size);
      if (size <= TAIL_BYTES) assert.equal(tail, whole, 'a small file is hashed whole');
      else assert.notEqual(tail, whole, 'a big file is hashed by its tail only');
    }
  });

  it('is the same one byte at a time', async () => {
    const b = randomBytes(TAIL_BYTES + 7);
    const h = new TailHasher();
    for (const byte of b) h.update(Uint8Array.of(byte));
    assert.equal(await h.digest(), await tailHash(b));
    assert.equal(await new TailHasher().digest(), '2d06800538d394c2', 'xxh3_64 of nothing');
  });
});

describe('index, checksum and pointer files', () => {
  const files = [
    {
      path: '0x1/db/0x1/000005.ldb',
      size: 20000,
      tail: '0123456789abcdef',
      sha256: 'a'.repeat(64),
      mode: 0o644,
    },
    {
      path: '0x1/config.json',
      size: 0,
      tail: '2d06800538d394c2',
      sha256: 'b'.repeat(64),
      mode: 0o644,
    },
    {
      path: '.storage/db_CHANGEIP:7100_icon_dex/CURRENT',
      size: 16,
      tail: 'fedcba9876543210',
      sha256: 'c'.repeat(64),
      mode: 0o644,
    },
  ];
  const withUrls = files.map((f) => ({
    path: f.path,
    url: `https://b.s3.amazonaws.com/p/objects/${f.sha256}`,
  }));

  it('round-trip through the parser', () => {
    const index = indexText(withUrls, { version: '20240305' });
    const lines = index.split('\n');
    assert.equal(lines.length, files.length * 2 + 1);
    assert.equal(lines[1], '\tout=0x1/db/0x1/000005.ldb', 'a TAB, then out=');
    const parsed = parseIndex(index);
    assert.deepEqual(
      parsed.map((e) => e.path),
      files.map((f) => f.path),
    );
    for (const [i, e] of parsed.entries()) assert.ok(e.url.startsWith(withUrls[i]!.url + '?'));

    const sums = parseChecksums(checksumJson(files));
    assert.deepEqual(Object.fromEntries(sums), {
      '0x1/db/0x1/000005.ldb': { size: 20000, tail: '0123456789abcdef' },
      '0x1/config.json': { size: 0, tail: '2d06800538d394c2' },
      '.storage/db_CHANGEIP:7100_icon_dex/CURRENT': { size: 16, tail: 'fedcba9876543210' },
    });
    const joined = joinForeign(parsed, sums);
    assert.deepEqual(
      joined.map((f) => [f.path, f.size, f.tail]),
      files.map((f) => [f.path, f.size, f.tail]),
    );

    const pointer = pointerJson(
      'https://x/p/20240305/a.tree/index.txt',
      'https://x/p/20240305/a.tree/checksum.json',
      {
        blockHeight: 7,
        index_url: 'ignored',
      },
    );
    assert.deepEqual(parsePointer(pointer), {
      indexUrl: 'https://x/p/20240305/a.tree/index.txt',
      checksumUrl: 'https://x/p/20240305/a.tree/checksum.json',
    });
    assert.equal(JSON.parse(pointer).blockHeight, 7);
    assert.throws(
      () => pointerJson('https://x/a/index.txt', 'https://x/b/index.txt?v=1'),
      /same name/,
    );
    assert.equal(
      pointerUrl('https://dl.example/p', 'MainNet'),
      'https://dl.example/p/MainNet.json',
    );
  });

  it('give each URL the "{path}?version=NNNN" by which icon2-node retries a failed file', () => {
    const index = indexText(withUrls.slice(0, 1), { version: '20240305' });
    // The pattern of icon2-docker's retry, in JavaScript's syntax (same meaning here).
    const name = '0x1/db/0x1/000005.ldb';
    assert.match(index.split('\n')[0]!, new RegExp(`^(https|http).*${name}\\?version=([0-9]{4})`));
    assert.ok(
      indexText([{ path: 'a', url: 'https://h/k?x=1' }]).startsWith(
        'https://h/k?x=1&file=a?version=',
      ),
    );
    assert.throws(() => indexText(withUrls, { version: 'v1' }), /four digits/);
    assert.throws(() => indexText([{ path: '../a', url: 'https://h/k' }]), /cannot index the path/);
    assert.throws(() => indexText([{ path: 'a', url: 'https://h/k l' }]), /cannot index the URL/);
  });

  it('read an index as icon2-docker writes it: mirrors, CRLF, comments, a ?version= query', () => {
    const text =
      '# made by hand\r\n' +
      'https://a.example/MainNet/0x1/db/0x1/000005.ldb?version=20240305\thttps://b.example/000005.ldb\r\n' +
      '\tout=0x1/db/0x1/000005.ldb\r\n' +
      '  max-connection-per-server=4\r\n' +
      '\r\n' +
      'http://a.example/MainNet/0x1/genesis.zip\n' +
      ' out=0x1/genesis.zip\n';
    assert.deepEqual(parseIndex(text), [
      {
        path: '0x1/db/0x1/000005.ldb',
        url: 'https://a.example/MainNet/0x1/db/0x1/000005.ldb?version=20240305',
      },
      { path: '0x1/genesis.zip', url: 'http://a.example/MainNet/0x1/genesis.zip' },
    ]);
  });

  it('refuse an index that would write outside the node dir, with the line', () => {
    const refused: [string, RegExp][] = [
      ['https://h/a\n\tout=/etc/passwd\n', /line 2: the path '\/etc\/passwd' is absolute/],
      ['https://h/a\n\tout=0x1/../../x\n', /line 2: the path '0x1\/..\/..\/x'/],
      ['https://h/a\n\tout=..\n', /line 2/],
      ['https://h/a\n\tout=a//b\n', /line 2/],
      ['https://h/a\n\tout=./a\n', /line 2/],
      ['https://h/a\n\tout=a b\n', /line 2/],
      ['https://h/a\n\tout=\n', /line 2/],
      ['https://h/a\n\tdir=/tmp\n\tout=a\n', /line 2: 'dir=\/tmp' would write outside/],
      ['https://h/a\n\tout=a\nhttps://h/b\n', /line 3: no 'out='/],
      ['https://h/a\n\tout=a\n\tout=b\n', /line 3: a second 'out='/],
      ['https://h/a\n\tout=a\nhttps://h/b\n\tout=a\n', /line 3: a is named twice/],
      ['\tout=a\n', /line 1: an option before any URL/],
      ['file:///etc/passwd\n\tout=a\n', /line 1: 'file:\/\/\/etc\/passwd' is not an http\(s\) URL/],
    ];
    for (const [text, message] of refused) {
      assert.throws(
        () => parseIndex(text, 'index.txt'),
        (err: unknown) => {
          assert.ok(err instanceof IntegrityError, String(err));
          assert.match(err.message, /^index\.txt, line \d+: /);
          assert.match(err.message, message);
          assert.match(err.message, /The tree cannot be used\.$/);
          return true;
        },
      );
    }
  });

  it('refuse a checksum file without sizes, and take a null checksum as size-only', () => {
    const ok = parseChecksums(
      '{"a/b": {"file_size": 3, "checksum": "ABCDEF0123456789"}, "c": {"file_size": 0, "checksum": null}}',
    );
    assert.deepEqual(ok.get('a/b'), { size: 3, tail: 'abcdef0123456789' });
    assert.deepEqual(ok.get('c'), { size: 0 });
    for (const [text, message] of [
      ['[]', /not a JSON object/],
      ['{', /not JSON/],
      ['{"a": {"checksum": "0123456789abcdef"}}', /a has no size/],
      ['{"a": {"file_size": "3", "checksum": "0123456789abcdef"}}', /a has no size/],
      ['{"a": {"file_size": -1, "checksum": "0123456789abcdef"}}', /a has no size/],
      ['{"a": {"file_size": 1.5, "checksum": "0123456789abcdef"}}', /a has no size/],
      [
        '{"a": {"file_size": 1, "checksum": "d41d8cd98f00b204e9800998ecf8427e"}}',
        /not xxh3_64 hex/,
      ],
      ['{"a": 1}', /a has no \{ file_size, checksum \}/],
      ['{"/abs": {"file_size": 1, "checksum": null}}', /the path '\/abs' is absolute/],
    ] as const) {
      assert.throws(
        () => parseChecksums(text),
        (err: unknown) => err instanceof IntegrityError && message.test(err.message),
      );
    }
  });

  it('refuse a tree whose index and checksum file do not name the same files', () => {
    const index = parseIndex('https://h/a\n\tout=a\nhttps://h/b\n\tout=b\n');
    assert.throws(
      () => joinForeign(index, parseChecksums('{"a": {"file_size": 1, "checksum": null}}')),
      /names b and the checksum file gives no size/,
    );
    assert.throws(
      () =>
        joinForeign(
          index,
          parseChecksums(
            '{"a": {"file_size": 1, "checksum": null}, "b": {"file_size": 1, "checksum": null}, "c": {"file_size": 1, "checksum": null}}',
          ),
        ),
      /lists 1 file\(s\) that the index does not fetch \(c\)/,
    );
  });

  it('refuse a pointer without the two URLs', () => {
    assert.throws(
      () => parsePointer('{"index_url": "https://h/i"}'),
      /no http\(s\) 'checksum_url'/,
    );
    assert.throws(
      () => parsePointer('{"index_url": "/i", "checksum_url": "https://h/c"}'),
      /no http\(s\) 'index_url'/,
    );
    assert.throws(() => parsePointer('nope'), IntegrityError);
  });

  it('build a checksum file that refuses what icon2-node could not check', () => {
    assert.throws(() => checksumJson([{ path: 'a', size: 1, tail: 'xyz' }]), /not xxh3_64 hex/);
    assert.throws(
      () => checksumJson([{ path: '/a', size: 1, tail: '0123456789abcdef' }]),
      /cannot list/,
    );
    const twice = { path: 'a', size: 1, tail: '0123456789abcdef' };
    assert.throws(() => checksumJson([twice, twice]), /listed twice/);
    // A path that names a property of Object.prototype is an entry like any other.
    assert.deepEqual(
      JSON.parse(checksumJson([{ path: '__proto__', size: 1, tail: '0123456789abcdef' }])),
      {
        ['__proto__']: { file_size: 1, checksum: '0123456789abcdef' },
      },
    );
  });
});

describe('httpUrl: where a reader without credentials fetches a key', () => {
  const s3 = (over: Partial<AddressedBucket>): AddressedBucket => ({
    bucket: 'snaps',
    forcePathStyle: false,
    ...over,
  });
  const key =
    'MainNet/20240305/MainNet_BH1_data-20240305_0000.tree/.storage/db_CHANGEIP:7100_icon_dex/a b';

  it('uses the public URL when given', () => {
    assert.equal(
      httpUrl(s3({ region: 'ap-northeast-2' }), 'MainNet/objects/abc', 'https://cdn.example/snap/'),
      'https://cdn.example/snap/MainNet/objects/abc',
    );
    assert.throws(() => httpUrl(s3({}), 'k', 'ftp://x'), /not an http\(s\) URL/);
  });

  it('addresses an endpoint path-style, or by host when path-style is off', () => {
    assert.equal(
      httpUrl(s3({ endpoint: 'http://127.0.0.1:9000', forcePathStyle: true }), key),
      'http://127.0.0.1:9000/snaps/MainNet/20240305/MainNet_BH1_data-20240305_0000.tree/.storage/db_CHANGEIP%3A7100_icon_dex/a%20b',
    );
    assert.equal(
      httpUrl(s3({ endpoint: 'https://minio.example/s3/', forcePathStyle: true }), 'k'),
      'https://minio.example/s3/snaps/k',
    );
    assert.equal(
      httpUrl(s3({ endpoint: 'https://r2.example', forcePathStyle: false }), 'k'),
      'https://snaps.r2.example/k',
    );
  });

  it('addresses AWS virtual-hosted by region, path-style when asked or for a dotted bucket', () => {
    assert.equal(
      httpUrl(s3({ region: 'ap-northeast-2' }), 'MainNet/objects/abc'),
      'https://snaps.s3.ap-northeast-2.amazonaws.com/MainNet/objects/abc',
    );
    assert.equal(httpUrl(s3({}), 'k'), 'https://snaps.s3.amazonaws.com/k');
    assert.equal(
      httpUrl(s3({ region: 'eu-west-1', forcePathStyle: true }), 'k'),
      'https://s3.eu-west-1.amazonaws.com/snaps/k',
    );
    assert.equal(
      httpUrl(s3({ region: 'eu-west-1', bucket: 'a.b' }), 'k'),
      'https://s3.eu-west-1.amazonaws.com/a.b/k',
    );
  });
});

// ---------------------------------------------------------------------------------------
// icon2-node's restore steps (test/bed/icon2-restore.py: real aria2c) on a tree published into
// a real MinIO whose bucket anyone may read over plain HTTP.

const RESTORE_PY = join(repoRoot, 'test', 'bed', 'icon2-restore.py');
const BUCKET = 'icon2-trees';
const SERVICE = 'MainNet';

interface LocalFile {
  path: string;
  bytes: Buffer;
  sha256: string;
}

/** A small goloop chain folder: table files around the tail size, empties, a duplicate. */
function sampleTree(): LocalFile[] {
  const shared = randomBytes(12_345);
  const files: [string, Buffer][] = [
    ['0x1/db/0x1/000005.ldb', randomBytes(300_000)],
    ['0x1/db/0x1/000007.ldb', randomBytes(TAIL_BYTES)],
    ['0x1/db/0x1/000008.ldb', shared],
    ['0x1/db/0x1/000009.ldb', shared], // same content: one object, fetched for two paths
    ['0x1/db/0x1/CURRENT', Buffer.from('MANIFEST-000004\n')],
    ['0x1/db/0x1/LOCK', Buffer.alloc(0)],
    ['0x1/db/0x1/MANIFEST-000004', randomBytes(TAIL_BYTES + 1)],
    ['0x1/wal/block/0000000000.wal', randomBytes(10_239)],
    ['0x1/contract/cx:0/a', randomBytes(1)],
    ['0x1/config.json', Buffer.from('{"cid":"0x1"}')],
    ['0x1/genesis.zip', randomBytes(4096)],
  ];
  return files.map(([path, bytes]) => ({
    path,
    bytes,
    sha256: createHash('sha256').update(bytes).digest('hex'),
  }));
}

/**
 * Publishes files as a tree in the bucket layout (objects by sha256, the snapshot's index and
 * checksum file, the pointer) and returns icon2-node's DOWNLOAD_URL for it.
 */
async function publish(
  server: S3Server,
  client: S3Client,
  prefix: string,
  files: LocalFile[],
  opts: { index?: (text: string) => string } = {},
): Promise<{ downloadUrl: string }> {
  const settings: AddressedBucket = {
    bucket: BUCKET,
    endpoint: server.endpoint,
    forcePathStyle: true,
  };
  const put = (Key: string, Body: Buffer | string) =>
    client.send(new PutObjectCommand({ Bucket: BUCKET, Key, Body }));
  const tails = await Promise.all(files.map((f) => tailHash(f.bytes)));
  for (const f of new Map(files.map((f) => [f.sha256, f])).values())
    await put(objectKey(prefix, f.sha256), f.bytes);
  const folder = treeFiles(`${prefix}/20240305/${SERVICE}_BH42_data-20240305_0000.tree`);
  let index = indexText(
    files.map((f) => ({ path: f.path, url: httpUrl(settings, objectKey(prefix, f.sha256)) })),
    { version: '20240305' },
  );
  if (opts.index) index = opts.index(index);
  await put(folder.index, index);
  await put(
    folder.checksum,
    checksumJson(files.map((f, i) => ({ path: f.path, size: f.bytes.length, tail: tails[i]! }))),
  );
  await put(
    pointerKey(prefix, SERVICE),
    pointerJson(httpUrl(settings, folder.index), httpUrl(settings, folder.checksum)),
  );
  return { downloadUrl: httpUrl(settings, prefix) };
}

function icon2Restore(
  py: string,
  downloadUrl: string,
  nodeDir: string,
): { code: number | null; stdout: string; stderr: string } {
  const r = spawnSync(py, [RESTORE_PY, downloadUrl, SERVICE, nodeDir], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

async function assertRestored(nodeDir: string, files: LocalFile[]): Promise<void> {
  for (const f of files) {
    const got = await readFile(join(nodeDir, f.path));
    assert.ok(got.equals(f.bytes), `${f.path} differs after the restore`);
  }
  assert.ok(existsSync(join(nodeDir, 'restore', 'RESTORED')), 'restore/RESTORED written');
}

describe("icon2-node's restore steps on a tree in MinIO (real aria2c)", () => {
  let server: S3Server;
  let client: S3Client;
  let py: string;
  let work: string;
  before(async () => {
    py = pythonWithXxhash();
    const aria = spawnSync('aria2c', ['--version'], { stdio: 'ignore' });
    if (aria.status !== 0) throw new Error('aria2c not found: run bash test/bed/install.sh');
    work = await mkdtemp(join(tmpdir(), 'icon2-restore-'));
    server = await startMinio();
    await server.createBucket(BUCKET);
    client = server.client();
    await publicRead(client, BUCKET);
  });
  after(async () => {
    client?.destroy();
    await server?.stop();
    await rm(work, { recursive: true, force: true });
  });

  it('restores our tree byte for byte and writes restore/RESTORED', async () => {
    const files = sampleTree();
    const { downloadUrl } = await publish(server, client, 'ok', files);
    assert.equal(downloadUrl, `${server.endpoint}/${BUCKET}/ok`);
    const nodeDir = join(work, 'ok');
    const r = icon2Restore(py, downloadUrl, nodeDir);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    await assertRestored(nodeDir, files);
    assert.ok(existsSync(join(nodeDir, 'restore', 'index.txt')), 'the index saved by its name');
    assert.ok(existsSync(join(nodeDir, 'restore', 'checksum.json')));
    // Restored already: a second run leaves it be, as icon2-node does.
    const again = icon2Restore(py, downloadUrl, nodeDir);
    assert.equal(again.code, 0);
    assert.match(again.stdout, /already restored/);
  });

  it('is read back by readForeignTree over HTTP', async () => {
    const files = sampleTree();
    const { downloadUrl } = await publish(server, client, 'read', files);
    const got = await readForeignTree(pointerUrl(downloadUrl, SERVICE));
    assert.deepEqual(
      got.map((f) => [f.path, f.size]),
      files.map((f) => [f.path, f.bytes.length]),
    );
    for (const [i, f] of got.entries()) {
      assert.equal(f.tail, await tailHash(files[i]!.bytes));
      const body = Buffer.from(await (await fetch(f.url)).arrayBuffer());
      assert.ok(body.equals(files[i]!.bytes), `${f.path} fetched from ${f.url}`);
    }
    await assert.rejects(readForeignTree(pointerUrl(downloadUrl, 'TestNet')), /answered HTTP 404/);
  });

  it('fails naming the file whose object is corrupt', async () => {
    const files = sampleTree();
    const { downloadUrl } = await publish(server, client, 'corrupt', files);
    const victim = files[0]!;
    const bad = Buffer.from(victim.bytes);
    bad[bad.length - 1]! ^= 0xff; // same size, last byte changed: only the tail hash sees it
    await client.send(
      new PutObjectCommand({ Bucket: BUCKET, Key: objectKey('corrupt', victim.sha256), Body: bad }),
    );
    const nodeDir = join(work, 'corrupt');
    const r = icon2Restore(py, downloadUrl, nodeDir);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stderr, new RegExp(`BAD ${victim.path}: checksum `));
    assert.match(r.stdout, /fetching them once more/);
    assert.equal(r.stderr.match(/^BAD /gm)?.length, 1, r.stderr);
    assert.ok(!existsSync(join(nodeDir, 'restore', 'RESTORED')));
  });

  it('repairs a stale file that aria2c took as complete, by the retry our URLs allow', async () => {
    const files = sampleTree();
    const { downloadUrl } = await publish(server, client, 'stale', files);
    // A file of the right size left in the node dir from before: aria2c -c keeps it.
    const victim = files[1]!;
    const nodeDir = join(work, 'stale');
    await mkdir(dirname(join(nodeDir, victim.path)), { recursive: true });
    await writeFile(join(nodeDir, victim.path), randomBytes(victim.bytes.length));
    const r = icon2Restore(py, downloadUrl, nodeDir);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /1 file\(s\) failed the check; fetching them once more/);
    await assertRestored(nodeDir, files);
  });

  it('cannot repair it when the URLs lack "{path}?version=" (why indexText adds it)', async () => {
    const files = sampleTree();
    const strip = (text: string): string => text.replace(/\?file=[^\n]*/g, '');
    const { downloadUrl } = await publish(server, client, 'bare', files, { index: strip });
    const victim = files[1]!;
    const nodeDir = join(work, 'bare');
    await mkdir(dirname(join(nodeDir, victim.path)), { recursive: true });
    await writeFile(join(nodeDir, victim.path), randomBytes(victim.bytes.length));
    const r = icon2Restore(py, downloadUrl, nodeDir);
    assert.notEqual(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout + r.stderr, new RegExp(`${victim.path}: the index has no URL`));
    assert.ok(!existsSync(join(nodeDir, 'restore', 'RESTORED')));
  });
});
