/**
 * The S3 half of the seed's scripts, for the benchmark, where `aws` (the seed's tool) is
 * replaced by the AWS SDK: run on the "host" by the seed's bash script, like `aws s3 cp`.
 *
 *   upload   BUCKET KEY FILE      aws s3 cp FILE s3://BUCKET/KEY   (multipart, 8 MiB x 10, as the CLI)
 *   list     BUCKET PREFIX        aws s3 ls s3://BUCKET/PREFIX --recursive | grep -v backup_list
 *                                  | sort -r | awk -F/ '{print $2"/"$3}' > backup_list;
 *                                aws s3 cp backup_list s3://BUCKET/PREFIX/backup_list
 *   download BUCKET KEY FILE      axel -a URL --output FILE
 *
 * Endpoint and credentials from the environment: BENCH_S3_ENDPOINT, AWS_ACCESS_KEY_ID, ...
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import type { Readable } from 'node:stream';
import {
  GetObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';

const [cmd, bucket, a, b] = process.argv.slice(2);
const client = new S3Client({
  endpoint: process.env.BENCH_S3_ENDPOINT,
  region: process.env.AWS_REGION ?? 'us-east-1',
  forcePathStyle: true,
});

async function main(): Promise<void> {
  if (!bucket || !a) throw new Error('usage: seed-s3.ts upload|list|download BUCKET ...');
  if (cmd === 'upload' && b) {
    await new Upload({
      client,
      params: { Bucket: bucket, Key: a, Body: createReadStream(b, { highWaterMark: 1 << 20 }) },
      partSize: 8 * 1024 * 1024,
      queueSize: 10,
    }).done();
  } else if (cmd === 'list') {
    const prefix = a.replace(/\/$/, '');
    const lines: string[] = [];
    let token: string | undefined;
    do {
      const r = await client.send(
        new ListObjectsV2Command({
          Bucket: bucket,
          Prefix: `${prefix}/`,
          ContinuationToken: token,
        }),
      );
      for (const o of r.Contents ?? []) {
        if (!o.Key || o.Key.includes('backup_list')) continue;
        // `aws s3 ls` prints "YYYY-MM-DD HH:MM:SS SIZE KEY"; `sort -r` orders by that text.
        lines.push(
          `${o.LastModified?.toISOString() ?? ''} ${String(o.Size ?? 0).padStart(10)} ${o.Key}`,
        );
      }
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    lines.sort().reverse();
    const list = lines.map((l) => l.split('/').slice(1, 3).join('/')).join('\n') + '\n';
    await client.send(
      new PutObjectCommand({ Bucket: bucket, Key: `${prefix}/backup_list`, Body: list }),
    );
  } else if (cmd === 'download' && b) {
    const r = await client.send(new GetObjectCommand({ Bucket: bucket, Key: a }));
    await pipeline(r.Body as Readable, createWriteStream(b));
  } else {
    throw new Error(`unknown command ${cmd}`);
  }
}

main().then(
  () => client.destroy(),
  (error: unknown) => {
    console.error(error instanceof Error ? error.message : error);
    process.exit(1);
  },
);
