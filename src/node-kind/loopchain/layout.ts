/**
 * What is specific to an ICON 1 (loopchain) node: which paths are archived, the per-IP
 * directory and its placeholder, where the block height comes from, which files never
 * change once written. A second kind of node (goloop) is another module of this shape.
 */
import { HostError } from '../../errors.js';
import { tableFileNumber } from '../leveldb-manifest.js';

export interface NodeKind {
  name: string;
  /** Paths relative to the data dir that make up a snapshot. */
  roots: string[];
  /** The directory whose name carries the node's identity, relative to the data dir. */
  identityParent: string;
  identityGlob: string;
  identityPattern: RegExp;
  /** The name the identity directory takes inside an archive. */
  placeholder: string;
  identityDir(ip: string): string;
  /** Files that are never modified once written (hard-linking them is safe). */
  isImmutable(fileName: string): boolean;
  /** The block height in the body of a health answer. */
  parseHeight(body: string): number;
}

export const loopchain: NodeKind = {
  name: 'loopchain',
  roots: ['.score_data', '.storage'],
  identityParent: '.storage',
  identityGlob: 'db_*:7100_icon_dex',
  identityPattern: /^db_(.+):7100_icon_dex$/,
  placeholder: 'db_CHANGEIP:7100_icon_dex',
  identityDir: (ip) => `db_${ip}:7100_icon_dex`,
  isImmutable: (name) => tableFileNumber(name) !== undefined,
  parseHeight(body) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(body);
    } catch {
      throw new HostError(`The peer API did not answer with JSON: '${body.slice(0, 200)}'.`);
    }
    const height = (parsed as { block_height?: unknown }).block_height;
    if (typeof height !== 'number' || !Number.isInteger(height) || height < 0) {
      throw new HostError(`The peer API's answer has no block_height: '${body.slice(0, 200)}'.`);
    }
    return height;
  },
};

/** The single identity directory among `names`; none or several is an error the operator can fix. */
export function pickIdentityDir(kind: NodeKind, names: string[], dataDir: string): string {
  const matches = names.filter((n) => kind.identityPattern.test(n) && n !== kind.placeholder);
  if (matches.length === 1) return matches[0] as string;
  const where = `${dataDir}/${kind.identityParent}`;
  if (matches.length === 0) {
    throw new HostError(
      `${where} holds no ${kind.identityGlob} directory: is 'data-dir' the node's data directory?`,
    );
  }
  throw new HostError(
    `${where} holds ${matches.length} directories named ${kind.identityGlob} (${matches.join(', ')}): ` +
      `keep only the one of this node's IP, then run again.`,
  );
}
