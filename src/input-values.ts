/**
 * The checks of single input values, each a pure function that returns the value or throws an
 * InputError saying how to fix it: booleans, whole numbers, durations, sizes, paths on the
 * node, S3 key prefixes, IPv4 addresses. settings.ts puts them together.
 */
import { Inputs } from './constants.js';
import { formatDurationInput, parseDuration, parseSize } from './duration.js';
import { InputError } from './errors.js';

/**
 * The longest 'max-downtime' and 'health-timeout': 5 days, the longest that a GitHub Actions
 * job may run (on a self-hosted runner); no run can use more.
 */
export const MAX_DURATION_SECONDS = 5 * 86_400;

/** The largest 'disk-margin': 5 TiB, the size of the largest S3 object. */
export const MAX_DISK_MARGIN_BYTES = 5 * 1024 ** 4;

export function parseBoolean(name: string, text: string, fallback: boolean): boolean {
  if (text === '') return fallback;
  if (['true', 'True', 'TRUE'].includes(text)) return true;
  if (['false', 'False', 'FALSE'].includes(text)) return false;
  throw new InputError(`Input '${name}' is '${text}'. Use 'true' or 'false'.`);
}

export function parseInteger(
  name: string,
  text: string,
  fallback: number,
  min: number,
  max: number,
): number {
  if (text === '') return fallback;
  const value = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new InputError(`Input '${name}' is '${text}'. Use a whole number from ${min} to ${max}.`);
  }
  return value;
}

/** A duration in whole seconds, from `min` to MAX_DURATION_SECONDS. */
export function duration(name: Inputs, text: string, min: number): number {
  const seconds = parseDuration(name, text);
  if (seconds < min || seconds > MAX_DURATION_SECONDS) {
    throw new InputError(
      `Input '${name}' is '${text}'. Use a duration from ${formatDurationInput(min)} to ${formatDurationInput(MAX_DURATION_SECONDS)}.`,
    );
  }
  return seconds;
}

export function diskMargin(text: string): number {
  const bytes = parseSize(Inputs.DiskMargin, text);
  if (bytes > MAX_DISK_MARGIN_BYTES) {
    throw new InputError(`Input 'disk-margin' is '${text}'. Use a size from 0 to 5TiB.`);
  }
  return bytes;
}

export function absolutePath(name: Inputs, text: string): string {
  if (!text.startsWith('/') || text.includes('\n') || text.includes('\0')) {
    throw new InputError(`Input '${name}' is '${text}'. Use an absolute path on the node.`);
  }
  const normal = text.replace(/\/+$/, '') || '/';
  if (normal === '/') {
    throw new InputError(`Input '${name}' is '${text}', which cannot be a node's directory.`);
  }
  // The path is compared, quoted and joined as written: each segment must name a directory.
  const segments = normal.slice(1).split('/');
  if (segments.some((p) => p === '' || p === '.' || p === '..')) {
    throw new InputError(
      `Input '${name}' is '${text}'. Write the directory's path without '.', '..' or '//' segments, such as '/app/prep'.`,
    );
  }
  return normal;
}

/** No two of the key prefixes may be equal or one inside another: retention would delete the other's keys. */
export function separatePrefixes(prefixes: Array<[Inputs, string]>): void {
  const inside = (outer: string, inner: string): boolean =>
    inner === outer || inner.startsWith(`${outer}/`);
  for (const [i, [nameA, a]] of prefixes.entries()) {
    for (const [nameB, b] of prefixes.slice(i + 1)) {
      if (!inside(a, b) && !inside(b, a)) continue;
      const relation =
        a === b
          ? 'are the same'
          : inside(a, b)
            ? `overlap: '${b}' lies inside '${a}'`
            : `overlap: '${a}' lies inside '${b}'`;
      throw new InputError(
        `Inputs '${nameA}' ('${a}') and '${nameB}' ('${b}') ${relation}. ` +
          `Snapshots, permanent copies and manifests need separate prefixes, or retention and listings of one reach the others ` +
          `(the defaults are '{service}', 'Permanent/{service}' and '_prep-snapshot').`,
      );
    }
  }
}

export function keyPrefix(name: Inputs, text: string): string {
  const value = text.replace(/^\/+|\/+$/g, '');
  if (
    !value ||
    !/^[A-Za-z0-9_.\-/]+$/.test(value) ||
    value.split('/').some((p) => p === '' || p === '.' || p === '..')
  ) {
    throw new InputError(
      `Input '${name}' is '${text}'. Use an S3 key prefix such as 'PRep' or 'Permanent/PRep'.`,
    );
  }
  return value;
}

export function isIpv4(text: string): boolean {
  const parts = text.split('.');
  return parts.length === 4 && parts.every((p) => /^(0|[1-9]\d{0,2})$/.test(p) && Number(p) <= 255);
}
