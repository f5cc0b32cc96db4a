/**
 * Streams an archive into a multipart upload. The part size follows the expected size, so
 * that the archive fits in S3's 10,000 parts; memory stays near part size x queue size.
 * A failed or aborted stream aborts the multipart upload: no orphan parts.
 */
import {
  AbortMultipartUploadCommand,
  ListMultipartUploadsCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { createHash } from 'node:crypto';
import { PassThrough, Transform, type Readable, type TransformCallback } from 'node:stream';

export const MIN_PART_SIZE = 8 * 1024 * 1024;
export const MAX_PART_SIZE = 5 * 1024 ** 3;
export const MAX_PARTS = 10_000;
/** Parts kept in reserve for an archive larger than expected (compression can expand data). */
const PART_HEADROOM = 0.8;

/** The smallest part size (a whole MiB, at least 8 MiB) that fits `expectedBytes` in 8,000 parts. */
export function choosePartSize(expectedBytes: number): number {
  const mib = 1024 * 1024;
  const needed = Math.ceil(expectedBytes / (MAX_PARTS * PART_HEADROOM) / mib) * mib;
  return Math.min(MAX_PART_SIZE, Math.max(MIN_PART_SIZE, needed));
}

/** Counts and hashes the bytes that pass through it. */
export class HashingCounter extends Transform {
  private readonly hash = createHash('sha256');
  bytes = 0;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hash.update(chunk);
    this.bytes += chunk.length;
    callback(null, chunk);
  }

  digest(): string {
    return this.hash.digest('hex');
  }
}

export interface StreamUploadOptions {
  client: S3Client;
  bucket: string;
  key: string;
  body: Readable;
  partSize: number;
  queueSize: number;
  contentType?: string;
  metadata?: Record<string, string>;
  /**
   * Resolves when the source has ended well, rejects when it has not. The upload is only
   * completed after it resolves: a stream that ends early is never a finished object.
   */
  sourceOk: Promise<void>;
}

export interface StreamUploadResult {
  bytes: number;
  sha256: string;
  etag?: string;
}

export async function streamUpload(options: StreamUploadOptions): Promise<StreamUploadResult> {
  const counter = new HashingCounter();
  const gate = new PassThrough({ highWaterMark: 1024 * 1024 });
  let sourceEnded = false;
  options.body.on('error', (error) => gate.destroy(error));
  options.body.pipe(counter, { end: false });
  options.body.on('end', () => {
    sourceEnded = true;
    counter.end();
  });
  counter.pipe(gate, { end: false });
  const counted = new Promise<void>((resolve) => counter.on('end', resolve));

  // The gate closes only once the remote side has reported success.
  const gated = Promise.all([counted, options.sourceOk]).then(
    () => {
      gate.end();
    },
    (error: Error) => {
      gate.destroy(error);
      throw error;
    },
  );

  const upload = new Upload({
    client: options.client,
    params: {
      Bucket: options.bucket,
      Key: options.key,
      Body: gate,
      ContentType: options.contentType ?? 'application/gzip',
      Metadata: options.metadata,
    },
    partSize: options.partSize,
    queueSize: options.queueSize,
    leavePartsOnError: false,
  });

  const uploading = upload.done();
  try {
    const [result] = await Promise.all([uploading, gated]);
    if (!sourceEnded) throw new Error('the archive stream ended before its end');
    return { bytes: counter.bytes, sha256: counter.digest(), etag: result.ETag };
  } catch (error) {
    await upload.abort().catch(() => undefined);
    await uploading.catch(() => undefined);
    options.body.destroy();
    throw error;
  }
}

/**
 * Aborts every in-progress multipart upload of exactly `key` (a safety net for an upload
 * whose own abort could not reach S3, and for the post step). Returns how many it aborted.
 * The Prefix is the key itself: S3 matches it as a prefix, MinIO as the exact key; only
 * uploads of `key` itself are touched either way.
 */
export async function abortUploads(client: S3Client, bucket: string, key: string): Promise<number> {
  let aborted = 0;
  let keyMarker: string | undefined;
  let uploadIdMarker: string | undefined;
  for (;;) {
    const res = await client.send(
      new ListMultipartUploadsCommand({
        Bucket: bucket,
        Prefix: key,
        KeyMarker: keyMarker,
        UploadIdMarker: uploadIdMarker,
      }),
    );
    for (const u of res.Uploads ?? []) {
      if (u.Key !== key || !u.UploadId) continue;
      await client
        .send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: u.UploadId }))
        .catch((error) => {
          // Gone already (its own abort won the race): nothing left to do.
          if (
            (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode !== 404
          )
            throw error;
        });
      aborted++;
    }
    if (!res.IsTruncated) return aborted;
    keyMarker = res.NextKeyMarker;
    uploadIdMarker = res.NextUploadIdMarker;
  }
}
