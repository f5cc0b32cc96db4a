// The test bed itself: real sshd, real MinIO, the cut proxy, the action runner.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, connect, type Server as NetServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  PutObjectCommand,
  CreateMultipartUploadCommand,
  AbortMultipartUploadCommand,
} from '@aws-sdk/client-s3';
import { startSshd, generateKey, type Sshd } from '../bed/sshd.js';
import { startMinio, s3Env, type S3Server } from '../bed/minio.js';
import { startCutProxy } from '../bed/cut-proxy.js';
import { freePort } from '../bed/ports.js';
import {
  runAction,
  runMainThenPost,
  parseFileCommand,
  inputEnvName,
  actionInputDefaults,
} from '../bed/runner.js';

function sh(
  cmd: string,
  args: string[],
  input?: string,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    const c = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    c.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    c.once('error', rej);
    c.once('close', (code) => res({ code, stdout, stderr }));
    c.stdin.end(input ?? '');
  });
}

function sshArgs(s: Sshd, knownHostsFile: string, keyPath: string, port = s.port): string[] {
  return [
    '-F',
    '/dev/null',
    '-p',
    String(port),
    '-i',
    keyPath,
    '-o',
    'IdentitiesOnly=yes',
    '-o',
    'BatchMode=yes',
    '-o',
    'StrictHostKeyChecking=yes',
    '-o',
    `UserKnownHostsFile=${knownHostsFile}`,
    '-o',
    'GlobalKnownHostsFile=/dev/null',
    '-o',
    'ConnectTimeout=10',
    `${s.username}@127.0.0.1`,
  ];
}

describe('sshd', () => {
  let s: Sshd;
  let dir: string;
  before(async () => {
    s = await startSshd();
    dir = await mkdtemp(join(tmpdir(), 'bed-test-'));
  });
  after(async () => {
    await s?.stop();
    await rm(dir, { recursive: true, force: true });
  });

  it('describes itself', () => {
    assert.equal(s.host, '127.0.0.1');
    assert.match(s.hostKeyFingerprint, /^SHA256:[A-Za-z0-9+/]{43}$/);
    assert.match(
      s.knownHostsLine,
      new RegExp(`^\\[127\\.0\\.0\\.1\\]:${s.port} ssh-ed25519 AAAA\\S+$`),
    );
    assert.equal(s.knownHostsLine, `[127.0.0.1]:${s.port} ${s.hostPublicKey}`);
    assert.match(s.privateKey, /BEGIN OPENSSH PRIVATE KEY/);
  });

  it('accepts the user key with the pinned host key (StrictHostKeyChecking=yes)', async () => {
    const kh = join(dir, 'known_hosts');
    await writeFile(kh, s.knownHostsLine + '\n');
    const r = await sh('ssh', [...sshArgs(s, kh, s.privateKeyPath), 'echo ok']);
    assert.equal(r.code, 0, r.stderr + s.log());
    assert.equal(r.stdout, 'ok\n');
  });

  it('sshArgs() helper works the same way', async () => {
    const r = await sh('ssh', [...s.sshArgs(), `${s.username}@127.0.0.1`, 'echo ok']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'ok\n');
  });

  it('rejects a key that is not authorized', async () => {
    const wrong = await generateKey(join(dir, 'wrong'));
    const kh = join(dir, 'known_hosts');
    await writeFile(kh, s.knownHostsLine + '\n');
    const r = await sh('ssh', [...sshArgs(s, kh, wrong.privateKeyPath), 'echo ok']);
    assert.equal(r.code, 255);
    assert.match(r.stderr, /Permission denied/);
  });

  it('fails when the host key does not match the pinned one', async () => {
    const other = await generateKey(join(dir, 'other-host'));
    const [kt, kb] = other.publicKey.split(' ');
    const kh = join(dir, 'known_hosts_wrong');
    await writeFile(kh, `[127.0.0.1]:${s.port} ${kt} ${kb}\n`);
    const r = await sh('ssh', [...sshArgs(s, kh, s.privateKeyPath), 'echo ok']);
    assert.equal(r.code, 255);
    assert.match(r.stderr, /REMOTE HOST IDENTIFICATION HAS CHANGED|Host key verification failed/);
  });

  it('extraConfig overrides the defaults', async () => {
    const s2 = await startSshd({ extraConfig: ['MaxSessions 7'] });
    try {
      const r = await sh('/usr/sbin/sshd', ['-T', '-f', join(s2.dir, 'sshd_config')]);
      assert.match(r.stdout, /^maxsessions 7$/m, r.stderr);
    } finally {
      await s2.stop();
    }
  });

  it('plainShell: sessions read an empty ~/.bashrc; the file itself is untouched', async () => {
    const s2 = await startSshd({ plainShell: true });
    try {
      const bytes = 'wc -c < ~/.bashrc 2>/dev/null || echo none';
      const r = await sh('ssh', [...s2.sshArgs(), `${s2.username}@127.0.0.1`, bytes]);
      assert.equal(r.code, 0, r.stderr + s2.log());
      const here = await sh('sh', ['-c', bytes]);
      // Where the user has no ~/.bashrc there is nothing to hide.
      assert.equal(r.stdout.trim(), here.stdout.trim() === 'none' ? 'none' : '0');
    } finally {
      await s2.stop();
    }
  });

  it('stop() ends the server', async () => {
    const s2 = await startSshd();
    await s2.stop();
    const refused = await new Promise<boolean>((res) => {
      const c = connect({ host: '127.0.0.1', port: s2.port });
      c.once('connect', () => {
        c.destroy();
        res(false);
      });
      c.once('error', () => res(true));
    });
    assert.ok(refused);
  });
});

describe('minio', () => {
  let m: S3Server;
  before(async () => {
    m = await startMinio();
    await m.createBucket('bed-bucket');
  });
  after(async () => {
    await m?.stop();
  });

  it('round-trips an object', async () => {
    await m
      .client()
      .send(new PutObjectCommand({ Bucket: 'bed-bucket', Key: 'a/b.txt', Body: 'hello\n' }));
    assert.equal(await m.getText('bed-bucket', 'a/b.txt'), 'hello\n');
    assert.deepEqual(await m.listKeys('bed-bucket', 'a/'), ['a/b.txt']);
    assert.deepEqual(await m.listKeys('bed-bucket', 'zzz/'), []);
  });

  it('s3Env gives what configure-aws-credentials sets', () => {
    const env = s3Env(m);
    assert.equal(env.AWS_ACCESS_KEY_ID, m.accessKeyId);
    assert.equal(env.AWS_SECRET_ACCESS_KEY, m.secretAccessKey);
    assert.equal(env.AWS_REGION, 'us-east-1');
  });

  it('honours conditional writes: stale If-Match and If-None-Match:* get 412', async () => {
    const c = m.client();
    const key = 'p/backup_list';
    const first = await c.send(
      new PutObjectCommand({ Bucket: 'bed-bucket', Key: key, Body: 'one\n', IfNoneMatch: '*' }),
    );
    assert.ok(first.ETag);
    await assert.rejects(
      c.send(
        new PutObjectCommand({ Bucket: 'bed-bucket', Key: key, Body: 'x\n', IfNoneMatch: '*' }),
      ),
      (e: { $metadata?: { httpStatusCode?: number }; name?: string }) =>
        e.$metadata?.httpStatusCode === 412,
    );
    const second = await c.send(
      new PutObjectCommand({ Bucket: 'bed-bucket', Key: key, Body: 'two\n', IfMatch: first.ETag }),
    );
    assert.notEqual(second.ETag, first.ETag);
    await assert.rejects(
      c.send(
        new PutObjectCommand({
          Bucket: 'bed-bucket',
          Key: key,
          Body: 'stale\n',
          IfMatch: first.ETag,
        }),
      ),
      (e: { $metadata?: { httpStatusCode?: number }; name?: string }) =>
        e.$metadata?.httpStatusCode === 412 && e.name === 'PreconditionFailed',
    );
    assert.equal(await m.getText('bed-bucket', key), 'two\n');
  });

  it('If-Match on a missing key is 404 NoSuchKey (not 412)', async () => {
    await assert.rejects(
      m.client().send(
        new PutObjectCommand({
          Bucket: 'bed-bucket',
          Key: 'missing',
          Body: 'x',
          IfMatch: '"0123"',
        }),
      ),
      (e: { $metadata?: { httpStatusCode?: number } }) => e.$metadata?.httpStatusCode === 404,
    );
  });

  it('exactly one of concurrent If-Match writers wins', async () => {
    const c = m.client();
    const base = await c.send(
      new PutObjectCommand({ Bucket: 'bed-bucket', Key: 'race', Body: 'base\n' }),
    );
    const res = await Promise.allSettled(
      Array.from({ length: 8 }, (_, i) =>
        c.send(
          new PutObjectCommand({
            Bucket: 'bed-bucket',
            Key: 'race',
            Body: `w${i}\n`,
            IfMatch: base.ETag,
          }),
        ),
      ),
    );
    assert.equal(res.filter((r) => r.status === 'fulfilled').length, 1);
  });

  it('counts in-progress multipart uploads (by prefix too)', async () => {
    const c = m.client();
    assert.equal(await m.listMultipartUploads('bed-bucket'), 0);
    const u1 = await c.send(
      new CreateMultipartUploadCommand({ Bucket: 'bed-bucket', Key: 'p/20250101/x.tar.gz' }),
    );
    await c.send(new CreateMultipartUploadCommand({ Bucket: 'bed-bucket', Key: 'q/other' }));
    assert.equal(await m.listMultipartUploads('bed-bucket'), 2);
    assert.equal(await m.listMultipartUploads('bed-bucket', 'p/'), 1);
    await c.send(
      new AbortMultipartUploadCommand({
        Bucket: 'bed-bucket',
        Key: 'p/20250101/x.tar.gz',
        UploadId: u1.UploadId,
      }),
    );
    assert.equal(await m.listMultipartUploads('bed-bucket', 'p/'), 0);
  });
});

describe('cut proxy', () => {
  let echo: NetServer;
  let echoPort: number;
  before(async () => {
    echoPort = await freePort();
    echo = createServer((sock) => {
      sock.on('error', () => {}); // the proxy resets its upstream side on cut
      sock.pipe(sock);
    });
    await new Promise<void>((r) => echo.listen(echoPort, '127.0.0.1', r));
  });
  after(() => new Promise<void>((r) => echo.close(() => r())));

  it('passes data, then cuts on demand', async () => {
    const p = await startCutProxy({ targetPort: echoPort });
    const c = connect({ host: '127.0.0.1', port: p.port });
    const got = await new Promise<string>((res) => {
      c.once('data', (b: Buffer) => res(b.toString()));
      c.write('ping');
    });
    assert.equal(got, 'ping');
    const closed = new Promise<string>((res) => {
      c.once('error', (e: NodeJS.ErrnoException) => res(e.code ?? 'error'));
      c.once('close', () => res('close'));
    });
    p.cut();
    assert.match(await closed, /ECONNRESET|close/);
    assert.equal(p.cuts, 1);
    await p.stop();
  });

  it('cuts after N bytes in one direction', async () => {
    const p = await startCutProxy({ targetPort: echoPort, downBytes: 1000 });
    const c = connect({ host: '127.0.0.1', port: p.port });
    let received = 0;
    c.on('data', (b: Buffer) => (received += b.length));
    const closed = new Promise<void>((res) => {
      c.once('error', () => res());
      c.once('close', () => res());
    });
    c.write(Buffer.alloc(5000));
    await closed;
    assert.equal(p.cuts, 1);
    assert.ok(received <= 1000, `received ${received}`);
    assert.equal(p.bytes.down, 1000);
    // Limits are one-shot: the next connection goes through.
    const c2 = connect({ host: '127.0.0.1', port: p.port });
    const got = await new Promise<string>((res) => {
      c2.once('data', (b: Buffer) => res(b.toString()));
      c2.write('again');
    });
    assert.equal(got, 'again');
    c2.destroy();
    await p.stop();
  });

  /** Sends `data` on a new connection; resolves with what came back before it closed. */
  function exchange(port: number, data: string | Buffer): Promise<{ got: Buffer; ms: number }> {
    return new Promise((res) => {
      const t = performance.now();
      const c = connect({ host: '127.0.0.1', port });
      const chunks: Buffer[] = [];
      c.on('data', (b: Buffer) => chunks.push(b));
      const done = () => res({ got: Buffer.concat(chunks), ms: performance.now() - t });
      c.once('error', done);
      c.once('close', done);
      c.write(data);
      // The echo server answers; end our side once it has.
      c.once('data', () => setTimeout(() => c.end(), 300));
    });
  }

  it('delays what it carries, each way', async () => {
    const p = await startCutProxy({ targetPort: echoPort, latencyMs: 100 });
    try {
      const { got, ms } = await exchange(p.port, 'ping');
      assert.equal(got.toString(), 'ping');
      // Up and down: twice the delay, and the 300 ms before the end.
      assert.ok(ms >= 200 + 300, `${ms.toFixed(0)} ms`);
    } finally {
      await p.stop();
    }
  });

  it('cuts each connection after it alone carried N bytes', async () => {
    const p = await startCutProxy({ targetPort: echoPort, perConnection: { downBytes: 1000 } });
    try {
      for (let i = 1; i <= 2; i++) {
        const { got } = await exchange(p.port, Buffer.alloc(5000));
        assert.ok(got.length <= 1000, `got ${got.length}`);
        assert.equal(p.cuts, i);
      }
      const { got } = await exchange(p.port, 'short');
      assert.equal(got.toString(), 'short', 'a connection under the limit goes through');
    } finally {
      await p.stop();
    }
  });

  it('answers every Nth HTTP request with 503 Slow Down', async () => {
    const p = await startCutProxy({ targetPort: echoPort, slowDownEvery: 2 });
    try {
      const request = 'GET /bucket/key HTTP/1.1\r\nHost: x\r\n\r\n';
      assert.equal((await exchange(p.port, request)).got.toString(), request, 'forwarded');
      const answer = (await exchange(p.port, request)).got.toString();
      assert.match(answer, /^HTTP\/1\.1 503 Slow Down\r\n/);
      assert.match(answer, /Connection: close\r\n\r\n<\?xml.*<Code>SlowDown<\/Code>/s);
      assert.equal(p.requests, 2);
      assert.equal(p.slowDowns, 1);
    } finally {
      await p.stop();
    }
  });

  it('breaks an ssh stream mid-way', async () => {
    const s = await startSshd();
    try {
      const p = await startCutProxy({ targetPort: s.port, downBytes: 1_000_000 });
      const args = s.sshArgs();
      args[args.indexOf('-p') + 1] = String(p.port);
      const kh = join(s.dir, 'known_hosts_proxy');
      // The client sees [127.0.0.1]:proxyPort: pin the same host key under that name.
      await writeFile(kh, `[127.0.0.1]:${p.port} ${s.hostPublicKey}\n`);
      args[args.findIndex((a) => a.startsWith('UserKnownHostsFile='))] = `UserKnownHostsFile=${kh}`;
      const r = await sh('ssh', [...args, `${s.username}@127.0.0.1`, 'head -c 20000000 /dev/zero']);
      assert.equal(r.code, 255);
      assert.ok(r.stdout.length < 1_000_000, `got ${r.stdout.length}`);
      assert.equal(p.cuts, 1);
      await p.stop();
    } finally {
      await s.stop();
    }
  });
});

describe('runner', () => {
  const fake = {
    main: 'test/bed/fixtures/fake-action/main.mjs',
    post: 'test/bed/fixtures/fake-action/post.mjs',
  };

  it('maps input names like the runner', () => {
    assert.equal(inputEnvName('ssh-host'), 'INPUT_SSH-HOST');
    assert.equal(inputEnvName('multi line'), 'INPUT_MULTI_LINE');
  });

  it('parses file commands', () => {
    assert.deepEqual(parseFileCommand('a<<EOF_1\nx\ny\nEOF_1\nb=2\nc<<D\n\nD\n'), {
      a: 'x\ny',
      b: '2',
      c: '',
    });
  });

  it('reads input defaults from an action.yml', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bed-yml-'));
    try {
      const yml = join(dir, 'action.yml');
      await writeFile(
        yml,
        [
          'name: x',
          'inputs:',
          '  mode:',
          "    description: 'what: to do'",
          '    default: backup',
          '  ssh-port:',
          "    default: '22'",
          '  quoted:',
          '    default: "a # b"',
          '  comment:',
          '    default: plain # trailing comment',
          '  block:',
          '    description: >',
          '      long text',
          '    default: |',
          '      line1',
          '      line2',
          '  required-one:',
          '    required: true',
          'runs:',
          "  using: 'node24'",
          '  main: dist/main/index.js',
          '',
        ].join('\n'),
      );
      assert.deepEqual(actionInputDefaults(yml), {
        mode: 'backup',
        'ssh-port': '22',
        quoted: 'a # b',
        comment: 'plain',
        block: 'line1\nline2\n',
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('runs a step with Node 24 and collects outputs, state, summary, annotations', async () => {
    const r = await runAction({
      step: 'main',
      script: fake.main,
      inputs: { 'node-name': 'n1', 'multi line': 'a\nb' },
    });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.outputs['node-version'] ?? '', /^v24\./);
    assert.equal(r.outputs.greeting, 'hello n1');
    assert.equal(r.outputs.multi, 'a\nb');
    assert.deepEqual(r.state, { 'node-name': 'n1', stopped: 'true' });
    assert.equal(r.exportedEnv.FAKE_EXPORTED, 'from-main');
    assert.match(r.summary, /Fake summary/);
    assert.deepEqual(
      r.annotations.map((a) => [a.level, a.message]),
      [['warning', 'a warning']],
    );
  });

  it('kills main on a stdout match; post still runs with its state', async () => {
    const { main, post } = await runMainThenPost({
      inputs: { 'node-name': 'n2', hang: 'true' },
      main: { script: fake.main, killWhen: /checkpoint: node stopped/ },
      post: { script: fake.post },
      timeoutMs: 30_000,
    });
    assert.equal(main.killed, true);
    assert.equal(main.signal, 'SIGKILL');
    assert.doesNotMatch(main.stdout, /checkpoint: done/);
    assert.equal(post.code, 0, post.stderr);
    assert.deepEqual(JSON.parse(post.outputs['seen-state'] ?? '{}'), {
      name: 'n2',
      stopped: 'true',
    });
    assert.equal(post.outputs['seen-input'], 'n2');
    assert.equal(post.outputs['seen-env'], 'from-main');
    assert.match(post.stdout, /post: restarting node/);
  });

  it('times out', async () => {
    const r = await runAction({
      step: 'main',
      script: fake.main,
      inputs: { 'node-name': 'n3', hang: 'true' },
      timeoutMs: 1500,
    });
    assert.equal(r.timedOut, true);
    assert.equal(r.signal, 'SIGKILL');
  });
});
