/**
 * The post step. When the main step died or was cancelled, it restarts the node that the
 * main step stopped, removes the staging folder and disarms the watchdog. It warns, never fails.
 */
import * as core from '@actions/core';
import { rmSync } from 'node:fs';
import { State } from './constants.js';
import { errorMessage } from './errors.js';
import { disarmWatchdogCommand, removeCommand } from './node-kind/remote.js';
import { parseSettings } from './settings.js';
import { SshSession } from './ssh/session.js';

export async function cleanup(): Promise<void> {
  const stopped = core.getState(State.NodeStopped) === 'true' && core.getState(State.NodeStarted) !== 'true';
  const staging = core.getState(State.StagingDir);
  const watchdog = core.getState(State.WatchdogFlag);
  const keyDir = core.getState(State.KeyDir);
  if (keyDir) rmSync(keyDir, { recursive: true, force: true });
  if (!stopped && !staging && !watchdog) return;

  let session: SshSession | undefined;
  try {
    const settings = parseSettings();
    if (!settings.ssh) return;
    session = await SshSession.connect({ ...settings.ssh, transport: 'ssh2' });
    if (stopped) {
      core.warning('The main step ended while the node was stopped: starting it.');
      const res = await session.exec(settings.node.startCommand, { timeoutMs: 15 * 60_000 });
      if (res.code === 0) core.info('The node was started.');
      else core.warning(`The start command failed (exit ${res.code}): ${res.stderr.trim()}. Check the node now.`);
    }
    if (watchdog) await session.exec(disarmWatchdogCommand(watchdog), { timeoutMs: 60_000 });
    if (staging) {
      const res = await session.exec(removeCommand(staging), { timeoutMs: 30 * 60_000 });
      if (res.code === 0) core.info(`Removed the staging folder ${staging}.`);
      else core.warning(`Could not remove the staging folder ${staging}: ${res.stderr.trim()}`);
    }
  } catch (error) {
    core.warning(
      `Cleanup could not finish: ${errorMessage(error)}.` +
        (stopped ? ' The node may still be stopped: the watchdog on the host will start it; check it now.' : ''),
    );
  } finally {
    session?.close();
  }
}
