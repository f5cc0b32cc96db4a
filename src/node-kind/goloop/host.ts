/**
 * An ICON 2 (goloop) node behind the `NodeHost` seam, over an SSH session. Its data dir is
 * goloop's node dir (`/goloop/data` in the icon2-node container, `./data` beside its compose
 * file on the host); a snapshot is one chain's folder, `{cid}` in it, without the chain's
 * `cache/` and `tmp/` and the database's `LOCK`. The height and the chain's state come from
 * the admin API (`GET /admin/chain`), the proof of a restore from the block hash at the
 * snapshot's height (`icx_getBlockByHeight`).
 */
import { HostError, IntegrityError } from '../../errors.js';
import { COMPOSE_FILE, type NodeSettings } from '../../settings.js';
import type { ExecResult, Prepared, RemoteStream, SshSession } from '../../ssh/session.js';
import type {
  ArchiveOptions,
  BackupLayout,
  KindFacts,
  NodeCommands,
  NodeHost,
  PreparedStep,
  RestoreChecks,
  Tree,
} from '../host.js';
import {
  batchCommand,
  dirname,
  freezeCommand,
  parseBatch,
  parseProbe,
  peerCommand,
  requireArchiveTools,
  stagingFolders,
} from '../remote.js';
import { restoreProbeCommand } from '../restore-commands.js';
import { watchdogFiredCommand } from '../watchdog.js';
import { extractCommand } from '../extract.js';
import {
  blockCommand,
  CHAIN_SWAP_LINE,
  chainReleaseCommand,
  chainRollbackCommand,
  chainStartCommand,
  chainSwapCommand,
  goloopProbeCommand,
} from './commands.js';
import {
  chainFolder,
  isAtRest,
  isStarted,
  parseBlockHash,
  parseBuildVersion,
  parseChains,
  pickChain,
  rpcBase,
  type Chain,
} from './layout.js';
import { SshHost } from '../ssh-host.js';

/** The chain a run is about: from the admin API (backup) or from the snapshot (restore). */
interface ChainId {
  cid: string;
  nid: string;
  channel: string;
}

export class GoloopHost extends SshHost implements NodeHost {
  readonly kind = 'goloop' as const;
  private chain?: ChainId;

  constructor(
    session: SshSession,
    private readonly node: NodeSettings,
    /** The chain the snapshot holds, for a restore (from its manifest). */
    snapshotChain?: ChainId,
  ) {
    super(session);
    this.chain = snapshotChain;
  }

  get dataDir(): string {
    return this.node.dataDir;
  }

  /** The node dir's parent, where icon2-node's compose file is. */
  protected get prepDir(): string {
    return dirname(this.dataDir);
  }

  private get sock(): string {
    return `${this.dataDir}/cli.sock`;
  }

  private get id(): ChainId {
    if (!this.chain) throw new Error('the chain is known after inspect() or from the snapshot');
    return this.chain;
  }

  private get folder(): string {
    return chainFolder(this.id.cid);
  }

  /** The snapshot's files: the chain folder, which must hold its config and its database. */
  protected get tree(): Tree {
    return { name: 'goloop', roots: [this.folder], required: [`${this.folder}/db`] };
  }

  expectedContent(): string {
    return this.chain ? `the chain folder ${this.folder}` : 'a chain folder';
  }

  /**
   * The stop releases the chain's database through the control socket (or runs the operator's
   * 'stop-command'). The start always ends with the chain started through the socket: where
   * goloop itself is down, 'start-command' (Compose up by default) brings it up first.
   */
  commands(): NodeCommands {
    const { cid } = this.id;
    const via = `through ${this.sock}`;
    return {
      stop: this.node.stopCommandGiven ?? chainReleaseCommand(this.sock, cid),
      start: chainStartCommand(this.sock, cid, this.node.startCommand),
      says: {
        stop:
          this.node.stopCommandGiven ??
          `chain ${cid} stop, then backup --manual (its database closed), ${via}`,
        start:
          `chain ${cid} stop (its database reopened) and start ${via}; where goloop is down, ` +
          `'${this.node.startCommandGiven ?? 'Compose up'}' first`,
      },
    };
  }

  async inspect(needs: {
    /** An archive's compression; undefined for a tree, which needs no compressor. */
    compression?: 'gzip' | 'zstd';
    consistency: 'hardlink' | 'stop';
  }): Promise<BackupLayout> {
    if (needs.consistency !== 'hardlink') {
      throw new HostError(
        `'consistency: stop' is for loopchain nodes: a goloop chain is frozen through its control socket in seconds, ` +
          `with hard links. Leave 'consistency' at its default.`,
      );
    }
    const chain = await this.findChain();
    if (!isStarted(chain)) {
      throw new HostError(
        `The chain ${chain.channel} (${chain.cid}) is '${chain.state}'${chain.lastError ? ` (${chain.lastError})` : ''}: ` +
          `no backup is taken of a chain that is not started.`,
      );
    }
    this.chain = { cid: chain.cid, nid: chain.nid, channel: chain.channel };
    const out = await this.session.run(
      'Probing the host',
      goloopProbeCommand(this.dataDir, this.folder),
    );
    const probe = parseProbe(out);
    const has = (key: string) => new RegExp(`^${key}=present$`, 'm').test(out);
    if (!has('nodedir')) {
      throw new HostError(
        `${this.dataDir} does not exist on the host: set 'data-dir' to goloop's node dir (the folder mounted as /goloop/data).`,
      );
    }
    if (!has('chainconfig') || !has('db')) {
      throw new HostError(
        `${this.dataDir}/${this.folder} is not the folder of the chain ${chain.cid} (no config.json or db/): is 'data-dir' ` +
          `the node dir of the node that answers at '${this.node.peerUrl}'?`,
      );
    }
    if (!this.node.stopCommandGiven && !has('socket')) {
      throw new HostError(
        `${this.sock} is missing: the chain is stopped and started through goloop's control socket. Set 'data-dir' to ` +
          `the node dir, or 'stop-command' and 'start-command' to stop and start the node another way.`,
      );
    }
    if (needs.compression)
      requireArchiveTools(probe.tools, needs.compression, 'The archive (compression: zstd)');
    if (!probe.tools.has('base64')) {
      throw new HostError(
        `The host has no 'base64' (coreutils), needed to read the database's MANIFEST.`,
      );
    }
    if (!probe.tools.has('curl')) {
      throw new HostError(
        `The host has no 'curl', needed to speak to goloop's admin API and socket.`,
      );
    }
    return {
      description: `${this.dataDir}: chain ${chain.channel} (${chain.cid}, nid ${chain.nid}) in ${this.folder}/`,
      sameDevice: probe.sameDevice,
      device: probe.device,
      dataBytes: probe.dataBytes,
      stale: probe.stale,
    };
  }

  async height(): Promise<number | undefined> {
    const chain = await this.findChain().catch(() => undefined);
    return chain && isStarted(chain) ? chain.height : undefined;
  }

  async facts(height: number): Promise<KindFacts> {
    const { cid, nid, channel } = this.id;
    const [block, system] = await Promise.all([
      this.session.run('Reading the block hash', blockCommand(this.rpcUrl(channel), height)),
      this.session
        .exec(peerCommand(`${rpcBase(this.node.peerUrl)}/admin/system`), { timeoutMs: 30_000 })
        .catch(() => undefined),
    ]);
    return {
      cid,
      nid,
      channel,
      blockHash: parseBlockHash(block),
      goloopVersion: system?.code === 0 ? parseBuildVersion(system.stdout) : '',
    };
  }

  archive(dir: string, options: ArchiveOptions): Promise<RemoteStream> {
    return this.archiveOf(dir, options);
  }

  protected override leaveOut(): string[] {
    const f = this.folder;
    return [`${f}/cache`, `${f}/tmp`, `${f}/db/${this.id.nid.replace(/^0x/, '')}/LOCK`];
  }

  freeze(stage: string, watchdogFlag: string): Prepared {
    const leaveOut = this.leaveOut();
    return this.session.prepare(
      'Freezing the chain folder into the staging folder',
      freezeCommand(this.tree, this.dataDir, stage, watchdogFlag, leaveOut),
      { timeoutMs: 30 * 60_000 },
    );
  }

  async checkForRestore(): Promise<RestoreChecks> {
    if (!this.chain) {
      throw new HostError(
        `The snapshot names no goloop chain (it has no manifest of ours): its chain folder is not known.`,
      );
    }
    const compose = `${this.node.prepDir}/${COMPOSE_FILE}`;
    const checks = parseBatch(
      await this.session.run(
        'Checking the host',
        batchCommand({
          peer: peerCommand(this.node.peerUrl),
          probe: restoreProbeCommand(`${this.dataDir}/${this.folder}`, {
            stagesIn: this.prepDir,
            has: { compose, socket: this.sock },
          }),
        }),
      ),
    );
    const probe = parseProbe(checks.get('probe')?.stdout ?? '');
    // The start goes through the control socket; where goloop is down (no socket), the start
    // command brings it up first.
    const startable =
      this.node.startCommandGiven !== undefined ||
      probe.has.has('socket') ||
      probe.has.has('compose');
    return {
      running: this.running(checks.get('peer')),
      freeBytes: probe.freeBytes,
      dataDirPresent: probe.dataDirPresent,
      tools: probe.tools,
      address: '',
      stages: stagingFolders(this.prepDir, probe),
      cannotStart: startable
        ? undefined
        : `goloop is not running on the host (no ${this.sock}), 'start-command' is not set, and its default ` +
          `(Compose up in 'prep-dir') finds no ${compose}: nothing would start goloop once the chain is in place. ` +
          `Set 'prep-dir' to the folder of icon2-node's ${COMPOSE_FILE} (its node dir is 'data' beside it), or ` +
          `'data-dir' and 'start-command' to where goloop keeps its node dir and how it starts, or 'start-node: false'.`,
    };
  }

  async runningNow(watchdogFlag: string): Promise<{ running?: string; firedAt?: string }> {
    const checks = parseBatch(
      await this.session.run(
        'Checking whether the chain runs',
        batchCommand({
          peer: peerCommand(this.node.peerUrl),
          fired: watchdogFiredCommand(watchdogFlag),
        }),
      ),
    );
    const fired = (checks.get('fired')?.stdout ?? '').trim();
    return { running: this.running(checks.get('peer')), firedAt: fired || undefined };
  }

  extract(stage: string): RemoteStream {
    return this.session.stream(extractCommand(this.tree, dirname(this.dataDir), stage));
  }

  swap(stage: string, previous: string, _address: string, watchdogFlag: string): PreparedStep {
    return this.openAhead(
      chainSwapCommand(this.dataDir, this.folder, stage, previous, watchdogFlag),
      CHAIN_SWAP_LINE,
    );
  }

  rollback(previous: string, failed: string, watchdogFlag: string): Promise<ExecResult> {
    return this.session.exec(
      chainRollbackCommand(this.dataDir, this.folder, previous, failed, watchdogFlag),
    );
  }

  async restoredHeight(facts: KindFacts): Promise<number | undefined> {
    const chain = await this.findChain().catch(() => undefined);
    const height = Number(facts.blockHeight);
    if (!chain || !isStarted(chain) || chain.height < height) return undefined;
    if (typeof facts.blockHash !== 'string' || facts.blockHash === '') return chain.height;
    const block = await this.session
      .run('Reading the block hash', blockCommand(this.rpcUrl(chain.channel), height))
      .catch(() => undefined);
    if (block === undefined) return undefined;
    const hash = parseBlockHash(block);
    if (hash !== facts.blockHash) {
      throw new IntegrityError(
        `The restored chain has the block hash ${hash} at height ${height}; the snapshot recorded ${facts.blockHash}: ` +
          `it is not the chain of the snapshot.`,
      );
    }
    return chain.height;
  }

  restoredAs(): string {
    return `chain folder ${this.dataDir}/${this.folder}`;
  }

  private rpcUrl(channel: string): string {
    return `${rpcBase(this.node.peerUrl)}/api/v3/${encodeURIComponent(channel)}`;
  }

  /** The chain the run is about, as the admin API reports it now. */
  private async findChain(): Promise<Chain> {
    const res = await this.session.exec(peerCommand(this.node.peerUrl), { timeoutMs: 30_000 });
    if (res.code !== 0) {
      throw new HostError(
        `goloop's admin API (${this.node.peerUrl}) does not answer on the host: is the node running, and is 'peer-url' its /admin/chain?`,
      );
    }
    const chains = parseChains(res.stdout);
    return pickChain(chains, this.chain?.cid ?? this.node.chain);
  }

  /** What shows that the chain runs (its database open), from the admin API's answer. */
  private running(peer: { code: number; stdout: string } | undefined): string | undefined {
    if (!peer || peer.code !== 0) return undefined;
    let chains: Chain[];
    try {
      chains = parseChains(peer.stdout);
    } catch {
      return undefined;
    }
    const chain = chains.find((c) => c.cid === this.chain?.cid);
    if (!chain || isAtRest(chain)) return undefined;
    return `the chain ${chain.channel} (${chain.cid}) is '${chain.state}' at height ${chain.height}`;
  }
}
