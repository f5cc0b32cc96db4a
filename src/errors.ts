/** Errors the operator can act on. Each says what went wrong and what to do. */

export class ActionError extends Error {
  override name = 'ActionError';
}

/** An input is missing or cannot be accepted. Raised before anything touches the node. */
export class InputError extends ActionError {
  override name = 'InputError';
}

/** The host could not be reached, did not prove its key, or refused the login. */
export class ConnectError extends ActionError {
  override name = 'ConnectError';
}

/** The node's data directory, tools or state are not what the action needs. */
export class HostError extends ActionError {
  override name = 'HostError';
}

/** A remote command exited non-zero. */
export class RemoteCommandError extends ActionError {
  override name = 'RemoteCommandError';
  constructor(
    readonly what: string,
    readonly code: number | null,
    readonly stderr: string,
  ) {
    super(
      `${what} failed (exit ${code ?? 'signal'})${stderr.trim() ? `: ${lastLines(stderr, 6)}` : ''}`,
    );
  }
}

/** The bucket, the credentials or a transfer to S3 failed. */
export class StorageError extends ActionError {
  override name = 'StorageError';
}

/**
 * The watchdog on the host started the node while the run held it down: the run no longer
 * owns the node, and what it was about to do with it is not done.
 */
export class NodeLostError extends ActionError {
  override name = 'NodeLostError';
}

/**
 * A read of a stored object could not be finished: one of its ranges failed on every attempt,
 * or S3 refused it outright. The message names the range and the last reason.
 */
export class DownloadError extends StorageError {
  override name = 'DownloadError';
}

/**
 * The stored object is no longer the one the read began with: S3 refused a ranged read pinned
 * to its first ETag (412), or the object is gone. Nothing read so far can be trusted with the rest.
 */
export class ObjectChangedError extends StorageError {
  override name = 'ObjectChangedError';
}

/** A stored snapshot is not whole. */
export class IntegrityError extends ActionError {
  override name = 'IntegrityError';
}

export function lastLines(text: string, n: number): string {
  return text.trim().split('\n').slice(-n).join('\n');
}

export function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
