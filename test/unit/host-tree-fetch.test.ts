/**
 * The host's own read of a tree's files (`tree_fetched` of host-fetch.ts), run by bash with the
 * real curl against a real MinIO: one curl reads them all and each is proven by its sha256;
 * what that pass leaves (a curl without --parallel, a file cut short or wrong) is read one by
 * one, and a stored object that is not its sha256 ends the read, named.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  chmodSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import {
  FETCH_DAMAGED,
  FETCH_FUNCTIONS,
  FETCH_MARK,
  FETCH_REFUSED,
  GOT_LINE,
} from '../../src/node-kind/host-fetch.ts';
import { startMinio, type S3Server } from '../bed/minio.js';

const BUCKET = 'trees';
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

interface File {
  path: string;
  body: Buffer;
  mode: number;
  /** The key it is read from, when not its own sha256's. */
  key?: string;
}

describe("the host's own read of a tree's files", () => {
  let s3: S3Server;
  let client: S3Client;
  let root: string;
  let stage: string;
  let dl: string;
  const files: File[] = [];

  before(async () => {
    s3 = await startMinio();
    await s3.createBucket(BUCKET);
    client = s3.client();
    root = mkdtempSync(join(tmpdir(), 'host-tree-fetch-'));
    for (let i = 0; i < 40; i++)
      files.push({
        path: `abc/db/${String(i).padStart(6, '0')}.ldb`,
        body: randomBytes(200_000 + i * 997),
        mode: 0o644,
      });
    files.push({ path: 'abc/db/CURRENT', body: Buffer.from('MANIFEST-000007\n'), mode: 0o600 });
    files.push({ path: 'abc/wal/empty', body: Buffer.alloc(0), mode: 0o644 });
    files.push({ path: 'abc/a "quoted" name\\x', body: randomBytes(1000), mode: 0o640 });
    for (const f of files) await put(sha(f.body), f.body);
  });
  after(async () => {
    client.destroy();
    await s3.stop();
    rmSync(root, { recursive: true, force: true });
  });
  beforeEach(() => {
    stage = join(root, 'stage');
    dl = `${stage}.dl`;
    rmSync(stage, { recursive: true, force: true });
    rmSync(dl, { recursive: true, force: true });
    mkdirSync(stage);
    mkdirSync(dl);
  });

  async function put(key: string, body: Buffer): Promise<void> {
    await client.send(new PutObjectCommand({ Bucket: BUCKET, Key: key, Body: body }));
  }

  /** Runs tree_fetched over `list`, with `path` first on PATH. */
  async function fetch(list: File[], opts: { pathFirst?: string } = {}) {
    const lines: string[] = [];
    for (const f of list) {
      const url = await getSignedUrl(
        client,
        new GetObjectCommand({ Bucket: BUCKET, Key: f.key ?? sha(f.body) }),
        { expiresIn: 600 },
      );
      lines.push(`${sha(f.body)} ${f.body.length} ${f.mode.toString(8)} ${f.path}\n${url}\n`);
    }
    writeFileSync(join(dl, 'list'), lines.join(''));
    const script = [
      ...FETCH_FUNCTIONS,
      `stage=${JSON.stringify(stage)}; dl=${JSON.stringify(dl)}; conns=4`,
      'exec 4>&1',
      '( tree_fetched ) || exit $?',
    ].join('\n');
    const env = { ...process.env };
    if (opts.pathFirst) env.PATH = `${opts.pathFirst}:${env.PATH ?? ''}`;
    const r = spawnSync('bash', ['-c', script], { encoding: 'utf8', env });
    const got = r.stdout
      .split('\n')
      .filter((l) => l.startsWith(`${GOT_LINE} `))
      .map((l) => Number(l.slice(GOT_LINE.length + 1)));
    const proven = readFileSync(join(dl, 'ok'), 'utf8').split('\n').filter(Boolean);
    return { code: r.status, stderr: r.stderr, got, proven };
  }

  function assertStaged(list: File[]): void {
    for (const f of list) {
      const p = join(stage, f.path);
      assert.ok(readFileSync(p).equals(f.body), `${f.path} holds its bytes`);
      assert.equal(statSync(p).mode & 0o777, f.mode, `${f.path} has its mode`);
    }
  }

  it('reads every file in one pass, each proven by its sha256 as it lands', async () => {
    const r = await fetch(files);
    assert.equal(r.code, 0, r.stderr);
    assertStaged(files);
    assert.equal(r.proven.length, files.length, 'all proven by the first pass');
    assert.equal(r.got.length, files.length);
    assert.equal(
      r.got.reduce((s, n) => s + n, 0),
      files.reduce((s, f) => s + f.body.length, 0),
    );
  });

  it('a curl without --parallel: every file is read one by one, with the same result', async () => {
    const bin = join(root, 'old-curl');
    mkdirSync(bin, { recursive: true });
    const real = spawnSync('bash', ['-c', 'command -v curl'], { encoding: 'utf8' }).stdout.trim();
    writeFileSync(
      join(bin, 'curl'),
      `#!/bin/bash\nfor a in "$@"; do [ "$a" != --parallel ] || { echo "curl: option --parallel: is unknown" >&2; exit 2; }; done\nexec ${real} "$@"\n`,
    );
    chmodSync(join(bin, 'curl'), 0o755);
    const r = await fetch(files, { pathFirst: bin });
    assert.equal(r.code, 0, r.stderr);
    assertStaged(files);
    assert.equal(r.proven.length, 1, 'only the empty file is proven by the first pass');
    assert.equal(r.got.length, files.length);
  });

  it('a file cut short goes on from its last byte; one that holds other bytes is read again', async () => {
    const [cut, wrong] = files as [File, File];
    for (const [f, bytes] of [
      [cut, cut.body.subarray(0, 70_000)],
      [wrong, randomBytes(90_000)],
    ] as const) {
      mkdirSync(dirname(join(stage, f.path)), { recursive: true });
      writeFileSync(join(stage, f.path), bytes);
    }
    const r = await fetch(files);
    assert.equal(r.code, 0, r.stderr);
    assertStaged(files);
    assert.equal(r.got.length, files.length);
    assert.equal(r.proven.length, files.length - 1, `${wrong.path} was read again, one by one`);
    assert.ok(!r.proven.includes(join(stage, wrong.path)));
  });

  it('a stored object that is not its sha256 ends the read, named, and is removed', async () => {
    const bad: File = { path: 'abc/db/000099.ldb', body: randomBytes(50_000), mode: 0o644 };
    await put(sha(bad.body), randomBytes(50_000));
    const r = await fetch([...files.slice(0, 5), bad]);
    assert.equal(r.code, FETCH_DAMAGED, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(
        `${FETCH_MARK} abc/db/000099\\.ldb: the stored object's sha256 is [0-9a-f]{64}, not the manifest's ${sha(bad.body)}`,
      ),
    );
    assert.throws(() => statSync(join(stage, bad.path)), /ENOENT/);
    assertStaged(files.slice(0, 5));
  });

  it('an object that S3 refuses ends the read with its reason', async () => {
    const gone: File = {
      path: 'abc/db/000100.ldb',
      body: randomBytes(10_000),
      mode: 0o644,
      key: 'no-such-key',
    };
    const r = await fetch([gone, ...files.slice(0, 3)]);
    assert.equal(r.code, FETCH_REFUSED, r.stderr);
    assert.match(r.stderr, /S3 refused abc\/db\/000100\.ldb: HTTP 404, NoSuchKey/);
  });

  it('a name outside the staging folder is refused before anything is read', async () => {
    const out: File = { path: 'abc/../../escape', body: Buffer.from('x'), mode: 0o644 };
    const r = await fetch([files[0] as File, out]);
    assert.equal(r.code, FETCH_DAMAGED, r.stderr);
    assert.match(r.stderr, /abc\/\.\.\/\.\.\/escape: not a name inside the staging folder/);
    assert.throws(() => statSync(join(stage, (files[0] as File).path)), /ENOENT/);
  });
});
