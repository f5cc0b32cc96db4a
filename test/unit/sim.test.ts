/**
 * The P-Rep node simulator (test/sim/prep-node.ts) behaves like the node the action
 * stops and starts: real LevelDB, blocks grow, graceful stop, kill mid-compaction leaves
 * tables that the MANIFEST does not list, a corrupt DB is refused at start.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClassicLevel } from 'classic-level';
import { parseManifest, tableFileNumber } from '../../src/node-kind/leveldb-manifest.js';
import { blockKey, dbLayout, downtimes, parseEvents, type NodeEvent } from '../sim/chain.js';

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const SIM = join(REPO, 'test/sim/prep-node.ts');
const homes: string[] = [];

function tempHome(): string {
  const dir = mkdtempSync(join(tmpdir(), 'prep-sim-'));
  homes.push(dir);
  return join(dir, 'prep');
}

after(() => {
  for (const dir of homes) {
    // Kill only the daemon this test started, found through its own pid file.
    try {
      const pid = Number(readFileSync(join(dir, 'prep', 'node.pid'), 'utf8').trim());
      if (pid > 0) process.kill(pid, 'SIGKILL');
    } catch {
      /* not running */
    }
    rmSync(dir, { recursive: true, force: true });
  }
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  json: Record<string, unknown>;
}

function sim(args: string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((res, rej) => {
    const child = spawn(process.execPath, ['--import', 'tsx', SIM, ...args], {
      cwd: REPO,
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', rej);
    child.on('close', (code) => {
      clearTimeout(timer);
      let json: Record<string, unknown> = {};
      const last = stdout.trim().split('\n').pop();
      try {
        json = last ? (JSON.parse(last) as Record<string, unknown>) : {};
      } catch {
        /* not JSON */
      }
      res({ code, stdout, stderr, json });
    });
  });
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.on('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const addr = s.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      s.close(() => res(port));
    });
  });
}

async function peer(port: number): Promise<{ block_height: number; service_available: boolean }> {
  const r = await fetch(`http://127.0.0.1:${port}/api/v1/avail/peer`);
  assert.equal(r.status, 200);
  return (await r.json()) as { block_height: number; service_available: boolean };
}

function events(home: string): NodeEvent[] {
  return parseEvents(readFileSync(join(home, 'node-events.log'), 'utf8'));
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return true;
  }
}

/** Table files on disk that the current MANIFEST of a DB does not list. */
function unlistedTables(dbPath: string): string[] {
  const current = readFileSync(join(dbPath, 'CURRENT'), 'utf8').trim();
  const live = parseManifest(readFileSync(join(dbPath, current))).tables;
  return readdirSync(dbPath).filter((n) => {
    const num = tableFileNumber(n);
    return num !== undefined && !live.has(num);
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test(
  'node grows blocks, stops gracefully, is killed mid-compaction and comes back',
  { timeout: 90_000 },
  async () => {
    const home = tempHome();
    const data = join(home, 'data', 'loopchain');
    const port = await freePort();

    const init = await sim(['init', '--home', home, '--ip', '10.1.2.3', '--blocks', '50']);
    assert.equal(init.code, 0, init.stderr);
    assert.equal(init.json.height, 50);
    assert.ok(existsSync(join(data, '.storage', 'db_10.1.2.3:7100_icon_dex', 'CURRENT')));
    assert.notEqual(
      (await sim(['init', '--home', home, '--ip', '10.1.2.3'])).code,
      0,
      'init twice must fail',
    );

    // start, blocks grow
    const s1 = await sim(['start', '--home', home, '--port', String(port), '--rate', '40']);
    assert.equal(s1.code, 0, s1.stderr);
    const pid1 = Number(s1.json.pid);
    assert.ok(isAlive(pid1));
    const p1 = await peer(port);
    assert.equal(p1.service_available, true);
    await sleep(1000);
    const p2 = await peer(port);
    assert.ok(
      p2.block_height > p1.block_height,
      `height grows: ${p1.block_height} -> ${p2.block_height}`,
    );
    const again = await sim(['start', '--home', home, '--port', String(port)]);
    assert.equal(again.code, 0);
    assert.equal(again.json.already_running, true);

    // graceful stop
    const st1 = await sim(['stop', '--home', home]);
    assert.equal(st1.code, 0, st1.stderr);
    assert.ok(!isAlive(pid1), 'daemon gone after stop');
    assert.ok(!existsSync(join(home, 'node.pid')));
    const c1 = await sim(['check', '--home', home]);
    assert.equal(c1.code, 0, c1.stdout + c1.stderr);
    assert.equal(c1.json.ok, true);
    assert.ok(Number(c1.json.height) >= p2.block_height);
    assert.equal(c1.json.height, st1.json.block_height);
    const ev1 = events(home);
    for (const name of ['start-requested', 'started', 'stop-requested', 'stopped']) {
      assert.ok(
        ev1.some((e) => e.event === name),
        `event ${name}`,
      );
    }
    const stopped = ev1.find((e) => e.event === 'stopped');
    assert.equal(stopped?.mode, 'graceful');
    assert.equal(stopped?.block_height, c1.json.height);

    // check also reads an extracted archive whose block DB is named db_CHANGEIP
    const copy = join(dirname(home), 'extracted');
    cpSync(data, copy, { recursive: true });
    renameSync(
      join(copy, '.storage', 'db_10.1.2.3:7100_icon_dex'),
      join(copy, '.storage', 'db_CHANGEIP:7100_icon_dex'),
    );
    const c2 = await sim(['check', '--data', copy]);
    assert.equal(c2.code, 0, c2.stdout + c2.stderr);
    assert.equal(c2.json.height, c1.json.height);

    // start again, then kill mid-compaction (mode chosen through the H/stop-mode file)
    const s2 = await sim(['start', '--home', home, '--port', String(port), '--rate', '40']);
    assert.equal(s2.code, 0, s2.stderr);
    const pid2 = Number(s2.json.pid);
    await sleep(500);
    writeFileSync(join(home, 'stop-mode'), 'kill-mid-compaction\n');
    const st2 = await sim(['stop', '--home', home]);
    assert.equal(st2.code, 0, st2.stderr);
    assert.equal(st2.json.mode, 'kill-mid-compaction');
    assert.equal(st2.json.during_compaction, true, st2.stdout + st2.stderr);
    assert.ok(!isAlive(pid2));
    const unlisted: Record<string, string[]> = {};
    for (const db of dbLayout(data)) {
      const u = unlistedTables(db.path);
      if (u.length) unlisted[db.path] = u;
    }
    const count = Object.values(unlisted).flat().length;
    assert.ok(
      count > 0,
      'a kill mid-compaction leaves table files that the MANIFEST does not list',
    );
    assert.equal(count, st2.json.orphan_count);
    const killed = events(home).filter((e) => e.event === 'killed');
    assert.equal(killed.length, 1);
    assert.equal(killed[0]?.pid, pid2);

    // the node must come up again after the kill, and the chain is whole
    rmSync(join(home, 'stop-mode'));
    const s3 = await sim(['start', '--home', home, '--port', String(port), '--rate', '40']);
    assert.equal(s3.code, 0, s3.stderr);
    assert.ok(Number(s3.json.block_height) > Number(killed[0]?.block_height ?? 0));
    await sleep(300);
    const st3 = await sim(['stop', '--home', home, '--mode', 'graceful']);
    assert.equal(st3.code, 0, st3.stderr);
    const c3 = await sim(['check', '--home', home]);
    assert.equal(c3.code, 0, c3.stdout + c3.stderr);
    // LevelDB dropped the leftovers on open (or reused their numbers for live tables).
    for (const [dbPath, names] of Object.entries(unlisted)) {
      const nowUnlisted = unlistedTables(dbPath);
      for (const n of names) assert.ok(!nowUnlisted.includes(n), `${n} is no longer an orphan`);
    }

    // downtime can be computed from the event log
    const d = downtimes(events(home));
    assert.equal(d.length, 2);
    for (const x of d) assert.ok(x.ms > 0 && x.ms < 30_000, `downtime ${x.ms} ms`);
    const status = await sim(['status', '--home', home]);
    assert.equal(status.json.running, false);
    assert.equal(status.json.height, c3.json.height);
  },
);

test(
  'a corrupt or incomplete block DB is refused at start and by check',
  { timeout: 60_000 },
  async () => {
    const port = await freePort();

    // 1. a block whose content no longer matches its hash
    const a = tempHome();
    assert.equal((await sim(['init', '--home', a, '--ip', '10.0.0.1', '--blocks', '30'])).code, 0);
    const blockPath = join(a, 'data', 'loopchain', '.storage', 'db_10.0.0.1:7100_icon_dex');
    const db = new ClassicLevel<string, string>(blockPath);
    await db.open({ createIfMissing: false });
    const v = (await db.get(blockKey(10))) as string;
    await db.put(blockKey(10), v.replace('"method":"transfer"', '"method":"transfeR"'));
    await db.close();
    const r1 = await sim(['start', '--home', a, '--port', String(port)]);
    assert.equal(r1.code, 1);
    assert.match(r1.stderr, /block 10: stored hash does not match/);
    assert.ok(events(a).some((e) => e.event === 'refused'));
    assert.ok(!existsSync(join(a, 'node.pid')));
    const c1 = await sim(['check', '--home', a]);
    assert.equal(c1.code, 1);
    assert.equal(c1.json.ok, false);

    // 2. a table file that is gone
    const b = tempHome();
    assert.equal((await sim(['init', '--home', b, '--ip', '10.0.0.2', '--blocks', '30'])).code, 0);
    const bPath = join(b, 'data', 'loopchain', '.storage', 'db_10.0.0.2:7100_icon_dex');
    const tables = readdirSync(bPath).filter((n) => n.endsWith('.ldb'));
    assert.ok(tables.length > 0);
    for (const t of tables) unlinkSync(join(bPath, t));
    const r2 = await sim(['start', '--home', b, '--port', String(port)]);
    assert.equal(r2.code, 1);
    assert.ok(events(b).some((e) => e.event === 'refused'));
    assert.equal((await sim(['check', '--home', b])).code, 1);

    // 3. two block DBs: which IP is ours is ambiguous
    const c = tempHome();
    assert.equal((await sim(['init', '--home', c, '--ip', '10.0.0.3', '--blocks', '5'])).code, 0);
    cpSync(
      join(c, 'data', 'loopchain', '.storage', 'db_10.0.0.3:7100_icon_dex'),
      join(c, 'data', 'loopchain', '.storage', 'db_10.0.0.4:7100_icon_dex'),
      { recursive: true },
    );
    const r3 = await sim(['start', '--home', c, '--port', String(port)]);
    assert.equal(r3.code, 1);
    assert.match(r3.stderr, /exactly one/);
  },
);
