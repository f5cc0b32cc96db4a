/**
 * verify of a tree: every object its manifest names is stored with the file's size; `deep`
 * reads every object back and checks its sha256 (each object once, however many files share it).
 */
import * as core from '@actions/core';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { IntegrityError } from '../errors.js';
import { formatBytes } from '../format.js';
import { describeS3Error } from '../s3/client.js';
import { SocketBody } from '../s3/socket-body.js';
import { FileProgress } from '../progress.js';
import type { TreeManifest } from './layout.js';
import { pool } from './pool.js';
import { objectsUnder } from './store.js';

export interface TreeVerifyReport {
  files: number;
  bytes: number;
  objects: number;
  deep: boolean;
}

export async function verifyTree(
  client: S3Client,
  bucket: string,
  m: TreeManifest,
  options: {
    deep: boolean;
    inFlight: number;
    /** Reads the objects back: the read client (s3/client.ts), whose bodies reuse their memory. */
    reads: S3Client;
  },
): Promise<TreeVerifyReport> {
  const stored = await objectsUnder(client, bucket, m.objects);
  const objects = new Map(m.files.map((f) => [f.sha256, f]));
  const missing = [...objects.values()].filter((f) => stored.get(f.sha256) !== f.size);
  if (missing.length > 0) {
    const first = missing[0]!;
    throw new IntegrityError(
      `${m.key}: ${missing.length} of its ${objects.size} objects are missing or of the wrong size (the first: ` +
        `${first.path}, ${m.objects}${first.sha256}: ${stored.has(first.sha256) ? `${stored.get(first.sha256)} bytes, not ${first.size}` : 'missing'}). ` +
        `The snapshot cannot be restored; take a new backup.`,
    );
  }
  core.info(
    `${m.key}: every object is stored with its size (${objects.size} objects for ${m.files.length} files).`,
  );
  if (!options.deep)
    return { files: m.files.length, bytes: m.bytes, objects: objects.size, deep: false };

  const list = [...objects.values()];
  const total = list.reduce((s, f) => s + f.size, 0);
  const progress = new FileProgress('Verify', list.length, total);
  const bad: string[] = [];
  try {
    await pool(list, options.inFlight, async (f) => {
      let body: Readable | SocketBody;
      try {
        const res = await options.reads.send(
          new GetObjectCommand({ Bucket: bucket, Key: `${m.objects}${f.sha256}` }),
        );
        body = res.Body as Readable | SocketBody;
      } catch (error) {
        throw describeS3Error(error, `s3://${bucket}/${m.objects}${f.sha256}`);
      }
      const hash = createHash('sha256');
      const take = (chunk: Uint8Array): void => {
        hash.update(chunk);
        progress.bytes += chunk.length;
      };
      if (body instanceof SocketBody) await body.readInto(take);
      else for await (const chunk of body) take(chunk as Buffer);
      if (hash.digest('hex') !== f.sha256) bad.push(f.path);
      progress.files++;
    });
  } finally {
    progress.stop();
  }
  if (bad.length > 0) {
    throw new IntegrityError(
      `${m.key}: ${bad.length} objects do not match their sha256 (the first holds ${bad[0]}): the stored snapshot is damaged.`,
    );
  }
  core.info(`${m.key}: every object read back matches its sha256 (${formatBytes(total)}).`);
  return { files: m.files.length, bytes: m.bytes, objects: objects.size, deep: true };
}
