import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  addEntry,
  formatBackupList,
  parseBackupList,
  removeEntries,
  sortNewestFirst,
} from '../../src/s3/backup-list.ts';
import { archiveKey, archiveName, manifestKey, parseArchivePath } from '../../src/naming.ts';
import { chooseExpired } from '../../src/retention.ts';
import { copyRanges } from '../../src/s3/copy.ts';
import { choosePartSize, MAX_PARTS } from '../../src/s3/upload.ts';

describe('archive names', () => {
  it('follow the original script, in UTC', () => {
    const n = archiveName('PRep', 12345, new Date('2024-03-05T23:07:59Z'), 'gzip');
    assert.equal(n.file, 'PRep_BH12345_data-20240305_2307.tar.gz');
    assert.equal(archiveKey('PRep', n), 'PRep/20240305/PRep_BH12345_data-20240305_2307.tar.gz');
    assert.equal(
      archiveName('PRep', 1, new Date('2024-03-05T23:07:59Z'), 'zstd').file.endsWith('.tar.zst'),
      true,
    );
  });

  it('parse back from a key or a backup_list line', () => {
    const n = parseArchivePath('PRep/20240305/PRep_BH12345_data-20240305_2307.tar.gz');
    assert.deepEqual(
      { date: n?.date, height: n?.height, stamp: n?.stamp, service: n?.service },
      { date: '20240305', height: 12345, stamp: '20240305_2307', service: 'PRep' },
    );
    assert.equal(parseArchivePath('20240305/PRep_BH1_data-20240305_0000.tar.gz')?.height, 1);
    assert.equal(parseArchivePath('PRep/backup_list'), undefined);
    assert.equal(parseArchivePath('20240305/PRep_BH1_data-20240305_0000.tar.gz.json'), undefined);
  });

  it('name a tree by its folder, and tell it from an archive', () => {
    const n = archiveName('MainNet', 7, new Date('2024-03-05T23:07:59Z'), 'tree');
    assert.equal(n.file, 'MainNet_BH7_data-20240305_2307.tree');
    assert.deepEqual([n.format, n.compression], ['tree', undefined]);
    const back = parseArchivePath('MainNet/20240305/MainNet_BH7_data-20240305_2307.tree');
    assert.deepEqual([back?.format, back?.height], ['tree', 7]);
    assert.deepEqual(
      [parseArchivePath('20240305/PRep_BH1_data-20240305_0000.tar.zst')?.compression],
      ['zstd'],
    );
    // A tree's own files are not snapshots.
    assert.equal(
      parseArchivePath('MainNet/20240305/MainNet_BH7_data-20240305_2307.tree/index.txt'),
      undefined,
    );
  });

  it('keep manifests out of the prefix the original listing reads', () => {
    const key = 'PRep/20240305/PRep_BH1_data-20240305_0000.tar.gz';
    assert.equal(manifestKey('_prep-snapshot', key).startsWith('PRep'), false);
  });
});

describe('backup_list', () => {
  const a = '20240101/PRep_BH100_data-20240101_0000.tar.gz';
  const b = '20240102/PRep_BH200_data-20240102_0000.tar.gz';
  const c = '20240102/PRep_BH210_data-20240102_1200.tar.gz';

  it('keeps the newest first, without duplicates', () => {
    assert.deepEqual(addEntry([b, a], c), [c, b, a]);
    assert.deepEqual(addEntry([c, b, a], b), [c, b, a]);
    assert.deepEqual(sortNewestFirst([a, 'odd line', c, b]), [c, b, a, 'odd line']);
  });

  it('reads and writes the original format', () => {
    assert.deepEqual(parseBackupList(`${c}\n${b}\n\n${a}\n`), [c, b, a]);
    assert.equal(formatBackupList([c, b]), `${c}\n${b}\n`);
    assert.deepEqual(removeEntries([c, b, a], [b]), [c, a]);
  });
});

describe('retention', () => {
  it('removes archives dated more than N days ago, keeps the rest', () => {
    const now = new Date('2024-01-20T00:30:00Z');
    const archives = ['20240104', '20240105', '20240106', '20240120'].map((d) => ({
      key: `PRep/${d}/PRep_BH1_data-${d}_0000.tar.gz`,
      name: parseArchivePath(`PRep/${d}/PRep_BH1_data-${d}_0000.tar.gz`)!,
    }));
    assert.deepEqual(
      chooseExpired(archives, now, 15).map((a) => a.name.date),
      ['20240104'],
    );
    assert.deepEqual(chooseExpired(archives, now, 0), []);
  });
});

describe('part sizes', () => {
  it('fit a 2 TB archive in 10,000 parts', () => {
    const size = choosePartSize(2e12);
    assert.ok(Math.ceil(2e12 / size) <= MAX_PARTS);
    assert.ok(
      Math.ceil(2.4e12 / size) <= MAX_PARTS,
      'room for an archive 20% larger than expected',
    );
  });
  it('stay small for small archives (memory is part size x queue)', () => {
    assert.equal(choosePartSize(1e9), 8 * 1024 * 1024);
  });
  it('split copies over 5 GB into ranges of at least 5 MiB', () => {
    const size = 6 * 1000 ** 3 + 1;
    const ranges = copyRanges(size);
    assert.ok(ranges.length <= 10_000);
    assert.equal(ranges[0]?.start, 0);
    assert.equal(ranges.at(-1)?.end, size - 1);
    for (let i = 1; i < ranges.length; i++) assert.equal(ranges[i]!.start, ranges[i - 1]!.end + 1);
  });
});
