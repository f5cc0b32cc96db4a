import { InputError } from './errors.js';

const UNIT_SECONDS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86400 };

/** Parses `90`, `90s`, `15m`, `2h`, `1h30m`, `1d` into seconds; anything else is an error. */
export function parseDuration(name: string, text: string): number {
  const value = text.trim();
  if (/^\d+$/.test(value)) return Number(value);
  const parts = [...value.matchAll(/(\d+(?:\.\d+)?)([smhd])/g)];
  if (parts.length === 0 || parts.map((p) => p[0]).join('') !== value) {
    throw new InputError(
      `Input '${name}' is '${text}', which is not a duration. Use seconds ('90') or units s, m, h, d ('15m', '1h30m').`,
    );
  }
  return parts.reduce((sum, p) => sum + Number(p[1]) * (UNIT_SECONDS[p[2] as string] as number), 0);
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
};

/** Parses `64MiB`, `100MB`, `5242880` into bytes. */
export function parseSize(name: string, text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(text.trim());
  const factor = m ? SIZE_UNITS[(m[2] as string).toLowerCase()] : undefined;
  if (!m || factor === undefined) {
    throw new InputError(
      `Input '${name}' is '${text}', which is not a size. Use bytes or units such as '64MiB'.`,
    );
  }
  return Math.round(Number(m[1]) * factor);
}
