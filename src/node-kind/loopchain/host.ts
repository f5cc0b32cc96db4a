/**
 * An ICON 1 (loopchain) node behind the `NodeHost` seam, over an SSH session: the data dir
 * `{prep-dir}/data/loopchain` with `.score_data` and `.storage`, the block DB named after the
 * node's IP (`db_{IP}:7100_icon_dex`, archived as `db_CHANGEIP:7100_icon_dex`), and the
 * height from the peer API.
 */
import { HostError } from '../../errors.js';
import { isIpv4 } from '../../input-values.js';
import { COMPOSE_FILE, type NodeSettings, type RestoreSettings } from '../../settings.js';
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
  detectIpCommand,
  dirname,
  freezeCommand,
  parseBatch,
  parseProbe,
  peerCommand,
  probeCommand,
  processCheckCommand,
  requireArchiveTools,
  stagingFolders,
} from '../remote.js';
import {
  restoreProbeCommand,
  rollbackCommand,
  SWAP_LINE,
  swapCommand,
} from '../restore-commands.js';
import { watchdogFiredCommand } from '../watchdog.js';
import { extractCommand } from '../extract.js';
import { SshHost } from '../ssh-host.js';
import { loopchain, pickIdentityDir } from './layout.js';

export class LoopchainHost extends SshHost implements NodeHost {
  readonly kind = 'loopchain' as const;
  readonly layout = loopchain;
  /** The identity directory found by `inspect`. */
  private identity?: string;

  constructor(
    session: SshSession,
    private readonly node: NodeSettings,
    private readonly restoreSettings: RestoreSettings,
  ) {
    super(session);
  }

  protected get tree(): Tree {
    return this.layout;
  }

  get dataDir(): string {
    return this.node.dataDir;
  }

  protected get prepDir(): string {
    return this.node.prepDir;
  }

  protected override identityName(): string | undefined {
    return this.identity;
  }

  expectedContent(): string {
    return this.layout.roots.join(' and ');
  }

  commands(): NodeCommands {
    const compose = `Compose in ${this.node.prepDir} (docker-compose, or docker compose where it is missing)`;
    return {
      stop: this.node.stopCommand,
      start: this.node.startCommand,
      says: {
        stop: this.node.stopCommandGiven ?? `${compose}: down`,
        start: this.node.startCommandGiven ?? `${compose}: up -d`,
      },
    };
  }

  async inspect(needs: {
    /** An archive's compression; undefined for a tree, which needs no compressor. */
    compression?: 'gzip' | 'zstd';
    consistency: 'hardlink' | 'stop';
  }): Promise<BackupLayout> {
    const dataDir = this.dataDir;
    const probe = parseProbe(
      await this.session.run('Probing the host', probeCommand(this.layout, dataDir)),
    );
    if (!probe.dataDirPresent) {
      throw new HostError(
        `${dataDir} does not exist on the host: set 'data-dir' (or 'prep-dir') to the node's data directory.`,
      );
    }
    if (probe.missingRoots.length > 0) {
      throw new HostError(
        `${dataDir} lacks ${probe.missingRoots.join(' and ')}: it is not a loopchain data directory (expected ${this.expectedContent()}).`,
      );
    }
    this.identity = pickIdentityDir(this.layout, probe.identities, dataDir);
    if (needs.compression)
      requireArchiveTools(probe.tools, needs.compression, 'The archive (compression: zstd)');
    if (needs.consistency === 'hardlink' && !probe.tools.has('base64')) {
      throw new HostError(
        `The host has no 'base64' (coreutils), needed to read the LevelDB MANIFESTs.`,
      );
    }
    if (!probe.tools.has('curl') && !probe.tools.has('wget')) {
      throw new HostError(
        `The host has neither curl nor wget to ask the node for its block height.`,
      );
    }
    return {
      description: `${dataDir}: ${this.layout.roots.join(', ')}; identity directory ${this.identity}`,
      sameDevice: probe.sameDevice,
      device: probe.device,
      dataBytes: probe.dataBytes,
      stale: probe.stale,
    };
  }

  async height(): Promise<number | undefined> {
    const res = await this.session.exec(peerCommand(this.node.peerUrl), { timeoutMs: 30_000 });
    if (res.code !== 0) return undefined;
    return this.layout.parseHeight(res.stdout);
  }

  facts(): Promise<KindFacts> {
    return Promise.resolve({ placeholder: this.layout.placeholder, identity: this.identity });
  }

  archive(dir: string, options: ArchiveOptions): Promise<RemoteStream> {
    if (!this.identity) throw new Error('inspect() names the identity directory before archive()');
    return this.archiveOf(dir, options);
  }

  freeze(stage: string, watchdogFlag: string): Prepared {
    return this.session.prepare(
      'Freezing the data into the staging folder',
      freezeCommand(this.layout, this.dataDir, stage, watchdogFlag),
      { timeoutMs: 30 * 60_000 },
    );
  }

  async checkForRestore(options: { nodeIp: string }): Promise<RestoreChecks> {
    const compose = `${this.node.prepDir}/${COMPOSE_FILE}`;
    const checks = parseBatch(
      await this.session.run(
        'Checking the host',
        batchCommand({
          ...this.nodeChecks(),
          probe: restoreProbeCommand(this.dataDir, {
            stagesIn: dirname(this.dataDir),
            has: { compose },
          }),
          ...(options.nodeIp ? {} : { ip: detectIpCommand() }),
        }),
      ),
    );
    const probe = parseProbe(checks.get('probe')?.stdout ?? '');
    const address = options.nodeIp || (checks.get('ip')?.stdout ?? '').trim();
    if (!isIpv4(address)) {
      throw new HostError(
        `Could not find the node's IPv4 address on the host (got '${address}'). Set 'node-ip' (for a node behind NAT, its public address).`,
      );
    }
    return {
      running: this.running(checks),
      freeBytes: probe.freeBytes,
      dataDirPresent: probe.dataDirPresent,
      tools: probe.tools,
      address,
      stages: stagingFolders(dirname(this.dataDir), probe),
      cannotStart:
        this.node.startCommandGiven || probe.has.has('compose')
          ? undefined
          : `'start-command' is not set, and its default (Compose up in 'prep-dir') finds no ${compose} on the host: ` +
            `nothing would start the node once the snapshot is in place. Set 'prep-dir' to the folder of the node's ` +
            `${COMPOSE_FILE}, or 'start-command' and 'stop-command' to how the node starts and stops, or 'start-node: false'.`,
    };
  }

  async runningNow(watchdogFlag: string): Promise<{ running?: string; firedAt?: string }> {
    const checks = parseBatch(
      await this.session.run(
        'Checking whether the node runs',
        batchCommand({ ...this.nodeChecks(), fired: watchdogFiredCommand(watchdogFlag) }),
      ),
    );
    const fired = (checks.get('fired')?.stdout ?? '').trim();
    return { running: this.running(checks), firedAt: fired || undefined };
  }

  extract(stage: string): RemoteStream {
    return this.session.stream(extractCommand(this.layout, this.node.prepDir, stage));
  }

  swap(stage: string, previous: string, address: string, watchdogFlag: string): PreparedStep {
    return this.openAhead(
      swapCommand(this.layout, this.dataDir, stage, previous, address, watchdogFlag),
      SWAP_LINE,
    );
  }

  rollback(previous: string, failed: string, watchdogFlag: string): Promise<ExecResult> {
    return this.session.exec(rollbackCommand(this.dataDir, previous, failed, watchdogFlag));
  }

  async restoredHeight(facts: KindFacts): Promise<number | undefined> {
    const height = await this.height().catch(() => undefined);
    return height !== undefined && height >= Number(facts.blockHeight) ? height : undefined;
  }

  restoredAs(address: string): string {
    return `block DB ${this.layout.identityDir(address)}`;
  }

  /** The checks that tell whether the node runs: its API, and its processes. */
  private nodeChecks(): Record<string, string> {
    return {
      peer: peerCommand(this.node.peerUrl),
      processes: processCheckCommand(this.restoreSettings.processPattern),
    };
  }

  /** What shows that the node runs, from the host's checks; undefined when nothing does. */
  private running(checks: Map<string, { code: number; stdout: string }>): string | undefined {
    const peer = checks.get('peer');
    let height: number | undefined;
    try {
      if (peer?.code === 0) height = this.layout.parseHeight(peer.stdout);
    } catch {
      /* not a node's answer */
    }
    if (height !== undefined) return `its peer API answers, block height ${height}`;
    const processes = (checks.get('processes')?.stdout ?? '').trim();
    return processes ? `process ${processes.split('\n')[0]?.trim()}` : undefined;
  }
}
