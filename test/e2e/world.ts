/**
 * A world for end-to-end tests: a real sshd, a real MinIO with a bucket, and a simulated
 * P-Rep node with real LevelDB databases, all on loopback. The action is run from dist/
 * under Node 24, as GitHub's runner runs it.
 */
import { execFile } from 'node:child_process';
import {
  existsSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startMinio, s3Env, type S3Server } from '../bed/minio.js';
import { repoRoot } from '../bed/paths.js';
import { freePort } from '../bed/ports.js';
import {
  runAction,
  runMainThenPost,
  type RunActionOptions,
  type RunMainThenPostOptions,
} from '../bed/runner.js';
import { startSshd, type Sshd } from '../bed/sshd.js';
import { parseEvents, type NodeEvent } from '../sim/chain.js';

const exec = promisify(execFile);

export const TSX = join(repoRoot, 'node_modules/.bin/tsx');
export const SIM = join(repoRoot, 'test/sim/prep-node.ts');

export interface SimNode {
  home: string;
  dataDir: string;
  ip: string;
  port: number;
  startCommand: string;
  stopCommand: string;
  peerUrl: string;
  sim(...args: string[]): Promise<string>;
  status(): Promise<{ running: boolean; height?: number }>;
  events(): NodeEvent[];
  setStopMode(mode: 'graceful' | 'kill-mid-compaction'): void;
  stop(): Promise<void>;
}

/** Dates every table file (`*.ldb`, `*.sst`) under `dir` `seconds` from now. */
function datedTables(dir: string, seconds: number): void {
  const when = new Date(Date.now() + seconds * 1000);
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile() && /\.(ldb|sst)$/.test(e.name))
      utimesSync(join(e.parentPath, e.name), when, when);
  }
}

/** Creates and starts a node in `root`. */
export async function startNode(
  root: string,
  opts: {
    ip?: string;
    blocks?: number;
    valueBytes?: number;
    rate?: number;
    name?: string;
    /**
     * The table files that init wrote: 'settled' (the default) dates them a minute back, as on
     * a node that has run a while, so an archive's backup sends them ahead of the stop; 'fresh'
     * dates them an hour on, as tables still being written, so that it sends none ahead.
     */
    tables?: 'settled' | 'fresh';
  } = {},
): Promise<SimNode> {
  const home = join(root, opts.name ?? 'prep');
  const ip = opts.ip ?? '10.11.12.13';
  const port = await freePort();
  const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
  const base = `${q(TSX)} ${q(SIM)}`;
  const sim = async (...args: string[]) =>
    (await exec(TSX, [SIM, ...args], { maxBuffer: 1 << 26 })).stdout;
  await sim(
    'init',
    '--home',
    home,
    '--ip',
    ip,
    '--blocks',
    String(opts.blocks ?? 400),
    '--value-bytes',
    String(opts.valueBytes ?? 4096),
  );
  datedTables(join(home, 'data/loopchain'), opts.tables === 'fresh' ? 3600 : -60);
  const startArgs = `--port ${port} --rate ${opts.rate ?? 20} --value-bytes ${opts.valueBytes ?? 4096}`;
  const node: SimNode = {
    home,
    dataDir: join(home, 'data/loopchain'),
    ip,
    port,
    startCommand: `${base} start --home ${q(home)} ${startArgs}`,
    stopCommand: `${base} stop --home ${q(home)}`,
    peerUrl: `http://127.0.0.1:${port}/api/v1/avail/peer`,
    sim,
    async status() {
      return JSON.parse(await sim('status', '--home', home)) as {
        running: boolean;
        height?: number;
      };
    },
    events() {
      const file = join(home, 'node-events.log');
      return existsSync(file) ? parseEvents(readFileSync(file, 'utf8')) : [];
    },
    setStopMode(mode) {
      writeFileSync(join(home, 'stop-mode'), mode);
    },
    async stop() {
      await sim('stop', '--home', home, '--mode', 'graceful').catch(() => undefined);
    },
  };
  await sim('start', '--home', home, ...startArgs.split(' '));
  return node;
}

/**
 * The bundles to run: dist/ by default; PREP_TEST_DIST names a private copy of dist/ (built
 * with `node scripts/package.mjs --out DIR`), so that a rebuild of dist/ meanwhile does not
 * change what a running test runs.
 */
export function bundles(): { main?: string; post?: string } {
  const d = process.env.PREP_TEST_DIST;
  return d ? { main: join(d, 'main/index.js'), post: join(d, 'post/index.js') } : {};
}

export interface World {
  root: string;
  sshd: Sshd;
  s3: S3Server;
  bucket: string;
  node: SimNode;
  /** The inputs of a backup against this world; `extra` overrides. */
  inputs(extra?: Record<string, string>): Record<string, string>;
  env(): Record<string, string>;
  main(
    extra?: Record<string, string>,
    opts?: Partial<RunActionOptions>,
  ): ReturnType<typeof runAction>;
  mainThenPost(
    extra?: Record<string, string>,
    opts?: Partial<RunActionOptions>,
  ): ReturnType<typeof runMainThenPost>;
  keys(prefix?: string): Promise<string[]>;
  backupList(prefix?: string): Promise<string[]>;
  close(): Promise<void>;
}

export async function startWorld(opts: Parameters<typeof startNode>[1] = {}): Promise<World> {
  const root = mkdtempSync(join(tmpdir(), 'prep-e2e-'));
  const [sshd, s3] = await Promise.all([startSshd(), startMinio()]);
  const bucket = 'snapshots';
  await s3.createBucket(bucket);
  const node = await startNode(root, opts);
  const world: World = {
    root,
    sshd,
    s3,
    bucket,
    node,
    inputs(extra = {}) {
      return {
        mode: 'backup',
        ...sshd.actionInputs(),
        'prep-dir': node.home,
        'stop-command': node.stopCommand,
        'start-command': node.startCommand,
        'peer-url': node.peerUrl,
        bucket,
        endpoint: s3.endpoint,
        'max-downtime': '5m',
        ...extra,
      };
    },
    env() {
      return s3Env(s3);
    },
    main(extra, o = {}) {
      return runAction({
        step: 'main',
        inputs: world.inputs(extra),
        env: world.env(),
        timeoutMs: 300_000,
        script: bundles().main,
        ...o,
      });
    },
    mainThenPost(extra, o = {}) {
      const b = bundles();
      return runMainThenPost({
        inputs: world.inputs(extra),
        env: world.env(),
        timeoutMs: 300_000,
        ...o,
        main: { script: b.main, ...(o as Partial<RunMainThenPostOptions>).main },
        post: { script: b.post, ...(o as Partial<RunMainThenPostOptions>).post },
      } as Parameters<typeof runMainThenPost>[0]);
    },
    keys(prefix) {
      return s3.listKeys(bucket, prefix);
    },
    async backupList(prefix = 'PRep') {
      try {
        return (await s3.getText(bucket, `${prefix}/backup_list`)).split('\n').filter(Boolean);
      } catch {
        return [];
      }
    },
    async close() {
      await node.stop();
      await Promise.all([sshd.stop(), s3.stop()]);
      rmSync(root, { recursive: true, force: true });
    },
  };
  return world;
}

/** Extracts an archive with the original restore's command line and returns the folder. */
export async function extractLikeSeed(
  archive: string,
  into: string,
  compression: 'gzip' | 'zstd' = 'gzip',
): Promise<void> {
  await exec('tar', ['-I', compression === 'gzip' ? 'pigz' : 'zstd', '-xf', archive, '-C', into]);
}

export async function download(world: World, key: string, to: string): Promise<string> {
  const res = await world.s3
    .client()
    .send(
      new (await import('@aws-sdk/client-s3')).GetObjectCommand({ Bucket: world.bucket, Key: key }),
    );
  writeFileSync(to, Buffer.from(await res.Body!.transformToByteArray()));
  return to;
}

const tempDirs: string[] = [];
process.once('exit', () => {
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
});

/** A folder of this test file's own, removed when its process exits. */
export function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.push(dir);
  return dir;
}
