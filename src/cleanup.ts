/**
 * The post step. When the main step died or was cancelled, it restarts the node that the
 * main step stopped, removes the staging folder and disarms the watchdog; and it removes an
 * archive upload that the main step neither published nor could abort (S3 was unreachable,
 * or the process died mid-stream). It warns, never fails.
 */
import * as core from '@actions/core';
import { rmSync } from 'node:fs';
import { State } from './constants.js';
import { errorMessage } from './errors.js';
import { manifestKey } from './naming.js';
import { aheadDir } from './node-kind/archive-remote.js';
import { detachedCommand, removeStagingCommand } from './node-kind/remote.js';
import { disarmWatchdogCommand } from './node-kind/watchdog.js';
import { readBackupList } from './s3/backup-list.js';
import { createClient } from './s3/client.js';
import { deleteKeys } from './s3/store.js';
import { abortUploads } from './s3/upload.js';
import { parseSettings, type Settings } from './settings.js';
import { SshSession } from './ssh/session.js';

export async function cleanup(): Promise<void> {
  const stopped =
    core.getState(State.NodeStopped) === 'true' && core.getState(State.NodeStarted) !== 'true';
  const staging = core.getState(State.StagingDir);
  const watchdog = core.getState(State.WatchdogFlag);
  const keyDir = core.getState(State.KeyDir);
  const uploadKey = core.getState(State.UploadKey);
  const unpublished =
    uploadKey && core.getState(State.UploadPublished) !== 'true' ? uploadKey : undefined;
  if (keyDir) rmSync(keyDir, { recursive: true, force: true });
  if (!stopped && !staging && !watchdog && !unpublished) return;

  let settings: Settings;
  try {
    settings = parseSettings();
  } catch (error) {
    core.warning(`Cleanup could not read the inputs: ${errorMessage(error)}.`);
    return;
  }
  // The node first: it is what costs the operator while it is down.
  if (stopped || staging || watchdog) await cleanHost(settings, stopped, staging, watchdog);
  if (unpublished) await cleanStorage(settings, unpublished);
}

async function cleanHost(
  settings: Settings,
  stopped: boolean,
  staging: string,
  watchdog: string,
): Promise<void> {
  let session: SshSession | undefined;
  try {
    if (!settings.ssh) return;
    session = await SshSession.connect({ ...settings.ssh, transport: 'ssh2' });
    if (stopped) {
      core.warning('The main step ended while the node was stopped: starting it.');
      // The start as the main step resolved it for the node's kind; the input's otherwise.
      const start = core.getState(State.StartCommand) || settings.node.startCommand;
      const res = await session.exec(detachedCommand(start), {
        timeoutMs: 15 * 60_000,
      });
      if (res.code === 0) core.info('The node was started.');
      else
        core.warning(
          `The start command failed (exit ${res.code}): ${res.stderr.trim()}. Check the node now.`,
        );
    }
    if (watchdog) await session.exec(disarmWatchdogCommand(watchdog), { timeoutMs: 60_000 });
    if (staging) {
      // With the folder of an archive's send ahead of the stop, where the run made one.
      await session.exec(removeStagingCommand(aheadDir(staging)), { timeoutMs: 30 * 60_000 });
      const res = await session.exec(removeStagingCommand(staging), { timeoutMs: 30 * 60_000 });
      if (res.code === 0) core.info(`Removed the staging folder ${staging}.`);
      else core.warning(`Could not remove the staging folder ${staging}: ${res.stderr.trim()}`);
    }
  } catch (error) {
    core.warning(
      `Cleanup could not finish: ${errorMessage(error)}.` +
        (stopped
          ? ' The node may still be stopped: the watchdog on the host will start it; check it now.'
          : ''),
    );
  } finally {
    session?.close();
  }
}

/** Aborts the incomplete multipart upload of `key`, and removes the archive and its manifest unless backup_list names them. */
async function cleanStorage(settings: Settings, key: string): Promise<void> {
  const { bucket, prefix, manifestPrefix } = settings.s3;
  const client = createClient(settings.s3);
  try {
    const aborted = await abortUploads(client, bucket, key);
    if (aborted > 0) core.info(`Aborted ${aborted} incomplete upload(s) of ${key}.`);
    // The main step may have died between writing backup_list and recording it: a listed archive stays.
    const entry = key.startsWith(`${prefix}/`) ? key.slice(prefix.length + 1) : key;
    const listed = (await readBackupList(client, bucket, `${prefix}/backup_list`)).entries.includes(
      entry,
    );
    if (listed) {
      core.info(`${key} is listed in backup_list: kept.`);
      return;
    }
    await deleteKeys(client, bucket, [key, manifestKey(manifestPrefix, key)]);
    core.info(`Removed what the main step left of the unpublished ${key}.`);
  } catch (error) {
    core.warning(
      `Could not remove the unpublished upload of ${key}: ${errorMessage(error)}. ` +
        `Remove it by hand, or let a lifecycle rule (AbortIncompleteMultipartUpload) do it.`,
    );
  } finally {
    client.destroy();
  }
}
