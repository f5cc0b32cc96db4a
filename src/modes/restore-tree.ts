/**
 * Where a tree restore's files come from: a tree of ours (its manifest proves every file by
 * its sha256) or one published in icon2-node's form (an index and a checksum file, which
 * prove only sizes and the hashes of the files' tails). Either becomes the list of files that
 * tree/fetch.ts writes into the staging folder; the swap, the health wait and the rollback
 * are restore.ts's, as for an archive.
 */
import * as core from '@actions/core';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { StorageError } from '../errors.js';
import type { KindFacts, NodeKindName } from '../node-kind/host.js';
import { describeS3Error } from '../s3/client.js';
import { isTransient } from '../s3/retry.js';
import type { Settings } from '../settings.js';
import type { FetchItem } from '../tree/fetch-file.js';
import { readForeignTree } from '../tree/icon2.js';
import { treeFiles, type TreeManifest } from '../tree/layout.js';
import { httpRange, resumableRead, type ReadTiming } from '../tree/resumable-read.js';
import { readTreeManifest } from '../tree/store.js';

export interface TreeSource {
  /** For messages: the snapshot's folder, or the pointer's URL. */
  key: string;
  nodeKind: NodeKindName;
  facts?: KindFacts;
  /** The snapshot's height; 0 where a foreign tree does not say it. */
  height: number;
  bytes: number;
  items: FetchItem[];
  dirs: string[];
  /** Whether every file is proven by a sha256 (ours), or only by size and tail hash. */
  proven: boolean;
  /** The name of the staging folder: the same for every run of this snapshot, so that one resumes another. */
  stageId: string;
}

const stageIdOf = (key: string): string =>
  createHash('sha256').update(key).digest('hex').slice(0, 16);

/** A tree of ours, from its manifest; its objects read through `reads` (createReadClient). */
export async function ourTree(
  client: S3Client,
  reads: S3Client,
  settings: Settings,
  key: string,
  timing: ReadTiming = {},
): Promise<TreeSource> {
  const { bucket } = settings.s3;
  const m: TreeManifest | undefined = await readTreeManifest(
    client,
    bucket,
    treeFiles(key).manifest,
  );
  if (!m) {
    throw new StorageError(
      `${key} has no manifest.json: the tree is incomplete or not ours. Restore another snapshot ('snapshot' input).`,
    );
  }
  const objects = m.objects;
  // Each object read as the archives are: a stall or a break costs one attempt, and the next
  // goes on from the byte where it stopped.
  const request =
    (sha: string) =>
    async (from: number, signal: AbortSignal): Promise<AsyncIterable<Uint8Array>> => {
      try {
        const res = await reads.send(
          new GetObjectCommand({
            Bucket: bucket,
            Key: `${objects}${sha}`,
            Range: from > 0 ? `bytes=${from}-` : undefined,
          }),
          { abortSignal: signal },
        );
        return res.Body as Readable;
      } catch (error) {
        if (signal.aborted || isTransient(error)) throw error;
        throw describeS3Error(error, `s3://${bucket}/${objects}${sha}`);
      }
    };
  const read =
    (f: { path: string; size: number; sha256: string }): FetchItem['read'] =>
    (start, take) =>
      resumableRead(
        {
          what: `${f.path} (s3://${bucket}/${objects}${f.sha256})`,
          size: f.size,
          start,
          request: request(f.sha256),
          onRetry: (message) => core.info(`Download: ${message}`),
          ...timing,
        },
        take,
      );
  return {
    key,
    nodeKind: m.nodeKind === 'goloop' ? 'goloop' : 'loopchain',
    facts: m.facts,
    height: m.blockHeight,
    bytes: m.bytes,
    items: m.files.map((f) => ({
      path: f.path,
      size: f.size,
      mode: f.mode,
      sha256: f.sha256,
      tail: f.tail,
      key: `${objects}${f.sha256}`,
      read: read(f),
    })),
    dirs: m.dirs,
    proven: true,
    stageId: stageIdOf(key),
  };
}

/**
 * A tree in icon2-node's form, named by the URL of its `{SERVICE}.json`: a goloop node's
 * files, read over HTTP(S) as aria2c would, each under the rule of the archives' ranged reads
 * (see tree/resumable-read.ts; `timing` shortens it in tests). Nothing states its height or
 * block hash: the restored node is healthy once its chain is started and answering.
 */
export async function foreignTree(
  pointerUrl: string,
  channel: string,
  timing: ReadTiming = {},
): Promise<TreeSource> {
  const all = await readForeignTree(pointerUrl);
  // The chain folder is the one named by a cid (hex) that holds a database: `{cid}/db/{nid}/…`.
  const chain = all
    .map((f) => /^([0-9a-f]{1,8})\/db\/([0-9a-f]{1,8})\//.exec(f.path))
    .find((m) => m !== null);
  if (!chain) {
    throw new StorageError(
      `${pointerUrl} names no goloop chain folder ({cid}/db/{nid}/…): it is not a tree of a goloop node.`,
    );
  }
  const folder = chain[1] as string;
  const files = all.filter((f) => f.path.startsWith(`${folder}/`));
  if (files.length < all.length) {
    core.info(
      `Restoring the chain folder ${folder}; ${all.length - files.length} other files of the tree (node-level files) are left out.`,
    );
  }
  const unchecked = files.filter((f) => f.tail === undefined).length;
  core.warning(
    `${pointerUrl} is a tree in icon2-node's form, with no manifest of ours: only each file's size` +
      `${unchecked < files.length ? ' and the hash of its last 10 KiB' : ''} can be checked, not a sha256 of the whole file, ` +
      `and it states no block height or hash to prove the restored node by.`,
  );
  const read =
    (f: { path: string; size: number; url: string }): FetchItem['read'] =>
    (start, take) =>
      resumableRead(
        {
          what: `${f.path} (${f.url})`,
          size: f.size,
          start,
          request: httpRange(f.url),
          onRetry: (message) => core.info(`Download: ${message}`),
          ...timing,
        },
        take,
      );
  const dirs = new Set<string>();
  for (const f of files) {
    const parts = f.path.split('/');
    for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
  }
  return {
    key: pointerUrl,
    nodeKind: 'goloop',
    facts: { cid: `0x${folder}`, nid: `0x${chain[2] as string}`, channel },
    height: 0,
    bytes: files.reduce((s, f) => s + f.size, 0),
    items: files.map((f) => ({
      path: f.path,
      size: f.size,
      mode: 0o644,
      tail: f.tail,
      read: read(f),
    })),
    dirs: [...dirs].sort(),
    proven: false,
    stageId: stageIdOf(pointerUrl),
  };
}
