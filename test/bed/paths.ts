// Where the test bed keeps its tools. test/bed/install.sh fills this cache.
// Override with PREP_SNAPSHOT_CACHE (default: ~/.cache/prep-snapshot).
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Root of the repository (two levels above test/bed). */
export const repoRoot: string = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** Cache dir for tools built or downloaded by install.sh. */
export function cacheDir(): string {
  return process.env.PREP_SNAPSHOT_CACHE || join(homedir(), '.cache', 'prep-snapshot');
}

/** MinIO server binary (go install with GOBIN=$CACHE/bin). */
export function minioBin(): string {
  return join(cacheDir(), 'bin', 'minio');
}

/** Node 24 binary (npm package `node`), used to run the packaged action like GitHub's runner. */
export function node24Bin(): string {
  return join(cacheDir(), 'node24', 'node_modules', '.bin', 'node');
}

/** Path to sshd. */
export const sshdBin = '/usr/sbin/sshd';
