/**
 * The job summary: a heading and a two-column table, the shape every mode reports in.
 * Every value is HTML-escaped on its way in: a key read from the bucket is data, never markup.
 */
import * as core from '@actions/core';

/** Markup built by `html` or `code`, whose values were escaped; plain strings are escaped whole. */
export class Html {
  constructor(readonly markup: string) {}
}

export type Cell = string | Html;

export function escapeHtml(text: string): string {
  return text.replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c,
  );
}

/** A template whose values are escaped (an `Html` value is kept as it is). */
export function html(strings: TemplateStringsArray, ...values: Array<Cell | number>): Html {
  let out = strings[0] ?? '';
  values.forEach((v, i) => {
    out += (v instanceof Html ? v.markup : escapeHtml(String(v))) + (strings[i + 1] ?? '');
  });
  return new Html(out);
}

export function code(text: string): Html {
  return html`<code>${text}</code>`;
}

/** The markup of a cell. */
export function cellMarkup(cell: Cell): string {
  return cell instanceof Html ? cell.markup : escapeHtml(cell);
}

export async function writeSummaryTable(
  title: string,
  rows: Array<[string, Cell]>,
  link?: { text: string; href: string },
): Promise<void> {
  core.summary.addHeading(escapeHtml(`prep-snapshot: ${title}`), 3).addTable([
    [
      { data: 'What', header: true },
      { data: 'Value', header: true },
    ],
    ...rows.map(([what, value]) => [escapeHtml(what), cellMarkup(value)]),
  ]);
  if (link) core.summary.addLink(escapeHtml(link.text), escapeHtml(link.href));
  await core.summary.write();
}
