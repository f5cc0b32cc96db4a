/** Names of the action's inputs, outputs and saved state, in one place. */

export enum Inputs {
  Mode = 'mode',
  Host = 'host',
  Port = 'port',
  Username = 'username',
  SshKey = 'ssh-key',
  SshKeyPassphrase = 'ssh-key-passphrase',
  HostKey = 'host-key',
  InsecureSkipHostKey = 'insecure-skip-host-key-check',
  SshTransport = 'ssh-transport',
  SshConnections = 'ssh-connections',
  PrepDir = 'prep-dir',
  DataDir = 'data-dir',
  StopCommand = 'stop-command',
  StartCommand = 'start-command',
  PeerUrl = 'peer-url',
  Service = 'service',
  Bucket = 'bucket',
  Prefix = 'prefix',
  PermanentPrefix = 'permanent-prefix',
  PermanentCopy = 'permanent-copy',
  ManifestPrefix = 'manifest-prefix',
  Region = 'region',
  Endpoint = 'endpoint',
  ForcePathStyle = 's3-force-path-style',
  Unsigned = 's3-unsigned',
  Compression = 'compression',
  CompressionLevel = 'compression-level',
  Consistency = 'consistency',
  RetentionDays = 'retention-days',
  LocalCopy = 'local-copy',
  LocalCopyDays = 'local-copy-days',
  MaxDowntime = 'max-downtime',
  PartSize = 'part-size',
  UploadConcurrency = 'upload-concurrency',
  DownloadConnections = 'download-connections',
  Verify = 'verify',
  Snapshot = 'snapshot',
  NodeIp = 'node-ip',
  StopNode = 'stop-node',
  StartNode = 'start-node',
  KeepPrevious = 'keep-previous',
  HealthTimeout = 'health-timeout',
  DiskMargin = 'disk-margin',
  NodeProcessPattern = 'node-process-pattern',
  NodeKind = 'node-kind',
  Chain = 'chain',
  Format = 'format',
  FilesInFlight = 'files-in-flight',
  BytesInFlight = 'bytes-in-flight',
  PublicUrl = 'public-url',
  Deep = 'deep',
}

export enum Outputs {
  Skipped = 'skipped',
  Key = 'key',
  Url = 'url',
  BlockHeight = 'block-height',
  Size = 'size',
  Sha256 = 'sha256',
  DowntimeSeconds = 'downtime-seconds',
  HeightReached = 'height-reached',
  Snapshots = 'snapshots',
  Files = 'files',
  UncompressedSize = 'uncompressed-size',
  DurationSeconds = 'duration-seconds',
}

/** What the main step leaves for the post step, so that it can undo what the main step did. */
export enum State {
  IsPost = 'isPost',
  NodeStopped = 'nodeStopped',
  NodeStarted = 'nodeStarted',
  StagingDir = 'stagingDir',
  WatchdogFlag = 'watchdogFlag',
  KeyDir = 'keyDir',
  /** The archive key being uploaded; the post step removes its incomplete upload unless it was published. */
  UploadKey = 'uploadKey',
  /** 'true' once backup_list names the archive of UploadKey. */
  UploadPublished = 'uploadPublished',
  /** The command that starts the node, as this run resolved it for its kind. */
  StartCommand = 'startCommand',
}

export const ACTION_NAME = 'prep-snapshot';
export const ACTION_VERSION = '0.1.0';
