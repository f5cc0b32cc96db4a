// Child-process helpers shared by the bed: spawn a server, keep its log, stop it by PID.
import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { rmSync } from 'node:fs';

const live = new Set<ChildProcess>();
const groups = new WeakSet<ChildProcess>();
const tempDirs = new Set<string>();
let exitHookInstalled = false;

/** Remove dir at process exit unless it was released (use for server temp dirs). */
export function removeAtExit(dir: string): () => void {
  installExitHook();
  tempDirs.add(dir);
  return () => tempDirs.delete(dir);
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Last resort: never leave a server behind if a test forgets stop().
  process.on('exit', () => {
    for (const c of live) {
      if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) {
        try {
          process.kill(groups.has(c) ? -c.pid : c.pid, 'SIGKILL');
        } catch {
          /* already gone */
        }
      }
    }
    for (const d of tempDirs) {
      try {
        rmSync(d, { recursive: true, force: true });
      } catch {
        /* best effort */
      }
    }
  });
}

export interface Server {
  child: ChildProcess;
  /** stdout+stderr of the child so far. */
  log(): string;
  /** Resolves when the child has exited. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM, then SIGKILL after graceMs; resolves when the child is gone. */
  kill(graceMs?: number): Promise<void>;
}

/**
 * Spawn a long-running server. With group: true it gets its own process group and
 * kill() signals the whole group (e.g. sshd and its per-connection children).
 * The child does not keep the test process alive; an exit hook SIGKILLs it if stop() was forgotten.
 */
export function spawnServer(
  cmd: string,
  args: string[],
  opts: SpawnOptions & { group?: boolean } = {},
): Server {
  installExitHook();
  const { group = false, ...spawnOpts } = opts;
  const child = spawn(cmd, args, {
    ...spawnOpts,
    detached: group,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  live.add(child);
  if (group) groups.add(child);
  child.unref();
  (child.stdout as unknown as { unref?: () => void } | null)?.unref?.();
  (child.stderr as unknown as { unref?: () => void } | null)?.unref?.();
  const target = (): number => (group ? -(child.pid as number) : (child.pid as number));
  let text = '';
  const append = (b: Buffer): void => {
    text += b.toString('utf8');
    if (text.length > 1_000_000) text = text.slice(-500_000);
  };
  child.stdout?.on('data', append);
  child.stderr?.on('data', append);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) => {
    child.once('error', (err) => {
      text += `\n[spawn error] ${String(err)}\n`;
      live.delete(child);
      res({ code: -1, signal: null });
    });
    child.once('exit', (code, signal) => {
      live.delete(child);
      res({ code, signal });
    });
  });
  const kill = async (graceMs = 3000): Promise<void> => {
    if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) {
      await exited;
      return;
    }
    try {
      process.kill(target(), 'SIGTERM');
    } catch {
      /* gone */
    }
    const t = setTimeout(() => {
      if (child.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(target(), 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }, graceMs);
    await exited;
    if (group) {
      // The leader is gone; make sure nothing of its group outlives it.
      try {
        process.kill(target(), 'SIGKILL');
      } catch {
        /* group empty */
      }
    }
    clearTimeout(t);
  };
  return { child, log: () => text, exited, kill };
}

/** Run a command to completion; reject with its output if it fails. */
export function run(
  cmd: string,
  args: string[],
  opts: SpawnOptions & { input?: string } = {},
): Promise<{ stdout: string; stderr: string }> {
  return new Promise((res, rej) => {
    const child = spawn(cmd, args, { ...opts, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (b: Buffer) => (stdout += b.toString('utf8')));
    child.stderr?.on('data', (b: Buffer) => (stderr += b.toString('utf8')));
    child.once('error', rej);
    child.once('close', (code, signal) => {
      if (code === 0) res({ stdout, stderr });
      else
        rej(
          new Error(
            `${cmd} ${args.join(' ')} failed (code ${code}, signal ${signal}):\n${stderr}${stdout}`,
          ),
        );
    });
    // A child that exits without reading its stdin must not turn into an uncaught EPIPE.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(opts.input ?? '');
  });
}
