import { readFileSync } from 'node:fs';
import { S3Client } from '@aws-sdk/client-s3';
import { headObject, rangedDownload } from '../src/s3/download.ts';
const MiB = 1024 * 1024;
const srv = JSON.parse(readFileSync('/tmp/i11-srv.json', 'utf8'));
const pc = new S3Client({ endpoint: `http://127.0.0.1:${srv.port}`, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: srv.id, secretAccessKey: srv.secret } });
const runs = JSON.parse(process.argv[2]!) as [number, number][];
for (const [connections, rangeMiB] of runs) {
  const object = await headObject(pc, 'snapshots', 'WAN/a');
  const t = performance.now();
  const body = rangedDownload({ client: pc, bucket: 'snapshots', key: 'WAN/a', object, connections, rangeBytes: rangeMiB * MiB });
  for await (const _ of body) { void _; }
  console.log('ranged', connections, rangeMiB, ((object.size / MiB) / ((performance.now() - t) / 1000)).toFixed(1), 'MiB/s');
}
pc.destroy();
