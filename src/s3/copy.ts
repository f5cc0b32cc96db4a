/** Server-side copies. One CopyObject holds at most 5 GB; larger objects are copied in parts. */
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  UploadPartCopyCommand,
  type CompletedPart,
  type S3Client,
} from '@aws-sdk/client-s3';
import { describeS3Error } from './client.js';

export const COPY_OBJECT_LIMIT = 5 * 1000 ** 3;

export interface CopyOptions {
  /** Objects larger than this are copied with UploadPartCopy. */
  threshold?: number;
  partSize?: number;
}

/** Byte ranges for UploadPartCopy: parts of at least 5 MiB (but the last), at most 10,000 of them. */
export function copyRanges(size: number, partSize?: number): Array<{ start: number; end: number }> {
  const part = Math.max(partSize ?? Math.ceil(size / 9000), 5 * 1024 * 1024);
  const ranges = [];
  for (let start = 0; start < size; start += part)
    ranges.push({ start, end: Math.min(size, start + part) - 1 });
  return ranges;
}

export async function copyObject(
  client: S3Client,
  bucket: string,
  source: string,
  target: string,
  size: number,
  options: CopyOptions = {},
): Promise<void> {
  const copySource = `${bucket}/${source.split('/').map(encodeURIComponent).join('/')}`;
  if (size <= (options.threshold ?? COPY_OBJECT_LIMIT)) {
    try {
      await client.send(
        new CopyObjectCommand({ Bucket: bucket, Key: target, CopySource: copySource }),
      );
      return;
    } catch (error) {
      throw describeS3Error(error, `the copy to s3://${bucket}/${target}`);
    }
  }
  const created = await client.send(
    new CreateMultipartUploadCommand({ Bucket: bucket, Key: target }),
  );
  const uploadId = created.UploadId as string;
  try {
    const parts: CompletedPart[] = [];
    const ranges = copyRanges(size, options.partSize);
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < ranges.length) {
        const index = next++;
        const range = ranges[index] as { start: number; end: number };
        const res = await client.send(
          new UploadPartCopyCommand({
            Bucket: bucket,
            Key: target,
            UploadId: uploadId,
            PartNumber: index + 1,
            CopySource: copySource,
            CopySourceRange: `bytes=${range.start}-${range.end}`,
          }),
        );
        parts[index] = { PartNumber: index + 1, ETag: res.CopyPartResult?.ETag };
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    await client.send(
      new CompleteMultipartUploadCommand({
        Bucket: bucket,
        Key: target,
        UploadId: uploadId,
        MultipartUpload: { Parts: parts },
      }),
    );
  } catch (error) {
    await client
      .send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: target, UploadId: uploadId }))
      .catch(() => undefined);
    throw describeS3Error(error, `the multipart copy to s3://${bucket}/${target}`);
  }
}
