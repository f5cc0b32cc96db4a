/**
 * What every part of `npm run bench` measures and prints with: options, logging, `du` sampling of
 * the host's disk, scripts whose `MARK`/`VALUE` lines are read, the packaged action under
 * `/usr/bin/time -v` (its peak RSS), S3 listing times and JSON objects, and the report's table
 * and formats.
 */
import { execFile, spawn } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statfsSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { s3Env, type S3Server } from '../bed/minio.js';
import { cacheDir, node24Bin, repoRoot } from '../bed/paths.js';
import { runAction, type RunResult } from '../bed/runner.js';
import type { Sshd } from '../bed/sshd.js';

export const exec = promisify(execFile);
/** Single-quotes `s` for bash. */
export const q = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
export const MiB = 1024 ** 2;
export const GiB = 1024 ** 3;

export function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

// ---- options -------------------------------------------------------------------------------

/** `--name value`, `--name=value`, a bare `--name` ('true'), or else the environment's `env`. */
export function option(name: string, env: string): string | undefined {
  const argv = process.argv.slice(2);
  const i = argv.findIndex((a) => a === `--${name}` || a.startsWith(`--${name}=`));
  if (i >= 0) {
    const a = argv[i] as string;
    if (a.includes('=')) return a.slice(a.indexOf('=') + 1);
    const next = argv[i + 1];
    return next === undefined || next.startsWith('--') ? 'true' : next;
  }
  return process.env[env];
}

export const flag = (name: string, env: string): boolean =>
  /^(1|true|yes)$/i.test(option(name, env) ?? '');

// ---- logging -------------------------------------------------------------------------------

/** A log to stderr, `[bench HH:MM:SS] {scope: }msg`. */
export function logger(scope?: string): (msg: string) => void {
  const head = scope ? `${scope}: ` : '';
  return (msg) =>
    process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${head}${msg}\n`);
}

export const log = logger();

export const secondsSince = (t: number): string => ((Date.now() - t) / 1000).toFixed(1);

// ---- the host's disk -----------------------------------------------------------------------

/** `du -sB1 path`, NaN when it gives no total. */
export async function du(path: string): Promise<number> {
  try {
    const { stdout } = await exec('du', ['-sB1', path], { maxBuffer: 1 << 20 });
    return Number(stdout.split(/\s/)[0]);
  } catch (error) {
    // du exits 1 when a file vanished while it walked (the node compacts); its total still stands.
    const out = (error as { stdout?: string }).stdout ?? '';
    const n = Number(out.split(/\s/)[0]);
    return Number.isFinite(n) && out ? n : NaN;
  }
}

function freeBytes(path: string): number {
  const s = statfsSync(path);
  return s.bavail * s.bsize;
}

export interface DiskUse {
  baselineDu: number;
  peakDu: number;
  extraDu: number;
  /** The last sample, taken by stop(): with the peak, what went away before the end. */
  lastDu: number;
  /** Largest drop of the filesystem's free space, less MinIO's growth (0 without minioDir). */
  maxDfDrop: number;
  samples: number;
}

/**
 * Samples disk use of `dir` (du) every 200 ms; with `minioDir`, also the free space of its
 * filesystem (statfs), less what MinIO's data dir grew by.
 */
export class DiskSampler {
  private timer: NodeJS.Timeout | undefined;
  private busy = false;
  private baseDu = 0;
  private baseFree = 0;
  private baseMinio = 0;
  peakDu = 0;
  lastDu = 0;
  maxDfDrop = 0;
  samples = 0;

  constructor(
    private readonly dir: string,
    private readonly minioDir?: string,
  ) {}

  async start(): Promise<void> {
    this.baseDu = (await du(this.dir)) || 0;
    if (this.minioDir !== undefined) {
      this.baseMinio = (await du(this.minioDir)) || 0;
      this.baseFree = freeBytes(this.dir);
    }
    this.peakDu = this.lastDu = this.baseDu;
    this.timer = setInterval(() => void this.sample(), 200);
  }

  private async sample(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      const minioDir = this.minioDir;
      if (minioDir === undefined) {
        const d = await du(this.dir);
        if (Number.isFinite(d)) this.peakDu = Math.max(this.peakDu, (this.lastDu = d));
      } else {
        const [d, m] = await Promise.all([du(this.dir), du(minioDir)]);
        const free = freeBytes(this.dir);
        if (Number.isFinite(d)) this.peakDu = Math.max(this.peakDu, (this.lastDu = d));
        if (Number.isFinite(m))
          this.maxDfDrop = Math.max(this.maxDfDrop, this.baseFree - free - (m - this.baseMinio));
      }
      this.samples++;
    } finally {
      this.busy = false;
    }
  }

  async stop(): Promise<DiskUse> {
    if (this.timer) clearInterval(this.timer);
    while (this.busy) await sleep(20);
    await this.sample();
    return {
      baselineDu: this.baseDu,
      peakDu: this.peakDu,
      extraDu: this.peakDu - this.baseDu,
      lastDu: this.lastDu,
      maxDfDrop: this.maxDfDrop,
      samples: this.samples,
    };
  }
}

// ---- scripts -------------------------------------------------------------------------------

export interface ScriptResult {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
  /** `MARK name ms` lines of its stdout. */
  marks: Record<string, number>;
  /** `VALUE name text` lines of its stdout. */
  values: Record<string, string>;
}

/** Writes `script` to `file` and runs `command ...args`; its marks and values are collected. */
export function runScript(
  file: string,
  script: string,
  command: string,
  args: string[],
): Promise<ScriptResult> {
  writeFileSync(file, script);
  return new Promise((resolve, reject) => {
    const t = Date.now();
    const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
    child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
    child.on('error', reject);
    child.on('close', (code) => {
      const marks: Record<string, number> = {};
      const values: Record<string, string> = {};
      for (const line of stdout.split('\n')) {
        const m = /^MARK (\S+) (\d+)$/.exec(line);
        if (m) marks[m[1] as string] = Number(m[2]);
        const v = /^VALUE (\S+) (.*)$/.exec(line);
        if (v) values[v[1] as string] = v[2] as string;
      }
      resolve({ code, stdout, stderr, ms: Date.now() - t, marks, values });
    });
  });
}

/** Runs a bash script from `file` on this machine. */
export const bashScript = (file: string, script: string): Promise<ScriptResult> =>
  runScript(file, script, 'bash', [file]);

/** Seconds from the mark `origin` to each mark. */
export function phases(marks: Record<string, number>, origin: string): Record<string, number> {
  return Object.fromEntries(
    Object.entries(marks).map(([k, v]) => [k, (v - (marks[origin] ?? v)) / 1000]),
  );
}

/** Lines for a bash script: MinIO's credentials exported, and `s3` (seed-s3.ts) defined. */
export function s3Shell(s3: S3Server): string {
  const e = { ...s3Env(s3), BENCH_S3_ENDPOINT: s3.endpoint };
  return [
    ...Object.entries(e).map(([k, v]) => `export ${k}=${q(v)}`),
    `s3() { ( cd ${q(repoRoot)} && ${q(node24Bin())} --import tsx test/bench/seed-s3.ts "$@" ); }`,
  ].join('\n');
}

// ---- S3 ------------------------------------------------------------------------------------

export interface Listed {
  key: string;
  size: number;
  modifiedMs: number;
}

/** Every object under `prefix`, by key; LastModified has ms precision in MinIO. */
export async function listObjects(s3: S3Server, bucket: string, prefix: string): Promise<Listed[]> {
  const client = s3.client();
  try {
    const out: Listed[] = [];
    let token: string | undefined;
    do {
      const r = await client.send(
        new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }),
      );
      for (const o of r.Contents ?? [])
        if (o.Key)
          out.push({ key: o.Key, size: o.Size ?? 0, modifiedMs: o.LastModified?.getTime() ?? NaN });
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return out.sort((a, b) => a.key.localeCompare(b.key));
  } finally {
    client.destroy();
  }
}

/** LastModified (ms) of the object `key`, when there is one. */
export async function modifiedMs(
  s3: S3Server,
  bucket: string,
  key: string,
): Promise<number | undefined> {
  return (await listObjects(s3, bucket, key)).find((o) => o.key === key)?.modifiedMs;
}

/** The object `key`, parsed as JSON (a tree's manifest). */
export async function readJson<T>(s3: S3Server, bucket: string, key: string): Promise<T> {
  const client = s3.client();
  try {
    const r = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    return JSON.parse((await r.Body?.transformToString()) ?? '') as T;
  } finally {
    client.destroy();
  }
}

// ---- the packaged action -------------------------------------------------------------------

/** Where the action runs: the bed's sshd and MinIO, a work dir, and the `/usr/bin/time` wrapper. */
export interface ActionBed {
  root: string;
  sshd: Sshd;
  s3: S3Server;
  bucket: string;
  /** The `/usr/bin/time -v` wrapper around Node 24 (timeWrapper()), when /usr/bin/time exists. */
  timeWrapper?: string;
}

/**
 * Writes `{root}/node24-timed.sh`, Node 24 under `/usr/bin/time -v` (its report to
 * $BENCH_TIME_OUT), with BENCH_NODE_ARGS; undefined when /usr/bin/time is missing.
 */
export function timeWrapper(root: string): string | undefined {
  if (!existsSync('/usr/bin/time')) {
    log('/usr/bin/time is missing: no runner peak RSS');
    return undefined;
  }
  const nodeArgs = process.env.BENCH_NODE_ARGS ?? '';
  const file = join(root, 'node24-timed.sh');
  writeFileSync(
    file,
    `#!/bin/bash\n# bash, not sh: dash drops INPUT_SSH-KEY and the other hyphenated names from the environment.\nexec /usr/bin/time -v -o "$BENCH_TIME_OUT" ${q(node24Bin())} ${nodeArgs} "$@"\n`,
  );
  chmodSync(file, 0o755);
  return file;
}

/** Maximum resident set size from a `/usr/bin/time -v` report, in bytes. */
export function rssFrom(file: string): number | undefined {
  if (!existsSync(file)) return undefined;
  const m = /Maximum resident set size \(kbytes\): (\d+)/.exec(readFileSync(file, 'utf8'));
  return m ? Number(m[1]) * 1024 : undefined;
}

/**
 * Runs the action's main step under the time wrapper with the bed's SSH and S3 inputs and
 * `inputs`; its output is kept in `{root}/{name}.stdout.txt`, its peak RSS returned.
 */
export async function runTimed(
  bed: ActionBed,
  name: string,
  inputs: Record<string, string>,
  script?: string,
): Promise<{ r: RunResult; rss?: number }> {
  const timeOut = join(bed.root, `${name}.time.txt`);
  const r = await runAction({
    step: 'main',
    inputs: {
      ...bed.sshd.actionInputs(),
      bucket: bed.bucket,
      endpoint: bed.s3.endpoint,
      ...inputs,
    },
    env: { ...s3Env(bed.s3), BENCH_TIME_OUT: timeOut },
    timeoutMs: 60 * 60_000,
    ...(script === undefined ? {} : { script }),
    node: bed.timeWrapper,
    echo: process.env.BENCH_ECHO === '1',
  });
  writeFileSync(join(bed.root, `${name}.stdout.txt`), r.stdout + '\n--- stderr\n' + r.stderr);
  return { r, rss: rssFrom(timeOut) };
}

/** Throws with the action's error annotations (or its stderr's end) when it failed. */
export function assertActionOk(r: RunResult): void {
  if (r.code === 0) return;
  const err = r.annotations
    .filter((a) => a.level === 'error')
    .map((a) => a.message)
    .join('; ');
  throw new Error(
    `the action failed (${r.code}${r.timedOut ? ', timed out' : ''}): ${err || r.stderr.slice(-2000)}`,
  );
}

export function summaryRow(summary: string, name: string): string | undefined {
  return new RegExp(`<td>${name}</td>\\s*<td>([^<]*)</td>`).exec(summary)?.[1];
}

/** Seconds from the summary's `12.3 s`, `4 min 5 s` or `1 h 2 min`. */
export function parseDurationText(text: string | undefined): number | undefined {
  if (!text) return undefined;
  const t = text.trim();
  let m = /^([\d.]+) s$/.exec(t);
  if (m) return Number(m[1]);
  m = /^(\d+) min (\d+) s$/.exec(t);
  if (m) return Number(m[1]) * 60 + Number(m[2]);
  m = /^(\d+) h (\d+) min$/.exec(t);
  if (m) return Number(m[1]) * 3600 + Number(m[2]) * 60;
  return undefined;
}

// ---- report --------------------------------------------------------------------------------

export const fmtS = (s?: number): string =>
  s === undefined || !Number.isFinite(s) ? '-' : s < 10 ? s.toFixed(2) + ' s' : s.toFixed(1) + ' s';

export const fmtB = (b?: number): string =>
  b === undefined || !Number.isFinite(b)
    ? '-'
    : Math.abs(b) >= GiB
      ? (b / GiB).toFixed(2) + ' GiB'
      : (b / MiB).toFixed(1) + ' MiB';

export const ratio = (a?: number, b?: number): string =>
  a === undefined || b === undefined || !Number.isFinite(a) || !Number.isFinite(b) || b === 0
    ? '-'
    : (a / b).toFixed(3) + 'x';

export const verdict = (ok: boolean | undefined): string =>
  ok === undefined ? '?' : ok ? 'met' : 'NOT met';

/** A Markdown table; the first row is the header. */
export function table(rows: string[][]): string {
  const widths = (rows[0] ?? []).map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]): string =>
    '| ' + r.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ') + ' |';
  return [
    line(rows[0] ?? []),
    '|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|',
    ...rows.slice(1).map(line),
  ].join('\n');
}

/** `list` begun `by` places further on, the ones before it moved to the end. */
export function rotated<T>(list: readonly T[], by: number): T[] {
  const n = list.length === 0 ? 0 : by % list.length;
  return [...list.slice(n), ...list.slice(0, n)];
}

/** The run with the median wall time (a failed run wins: it must be seen), with every run's time. */
export function medianRun<T extends { ok: boolean; wallSeconds: number }>(
  runs: T[],
): T & { runs: number[] } {
  const every = runs.map((r) => r.wallSeconds);
  const failed = runs.find((r) => !r.ok);
  const sorted = [...runs].sort((a, b) => a.wallSeconds - b.wallSeconds);
  const pick = failed ?? sorted[Math.floor((sorted.length - 1) / 2)];
  if (!pick) throw new Error('medianRun of no runs');
  return { ...pick, runs: every };
}

// ---- caches --------------------------------------------------------------------------------

/**
 * `home`, made once: `build` fills `{home}.partial`, which is then marked complete
 * (`.bench-complete`) and renamed to `home`; a complete `home` is reused as it is.
 */
export async function cachedOnce(
  home: string,
  say: {
    log: (msg: string) => void;
    /** "reusing the 2 GiB database" */
    reusing: string;
    /** "generating a 2 GiB database in {partial} (once)" */
    making: (partial: string) => string;
    /** "generated" */
    made: string;
  },
  build: (partial: string) => Promise<void>,
): Promise<string> {
  if (existsSync(join(home, '.bench-complete'))) {
    say.log(`${say.reusing} in ${home}`);
    return home;
  }
  const partial = `${home}.partial`;
  rmSync(partial, { recursive: true, force: true });
  mkdirSync(cacheDir(), { recursive: true });
  say.log(say.making(partial));
  const t = Date.now();
  await build(partial);
  writeFileSync(join(partial, '.bench-complete'), `${new Date().toISOString()}\n`);
  rmSync(home, { recursive: true, force: true });
  renameSync(partial, home);
  say.log(`${say.made} in ${secondsSince(t)} s`);
  return home;
}
