/**
 * Helpers for the restore, compat and list/verify end-to-end tests: a target host directory
 * for a restore, the restore inputs against it, and a fingerprint of a directory tree.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { freePort } from '../bed/ports.js';
import type { RunActionOptions, RunMainThenPostOptions } from '../bed/runner.js';
import { bundles, SIM, TSX, type World } from './world.js';

const exec = promisify(execFile);
const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

export interface Target {
  home: string;
  dataDir: string;
  port: number;
  startCommand: string;
  stopCommand: string;
  peerUrl: string;
  /** Matches the simulator's daemon of this home (and nothing else). */
  pattern: string;
  status(): Promise<{ running: boolean; height?: number }>;
  stop(): Promise<void>;
}

/** A node home for a restore; it may not exist yet (a fresh host). */
export async function target(home: string, port?: number): Promise<Target> {
  const p = port ?? (await freePort());
  const base = `${q(TSX)} ${q(SIM)}`;
  return {
    home,
    dataDir: join(home, 'data/loopchain'),
    port: p,
    startCommand: `${base} start --home ${q(home)} --port ${p} --rate 20 --value-bytes 4096`,
    stopCommand: `${base} stop --home ${q(home)}`,
    peerUrl: `http://127.0.0.1:${p}/api/v1/avail/peer`,
    pattern: `prep-node\\.ts daemon --home ${home.replace(/[.[\]()*+?^$|\\{}]/g, '\\$&')}( |$)`,
    async status() {
      if (!existsSync(home)) return { running: false };
      return JSON.parse((await exec(TSX, [SIM, 'status', '--home', home])).stdout) as {
        running: boolean;
        height?: number;
      };
    },
    async stop() {
      if (existsSync(home))
        await exec(TSX, [SIM, 'stop', '--home', home, '--mode', 'graceful']).catch(() => undefined);
    },
  };
}

/** The inputs of a restore onto `t`. */
export function restoreInputs(
  world: World,
  t: Target,
  extra: Record<string, string> = {},
): Record<string, string> {
  return world.inputs({
    mode: 'restore',
    'prep-dir': t.home,
    'stop-command': t.stopCommand,
    'start-command': t.startCommand,
    'peer-url': t.peerUrl,
    'node-process-pattern': t.pattern,
    'health-timeout': '90s',
    'disk-margin': '1MiB',
    ...extra,
  });
}

/** The bundles to run (see `bundles`). */
export const scripts = bundles;

/** The main step alone, with these inputs. */
export function runMain(
  world: World,
  inputs: Record<string, string>,
  opts: Partial<RunActionOptions> = {},
) {
  return world.main(undefined, { inputs, script: scripts().main, ...opts });
}

/** Main then post, with these inputs. */
export function runBoth(
  world: World,
  inputs: Record<string, string>,
  opts: Partial<RunMainThenPostOptions> = {},
) {
  const s = scripts();
  return world.mainThenPost(undefined, {
    inputs,
    ...opts,
    main: { script: s.main, ...opts.main },
    post: { script: s.post, ...opts.post },
  } as Partial<RunActionOptions>);
}

export function restoreRun(
  world: World,
  t: Target,
  extra: Record<string, string> = {},
  opts: Partial<RunMainThenPostOptions> = {},
) {
  return runBoth(world, restoreInputs(world, t, extra), opts);
}

/** `check --data DIR` of the simulator: the whole chain and every entry. */
export async function check(
  dir: string,
): Promise<{ ok: boolean; height: number; block_dir: string }> {
  const { stdout } = await exec(TSX, [SIM, 'check', '--data', dir], { maxBuffer: 1 << 26 });
  return JSON.parse(stdout) as { ok: boolean; height: number; block_dir: string };
}

/** A hash of every path under `dir`: type, size, mtime and content. */
export function treeHash(dir: string): string {
  const h = createHash('sha256');
  const walk = (rel: string): void => {
    const names = readdirSync(join(dir, rel)).sort();
    for (const n of names) {
      const r = rel ? `${rel}/${n}` : n;
      const st = lstatSync(join(dir, r));
      if (st.isDirectory()) {
        h.update(`d ${r}\n`);
        walk(r);
      } else {
        h.update(`f ${r} ${st.size} ${st.mtimeMs}\n`);
        if (st.isFile()) h.update(readFileSync(join(dir, r)));
      }
    }
  };
  walk('');
  return h.digest('hex');
}

/** Staging folders of a restore left in `parent`. */
export function stagingLeft(parent: string): string[] {
  return existsSync(parent)
    ? readdirSync(parent).filter((n) => n.startsWith('.prep-snapshot-restore-'))
    : [];
}

export async function getBytes(world: World, key: string): Promise<Buffer> {
  const res = await world.s3
    .client()
    .send(new GetObjectCommand({ Bucket: world.bucket, Key: key }));
  return Buffer.from(await res.Body!.transformToByteArray());
}

export async function putBytes(
  world: World,
  key: string,
  body: Buffer | string,
  bucket = world.bucket,
): Promise<void> {
  await world.s3.client().send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body }));
}

/** All of a run's text, for failure messages. */
export function said(run: { stdout: string; stderr: string }): string {
  return run.stdout + run.stderr;
}

/** The ::error:: annotations of a run, joined. */
export function errors(run: { annotations: Array<{ level: string; message: string }> }): string {
  return run.annotations
    .filter((a) => a.level === 'error')
    .map((a) => a.message)
    .join('\n');
}
