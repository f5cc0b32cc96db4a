/** Listing what is stored: archives under a prefix, their manifests, their permanent copies. */
import {
  DeleteObjectsCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import type { Manifest } from '../manifest.js';
import { parseArchivePath, type ArchiveName } from '../naming.js';
import { describeS3Error, isStatus } from './client.js';

export interface StoredObject {
  key: string;
  size: number;
  lastModified?: Date;
}

export async function listObjects(
  client: S3Client,
  bucket: string,
  prefix: string,
): Promise<StoredObject[]> {
  const out: StoredObject[] = [];
  let token: string | undefined;
  try {
    do {
      const res = await client.send(
        new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }),
      );
      for (const o of res.Contents ?? []) {
        if (o.Key) out.push({ key: o.Key, size: o.Size ?? 0, lastModified: o.LastModified });
      }
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
    } while (token);
  } catch (error) {
    throw describeS3Error(error, `the listing of s3://${bucket}/${prefix}`);
  }
  return out;
}

export interface StoredArchive extends StoredObject {
  name: ArchiveName;
}

/**
 * The archives among the objects listed under `prefix`: exactly at `{prefix}/YYYYMMDD/FILE`;
 * anything else under the prefix is not ours to judge.
 */
export function archivesIn(objects: StoredObject[], prefix: string): StoredArchive[] {
  return objects.flatMap((o) => {
    const name = parseArchivePath(o.key);
    return name && o.key === `${prefix}/${name.date}/${name.file}` ? [{ ...o, name }] : [];
  });
}

export async function deleteKeys(client: S3Client, bucket: string, keys: string[]): Promise<void> {
  for (let i = 0; i < keys.length; i += 1000) {
    const batch = keys.slice(i, i + 1000);
    try {
      const res = await client.send(
        new DeleteObjectsCommand({
          Bucket: bucket,
          Delete: { Objects: batch.map((Key) => ({ Key })), Quiet: true },
        }),
      );
      const failed = res.Errors?.[0];
      if (failed) throw new Error(`${failed.Key}: ${failed.Code} ${failed.Message}`);
    } catch (error) {
      throw describeS3Error(error, `the deletion of ${batch.length} objects`);
    }
  }
}

export async function readManifest(
  client: S3Client,
  bucket: string,
  key: string,
): Promise<Manifest | undefined> {
  try {
    const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
    return JSON.parse((await res.Body?.transformToString('utf8')) ?? '') as Manifest;
  } catch (error) {
    if (isStatus(error, 404) || (error as Error).name === 'NoSuchKey') return undefined;
    if (error instanceof SyntaxError) return undefined;
    throw describeS3Error(error, `s3://${bucket}/${key}`);
  }
}

export async function writeJson(
  client: S3Client,
  bucket: string,
  key: string,
  value: unknown,
): Promise<void> {
  try {
    await client.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: key,
        Body: `${JSON.stringify(value, null, 2)}\n`,
        ContentType: 'application/json',
      }),
    );
  } catch (error) {
    throw describeS3Error(error, `s3://${bucket}/${key}`);
  }
}
