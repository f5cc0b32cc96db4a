/**
 * The bucket side of tree snapshots: which objects are stored, putting one under its sha256
 * (with S3 checking that sha256 itself), the manifests, and the journal of a backup in progress.
 */
import {
  GetObjectCommand,
  PutObjectCommand,
  type PutObjectCommandInput,
  type S3Client,
} from '@aws-sdk/client-s3';
import { describeS3Error, isStatus } from '../s3/client.js';
import { parseArchivePath } from '../naming.js';
import { archivesIn, listObjects, writeJson, type StoredArchive } from '../s3/store.js';
import {
  checkTreeManifest,
  objectKey,
  objectSha,
  objectsPrefix,
  type TreeFile,
  type TreeManifest,
} from './layout.js';

/** The objects stored under the prefix: sha256 → size. */
export async function storedObjects(
  client: S3Client,
  bucket: string,
  prefix: string,
): Promise<Map<string, number>> {
  return objectsUnder(client, bucket, objectsPrefix(prefix));
}

/** The objects under the key prefix `objects` (a manifest's `objects`): sha256 → size. */
export async function objectsUnder(
  client: S3Client,
  bucket: string,
  objects: string,
): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const o of await listObjects(client, bucket, objects)) {
    const sha = objectSha(objects, o.key);
    if (sha) out.set(sha, o.size);
  }
  return out;
}

/**
 * Puts `body` under its sha256. The request carries that sha256 as its signed payload hash, so
 * S3 refuses it (400 XAmzContentSHA256Mismatch) unless the bytes it received are those: what is
 * stored under a name is proven by the store itself.
 */
export async function putObject(
  client: S3Client,
  bucket: string,
  prefix: string,
  sha256: string,
  body: Buffer,
): Promise<void> {
  const input: PutObjectCommandInput = {
    Bucket: bucket,
    Key: objectKey(prefix, sha256),
    Body: body,
    ContentLength: body.length,
    ContentType: 'application/octet-stream',
  };
  const command = new PutObjectCommand(input);
  command.middlewareStack.add(
    (next) => async (args) => {
      const request = args.request as { headers?: Record<string, string> };
      if (request.headers) request.headers['x-amz-content-sha256'] = sha256;
      return next(args);
    },
    { step: 'build', name: 'prepSnapshotPayloadHash' },
  );
  try {
    await client.send(command);
  } catch (error) {
    throw describeS3Error(error, `s3://${bucket}/${input.Key}`);
  }
}

/** The bytes of `key`, or undefined when it does not exist. */
export async function readBytes(
  client: S3Client,
  bucket: string,
  key: string,
  range?: string,
): Promise<Buffer | undefined> {
  try {
    const res = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key, Range: range }));
    return Buffer.from((await res.Body?.transformToByteArray()) ?? []);
  } catch (error) {
    if (isStatus(error, 404) || (error as Error).name === 'NoSuchKey') return undefined;
    throw describeS3Error(error, `s3://${bucket}/${key}`);
  }
}

/** A tree's manifest, checked; undefined when there is none. */
export async function readTreeManifest(
  client: S3Client,
  bucket: string,
  key: string,
): Promise<TreeManifest | undefined> {
  const bytes = await readBytes(client, bucket, key);
  if (!bytes) return undefined;
  let parsed: TreeManifest;
  try {
    parsed = JSON.parse(bytes.toString('utf8')) as TreeManifest;
  } catch {
    return checkTreeManifest(undefined as unknown as TreeManifest, key);
  }
  return checkTreeManifest(parsed, key);
}

/**
 * What a backup in progress has stored so far, at `{prefix}/partial/{run}.json`: the files
 * whose objects it uploaded, with what proves them unchanged on the host. A run that fails
 * leaves it; the next backup of the same host reads it as it reads the previous manifest, so
 * that a first backup too large for one job finishes over several.
 */
export interface Journal {
  run: string;
  source: TreeManifest['source'];
  updatedAt: string;
  files: TreeFile[];
}

export const journalPrefix = (prefix: string): string => `${prefix}/partial/`;
export const journalKey = (prefix: string, run: string): string =>
  `${journalPrefix(prefix)}${run}.json`;

/**
 * A run's journal as it stores files, ahead of the stop and after the freeze: written every
 * 30 s while files go up (a runner that vanishes leaves what it stored), and when a send ends.
 */
export class RunJournal {
  readonly journal: Journal;
  private written = performance.now();

  constructor(
    private readonly client: S3Client,
    private readonly bucket: string,
    private readonly prefix: string,
    run: string,
    source: Journal['source'],
  ) {
    this.journal = { run, source, updatedAt: new Date().toISOString(), files: [] };
  }

  get files(): TreeFile[] {
    return this.journal.files;
  }

  /** A file stored; the journal is written when the last write is 30 s old. */
  record(file: TreeFile, onError: (error: unknown) => void): void {
    this.journal.files.push(file);
    if (performance.now() - this.written > 30_000) this.write().catch(onError);
  }

  async write(): Promise<void> {
    this.written = performance.now();
    this.journal.updatedAt = new Date().toISOString();
    await writeJson(
      this.client,
      this.bucket,
      journalKey(this.prefix, this.journal.run),
      this.journal,
    );
  }
}

export async function readJournals(
  client: S3Client,
  bucket: string,
  prefix: string,
): Promise<Array<{ key: string; journal: Journal; lastModified?: Date }>> {
  const out: Array<{ key: string; journal: Journal; lastModified?: Date }> = [];
  for (const o of await listObjects(client, bucket, journalPrefix(prefix))) {
    const bytes = await readBytes(client, bucket, o.key);
    try {
      const journal = JSON.parse(bytes?.toString('utf8') ?? '') as Journal;
      if (Array.isArray(journal.files))
        out.push({ key: o.key, journal, lastModified: o.lastModified });
    } catch {
      // A journal cut short is only a missed chance to skip files: they are sent again.
    }
  }
  return out;
}

/** A small text object (a tree's index, checksum file or pointer). */
export async function putText(
  client: S3Client,
  bucket: string,
  key: string,
  text: string,
  contentType: string,
): Promise<void> {
  try {
    await client.send(
      new PutObjectCommand({ Bucket: bucket, Key: key, Body: text, ContentType: contentType }),
    );
  } catch (error) {
    throw describeS3Error(error, `s3://${bucket}/${key}`);
  }
}

/**
 * Every snapshot under `prefix`, from one listing (it holds the tree objects too, which can be
 * tens of thousands): the archives, and the trees, one per
 * `{prefix}/YYYYMMDD/{name}.tree/manifest.json`.
 */
export async function listSnapshots(
  client: S3Client,
  bucket: string,
  prefix: string,
): Promise<StoredArchive[]> {
  const objects = await listObjects(client, bucket, `${prefix}/`);
  const trees = objects.flatMap((o) => {
    if (!o.key.endsWith('/manifest.json')) return [];
    const folder = o.key.slice(0, -'/manifest.json'.length);
    const name = parseArchivePath(folder);
    return name?.format === 'tree' && folder === `${prefix}/${name.date}/${name.file}`
      ? [{ key: folder, size: o.size, lastModified: o.lastModified, name }]
      : [];
  });
  return [...archivesIn(objects, prefix), ...trees];
}
