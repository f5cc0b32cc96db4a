/**
 * What a restore is to do, before it changes anything: which snapshot (and what its manifest
 * says), and whether the host can take it: the node's state, room on the disk, the tools, and
 * who reads the bytes from S3 (the host itself, or the runner relaying them).
 */
import * as core from '@actions/core';
import type { S3Client } from '@aws-sdk/client-s3';
import { HostError } from '../errors.js';
import { formatBytes } from '../format.js';
import type { Manifest } from '../manifest.js';
import { manifestKey } from '../naming.js';
import { chooseDecoder, type Decoder } from '../node-kind/extract.js';
import { hostFetchBytes } from '../node-kind/host-fetch.js';
import type { NodeHost } from '../node-kind/index.js';
import { dirname, requireArchiveTools } from '../node-kind/remote.js';
import { readManifest } from '../s3/store.js';
import type { Settings, SshSettings } from '../settings.js';
import { chooseSnapshot, type Chosen } from '../snapshots.js';
import { removeLeftStages, runningRefused } from './restore-node.js';
import { objectSize } from './restore-stream.js';
import { foreignTree, ourTree, type TreeSource } from './restore-tree.js';

/** A `snapshot` that names a tree in icon2-node's form: the URL of its `{SERVICE}.json`. */
const FOREIGN_POINTER = /^https?:\/\/[^\s]+\.json$/;

/** The snapshot to restore: an archive (with its manifest, if it has one) or a tree. */
export interface RestoreSnapshot {
  /** The archive or tree of ours that `snapshot` chose; undefined for a tree of icon2-node's. */
  chosen?: Chosen;
  tree?: TreeSource;
  /** An archive's manifest; undefined for a tree, or an archive of the original scripts. */
  manifest?: Manifest;
  /** The bytes to transfer. */
  size: number;
  height: number;
  snapshotKey: string;
}

export async function chooseForRestore(
  settings: Settings,
  client: S3Client,
  reads: S3Client,
): Promise<RestoreSnapshot> {
  const wanted = settings.restore.snapshot;
  const { chosen, tree } = await core.group('Choose the snapshot', async () => {
    if (FOREIGN_POINTER.test(wanted)) {
      core.info(`Snapshot: the tree that ${wanted} points at`);
      return { chosen: undefined, tree: await foreignTree(wanted, settings.node.chain) };
    }
    const c = await chooseSnapshot(client, settings.s3, wanted);
    core.info(`Snapshot: ${c.key}${c.listed ? '' : ' (not in backup_list: it may be incomplete)'}`);
    return {
      chosen: c,
      tree: c.name.format === 'tree' ? await ourTree(client, reads, settings, c.key) : undefined,
    };
  });
  const snapshotKey = tree?.key ?? chosen?.key ?? '';
  const manifest =
    chosen && !tree
      ? await readManifest(
          client,
          settings.s3.bucket,
          manifestKey(settings.s3.manifestPrefix, chosen.key),
        )
      : undefined;
  const size = tree ? tree.bytes : await objectSize(client, settings.s3.bucket, snapshotKey);
  if (!manifest && !tree) {
    core.warning(
      `${snapshotKey} has no manifest (an archive of the original backup script?): its bytes cannot be checked against a ` +
        `recorded sha256; the decompressor's own check and tar's are all there is.`,
    );
  }
  const height = tree?.height ?? manifest?.blockHeight ?? chosen?.name.height ?? 0;
  return { chosen, tree, manifest, size, height, snapshotKey };
}

export interface HostChecked {
  ip: string;
  decoder: Decoder;
  /** Table files of the data dir with the tree's paths and sizes: linked once proven. */
  inDataDir: string[];
  /** This snapshot's staging folder is there from an earlier run. */
  stageFound: boolean;
  /** The host reads the snapshot from S3 itself. */
  onHost: boolean;
  wasRunning: boolean;
  hadPrevious: boolean;
}

/**
 * Refuses, changing nothing, what the host cannot take: a running node that is not to be
 * stopped, a node that nothing would start, too little room, missing tools. Removes the
 * staging folders that earlier runs left (except this snapshot's own).
 */
export async function checkHost(o: {
  settings: Settings;
  host: NodeHost;
  stage: string;
  snapshot: RestoreSnapshot;
}): Promise<HostChecked> {
  const { settings, host, stage } = o;
  const { chosen, tree, manifest, size, snapshotKey } = o.snapshot;
  const opts = settings.restore;
  const parent = dirname(host.dataDir);
  const probe = await host.checkForRestore({ nodeIp: opts.nodeIp });
  const running = probe.running;
  if (running && !opts.stopNode) throw runningRefused((settings.ssh as SshSettings).host, running);
  if (opts.startNode && probe.cannotStart) {
    throw new HostError(`${probe.cannotStart} Nothing was changed on the host.`);
  }
  const freed = await removeLeftStages(host, probe.stages, stage);
  // What this snapshot's own staging folder holds from an earlier run is kept, or removed
  // to make room: either way it is not needed twice.
  const resumed = probe.stages.find((s) => s.path === stage)?.bytes ?? 0;
  // A tree of ours onto a data dir that holds tables of it: those are linked into the
  // staging folder once their sha256 proves them (tree/fetch.ts), and take no more room.
  const inDataDir =
    tree?.proven && probe.dataDirPresent
      ? await host.tablesInDataDir(tree.items, probe.address)
      : [];
  const sizes = new Map(tree?.items.map((i) => [i.path, i.size]));
  const local = inDataDir.reduce((sum, p) => sum + (sizes.get(p) ?? 0), 0);
  if (inDataDir.length > 0) {
    core.info(
      `${inDataDir.length} table files of the data dir (${formatBytes(local)}) have the snapshot's paths and sizes: ` +
        `once their sha256 proves them they are linked, not fetched.`,
    );
  }
  // A tree in icon2-node's form proves its files by their tails, on the runner only.
  const onHost = (!tree || tree.proven) && hostReads(opts.downloadOn, probe.tools, snapshotKey);
  const needed =
    (tree ? tree.bytes - local : (manifest?.uncompressedBytes ?? size * 1.2)) +
    (onHost && !tree ? hostFetchBytes(size, settings.s3.downloadConnections) : 0) +
    opts.diskMarginBytes;
  const free = probe.freeBytes + freed + resumed;
  if (free < needed) {
    throw new HostError(
      `${parent} has ${formatBytes(free)} free${resumed > 0 ? ` (counting the ${formatBytes(resumed)} that this snapshot's staging folder holds)` : ''}; ` +
        `the snapshot needs ${formatBytes(needed)} ` +
        `(its ${manifest || tree ? '' : 'estimated '}size${local > 0 ? `, less the ${formatBytes(local)} of tables it may link from the data dir,` : ''} plus 'disk-margin'). Free some space and run again.`,
    );
  }
  const compression = chosen?.name.compression;
  if (compression) requireArchiveTools(probe.tools, compression, snapshotKey, true);
  const decoder: Decoder = compression ? chooseDecoder(probe.tools, compression) : { name: 'none' };
  if (decoder.name === 'pigz' || decoder.name === 'gzip') {
    core.notice(
      `The host decompresses with ${decoder.name}. Installing igzip there (Debian and Ubuntu package 'isal') ` +
        `makes the extraction of gzip snapshots about twice as fast.`,
    );
  }
  const address = probe.address;
  core.info(
    `Free space ${formatBytes(probe.freeBytes)}; data dir ${probe.dataDirPresent ? 'present (it will be kept)' : 'absent (fresh host)'}; ` +
      `the ${host.restoredAs(address)}; ${tree ? 'files arrive as they are stored' : `the archive is decompressed by ${decoder.name}`}` +
      `${onHost ? ', read from S3 by the host itself' : ', relayed from S3 by the runner'}.`,
  );
  if (running) {
    core.info(
      `The node runs (${running}): it goes on serving on its current data while the snapshot streams, and is ` +
        `stopped only for the swap.`,
    );
  }
  const stageFound = probe.stages.some((s) => s.path === stage);
  return {
    ip: address,
    decoder,
    inDataDir,
    stageFound,
    onHost,
    wasRunning: running !== undefined,
    hadPrevious: probe.dataDirPresent,
  };
}

/** Tools that the host's own read of an archive needs (node-kind/host-fetch.ts). */
const HOST_READ_TOOLS = ['curl', 'mkfifo'];

/** Whether the host is to read the archive itself: 'download-on', and the tools it has. */
function hostReads(
  downloadOn: Settings['restore']['downloadOn'],
  tools: Set<string>,
  key: string,
): boolean {
  if (downloadOn === 'runner') return false;
  const lacks = HOST_READ_TOOLS.filter((t) => !tools.has(t));
  if (!tools.has('openssl') && !tools.has('sha256sum')) lacks.push('openssl or sha256sum');
  if (lacks.length === 0) return true;
  if (downloadOn === 'host') {
    throw new HostError(
      `'download-on: host' needs ${lacks.join(' and ')} on the host to read ${key} from S3. Install ` +
        `${lacks.length === 1 ? 'it' : 'them'}, or set 'download-on: auto' (the runner relays the archive). Nothing was changed on the host.`,
    );
  }
  core.info(`The host has no ${lacks.join(' nor ')}: the runner relays the archive from S3.`);
  return false;
}
