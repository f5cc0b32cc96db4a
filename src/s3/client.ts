/** The S3 client, from the default credential chain (OIDC from configure-aws-credentials works as is). */
import {
  HeadBucketCommand,
  S3Client,
  S3ServiceException,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { StorageError } from '../errors.js';
import type { S3Settings } from '../settings.js';
import { SocketGetHandler } from './socket-get.js';

export function createClient(settings: S3Settings): S3Client {
  return new S3Client(clientConfig(settings));
}

/**
 * A client for the bulk reads of a restore or a verify (an archive's ranges, a tree's
 * objects): its GETs read into reused memory (see socket-get.ts), its other requests go as
 * createClient's do.
 */
export function createReadClient(settings: S3Settings): S3Client {
  return new S3Client({ ...clientConfig(settings), requestHandler: new SocketGetHandler() });
}

function clientConfig(settings: S3Settings): S3ClientConfig {
  const config: S3ClientConfig = {
    region:
      settings.region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1',
    endpoint: settings.endpoint,
    forcePathStyle: settings.forcePathStyle,
    maxAttempts: 5,
    // The archive is proved whole end to end by the sha256 in its manifest (and TLS guards
    // each request); a CRC32 of every part on top cost the runner CPU the stream needs.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    // Nor is a checksum asked of a GET: AWS S3 would send the CRC64NVME it keeps of each
    // object, which the SDK checks in JavaScript over every byte of a tree's files, through a
    // stream of its own in place of the read client's body.
    responseChecksumValidation: 'WHEN_REQUIRED',
  };
  if (settings.unsigned) {
    // A public bucket: requests go out unsigned, no credentials needed.
    config.credentials = { accessKeyId: '', secretAccessKey: '' };
    config.signer = { sign: async (request) => request };
  }
  return config;
}

/** Proves, before the node is touched, that the credentials work and the bucket exists. */
export async function checkBucket(client: S3Client, settings: S3Settings): Promise<void> {
  try {
    await client.send(new HeadBucketCommand({ Bucket: settings.bucket }));
  } catch (error) {
    throw describeS3Error(error, `bucket '${settings.bucket}'`);
  }
}

/** Turns an SDK error into one the operator can act on. */
export function describeS3Error(error: unknown, what: string): StorageError {
  if (error instanceof StorageError) return error;
  const err = error as Error & {
    name?: string;
    $metadata?: { httpStatusCode?: number };
    code?: string;
  };
  const status = err.$metadata?.httpStatusCode;
  if (
    err.name === 'CredentialsProviderError' ||
    /Could not load credentials/i.test(err.message ?? '')
  ) {
    return new StorageError(
      `No AWS credentials were found for ${what}. Add a step with aws-actions/configure-aws-credentials before this one ` +
        `(or set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY).`,
    );
  }
  if (status === 404 || err.name === 'NotFound' || err.name === 'NoSuchBucket') {
    return new StorageError(
      `S3 answered 404 for ${what}: check 'bucket', 'region' and 'endpoint'.`,
    );
  }
  if (status === 403 || err.name === 'AccessDenied' || err.name === 'Forbidden') {
    return new StorageError(
      `S3 refused access to ${what} (403): the credentials lack a permission (see the IAM policy in the README) or are wrong.`,
    );
  }
  if (status === 301 || err.name === 'PermanentRedirect') {
    return new StorageError(`${what} is in another region: set 'region' to the bucket's region.`);
  }
  if (error instanceof S3ServiceException) {
    return new StorageError(`S3 error on ${what}: ${err.name} (${status ?? '?'}): ${err.message}`);
  }
  return new StorageError(
    `S3 error on ${what}: ${err.code ?? err.name ?? ''} ${err.message}`.trim(),
  );
}

export function isStatus(error: unknown, ...statuses: number[]): boolean {
  const status = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
  return status !== undefined && statuses.includes(status);
}

export function objectUrl(settings: S3Settings, key: string): string {
  const path = key.split('/').map(encodeURIComponent).join('/');
  if (settings.endpoint)
    return `${settings.endpoint.replace(/\/+$/, '')}/${settings.bucket}/${path}`;
  return `s3://${settings.bucket}/${key}`;
}
