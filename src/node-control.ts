/**
 * Stopping and starting the node, with the three guards that keep it from staying down:
 * state saved before the stop (the post step restarts it), a watchdog on the host (holds
 * when the runner vanishes), and a start in `finally` by the caller.
 */
import * as core from '@actions/core';
import { State } from './constants.js';
import { errorMessage, NodeLostError } from './errors.js';
import { detachedCommand, dirname } from './node-kind/remote.js';
import {
  armWatchdogCommand,
  disarmWatchdogCommand,
  NODE_LOST,
  nodeLostAt,
  parseDisarm,
} from './node-kind/watchdog.js';
import type { NodeSettings } from './settings.js';
import type { NodeCommands } from './node-kind/host.js';
import type { Shell } from './node-kind/index.js';
import type { Prepared } from './ssh/session.js';

/** Names this run's files on the host (staging folder, watchdog flag): unique per run, attempt and process. */
export function currentRunId(): string {
  return `${process.env.GITHUB_RUN_ID ?? 'local'}-${process.env.GITHUB_RUN_ATTEMPT ?? '1'}-${process.pid}`;
}

export class NodeControl {
  private stopped = false;
  private armed = false;
  /** The start command and the disarm, opened ahead when the node is to start again soon. */
  private prepared: { start?: Prepared; disarm?: Prepared } = {};
  /** This run's watchdog flag on the host (see `armWatchdogCommand`): armed or not, its name. */
  readonly watchdogFlag: string;
  /** When the watchdog started the node while this run held it down; then the run has lost it. */
  lostAt?: string;
  stoppedAt?: number;
  startedAt?: number;

  constructor(
    private readonly session: Shell,
    private readonly settings: NodeSettings,
    /** The stop and start commands of the node's kind; asked when they run. */
    private readonly commands: () => NodeCommands,
    runId: string,
  ) {
    this.watchdogFlag = `${dirname(settings.dataDir)}/.prep-snapshot-watchdog-${runId}`;
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
    const { stop, start, says } = this.commands();
    core.saveState(State.WatchdogFlag, this.watchdogFlag);
    core.saveState(State.StartCommand, start);
    await this.session.run(
      'Arming the watchdog',
      armWatchdogCommand(this.watchdogFlag, this.settings.maxDowntimeSeconds, start),
    );
    this.armed = true;
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
    core.info(`Stopping the node: ${says?.stop ?? stop}`);
    await this.session.run('The stop command', stop, {
      timeoutMs: 15 * 60_000,
    });
    core.info('The node is stopped.');
  }

  /**
   * The one way the action starts the node: the start command detached on the host (a
   * connection lost meanwhile does not kill it halfway), then the watchdog disarmed if this
   * run armed one. Whether or not this run stopped the node.
   */
  async start(): Promise<void> {
    const c = this.commands();
    core.info(`Starting the node: ${c.says?.start ?? c.start}`);
    await this.runOnce('start');
    this.startedAt = performance.now();
    this.stopped = false;
    core.saveState(State.NodeStarted, 'true');
    await this.disarm();
  }

  /**
   * Leaves a node that this run stopped down on purpose (it was down before the run): the
   * watchdog is disarmed and the post step will not start it.
   */
  async leaveStopped(): Promise<void> {
    this.stopped = false;
    core.saveState(State.NodeStopped, 'false');
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

  /**
   * Throws when the watchdog started the node while this run held it down: whatever the
   * run was about to do next (`what`) assumed the node still down, and is not done.
   */
  assertOwned(what: string): void {
    const lost = this.lostError(what);
    if (lost) throw lost;
  }

  /** The error that says the watchdog took the node, followed by `what`; undefined if it did not. */
  lostError(what: string): NodeLostError | undefined {
    if (this.lostAt === undefined) return undefined;
    return new NodeLostError(
      `The node was down longer than 'max-downtime' (${this.settings.maxDowntimeSeconds} s): the watchdog on the ` +
        `host started it at ${this.lostAt}. ${what}`,
    );
  }

  /** Records what `watchdogFiredCommand` printed: the time the watchdog fired, if it did. */
  noteFired(stdout: string): void {
    if (this.armed && stdout.trim()) this.lostAt = stdout.trim();
  }

  /**
   * Records a step on the host that found the node taken by the watchdog (exit `NODE_LOST`):
   * its result, or the RemoteCommandError it failed with.
   */
  noteLost(step: unknown): void {
    const s = step as Partial<{ code: number | null; stderr: string }> | undefined;
    if (s?.code === NODE_LOST) this.lostAt = nodeLostAt(s.stderr ?? '') ?? 'an unknown time';
  }

  private async disarm(): Promise<void> {
    if (!this.armed) return;
    const out = await this.runOnce('disarm');
    this.armed = false;
    core.saveState(State.WatchdogFlag, '');
    const fired = parseDisarm(out);
    if (fired !== undefined) {
      this.lostAt = fired;
      core.warning(
        `The watchdog on the host started the node at ${fired}: it was down longer than 'max-downtime' ` +
          `(${this.settings.maxDowntimeSeconds} s). Its log is ${this.watchdogFlag}.log.`,
      );
    }
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
          command: detachedCommand(this.commands().start),
          options: { timeoutMs: 15 * 60_000 },
        }
      : {
          what: 'Disarming the watchdog',
          command: disarmWatchdogCommand(this.watchdogFlag),
          options: {},
        };
  }

  private openAhead(slot: 'start' | 'disarm'): Prepared {
    const c = this.command(slot);
    return this.session.prepare(c.what, c.command, c.options);
  }

  /** Runs the copy opened ahead when there is one (once), in a new session otherwise. */
  private async runOnce(slot: 'start' | 'disarm'): Promise<string> {
    const prepared = this.prepared[slot];
    this.prepared[slot] = undefined;
    if (prepared) return prepared.go();
    const c = this.command(slot);
    return this.session.run(c.what, c.command, c.options);
  }

  get downtimeSeconds(): number | undefined {
    if (this.stoppedAt === undefined || this.startedAt === undefined) return undefined;
    return (this.startedAt - this.stoppedAt) / 1000;
  }
}
