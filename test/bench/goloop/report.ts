/** The goloop part's tables: theirs against ours at each size, and the targets. */
import { fmtB, fmtS, MiB, ratio, table, verdict } from '../kit.js';
import type {
  GoloopBackupFigures,
  GoloopFigures,
  GoloopRestoreFigures,
  GoloopSizeFigures,
} from './figures.js';

export function goloopReport(figures: GoloopFigures): string {
  const out: string[] = [];
  for (const s of figures.sizes) {
    out.push(
      '',
      `goloop v1.4.4, ${s.sizeGib} GiB database (${fmtB(s.tableBytes)} in ${s.tableFiles} table files, ${fmtB(s.dbBytes)} on disk): icon2-docker's backup_v2.py procedure against the action`,
    );
    const t = s.backups.theirs;
    const o = s.backups.ours;
    type Any = GoloopBackupFigures | GoloopRestoreFigures;
    const cell = <T extends Any>(x: T | undefined, f: (v: T) => string): string =>
      !x ? 'not run' : x.skipped !== undefined ? 'not run' : !x.ok ? 'FAILED' : f(x);
    const both = <T extends Any>(x: T | undefined, y: T | undefined): boolean =>
      Boolean(x?.ok && y?.ok);
    const brow = (
      label: string,
      f: (b: GoloopBackupFigures) => string,
      num?: (b: GoloopBackupFigures) => number | undefined,
    ): string[] => [
      label,
      cell(t, f),
      cell(o, f),
      num && both(t, o) && t && o ? ratio(num(o), num(t)) : '',
    ];
    out.push(
      table([
        ['backup', 'theirs', 'ours', 'ours/theirs'],
        brow(
          'node downtime (block gap)',
          (b) => fmtS(b.downtimeSeconds),
          (b) => b.downtimeSeconds,
        ),
        brow('  (self-reported)', (b) => fmtS(b.downtimeSelfReported)),
        brow(
          'stop to listed',
          (b) => fmtS(b.stopToListedSeconds),
          (b) => b.stopToListedSeconds,
        ),
        brow('  (self-reported)', (b) => fmtS(b.stopToListedSelfReported)),
        brow(
          'wall time (whole run)',
          (b) => fmtS(b.wallSeconds),
          (b) => b.wallSeconds,
        ),
        brow('runner peak RSS', (b) => (b.name === 'theirs' ? 'n/a' : fmtB(b.runnerPeakRssBytes))),
        brow('host extra disk (du)', (b) => fmtB(b.hostExtraDiskBytes)),
        brow(
          'archive',
          (b) => `${fmtB(b.archiveBytes)}, ${b.parts ?? '?'} part${b.parts === 1 ? '' : 's'}`,
          (b) => b.archiveBytes,
        ),
      ]),
    );
    if (t?.ok && t.phases)
      out.push(
        `theirs, seconds after the stop: ${Object.entries(t.phases)
          .map(([k, v]) => `${k} ${v.toFixed(2)}`)
          .join(', ')}`,
      );
    const rt = s.restores.theirs;
    const ro = s.restores.ours;
    out.push(
      '',
      table([
        ['restore (to a new block)', 'theirs', 'ours', 'ours/theirs'],
        [
          'wall time',
          cell(rt, (r) => fmtS(r.wallSeconds)),
          cell(ro, (r) => fmtS(r.wallSeconds)),
          both(rt, ro) ? ratio(ro?.wallSeconds, rt?.wallSeconds) : '',
        ],
        [
          'host peak extra disk (du)',
          cell(rt, (r) => fmtB(r.hostExtraDiskBytes)),
          cell(ro, (r) => fmtB(r.hostExtraDiskBytes)),
          '',
        ],
        [
          'restored node dir',
          cell(rt, (r) => fmtB(r.restoredBytes)),
          cell(ro, (r) => fmtB(r.restoredBytes)),
          '',
        ],
        ['runner peak RSS', 'n/a', cell(ro, (r) => fmtB(r.runnerPeakRssBytes)), ''],
      ]),
    );
    if (rt?.ok && rt.phases)
      out.push(
        `theirs, seconds after the start: ${Object.entries(rt.phases)
          .map(([k, v]) => `${k} ${v.toFixed(2)}`)
          .join(', ')}`,
      );
    for (const x of [t, o, rt, ro])
      if (x && !x.ok && x.skipped === undefined)
        out.push(`FAILED ${x.name} (${s.sizeGib} GiB): ${x.error}`);
  }
  if (figures.oursMissing) out.push('', `ours not run: ${figures.oursMissing}`);
  if (figures.error) out.push('', `goloop part FAILED: ${figures.error}`);

  // Targets.
  const tgt: string[][] = [['target', 'figure', 'verdict']];
  const sizes = figures.sizes;
  for (const s of sizes) {
    const t = s.backups.theirs;
    const o = s.backups.ours;
    if (o?.ok) {
      tgt.push([
        `${s.sizeGib} GiB: downtime <= 2 s`,
        fmtS(o.downtimeSeconds),
        verdict(o.downtimeSeconds === undefined ? undefined : o.downtimeSeconds <= 2),
      ]);
      const r =
        t?.ok && t.stopToListedSeconds && o.stopToListedSeconds !== undefined
          ? o.stopToListedSeconds / t.stopToListedSeconds
          : undefined;
      tgt.push([
        `${s.sizeGib} GiB: stop to listed <= 0.3x theirs`,
        r === undefined ? '-' : `${r.toFixed(3)}x`,
        verdict(r === undefined ? undefined : r <= 0.3),
      ]);
      tgt.push([
        `${s.sizeGib} GiB: runner peak RSS <= 200 MiB`,
        fmtB(o.runnerPeakRssBytes),
        verdict(o.runnerPeakRssBytes === undefined ? undefined : o.runnerPeakRssBytes <= 200 * MiB),
      ]);
    }
    const rt = s.restores.theirs;
    const ro = s.restores.ours;
    if (rt?.ok && ro?.ok) {
      const r = ro.wallSeconds / rt.wallSeconds;
      tgt.push([`${s.sizeGib} GiB: restore <= 0.7x theirs`, `${r.toFixed(3)}x`, verdict(r <= 0.7)]);
    }
  }
  // Downtime against the size: ours flat, theirs in proportion.
  const first = sizes[0];
  const last = sizes[sizes.length - 1];
  if (first && last && first !== last) {
    const d = (s: GoloopSizeFigures, k: 'theirs' | 'ours'): number | undefined =>
      s.backups[k]?.ok ? s.backups[k]?.downtimeSeconds : undefined;
    const grow = (k: 'theirs' | 'ours'): string => {
      const a = d(first, k);
      const b = d(last, k);
      return a === undefined || b === undefined
        ? '-'
        : `${fmtS(a)} -> ${fmtS(b)} (${ratio(b, a)} for ${ratio(last.tableBytes, first.tableBytes)} the data)`;
    };
    const a = d(first, 'ours');
    const b = d(last, 'ours');
    tgt.push([
      `downtime does not grow with the database (${first.sizeGib} -> ${last.sizeGib} GiB): ours`,
      grow('ours'),
      // Flat: within half a second, or a quarter, of the smaller size's figure.
      verdict(a === undefined || b === undefined ? undefined : b - a <= Math.max(0.5, a / 4)),
    ]);
    tgt.push(['  theirs, for comparison', grow('theirs'), '']);
  }
  if (tgt.length > 1) out.push('', table(tgt));
  return out.join('\n');
}
