/** The job summary: a heading and a two-column table, the shape every mode reports in. */
import * as core from '@actions/core';

export async function writeSummaryTable(
  title: string,
  rows: Array<[string, string]>,
  link?: { text: string; href: string },
): Promise<void> {
  core.summary.addHeading(`prep-snapshot: ${title}`, 3).addTable([
    [
      { data: 'What', header: true },
      { data: 'Value', header: true },
    ],
    ...rows,
  ]);
  if (link) core.summary.addLink(link.text, link.href);
  await core.summary.write();
}
