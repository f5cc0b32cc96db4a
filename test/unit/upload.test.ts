/**
 * The multipart uploader against a real MinIO: what lands is byte for byte what was read,
 * the part buffers are bounded and reused, and every way of failing leaves no parts behind.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { after, before, describe, it } from 'node:test';
import { GetObjectCommand, HeadObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { socketSource, type ByteSource } from '../../src/byte-source.ts';
import { createClient } from '../../src/s3/client.ts';
import { streamUpload } from '../../src/s3/upload.ts';
import type { S3Settings } from '../../src/settings.ts';
import { startCutProxy, type CutProxy, type CutProxyOptions } from '../bed/cut-proxy.js';
import { s3Env, startMinio, type S3Server } from '../bed/minio.js';

const MiB = 1024 * 1024;
const BUCKET = 'uploads';

/** A stream of `total` bytes in chunks of odd sizes, so that chunks straddle part boundaries. */
function source(data: Buffer, chunk = 65_521): Readable {
  let at = 0;
  return new Readable({
    read() {
      if (at >= data.length) return void this.push(null);
      this.push(data.subarray(at, at + chunk));
      at += chunk;
    },
  });
}

/** The bytes as the data channel delivers them: a child process writes into a socket pair. */
async function socketBody(data: Buffer): Promise<ByteSource> {
  const dir = mkdtempSync(join(tmpdir(), 'upload-src-'));
  writeFileSync(join(dir, 'data'), data);
  const { writer, source } = await socketSource(dir);
  const child = spawn('cat', [join(dir, 'data')], { stdio: ['ignore', writer, 'inherit'] });
  writer.destroy();
  child.on('close', () => rmSync(dir, { recursive: true, force: true }));
  return source;
}

async function getBytes(client: S3Client, key: string): Promise<Buffer> {
  const res = await client.send(new GetObjectCommand({ Bucket: BUCKET, Key: key }));
  return Buffer.from(await res.Body!.transformToByteArray());
}

describe('streamUpload against MinIO', () => {
  let s3: S3Server;
  let client: S3Client;
  before(async () => {
    s3 = await startMinio();
    await s3.createBucket(BUCKET);
    client = s3.client();
  });
  after(async () => {
    await s3?.stop();
  });

  for (const [name, bytes, queueSize] of [
    ['several parts and a short last one', 20 * MiB + 12_345, 2],
    ['exactly two parts', 16 * MiB, 2],
    ['less than one part', 3_000, 2],
    ['nothing at all', 0, 2],
    ['one part in flight at a time', 41 * MiB + 77, 1],
  ] as const) {
    for (const kind of ['a stream', 'a socket'] as const) {
      it(`${name}, from ${kind}: the object is the bytes read, and the sha256 theirs`, async () => {
        const data = randomBytes(bytes);
        const key = `t/${name.replace(/ /g, '-')}-${kind.replace(/ /g, '-')}`;
        let progress = 0;
        const r = await streamUpload({
          client,
          bucket: BUCKET,
          key,
          body: kind === 'a stream' ? source(data) : await socketBody(data),
          partSize: 8 * MiB,
          queueSize,
          sourceOk: Promise.resolve(),
          onProgress: (b) => (progress = b),
        });
        assert.equal(r.bytes, bytes);
        assert.equal(progress, bytes);
        assert.equal(r.sha256, createHash('sha256').update(data).digest('hex'));
        assert.ok(
          (await getBytes(client, key)).equals(data),
          'the stored object equals the source',
        );
        const head = await client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: key }));
        const parts = Math.max(1, Math.ceil(bytes / (8 * MiB)));
        assert.match(head.ETag ?? '', new RegExp(`-${parts}"?$`), `${parts} part(s)`);
        assert.equal(await s3.listMultipartUploads(BUCKET, key), 0);
      });
    }
  }

  it('memory stays near (queue + 1) part buffers however long the stream', async () => {
    // 200 MiB through 8 MiB parts, 2 in flight: with a new buffer per part the heap's
    // external memory would climb by hundreds of MiB before a collection.
    const block = randomBytes(MiB);
    let sent = 0;
    const total = 200 * MiB;
    const body = new Readable({
      read() {
        if (sent >= total) return void this.push(null);
        sent += block.length;
        this.push(block);
      },
    });
    let peak = 0;
    const timer = setInterval(() => {
      peak = Math.max(peak, process.memoryUsage().arrayBuffers);
    }, 20);
    const before = process.memoryUsage().arrayBuffers;
    try {
      const r = await streamUpload({
        client,
        bucket: BUCKET,
        key: 't/long',
        body,
        partSize: 8 * MiB,
        queueSize: 2,
        sourceOk: Promise.resolve(),
      });
      assert.equal(r.bytes, total);
    } finally {
      clearInterval(timer);
    }
    // 3 part buffers = 24 MiB, plus the stream's own buffers and the SDK's.
    assert.ok(peak - before < 60 * MiB, `array buffers grew by ${(peak - before) / MiB} MiB`);
  });

  it('a remote failure after the last byte: nothing is completed, no parts are left', async () => {
    const data = randomBytes(20 * MiB);
    await assert.rejects(
      streamUpload({
        client,
        bucket: BUCKET,
        key: 't/remote-failed',
        body: source(data),
        partSize: 8 * MiB,
        queueSize: 2,
        sourceOk: new Promise((_, reject) =>
          setTimeout(() => reject(new Error('tar exited 2')), 300),
        ),
      }),
      /tar exited 2/,
    );
    assert.deepEqual(await s3.listKeys(BUCKET, 't/remote-failed'), []);
    assert.equal(await s3.listMultipartUploads(BUCKET, 't/remote-failed'), 0);
  });

  it('a remote failure mid-stream stops the stream at once', async () => {
    let reject!: (e: Error) => void;
    const sourceOk = new Promise<void>((_, r) => (reject = r));
    let pushed = 0;
    const body = new Readable({
      read() {
        pushed += MiB;
        if (pushed === 12 * MiB) reject(new Error('ssh lost'));
        // An endless stream: only the failure can end this upload.
        setTimeout(() => this.push(Buffer.alloc(MiB, 1)), 1);
      },
    });
    await assert.rejects(
      streamUpload({
        client,
        bucket: BUCKET,
        key: 't/mid',
        body,
        partSize: 8 * MiB,
        queueSize: 2,
        sourceOk,
      }),
      /ssh lost/,
    );
    assert.ok(body.destroyed, 'the source was destroyed');
    assert.equal(await s3.listMultipartUploads(BUCKET, 't/mid'), 0);
  });

  it('an S3 failure mid-stream aborts the upload and says why', async () => {
    const data = randomBytes(30 * MiB);
    const body = source(data);
    // The failure is injected in the client, before the request leaves (so no retry either);
    // the end-to-end tests stop MinIO itself mid-upload.
    const failing = s3.client();
    let calls = 0;
    failing.middlewareStack.add(
      (next) => async (args) => {
        const input = (args as { input?: { PartNumber?: number } }).input;
        if (input?.PartNumber === 2 && calls++ === 0) throw new Error('S3 said no to part 2');
        return next(args);
      },
      { step: 'initialize', name: 'failPart2' },
    );
    await assert.rejects(
      streamUpload({
        client: failing,
        bucket: BUCKET,
        key: 't/s3-failed',
        body,
        partSize: 8 * MiB,
        queueSize: 2,
        sourceOk: Promise.resolve(),
      }),
      /S3 said no to part 2/,
    );
    assert.ok(body.destroyed, 'the source was destroyed');
    assert.deepEqual(await s3.listKeys(BUCKET, 't/s3-failed'), []);
    assert.equal(await s3.listMultipartUploads(BUCKET, 't/s3-failed'), 0);
  });
});

/**
 * Parts sent through a proxy that resets connections mid-part. What the SDK does by itself
 * (the client of src/s3/client.ts: maxAttempts 5) and what the uploader adds (a client that
 * does not retry at all leaves every resend to it).
 */
describe('streamUpload: a part whose connection is reset is sent again', () => {
  let s3: S3Server;
  let admin: S3Client;
  const proxies: CutProxy[] = [];
  const clients: S3Client[] = [];
  before(async () => {
    s3 = await startMinio();
    await s3.createBucket(BUCKET);
    admin = s3.client();
  });
  after(async () => {
    for (const c of clients) c.destroy();
    for (const p of proxies) await p.stop();
    admin?.destroy();
    await s3?.stop();
  });

  async function proxy(opts: Omit<CutProxyOptions, 'targetPort'>): Promise<CutProxy> {
    const p = await startCutProxy({ targetPort: s3.port, ...opts });
    proxies.push(p);
    return p;
  }

  /** The action's own client (credentials from the environment, as on a runner), through `p`. */
  function actionClient(p: CutProxy): S3Client {
    Object.assign(process.env, s3Env(s3));
    const c = createClient({
      bucket: BUCKET,
      region: s3.region,
      endpoint: `http://127.0.0.1:${p.port}`,
      forcePathStyle: true,
      unsigned: false,
    } as S3Settings);
    clients.push(c);
    return c;
  }

  function noRetryClient(p: CutProxy): S3Client {
    const c = new S3Client({
      endpoint: `http://127.0.0.1:${p.port}`,
      region: s3.region,
      forcePathStyle: true,
      credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
      maxAttempts: 1,
    });
    clients.push(c);
    return c;
  }

  async function upload(client: S3Client, key: string, data: Buffer, retries: string[]) {
    return streamUpload({
      client,
      bucket: BUCKET,
      key,
      body: source(data),
      partSize: 8 * MiB,
      queueSize: 2,
      sourceOk: Promise.resolve(),
      retryDelayMs: 50,
      onRetry: (m) => retries.push(m),
    });
  }

  it("the action's client: the SDK itself sends the part's Buffer again", async () => {
    // Every connection reset once, when 10 MiB have gone up: in the middle of a part.
    const p = await proxy({ upBytes: 10 * MiB });
    const data = randomBytes(30 * MiB);
    const retries: string[] = [];
    const r = await upload(actionClient(p), 't/sdk-resends', data, retries);
    assert.equal(p.cuts, 1, 'the connections were reset');
    assert.equal(r.sha256, createHash('sha256').update(data).digest('hex'));
    assert.ok((await getBytes(admin, 't/sdk-resends')).equals(data));
    assert.deepEqual(retries, [], 'the SDK retried; the uploader had nothing to do');
    assert.equal(await s3.listMultipartUploads(BUCKET, 't/sdk-resends'), 0);
  });

  it('a client that does not retry: the uploader sends the part again', async () => {
    const p = await proxy({ upBytes: 10 * MiB });
    const data = randomBytes(30 * MiB);
    const retries: string[] = [];
    const r = await upload(noRetryClient(p), 't/we-resend', data, retries);
    assert.equal(p.cuts, 1);
    assert.equal(r.bytes, data.length);
    assert.ok((await getBytes(admin, 't/we-resend')).equals(data));
    assert.ok(retries.length >= 1, 'a part was sent again');
    assert.match(
      retries[0] ?? '',
      /^part \d \(8\.00 MiB from byte \d+\): .*; sending it again in 0\.1 s \(attempt 2 of 4\)\.$/,
    );
    assert.equal(await s3.listMultipartUploads(BUCKET, 't/we-resend'), 0);
  });

  it('a part reset on every send: the upload fails naming the part, and leaves nothing', async () => {
    // Every connection reset after 1 MiB up: no 8 MiB part can get through.
    const p = await proxy({ perConnection: { upBytes: MiB } });
    const retries: string[] = [];
    const client = noRetryClient(p);
    await assert.rejects(
      streamUpload({
        client,
        bucket: BUCKET,
        key: 't/never',
        body: source(randomBytes(20 * MiB)),
        partSize: 8 * MiB,
        queueSize: 1,
        sourceOk: Promise.resolve(),
        partAttempts: 3,
        retryDelayMs: 20,
        onRetry: (m) => retries.push(m),
      }),
      /^Error: part 1 \(8\.00 MiB from byte 0\) failed 3 times, the last with .*(ECONNRESET|EPIPE|socket hang up)/,
    );
    assert.equal(retries.length, 2);
    // The abort is a small request: it got through.
    assert.equal(await s3.listMultipartUploads(BUCKET, 't/never'), 0);
  });
});
