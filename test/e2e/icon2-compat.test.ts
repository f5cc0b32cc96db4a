/**
 * Compatibility with icon2-node's indexed snapshots (FASTEST_START, DOWNLOAD_URL_TYPE=indexing),
 * both ways, on real parts: a real goloop v1.4.4 node, a real sshd, a real MinIO whose bucket
 * anyone may read over plain HTTP (as a public snapshot bucket is), the real aria2c.
 *
 * 1. A tree that the packaged action backs up (format left at its default for goloop) is
 *    restored by icon2-node's own steps (test/bed/icon2-restore.py: their pointer, aria2c with
 *    their options, their size and tail-hash check), and goloop starts on the result with the
 *    snapshot's block hash. The action's own restore of our tree proves the node by that hash
 *    too, and refuses a chain whose hash differs.
 * 2. A tree published by hand in their form (their paths, index, checksum JSON hashed by
 *    Python's xxhash, pointer; no manifest of ours) is restored by the action, which says that
 *    only sizes and tail hashes could be checked; goloop starts on it with the copy's block hash.
 * 3. The same tree with one file's bytes changed in the bucket is refused, naming the file, and
 *    the node dir is left as it was.
 */
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  copyFileSync,
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { blockHashAt, startGoloop, type GoloopNode } from '../bed/goloop.js';
import { growDatabase } from '../bed/goloop-ballast.js';
import { publicRead, s3Env, startMinio, type S3Server } from '../bed/minio.js';
import { goloopBin, goloopMissing, repoRoot } from '../bed/paths.js';
import { freePort } from '../bed/ports.js';
import { runAction, runMainThenPost, type RunResult } from '../bed/runner.js';
import { startSshd, type Sshd } from '../bed/sshd.js';
import { bundles } from './world.js';

const exec = promisify(execFile);
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
const SERVER = join(repoRoot, 'test/bed/goloop-server.sh');
const RESTORE_PY = join(repoRoot, 'test/bed/icon2-restore.py');
const SERVICE = 'MainNet';
const said = (r: RunResult): string => `${r.stdout}\n${r.stderr}`;
const annotated = (r: RunResult, level: 'error' | 'warning'): string =>
  r.annotations
    .filter((a) => a.level === level)
    .map((a) => a.message)
    .join('\n');
const sha256 = (bytes: Buffer): string => createHash('sha256').update(bytes).digest('hex');
const bare = (hash: string): string => hash.replace(/^0x/, '');

/**
 * A Python that has the xxhash module. install.sh puts Debian's python3-xxhash into the system
 * Python; a `python3` found first on PATH (pyenv's, a venv's) may not see it.
 */
function pythonWithXxhash(): string {
  for (const py of [process.env.PYTHON_XXHASH, '/usr/bin/python3', 'python3']) {
    if (!py) continue;
    if (spawnSync(py, ['-c', 'import xxhash'], { stdio: 'ignore' }).status === 0) return py;
  }
  throw new Error('no Python with the xxhash module: run bash test/bed/install.sh');
}

/**
 * icon2-node's checksum JSON for files under `dir`, computed by Python's xxhash as their indexer
 * does (xxh3_64 of the last 10,240 bytes, all of the file when smaller): independent of our
 * TypeScript port of it.
 */
function pythonChecksums(
  py: string,
  dir: string,
  paths: string[],
): Record<string, { file_size: number; checksum: string }> {
  const script = `
import json, os, sys, xxhash
base, out = sys.argv[1], {}
for rel in json.load(sys.stdin):
    with open(os.path.join(base, rel), "rb") as f:
        f.seek(0, 2)
        n = f.tell()
        f.seek(n - 10240 if n >= 10240 else 0)
        out[rel] = {"file_size": n, "checksum": xxhash.xxh3_64_hexdigest(f.read())}
print(json.dumps(out))
`;
  const r = spawnSync(py, ['-c', script, dir], { input: JSON.stringify(paths), encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`python: ${r.stderr}`);
  return JSON.parse(r.stdout) as Record<string, { file_size: number; checksum: string }>;
}

/**
 * The files of a node dir that icon2-node's indexer lists: every regular file but the names it
 * leaves out (`ee.sock`, `icon_genesis.zip`, `auth.json`, `rconfig.json`, `restore`, `temp`,
 * `*.sock`), as paths relative to the node dir.
 */
function theirIndexedFiles(nodeDir: string): string[] {
  const skip = new Set([
    'ee.sock',
    'icon_genesis.zip',
    'auth.json',
    'rconfig.json',
    'restore',
    'temp',
  ]);
  const out: string[] = [];
  const walk = (rel: string): void => {
    for (const e of readdirSync(join(nodeDir, rel), { withFileTypes: true })) {
      if (skip.has(e.name) || e.name.endsWith('.sock')) continue;
      const path = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) walk(path);
      else if (e.isFile()) out.push(path);
    }
  };
  walk('');
  return out.sort();
}

/** The block hash (hex, no 0x) at `height`, as the node at `rpcUrl` answers it. */
async function blockHash(rpcUrl: string, channel: string, height: number): Promise<string> {
  return blockHashAt(`${rpcUrl}/api/v3/${channel}`, height);
}

/** The chain `cid` (0x…) in the node's `GET /admin/chain`, or undefined while it does not answer. */
async function chainInfo(
  rpcUrl: string,
  cid: string,
): Promise<{ state: string; height: number } | undefined> {
  try {
    const r = await fetch(`${rpcUrl}/admin/chain`, { signal: AbortSignal.timeout(5000) });
    if (!r.ok) return undefined;
    const list = (await r.json()) as Array<{ cid: string; state: string; height: number }>;
    return list.find((c) => c.cid === cid);
  } catch {
    return undefined;
  }
}

async function waitForHeight(
  rpcUrl: string,
  cid: string,
  h: number,
  ms = 120_000,
): Promise<number> {
  const deadline = Date.now() + ms;
  let last: { state: string; height: number } | undefined;
  while (Date.now() < deadline) {
    last = await chainInfo(rpcUrl, cid);
    if (last?.state === 'started' && last.height >= h) return last.height;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`chain ${cid} at ${rpcUrl} did not reach height ${h}: ${JSON.stringify(last)}`);
}

/** POST on goloop's control socket; the status code and the body. */
function socketPost(sock: string, path: string): Promise<{ code: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath: sock, method: 'POST', path, timeout: 30_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ code: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`POST ${path} on ${sock}: timed out`)));
    req.on('error', reject);
    req.end();
  });
}

describe(
  "icon2-node's indexed snapshots, both ways, with a real goloop node",
  { skip: goloopMissing() },
  () => {
    let sshd: Sshd;
    let s3: S3Server;
    let client: S3Client;
    let g: GoloopNode;
    let root: string;
    let py: string;
    let keystore: string;
    /** A copy of the node dir as icon2-node's indexer would see it, taken with the database closed. */
    let copy: string;
    /** A height that the copy holds, and the block hash there. */
    let copyHeight = 0;
    let copyHash = '';
    const bucket = 'icon2-public';
    const servers: string[] = [];

    before(async () => {
      py = pythonWithXxhash();
      if (spawnSync('aria2c', ['--version'], { stdio: 'ignore' }).status !== 0)
        throw new Error('aria2c not found: run bash test/bed/install.sh');
      root = mkdtempSync(join(tmpdir(), 'prep-icon2-'));
      [sshd, s3, g] = await Promise.all([startSshd(), startMinio(), startGoloop()]);
      client = s3.client();
      await s3.createBucket(bucket);
      await publicRead(client, bucket);
      await g.load(10);
      // Table files (*.ldb) in the database, not only its journal.
      await growDatabase(g, 8 * 1024 ** 2);
      await g.waitForHeight((await g.height()) + 5);
      // The restored nodes are validators with the same key; goloop refuses a peer with its own
      // address, so each runs alone on its own ports.
      keystore = join(root, 'keystore.json');
      copyFileSync(g.keystore, keystore);

      // A copy of the node dir as icon2-node would index it: the chain stopped and its database
      // closed through the control socket (as a freeze does), copied, then started again.
      copyHeight = await g.height();
      copyHash = bare(await g.blockHash(copyHeight));
      copy = join(root, 'their-node-dir');
      mkdirSync(copy);
      await g.chainStop();
      await g.chainBackupManual();
      try {
        cpSync(g.chainDir, join(copy, g.cid), { recursive: true });
        for (const name of readdirSync(g.nodeDir)) {
          const p = join(g.nodeDir, name);
          if (statSync(p).isFile()) copyFileSync(p, join(copy, name));
        }
      } finally {
        await g.chainStop();
        await g.chainStart();
      }
      await g.waitForHeight(copyHeight + 1);
      // A node-level file that their indexer lists (it leaves out only a few names): not part of
      // the chain, so not what a restore of the chain writes.
      writeFileSync(join(copy, 'node_settings.json'), '{"role": 3}\n');
    });

    after(async () => {
      for (const node of servers) await exec('bash', [SERVER, 'stop', node]).catch(() => undefined);
      client?.destroy();
      await g?.stop();
      await Promise.all([sshd?.stop(), s3?.stop()]);
      if (root) rmSync(root, { recursive: true, force: true });
    });

    const inputs = (extra: Record<string, string>): Record<string, string> => ({
      ...sshd.actionInputs(),
      bucket,
      endpoint: s3.endpoint,
      service: SERVICE,
      ...extra,
    });
    const run = (extra: Record<string, string>): Promise<RunResult> =>
      runAction({
        step: 'main',
        inputs: inputs(extra),
        env: s3Env(s3),
        script: bundles().main,
        timeoutMs: 300_000,
      });
    const put = (Key: string, Body: Buffer | string) =>
      client.send(new PutObjectCommand({ Bucket: bucket, Key, Body }));

    /** A fresh node dir (not yet there) with ports, and how an operator starts and stops it. */
    const freshNode = async (name: string) => {
      const node = join(root, name, 'data');
      const [rpc, p2p] = [await freePort(), await freePort()];
      servers.push(node);
      const rpcUrl = `http://127.0.0.1:${rpc}`;
      const start = `bash ${q(SERVER)} start ${q(goloopBin())} ${q(node)} ${q(keystore)} ${q(g.keyPassword)} ${rpc} ${p2p}`;
      return {
        node,
        rpcUrl,
        start,
        /** The action's inputs for a restore of `snapshot` into this node dir. */
        restore: (snapshot: string, healthTimeout: string) => ({
          mode: 'restore',
          snapshot,
          'node-kind': 'goloop',
          'data-dir': node,
          'peer-url': `${rpcUrl}/admin/chain`,
          'start-command': start,
          'stop-command': `bash ${q(SERVER)} stop ${q(node)}`,
          'health-timeout': healthTimeout,
          'disk-margin': '1MiB',
        }),
      };
    };

    /**
     * Publishes the copy as icon2-node publishes a tree: each file under its own path below
     * `{prefix}/data/`, an index whose URLs carry their `?version=NNNN`, a checksum JSON from
     * Python's xxhash and `{prefix}/{SERVICE}.json`. Returns the pointer's URL and the files.
     */
    const publishTheirs = async (prefix: string): Promise<{ pointer: string; files: string[] }> => {
      const base = `${s3.endpoint}/${bucket}/${prefix}`;
      const files = theirIndexedFiles(copy);
      for (const f of files) await put(`${prefix}/data/${f}`, readFileSync(join(copy, f)));
      const url = (f: string) => `${base}/data/${f.split('/').map(encodeURIComponent).join('/')}`;
      const index = files.map((f) => `${url(f)}?version=0001\n\tout=${f}\n`).join('');
      await put(`${prefix}/${SERVICE}_index.txt`, index);
      await put(
        `${prefix}/${SERVICE}_checksum.json`,
        JSON.stringify(pythonChecksums(py, copy, files)),
      );
      await put(
        `${prefix}/${SERVICE}.json`,
        JSON.stringify({
          index_url: `${base}/${SERVICE}_index.txt`,
          checksum_url: `${base}/${SERVICE}_checksum.json`,
        }),
      );
      return { pointer: `${base}/${SERVICE}.json`, files };
    };

    it("restores our tree with icon2-node's own steps, and goloop starts on it with the snapshot's block hash", async () => {
      const backup = await run({
        mode: 'backup',
        'data-dir': g.nodeDir,
        'peer-url': `${g.rpcUrl}/admin/chain`,
      });
      assert.equal(backup.code, 0, said(backup));
      const key = backup.outputs.key as string;
      assert.match(key, /\.tree$/, 'a tree: the default format for goloop');
      const m = JSON.parse(await s3.getText(bucket, `${key}/manifest.json`)) as {
        blockHeight: number;
        facts: { blockHash: string; cid: string; channel: string };
        files: Array<{ path: string; size: number; sha256: string }>;
      };
      const height = m.blockHeight;
      assert.equal(bare(m.facts.blockHash), bare(await g.blockHash(height)));

      // Their steps, with DOWNLOAD_URL the bucket's prefix over plain HTTP, no credentials.
      const { node, rpcUrl, start } = await freshNode('icon2');
      const downloadUrl = `${s3.endpoint}/${bucket}/${SERVICE}`;
      const restored = spawnSync(py, [RESTORE_PY, downloadUrl, SERVICE, node], {
        encoding: 'utf8',
        timeout: 300_000,
      });
      assert.equal(restored.status, 0, `${restored.stdout}\n${restored.stderr}`);
      assert.match(restored.stdout, new RegExp(`restored ${m.files.length} files`));
      assert.ok(existsSync(join(node, 'restore', 'RESTORED')), 'restore/RESTORED written');
      for (const f of m.files) {
        assert.equal(sha256(readFileSync(join(node, f.path))), f.sha256, f.path);
      }

      // The node starts on it as an operator starts it, and the chain is started through its socket.
      await exec('bash', ['-c', start]);
      const cid = m.facts.cid;
      const deadline = Date.now() + 60_000;
      for (;;) {
        const r = await socketPost(join(node, 'cli.sock'), `/chain/${cid}/start`);
        if (r.code >= 200 && r.code < 300) break;
        if (Date.now() > deadline) throw new Error(`chain start: HTTP ${r.code} ${r.body}`);
        await new Promise((res) => setTimeout(res, 200));
      }
      const reached = await waitForHeight(rpcUrl, cid, height);
      assert.equal(await blockHash(rpcUrl, m.facts.channel, height), bare(m.facts.blockHash));
      // And it goes on making blocks of its own.
      await waitForHeight(rpcUrl, cid, reached + 3, 60_000);
    });

    it("our action proves a restore of our tree by the manifest's block hash, and refuses another chain", async () => {
      const backup = await run({
        mode: 'backup',
        'data-dir': g.nodeDir,
        'peer-url': `${g.rpcUrl}/admin/chain`,
      });
      assert.equal(backup.code, 0, said(backup));
      const key = backup.outputs.key as string;
      // The same tree (same objects) under another name, its recorded block hash not the chain's.
      const m = JSON.parse(await s3.getText(bucket, `${key}/manifest.json`)) as {
        key: string;
        entry: string;
        facts: { blockHash: string };
      };
      const forged = key.replace(/_(\d{4})\.tree$/, '_0000.tree');
      assert.notEqual(forged, key);
      await put(
        `${forged}/manifest.json`,
        JSON.stringify({
          ...m,
          key: forged,
          entry: forged.replace(/^[^/]+\//, ''),
          facts: { ...m.facts, blockHash: 'ab'.repeat(32) },
        }),
      );
      const { restore } = await freshNode('forged');
      const r = await run(restore(forged, '60s'));
      assert.notEqual(r.code, 0, said(r));
      assert.match(
        annotated(r, 'error'),
        new RegExp(`the snapshot recorded ${'ab'.repeat(32)}: it is not the chain of the snapshot`),
      );
    });

    it('restores a tree published in their form (no manifest of ours), saying what could not be checked', async () => {
      const { pointer, files } = await publishTheirs('icon2/ok');
      assert.ok(files.includes('node_settings.json'), 'a node-level file in their index');
      assert.ok(
        files.some((f) => new RegExp(`^${g.cid}/db/${g.nid}/\\d+\\.ldb$`).test(f)),
        'table files',
      );
      const { node, rpcUrl, restore } = await freshNode('theirs');
      const r = await run(restore(pointer, '120s'));
      assert.equal(r.code, 0, said(r));
      assert.match(
        annotated(r, 'warning'),
        /tree in icon2-node's form, with no manifest of ours: only each file's size and the hash of its last 10 KiB can be checked/,
      );
      const chainFiles = files.filter((f) => f.startsWith(`${g.cid}/`));
      assert.match(said(r), new RegExp(`Restoring the chain folder ${g.cid}; 1 other files`));
      assert.match(said(r), new RegExp(`${chainFiles.length} files fetched`));
      assert.ok(!existsSync(join(node, 'node_settings.json')), 'the node-level file is left out');
      // goloop runs on it: the copy's block at the copy's height, and blocks after it.
      assert.equal(await blockHash(rpcUrl, g.channel, copyHeight), copyHash);
      const now = await waitForHeight(rpcUrl, `0x${g.cid}`, copyHeight);
      await waitForHeight(rpcUrl, `0x${g.cid}`, now + 3, 60_000);
    });

    it('refuses a tree in their form with a damaged file, naming it, and leaves the node dir as it was', async () => {
      const prefix = 'icon2/damaged';
      const { pointer, files } = await publishTheirs(prefix);
      // A table file's last byte changed in the bucket, its size kept: only the tail hash sees it.
      const victim = files
        .filter((f) => /\.ldb$/.test(f))
        .sort()
        .at(-1) as string;
      assert.ok(victim, 'a table file to damage');
      const bytes = readFileSync(join(copy, victim));
      bytes[bytes.length - 1]! ^= 0xff;
      await put(`${prefix}/data/${victim}`, bytes);

      const { node, rpcUrl, restore } = await freshNode('damaged');
      // What the host has now: a chain folder of its own, which must stay as it is.
      const mine = join(node, g.cid, 'config.json');
      mkdirSync(join(node, g.cid), { recursive: true });
      writeFileSync(mine, '{"the node dir": "as it was"}\n');
      const beside = join(root, 'damaged');
      assert.deepEqual(readdirSync(beside), ['data']);
      // Main, then post, as a job runs them.
      const { main: r, post } = await runMainThenPost({
        inputs: inputs(restore(pointer, '60s')),
        env: s3Env(s3),
        timeoutMs: 300_000,
        main: { script: bundles().main },
        post: { script: bundles().post },
      });
      assert.notEqual(r.code, 0, said(r));
      assert.equal(post.code, 0, said(post));
      const error = annotated(r, 'error');
      assert.match(
        error,
        new RegExp(
          `${victim.replace(/[.]/g, '\\.')}: its checksum \\(xxh3 of the tail\\) is [0-9a-f]{16}, not [0-9a-f]{16}`,
        ),
      );
      assert.match(error, /The data dir was not touched/);
      // Nothing in it could be proven for a later run: the staging folder is gone, and nothing
      // was moved beside the node dir.
      assert.doesNotMatch(said(r), /staging folder .* is kept/);
      assert.deepEqual(readdirSync(beside), ['data']);
      assert.deepEqual(readdirSync(node), [g.cid]);
      assert.deepEqual(readdirSync(join(node, g.cid)), ['config.json']);
      assert.equal(readFileSync(mine, 'utf8'), '{"the node dir": "as it was"}\n');
      assert.equal(await chainInfo(rpcUrl, `0x${g.cid}`), undefined, 'no node was started');
    });
  },
);
