/** The goloop part's tables: theirs against ours (as a tree and as an archive) at each size, and the targets. */
import { fmtB, fmtS, MiB, ratio, table, verdict } from '../kit.js';
import {
  OURS_FORMATS,
  type GoloopBackupFigures,
  type GoloopFigures,
  type GoloopRestoreFigures,
  type GoloopSizeFigures,
  type Who,
} from './figures.js';

type Any = GoloopBackupFigures | GoloopRestoreFigures;
const OURS = OURS_FORMATS.map((f) => `ours ${f}` as const);

/** A figure's cell: 'not run', 'FAILED', or what `f` makes of it. */
export function cell<T extends Any>(x: T | undefined, f: (v: T) => string): string {
  return !x || x.skipped !== undefined ? 'not run' : !x.ok ? 'FAILED' : f(x);
}

/** The seconds after the stop (or the start) at which each phase of theirs ended. */
export function phaseLine(who: string, origin: string, x: Any | undefined): string[] {
  return x?.ok && x.phases
    ? [
        `${who}, seconds after the ${origin}: ${Object.entries(x.phases)
          .map(([k, v]) => `${k} ${v.toFixed(2)}`)
          .join(', ')}`,
      ]
    : [];
}

/** What the action's manifest says its backup `who` took, in seconds. */
export function ownTimings(who: string, x: Any | undefined): string[] {
  const t = x?.ok ? (x as { timings?: Record<string, number> }).timings : undefined;
  return t
    ? [
        `${who}, its own timings (s): ${Object.entries(t)
          .map(([k, v]) => `${k} ${v.toFixed(2)}`)
          .join(', ')}`,
      ]
    : [];
}

export function goloopReport(figures: GoloopFigures): string {
  const out: string[] = [];
  for (const s of figures.sizes) {
    out.push(
      '',
      `goloop v1.4.4, ${s.sizeGib} GiB database (${fmtB(s.tableBytes)} in ${s.tableFiles} table files, ${fmtB(s.dbBytes)} on disk): icon2-docker's backup_v2.py procedure against the action, as a tree (its default for goloop) and as a tar.zst archive`,
    );
    const t = s.backups.theirs;
    /** One row: theirs, then each of ours with its ratio to theirs. */
    const rowOf =
      <T extends Any>(of: Partial<Record<Who, T>>) =>
      (label: string, f: (x: T) => string, num?: (x: T) => number | undefined): string[] => {
        const th = of.theirs;
        return [
          label,
          cell(th, f),
          ...OURS.flatMap((who) => {
            const o = of[who];
            return [cell(o, f), num && th?.ok && o?.ok ? ratio(num(o), num(th)) : ''];
          }),
        ];
      };
    const brow = rowOf(s.backups);
    out.push(
      table([
        ['backup', 'theirs', ...OURS.flatMap((w) => [w, `${w.slice(5)}/theirs`])],
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
          'stored',
          (b) =>
            b.name === 'ours tree'
              ? `${fmtB(b.archiveBytes)}, ${b.parts ?? '?'} files`
              : `${fmtB(b.archiveBytes)}, ${b.parts ?? '?'} part${b.parts === 1 ? '' : 's'}`,
          (b) => b.archiveBytes,
        ),
        brow(
          'bytes moved',
          (b) => fmtB(b.movedBytes),
          (b) => b.movedBytes,
        ),
      ]),
    );
    out.push(
      ...phaseLine('theirs', 'stop', t),
      ...phaseLine('ours tree', 'stop', s.backups['ours tree']),
      ...ownTimings('ours archive', s.backups['ours archive']),
    );
    const rrow = rowOf(s.restores);
    out.push(
      '',
      table([
        ['restore (to a new block)', 'theirs', ...OURS.flatMap((w) => [w, `${w.slice(5)}/theirs`])],
        rrow(
          `wall time (median of ${s.restores.theirs?.runs?.length ?? 1})`,
          (r) => fmtS(r.wallSeconds),
          (r) => r.wallSeconds,
        ),
        rrow('  every run', (r) => (r.runs ?? [r.wallSeconds]).map((x) => x.toFixed(2)).join(', ')),
        rrow('host peak extra disk (du)', (r) => fmtB(r.hostExtraDiskBytes)),
        rrow('restored node dir', (r) => fmtB(r.restoredBytes)),
        rrow('runner peak RSS', (r) => (r.name === 'theirs' ? 'n/a' : fmtB(r.runnerPeakRssBytes))),
      ]),
    );
    out.push(...phaseLine('theirs', 'start', s.restores.theirs));
    for (const x of [...Object.values(s.backups), ...Object.values(s.restores)])
      if (x && !x.ok && x.skipped === undefined)
        out.push(`FAILED ${x.name} (${s.sizeGib} GiB): ${x.error}`);
  }
  if (figures.oursMissing) out.push('', `ours not run: ${figures.oursMissing}`);
  if (figures.error) out.push('', `goloop part FAILED: ${figures.error}`);

  // Targets, for each of ours.
  const tgt: string[][] = [['target', 'figure', 'verdict']];
  const sizes = figures.sizes;
  for (const s of sizes) {
    const t = s.backups.theirs;
    for (const who of OURS) {
      const o = s.backups[who];
      if (!o?.ok) continue;
      tgt.push([
        `${s.sizeGib} GiB, ${who}: downtime <= 2 s`,
        fmtS(o.downtimeSeconds),
        verdict(o.downtimeSeconds === undefined ? undefined : o.downtimeSeconds <= 2),
      ]);
      const r =
        t?.ok && t.stopToListedSeconds && o.stopToListedSeconds !== undefined
          ? o.stopToListedSeconds / t.stopToListedSeconds
          : undefined;
      tgt.push([
        `${s.sizeGib} GiB, ${who}: stop to listed <= 0.3x theirs`,
        r === undefined ? '-' : `${r.toFixed(3)}x`,
        verdict(r === undefined ? undefined : r <= 0.3),
      ]);
      tgt.push([
        `${s.sizeGib} GiB, ${who}: runner peak RSS <= 200 MiB`,
        fmtB(o.runnerPeakRssBytes),
        verdict(o.runnerPeakRssBytes === undefined ? undefined : o.runnerPeakRssBytes <= 200 * MiB),
      ]);
    }
    const rt = s.restores.theirs;
    for (const who of OURS) {
      const ro = s.restores[who];
      if (!rt?.ok || !ro?.ok) continue;
      const r = ro.wallSeconds / rt.wallSeconds;
      // The restore's target is set on the bench database, 2 GiB or more. Below it the fixed
      // cost decides (loading, connecting, checking the host, the swap, the node's start: about
      // 1.9 s at 0.2 GiB, where theirs took 2.2-3.4 s in all), so it is shown, not judged.
      tgt.push(
        s.sizeGib >= 2
          ? [
              `${s.sizeGib} GiB, ${who}: restore <= 0.7x theirs`,
              `${r.toFixed(3)}x`,
              verdict(r <= 0.7),
            ]
          : [
              `${s.sizeGib} GiB, ${who}: restore against theirs`,
              `${r.toFixed(3)}x`,
              'shown (< 2 GiB)',
            ],
      );
      tgt.push([
        `${s.sizeGib} GiB, ${who}: restore runner peak RSS <= 200 MiB`,
        fmtB(ro.runnerPeakRssBytes),
        verdict(
          ro.runnerPeakRssBytes === undefined ? undefined : ro.runnerPeakRssBytes <= 200 * MiB,
        ),
      ]);
    }
  }
  // Downtime against the size: ours flat, theirs in proportion.
  const first = sizes[0];
  const last = sizes[sizes.length - 1];
  if (first && last && first !== last) {
    const d = (s: GoloopSizeFigures, who: Who): number | undefined =>
      s.backups[who]?.ok ? s.backups[who]?.downtimeSeconds : undefined;
    const grow = (who: Who): string => {
      const a = d(first, who);
      const b = d(last, who);
      return a === undefined || b === undefined
        ? '-'
        : `${fmtS(a)} -> ${fmtS(b)} (${ratio(b, a)} for ${ratio(last.tableBytes, first.tableBytes)} the data)`;
    };
    for (const who of OURS) {
      const a = d(first, who);
      const b = d(last, who);
      tgt.push([
        `downtime does not grow with the database (${first.sizeGib} -> ${last.sizeGib} GiB): ${who}`,
        grow(who),
        // Flat: within half a second, or a quarter, of the smaller size's figure.
        verdict(a === undefined || b === undefined ? undefined : b - a <= Math.max(0.5, a / 4)),
      ]);
    }
    tgt.push(['  theirs, for comparison', grow('theirs'), '']);
  }
  if (tgt.length > 1) out.push('', table(tgt));
  return out.join('\n');
}
