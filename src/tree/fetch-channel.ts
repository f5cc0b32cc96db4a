/**
 * One SSH channel that a tree restore writes a tar of files into (see tree/fetch.ts).
 */
import { once } from 'node:events';
import { ActionError } from '../errors.js';
import { LOCKED_LINE } from '../node-kind/extract.js';
import type { RemoteStream } from '../ssh/session.js';
import { END_OF_TAR } from './tar-stream.js';

/** One SSH channel that a tar of files goes into (host.receiveTree or host.receiveMore). */
export class Channel {
  out = '';
  private gone = false;

  /** `run.failed`: set once any channel of the restore has failed, which ends this one's writes. */
  constructor(
    readonly remote: RemoteStream,
    private readonly run: { failed: boolean },
  ) {
    remote.stdout.setEncoding('utf8');
    remote.stdout.on('data', (t: string) => (this.out += t));
    remote.stdin.on('error', () => undefined);
    void remote.exit.then(
      () => (this.gone = true),
      () => (this.gone = true),
    );
  }

  /**
   * Writes and waits for the write: a chunk may be memory that is filled again once it is
   * written (a piece of the pool, a view of a socket's buffer).
   */
  async write(bytes: Uint8Array): Promise<void> {
    if (this.run.failed) throw new ActionError('Another channel of the restore failed.');
    if (this.gone)
      throw new ActionError(
        `The host stopped reading the files: ${this.remote.stderrTail().trim()}`,
      );
    await Promise.race([
      new Promise<void>((r) => this.remote.stdin.write(bytes, () => r())),
      this.remote.exit.then(() => undefined),
    ]);
  }

  /** Resolves once the host's extraction holds the staging folder (it said LOCKED_LINE). */
  async locked(): Promise<void> {
    while (!this.out.includes(`${LOCKED_LINE}\n`)) {
      if (this.gone) {
        throw new ActionError(
          `The host's extraction ended before it held the staging folder: ${this.remote.stderrTail().trim()}`,
        );
      }
      await Promise.race([once(this.remote.stdout, 'data'), this.remote.exit]);
    }
  }

  /** Ends the tar and waits for the host to have written it all. */
  async finish(): Promise<void> {
    await this.write(END_OF_TAR);
    this.remote.stdin.end();
    const code = await this.remote.exit;
    if (code !== 0) throw this.failed('the staging folder', code);
  }

  failed(stage: string, code: number | null): ActionError {
    return new ActionError(
      `The host could not write the files into ${stage} (exit ${code}): ${this.remote.stderrTail().trim()}. The data dir was not touched.`,
    );
  }
}
