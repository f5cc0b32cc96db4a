/** Pinning the node's SSH host key: by SHA256 fingerprint or by a known_hosts / public key line. */
import { createHash } from 'node:crypto';
import { InputError } from '../errors.js';

export type HostKeyPin =
  { kind: 'fingerprint'; fingerprint: string } | { kind: 'key'; keyType: string; blob: Buffer };

/** Accepts one pin a line: `SHA256:...`, `[host]:port type base64`, `host type base64` or `type base64`. */
export function parseHostKeyPins(text: string): HostKeyPin[] {
  const pins: HostKeyPin[] = [];
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    if (line.startsWith('SHA256:')) {
      const fingerprint = line.replace(/=+$/, '');
      if (!/^SHA256:[A-Za-z0-9+/]{43}$/.test(fingerprint)) {
        throw new InputError(`Input 'host-key' has a malformed fingerprint: '${line}'.`);
      }
      pins.push({ kind: 'fingerprint', fingerprint });
      continue;
    }
    const words = line.split(/\s+/);
    const typeIndex = words.findIndex((w) => /^(ssh-|ecdsa-|sk-)/.test(w));
    const keyType = typeIndex >= 0 ? words[typeIndex] : undefined;
    const base64 = typeIndex >= 0 ? words[typeIndex + 1] : undefined;
    if (!keyType || !base64 || !/^[A-Za-z0-9+/]+=*$/.test(base64)) {
      throw new InputError(
        `Input 'host-key' line '${line}' is neither a 'SHA256:...' fingerprint nor a known_hosts line.`,
      );
    }
    const blob = Buffer.from(base64, 'base64');
    if (blobKeyType(blob) !== keyType) {
      throw new InputError(
        `Input 'host-key' line '${line}' holds a key whose type is not '${keyType}'.`,
      );
    }
    pins.push({ kind: 'key', keyType, blob });
  }
  if (pins.length === 0) throw new InputError(`Input 'host-key' holds no key.`);
  return pins;
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
  const name = port === 22 ? host : `[${host}]:${port}`;
  return `${name} ${blobKeyType(blob)} ${blob.toString('base64')}`;
}

/** The host key algorithms to offer, so that the server presents the pinned kind of key. */
export function pinnedAlgorithms(pins: HostKeyPin[]): string[] | undefined {
  const types = pins.flatMap((p) => (p.kind === 'key' ? [p.keyType] : []));
  if (types.length === 0 || types.length !== pins.length) return undefined;
  const algorithms = new Set<string>();
  for (const t of types) {
    if (t === 'ssh-rsa')
      ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'].forEach((a) => algorithms.add(a));
    else algorithms.add(t);
  }
  return [...algorithms];
}
