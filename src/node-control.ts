/**
 * Stopping and starting the node, with the three guards that keep it from staying down:
 * state saved before the stop (the post step restarts it), a watchdog on the host (holds
 * when the runner vanishes), and a start in `finally` by the caller.
 */
import * as core from '@actions/core';
import { State } from './constants.js';
import { errorMessage } from './errors.js';
import type { NodeKind } from './node-kind/loopchain.js';
import {
  armWatchdogCommand,
  detachedCommand,
  dirname,
  disarmWatchdogCommand,
  peerCommand,
} from './node-kind/remote.js';
import type { NodeSettings } from './settings.js';
import type { Prepared, SshSession } from './ssh/session.js';

/** Names this run's files on the host (staging folder, watchdog flag): unique per run, attempt and process. */
export function currentRunId(): string {
  return `${process.env.GITHUB_RUN_ID ?? 'local'}-${process.env.GITHUB_RUN_ATTEMPT ?? '1'}-${process.pid}`;
}

export class NodeControl {
  private stopped = false;
  private watchdogFlag: string | undefined;
  /** The start command and the disarm, opened ahead when the node is to start again soon. */
  private prepared: { start?: Prepared; disarm?: Prepared } = {};
  stoppedAt?: number;
  startedAt?: number;

  constructor(
    private readonly session: SshSession,
    private readonly settings: NodeSettings,
    private readonly kind: NodeKind,
    private readonly runId: string,
  ) {}

  /** The height the node reports, or undefined when its API does not answer. */
  async height(): Promise<number | undefined> {
    const res = await this.session.exec(peerCommand(this.settings.peerUrl), { timeoutMs: 30_000 });
    if (res.code !== 0) return undefined;
    return this.kind.parseHeight(res.stdout);
  }

  get isStopped(): boolean {
    return this.stopped;
  }

  /**
   * Arms the watchdog, records that the node is about to stop, and stops it. With
   * `startSoon`, the start command and the disarm are opened ahead (see
   * `SshSession.prepare`): seconds of downtime are worth the sessions they save.
   */
  async stop(options: { startSoon?: boolean } = {}): Promise<void> {
    const flag = `${dirname(this.settings.dataDir)}/.prep-snapshot-watchdog-${this.runId}`;
    core.saveState(State.WatchdogFlag, flag);
    this.watchdogFlag = flag;
    await this.session.run(
      'Arming the watchdog',
      armWatchdogCommand(flag, this.settings.maxDowntimeSeconds, this.settings.startCommand),
    );
    core.info(
      `Watchdog armed on the host: it starts the node in ${this.settings.maxDowntimeSeconds} s unless this run does.`,
    );
    if (options.startSoon) {
      this.prepared = {
        start: this.openAhead('start'),
        disarm: this.openAhead('disarm'),
      };
    }

    core.saveState(State.NodeStopped, 'true');
    core.saveState(State.NodeStarted, 'false');
    this.stopped = true;
    this.stoppedAt = performance.now();
    core.info(`Stopping the node: ${this.settings.stopCommand}`);
    await this.session.run('The stop command', this.settings.stopCommand, {
      timeoutMs: 15 * 60_000,
    });
    core.info('The node is stopped.');
  }

  /** Starts the node and disarms the watchdog. */
  async start(): Promise<void> {
    core.info(`Starting the node: ${this.settings.startCommand}`);
    await this.runOnce('start');
    this.startedAt = performance.now();
    this.stopped = false;
    core.saveState(State.NodeStarted, 'true');
    await this.disarm();
  }

  /** For `finally`: starts the node if this run stopped it and has not started it. Never throws. */
  async ensureStarted(): Promise<void> {
    if (this.stopped) {
      try {
        await this.start();
      } catch (error) {
        core.error(
          `The node could not be started again: ${errorMessage(error)}. The watchdog on the host will try in ` +
            `at most ${this.settings.maxDowntimeSeconds} s; check the node now.`,
        );
      }
    } else {
      await this.disarm().catch(() => undefined);
    }
    // Whatever was opened ahead and not used ends without running.
    await Promise.all([this.prepared.start?.cancel(), this.prepared.disarm?.cancel()]);
    this.prepared = {};
  }

  private async disarm(): Promise<void> {
    if (!this.watchdogFlag) return;
    await this.runOnce('disarm');
    this.watchdogFlag = undefined;
    core.saveState(State.WatchdogFlag, '');
  }

  /** The start command and the disarm, as they run, opened ahead or not. */
  private command(slot: 'start' | 'disarm'): {
    what: string;
    command: string;
    options: { timeoutMs?: number };
  } {
    return slot === 'start'
      ? {
          what: 'The start command',
          command: detachedCommand(this.settings.startCommand),
          options: { timeoutMs: 15 * 60_000 },
        }
      : {
          what: 'Disarming the watchdog',
          command: disarmWatchdogCommand(this.watchdogFlag ?? ''),
          options: {},
        };
  }

  private openAhead(slot: 'start' | 'disarm'): Prepared {
    const c = this.command(slot);
    return this.session.prepare(c.what, c.command, c.options);
  }

  /** Runs the copy opened ahead when there is one (once), in a new session otherwise. */
  private async runOnce(slot: 'start' | 'disarm'): Promise<void> {
    const prepared = this.prepared[slot];
    this.prepared[slot] = undefined;
    if (prepared) {
      await prepared.go();
      return;
    }
    const c = this.command(slot);
    await this.session.run(c.what, c.command, c.options);
  }

  get downtimeSeconds(): number | undefined {
    if (this.stoppedAt === undefined || this.startedAt === undefined) return undefined;
    return (this.startedAt - this.stoppedAt) / 1000;
  }
}
