/** The node kinds, and the one place that connects a run to its node and chooses the kind. */
import * as core from '@actions/core';
import { HostError } from '../errors.js';
import { forKind, type Settings, type SshSettings } from '../settings.js';
import { bashScript, quote } from '../shell.js';
import { SshSession, type Prepared } from '../ssh/session.js';
import { GoloopHost } from './goloop/host.js';
import { chainFolder } from './goloop/layout.js';
import type { KindFacts, NodeHost, NodeKindName, Tree } from './host.js';
import { LoopchainHost } from './loopchain/host.js';
import { loopchain } from './loopchain/layout.js';

export type { NodeHost } from './host.js';

/** What `NodeControl` runs on the host: the watchdog, the stop and the start commands. */
export interface Shell {
  run(what: string, command: string, options?: { timeoutMs?: number }): Promise<string>;
  prepare(what: string, command: string, options?: { timeoutMs?: number }): Prepared;
}

/** A run's connection to its node: the node's kind, and a shell for the commands around it. */
export interface NodeConnection {
  host: NodeHost;
  shell: Shell;
  /** The settings with the defaults of the node's kind (see `forKind`). */
  settings: Settings;
  /** How archive bytes travel (for the log). */
  transport: string;
  close(): void;
}

/** What a restore knows of its snapshot before it connects: the kind and its facts. */
export interface SnapshotKind {
  nodeKind?: string;
  facts?: KindFacts;
}

export type Connect = (
  settings: Settings,
  onKeyDir: (dir: string) => void,
  snapshot?: SnapshotKind,
) => Promise<NodeConnection>;

/**
 * Connects over SSH to the node that the settings name, as the kind it is: the input, else
 * the snapshot's (restore), else what the host's layout shows ('node-kind: auto').
 */
export const connectNode: Connect = async (settings, onKeyDir, snapshot) => {
  const session = await SshSession.connect(settings.ssh as SshSettings, { onKeyDir });
  try {
    const kind = await chooseKind(session, settings, snapshot);
    const s = forKind(settings, kind);
    const host: NodeHost =
      kind === 'goloop'
        ? new GoloopHost(session, s.node, snapshotChain(snapshot))
        : new LoopchainHost(session, s.node, s.restore);
    return {
      host,
      shell: session,
      settings: s,
      transport: session.dataTransport,
      close: () => session.close(),
    };
  } catch (error) {
    session.close();
    throw error;
  }
};

async function chooseKind(
  session: SshSession,
  settings: Settings,
  snapshot?: SnapshotKind,
): Promise<NodeKindName> {
  const snapshotKind =
    snapshot?.nodeKind === 'goloop' ? 'goloop' : snapshot ? 'loopchain' : undefined;
  if (settings.node.kind !== 'auto') {
    if (snapshotKind && snapshotKind !== settings.node.kind) {
      throw new HostError(
        `The snapshot is of a ${snapshotKind} node; 'node-kind' is '${settings.node.kind}'. Restore a snapshot of that kind.`,
      );
    }
    return settings.node.kind;
  }
  if (snapshotKind) {
    core.info(`Node kind: ${snapshotKind}, as the snapshot's manifest says.`);
    return snapshotKind;
  }
  const found = (await session.run('Finding the node kind', detectKindCommand(settings))).trim();
  const [kind, where] = found.split(' ');
  if (kind === 'loopchain' || kind === 'goloop') {
    core.info(`Node kind: ${kind} (found ${where} on the host; set 'node-kind' to say so).`);
    return kind;
  }
  core.info(
    `Node kind: loopchain (nothing on the host says goloop; the data dir of either kind is not there yet).`,
  );
  return 'loopchain';
}

/**
 * Looks at the host for the layout of either kind: loopchain's `.storage` under its data dir,
 * or goloop's control socket or a chain folder (`*\/config.json`) under its node dir. Prints
 * `KIND PATH`, or nothing.
 */
export function detectKindCommand(settings: Settings): string {
  const loopchainDir = settings.kindDefaults.dataDir
    ? `${settings.node.prepDir}/data/loopchain`
    : settings.node.dataDir;
  const goloopDir = settings.kindDefaults.dataDir
    ? `${settings.node.prepDir}/data`
    : settings.node.dataDir;
  return bashScript([
    `l=${quote(loopchainDir)}`,
    `g=${quote(goloopDir)}`,
    `if [ -d "$l/.storage" ]; then echo "loopchain $l/.storage"; exit 0; fi`,
    `if [ -S "$g/cli.sock" ]; then echo "goloop $g/cli.sock"; exit 0; fi`,
    `for c in "$g"/*/config.json; do if [ -f "$c" ] && [ -d "\${c%/config.json}/db" ]; then echo "goloop $c"; exit 0; fi; done`,
    `true`,
  ]);
}

/** The files a stored snapshot holds, from its manifest (an archive without one is loopchain's). */
export function snapshotTree(manifest?: { nodeKind?: string; facts?: KindFacts }): Tree {
  const chain = snapshotChain(manifest);
  if (manifest?.nodeKind === 'goloop' && chain) {
    const folder = chainFolder(chain.cid);
    return { name: 'goloop', roots: [folder], required: [`${folder}/db`] };
  }
  return loopchain;
}

function snapshotChain(
  snapshot?: SnapshotKind,
): { cid: string; nid: string; channel: string } | undefined {
  const f = snapshot?.facts;
  if (!f || typeof f.cid !== 'string' || !/^0x[0-9a-f]{1,8}$/.test(f.cid)) return undefined;
  return { cid: f.cid, nid: String(f.nid ?? ''), channel: String(f.channel ?? '') };
}
