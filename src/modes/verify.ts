/**
 * mode: verify. Streams a stored snapshot from S3 on the runner alone and proves it whole:
 * the sha256 is the manifest's, the tar stream reads to its end, every entry is complete,
 * and the directories a node needs are there.
 */
import * as core from '@actions/core';
import type { S3Client } from '@aws-sdk/client-s3';
import { createHash, type Hash } from 'node:crypto';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Parser } from 'tar';
import { Outputs } from '../constants.js';
import {
  DownloadError,
  IntegrityError,
  ObjectChangedError,
  StorageError,
  errorMessage,
} from '../errors.js';
import { formatBytes, formatDuration, formatRate, secondsSince } from '../format.js';
import type { Manifest } from '../manifest.js';
import { manifestKey } from '../naming.js';
import type { Tree } from '../node-kind/host.js';
import { snapshotTree } from '../node-kind/index.js';
import { Progress } from '../progress.js';
import { createClient, createReadClient } from '../s3/client.js';
import { headObject, rangedDownload } from '../s3/download.js';
import { readManifest } from '../s3/store.js';
import type { Settings } from '../settings.js';
import { chooseSnapshot } from '../snapshots.js';
import { treeFiles } from '../tree/layout.js';
import { readTreeManifest } from '../tree/store.js';
import { verifyTree } from '../tree/verify.js';
import { code, html, writeSummaryTable } from '../summary.js';

export interface VerifyReport {
  key: string;
  sha256: string;
  compressedBytes: number;
  files: number;
  bytes: number;
  hasManifest: boolean;
  seconds: number;
}

export async function verify(settings: Settings): Promise<VerifyReport> {
  const client = createClient(settings.s3);
  const chosen = await core.group('Choose the snapshot', async () => {
    const c = await chooseSnapshot(client, settings.s3, settings.restore.snapshot);
    core.info(`Snapshot: ${c.key}${c.listed ? '' : ' (not in backup_list)'}`);
    return c;
  });
  if (chosen.name.format === 'tree')
    return verifyTreeSnapshot(client, createReadClient(settings.s3), settings, chosen.key);
  const manifest = await readManifest(
    client,
    settings.s3.bucket,
    manifestKey(settings.s3.manifestPrefix, chosen.key),
  );
  const report = await core.group(`Verify ${chosen.key}`, () =>
    verifyStored(createReadClient(settings.s3), settings, chosen.key, manifest),
  );
  core.setOutput(Outputs.Key, report.key);
  core.setOutput(Outputs.Sha256, report.sha256);
  core.setOutput(Outputs.Size, String(report.compressedBytes));
  core.setOutput(Outputs.Files, String(report.files));
  core.setOutput(Outputs.UncompressedSize, String(report.bytes));
  if (manifest) core.setOutput(Outputs.BlockHeight, String(manifest.blockHeight));
  await writeSummaryTable('verify', [
    ['Key', code(report.key)],
    ['Result', 'whole: every entry complete, the expected directories present'],
    [
      'sha256',
      html`${code(report.sha256)}
      ${report.hasManifest ? '(matches the manifest)' : '(no manifest to compare)'}`,
    ],
    ['Archive', formatBytes(report.compressedBytes)],
    ['Content', `${report.files} files, ${formatBytes(report.bytes)}`],
    [
      'Duration',
      `${formatDuration(report.seconds)} (${formatRate(report.compressedBytes, report.seconds)})`,
    ],
  ]);
  return report;
}

/** Reads the whole object, hashing the bytes and parsing the tar stream inside them. */
export async function verifyStored(
  client: S3Client,
  settings: Settings,
  key: string,
  manifest: Manifest | undefined,
  kind: Tree = snapshotTree(manifest),
): Promise<VerifyReport> {
  const t = performance.now();
  const stored = await headObject(client, settings.s3.bucket, key);
  const length = stored.size;
  const read = (start: number) =>
    rangedDownload({
      client,
      bucket: settings.s3.bucket,
      key,
      object: stored,
      connections: settings.s3.downloadConnections,
      start,
      onRetry: (message) => core.info(`Download: ${message}`),
    });
  // The tar parser keeps chunks past the next read: it gets copies.
  const body = Readable.from(copies(read(0)));
  if (!manifest) {
    core.warning(
      `${key} has no manifest (an archive of the original script?): its sha256 cannot be compared, only its structure.`,
    );
  }
  const progress = new Progress('Verify', length);
  const hash = createHash('sha256');
  let compressedBytes = 0;
  const tap = new Transform({
    transform(chunk: Buffer, _e: BufferEncoding, cb: TransformCallback) {
      hash.update(chunk);
      compressedBytes += chunk.length;
      progress.sent = compressedBytes;
      progress.read = compressedBytes;
      cb(null, chunk);
    },
  });
  let files = 0;
  let bytes = 0;
  const roots = new Set<string>();
  let incomplete: string | undefined;
  // Directories the archive must hold besides its roots (loopchain's placeholder, goloop's db/).
  const required = [
    ...(kind.required ?? []),
    ...(kind.identityParent && kind.placeholder
      ? [`${kind.identityParent}/${kind.placeholder}`]
      : []),
  ];
  const parser = new Parser({
    strict: true,
    zstd: key.endsWith('.tar.zst') ? true : undefined,
    maxDecompressionRatio: 1e9,
    onReadEntry: (entry) => {
      const path = entry.path.replace(/^\.\//, '').replace(/\/$/, '');
      const top = path.split('/')[0] ?? '';
      if (kind.roots.includes(top)) roots.add(top);
      for (const r of required) if (path === r || path.startsWith(`${r}/`)) roots.add(r);
      if (entry.type === 'File' || entry.type === 'OldFile' || entry.type === 'ContiguousFile') {
        files++;
        const expected = entry.size;
        let got = 0;
        entry.on('data', (c: Buffer) => (got += c.length));
        entry.on('end', () => {
          bytes += got;
          if (got !== expected) incomplete ??= `${path}: ${got} of ${expected} bytes`;
        });
      }
      entry.resume();
    },
  } as ConstructorParameters<typeof Parser>[0]);
  try {
    await pipeline(body, tap, parser as unknown as NodeJS.WritableStream);
  } catch (error) {
    // Bytes that did not come say nothing of the archive: the read failed, not the archive.
    if (error instanceof DownloadError || error instanceof ObjectChangedError) {
      throw new StorageError(
        `${key} could not be read to its end (after ${formatBytes(compressedBytes)}): ${error.message} ` +
          `Nothing is known of the stored archive's state; run again.`,
      );
    }
    // A damaged archive usually breaks the tar stream too. With a manifest, read the rest of
    // the object into the hash: a sha256 that differs from the manifest's says what happened.
    if (manifest && length > compressedBytes) {
      const rest = await hashRest(read(compressedBytes), hash).catch(() => undefined);
      if (rest !== undefined && compressedBytes + rest === manifest.compressedBytes) {
        const sha256 = hash.digest('hex');
        if (sha256 !== manifest.sha256) {
          throw new IntegrityError(
            `${key}: sha256 ${sha256} differs from the manifest's ${manifest.sha256}: the stored archive is damaged ` +
              `(its tar stream breaks: ${errorMessage(error)}). Do not restore from it; take a new backup.`,
          );
        }
      }
    }
    throw new IntegrityError(
      `${key} is not whole: ${errorMessage(error)} (after ${formatBytes(compressedBytes)}). Do not restore from it; take a new backup.`,
    );
  } finally {
    progress.stop();
  }
  const sha256 = hash.digest('hex');
  if (manifest && manifest.sha256 !== sha256) {
    throw new IntegrityError(
      `${key}: sha256 ${sha256} differs from the manifest's ${manifest.sha256}. The stored archive is damaged.`,
    );
  }
  if (manifest && manifest.compressedBytes !== compressedBytes) {
    throw new IntegrityError(
      `${key}: ${compressedBytes} bytes stored, the manifest says ${manifest.compressedBytes}.`,
    );
  }
  if (incomplete) throw new IntegrityError(`${key} has an incomplete entry: ${incomplete}.`);
  const needed = [...kind.roots, ...required].filter((r) => !roots.has(r));
  if (needed.length > 0) {
    throw new IntegrityError(
      `${key} lacks ${needed.join(' and ')}: it is not a snapshot of a ${kind.name} node.`,
    );
  }
  const seconds = secondsSince(t);
  core.info(
    `${key}: whole. ${files} files, ${formatBytes(bytes)}; ${formatBytes(compressedBytes)} read in ${formatDuration(seconds)}; sha256 ${sha256}.`,
  );
  return {
    key,
    sha256,
    compressedBytes,
    files,
    bytes,
    hasManifest: manifest !== undefined,
    seconds,
  };
}

/** Each chunk copied: a ranged read's chunk is filled again once the next is asked for. */
async function* copies(chunks: AsyncIterable<Buffer>): AsyncGenerator<Buffer> {
  for await (const chunk of chunks) yield Buffer.from(chunk);
}

/** Feeds what `rest` reads (the object from some byte to its end) into `hash`; returns how many. */
async function hashRest(rest: AsyncIterable<unknown>, hash: Hash): Promise<number> {
  let n = 0;
  for await (const chunk of rest) {
    hash.update(chunk as Buffer);
    n += (chunk as Buffer).length;
  }
  return n;
}

async function verifyTreeSnapshot(
  client: S3Client,
  reads: S3Client,
  settings: Settings,
  key: string,
): Promise<VerifyReport> {
  const t = performance.now();
  const m = await readTreeManifest(client, settings.s3.bucket, treeFiles(key).manifest);
  if (!m)
    throw new IntegrityError(`${key} has no manifest.json: the tree is incomplete or not ours.`);
  const r = await core.group(`Verify ${key}`, () =>
    verifyTree(client, settings.s3.bucket, m, {
      deep: settings.restore.deep,
      inFlight: settings.s3.filesInFlight,
      reads,
    }),
  );
  const seconds = secondsSince(t);
  core.setOutput(Outputs.Key, key);
  core.setOutput(Outputs.Files, String(r.files));
  core.setOutput(Outputs.UncompressedSize, String(r.bytes));
  core.setOutput(Outputs.BlockHeight, String(m.blockHeight));
  await writeSummaryTable('verify', [
    ['Key', code(key)],
    [
      'Result',
      r.deep
        ? 'whole: every object read back matches its sha256'
        : "every object is stored with its file's size (set 'deep: true' to read them back)",
    ],
    ['Content', `${r.files} files, ${formatBytes(r.bytes)}, in ${r.objects} objects`],
    ['Duration', formatDuration(seconds)],
  ]);
  return {
    key,
    sha256: '',
    compressedBytes: r.bytes,
    files: r.files,
    bytes: r.bytes,
    hasManifest: true,
    seconds,
  };
}
