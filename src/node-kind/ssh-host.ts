/**
 * What every kind of node does the same way over SSH, once it has said which files make up
 * its snapshot (`tree`): the frozen copy settled and measured, the stat digest, a step opened
 * ahead that waits for its line, and removals.
 */
import * as core from '@actions/core';
import { parseManifestsOutput, planPrune } from '../freeze.js';
import type { ExecResult, SshSession } from '../ssh/session.js';
import type { PreparedStep, Sizes, Tree } from './host.js';
import {
  manifestsCommand,
  parseSizes,
  pruneCommand,
  removeCommand,
  removeStagingCommand,
  sizeCommand,
  statDigestCommand,
} from './remote.js';

export abstract class SshHost {
  constructor(protected readonly session: SshSession) {}

  /** The files of this kind's snapshot, as the commands on the host see them. */
  protected abstract get tree(): Tree;

  /**
   * Leaves out of a frozen `stage` the tables that its MANIFESTs do not list (the leftovers
   * of a compaction the node was stopped in), then measures what is left, with the stat
   * digest that the stream is checked against.
   */
  async settleFrozen(stage: string): Promise<Sizes> {
    // Measured at the same time as the MANIFESTs are read: that is the answer unless there
    // is something to prune, which is rare.
    const measure = () =>
      this.session.run('Measuring the snapshot', sizeCommand(this.tree, stage, true));
    const measuring = measure();
    measuring.catch(() => undefined);
    const plan = planPrune(
      parseManifestsOutput(
        await this.session.run('Reading the MANIFESTs', manifestsCommand(this.tree, stage)),
      ),
    );
    core.info(
      `${plan.databases} LevelDB database(s), ${plan.liveTables} live tables; ` +
        `${plan.garbage.length} leftover table(s) of an interrupted compaction left out.`,
    );
    if (plan.garbage.length === 0) return parseSizes(await measuring);
    await measuring.catch(() => undefined);
    await this.session.run('Pruning the staging folder', pruneCommand(stage), {
      stdin: plan.garbage.map((g) => `${g}\0`).join(''),
    });
    return parseSizes(await measure());
  }

  async measure(dir: string): Promise<Sizes> {
    return parseSizes(
      await this.session.run('Measuring the snapshot', sizeCommand(this.tree, dir)),
    );
  }

  async statDigest(dir: string): Promise<string> {
    return (
      await this.session.run('Reading the staged files', statDigestCommand(this.tree, dir))
    ).trim();
  }

  async remove(path: string): Promise<void> {
    await this.session.run(`Removing ${path}`, removeCommand(path), { timeoutMs: 60 * 60_000 });
  }

  async removeStaging(stage: string): Promise<void> {
    await this.session.run('Removing the staging folder', removeStagingCommand(stage), {
      timeoutMs: 30 * 60_000,
    });
  }

  /** `command`, started now; it runs once `line` is written to it (see the swap commands). */
  protected openAhead(command: string, line: string): PreparedStep {
    let release: (text: string) => void = () => undefined;
    const result: Promise<ExecResult> = this.session.exec(command, {
      stdin: new Promise<string>((resolve) => (release = resolve)),
    });
    result.catch(() => undefined);
    return {
      go: () => {
        release(line);
        return result;
      },
      cancel: () => release(''),
    };
  }
}
