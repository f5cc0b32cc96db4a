/**
 * The ranged reader against a real MinIO, through the test bed's proxy acting as a poor
 * network: what comes out is the object, in order, whatever the connections go through; a
 * replaced object fails the read and says so; a range that cannot be read says which and why.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { DownloadError, ObjectChangedError } from '../../src/errors.ts';
import { hostFetchBytes, hostRangeBytes } from '../../src/node-kind/host-fetch.ts';
import {
  chooseRangeBytes,
  headObject,
  MAX_RANGE_BYTES,
  MIN_RANGE_BYTES,
  rangedDownload,
  type RangedReadOptions,
} from '../../src/s3/download.ts';
import { SocketGetHandler } from '../../src/s3/socket-get.ts';
import { startCutProxy, type CutProxy, type CutProxyOptions } from '../bed/cut-proxy.js';
import { startMinio, type S3Server } from '../bed/minio.js';

const MiB = 1024 * 1024;
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const BUCKET = 'reads';
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('chooseRangeBytes', () => {
  it('gives each connection two ranges, within the bounds, in whole MiB', () => {
    assert.equal(chooseRangeBytes(1024 * MiB, 8), 8 * MiB);
    assert.equal(chooseRangeBytes(1.2e12, 8), MAX_RANGE_BYTES);
    assert.equal(chooseRangeBytes(7 * MiB, 8), MIN_RANGE_BYTES);
    assert.equal(chooseRangeBytes(0, 8), MIN_RANGE_BYTES);
    assert.equal(chooseRangeBytes(40 * MiB, 4), 5 * MiB);
  });
});

// Through the SDK's own handler (any client) and through the read client's (socket-get.ts).
for (const handler of ['the SDK handler', 'SocketGetHandler'] as const)
  describe(`rangedDownload against MinIO, through ${handler}`, () => {
    let s3: S3Server;
    let data: Buffer;
    const key = 'PRep/20260101/archive.tar.gz';
    const proxies: CutProxy[] = [];
    const clients: S3Client[] = [];

    before(async () => {
      s3 = await startMinio();
      await s3.createBucket(BUCKET);
      // Not a multiple of the range size: the last range is short.
      data = randomBytes(12 * MiB + 12_345);
      await put(key, data);
    });
    after(async () => {
      for (const c of clients) c.destroy();
      for (const p of proxies) await p.stop();
      await s3?.stop();
    });

    async function put(k: string, body: Buffer): Promise<void> {
      const c = s3.client();
      try {
        await c.send(new PutObjectCommand({ Bucket: BUCKET, Key: k, Body: body }));
      } finally {
        c.destroy();
      }
    }

    /** A client that reaches MinIO through a proxy with `opts`; maxAttempts 1 leaves every retry to the reader. */
    async function through(
      opts: Omit<CutProxyOptions, 'targetPort'>,
      maxAttempts = 1,
    ): Promise<{ client: S3Client; proxy: CutProxy }> {
      const proxy = await startCutProxy({ targetPort: s3.port, ...opts });
      proxies.push(proxy);
      const client = new S3Client({
        endpoint: `http://127.0.0.1:${proxy.port}`,
        region: s3.region,
        forcePathStyle: true,
        credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
        maxAttempts,
        requestHandler: handler === 'SocketGetHandler' ? new SocketGetHandler() : undefined,
      });
      clients.push(client);
      return { client, proxy };
    }

    /** Reads the whole object (from `start`) into memory. */
    async function read(
      client: S3Client,
      opts: Partial<RangedReadOptions> = {},
      k = key,
    ): Promise<{ bytes: Buffer; retries: number; messages: string[] }> {
      const object = await headObject(client, BUCKET, k);
      const messages: string[] = [];
      const stream = rangedDownload({
        client,
        bucket: BUCKET,
        key: k,
        object,
        connections: 4,
        rangeBytes: MiB,
        backoffMs: 20,
        onRetry: (m) => messages.push(m),
        ...opts,
      });
      const chunks: Buffer[] = [];
      for await (const c of stream) chunks.push(Buffer.from(c));
      return { bytes: Buffer.concat(chunks), retries: stream.retries, messages };
    }

    it('reads the object in order with several connections, from any byte', async () => {
      const { client, proxy } = await through({});
      const whole = await read(client);
      assert.equal(whole.bytes.length, data.length);
      assert.equal(sha(whole.bytes), sha(data));
      assert.equal(whole.retries, 0);
      assert.ok(proxy.connections >= 4, `${proxy.connections} connections`);
      const tail = await read(client, { start: 5 * MiB + 7 });
      assert.ok(tail.bytes.equals(data.subarray(5 * MiB + 7)));
      await put('empty', Buffer.alloc(0));
      assert.equal((await read(client, {}, 'empty')).bytes.length, 0);
    });

    it('with each connection capped, more connections read faster', async () => {
      // 2 MiB/s a connection: 12 MiB take 6 s on one, a quarter of that on four.
      const { client } = await through({ bytesPerSecond: 2 * MiB, latencyMs: 10 });
      const timed = async (connections: number): Promise<number> => {
        const t = performance.now();
        const r = await read(client, { connections });
        assert.equal(sha(r.bytes), sha(data));
        return (performance.now() - t) / 1000;
      };
      const one = await timed(1);
      const four = await timed(4);
      assert.ok(one > 5, `one connection took ${one.toFixed(2)} s`);
      assert.ok(
        four < one * 0.5,
        `four connections took ${four.toFixed(2)} s, one ${one.toFixed(2)} s`,
      );
    });

    it('memory stays within connections x range size while the consumer is slow', async () => {
      const big = randomBytes(48 * MiB);
      await put('big', big);
      const { client } = await through({});
      const object = await headObject(client, BUCKET, 'big');
      const stream = rangedDownload({
        client,
        bucket: BUCKET,
        key: 'big',
        object,
        connections: 2,
        rangeBytes: 2 * MiB,
      });
      // Live memory, not garbage: the sockets' chunks wait for a collection that V8 makes when it
      // pleases, and would hide the difference between a bounded read and one that is not.
      gc();
      const before = process.memoryUsage().arrayBuffers;
      let peak = 0;
      const timer = setInterval(() => {
        gc();
        peak = Math.max(peak, process.memoryUsage().arrayBuffers);
      }, 10);
      const hash = createHash('sha256');
      try {
        let first = true;
        for await (const chunk of stream) {
          hash.update(chunk);
          if (first) {
            // Hold the first chunk until the read has filled its bound, however slow the machine:
            // the bound is then proven reached, not merely never passed.
            first = false;
            const until = Date.now() + 30_000;
            while (stream.peakHeldBytes < 4 * MiB && Date.now() < until) await sleep(20);
          }
          // About 25 MiB/s: far slower than MinIO on loopback, which would have sent nearly all
          // 48 MiB before the consumer took half of it.
          await sleep(Math.ceil(chunk.length / (25 * 1024)));
        }
      } finally {
        clearInterval(timer);
      }
      assert.equal(hash.digest('hex'), sha(big));
      // The bound is two ranges of 2 MiB; a range reads on until a chunk takes it past the bound.
      assert.equal(stream.heldBytes, 4 * MiB);
      assert.ok(
        stream.peakHeldBytes >= 4 * MiB && stream.peakHeldBytes <= 4 * MiB + 2 * 256 * 1024,
        `${stream.peakHeldBytes} bytes held at most`,
      );
      // What is held, the chunk handed on, the sockets' and the in-process proxy's buffers: 5-7 MiB
      // as a rule, 16 MiB once under a loaded machine. Ranges of 24 MiB instead of 2 grew it by
      // 24-43 MiB; a read with no bound would hold most of the 48 MiB.
      assert.ok(
        peak - before < 20 * MiB,
        `array buffers grew by ${((peak - before) / MiB).toFixed(1)} MiB`,
      );
    });

    it('every connection cut after 700 kB: each range goes on from where it stopped', async () => {
      const { client, proxy } = await through({ perConnection: { downBytes: 700_000 } });
      const r = await read(client);
      assert.equal(sha(r.bytes), sha(data));
      assert.ok(proxy.cuts >= 10, `${proxy.cuts} cuts`);
      assert.ok(r.retries >= 10, `${r.retries} retries`);
      // A range of 1 MiB cut after at most 700 kB went on from a later byte than its first.
      assert.ok(
        r.messages.some((m) => {
          const x = /^bytes (\d+)-\d+ .* again from byte (\d+)/.exec(m);
          return x !== null && Number(x[2]) > Number(x[1]);
        }),
        r.messages.join('\n'),
      );
    });

    it('503 Slow Down now and then: the SDK and the reader retry, the bytes are whole', async () => {
      // With the SDK's own retries (the client's default of 3 attempts) and without them.
      for (const maxAttempts of [3, 1]) {
        const { client, proxy } = await through({ slowDownEvery: 3 }, maxAttempts);
        const r = await read(client);
        assert.equal(sha(r.bytes), sha(data));
        assert.ok(proxy.slowDowns >= 4, `${proxy.slowDowns} answers of 503`);
        if (maxAttempts === 1) {
          assert.ok(r.retries >= 4, `${r.retries} retries`);
          assert.match(r.messages.join('\n'), /HTTP 503 SlowDown/);
        }
      }
    });

    it('the object replaced during the read: it fails, saying so', async () => {
      const k = 'replaced.tar.gz';
      const original = randomBytes(8 * MiB);
      await put(k, original);
      // Slow enough that the replacement lands while most ranges are still to be asked for.
      const { client } = await through({ bytesPerSecond: 2 * MiB }, 3);
      const object = await headObject(client, BUCKET, k);
      const stream = rangedDownload({
        client,
        bucket: BUCKET,
        key: k,
        object,
        connections: 2,
        rangeBytes: MiB,
      });
      let got = 0;
      let replaced = false;
      const reading = (async () => {
        for await (const c of stream) {
          got += (c as Buffer).length;
          if (!replaced && got >= MiB) {
            replaced = true;
            await put(k, randomBytes(8 * MiB));
          }
        }
      })();
      await assert.rejects(reading, (error: Error) => {
        assert.ok(error instanceof ObjectChangedError, `${error.name}: ${error.message}`);
        assert.match(
          error.message,
          /replaced\.tar\.gz was replaced while it was read: S3 answered 412/,
        );
        return true;
      });
      assert.ok(got < original.length, 'the read stopped short');
    });

    it('a range that fails on every attempt: the error names the range and the reason', async () => {
      // The first cut after 2 MiB, and every connection refused after it.
      const { client } = await through({ downBytes: 2 * MiB, refuseAfterCut: true });
      await assert.rejects(read(client, { attempts: 3 }), (error: Error) => {
        assert.ok(error instanceof DownloadError, `${error.name}: ${error.message}`);
        assert.match(
          error.message,
          /^bytes \d+-\d+ of s3:\/\/reads\/PRep\/20260101\/archive\.tar\.gz: 3 attempts in a row failed at byte \d+, the last with .*(ECONNRESET|socket hang up|aborted)/,
        );
        return true;
      });
    });

    it('a connection that goes silent is abandoned and asked again', async () => {
      // The first three connections fall silent after 1.5 MB: nothing more comes, nothing closes.
      const { client, proxy } = await through({
        perConnection: { downBytes: 1_500_000 },
        perConnectionCuts: 3,
        perConnectionMode: 'stall',
      });
      const r = await read(client, { stallMs: 500 });
      assert.equal(sha(r.bytes), sha(data));
      assert.equal(proxy.cuts, 3);
      assert.match(r.messages.join('\n'), /no byte arrived for 0\.5 s/);
    });
  });

describe("the host's own read of an archive: its ranges", () => {
  it('spreads a small archive over the connections and caps a large one at 64 MiB', () => {
    const MiB = 1024 * 1024;
    assert.equal(hostRangeBytes(3 * MiB, 8), MiB);
    assert.equal(hostRangeBytes(2 * 1024 * MiB, 8), 64 * MiB);
    assert.equal(hostRangeBytes(1.2e12, 8), 64 * MiB);
    assert.equal(hostRangeBytes(100 * MiB, 2), 13 * MiB);
    // What the host's disk holds at most: never more than the archive.
    assert.equal(hostFetchBytes(3 * MiB, 8), 3 * MiB);
    assert.equal(hostFetchBytes(1.2e12, 8), 512 * MiB);
  });
});
