/**
 * One file of a tree restore: where its bytes come from (FetchItem), and its fetch into pieces
 * of reused memory, checked against its sha256 (or a foreign tree's tail hash) as it arrives
 * (FileFetch). tree/fetch.ts writes the pieces to the host.
 */
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { ActionError, IntegrityError, errorMessage } from '../errors.js';
import { MemoryPool, PieceList } from '../s3/pieces.js';
import { TailHasher } from './icon2.js';
import type { Take } from './resumable-read.js';

/** A file to restore and where its bytes come from. */
export interface FetchItem {
  path: string;
  size: number;
  mode: number;
  /** Our manifests prove each file by its sha256. */
  sha256?: string;
  /** Our trees: the key of the stored object, which the host may read itself (tree/fetch-on-host.ts). */
  key?: string;
  /** icon2-node's trees give only the xxh3 of the tail (see icon2.ts), where they give one. */
  tail?: string;
  /**
   * Hands the bytes from `start` to the end to `take`, in order; a chunk is valid during the
   * call and until a promise that `take` returns settles (see tree/resumable-read.ts).
   */
  read(start: number, take: Take): Promise<void>;
}

const ATTEMPTS = 4;

/** The sha256 (or, for a foreign tree, the tail hash) of a file, checked as its bytes pass. */
export function checker(item: FetchItem): { update(b: Uint8Array): void; verify(): Promise<void> } {
  const sha = item.sha256 ? createHash('sha256') : undefined;
  // A sha256 proves the whole file: the tail's hash is checked only where it is all there is.
  const tail = item.tail && !sha ? new TailHasher() : undefined;
  return {
    update: (b) => {
      sha?.update(b);
      tail?.update(b);
    },
    verify: async () => {
      const gotSha = sha?.digest('hex');
      if (sha && gotSha !== item.sha256) {
        throw new IntegrityError(
          `${item.path}: the stored object's sha256 is ${gotSha}, not the manifest's ${item.sha256}: the stored snapshot is damaged. ` +
            `The data dir was not touched.`,
        );
      }
      const gotTail = tail ? await tail.digest() : undefined;
      if (tail && gotTail !== item.tail) {
        throw new IntegrityError(
          `${item.path}: its checksum (xxh3 of the tail) is ${gotTail}, not ${item.tail}: the stored snapshot is damaged. ` +
            `The data dir was not touched.`,
        );
      }
    },
  };
}

/**
 * A file fetched into pieces of `pool`, then checked; fetched again from the start when
 * something else than the read fails (a read gives up on its own, see tree/resumable-read.ts,
 * and a failed check is final), unless its first pieces were written already. The writer takes
 * the pieces as they fill (the file at the head of the tar goes on to the host while it
 * arrives, as an archive's first range does) and gives them back once written: a buffer of its
 * size for each file in flight (megabytes each, freed in turn) left the runner's memory in
 * pieces that it did not give back.
 */
export class FileFetch {
  readonly pieces: PieceList;
  /** Resolves once the file is whole and checked. */
  readonly done: Promise<void>;
  /** Whether the fetch has ended, well or not; and why not. */
  ended = false;
  failure: unknown;
  /** Set once a piece was taken: the fetch can no longer start over. */
  taken = false;
  private waiter: (() => void) | undefined;

  constructor(
    private readonly item: FetchItem,
    pool: MemoryPool,
  ) {
    this.pieces = new PieceList(pool);
    this.done = this.run().then(
      () => this.end(),
      (error: unknown) => {
        this.failure = error;
        this.end();
        throw error;
      },
    );
    this.done.catch(() => undefined);
  }

  /** Resolves when more bytes came or the fetch ended. */
  more(): Promise<void> {
    return this.ended ? Promise.resolve() : new Promise((go) => (this.waiter = go));
  }

  private end(): void {
    this.ended = true;
    this.wake();
  }

  private wake(): void {
    const go = this.waiter;
    this.waiter = undefined;
    go?.();
  }

  private async run(): Promise<void> {
    const item = this.item;
    for (let attempt = 1; ; attempt++) {
      try {
        const check = checker(item);
        let got = 0;
        // A read refuses bytes past the file's size (tree/resumable-read.ts).
        await item.read(0, (chunk) => {
          this.pieces.add(chunk);
          got += chunk.length;
          check.update(chunk);
          this.wake();
        });
        if (got !== item.size) throw new Error(`${got} of ${item.size} bytes`);
        await check.verify();
        return;
      } catch (error) {
        if (error instanceof ActionError || attempt >= ATTEMPTS || this.taken) {
          throw error instanceof ActionError
            ? error
            : new ActionError(
                `The download of ${item.path} failed ${attempt} times: ${errorMessage(error)}`,
              );
        }
        this.pieces.clear();
        await sleep(500 * 2 ** attempt);
      }
    }
  }
}
