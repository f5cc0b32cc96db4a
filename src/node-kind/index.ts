/** The node kinds, and the one place that connects a run to its node and chooses the kind. */
import type { Settings, SshSettings } from '../settings.js';
import { SshSession, type Prepared } from '../ssh/session.js';
import type { NodeHost } from './host.js';
import { LoopchainHost } from './loopchain/host.js';

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
  /** How archive bytes travel (for the log). */
  transport: string;
  close(): void;
}

export type Connect = (
  settings: Settings,
  onKeyDir: (dir: string) => void,
) => Promise<NodeConnection>;

/** Connects over SSH to the node that the settings name, as the kind it is. */
export const connectNode: Connect = async (settings, onKeyDir) => {
  const session = await SshSession.connect(settings.ssh as SshSettings, { onKeyDir });
  return {
    host: new LoopchainHost(session, settings.node, settings.restore),
    shell: session,
    transport: session.dataTransport,
    close: () => session.close(),
  };
};
