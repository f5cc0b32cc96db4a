/** The main step: parse the inputs, run the mode, report a failure the operator can act on. */
import * as core from '@actions/core';
import { errorMessage } from './errors.js';
import { backup } from './modes/backup.js';
import { list } from './modes/list.js';
import { restore } from './modes/restore.js';
import { verify } from './modes/verify.js';
import { parseSettings } from './settings.js';

export async function run(): Promise<void> {
  try {
    const settings = parseSettings();
    switch (settings.mode) {
      case 'backup':
        await backup(settings);
        break;
      case 'list':
        await list(settings);
        break;
      case 'restore':
        await restore(settings);
        break;
      case 'verify':
        await verify(settings);
        break;
    }
  } catch (error) {
    core.setFailed(errorMessage(error));
  }
}
