/** Pinning the node's SSH host key: by SHA256 fingerprint or by a known_hosts / public key line. */
import { createHash, createHmac } from 'node:crypto';
import { InputError } from '../errors.js';

export type HostKeyPin =
  { kind: 'fingerprint'; fingerprint: string } | { kind: 'key'; keyType: string; blob: Buffer };

/** The host that the pins are for: a known_hosts line must name it. */
export interface PinTarget {
  host: string;
  port: number;
}

/**
 * The key types that can be pinned, each with the host key algorithms that make a server
 * present a key of that type, in the order they are offered (ssh2's own order).
 */
const ALGORITHMS_OF_TYPE: Readonly<Record<string, readonly string[]>> = {
  'ssh-ed25519': ['ssh-ed25519'],
  'ecdsa-sha2-nistp256': ['ecdsa-sha2-nistp256'],
  'ecdsa-sha2-nistp384': ['ecdsa-sha2-nistp384'],
  'ecdsa-sha2-nistp521': ['ecdsa-sha2-nistp521'],
  'ssh-rsa': ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'],
};

/** Every host key algorithm the connection can check a key of, most preferred first. */
export const HOST_KEY_ALGORITHMS: readonly string[] = Object.values(ALGORITHMS_OF_TYPE).flat();

/** The host key algorithms under which a server presents its key of `keyType`. */
export function algorithmsOfKeyType(keyType: string): readonly string[] {
  return ALGORITHMS_OF_TYPE[keyType] ?? [];
}

/**
 * Accepts one pin a line: `SHA256:...`, a public key line (`type base64 [comment]`) or a
 * known_hosts line (`names type base64 [comment]`) whose names match the target as OpenSSH
 * matches them: `host` on port 22, `[host]:port` on any other, a comma-separated list of
 * patterns with `*`, `?` and `!` negation, or a hashed `|1|salt|hash` name.
 */
export function parseHostKeyPins(text: string, target: PinTarget): HostKeyPin[] {
  const pins: HostKeyPin[] = [];
  const lines = text.split('\n');
  for (const [index, raw] of lines.entries()) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const where = lines.length > 1 ? `Input 'host-key' line ${index + 1}` : `Input 'host-key'`;
    if (line.startsWith('SHA256:')) {
      const fingerprint = line.replace(/=+$/, '');
      if (!/^SHA256:[A-Za-z0-9+/]{43}$/.test(fingerprint)) {
        throw new InputError(`${where} is a malformed fingerprint: '${line}'.`);
      }
      pins.push({ kind: 'fingerprint', fingerprint });
      continue;
    }
    const words = line.split(/\s+/);
    const first = words[0] as string;
    if (first === '@revoked') {
      throw new InputError(
        `${where} is a '@revoked' line: it names a key that must never be trusted, so it is no pin. ` +
          `Pin the node's current key instead.`,
      );
    }
    if (first === '@cert-authority') {
      throw new InputError(
        `${where} is a '@cert-authority' line: host certificates are not supported. ` +
          `Pin the node's own host key ('ssh-keyscan HOST' prints it).`,
      );
    }
    if (first.startsWith('@')) {
      throw new InputError(
        `${where} starts with the marker '${first}', which is not accepted. Pin a key without a marker.`,
      );
    }
    // `names type base64` or `type base64`: a key type never looks like base64 (it has a '-').
    const names = words.length >= 2 && looksLikeKeyType(words[1] as string) ? first : undefined;
    const [keyType, base64] = names === undefined ? words : words.slice(1);
    if (!keyType || !looksLikeKeyType(keyType) || !base64 || !/^[A-Za-z0-9+/]+=*$/.test(base64)) {
      throw new InputError(
        `${where} ('${line}') is neither a 'SHA256:...' fingerprint nor a known_hosts line.`,
      );
    }
    const blob = Buffer.from(base64, 'base64');
    if (blobKeyType(blob) !== keyType) {
      throw new InputError(`${where} holds a key whose type is not '${keyType}'.`);
    }
    if (!(keyType in ALGORITHMS_OF_TYPE)) {
      throw new InputError(
        `${where} holds a '${keyType}' key, which cannot be checked here. ` +
          `Pin the node's ${Object.keys(ALGORITHMS_OF_TYPE).join(', ')} key.`,
      );
    }
    if (names !== undefined && !knownHostsNamesMatch(names, target)) {
      const expected = knownHostsName(target);
      const hint =
        target.port !== 22 &&
        !names.startsWith('|') &&
        knownHostsNamesMatch(names, { ...target, port: 22 })
          ? ` On port ${target.port}, known_hosts names the host '${expected}', as 'ssh-keyscan -p ${target.port} ${target.host}' prints it.`
          : '';
      const named = names.startsWith('|1|') ? 'a hashed host name' : `'${names}'`;
      throw new InputError(
        `${where} names ${named}, not '${expected}' (input 'host' and 'port').${hint} ` +
          `Pin the key of this host: a line from 'ssh-keyscan${target.port === 22 ? '' : ` -p ${target.port}`} ${target.host}', ` +
          `its 'SHA256:...' fingerprint, or the bare 'type base64' key.`,
      );
    }
    pins.push({ kind: 'key', keyType, blob });
  }
  if (pins.length === 0) throw new InputError(`Input 'host-key' holds no key.`);
  return pins;
}

function looksLikeKeyType(word: string): boolean {
  return /^(ssh-|ecdsa-|sk-)[A-Za-z0-9@.-]+$/.test(word);
}

/** The name OpenSSH looks the host up by in known_hosts. */
export function knownHostsName(target: PinTarget): string {
  return target.port === 22 ? target.host : `[${target.host}]:${target.port}`;
}

/** Whether a known_hosts names field applies to the target, as OpenSSH decides it. */
export function knownHostsNamesMatch(names: string, target: PinTarget): boolean {
  const name = knownHostsName(target);
  if (names.startsWith('|1|')) {
    // One hashed name: |1|base64(salt)|base64(HMAC-SHA1(salt, name)).
    const [, , salt, hash] = names.split('|');
    if (!salt || !hash) return false;
    return [name, name.toLowerCase()].some(
      (n) => createHmac('sha1', Buffer.from(salt, 'base64')).update(n).digest('base64') === hash,
    );
  }
  // match_hostname: lower case; a negated pattern that matches excludes the line.
  const host = name.toLowerCase();
  let positive = false;
  for (const raw of names.split(',')) {
    const negated = raw.startsWith('!');
    const pattern = (negated ? raw.slice(1) : raw).toLowerCase();
    if (!globMatch(host, pattern)) continue;
    if (negated) return false;
    positive = true;
  }
  return positive;
}

/** OpenSSH's match_pattern: `*` any run of characters, `?` any one, all else literal. */
function globMatch(text: string, pattern: string): boolean {
  const source = pattern
    .split('')
    .map((c) => (c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[\\^$.|+()[\]{}]/g, '\\$&')))
    .join('');
  return new RegExp(`^${source}$`, 's').test(text);
}

export function fingerprintOf(blob: Buffer): string {
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

/** The key type named at the start of an SSH public key blob. */
export function blobKeyType(blob: Buffer): string | undefined {
  if (blob.length < 4) return undefined;
  const length = blob.readUInt32BE(0);
  if (length > 64 || 4 + length > blob.length) return undefined;
  return blob.subarray(4, 4 + length).toString('latin1');
}

export function matchesPins(blob: Buffer, pins: HostKeyPin[]): boolean {
  const fingerprint = fingerprintOf(blob);
  return pins.some((pin) =>
    pin.kind === 'fingerprint' ? pin.fingerprint === fingerprint : pin.blob.equals(blob),
  );
}

/** A known_hosts line for OpenSSH that names exactly the key that was verified. */
export function knownHostsLine(host: string, port: number, blob: Buffer): string {
  return `${knownHostsName({ host, port })} ${blobKeyType(blob)} ${blob.toString('base64')}`;
}

/**
 * The host key algorithms to offer first. A fingerprint does not say its key's type, so
 * with one among the pins every checkable algorithm is offered; with key lines only, those
 * of their types. The connection then offers what is left, type by type, until the server
 * presents a pinned key (see session.ts).
 */
export function pinnedAlgorithms(pins: HostKeyPin[]): string[] {
  if (pins.some((p) => p.kind === 'fingerprint')) return [...HOST_KEY_ALGORITHMS];
  const types = new Set(pins.flatMap((p) => (p.kind === 'key' ? [p.keyType] : [])));
  return HOST_KEY_ALGORITHMS.filter((a) =>
    [...types].some((t) => algorithmsOfKeyType(t).includes(a)),
  );
}
