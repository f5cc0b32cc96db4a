/**
 * The goloop kind's pure parts: the admin API's chains, the chain a run wants, the block
 * hash, the kind's defaults, and how 'node-kind: auto' tells the kinds apart on a host; and
 * the chain's start, run by a real bash and curl against a control socket that answers as
 * goloop's does.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { createServer as createHttpServer, type Server } from 'node:http';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { HostError } from '../../src/errors.ts';
import {
  chainFolder,
  isAtRest,
  parseBlockHash,
  parseBuildVersion,
  parseChains,
  pickChain,
  rpcBase,
} from '../../src/node-kind/goloop/layout.ts';
import { chainStartCommand, socketFunctions } from '../../src/node-kind/goloop/commands.ts';
import { bashScript } from '../../src/shell.ts';
import { detectKindCommand } from '../../src/node-kind/index.ts';
import { forKind, parseSettings } from '../../src/settings.ts';

const KEY = '-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----';
const base: Record<string, string> = {
  bucket: 'snapshots',
  host: 'node.example',
  'ssh-key': KEY,
  'insecure-skip-host-key-check': 'true',
};
const settings = (extra: Record<string, string> = {}) =>
  parseSettings((n) => ({ ...base, ...extra })[n] ?? '');

const ADMIN = JSON.stringify([
  { cid: '0x1', nid: '0x1', channel: 'icon_dex', state: 'started', height: 1234, lastError: '' },
  { cid: '0xabc', nid: '0x2', channel: 'other', state: 'stopped', height: 5, lastError: '' },
]);

describe('the goloop kind', () => {
  it('reads the chains of the admin API and picks one by channel or by cid', () => {
    const chains = parseChains(ADMIN);
    assert.equal(pickChain(chains, 'icon_dex').height, 1234);
    assert.equal(pickChain(chains, '0xABC').channel, 'other');
    assert.throws(
      () => pickChain(chains, 'nope'),
      (e: unknown) =>
        e instanceof HostError &&
        /no chain on the channel 'nope' \(it has: icon_dex \(0x1, started\), other \(0xabc, stopped\)\)/.test(
          e.message,
        ),
    );
    assert.throws(() => parseChains('<html>'), /did not answer with JSON/);
    assert.throws(() => parseChains('[{"cid":"../x"}]'), /names a chain with the cid/);
  });

  it('names the chain folder as goloop does, and knows which states leave the database closed', () => {
    assert.equal(chainFolder('0x6b8c59'), '6b8c59');
    const [started, stopped] = parseChains(ADMIN);
    assert.equal(isAtRest(started!), false);
    assert.equal(isAtRest(stopped!), true);
    assert.equal(isAtRest({ ...started!, state: 'backup manual' }), true);
  });

  it('reads the block hash and the build version', () => {
    const hash = 'ab'.repeat(32);
    assert.equal(parseBlockHash(JSON.stringify({ result: { block_hash: hash } })), hash);
    assert.equal(parseBlockHash(JSON.stringify({ result: { block_hash: `0x${hash}` } })), hash);
    assert.throws(
      () => parseBlockHash(JSON.stringify({ error: { code: -32602, message: 'no block' } })),
      /answered with an error/,
    );
    assert.equal(parseBuildVersion('{"buildVersion":"v1.4.4"}'), 'v1.4.4');
    assert.equal(parseBuildVersion('{"buildVersion":"$(x)"}'), '');
    assert.equal(rpcBase('http://localhost:9000/admin/chain'), 'http://localhost:9000');
  });

  it("takes goloop's defaults where the inputs are left empty, and keeps what they give", () => {
    const g = forKind(settings(), 'goloop');
    assert.equal(g.node.dataDir, '/app/prep/data');
    assert.equal(g.node.peerUrl, 'http://localhost:9000/admin/chain');
    assert.equal(g.backup.compression, 'zstd');
    assert.equal(g.backup.compressionLevel, 1);
    assert.equal(g.node.chain, 'icon_dex');
    const given = forKind(
      settings({ 'data-dir': '/srv/icon2/data', compression: 'gzip', chain: '0x1' }),
      'goloop',
    );
    assert.equal(given.node.dataDir, '/srv/icon2/data');
    assert.equal(given.backup.compression, 'gzip');
    assert.equal(given.node.chain, '0x1');
    // loopchain's are the original guide's, as before.
    const l = forKind(settings(), 'loopchain');
    assert.equal(l.node.dataDir, '/app/prep/data/loopchain');
    assert.equal(l.backup.compression, 'gzip');
    assert.equal(settings({ 'node-kind': 'goloop' }).node.dataDir, '/app/prep/data');
  });

  it('refuses a node-kind or a chain it does not know', () => {
    assert.throws(() => settings({ 'node-kind': 'icon3' }), /Input 'node-kind' is 'icon3'/);
    assert.throws(() => settings({ chain: "icon_dex'; rm -rf /" }), /Input 'chain' is/);
  });
});

describe("'node-kind: auto' on a host", () => {
  const root = mkdtempSync(join(tmpdir(), 'prep-detect-'));
  after(() => rmSync(root, { recursive: true, force: true }));
  const detect = (prep: string, extra: Record<string, string> = {}) =>
    spawnSync('sh', ['-c', detectKindCommand(settings({ 'prep-dir': prep, ...extra }))], {
      encoding: 'utf8',
    }).stdout.trim();

  it('finds loopchain by its .storage, goloop by its socket or a chain folder, nothing on a fresh host', async () => {
    const l = join(root, 'l');
    mkdirSync(join(l, 'data/loopchain/.storage'), { recursive: true });
    assert.equal(detect(l), `loopchain ${l}/data/loopchain/.storage`);

    const g = join(root, 'g');
    mkdirSync(join(g, 'data/6b8c59/db'), { recursive: true });
    writeFileSync(join(g, 'data/6b8c59/config.json'), '{}');
    assert.equal(detect(g), `goloop ${g}/data/6b8c59/config.json`);

    const s = join(root, 's');
    mkdirSync(join(s, 'data'), { recursive: true });
    const sock = createServer().listen(join(s, 'data/cli.sock'));
    await new Promise((r) => sock.once('listening', r));
    assert.equal(detect(s), `goloop ${s}/data/cli.sock`);
    sock.close();

    assert.equal(detect(join(root, 'fresh')), '');
    assert.equal(
      detect(root, { 'data-dir': join(g, 'data') }),
      `goloop ${g}/data/6b8c59/config.json`,
    );
  });
});

/**
 * A control socket that answers as goloop's does for one chain: `GET /chain/{cid}` with its
 * state (from `states`, one a look, the last one kept), `POST /chain/{cid}/start|stop` by
 * `answer` (goloop refuses a start or a stop in the wrong state with a 500).
 */
async function controlSocket(
  path: string,
  cid: string,
  states: string[],
  answer: (action: string) => { status: number; then?: string[] },
): Promise<{ server: Server; posts: string[] }> {
  const posts: string[] = [];
  const server = createHttpServer((req, res) => {
    const url = req.url ?? '';
    if (req.method === 'GET' && url === `/chain/${cid}`) {
      const state = states.length > 1 ? states.shift()! : states[0]!;
      res.end(JSON.stringify({ cid, nid: '0x1', channel: 'icon_dex', state, height: 10 }));
      return;
    }
    const action = new RegExp(`^/chain/${cid}/(\\w+)$`).exec(url)?.[1];
    if (req.method === 'POST' && action) {
      posts.push(action);
      const a = answer(action);
      if (a.then) states.splice(0, states.length, ...a.then);
      res.statusCode = a.status;
      res.end(a.status === 200 ? '' : `{"message":"InvalidState(state=${states[0]})"}`);
      return;
    }
    res.statusCode = 404;
    res.end();
  });
  await new Promise<void>((r) => server.listen(path, r));
  return { server, posts };
}

describe("the chain's start through the control socket", () => {
  const root = mkdtempSync(join(tmpdir(), 'prep-chain-start-'));
  after(() => rmSync(root, { recursive: true, force: true }));
  const cid = '0x6b8c59';
  let n = 0;
  /** Runs the start against a socket of `states` and `answer`; its exit status and stderr. */
  async function start(
    states: string[],
    answer: (action: string) => { status: number; then?: string[] },
  ): Promise<{ code: number | null; stderr: string; posts: string[] }> {
    const sock = join(root, `cli-${++n}.sock`);
    const { server, posts } = await controlSocket(sock, cid, states, answer);
    try {
      // The fallback would run only without the socket.
      const child = spawn('sh', ['-c', chainStartCommand(sock, cid, 'exit 99')], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      const code = await new Promise<number | null>((r) => child.on('close', r));
      return { code, stderr, posts };
    } finally {
      server.close();
    }
  }
  const refuse = () => ({ status: 500 });

  it('starts a stopped chain', async () => {
    const r = await start(['stopped'], () => ({ status: 200, then: ['starting', 'started'] }));
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.posts, ['start']);
  });

  it("waits for a chain that the node's own start is starting, and sends nothing", async () => {
    const r = await start(['starting', 'starting', 'starting', 'started'], refuse);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.posts, []);
  });

  it("takes a start refused because the node's own start came first for the start", async () => {
    // Stopped when looked at; the node's entrypoint starts it before this start arrives.
    const r = await start(['stopped'], () => ({ status: 500, then: ['starting', 'started'] }));
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.posts, ['start']);
  });

  it('fails, saying so, when the chain refuses the start and stays stopped', async () => {
    const r = await start(['stopped'], refuse);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /the chain refused to start \(it is 'stopped'\)/);
  });

  it('runs the start command where a goloop that died left its socket file, then starts the chain', async () => {
    const sock = join(root, `cli-${++n}.sock`);
    // A socket file that nothing listens on: Python binds it and exits without removing it.
    execFileSync('python3', [
      '-c',
      `import socket; socket.socket(socket.AF_UNIX).bind(${JSON.stringify(sock)})`,
    ]);
    assert.ok(statSync(sock).isSocket());
    // The start command leaves a mark; goloop then starts as it does: the old file removed, a
    // socket listened on in its place.
    const marker = join(root, `started-${n}`);
    const child = spawn('sh', ['-c', chainStartCommand(sock, cid, `touch ${marker}`)], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    let ended = false;
    const closed = new Promise<number | null>((r) =>
      child.on('close', (code) => {
        ended = true;
        r(code);
      }),
    );
    while (!existsSync(marker) && !ended) await new Promise((r) => setTimeout(r, 50));
    assert.ok(existsSync(marker), `the start command did not run: ${stderr}`);
    rmSync(sock);
    const { server, posts } = await controlSocket(sock, cid, ['stopped'], () => ({
      status: 200,
      then: ['started'],
    }));
    try {
      assert.equal(await closed, 0, stderr);
      assert.deepEqual(posts, ['start']);
    } finally {
      server.close();
    }
  });

  it('stops a chain whose database was released, then starts it', async () => {
    const r = await start(['backup manual'], (a) =>
      a === 'stop' ? { status: 200, then: ['stopped'] } : { status: 200, then: ['started'] },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.posts, ['stop', 'start']);
  });

  it('looks often while it waits, and gives up after its time, saying what it waited for', async () => {
    const sock = join(root, `cli-${++n}.sock`);
    let looks = 0;
    const { server } = await controlSocket(sock, cid, ['stopping'], refuse);
    server.on('request', () => looks++);
    try {
      const script = bashScript([
        ...socketFunctions(sock, cid),
        `wait_for 1 'the chain did not stop' is_stopped`,
      ]);
      const child = spawn('sh', ['-c', script], { stdio: ['ignore', 'ignore', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
      const code = await new Promise<number | null>((r) => child.on('close', r));
      assert.equal(code, 1, stderr);
      assert.match(stderr, /the chain did not stop within 1 s \(the chain is 'stopping'\)/);
      // Every 20 ms at first: a stop that takes tens of milliseconds is seen within them.
      assert.ok(looks >= 20, `${looks} looks in 1 s`);
    } finally {
      server.close();
    }
  });
});
