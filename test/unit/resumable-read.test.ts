/**
 * A tree's file read over HTTP under the rule of the ranged archive reads, against a real HTTP
 * server on loopback that stalls, breaks and refuses on cue: a stall costs one attempt and the
 * next goes on from the byte where it stopped; a server that stays silent ends the read with an
 * error that names the file, the byte and the reason; a refusal ends it at once. Also through
 * a tree in icon2-node's form, as a restore reads it (`snapshot: https://…/MainNet.json`).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, beforeEach, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { DownloadError, StorageError } from '../../src/errors.ts';
import { foreignTree } from '../../src/modes/restore-tree.ts';
import { tailHash } from '../../src/tree/icon2.ts';
import { httpRange, resumableRead, type ReadTiming } from '../../src/tree/resumable-read.ts';

/** What the server does with one GET of the file. */
type Act =
  | 'serve'
  /** Sends the headers and the bytes up to this one of the file, then nothing, the connection open. */
  | { stallAt: number }
  /** Accepts the connection and never answers. */
  | 'silent'
  /** Answers with the whole file whatever the Range asks. */
  | 'ignoreRange'
  | { status: number };

/** The timing of the tests: a stall is 400 ms, a back-off 10 ms. */
const FAST: ReadTiming = { stallMs: 400, backoffMs: 10, attempts: 3 };

// A read without the rule would wait for the stalled server for ever: each test has a bound.
describe(
  'a file read over HTTP with a stall timeout, resumed by range',
  { timeout: 30_000 },
  () => {
    let server: Server;
    let base: string;
    const data = randomBytes(3 * 1024 * 1024 + 777);
    /** What each GET of the file does, in turn; 'serve' once they run out. */
    let acts: Act[] = [];
    /** The Range header of each GET of the file ('' for none). */
    let ranges: string[] = [];
    /** The connections of the responses left stalled or silent, ended after each test. */
    const hanging: IncomingMessage[] = [];
    /** Other files the server serves as they are (the tree's pointer, index and checksum file). */
    const texts = new Map<string, string>();

    const serveFile = (req: IncomingMessage, res: ServerResponse): void => {
      ranges.push(req.headers.range ?? '');
      const act = acts.shift() ?? 'serve';
      if (act === 'silent' || (typeof act === 'object' && 'stallAt' in act)) hanging.push(req);
      if (act === 'silent') return;
      if (typeof act === 'object' && 'status' in act) {
        res.statusCode = act.status;
        res.end('no');
        return;
      }
      const from =
        act === 'ignoreRange'
          ? 0
          : Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0);
      res.statusCode = from > 0 ? 206 : 200;
      if (from > 0)
        res.setHeader('content-range', `bytes ${from}-${data.length - 1}/${data.length}`);
      res.setHeader('content-length', String(data.length - from));
      if (typeof act === 'object') {
        // The bytes up to the stall go out; the response never ends.
        res.write(data.subarray(from, act.stallAt));
        return;
      }
      res.end(data.subarray(from));
    };

    before(async () => {
      server = createServer((req, res) => {
        const text = texts.get(req.url ?? '');
        if (text !== undefined) res.end(text);
        else if (req.url === '/data/file') serveFile(req, res);
        else {
          res.statusCode = 404;
          res.end();
        }
      });
      await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
      base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    });
    after(async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    });
    beforeEach(() => {
      acts = [];
      ranges = [];
      // The stalled responses of the test before are let go (not the idle connections that the
      // client keeps for its next requests).
      for (const req of hanging.splice(0)) req.socket.destroy();
    });

    async function readAll(
      timing: ReadTiming,
      opts: { start?: number; onChunk?: (i: number) => Promise<void>; retries?: string[] } = {},
    ): Promise<Buffer> {
      const chunks: Buffer[] = [];
      let i = 0;
      await resumableRead(
        {
          what: 'chain/db/1/000001.ldb',
          size: data.length,
          start: opts.start,
          request: httpRange(`${base}/data/file`),
          onRetry: (m) => opts.retries?.push(m),
          ...timing,
        },
        async (chunk) => {
          chunks.push(Buffer.from(chunk));
          await opts.onChunk?.(i++);
        },
      );
      return Buffer.concat(chunks);
    }

    it('goes on from the byte where a stalled response stopped', async () => {
      acts = [{ stallAt: 1_000_000 }];
      const retries: string[] = [];
      const got = await readAll(FAST, { retries });
      assert.ok(got.equals(data));
      assert.deepEqual(ranges, ['', 'bytes=1000000-']);
      assert.equal(retries.length, 1);
      assert.match(retries[0]!, /no byte arrived for 0\.4 s; again from byte 1000000\./);
    });

    it('counts a server that never answers as a stall too', async () => {
      acts = ['silent', { stallAt: 2_000_000 }];
      const got = await readAll(FAST);
      assert.ok(got.equals(data));
      assert.deepEqual(ranges, ['', '', 'bytes=2000000-']);
    });

    it('gives up after the attempts in a row that bring nothing, naming the file, the byte and the reason', async () => {
      acts = [{ stallAt: 1_500_000 }, { stallAt: 1_500_000 }, { stallAt: 1_500_000 }, 'silent'];
      const t = performance.now();
      await assert.rejects(
        readAll(FAST),
        (error: Error) =>
          error instanceof DownloadError &&
          /^The download of chain\/db\/1\/000001\.ldb stopped at byte 1500000 of 3146505: 3 attempts in a row failed, the last with no byte arrived for 0\.4 s\.$/.test(
            error.message,
          ),
      );
      // One attempt that brought bytes, then three that brought none.
      assert.deepEqual(ranges, ['', 'bytes=1500000-', 'bytes=1500000-', 'bytes=1500000-']);
      assert.ok(performance.now() - t < 5000, 'bounded: it does not hang');
    });

    it('ends at once on an answer that another attempt would not change', async () => {
      acts = [{ status: 404 }];
      await assert.rejects(
        readAll(FAST),
        (error: Error) =>
          error instanceof StorageError &&
          !(error instanceof DownloadError) &&
          /GET http:\/\/127\.0\.0\.1:\d+\/data\/file answered HTTP 404 Not Found\./.test(
            error.message,
          ),
      );
      assert.deepEqual(ranges, ['']);
    });

    it('tries a 503 again, after a back-off', async () => {
      acts = [{ status: 503 }];
      const retries: string[] = [];
      const got = await readAll(FAST, { retries });
      assert.ok(got.equals(data));
      assert.match(
        retries[0]!,
        /answered HTTP 503 Service Unavailable; again from byte 0 in 0\.0 s/,
      );
    });

    it('skips what a server that ignores the Range sends before the byte asked for', async () => {
      acts = [{ stallAt: 1_234_567 }, 'ignoreRange'];
      const got = await readAll(FAST);
      assert.ok(got.equals(data));
      assert.deepEqual(ranges, ['', 'bytes=1234567-']);
    });

    it('does not count the time the reader takes with a chunk as a stall', async () => {
      const retries: string[] = [];
      const got = await readAll(FAST, {
        retries,
        onChunk: async (i) => {
          if (i < 3) await sleep(700);
        },
      });
      assert.ok(got.equals(data));
      assert.deepEqual(retries, []);
      assert.deepEqual(ranges, ['']);
    });

    it('reads from a start, as a file cut short in the staging folder goes on', async () => {
      const got = await readAll(FAST, { start: 3_000_000 });
      assert.ok(got.equals(data.subarray(3_000_000)));
      assert.deepEqual(ranges, ['bytes=3000000-']);
    });

    describe("a tree in icon2-node's form", () => {
      const path = '6b8c59/db/1/000001.ldb';
      before(async () => {
        texts.set(
          '/MainNet.json',
          JSON.stringify({ index_url: `${base}/index.txt`, checksum_url: `${base}/checksum.json` }),
        );
        texts.set('/index.txt', `${base}/data/file\n\tout=${path}\n`);
        texts.set(
          '/checksum.json',
          JSON.stringify({ [path]: { file_size: data.length, checksum: await tailHash(data) } }),
        );
      });

      it('reads its files with the stall timeout: a stalled file goes on from its byte', async () => {
        const tree = await foreignTree(`${base}/MainNet.json`, 'icon_dex', FAST);
        assert.equal(tree.items.length, 1);
        const item = tree.items[0]!;
        assert.equal(item.path, path);
        acts = [{ stallAt: 2_500_000 }];
        const chunks: Buffer[] = [];
        await item.read(0, (c) => void chunks.push(Buffer.from(c)));
        assert.ok(Buffer.concat(chunks).equals(data));
        assert.deepEqual(ranges, ['', 'bytes=2500000-']);
      });

      it('ends a file that stays stalled with an error naming the file, its URL, the byte and the reason', async () => {
        const tree = await foreignTree(`${base}/MainNet.json`, 'icon_dex', FAST);
        acts = [{ stallAt: 700_000 }, 'silent', 'silent', 'silent'];
        await assert.rejects(
          (async () => {
            let bytes = 0;
            await tree.items[0]!.read(0, (chunk) => void (bytes += chunk.length));
            return bytes;
          })(),
          new RegExp(
            `^DownloadError: The download of 6b8c59/db/1/000001\\.ldb \\(http://127\\.0\\.0\\.1:\\d+/data/file\\) stopped at ` +
              `byte 700000 of ${data.length}: 3 attempts in a row failed, the last with no byte arrived for 0\\.4 s\\.$`,
          ),
        );
      });
    });
  },
);
