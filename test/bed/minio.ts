// A real MinIO server on 127.0.0.1 for tests (binary built by test/bed/install.sh).
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import {
  CreateBucketCommand,
  GetObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutBucketPolicyCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { freePort } from './ports.js';
import { removeAtExit, spawnServer, type Server } from './proc.js';
import { minioBin } from './paths.js';

export interface S3Server {
  /** "http://127.0.0.1:PORT" */
  endpoint: string;
  port: number;
  accessKeyId: string;
  secretAccessKey: string;
  region: 'us-east-1';
  /** MinIO's data dir (removed by stop()). */
  dataDir: string;
  /** A new S3Client for this server (path-style). */
  client(): S3Client;
  createBucket(name: string): Promise<void>;
  /** All keys in bucket (optionally under prefix), sorted. */
  listKeys(bucket: string, prefix?: string): Promise<string[]>;
  /** Number of in-progress multipart uploads in bucket (optionally for keys under prefix). */
  listMultipartUploads(bucket: string, prefix?: string): Promise<number>;
  getText(bucket: string, key: string): Promise<string>;
  /** MinIO's log so far. */
  log(): string;
  pid: number;
  stop(): Promise<void>;
}

export interface MinioOptions {
  startTimeoutMs?: number;
}

/**
 * The environment an action step sees after aws-actions/configure-aws-credentials,
 * pointed at this server. Only credentials and region: the endpoint is not part of what
 * that action sets, so the action under test must be told it another way (an input, or
 * add AWS_ENDPOINT_URL_S3: server.endpoint, which the SDK v3 honours).
 */
/**
 * Lets anyone read the objects of `bucket` (under `under/`, when given) over plain HTTP, as a
 * public snapshot bucket does; listing stays private.
 */
export async function publicRead(client: S3Client, bucket: string, under?: string): Promise<void> {
  const policy = {
    Version: '2012-10-17',
    Statement: [
      {
        Effect: 'Allow',
        Principal: { AWS: ['*'] },
        Action: ['s3:GetObject'],
        Resource: [`arn:aws:s3:::${bucket}/${under ? `${under}/` : ''}*`],
      },
    ],
  };
  await client.send(new PutBucketPolicyCommand({ Bucket: bucket, Policy: JSON.stringify(policy) }));
}

export function s3Env(server: S3Server): Record<string, string> {
  return {
    AWS_ACCESS_KEY_ID: server.accessKeyId,
    AWS_SECRET_ACCESS_KEY: server.secretAccessKey,
    AWS_REGION: server.region,
    AWS_DEFAULT_REGION: server.region,
  };
}

async function waitHealthy(endpoint: string, server: Server, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (server.child.exitCode !== null || server.child.signalCode !== null) {
      throw new Error(`minio exited before it was ready:\n${server.log()}`);
    }
    try {
      const r = await fetch(`${endpoint}/minio/health/live`, { signal: AbortSignal.timeout(1000) });
      if (r.ok) return;
    } catch {
      /* not yet */
    }
    if (Date.now() > deadline)
      throw new Error(`minio at ${endpoint} not healthy within ${timeoutMs} ms:\n${server.log()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Start MinIO on a free port of 127.0.0.1 with a fresh data dir. Throws if it cannot start. */
export async function startMinio(opts: MinioOptions = {}): Promise<S3Server> {
  const bin = minioBin();
  if (!existsSync(bin)) throw new Error(`${bin} not found: run bash test/bed/install.sh`);
  const dataDir = await mkdtemp(join(tmpdir(), 'bed-minio-'));
  removeAtExit(dataDir);
  let server: Server | undefined;
  try {
    const port = await freePort();
    let consolePort = await freePort();
    while (consolePort === port) consolePort = await freePort();
    const accessKeyId = 'bed' + randomBytes(6).toString('hex');
    const secretAccessKey = randomBytes(18).toString('hex');
    const endpoint = `http://127.0.0.1:${port}`;
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH,
      HOME: dataDir, // keeps ~/.minio (certs dir) inside the temp dir
      MINIO_ROOT_USER: accessKeyId,
      MINIO_ROOT_PASSWORD: secretAccessKey,
      MINIO_UPDATE: 'off',
      MINIO_BROWSER: 'off',
    };
    const srv = spawnServer(
      bin,
      [
        'server',
        join(dataDir, 'data'),
        '--address',
        `127.0.0.1:${port}`,
        '--console-address',
        `127.0.0.1:${consolePort}`,
        '--quiet',
      ],
      { env, cwd: dataDir },
    );
    server = srv;
    await waitHealthy(endpoint, srv, opts.startTimeoutMs ?? 30_000);
    const region = 'us-east-1' as const;
    const client = (): S3Client =>
      new S3Client({
        endpoint,
        region,
        forcePathStyle: true,
        credentials: { accessKeyId, secretAccessKey },
      });
    const admin = client();
    let stopped = false;
    return {
      endpoint,
      port,
      accessKeyId,
      secretAccessKey,
      region,
      dataDir,
      client,
      pid: srv.child.pid ?? -1,
      log: srv.log,
      createBucket: async (name) => {
        await admin.send(new CreateBucketCommand({ Bucket: name }));
      },
      listKeys: async (bucket, prefix) => {
        const keys: string[] = [];
        let token: string | undefined;
        do {
          const r = await admin.send(
            new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }),
          );
          for (const o of r.Contents ?? []) if (o.Key !== undefined) keys.push(o.Key);
          token = r.IsTruncated ? r.NextContinuationToken : undefined;
        } while (token);
        return keys.sort();
      },
      listMultipartUploads: async (bucket, prefix) => {
        // MinIO treats ListMultipartUploads' Prefix as an exact object key (a real prefix
        // like "backups/" returns nothing), so list the whole bucket and filter here.
        let n = 0;
        let keyMarker: string | undefined;
        let uploadIdMarker: string | undefined;
        for (;;) {
          const r = await admin.send(
            new ListMultipartUploadsCommand({
              Bucket: bucket,
              KeyMarker: keyMarker,
              UploadIdMarker: uploadIdMarker,
            }),
          );
          for (const u of r.Uploads ?? [])
            if (prefix === undefined || (u.Key ?? '').startsWith(prefix)) n++;
          if (!r.IsTruncated) return n;
          keyMarker = r.NextKeyMarker;
          uploadIdMarker = r.NextUploadIdMarker;
        }
      },
      getText: async (bucket, key) => {
        const r = await admin.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
        if (!r.Body) throw new Error(`no body for ${bucket}/${key}`);
        return r.Body.transformToString('utf8');
      },
      stop: async () => {
        if (stopped) return;
        stopped = true;
        admin.destroy();
        await srv.kill();
        await rm(dataDir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await server?.kill();
    await rm(dataDir, { recursive: true, force: true });
    throw err;
  }
}
