/** What the goloop part records. */
import type { ActionBed } from '../kit.js';

export interface GoloopBenchContext extends ActionBed {
  keep: boolean;
}

export interface GoloopBackupFigures {
  name: 'theirs' | 'ours';
  ok: boolean;
  error?: string;
  skipped?: string;
  downtimeSeconds?: number;
  /** Theirs: chain stop sent to chain start sent (its marks); ours: its downtime-seconds output. */
  downtimeSelfReported?: number;
  /** Blocks read to find the gap, and the height of the last block before it. */
  gapBlocks?: number;
  lastHeightBeforeStop?: number;
  stopToListedSeconds?: number;
  /** Theirs: its own marks (chain stop sent to last part uploaded); ours: its summary row. */
  stopToListedSelfReported?: number;
  wallSeconds: number;
  runnerPeakRssBytes?: number;
  hostExtraDiskBytes?: number;
  archiveBytes?: number;
  parts?: number;
  /** Theirs: seconds from the stop sent to each mark. */
  phases?: Record<string, number>;
  /** What a restore needs: the keys (theirs: the parts in order; ours: the snapshot key). */
  keys?: string[];
  height?: number;
}

export interface GoloopRestoreFigures {
  name: 'theirs' | 'ours';
  ok: boolean;
  error?: string;
  skipped?: string;
  wallSeconds: number;
  hostExtraDiskBytes?: number;
  restoredBytes?: number;
  runnerPeakRssBytes?: number;
  phases?: Record<string, number>;
}

export interface GoloopSizeFigures {
  sizeGib: number;
  tableBytes: number;
  tableFiles: number;
  dbBytes: number;
  backups: { theirs?: GoloopBackupFigures; ours?: GoloopBackupFigures };
  restores: { theirs?: GoloopRestoreFigures; ours?: GoloopRestoreFigures };
}

export interface GoloopFigures {
  sizes: GoloopSizeFigures[];
  /** Why ours did not run, when it did not. */
  oursMissing?: string;
  /** What stopped the part (a size that could not be grown, goloop missing). */
  error?: string;
}
