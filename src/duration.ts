import { InputError } from './errors.js';

const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

/**
 * Parses `90`, `90s`, `15m`, `2h`, `1h30m`, `1.5h`, `1d` into a whole number of seconds;
 * anything else (a fraction of a second, a number too large to be exact) is an error.
 */
export function parseDuration(name: string, text: string): number {
  const value = text.trim();
  const parts = /^\d+$/.test(value)
    ? [[value, value, 's']]
    : [...value.matchAll(/(\d+(?:\.\d+)?)([smhd])/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== value) {
    throw new InputError(
      `Input '${name}' is '${text}', which is not a duration. Use seconds ('90') or units s, m, h, d ('15m', '1h30m').`,
    );
  }
  const sum = parts.reduce(
    (total, p) => total + Number(p[1]) * (UNIT_SECONDS[p[2] as string] as number),
    0,
  );
  // '1.1h' is 3960 s, though binary fractions make it 3960.0000000000005.
  const seconds = Math.round(sum * 1e6) / 1e6;
  if (!Number.isSafeInteger(seconds)) {
    throw new InputError(
      Number.isInteger(seconds) || !Number.isFinite(seconds)
        ? `Input '${name}' is '${text}', which is too long a duration.`
        : `Input '${name}' is '${text}', which is not a whole number of seconds.`,
    );
  }
  return seconds;
}

/** A number of seconds as an input would say it: `10s`, `30m`, `5d`, `1h30m`. */
export function formatDurationInput(seconds: number): string {
  let rest = seconds;
  let text = '';
  for (const [unit, size] of Object.entries(UNIT_SECONDS).reverse()) {
    const n = Math.floor(rest / size);
    if (n > 0) text += `${n}${unit}`;
    rest -= n * size;
  }
  return text || '0s';
}

const SIZE_UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  kb: 1000,
  kib: 1024,
  m: 1024 ** 2,
  mb: 1000 ** 2,
  mib: 1024 ** 2,
  g: 1024 ** 3,
  gb: 1000 ** 3,
  gib: 1024 ** 3,
  t: 1024 ** 4,
  tb: 1000 ** 4,
  tib: 1024 ** 4,
};

/** Parses `64MiB`, `100MB`, `5242880` into bytes (a whole number that is exact). */
export function parseSize(name: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(text.trim());
  const factor = m ? SIZE_UNITS[(m[2] as string).toLowerCase()] : undefined;
  if (!m || factor === undefined) {
    throw new InputError(
      `Input '${name}' is '${text}', which is not a size. Use bytes or units such as '64MiB'.`,
    );
  }
  const bytes = Math.round(Number(m[1]) * factor);
  if (!Number.isSafeInteger(bytes)) {
    throw new InputError(`Input '${name}' is '${text}', which is too large a size.`);
  }
  return bytes;
}
