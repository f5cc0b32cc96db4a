/**
 * The read client's request handler (src/s3/socket-get.ts) against scripted HTTP servers on
 * loopback, plain and TLS: what a server may do that MinIO does not (close a kept-alive
 * socket, answer chunked, send too much, stall) and what the SDK's handler does for it.
 * MinIO itself is read through it in download.test.ts and by every restore of the e2e tests.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import * as tls from 'node:tls';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { createClient, createReadClient } from '../../src/s3/client.ts';
import { parseHead, requestTarget, type OutgoingRequest } from '../../src/s3/http-wire.ts';
import { SocketBody } from '../../src/s3/socket-body.ts';
import { SocketGetHandler } from '../../src/s3/socket-get.ts';
import type { S3Settings } from '../../src/settings.ts';

const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');

/** What a scripted server saw: each request's head, and on which connection (1, 2, ...). */
interface Seen {
  head: string;
  connection: number;
}

type Script = (seen: Seen, socket: net.Socket) => void;

/** A server that answers each request by `script`, one request at a time per connection. */
async function scripted(
  script: Script,
  secure?: { key: Buffer; cert: Buffer },
): Promise<{ port: number; seen: Seen[]; close(): Promise<void> }> {
  const seen: Seen[] = [];
  let connections = 0;
  const sockets = new Set<net.Socket>();
  const onConnection = (socket: net.Socket): void => {
    const connection = ++connections;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let buffered = '';
    socket.on('data', (d: Buffer) => {
      buffered += d.toString('latin1');
      for (let end = buffered.indexOf('\r\n\r\n'); end >= 0; end = buffered.indexOf('\r\n\r\n')) {
        const head = buffered.slice(0, end);
        buffered = buffered.slice(end + 4);
        const s = { head, connection };
        seen.push(s);
        script(s, socket);
      }
    });
  };
  const server = secure ? tls.createServer(secure, onConnection) : net.createServer(onConnection);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    seen,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

function request(
  port: number,
  path = '/b/k',
  extra: Partial<OutgoingRequest> = {},
): OutgoingRequest {
  return {
    method: 'GET',
    protocol: 'http:',
    hostname: '127.0.0.1',
    port,
    path,
    headers: { host: `127.0.0.1:${port}`, range: 'bytes=0-9' },
    ...extra,
  };
}

const answer = (socket: net.Socket, body: Buffer, extra = ''): void => {
  socket.write(`HTTP/1.1 206 Partial Content\r\ncontent-length: ${body.length}\r\n${extra}\r\n`);
  socket.write(body);
};

async function readAll(body: NodeJS.ReadableStream | SocketBody): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of body as AsyncIterable<Buffer>) parts.push(Buffer.from(c));
  return Buffer.concat(parts);
}

describe('socket-get: heads and targets', () => {
  it('parses a status line and headers, names in lower case, repeats joined', () => {
    const h = parseHead(
      'HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nX-Amz-Meta-A: 1\r\nx-amz-meta-a: 2',
    );
    assert.deepEqual(h, {
      version: '1.1',
      statusCode: 206,
      reason: 'Partial Content',
      headers: { 'content-length': '10', 'x-amz-meta-a': '1, 2' },
    });
    assert.equal(parseHead('HTTP/2 200'), undefined);
    assert.equal(parseHead('HTTP/1.1 200 OK\r\nno colon here'), undefined);
  });

  it('writes the query as the SDK signs it: sorted, RFC 3986 escaped', () => {
    const r = request(1, '/bucket/a%20b', {
      query: { 'x-id': 'GetObject', versionId: "v!'()*", flag: null, multi: ['2', '1'] },
    });
    assert.equal(
      requestTarget(r),
      '/bucket/a%20b?flag&multi=2&multi=1&versionId=v%21%27%28%29%2A&x-id=GetObject',
    );
  });
});

describe('socket-get: exchanges', () => {
  const servers: Array<{ close(): Promise<void> }> = [];
  const handlers: SocketGetHandler[] = [];
  after(async () => {
    for (const h of handlers) h.destroy();
    for (const s of servers) await s.close();
  });
  const handler = (h = new SocketGetHandler()): SocketGetHandler => {
    handlers.push(h);
    return h;
  };

  it('keeps the socket for the next GET, and hands a body as views (held while the reader waits) or as a stream', async () => {
    const data = randomBytes(300_000);
    const srv = await scripted((_s, socket) => answer(socket, data));
    servers.push(srv);
    const h = handler();
    const got: Buffer[] = [];
    const a = (await h.handle(request(srv.port))).response.body as SocketBody;
    await a.readInto((view) => void got.push(Buffer.from(view)));
    const b = (await h.handle(request(srv.port))).response.body as SocketBody;
    const held: Buffer[] = [];
    // A reader that holds the socket a while with every view.
    await b.readInto(async (view) => {
      const copy = Buffer.from(view);
      await new Promise((r) => setTimeout(r, 1));
      assert.ok(copy.equals(view), 'the view changed while the reader held it');
      held.push(copy);
    });
    const c = (await h.handle(request(srv.port))).response.body;
    const streamed = await readAll(c);
    for (const bytes of [Buffer.concat(got), Buffer.concat(held), streamed])
      assert.equal(sha(bytes), sha(data));
    assert.deepEqual(
      srv.seen.map((s) => s.connection),
      [1, 1, 1],
    );
    assert.match(
      srv.seen[0]?.head ?? '',
      /^GET \/b\/k HTTP\/1\.1\r\nhost: 127\.0\.0\.1:\d+\r\nrange: bytes=0-9$/,
    );
  });

  it('a kept-alive socket the server closed: the GET goes again on a new one', async () => {
    const srv = await scripted((s, socket) => {
      answer(socket, Buffer.from('0123456789'));
      // The first connection is closed after its answer, as a server's idle timeout does.
      if (s.connection === 1) setTimeout(() => socket.destroy(), 20);
    });
    servers.push(srv);
    const h = handler();
    const first = (await h.handle(request(srv.port))).response;
    assert.equal((await readAll(first.body)).toString(), '0123456789');
    await new Promise((r) => setTimeout(r, 100));
    const second = (await h.handle(request(srv.port))).response;
    assert.equal((await readAll(second.body)).toString(), '0123456789');
    assert.deepEqual(
      srv.seen.map((s) => s.connection),
      [1, 2],
    );
  });

  it('Connection: close is honoured; an answer it does not read goes to the SDK handler', async () => {
    const srv = await scripted((s, socket) => {
      if (s.head.includes('/chunked')) {
        socket.write(
          'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n',
        );
      } else answer(socket, Buffer.from('abc'), 'connection: close\r\n');
    });
    servers.push(srv);
    const asked: string[] = [];
    const h = handler(
      new SocketGetHandler({
        handle: async (r: { path: string }) => {
          asked.push(r.path);
          return { response: { statusCode: 200, headers: {}, body: undefined } };
        },
      } as never),
    );
    await readAll((await h.handle(request(srv.port))).response.body);
    await readAll((await h.handle(request(srv.port))).response.body);
    assert.deepEqual(
      srv.seen.map((s) => s.connection),
      [1, 2],
    );
    await h.handle(request(srv.port, '/chunked'));
    assert.deepEqual(asked, ['/chunked']);
    // Another method never comes here.
    await h.handle({ ...request(srv.port, '/put'), method: 'PUT', body: 'x' });
    assert.deepEqual(asked, ['/chunked', '/put']);
  });

  it('an error answer reaches the SDK whole; bytes past the length fail the body', async () => {
    const xml = '<Error><Code>NoSuchKey</Code></Error>';
    const srv = await scripted((s, socket) => {
      if (s.head.includes('/missing')) {
        socket.write(`HTTP/1.1 404 Not Found\r\ncontent-length: ${xml.length}\r\n\r\n${xml}`);
      } else {
        // Says 4 bytes, sends 8 at once.
        socket.write('HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n');
        setTimeout(() => socket.write('12345678'), 20);
      }
    });
    servers.push(srv);
    const h = handler();
    const missing = (await h.handle(request(srv.port, '/missing'))).response;
    assert.equal(missing.statusCode, 404);
    assert.equal((await readAll(missing.body)).toString(), xml);
    const over = (await h.handle(request(srv.port, '/over'))).response.body as SocketBody;
    await assert.rejects(
      over.readInto(() => undefined),
      /bytes past the body's length/,
    );
  });

  it('an abort mid-body fails the read and closes the socket', async () => {
    const srv = await scripted((_s, socket) => {
      socket.write('HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789');
    });
    servers.push(srv);
    const h = handler();
    const stop = new AbortController();
    const body = (await h.handle(request(srv.port), { abortSignal: stop.signal })).response
      .body as SocketBody;
    let n = 0;
    const reading = body.readInto((v) => {
      n += v.length;
      stop.abort();
    });
    await assert.rejects(reading, { name: 'AbortError' });
    assert.equal(n, 10);
    // The next GET goes on a new socket (this server never ends a body: it is left unread).
    (await h.handle(request(srv.port))).response.body.destroy();
    assert.equal(srv.seen.at(-1)?.connection, 2);
  });

  it('reads over TLS, the server named and its certificate checked', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'socket-get-'));
    try {
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'rsa:2048',
          '-nodes',
          '-days',
          '1',
          '-subj',
          '/CN=localhost',
          '-addext',
          'subjectAltName=DNS:localhost',
          '-keyout',
          join(dir, 'key.pem'),
          '-out',
          join(dir, 'cert.pem'),
        ],
        { stdio: 'ignore' },
      );
      const key = readFileSync(join(dir, 'key.pem'));
      const cert = readFileSync(join(dir, 'cert.pem'));
      const data = randomBytes(200_000);
      const srv = await scripted((_s, socket) => answer(socket, data), { key, cert });
      servers.push(srv);
      const secure = (port: number): OutgoingRequest => ({
        ...request(port),
        protocol: 'https:',
        hostname: 'localhost',
      });
      const trusting = handler(new SocketGetHandler(undefined, { ca: cert }));
      const body = (await trusting.handle(secure(srv.port))).response.body as SocketBody;
      const got: Buffer[] = [];
      await body.readInto((v) => void got.push(Buffer.from(v)));
      assert.equal(sha(Buffer.concat(got)), sha(data));
      // Without the test's CA the certificate is refused.
      await assert.rejects(handler().handle(secure(srv.port)), /self-signed|certificate/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the clients a run reads S3 with', () => {
  const servers: Array<{ close(): Promise<void> }> = [];
  after(async () => {
    for (const s of servers) await s.close();
  });

  // AWS S3 stores a CRC64NVME of every object put without a checksum, and sends it back to a
  // GET that asks for it. The SDK's default asks, and then reads the body through a checksum
  // of its own in JavaScript: a second pass over every byte, and the body no longer the
  // handler's. The manifest's sha256 proves the bytes already (MinIO keeps no such checksum).
  it('asks for no checksum of a GET and checks none it is sent: the body is the handler’s', async () => {
    const data = Buffer.from('the bytes of a stored file');
    const srv = await scripted((_s, socket) =>
      answer(
        socket,
        data,
        // Not the CRC64NVME of `data`: a client that checked it would fail the read.
        'x-amz-checksum-crc64nvme: AAAAAAAAAAA=\r\nx-amz-checksum-type: FULL_OBJECT\r\n',
      ),
    );
    servers.push(srv);
    const settings = {
      bucket: 'snapshots',
      endpoint: `http://127.0.0.1:${srv.port}`,
      forcePathStyle: true,
      region: 'us-east-1',
    } as S3Settings;
    const credentials = { accessKeyId: 'test', secretAccessKey: 'test-secret' };
    for (const client of [createReadClient(settings), createClient(settings)]) {
      client.config.credentials = () => Promise.resolve(credentials);
      const got = await client.send(new GetObjectCommand({ Bucket: 'snapshots', Key: 'k' }));
      const body = got.Body as unknown as NodeJS.ReadableStream | SocketBody;
      if (srv.seen.length === 1) assert.ok(body instanceof SocketBody, 'the read client’s body');
      assert.equal(sha(await readAll(body)), sha(data));
      client.destroy();
    }
    assert.equal(srv.seen.length, 2);
    for (const s of srv.seen) assert.doesNotMatch(s.head, /x-amz-checksum-mode/i);
  });
});
