/**
 * A node host laid out as the original guide's, in namespaces of its own: the install in
 * `/app/prep` with its `docker-compose.yml`, the node's peer API on port 9000 of the host's
 * loopback, `docker-compose` (Compose v1) or `docker` with `compose` (v2) on the PATH, a real
 * sshd on port 22 of the host's address, and a default route whose source is that address
 * (the node IP that a restore finds with `ip -4 -o route get`).
 *
 * A host is:
 * - a network namespace `prep-guide-N` with `lo` and `eth0`, one end of a veth pair whose
 *   other end `pgN` stays in the machine's namespace. The pair holds the /30 number N of
 *   10.213.0.0/16 (the namespace's name reserves N, so hosts exist side by side). The
 *   host's default route points at the machine's end; the machine does not forward what
 *   arrives there (forwarding is off on that end), so nothing leaves the pair. IPv6 is off
 *   on both ends: no neighbour discovery on the link.
 * - a mount namespace with private propagation: a temp dir is bind-mounted on `/app` and a
 *   dir of stand-ins on `/usr/local/bin` (which hides what the machine has there, such as a
 *   real `docker` client); a `docker` or `docker-compose` elsewhere on the PATH is removed
 *   by an overlay with whiteouts. A Compose v1 host has `docker-compose` only, a v2 host
 *   `docker` only.
 * - a PID namespace with its own `/proc`: `ps` on the host lists the host's processes, so a
 *   check for a running node never sees the node of another host on the same machine.
 * Its PID 1 is a shell that runs sshd and reaps what is left to it (the node's daemon,
 * detached by its start); when PID 1 ends, the kernel ends every process of the host.
 *
 * The stand-ins drive the node that the compose file names (see compose-stand-in.ts): on a
 * host of the guide, the simulated loopchain node (test/sim/prep-node.ts) with home
 * `/app/prep` and port 9000; on a host of icon2-node (`node: 'goloop'`), a real goloop on the
 * node dir `/app/prep/data` with its keystore in `/app/prep/config`, its API on port 9000 of
 * every address of the host (the machine reaches it at `{ip}:9000`, as a host network
 * container listens). The action runs on the machine's side and connects to the host's
 * address; the test reads the host's files through `appDir` and runs commands on the host
 * with `sh()`.
 */
import { existsSync, readdirSync, readFileSync, realpathSync, rmdirSync, rmSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { quote as q } from '../../src/shell.js';
import { parseEvents, type NodeEvent } from '../sim/chain.js';
import { run } from './proc.js';
import { startSshd, type Sshd } from './sshd.js';
import { ipCmd, ipSync, makeNetwork, NETNS_PREFIX } from './netns.js';
import {
  COMPOSE_YML,
  ICON2_COMPOSE_YML,
  SIM,
  standIn,
  TSX,
  type Compose,
} from './compose-stand-in.js';
import { goloopBin } from './paths.js';

export type { Compose } from './compose-stand-in.js';

/** The guide's install directory and the node's peer API port, as the host sees them. */
export const GUIDE_PREP_DIR = '/app/prep';
export const GUIDE_PEER_PORT = 9000;

/** The PATH of a login on the host (sshd's default for root). */
const HOST_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/**
 * Dirs of a login's PATH besides `/usr/local/bin` (the system's, and this process's, which a
 * root shell's rc files resemble): a `docker` or `docker-compose` in them is removed.
 */
function otherBinDirs(): string[] {
  const dirs = ['/usr/local/sbin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];
  dirs.push(...(process.env.PATH ?? '').split(':'));
  return [...new Set(dirs)].filter(
    (d) => d.startsWith('/') && !d.includes(':') && d !== '/usr/local/bin',
  );
}

/** The $0 of each host's PID 1, to recognise it before a signal. */
const INIT_NAME = 'prep-guide-host-init';

/** The node that the host's compose file runs: the guide's (loopchain) or icon2-node's (goloop). */
export type GuideNode = 'loopchain' | 'goloop';

export interface GuideHost {
  /** Which Compose the host has. */
  kind: Compose;
  /** Which node its compose file runs. */
  node: GuideNode;
  /** The host's network namespace. */
  netns: string;
  /** The host's address on its `eth0`: where its sshd listens, and its node IP. */
  ip: string;
  /** The machine's end of the veth pair. */
  peerIp: string;
  sshd: Sshd;
  /** The machine's path of the host's `/app`. */
  appDir: string;
  /** The machine's path of the host's `/app/prep`. */
  prepDir: string;
  /**
   * The machine's path of the node's data: `/app/prep/data/loopchain` (loopchain), or the node
   * dir `/app/prep/data` (goloop).
   */
  dataDir: string;
  /** The machine's PID of the host's PID 1. */
  initPid: number;
  /** The inputs that reach this host: host, port, username, ssh-key, host-key. */
  sshInputs(): Record<string, string>;
  /** Runs a `sh` script on the host, in its namespaces, with a login's PATH and HOME. */
  sh(script: string): Promise<{ stdout: string; stderr: string }>;
  /** The guide's stop or start, with the host's Compose, in `/app/prep`. */
  compose(verb: 'down' | 'up -d'): Promise<string>;
  /** Creates the node's databases in `/app/prep` (the simulator's init) for this host's IP. */
  initNode(opts?: { blocks?: number; valueBytes?: number }): Promise<void>;
  /** The simulator's status of `/app/prep` (`pid` as the host sees it). */
  status(): Promise<{ running: boolean; pid?: number | null; height?: number | null }>;
  /** `pid args` of the host's processes whose command line matches (a JS RegExp). */
  processes(pattern: string): Promise<string[]>;
  /** The node's events (see test/sim/prep-node.ts). */
  events(): NodeEvent[];
  /** Ends every process of the host and removes the namespaces, the veth pair and the dirs. */
  stop(): Promise<void>;
}

/**
 * PID 1 of a host: bind-mounts the node runtime (a file in the temp dir, so that it stays
 * reachable whatever `/usr/local/bin` held), `/app` and `/usr/local/bin`; removes `docker`
 * and `docker-compose` from the other dirs of `$6` (colon-separated) with a read-only
 * overlay whose upper layer holds whiteouts for them (a file laid over them would still be
 * found by bash's `command -v`); then runs sshd (its argv follows) and waits. `wait` reaps
 * any child, the orphans handed to PID 1 included.
 */
const INIT_SCRIPT = [
  'set -eu',
  'app=$1 bin=$2 node_src=$3 node_dst=$4 layers=$5 cover=$6',
  'shift 6',
  'mount --bind "$node_src" "$node_dst"',
  'mount --bind "$app" /app',
  'mount --bind "$bin" /usr/local/bin',
  'mount -t tmpfs -o size=1m,mode=755 tmpfs "$layers"',
  'seen= i=0',
  'IFS=:',
  'for d in $cover; do',
  '  [ -d "$d" ] || continue',
  '  r=$(readlink -f "$d")',
  '  case " $seen " in *" $r "*) continue ;; esac',
  '  seen="$seen $r" w="$layers/$i" i=$((i + 1))',
  '  for n in docker docker-compose; do',
  '    if [ -e "$r/$n" ] || [ -L "$r/$n" ]; then mkdir -p "$w" && mknod "$w/$n" c 0 0; fi',
  '  done',
  '  if [ -d "$w" ]; then mount -t overlay overlay -o "ro,lowerdir=$w:$r" "$r"; fi',
  'done',
  'unset IFS',
  '"$@" &',
  'wait $!',
].join('\n');

// ---- the machine's side: /app, names, cleanup at exit ----------------------------------------

/** What to undo for a host that a test did not stop. */
interface Undo {
  root: string;
  netns?: string;
  veth?: string;
  initPid?: number;
}

let appUsers = 0;
let appCreated = false;
const live = new Set<Undo>();
let exitHook = false;

async function useApp(): Promise<void> {
  if (appUsers === 0 && !existsSync('/app')) {
    await mkdir('/app', { mode: 0o755 });
    appCreated = true;
  }
  appUsers++;
}

/** Removes `/app` when this process made it, no host uses it and it is empty. */
function releaseApp(): void {
  appUsers = Math.max(0, appUsers - 1);
  if (appUsers > 0 || !appCreated) return;
  // A host of another test process may use the mountpoint that this one made.
  const others = existsSync('/run/netns')
    ? readdirSync('/run/netns').some((n) => n.startsWith(NETNS_PREFIX))
    : false;
  if (others) return;
  try {
    rmdirSync('/app');
    appCreated = false;
  } catch {
    /* not empty, or in use: leave it */
  }
}

/** The children of a process (its main thread's). */
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8')
      .trim()
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

function isHostInit(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(INIT_NAME);
  } catch {
    return false;
  }
}

function killInit(pid: number): void {
  if (!isHostInit(pid)) return;
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* gone */
  }
}

/** Last resort at exit: the hosts that a test did not stop. */
function installExitHook(): void {
  if (exitHook) return;
  exitHook = true;
  process.on('exit', () => {
    for (const u of live) {
      if (u.initPid !== undefined) killInit(u.initPid);
      if (u.veth) ipSync('link', 'del', u.veth);
      if (u.netns) ipSync('netns', 'del', u.netns);
      rmSync(u.root, { recursive: true, force: true });
      releaseApp();
    }
    live.clear();
  });
}

async function preflight(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('a guide host needs root (namespaces, mounts)');
  for (const tool of ['ip', 'unshare', 'nsenter', 'mount']) {
    await run('sh', ['-c', `command -v ${tool}`]).catch(() => {
      throw new Error(`a guide host needs '${tool}' (iproute2, util-linux)`);
    });
  }
  if (!existsSync(TSX)) throw new Error(`${TSX} not found: run bash test/bed/install.sh`);
}

/** Reserves a namespace name and its /30, creates the veth pair and sets addresses and routes. */
async function waitForChild(pid: number): Promise<number> {
  for (let i = 0; i < 200; i++) {
    const [child] = childrenOf(pid);
    if (child !== undefined && isHostInit(child)) return child;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`the guide host's PID 1 (child of ${pid}) did not appear`);
}

/**
 * Starts a guide host with the given Compose. `/app/prep` holds the compose file and no data:
 * the guide's with an empty `data/`, or (`node: 'goloop'`) icon2-node's with an empty
 * `config/` for the keystore and no `data/` (Compose makes it at the first start).
 */
export async function startGuideHost(opts: {
  compose: Compose;
  node?: GuideNode;
}): Promise<GuideHost> {
  const nodeKind = opts.node ?? 'loopchain';
  await preflight();
  installExitHook();
  const root = await mkdtemp(join(tmpdir(), 'guide-host-'));
  const appDir = join(root, 'app');
  const binDir = join(root, 'bin');
  const prepDir = join(appDir, 'prep');
  const nodeMount = join(root, 'node');
  const layers = join(root, 'layers');
  await mkdir(join(prepDir, nodeKind === 'goloop' ? 'config' : 'data'), { recursive: true });
  await mkdir(binDir);
  await writeFile(
    join(prepDir, 'docker-compose.yml'),
    nodeKind === 'goloop' ? ICON2_COMPOSE_YML : COMPOSE_YML,
  );
  await writeFile(nodeMount, '');
  await mkdir(layers);
  const tool = standIn(opts.compose, { node: nodeMount, goloop: goloopBin() }, GUIDE_PEER_PORT);
  await writeFile(join(binDir, tool.name), tool.text);
  await chmod(join(binDir, tool.name), 0o755);

  await useApp();
  const undo: Undo = { root };
  live.add(undo);
  let net: Awaited<ReturnType<typeof makeNetwork>> | undefined;
  let sshd: Sshd | undefined;
  let initPid = -1;
  const teardown = async (): Promise<void> => {
    live.delete(undo);
    await sshd?.stop();
    if (initPid > 0) killInit(initPid);
    if (net) {
      // The namespace is gone once its last process is; wait for that before removing it.
      for (let i = 0; i < 200; i++) {
        const pids = await ipCmd('netns', 'pids', net.netns).then(
          (r) => r.stdout.trim(),
          () => '',
        );
        if (!pids) break;
        await new Promise((r) => setTimeout(r, 25));
      }
      await ipCmd('link', 'del', net.veth).catch(() => undefined);
      await ipCmd('netns', 'del', net.netns).catch(() => undefined);
    }
    rmSync(root, { recursive: true, force: true });
    releaseApp();
  };
  try {
    net = await makeNetwork();
    const { netns, ip } = net;
    undo.netns = netns;
    undo.veth = net.veth;
    sshd = await startSshd({
      listenAddress: ip,
      port: 22,
      commandPrefix: [
        'ip',
        'netns',
        'exec',
        netns,
        'unshare',
        '--mount',
        '--propagation',
        'private',
        '--pid',
        '--fork',
        '--mount-proc',
        '--kill-child=SIGKILL',
        '--',
        '/bin/sh',
        '-c',
        INIT_SCRIPT,
        INIT_NAME,
        appDir,
        binDir,
        realpathSync(process.execPath),
        nodeMount,
        layers,
        otherBinDirs().join(':'),
      ],
    });
    initPid = await waitForChild(sshd.pid);
    undo.initPid = initPid;
  } catch (err) {
    await teardown();
    throw err;
  }
  const s = sshd;
  const n = net;
  const hostEnv = { PATH: HOST_PATH, HOME: '/root', LANG: 'C.UTF-8', USER: 'root' };
  const sh = (script: string) =>
    run('nsenter', ['-t', String(initPid), '-n', '-m', '-p', '--', '/bin/sh', '-c', script], {
      env: hostEnv,
    });
  const sim = async (...args: string[]): Promise<string> =>
    (await sh(`cd / && exec ${q(nodeMount)} ${q(TSX)} ${q(SIM)} ${args.map(q).join(' ')}`)).stdout;
  let stopped = false;
  const host: GuideHost = {
    kind: opts.compose,
    node: nodeKind,
    netns: n.netns,
    ip: n.ip,
    peerIp: n.peerIp,
    sshd: s,
    appDir,
    prepDir,
    dataDir: join(prepDir, nodeKind === 'goloop' ? 'data' : 'data/loopchain'),
    initPid,
    sshInputs: () => s.actionInputs(),
    sh,
    async compose(verb) {
      const cli = opts.compose === 'v1' ? 'docker-compose' : 'docker compose';
      const r = await sh(`cd ${GUIDE_PREP_DIR} && ${cli} -f docker-compose.yml ${verb}`);
      return r.stdout + r.stderr;
    },
    async initNode(o = {}) {
      await sim(
        'init',
        '--home',
        GUIDE_PREP_DIR,
        '--ip',
        n.ip,
        '--blocks',
        String(o.blocks ?? 300),
        '--value-bytes',
        String(o.valueBytes ?? 4096),
      );
    },
    async status() {
      return JSON.parse(await sim('status', '--home', GUIDE_PREP_DIR)) as {
        running: boolean;
        pid?: number | null;
        height?: number | null;
      };
    },
    async processes(pattern) {
      // Matched here, not by a grep on the host: a grep's own command line would match.
      const re = new RegExp(pattern);
      const { stdout } = await sh('ps -eo pid=,args=');
      return stdout
        .split('\n')
        .map((l) => l.trim())
        .filter((l) => l && re.test(l));
    },
    events() {
      const file = join(prepDir, 'node-events.log');
      return existsSync(file) ? parseEvents(readFileSync(file, 'utf8')) : [];
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await teardown();
    },
  };
  return host;
}
