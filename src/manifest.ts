/** The JSON manifest stored for each archive: what a restore and a verify check against. */
import type { KindFacts } from './node-kind/host.js';
import type { Compression } from './settings.js';

export interface Manifest {
  format: 'prep-snapshot/1';
  key: string;
  /** The backup_list entry: `YYYYMMDD/FILE`. */
  entry: string;
  nodeKind: string;
  blockHeight: number;
  sha256: string;
  compressedBytes: number;
  uncompressedBytes: number;
  /** The files the archive extracts to. */
  files: number;
  compression: Compression;
  compressor: string;
  compressionLevel: number;
  consistency: 'hardlink' | 'stop';
  /**
   * The table files that went up while the node ran, as the archive's first part: their tar
   * bytes, the archive's bytes they took, and how many of them the node removed before the stop
   * (in the archive still, counted in `files`; the database deletes them as it opens).
   */
  ahead?: { files: number; tarBytes: number; bytes: number; removed: number };
  /** loopchain: the directory name that the restore renames to `db_{IP}:7100_icon_dex`. */
  placeholder?: string;
  /** What the node's kind recorded of the snapshot (see `NodeHost.facts`). */
  facts?: KindFacts;
  source: { host: string; dataDir: string; identity?: string };
  createdAt: string;
  actionVersion: string;
  timings: Record<string, number>;
}
