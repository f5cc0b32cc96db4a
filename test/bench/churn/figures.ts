/** What the churn part records. */
import type { GoloopBackupFigures, GoloopRestoreFigures, Who } from '../goloop/figures.js';
import type { OntoSourceFigures } from '../goloop/ours.js';
import type { LoadFigures, NewTables } from './load.js';

/** The delay each way between the runner and the node for the restores across a link. */
export const ACROSS_MS = 20;

export const ACROSS_BACKUPS = ['1 connection', 'default'] as const;
export type AcrossBackup = (typeof ACROSS_BACKUPS)[number];

export interface ChurnFigures {
  sizeGib: number;
  /** The cached node's database (table files, and the db dir on disk). */
  tableBytes?: number;
  tableFiles?: number;
  dbBytes?: number;
  /** The full backups of the node, one after another: theirs, ours as an archive, ours as a tree. */
  full: Partial<Record<Who, GoloopBackupFigures>>;
  load?: LoadFigures;
  /** The second tree's db dir against the full one's (their manifests): table files it did not hold. */
  atSecond?: NewTables;
  /** After the churn: ours as a tree, as an archive, then theirs (a full backup again). */
  second: Partial<Record<Who, GoloopBackupFigures>>;
  /** The second tree restored onto the node it came from, which ran on after it. */
  ontoSource?: OntoSourceFigures;
  /** The second snapshot restored onto fresh node dirs as a tree and as an archive: the median runs. */
  restores: Partial<Record<Who, GoloopRestoreFigures>>;
  /** The same, once each, with 20 ms each way between the runner and the node (SSH through a proxy). */
  restoresAcross?: Partial<Record<Who, GoloopRestoreFigures>>;
  /**
   * A first tree backup of a fresh copy of the node across the same link, once over one SSH
   * connection (`ssh-connections: 1`) and once with every input at its default.
   */
  backupsAcross?: Partial<Record<AcrossBackup, GoloopBackupFigures>>;
  /** Why ours did not run, when it did not. */
  oursMissing?: string;
  /** What stopped the part. */
  error?: string;
}
