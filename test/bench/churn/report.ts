/** The churn part's tables: the full backups, the churn, the second backups, the restores, the targets. */
import { fmtB, fmtS, MiB, ratio, table, verdict } from '../kit.js';
import type { GoloopBackupFigures, GoloopRestoreFigures, Who } from '../goloop/figures.js';
import { cell, ownTimings, phaseLine } from '../goloop/report.js';
import { ACROSS_BACKUPS, ACROSS_MS, type ChurnFigures } from './figures.js';
import { MESSAGE_BYTES } from './load.js';

const pct = (part?: number, whole?: number): string =>
  part === undefined || !whole ? '-' : `${((part / whole) * 100).toFixed(1)} %`;

export function churnReport(f: ChurnFigures): string {
  const out: string[] = [
    '',
    `goloop v1.4.4, churn on a ${f.sizeGib} GiB database (${fmtB(f.tableBytes)} in ${f.tableFiles ?? '?'} table files, ${fmtB(f.dbBytes)} on disk): one node, full backups, the node under load, second backups, restores of the second snapshot`,
  ];
  const full = f.full;
  const second = f.second;
  // The database's bytes: every file of the second tree.
  const treeBytes = second['ours tree']?.ok ? second['ours tree'].archiveBytes : undefined;
  const brow =
    (of: ChurnFigures['full'], whos: Who[]) =>
    (label: string, fn: (b: GoloopBackupFigures) => string): string[] => [
      label,
      ...whos.map((w) => cell(of[w], fn)),
    ];

  const fullWho: Who[] = ['theirs', 'ours tree', 'ours archive'];
  if (Object.keys(full).length > 0) {
    const row = brow(full, fullWho);
    out.push(
      table([
        ['full backup (one after another)', ...fullWho],
        row('node downtime (block gap)', (b) => fmtS(b.downtimeSeconds)),
        row('stop to listed', (b) => fmtS(b.stopToListedSeconds)),
        row('wall time (whole run)', (b) => fmtS(b.wallSeconds)),
        row('stored', (b) => fmtB(b.archiveBytes)),
        row('bytes moved', (b) => `${fmtB(b.movedBytes)} (${b.movedFiles ?? '?'} files)`),
        row('runner peak RSS', (b) => (b.name === 'theirs' ? 'n/a' : fmtB(b.runnerPeakRssBytes))),
      ]),
    );
  }

  const l = f.load;
  if (l) {
    out.push(
      '',
      `churn: ${l.transfers} ICX transfers through the node's JSON-RPC, each with a ${MESSAGE_BYTES / 1024} KiB message of random bytes ` +
        `(${fmtB(l.messageBytes)} of messages; ${l.confirmed} confirmed in a block, ${l.unconfirmed} not, ${l.refused} refused), ` +
        `blocks ${l.fromHeight} -> ${l.toHeight}, for ${fmtS(l.seconds)} (${l.rounds} load${l.rounds === 1 ? '' : 's'}, each until the count held once the compactions settled): ` +
        `then ${fmtB(l.reached.bytes)} in ${l.reached.files} table files ` +
        `that the full tree did not hold, ${pct(l.reached.bytes, l.reached.total)} of the db dir's ${fmtB(l.reached.total)} ` +
        `(target ${(l.target * 100).toFixed(0)} %${l.met ? '' : ': NOT reached within the time limit'}).`,
    );
  }
  const a = f.atSecond;
  if (a)
    out.push(
      `at the second tree: ${fmtB(a.bytes)} in ${a.files} table files that the full tree does not name, ` +
        `${pct(a.bytes, a.total)} of its db dir's ${fmtB(a.total)}.`,
    );

  const secondWho: Who[] = ['theirs', 'ours tree', 'ours archive'];
  const t = second.theirs;
  if (Object.keys(second).length > 0) {
    const row = (
      label: string,
      fn: (b: GoloopBackupFigures) => string,
      num?: (b: GoloopBackupFigures) => number | undefined,
    ): string[] => [
      label,
      ...secondWho.flatMap((w) => {
        const b = second[w];
        const c = cell(b, fn);
        if (w === 'theirs') return [c];
        return [c, num && b?.ok && t?.ok ? ratio(num(b), num(t)) : ''];
      }),
    ];
    out.push(
      '',
      table([
        [
          'second backup (after the churn)',
          'theirs (full, same data)',
          'ours tree',
          'tree/theirs',
          'ours archive',
          'archive/theirs',
        ],
        row(
          'node downtime (block gap)',
          (b) => fmtS(b.downtimeSeconds),
          (b) => b.downtimeSeconds,
        ),
        row(
          'stop to listed',
          (b) => fmtS(b.stopToListedSeconds),
          (b) => b.stopToListedSeconds,
        ),
        row('  (self-reported)', (b) => fmtS(b.stopToListedSelfReported)),
        row(
          'wall time (whole run)',
          (b) => fmtS(b.wallSeconds),
          (b) => b.wallSeconds,
        ),
        row(
          'bytes moved',
          (b) => fmtB(b.movedBytes),
          (b) => b.movedBytes,
        ),
        row('  of the database', (b) => pct(b.movedBytes, treeBytes)),
        row('files moved', (b) => String(b.movedFiles ?? '-')),
        row('runner peak RSS', (b) => (b.name === 'theirs' ? 'n/a' : fmtB(b.runnerPeakRssBytes))),
        row('host extra disk (du)', (b) => fmtB(b.hostExtraDiskBytes)),
      ]),
    );
    const tr = second['ours tree'];
    out.push(...phaseLine('ours tree', 'stop', tr), ...phaseLine('theirs', 'stop', t));
    out.push(...ownTimings('ours tree', tr), ...ownTimings('ours archive', second['ours archive']));
    const t1 = full.theirs;
    if (t1?.ok && t?.ok)
      out.push(
        `theirs, full backup before the churn: stop to listed ${fmtS(t1.stopToListedSeconds)}, ${fmtB(t1.movedBytes)} moved.`,
      );
  }

  const rt = f.restores['ours tree'];
  const ra = f.restores['ours archive'];
  const xt = f.restoresAcross?.['ours tree'];
  const xa = f.restoresAcross?.['ours archive'];
  if (rt || ra) {
    const rrow = (label: string, fn: (r: GoloopRestoreFigures) => string, ratioOf?: boolean) => [
      label,
      cell(rt, fn),
      cell(ra, fn),
      ratioOf && rt?.ok && ra?.ok ? ratio(rt.wallSeconds, ra.wallSeconds) : '',
    ];
    out.push(
      '',
      table([
        [
          'restore of the second snapshot (to a new block)',
          'ours tree',
          'ours archive',
          'tree/archive',
        ],
        rrow(
          `wall time (median of ${rt?.runs?.length ?? ra?.runs?.length ?? 1})`,
          (r) => fmtS(r.wallSeconds),
          true,
        ),
        rrow('  every run', (r) => (r.runs ?? [r.wallSeconds]).map((x) => x.toFixed(2)).join(', ')),
        [
          `wall time, node ${ACROSS_MS} ms away each way (one run)`,
          cell(xt, (r) => fmtS(r.wallSeconds)),
          cell(xa, (r) => fmtS(r.wallSeconds)),
          xt?.ok && xa?.ok ? ratio(xt.wallSeconds, xa.wallSeconds) : '',
        ],
        rrow('host peak extra disk (du)', (r) => fmtB(r.hostExtraDiskBytes)),
        rrow('restored node dir', (r) => fmtB(r.restoredBytes)),
        rrow('runner peak RSS', (r) => fmtB(r.runnerPeakRssBytes)),
      ]),
    );
  }
  const across = f.backupsAcross ?? {};
  if (Object.keys(across).length > 0) {
    const cols = ACROSS_BACKUPS.filter((k) => across[k]);
    const arow = (label: string, fn: (b: GoloopBackupFigures) => string): string[] => [
      label,
      ...cols.map((k) => cell(across[k], fn)),
    ];
    out.push(
      '',
      table([
        [`first tree backup, the node ${ACROSS_MS} ms away each way`, ...cols],
        arow('wall time (whole run)', (b) => fmtS(b.wallSeconds)),
        arow('new tables, sent while the node ran', (b) => fmtS(b.timings?.ahead)),
        arow('node downtime (block gap)', (b) => fmtS(b.downtimeSeconds)),
        arow('stop to listed', (b) => fmtS(b.stopToListedSeconds)),
        arow('  (self-reported)', (b) => fmtS(b.stopToListedSelfReported)),
        arow('bytes moved', (b) => `${fmtB(b.movedBytes)} (${b.movedFiles ?? '?'} files)`),
        arow('runner peak RSS', (b) => fmtB(b.runnerPeakRssBytes)),
      ]),
    );
  }
  const onto = f.ontoSource;
  if (onto?.ok) {
    out.push(
      `the second tree restored onto the node it came from (running, stopped for the swap): ${fmtS(onto.wallSeconds)} to a new block, ` +
        `${onto.fetchedFiles ?? '?'} files fetched (${onto.fetched ?? '?'}), ${onto.takenFiles ?? '?'} taken from its data dir; runner peak RSS ${fmtB(onto.runnerPeakRssBytes)}.`,
    );
  } else if (onto) {
    out.push(`FAILED the second tree restored onto the node it came from: ${onto.error ?? ''}`);
  }
  const all = [
    ...Object.values(full).map((x) => ['full', x] as const),
    ...Object.values(second).map((x) => ['second', x] as const),
    ...Object.values(f.restores).map((x) => ['restore', x] as const),
    ...Object.values(f.restoresAcross ?? {}).map((x) => ['restore across a link', x] as const),
    ...Object.values(f.backupsAcross ?? {}).map((x) => ['backup across a link', x] as const),
  ];
  for (const [round, x] of all)
    if (x && !x.ok) out.push(`FAILED ${x.name} (${round}): ${x.error ?? x.skipped}`);
  if (f.error) out.push('', `churn part FAILED: ${f.error}`);

  // Targets.
  const tgt: string[][] = [['target', 'figure', 'verdict']];
  const tr = second['ours tree'];
  if (tr?.ok) {
    const share = tr.movedBytes !== undefined && treeBytes ? tr.movedBytes / treeBytes : undefined;
    tgt.push([
      "second tree backup moves <= 10 % of the database's bytes",
      `${pct(tr.movedBytes, treeBytes)} (${fmtB(tr.movedBytes)} of ${fmtB(treeBytes)})`,
      verdict(share === undefined ? undefined : share <= 0.1),
    ]);
    const r =
      t?.ok && t.stopToListedSeconds && tr.stopToListedSeconds !== undefined
        ? tr.stopToListedSeconds / t.stopToListedSeconds
        : undefined;
    tgt.push([
      "second tree backup: stop to listed <= 0.05x theirs' full backup of the same data",
      r === undefined
        ? '-'
        : `${r.toFixed(3)}x (${fmtS(tr.stopToListedSeconds)} against ${fmtS(t?.stopToListedSeconds)})`,
      verdict(r === undefined ? undefined : r <= 0.05),
    ]);
  }
  if (rt?.ok && ra?.ok)
    tgt.push([
      'tree restore no slower than the tar restore of the same snapshot (medians)',
      `${fmtS(rt.wallSeconds)} against ${fmtS(ra.wallSeconds)} (${ratio(rt.wallSeconds, ra.wallSeconds)})`,
      verdict(rt.wallSeconds <= ra.wallSeconds),
    ]);
  if (xt?.ok && xa?.ok)
    tgt.push([
      `the same, the node ${ACROSS_MS} ms away each way (one run each)`,
      `${fmtS(xt.wallSeconds)} against ${fmtS(xa.wallSeconds)} (${ratio(xt.wallSeconds, xa.wallSeconds)})`,
      verdict(xt.wallSeconds <= xa.wallSeconds),
    ]);
  const runs: Array<[string, GoloopBackupFigures | GoloopRestoreFigures | undefined]> = [
    ['full backup, ours tree', full['ours tree']],
    ['full backup, ours archive', full['ours archive']],
    ['second backup, ours tree', tr],
    ['second backup, ours archive', second['ours archive']],
    ['restore, ours tree', rt],
    ['restore, ours archive', ra],
  ];
  for (const [label, x] of runs)
    if (x?.ok)
      tgt.push([
        `runner peak RSS <= 200 MiB: ${label}`,
        fmtB(x.runnerPeakRssBytes),
        verdict(x.runnerPeakRssBytes === undefined ? undefined : x.runnerPeakRssBytes <= 200 * MiB),
      ]);
  if (tgt.length > 1) out.push('', table(tgt));
  return out.join('\n');
}
