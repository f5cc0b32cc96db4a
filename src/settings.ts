/**
 * The one input parser: it reads every input once, checks it, and returns typed settings.
 * Nothing after it calls core.getInput. A bad value fails the run before the node is touched.
 */
import * as core from '@actions/core';
import { Inputs } from './constants.js';
import { parseSize } from './duration.js';
import { InputError } from './errors.js';
import {
  absolutePath,
  diskMargin,
  duration,
  isIpv4,
  keyPrefix,
  parseBoolean,
  parseInteger,
  separatePrefixes,
} from './input-values.js';
import { parseHostKeyPins, type HostKeyPin } from './ssh/host-key.js';

export type Mode = 'backup' | 'restore' | 'list' | 'verify';
export type Compression = 'gzip' | 'zstd';
export type Consistency = 'hardlink' | 'stop';
/** Where a restore reads an archive from S3: see modes/restore-on-host.ts. */
export type DownloadOn = 'auto' | 'host' | 'runner';
/** An archive (one tar stream, compressed) or a tree (each file stored once, see tree/layout.ts). */
export type Format = 'archive' | 'tree';
export type SshTransport = 'auto' | 'openssh' | 'ssh2';

export interface SshSettings {
  host: string;
  port: number;
  username: string;
  privateKey: string;
  passphrase?: string;
  /** Empty when the operator opted out of host key checking. */
  hostKeys: HostKeyPin[];
  transport: SshTransport;
  /**
   * The SSH connections a tree's files share, both ways (a restore's files, see tree/fetch.ts;
   * a backup's new tables ahead of the stop, modes/backup-tree-ahead.ts): one connection moves
   * at most its window per round trip.
   */
  connections: number;
}

export type NodeKindChoice = 'auto' | 'loopchain' | 'goloop';

export interface NodeSettings {
  /** 'auto': found on the host (see `node-kind/index.ts`). */
  kind: NodeKindChoice;
  prepDir: string;
  dataDir: string;
  /** The stop and start commands: as given, or Compose in the prep dir. */
  stopCommand: string;
  startCommand: string;
  /** The stop and start commands when the inputs give them (a kind may have other defaults). */
  stopCommandGiven?: string;
  startCommandGiven?: string;
  peerUrl: string;
  maxDowntimeSeconds: number;
  /** goloop: the chain, by channel (MainNet's is icon_dex) or by cid (0x…). */
  chain: string;
}

export interface S3Settings {
  bucket: string;
  region?: string;
  endpoint?: string;
  forcePathStyle: boolean;
  unsigned: boolean;
  service: string;
  prefix: string;
  permanentPrefix: string;
  manifestPrefix: string;
  partSize?: number;
  queueSize: number;
  /** Ranged GETs in flight when an archive is read (restore, verify); see s3/download.ts. */
  downloadConnections: number;
  /** Trees: files and bytes held on the runner at once, in both directions. */
  filesInFlight: number;
  bytesInFlight: number;
  /** Trees: the URL under which a public reader (aria2c) finds the bucket's keys. */
  publicUrl?: string;
}

export interface BackupSettings {
  format: Format;
  compression: Compression;
  compressionLevel: number;
  consistency: Consistency;
  permanentCopy: boolean;
  retentionDays: number;
  localCopy: boolean;
  localCopyDays: number;
  verify: boolean;
}

export interface RestoreSettings {
  snapshot: string;
  nodeIp: string;
  stopNode: boolean;
  startNode: boolean;
  keepPrevious: boolean;
  healthTimeoutSeconds: number;
  diskMarginBytes: number;
  /** A running process whose command line matches this (grep -E) means the node is up. */
  processPattern: string;
  /** verify of a tree: read every object back and check its sha256 (else sizes only). */
  deep: boolean;
  /** An archive's bytes: fetched by the host itself over signed URLs, or through the runner. */
  downloadOn: DownloadOn;
}

export interface Settings {
  mode: Mode;
  /** The inputs left empty whose default depends on the node's kind (see `forKind`). */
  kindDefaults: { dataDir: boolean; peerUrl: boolean; compression: boolean; format: boolean };
  /** Absent for modes that need no host (list, verify). */
  ssh?: SshSettings;
  node: NodeSettings;
  s3: S3Settings;
  backup: BackupSettings;
  restore: RestoreSettings;
}

/**
 * The most runner memory that an upload's part buffers may take: it holds
 * (upload-concurrency + 1) x part-size (one part filling while the others are in flight; see
 * s3/upload.ts). GitHub-hosted runners have 7 to 16 GiB; an explicit 'part-size' and
 * 'upload-concurrency' whose buffers exceed this are refused.
 */
export const MAX_UPLOAD_BUFFER_BYTES = 2 * 1024 ** 3;

/** What an upload's part buffers take on the runner (see MAX_UPLOAD_BUFFER_BYTES). */
export function uploadBufferBytes(partSize: number, uploadConcurrency: number): number {
  return (uploadConcurrency + 1) * partSize;
}

/** S3's bounds on a multipart upload's part size. */
export const MIN_PART_SIZE = 5 * 1024 ** 2;
export const MAX_PART_SIZE = 5 * 1024 ** 3;

/** Reads an input; the getter is injectable so that tests need no environment. */
export type InputReader = (name: string) => string;

export const readActionInput: InputReader = (name) => core.getInput(name);

const MODES: readonly Mode[] = ['backup', 'restore', 'list', 'verify'];

export function parseSettings(read: InputReader = readActionInput): Settings {
  const get = (name: Inputs): string => read(name).trim();
  const bool = (name: Inputs, fallback: boolean): boolean =>
    parseBoolean(name, get(name), fallback);
  const int = (name: Inputs, fallback: number, min: number, max: number): number =>
    parseInteger(name, get(name), fallback, min, max);

  const mode = get(Inputs.Mode) || 'backup';
  if (!MODES.includes(mode as Mode)) {
    throw new InputError(`Input 'mode' is '${mode}'. Use one of: ${MODES.join(', ')}.`);
  }

  const kind = get(Inputs.NodeKind) || 'auto';
  if (kind !== 'auto' && kind !== 'loopchain' && kind !== 'goloop') {
    throw new InputError(
      `Input 'node-kind' is '${kind}'. Use 'auto', 'loopchain' (ICON 1) or 'goloop' (ICON 2).`,
    );
  }
  const chain = get(Inputs.Chain) || 'icon_dex';
  if (!/^(0x[0-9a-fA-F]{1,8}|[A-Za-z0-9_.-]{1,64})$/.test(chain)) {
    throw new InputError(
      `Input 'chain' is '${chain}'. Use the chain's channel (icon_dex on MainNet) or its cid (0x…).`,
    );
  }
  // Until the kind is known ('auto'), loopchain's defaults: the original guide's.
  const defaults = KIND_DEFAULTS[kind === 'goloop' ? 'goloop' : 'loopchain'];
  const prepDir = absolutePath(Inputs.PrepDir, get(Inputs.PrepDir) || '/app/prep');
  const dataDir = absolutePath(Inputs.DataDir, get(Inputs.DataDir) || defaults.dataDir(prepDir));
  const node: NodeSettings = {
    kind,
    prepDir,
    dataDir,
    stopCommand: get(Inputs.StopCommand) || composeCommand(prepDir, 'down'),
    startCommand: get(Inputs.StartCommand) || composeCommand(prepDir, 'up -d'),
    stopCommandGiven: get(Inputs.StopCommand) || undefined,
    startCommandGiven: get(Inputs.StartCommand) || undefined,
    peerUrl: get(Inputs.PeerUrl) || defaults.peerUrl,
    maxDowntimeSeconds: duration(Inputs.MaxDowntime, get(Inputs.MaxDowntime) || '30m', 10),
    chain: /^0x/i.test(chain) ? chain.toLowerCase() : chain,
  };
  if (!/^https?:\/\/[^\s'"]+$/.test(node.peerUrl)) {
    throw new InputError(`Input 'peer-url' is '${node.peerUrl}'. Use an http:// or https:// URL.`);
  }

  const service = get(Inputs.Service) || 'PRep';
  if (!/^[A-Za-z0-9_.-]+$/.test(service)) {
    throw new InputError(`Input 'service' is '${service}'. Use letters, digits, '_', '.' or '-'.`);
  }
  const bucket = get(Inputs.Bucket);
  if (!bucket)
    throw new InputError(`Input 'bucket' is required: the S3 bucket that holds the snapshots.`);
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(bucket)) {
    throw new InputError(`Input 'bucket' is '${bucket}', which is not a valid S3 bucket name.`);
  }
  const endpoint = get(Inputs.Endpoint) || undefined;
  if (endpoint && !/^https?:\/\/\S+$/.test(endpoint)) {
    throw new InputError(
      `Input 'endpoint' is '${endpoint}'. Use a URL such as https://s3.example.com.`,
    );
  }
  const partSizeText = get(Inputs.PartSize);
  const partSize = partSizeText ? parseSize(Inputs.PartSize, partSizeText) : undefined;
  if (partSize !== undefined && (partSize < MIN_PART_SIZE || partSize > MAX_PART_SIZE)) {
    throw new InputError(
      `Input 'part-size' is '${partSizeText}'. It must be between 5 MiB and 5 GiB (S3's limits).`,
    );
  }
  const queueSize = int(Inputs.UploadConcurrency, 4, 1, 16);
  if (partSize !== undefined && uploadBufferBytes(partSize, queueSize) > MAX_UPLOAD_BUFFER_BYTES) {
    throw new InputError(
      `Inputs 'part-size' (${partSizeText}) and 'upload-concurrency' (${queueSize}) would hold ` +
        `${queueSize + 1} part buffers of ${partSizeText} (${(uploadBufferBytes(partSize, queueSize) / 1024 ** 3).toFixed(1)} GiB) ` +
        `in the runner's memory, more than the 2 GiB allowed. Lower one of them (with ${queueSize}, a part of at most ` +
        `${Math.floor(MAX_UPLOAD_BUFFER_BYTES / (queueSize + 1) / 1024 ** 2)}MiB), or leave 'part-size' empty to have it chosen from the database's size.`,
    );
  }
  const publicUrl = get(Inputs.PublicUrl).replace(/\/+$/, '') || undefined;
  if (publicUrl && !/^https?:\/\/[^\s'"<>]+$/.test(publicUrl)) {
    throw new InputError(
      `Input 'public-url' is '${publicUrl}'. Use the http(s) URL under which the bucket's keys are read (e.g. https://cdn.example.com).`,
    );
  }
  const s3: S3Settings = {
    bucket,
    region: get(Inputs.Region) || undefined,
    endpoint,
    forcePathStyle: bool(Inputs.ForcePathStyle, endpoint !== undefined),
    unsigned: bool(Inputs.Unsigned, false),
    service,
    prefix: keyPrefix(Inputs.Prefix, get(Inputs.Prefix) || service),
    permanentPrefix: keyPrefix(
      Inputs.PermanentPrefix,
      get(Inputs.PermanentPrefix) || `Permanent/${service}`,
    ),
    manifestPrefix: keyPrefix(
      Inputs.ManifestPrefix,
      get(Inputs.ManifestPrefix) || '_prep-snapshot',
    ),
    partSize,
    queueSize,
    downloadConnections: int(Inputs.DownloadConnections, 8, 1, 16),
    filesInFlight: int(Inputs.FilesInFlight, 16, 1, 256),
    bytesInFlight: parseSize(Inputs.BytesInFlight, get(Inputs.BytesInFlight) || '48MiB'),
    publicUrl,
  };
  if (s3.bytesInFlight < 16 * 1024 ** 2 || s3.bytesInFlight > MAX_UPLOAD_BUFFER_BYTES) {
    throw new InputError(
      `Input 'bytes-in-flight' is '${get(Inputs.BytesInFlight)}'. It must be between 16MiB and 2GiB.`,
    );
  }
  separatePrefixes([
    [Inputs.Prefix, s3.prefix],
    [Inputs.PermanentPrefix, s3.permanentPrefix],
    [Inputs.ManifestPrefix, s3.manifestPrefix],
  ]);

  const compression = get(Inputs.Compression) || defaults.compression;
  if (compression !== 'gzip' && compression !== 'zstd') {
    throw new InputError(
      `Input 'compression' is '${compression}'. Use 'gzip' (readable by the original restore script) or 'zstd'.`,
    );
  }
  const format = get(Inputs.Format) || defaults.format;
  if (format !== 'archive' && format !== 'tree') {
    throw new InputError(
      `Input 'format' is '${format}'. Use 'archive' (one tar stream; the original scripts read it as tar.gz) or 'tree' ` +
        `(each file stored once: a backup sends only what changed).`,
    );
  }
  const consistency = get(Inputs.Consistency) || 'hardlink';
  if (consistency !== 'hardlink' && consistency !== 'stop') {
    throw new InputError(
      `Input 'consistency' is '${consistency}'. Use 'hardlink' (default) or 'stop'.`,
    );
  }
  const backup: BackupSettings = {
    format,
    compression,
    compressionLevel:
      compression === 'gzip'
        ? int(Inputs.CompressionLevel, DEFAULT_LEVEL.gzip, 1, 9)
        : int(Inputs.CompressionLevel, DEFAULT_LEVEL.zstd, 1, 19),
    consistency,
    permanentCopy: bool(Inputs.PermanentCopy, true),
    retentionDays: int(Inputs.RetentionDays, 15, 0, 36500),
    localCopy: bool(Inputs.LocalCopy, false),
    localCopyDays: int(Inputs.LocalCopyDays, 7, 1, 3650),
    verify: bool(Inputs.Verify, false),
  };

  const nodeIp = get(Inputs.NodeIp);
  if (nodeIp && !isIpv4(nodeIp)) {
    throw new InputError(`Input 'node-ip' is '${nodeIp}', which is not an IPv4 address.`);
  }
  const snapshot = get(Inputs.Snapshot) || 'latest';
  const height = /^(?:BH)?(\d+)$/i.exec(snapshot)?.[1];
  if (height !== undefined && !/^\d{8}$/.test(snapshot) && !Number.isSafeInteger(Number(height))) {
    throw new InputError(
      `Input 'snapshot' is '${snapshot}', whose block height is too large. Use 'latest', a date (YYYYMMDD), a block height (BH123) or a key.`,
    );
  }
  const downloadOn = get(Inputs.DownloadOn) || 'auto';
  if (downloadOn !== 'auto' && downloadOn !== 'host' && downloadOn !== 'runner') {
    throw new InputError(
      `Input 'download-on' is '${downloadOn}'. Use 'auto' (the host fetches the archive from S3 when it can reach it, ` +
        `else the runner relays it), 'host' or 'runner'.`,
    );
  }
  const restore: RestoreSettings = {
    snapshot,
    nodeIp,
    stopNode: bool(Inputs.StopNode, false),
    startNode: bool(Inputs.StartNode, true),
    keepPrevious: bool(Inputs.KeepPrevious, true),
    healthTimeoutSeconds: duration(Inputs.HealthTimeout, get(Inputs.HealthTimeout) || '30m', 1),
    diskMarginBytes: diskMargin(get(Inputs.DiskMargin) || '1GiB'),
    processPattern: get(Inputs.NodeProcessPattern) || 'icon_service|loopchain',
    deep: bool(Inputs.Deep, false),
    downloadOn,
  };

  const needsHost = mode === 'backup' || mode === 'restore';
  const ssh = needsHost ? parseSsh(get, bool, int) : undefined;
  const kindDefaults = {
    dataDir: !get(Inputs.DataDir),
    peerUrl: !get(Inputs.PeerUrl),
    compression: !get(Inputs.Compression) && !get(Inputs.CompressionLevel),
    format: !get(Inputs.Format),
  };
  return { mode: mode as Mode, kindDefaults, ssh, node, s3, backup, restore };
}

function parseSsh(
  get: (name: Inputs) => string,
  bool: (name: Inputs, fallback: boolean) => boolean,
  int: (name: Inputs, fallback: number, min: number, max: number) => number,
): SshSettings {
  const host = get(Inputs.Host);
  if (!host) throw new InputError(`Input 'host' is required for this mode: the node's address.`);
  if (!/^[A-Za-z0-9.:_-]+$/.test(host) || host.startsWith('-')) {
    throw new InputError(`Input 'host' is '${host}', which is not a host name or address.`);
  }
  const privateKey = get(Inputs.SshKey);
  if (!privateKey) {
    throw new InputError(
      `Input 'ssh-key' is required: the private key (contents, not a path) that logs in to the node.`,
    );
  }
  if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(privateKey)) {
    throw new InputError(`Input 'ssh-key' does not hold a private key in PEM or OpenSSH form.`);
  }
  // The runner masks line by line: register every line of the key, not only the whole.
  core.setSecret(privateKey);
  for (const line of privateKey.split('\n'))
    if (line.trim().length >= 8 && !line.startsWith('-----')) core.setSecret(line.trim());
  const passphrase = get(Inputs.SshKeyPassphrase) || undefined;
  if (passphrase) core.setSecret(passphrase);

  const port = int(Inputs.Port, 22, 1, 65535);
  const insecure = bool(Inputs.InsecureSkipHostKey, false);
  const hostKeyText = get(Inputs.HostKey);
  if (!hostKeyText && !insecure) {
    throw new InputError(
      `Input 'host-key' is required: pin the node's SSH host key (a 'SHA256:...' fingerprint or a known_hosts line; ` +
        `'ssh-keyscan HOST' on a trusted machine prints it). To connect without checking it, set 'insecure-skip-host-key-check: true'.`,
    );
  }
  const transport = get(Inputs.SshTransport) || 'auto';
  if (transport !== 'auto' && transport !== 'openssh' && transport !== 'ssh2') {
    throw new InputError(
      `Input 'ssh-transport' is '${transport}'. Use 'auto', 'openssh' or 'ssh2'.`,
    );
  }
  return {
    host,
    port,
    username: get(Inputs.Username) || 'root',
    privateKey: privateKey.endsWith('\n') ? privateKey : `${privateKey}\n`,
    passphrase,
    hostKeys: hostKeyText ? parseHostKeyPins(hostKeyText, { host, port }) : [],
    transport,
    connections: int(Inputs.SshConnections, 4, 1, 16),
  };
}

/**
 * The compression level where 'compression-level' is empty. LevelDB tables are
 * snappy-compressed already: zstd -1 runs twice as fast as -3 on them for an archive 3%
 * larger (measured on a 2 GiB database here).
 */
const DEFAULT_LEVEL: Record<Compression, number> = { gzip: 3, zstd: 1 };

/** What a node kind's defaults are, where the inputs leave them empty. */
export const KIND_DEFAULTS = {
  loopchain: {
    dataDir: (prepDir: string) => `${prepDir}/data/loopchain`,
    peerUrl: 'http://localhost:9000/api/v1/avail/peer',
    compression: 'gzip' as Compression,
    /** The original restore script reads only a tar.gz. */
    format: 'archive' as Format,
  },
  goloop: {
    /** The node dir beside icon2-node's compose file (`./data:/goloop/data`). */
    dataDir: (prepDir: string) => `${prepDir}/data`,
    peerUrl: 'http://localhost:9000/admin/chain',
    /** The original scripts, which read only gzip, never restore a goloop snapshot. */
    compression: 'zstd' as Compression,
    /** A daily backup sends only the tables written since the last; icon2-node restores it natively. */
    format: 'tree' as Format,
  },
};

/**
 * The settings for a node of `kind`: the inputs left empty take that kind's defaults. The
 * parser fills loopchain's, the original guide's; a goloop node found by 'node-kind: auto'
 * gets its own here.
 */
export function forKind(settings: Settings, kind: 'loopchain' | 'goloop'): Settings {
  const d = KIND_DEFAULTS[kind];
  const node = { ...settings.node, kind };
  if (settings.kindDefaults.dataDir) node.dataDir = d.dataDir(node.prepDir);
  if (settings.kindDefaults.peerUrl) node.peerUrl = d.peerUrl;
  const backup = { ...settings.backup };
  if (settings.kindDefaults.format) backup.format = d.format;
  if (settings.kindDefaults.compression) {
    backup.compression = d.compression;
    backup.compressionLevel = DEFAULT_LEVEL[d.compression];
  }
  return { ...settings, node, backup };
}

/** The compose file that the default stop and start name, in the prep dir. */
export const COMPOSE_FILE = 'docker-compose.yml';

/**
 * The default stop and start: Compose in the prep dir, as the original guide runs the node.
 * `docker-compose` (Compose v1, the guide's) where the host has it, else `docker compose`
 * (v2, the plugin that replaced it), so that either works without setting the commands.
 */
export function composeCommand(prepDir: string, verb: 'down' | 'up -d'): string {
  const args = `-f ${COMPOSE_FILE} ${verb}`;
  return (
    `cd ${quoteForDefault(prepDir)} && if [ -x "$(command -v docker-compose)" ]; ` +
    `then docker-compose ${args}; else docker compose ${args}; fi`
  );
}

function quoteForDefault(path: string): string {
  return /^[A-Za-z0-9_./-]+$/.test(path) ? path : `'${path.replace(/'/g, `'\\''`)}'`;
}
