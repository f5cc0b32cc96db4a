/** What the goloop part records (and the churn part, which runs the same procedures). */
import type { ActionBed } from '../kit.js';

export interface GoloopBenchContext extends ActionBed {
  keep: boolean;
}

/** The action's two formats: a tree (the goloop default) or one tar.zst archive. */
export const OURS_FORMATS = ['tree', 'archive'] as const;
export type OursFormat = (typeof OURS_FORMATS)[number];

/** Who ran: icon2-docker's procedure, or the action in one of its formats. */
export type Who = 'theirs' | `ours ${OursFormat}`;

export interface GoloopBackupFigures {
  name: Who;
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
  /** What is stored: the archive (theirs: every part), or every file of the tree. */
  archiveBytes?: number;
  /** What went to S3: an archive's whole size; a tree's files not stored before (its manifest's `sent`). */
  movedBytes?: number;
  movedFiles?: number;
  parts?: number;
  /**
   * Seconds from the stop to each mark: theirs, by its own marks (from the stop sent); a tree, by
   * the bucket's LastModified (from the last block before the gap).
   */
  phases?: Record<string, number>;
  /** A tree: its manifest's timings (seconds: downtime, hash on the host, upload). */
  timings?: Record<string, number>;
  /** Where it is stored (ours: the restore's `prefix`). */
  prefix?: string;
  /** What a restore needs: the keys (theirs: the parts in order; ours: the snapshot key). */
  keys?: string[];
  height?: number;
}

export interface GoloopRestoreFigures {
  name: Who;
  ok: boolean;
  error?: string;
  skipped?: string;
  wallSeconds: number;
  hostExtraDiskBytes?: number;
  restoredBytes?: number;
  runnerPeakRssBytes?: number;
  phases?: Record<string, number>;
  /** Every run's wall time, in order, when there were several; the figures are the median run's. */
  runs?: number[];
}

export interface GoloopSizeFigures {
  sizeGib: number;
  tableBytes: number;
  tableFiles: number;
  dbBytes: number;
  backups: Partial<Record<Who, GoloopBackupFigures>>;
  restores: Partial<Record<Who, GoloopRestoreFigures>>;
}

export interface GoloopFigures {
  sizes: GoloopSizeFigures[];
  /** Why ours did not run, when it did not. */
  oursMissing?: string;
  /** What stopped the part (a size that could not be grown, goloop missing). */
  error?: string;
}
