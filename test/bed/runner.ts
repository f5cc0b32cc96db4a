// Run the packaged action the way GitHub's runner does: node24 dist/{main,post}/index.js,
// INPUT_* env, file commands (GITHUB_OUTPUT, GITHUB_STATE, GITHUB_ENV, GITHUB_STEP_SUMMARY),
// STATE_* for the post step.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { node24Bin, repoRoot } from './paths.js';

export type Step = 'main' | 'post';

export interface RunActionOptions {
  step: Step;
  inputs: Record<string, string>;
  /** Extra env (after the bed's env: these win). */
  env?: Record<string, string>;
  /** Saved state for the post step, passed as STATE_<name>. */
  state?: Record<string, string>;
  /** SIGKILL (or killSignal) the process as soon as its stdout matches. */
  killWhen?: RegExp;
  /** Signal used for killWhen (default SIGKILL). GitHub cancellation sends SIGINT, then SIGTERM after ~7.5 s. */
  killSignal?: NodeJS.Signals;
  /** Kill (SIGKILL) after this many ms; result.timedOut is then true. Default 120 000. */
  timeoutMs?: number;
  /** Script to run instead of dist/<step>/index.js (relative to repo root, or absolute). */
  script?: string;
  /** Node binary (default: Node 24 from install.sh). */
  node?: string;
  /** Apply `default:` values of inputs declared in action.yml, as the runner does (default true). */
  actionDefaults?: boolean;
  /** Set RUNNER_DEBUG=1 (core.isDebug() true, ::debug:: lines shown). */
  debug?: boolean;
  /** Echo the child's stdout/stderr to this process's stderr as it runs, each line with its time since the start. */
  echo?: boolean;
  /** Working directory / GITHUB_WORKSPACE (default: a fresh temp dir). */
  cwd?: string;
}

export interface Annotation {
  level: 'error' | 'warning' | 'notice';
  message: string;
  properties: string;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** True when killWhen matched and the process was killed. */
  killed: boolean;
  timedOut: boolean;
  stdout: string;
  stderr: string;
  outputs: Record<string, string>;
  /** What the step saved with core.saveState (GITHUB_STATE). */
  state: Record<string, string>;
  /** What the step exported with core.exportVariable (GITHUB_ENV). */
  exportedEnv: Record<string, string>;
  /** GITHUB_STEP_SUMMARY content. */
  summary: string;
  /** ::error / ::warning / ::notice lines from stdout. */
  annotations: Annotation[];
  /** Values registered with ::add-mask::. */
  masks: string[];
  durationMs: number;
}

/** The runner's input variable name: INPUT_ + name with spaces to _, uppercased (hyphens kept). */
export function inputEnvName(name: string): string {
  return `INPUT_${name.replace(/ /g, '_').toUpperCase()}`;
}

/** Parse a file-command file (GITHUB_OUTPUT, GITHUB_STATE, GITHUB_ENV): `name<<DELIM\nvalue\nDELIM` and `name=value` lines. */
export function parseFileCommand(text: string): Record<string, string> {
  const out: Record<string, string> = {};
  const lines = text.split(/\r?\n/);
  let i = 0;
  while (i < lines.length) {
    const line = lines[i] ?? '';
    i++;
    if (line === '') continue;
    const heredoc = line.indexOf('<<');
    const eq = line.indexOf('=');
    if (heredoc > 0 && (eq < 0 || heredoc < eq)) {
      const name = line.slice(0, heredoc);
      const delim = line.slice(heredoc + 2);
      const value: string[] = [];
      let closed = false;
      while (i < lines.length) {
        const l = lines[i] ?? '';
        i++;
        if (l === delim) {
          closed = true;
          break;
        }
        value.push(l);
      }
      if (!closed) throw new Error(`file command: delimiter ${delim} for ${name} not closed`);
      out[name] = value.join('\n');
    } else if (eq > 0) {
      out[line.slice(0, eq)] = line.slice(eq + 1);
    } else {
      throw new Error(`file command: cannot parse line ${JSON.stringify(line)}`);
    }
  }
  return out;
}

function unquoteYaml(v: string): string {
  const t = v.trim();
  if (t.startsWith("'") && t.endsWith("'") && t.length >= 2)
    return t.slice(1, -1).replace(/''/g, "'");
  if (t.startsWith('"') && t.endsWith('"') && t.length >= 2) return JSON.parse(t) as string;
  return t.replace(/\s+#.*$/, '');
}

/**
 * `default:` values of the inputs in an action.yml (a small reader for the usual shape:
 * `inputs:` at top level, two-space indented names, `default:` scalars; block scalars with | or >).
 */
export function actionInputDefaults(
  actionYmlPath: string = join(repoRoot, 'action.yml'),
): Record<string, string> {
  if (!existsSync(actionYmlPath)) return {};
  const lines = readFileSync(actionYmlPath, 'utf8').split(/\r?\n/);
  const out: Record<string, string> = {};
  let inInputs = false;
  let current: string | undefined;
  let nameIndent = -1;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] ?? '';
    if (/^\S/.test(line)) {
      inInputs = /^inputs:\s*(#.*)?$/.test(line);
      current = undefined;
      continue;
    }
    if (!inInputs || line.trim() === '' || line.trim().startsWith('#')) continue;
    const indent = line.length - line.trimStart().length;
    const m = /^(\s*)([^\s:#][^:]*):(.*)$/.exec(line);
    if (!m) continue;
    if (nameIndent < 0) nameIndent = indent;
    if (indent === nameIndent) {
      current = unquoteYaml(m[2] ?? '');
      continue;
    }
    if (current !== undefined && indent > nameIndent && (m[2] ?? '').trim() === 'default') {
      const raw = (m[3] ?? '').trim();
      if (/^[|>][-+]?$/.test(raw)) {
        const block: string[] = [];
        let blockIndent = -1;
        while (i + 1 < lines.length) {
          const next = lines[i + 1] ?? '';
          const ni = next.length - next.trimStart().length;
          if (next.trim() !== '' && ni <= indent) break;
          if (blockIndent < 0 && next.trim() !== '') blockIndent = ni;
          block.push(next.slice(Math.max(0, blockIndent)));
          i++;
        }
        const text = (raw.startsWith('>') ? block.join(' ') : block.join('\n')).replace(/\s+$/, '');
        // Chomping: '-' strips the final newline; clip (and, approximately, keep '+') end with one.
        out[current] = raw.endsWith('-') ? text : text + '\n';
      } else {
        out[current] = unquoteYaml(raw);
      }
    }
  }
  return out;
}

const STRIP = /^(INPUT_|STATE_|GITHUB_|RUNNER_|ACTIONS_|AWS_)/;

function baseEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v === undefined || STRIP.test(k)) continue;
    if (k === 'NODE_OPTIONS' || k === 'NODE_TEST_CONTEXT' || k === 'TSX_TSCONFIG_PATH') continue;
    env[k] = v;
  }
  return env;
}

function parseAnnotations(stdout: string): { annotations: Annotation[]; masks: string[] } {
  const annotations: Annotation[] = [];
  const masks: string[] = [];
  for (const line of stdout.split(/\r?\n/)) {
    const m = /^::(error|warning|notice|add-mask)(?: ([^:]*))?::(.*)$/.exec(line);
    if (!m) continue;
    const unescape = (s: string): string =>
      s.replace(/%0D/g, '\r').replace(/%0A/g, '\n').replace(/%25/g, '%');
    if (m[1] === 'add-mask') masks.push(unescape(m[3] ?? ''));
    else
      annotations.push({
        level: m[1] as Annotation['level'],
        properties: m[2] ?? '',
        message: unescape(m[3] ?? ''),
      });
  }
  return { annotations, masks };
}

/** Run one step of the packaged action like GitHub's runner. */
export async function runAction(opts: RunActionOptions): Promise<RunResult> {
  const node = opts.node ?? node24Bin();
  if (!existsSync(node)) throw new Error(`${node} not found: run bash test/bed/install.sh`);
  const rel = opts.script ?? join('dist', opts.step, 'index.js');
  const script = rel.startsWith('/') ? rel : join(repoRoot, rel);
  if (!existsSync(script)) throw new Error(`${script} not found (npm run package builds dist/)`);

  const tmp = await mkdtemp(join(tmpdir(), `bed-run-${opts.step}-`));
  try {
    const files = {
      GITHUB_OUTPUT: join(tmp, 'output'),
      GITHUB_STATE: join(tmp, 'state'),
      GITHUB_ENV: join(tmp, 'env'),
      GITHUB_PATH: join(tmp, 'path'),
      GITHUB_STEP_SUMMARY: join(tmp, 'summary'),
    };
    for (const f of Object.values(files)) await writeFile(f, '');
    const runnerTemp = join(tmp, 'runner-temp');
    await mkdir(runnerTemp);
    const workspace = opts.cwd ?? join(tmp, 'workspace');
    await mkdir(workspace, { recursive: true });

    const env: Record<string, string> = {
      ...baseEnv(),
      CI: 'true',
      GITHUB_ACTIONS: 'true',
      GITHUB_WORKSPACE: workspace,
      GITHUB_REPOSITORY: 'bed/prep-snapshot-test',
      GITHUB_RUN_ID: '1',
      GITHUB_RUN_ATTEMPT: '1',
      GITHUB_JOB: 'bed',
      GITHUB_ACTION: 'prep-snapshot',
      GITHUB_EVENT_NAME: 'workflow_dispatch',
      GITHUB_SERVER_URL: 'https://github.com',
      GITHUB_ACTION_PATH: repoRoot,
      RUNNER_OS: 'Linux',
      RUNNER_ARCH: 'X64',
      RUNNER_NAME: 'bed',
      RUNNER_TEMP: runnerTemp,
      ...files,
    };
    if (opts.debug) env.RUNNER_DEBUG = '1';
    const inputs = {
      ...(opts.actionDefaults === false ? {} : actionInputDefaults()),
      ...opts.inputs,
    };
    for (const [k, v] of Object.entries(inputs)) env[inputEnvName(k)] = v;
    if (opts.step === 'post')
      for (const [k, v] of Object.entries(opts.state ?? {})) env[`STATE_${k}`] = v;
    Object.assign(env, opts.env ?? {});

    const started = Date.now();
    const child = spawn(node, [script], { cwd: workspace, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let killed = false;
    let timedOut = false;
    const kill = (sig: NodeJS.Signals): void => {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(child.pid, sig);
        } catch {
          /* gone */
        }
      }
    };
    const echo = opts.echo ? lineStamper(performance.now()) : undefined;
    child.stdout.on('data', (b: Buffer) => {
      const s = b.toString('utf8');
      stdout += s;
      echo?.(s);
      if (!killed && opts.killWhen && opts.killWhen.test(stdout)) {
        killed = true;
        kill(opts.killSignal ?? 'SIGKILL');
      }
    });
    child.stderr.on('data', (b: Buffer) => {
      const s = b.toString('utf8');
      stderr += s;
      echo?.(s);
    });
    const timer = setTimeout(() => {
      timedOut = true;
      kill('SIGKILL');
    }, opts.timeoutMs ?? 120_000);
    const { code, signal } = await new Promise<{
      code: number | null;
      signal: NodeJS.Signals | null;
    }>((res, rej) => {
      child.once('error', rej);
      child.once('close', (c, s) => res({ code: c, signal: s }));
    });
    clearTimeout(timer);

    const read = (p: string): Promise<string> => readFile(p, 'utf8');
    const { annotations, masks } = parseAnnotations(stdout);
    return {
      code,
      signal,
      killed,
      timedOut,
      stdout,
      stderr,
      outputs: parseFileCommand(await read(files.GITHUB_OUTPUT)),
      state: parseFileCommand(await read(files.GITHUB_STATE)),
      exportedEnv: parseFileCommand(await read(files.GITHUB_ENV)),
      summary: await read(files.GITHUB_STEP_SUMMARY),
      annotations,
      masks,
      durationMs: Date.now() - started,
    };
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

export interface RunMainThenPostOptions extends Omit<RunActionOptions, 'step' | 'state'> {
  /** Options only for the main step (e.g. killWhen). */
  main?: Partial<Omit<RunActionOptions, 'step' | 'inputs'>>;
  /** Options only for the post step. */
  post?: Partial<Omit<RunActionOptions, 'step' | 'inputs' | 'state'>>;
}

/**
 * Run main, then post like a job does: post always runs (post-if: always()), with the same
 * inputs, main's saved state as STATE_*, and main's exported env (GITHUB_ENV).
 */
export async function runMainThenPost(
  opts: RunMainThenPostOptions,
): Promise<{ main: RunResult; post: RunResult }> {
  const { main: mainOpts, post: postOpts, ...common } = opts;
  const main = await runAction({
    ...common,
    ...mainOpts,
    env: { ...common.env, ...mainOpts?.env },
    step: 'main',
  });
  const post = await runAction({
    ...common,
    ...postOpts,
    env: { ...main.exportedEnv, ...common.env, ...postOpts?.env },
    step: 'post',
    state: main.state,
  });
  return { main, post };
}

/** Writes text to stderr with `[+S.mmm s]` (time since `t0`) before each line. */
function lineStamper(t0: number): (text: string) => void {
  let atLineStart = true;
  return (text) => {
    const stamp = `[+${((performance.now() - t0) / 1000).toFixed(3)} s] `;
    let out = '';
    for (const part of text.split(/(?<=\n)/)) {
      if (atLineStart) out += stamp;
      out += part;
      atLineStart = part.endsWith('\n');
    }
    process.stderr.write(out);
  };
}
