/**
 * A node in memory behind the `NodeHost` seam, with the shell that `NodeControl` drives (the
 * watchdog, the stop and the start). Its data is a map of files; an archive is that map as
 * JSON, one line for each part (the tables sent ahead of the stop, then the rest; a later line's
 * file wins, as a later tar member does), so that a backup made of it restores into it. Every call is written to `calls`, so
 * that a test reads the order in which a mode did things. Faults are set on `faults`.
 */
import { PassThrough, Writable } from 'node:stream';
import type {
  ArchiveOptions,
  BackupLayout,
  KindFacts,
  NodeHost,
  PreparedStep,
  RestoreChecks,
  Settled,
  Sizes,
  StagingFolder,
} from '../../src/node-kind/host.js';
import type { Connect, NodeConnection, Shell } from '../../src/node-kind/index.js';
import { NODE_LOST } from '../../src/node-kind/watchdog.js';
import { AHEAD_CHANGED_CODE } from '../../src/node-kind/archive-remote.js';
import { readableSource } from '../../src/byte-source.js';
import { RemoteCommandError } from '../../src/errors.js';
import type { ExecResult, Prepared, RemoteStream } from '../../src/ssh/session.js';

export type Files = Record<string, string>;

export interface Faults {
  /** The freeze fails (as a filesystem without hard links does). */
  freeze?: boolean;
  /** The watchdog has fired by the time the run disarms it, or checks, or swaps. */
  watchdogFired?: boolean;
  /** The stop command fails. */
  stop?: boolean;
  /** After the restore, the node never reaches the snapshot's height. */
  unhealthy?: boolean;
  /** The node's API is silent (not in service). */
  silent?: boolean;
  /**
   * An archive's send ahead of the stop ends: the SSH connection lost ('lost'), or a table
   * written to while it was read ('changed').
   */
  ahead?: 'lost' | 'changed';
}

export class FakeNode implements NodeHost, Shell {
  readonly kind = 'loopchain' as const;
  readonly dataDir = '/app/prep/data/loopchain';
  readonly calls: string[] = [];
  faults: Faults = {};
  running = true;
  height_ = 1000;
  files: Files | undefined;
  previous: Files | undefined;
  /** Staging folders of restores on the host (what the restore's check finds). */
  stages: StagingFolder[] = [];
  /** Free bytes beside the data dir, as the restore's check finds them. */
  freeBytes = 1e12;
  /** Why the start command could not start the node, as the restore's check finds it. */
  cannotStart: string | undefined;
  private staged: Files | undefined;

  constructor(files?: Files) {
    this.files = files;
  }

  connect: Connect = (settings) => {
    const connection: NodeConnection = {
      host: this,
      shell: this,
      settings,
      transport: 'fake',
      close: () => this.calls.push('close'),
    };
    return Promise.resolve(connection);
  };

  // --- the shell NodeControl drives ---------------------------------------------------
  run(what: string): Promise<string> {
    this.calls.push(what);
    if (what === 'The stop command') {
      if (this.faults.stop)
        return Promise.reject(new RemoteCommandError(what, 1, 'no such service'));
      this.running = false;
    } else if (what === 'The start command') {
      this.running = true;
    } else if (what === 'Disarming the watchdog') {
      return Promise.resolve(this.faults.watchdogFired ? 'fired=2026-11-29T00:00:00Z\n' : '');
    }
    return Promise.resolve('');
  }

  prepare(what: string): Prepared {
    let used = false;
    return {
      go: () => {
        used = true;
        return this.run(what);
      },
      cancel: () => {
        if (!used) this.calls.push(`cancelled: ${what}`);
        used = true;
        return Promise.resolve();
      },
    };
  }

  // --- the seam --------------------------------------------------------------------------
  commands(): { stop: string; start: string } {
    return { stop: 'fake stop', start: 'fake start' };
  }

  expectedContent(): string {
    return 'the fake roots';
  }

  inspect(): Promise<BackupLayout> {
    this.calls.push('inspect');
    if (!this.files) return Promise.reject(new Error('no data dir'));
    return Promise.resolve({
      description: `${this.dataDir}: fake`,
      sameDevice: true,
      device: '1',
      dataBytes: JSON.stringify(this.files).length,
      stale: [],
    });
  }

  height(): Promise<number | undefined> {
    this.calls.push('height');
    if (this.faults.silent || !this.running) return Promise.resolve(undefined);
    return Promise.resolve(this.height_);
  }

  facts(height: number): Promise<KindFacts> {
    return Promise.resolve({ hashAtHeight: `hash-${height}` });
  }

  /**
   * The tables (`*.ldb`) that an archive's send ahead links, when `settledTables` is set: then
   * it sends them, and the archive after the freeze leaves out those still the same.
   */
  settledTables = false;
  private ahead: Files | undefined;

  linkAhead(stage: string): Promise<{ files: number; bytes: number }> {
    this.calls.push(`link ahead ${stage}`);
    const tables = Object.entries(this.files ?? {}).filter(([p]) => p.endsWith('.ldb'));
    this.ahead = this.settledTables ? Object.fromEntries(tables) : {};
    return Promise.resolve(this.sizes(this.ahead));
  }

  archiveAhead(): Promise<RemoteStream> {
    this.calls.push('archive ahead opened');
    return Promise.resolve(
      this.goStream(() => {
        this.calls.push('archive ahead streams');
        if (this.running !== true) throw new Error('sent ahead of a stopped node');
        const fault = this.faults.ahead;
        if (fault === 'lost') return { out: '', code: null };
        return {
          out: `${JSON.stringify(this.ahead ?? {})}\n`,
          code: fault === 'changed' ? AHEAD_CHANGED_CODE : 0,
        };
      }),
    );
  }

  archive(dir: string, options: ArchiveOptions): Promise<RemoteStream> {
    this.calls.push(
      `archive opened: ${dir}${options.ahead ? ' (after the tables sent ahead)' : ''}`,
    );
    // It waits for its go line, as the real one does, then writes what was frozen: after a send
    // ahead, what that did not send as it is now.
    return Promise.resolve(
      this.goStream(() => {
        this.calls.push('archive streams');
        const frozen = this.staged ?? this.files ?? {};
        const sent = options.ahead ? (this.ahead ?? {}) : {};
        const rest = Object.fromEntries(Object.entries(frozen).filter(([p, v]) => sent[p] !== v));
        return { out: `${JSON.stringify(rest)}\n`, code: 0 };
      }),
    );
  }

  /** A command that waits for its go line, then writes `run().out` and exits `run().code`. */
  private goStream(run: () => { out: string; code: number | null }): RemoteStream {
    const out = new PassThrough();
    let exited: (code: number | null) => void = () => undefined;
    const exit = new Promise<number | null>((r) => (exited = r));
    let went = false;
    const stdin = new Writable({
      write: (chunk: Buffer, _e, cb) => {
        if (!went && chunk.toString().startsWith('go')) {
          went = true;
          const r = run();
          // A cut connection ends the output where it was, and the exit status is lost.
          out.end(Buffer.from(r.out));
          exited(r.code);
        }
        cb();
      },
      final: (cb) => {
        exited(0);
        cb();
      },
    });
    return this.stream(new PassThrough(), stdin, out, exit);
  }

  freeze(stage: string): Prepared {
    return {
      go: () => {
        this.calls.push(`freeze ${stage}`);
        if (this.faults.freeze) {
          return Promise.reject(new RemoteCommandError('Freezing', 1, 'Invalid cross-device link'));
        }
        if (this.running) throw new Error('frozen while the node runs');
        this.staged = { ...this.files };
        return Promise.resolve('');
      },
      cancel: () => Promise.resolve(),
    };
  }

  settleFrozen(): Promise<Settled> {
    this.calls.push('settle');
    return Promise.resolve({ ...this.sizes(this.staged ?? {}), pruned: 0 });
  }

  measure(): Promise<Sizes> {
    this.calls.push('measure');
    return Promise.resolve(this.sizes(this.files ?? {}));
  }

  statDigest(): Promise<string> {
    return Promise.resolve('same');
  }

  checkForRestore(): Promise<RestoreChecks> {
    this.calls.push('check for restore');
    return Promise.resolve({
      running: this.running ? 'its peer API answers' : undefined,
      freeBytes: this.freeBytes,
      dataDirPresent: this.files !== undefined,
      tools: new Set(['tar', 'gzip', 'pigz', 'zstd', 'curl']),
      address: '10.1.2.3',
      stages: this.stages,
      cannotStart: this.cannotStart,
    });
  }

  runningNow(): Promise<{ running?: string; firedAt?: string }> {
    this.calls.push('running now?');
    return Promise.resolve({ running: this.running ? 'its peer API answers' : undefined });
  }

  extract(stage: string): RemoteStream {
    this.calls.push(`extract opened: ${stage}`);
    const out = new PassThrough();
    let exited: (code: number | null) => void = () => undefined;
    const exit = new Promise<number | null>((r) => (exited = r));
    const chunks: Buffer[] = [];
    let started = false;
    const stdin = new Writable({
      write: (chunk: Buffer, _e, cb) => {
        if (!started) {
          // The go line, then the archive.
          const text = chunk.toString('latin1');
          const nl = text.indexOf('\n');
          started = true;
          this.calls.push('extract streams');
          chunks.push(chunk.subarray(nl + 1));
        } else chunks.push(chunk);
        cb();
      },
      final: (cb) => {
        if (!started) {
          exited(0);
          out.end();
          cb();
          return;
        }
        // One line a part; a later part's file wins, as a later tar member does.
        this.staged = Object.assign(
          {},
          ...Buffer.concat(chunks)
            .toString()
            .split('\n')
            .filter(Boolean)
            .map((l) => JSON.parse(l) as Files),
        ) as Files;
        this.calls.push('extracted');
        out.end(`${Object.keys(this.staged).length}\n`);
        exited(0);
        cb();
      },
    });
    return this.stream(out, stdin, new PassThrough(), exit);
  }

  swap(_stage: string, previous: string): PreparedStep {
    return {
      go: (): Promise<ExecResult> => {
        this.calls.push('swap');
        if (this.running) throw new Error('swapped under a running node');
        if (this.faults.watchdogFired) {
          return Promise.resolve({
            code: NODE_LOST,
            stdout: '',
            stderr:
              'prep-snapshot-node-lost: the watchdog started the node at 2026-11-29T00:00:00Z',
          });
        }
        this.previous = this.files;
        this.files = this.staged;
        this.calls.push(`previous kept as ${previous}`);
        return Promise.resolve({ code: 0, stdout: 'swapped\n', stderr: '' });
      },
      cancel: () => undefined,
    };
  }

  rollback(): Promise<ExecResult> {
    this.calls.push('rollback');
    if (this.running) throw new Error('rolled back under a running node');
    this.files = this.previous;
    return Promise.resolve({ code: 0, stdout: '', stderr: '' });
  }

  restoredHeight(facts: KindFacts): Promise<number | undefined> {
    this.calls.push('health');
    if (this.faults.unhealthy || !this.running) return Promise.resolve(undefined);
    return Promise.resolve(Number(facts.blockHeight) + 5);
  }

  restoredAs(address: string): string {
    return `fake data of ${address}`;
  }

  // Tree snapshots move files one by one over the host's own commands: they are tested end
  // to end (test/e2e/tree*.test.ts) against sshd, MinIO and real nodes, not through this fake.
  listTree(): never {
    throw new Error('the fake node keeps archives only');
  }
  listTreeAhead(): never {
    throw new Error('the fake node keeps archives only');
  }

  fileTails(): never {
    throw new Error('the fake node keeps archives only');
  }
  hashFiles(): never {
    throw new Error('the fake node keeps archives only');
  }
  sendFiles(): never {
    throw new Error('the fake node keeps archives only');
  }
  receiveTree(): never {
    throw new Error('the fake node keeps archives only');
  }
  receiveMore(): never {
    throw new Error('the fake node keeps archives only');
  }
  tablesInDataDir(): never {
    throw new Error('the fake node keeps archives only');
  }
  linkTables(): never {
    throw new Error('the fake node keeps archives only');
  }
  stagedFiles(): never {
    throw new Error('the fake node keeps archives only');
  }
  appendStaged(): never {
    throw new Error('the fake node keeps archives only');
  }
  removeStaged(): never {
    throw new Error('the fake node keeps archives only');
  }

  remove(path: string): Promise<void> {
    this.calls.push(`remove ${path}`);
    if (path.includes('.prev-')) this.previous = undefined;
    return Promise.resolve();
  }

  removeStaging(stage: string): Promise<void> {
    this.calls.push(`remove staging ${stage}`);
    this.stages = this.stages.filter((s) => s.path !== stage);
    return Promise.resolve();
  }

  private sizes(files: Files): Sizes {
    return {
      files: Object.keys(files).length,
      bytes: Object.values(files).reduce((n, v) => n + v.length, 0),
      digest: 'same',
    };
  }

  private stream(
    stdout: PassThrough,
    stdin: Writable,
    source: PassThrough,
    exit: Promise<number | null>,
  ): RemoteStream {
    return {
      stdout,
      source: readableSource(source),
      stdin,
      exit,
      onStderrLine: () => undefined,
      stderrTail: () => '',
      kill: () => {
        stdin.destroy();
        source.destroy();
      },
      transport: 'ssh2',
    };
  }
}
