/**
 * Loaded into every test file's process by `test/run.sh` (`--import`): a file whose tests have
 * all ended but which leaves something open (a child process blocked on a pipe, a server never
 * stopped) would keep its process, and the whole run, waiting for ever. Once its tests and hooks
 * are done the file has `GRACE_MS` to exit; then this names what is still open, kills the child
 * processes it started, and fails the file.
 */
import type { ChildProcess } from 'node:child_process';
import { after } from 'node:test';

const GRACE_MS = 60_000;

interface Handles {
  _getActiveHandles(): unknown[];
}

/** Only in a test file's own process: the runner that spawns the files sets this. */
if (process.env.NODE_TEST_CONTEXT?.startsWith('child')) {
  after(() => {
    setTimeout(() => {
      const open = (process as unknown as Handles)._getActiveHandles();
      const names = open.map((h) => {
        const child = h as Partial<ChildProcess>;
        if (child.spawnargs)
          return `child process ${child.pid} (${child.spawnargs.join(' ').slice(0, 120)})`;
        return (h as object)?.constructor?.name ?? typeof h;
      });
      console.error(
        `The test file did not exit within ${GRACE_MS / 1000} s of its last test; still open: ${names.join(', ')}`,
      );
      for (const h of open) {
        const child = h as Partial<ChildProcess>;
        if (child.spawnargs && child.exitCode === null) child.kill?.('SIGKILL');
      }
      process.exit(1);
    }, GRACE_MS).unref();
  });
}
