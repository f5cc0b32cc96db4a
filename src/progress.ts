/** A progress line on a timer during a long transfer: bytes, rate and an estimate of the time left. */
import * as core from '@actions/core';
import { formatBytes, formatDuration, formatRate } from './format.js';

export class Progress {
  private timer: NodeJS.Timeout | undefined;
  private readonly started = performance.now();
  /** Bytes sent (compressed). */
  sent = 0;
  /** Bytes of the source read so far, when the remote side reports it. */
  read = 0;

  constructor(
    private readonly label: string,
    private readonly totalSource: number,
    intervalMs = 10_000,
  ) {
    this.timer = setInterval(() => core.info(this.line()), intervalMs);
    this.timer.unref();
  }

  line(): string {
    const seconds = (performance.now() - this.started) / 1000;
    const parts = [
      `${this.label}: ${formatBytes(this.sent)} sent, ${formatRate(this.sent, seconds)}`,
    ];
    if (this.totalSource > 0 && this.read > 0) {
      const fraction = Math.min(1, this.read / this.totalSource);
      const eta = fraction > 0 ? (seconds / fraction) * (1 - fraction) : Number.NaN;
      parts.push(
        `${(fraction * 100).toFixed(0)}% of ${formatBytes(this.totalSource)} read`,
        `ETA ${formatDuration(eta)}`,
      );
    }
    return parts.join(', ');
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}

/** Files and bytes done, with a rate and an estimate of the time left, on a timer. */
export class FileProgress {
  private readonly started = performance.now();
  private readonly timer: NodeJS.Timeout;
  files = 0;
  bytes = 0;

  constructor(
    private readonly label: string,
    private totalFiles: number,
    private totalBytes: number,
    intervalMs = 10_000,
    say: Say = (line) => core.info(line),
  ) {
    this.timer = setInterval(() => say(this.line()), intervalMs);
    this.timer.unref();
  }

  /** More to move than first counted: `files` more files, of `bytes` more bytes. */
  grow(files: number, bytes: number): void {
    this.totalFiles += files;
    this.totalBytes += bytes;
  }

  line(): string {
    const seconds = (performance.now() - this.started) / 1000;
    const fraction = this.totalBytes > 0 ? this.bytes / this.totalBytes : 1;
    const eta = fraction > 0 ? (seconds / fraction) * (1 - fraction) : Number.NaN;
    return (
      `${this.label}: ${this.files}/${this.totalFiles} files, ${formatBytes(this.bytes)} of ` +
      `${formatBytes(this.totalBytes)}, ${formatRate(this.bytes, seconds)}, ETA ${formatDuration(eta)}`
    );
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

/** Where a step's lines go: the log, or a HeldLog. */
export type Say = (line: string) => void;

/**
 * The lines of a step that begins before its own group can open (a tree's send, begun while
 * the node starts and its group is open): kept until `open`, then said as they come.
 */
export class HeldLog {
  private held: string[] | undefined = [];

  readonly say: Say = (line) => {
    if (this.held) this.held.push(line);
    else core.info(line);
  };

  open(): void {
    const lines = this.held ?? [];
    this.held = undefined;
    for (const line of lines) core.info(line);
  }
}
