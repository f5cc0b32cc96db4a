// Where the test bed keeps its tools. test/bed/install.sh fills this cache.
// Override with PREP_SNAPSHOT_CACHE (default: ~/.cache/prep-snapshot).
import { existsSync } from 'node:fs';
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

/** goloop v1.4.4, the ICON 2 node (built by install.sh from the vendored source tarball). */
export function goloopBin(): string {
  return join(cacheDir(), 'bin', 'goloop');
}

/** Node 24 binary (npm package `node`), used to run the packaged action like GitHub's runner. */
export function node24Bin(): string {
  return join(cacheDir(), 'node24', 'node_modules', '.bin', 'node');
}

/** Path to sshd. */
export const sshdBin = '/usr/sbin/sshd';

/** goloop's source tarball, which install.sh builds from (GOLOOP_TARBALL overrides). */
export function goloopTarball(): string {
  return (
    process.env.GOLOOP_TARBALL ??
    join(repoRoot, '..', 'shared', 'vendor', 'goloop', 'goloop-1.4.4.tar.gz')
  );
}

/**
 * Why the tests of a real goloop node cannot run here, or undefined when they can. Only a
 * machine that has neither the binary nor its source skips them: where the source is, a
 * missing binary is a failed build, and the tests fail.
 */
export function goloopMissing(): string | undefined {
  if (existsSync(goloopBin()) || existsSync(goloopTarball())) return undefined;
  return `no goloop binary at ${goloopBin()} and no source tarball at ${goloopTarball()} to build it from`;
}
