// A real OpenSSH server for tests, on 127.0.0.1 by default: fresh host key, fresh user key,
// pinned known_hosts line. A command prefix can run it inside namespaces of a test host.
import { mkdir, mkdtemp, readFile, rm, writeFile, appendFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { freePort } from './ports.js';
import { removeAtExit, run, spawnServer, type Server } from './proc.js';
import { sshdBin } from './paths.js';

export interface KeyPair {
  privateKeyPath: string;
  publicKeyPath: string;
  /** OpenSSH private key text ("-----BEGIN OPENSSH PRIVATE KEY-----"). */
  privateKey: string;
  /** "ssh-ed25519 AAAA... comment" */
  publicKey: string;
}

/** Generate an ed25519 key pair without passphrase in dir (file name `name`, default id_ed25519). */
export async function generateKey(
  dir: string,
  name = 'id_ed25519',
  comment = 'prep-snapshot-test',
): Promise<KeyPair> {
  await mkdir(dir, { recursive: true });
  const privateKeyPath = join(dir, name);
  await rm(privateKeyPath, { force: true });
  await rm(`${privateKeyPath}.pub`, { force: true });
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', privateKeyPath]);
  return {
    privateKeyPath,
    publicKeyPath: `${privateKeyPath}.pub`,
    privateKey: await readFile(privateKeyPath, 'utf8'),
    publicKey: (await readFile(`${privateKeyPath}.pub`, 'utf8')).trim(),
  };
}

/** "SHA256:..." fingerprint of a public key file, as `ssh-keygen -l -E sha256` prints it. */
export async function fingerprint(publicKeyPath: string): Promise<string> {
  const { stdout } = await run('ssh-keygen', ['-l', '-E', 'sha256', '-f', publicKeyPath]);
  const fp = stdout.trim().split(/\s+/)[1];
  if (!fp?.startsWith('SHA256:')) throw new Error(`unexpected ssh-keygen -l output: ${stdout}`);
  return fp;
}

export interface SshdOptions {
  /**
   * Extra sshd_config lines, placed BEFORE the bed's defaults: sshd keeps the first value it
   * sees for a keyword, so these override the defaults (e.g. 'MaxSessions 2'). No Match here.
   */
  extraConfig?: string[];
  /** Lines appended at the end of sshd_config (Match blocks). */
  trailingConfig?: string[];
  /** Extra authorized public keys ("ssh-ed25519 AAAA..."), besides the generated user key. */
  authorizedKeys?: string[];
  /** Milliseconds to wait for the server to come up (default 10 s). */
  startTimeoutMs?: number;
  /** The address sshd listens on and clients connect to (default 127.0.0.1). */
  listenAddress?: string;
  /** The port (default: a free port of 127.0.0.1). */
  port?: number;
  /**
   * A command that runs sshd: sshd's own argv is appended to it (e.g. `ip netns exec NS ...`
   * to run it inside a network namespace). The server is stopped through its process group.
   */
  commandPrefix?: string[];
  /**
   * Sessions start without the user's ~/.bashrc (hidden by an empty file in a mount namespace of
   * sshd's own). bash reads ~/.bashrc before every command that sshd runs; where it sets up a
   * version manager (as this machine's does, 0.2 s each), that cost would be counted as the
   * action's. A server's usual .bashrc returns at once when the shell is not interactive. The
   * benchmark sets it; the tests keep the noise, which the action has to cope with.
   */
  plainShell?: boolean;
  /**
   * The server's host key types (default ['ed25519']). The first one is the key that
   * hostKeyFingerprint, knownHostsLine and hostPublicKey describe; `hostKeys` lists them all.
   */
  hostKeyTypes?: HostKeyType[];
}

export type HostKeyType = 'ed25519' | 'ecdsa' | 'rsa';

/** One of the server's host keys. */
export interface BedHostKey {
  type: HostKeyType;
  /** "SHA256:..." */
  fingerprint: string;
  /** "ssh-rsa AAAA..." (no comment) */
  publicKey: string;
  /** "[127.0.0.1]:PORT ssh-rsa AAAA..." */
  knownHostsLine: string;
}

export interface Sshd {
  /** The listen address (127.0.0.1 unless `listenAddress` was given). */
  host: string;
  port: number;
  /** The current user (root here): the one the generated key logs in as. */
  username: string;
  privateKeyPath: string;
  /** OpenSSH private key text of the authorized user key. */
  privateKey: string;
  publicKey: string;
  /** "SHA256:..." of the server's first host key (ed25519 unless hostKeyTypes says otherwise). */
  hostKeyFingerprint: string;
  /** "[127.0.0.1]:PORT ssh-ed25519 AAAA..." (on port 22: "HOST ssh-ed25519 AAAA...") */
  knownHostsLine: string;
  /** A known_hosts file holding knownHostsLine. */
  knownHostsPath: string;
  /** "ssh-ed25519 AAAA..." (no comment) */
  hostPublicKey: string;
  /** Every host key of the server, in the order of `hostKeyTypes`. */
  hostKeys: BedHostKey[];
  /** Temp dir of this server (keys, config, logs). Removed by stop(). */
  dir: string;
  /** sshd's log (it runs with -D -e, so the log is its stderr). */
  log(): string;
  /** Authorize one more public key ("ssh-ed25519 AAAA..."). */
  authorize(publicKey: string): Promise<void>;
  /** The action's inputs that reach this server: host, port, username, ssh-key, host-key. */
  actionInputs(): Record<string, string>;
  /** Arguments for the OpenSSH client: pinned host key, StrictHostKeyChecking=yes, this key, batch mode. Append user@host and the command. */
  sshArgs(): string[];
  /** PID of the sshd listener (with a command prefix: of the prefix's process). */
  pid: number;
  stop(): Promise<void>;
}

function waitForBanner(
  host: string,
  port: number,
  timeoutMs: number,
  server: Server,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolveBanner, reject) => {
    const attempt = (): void => {
      if (server.child.exitCode !== null || server.child.signalCode !== null) {
        reject(new Error(`sshd exited before it listened:\n${server.log()}`));
        return;
      }
      const s = connect({ host, port });
      let buf = '';
      const retry = (): void => {
        s.destroy();
        if (Date.now() > deadline)
          reject(
            new Error(
              `sshd on ${host}:${port} did not answer within ${timeoutMs} ms:\n${server.log()}`,
            ),
          );
        else setTimeout(attempt, 50);
      };
      s.setTimeout(2000, retry);
      s.on('data', (b: Buffer) => {
        buf += b.toString('latin1');
        if (buf.includes('SSH-2.0-')) {
          s.destroy();
          resolveBanner();
        }
      });
      s.once('error', retry);
      s.once('end', () => {
        if (!buf.includes('SSH-2.0-')) retry();
      });
    };
    attempt();
  });
}

/** Start sshd (default: on a free port of 127.0.0.1). Throws (never skips) if it cannot start. */
export async function startSshd(opts: SshdOptions = {}): Promise<Sshd> {
  if (!existsSync(sshdBin)) throw new Error(`${sshdBin} not found: run bash test/bed/install.sh`);
  // Privilege separation directory; sshd refuses to start without it.
  await mkdir('/run/sshd', { recursive: true, mode: 0o755 });
  const dir = await mkdtemp(join(tmpdir(), 'bed-sshd-'));
  removeAtExit(dir);
  let server: Server | undefined;
  try {
    const hostKeyFiles: Array<{
      type: HostKeyType;
      path: string;
      publicKey: string;
      fingerprint: string;
    }> = [];
    for (const type of opts.hostKeyTypes ?? ['ed25519']) {
      const path = join(dir, `ssh_host_${type}_key`);
      const size = type === 'rsa' ? ['-b', '2048'] : [];
      await run('ssh-keygen', ['-q', '-t', type, ...size, '-N', '', '-C', 'bed-host', '-f', path]);
      const [kt, kb] = (await readFile(`${path}.pub`, 'utf8')).trim().split(/\s+/);
      hostKeyFiles.push({
        type,
        path,
        publicKey: `${kt} ${kb}`,
        fingerprint: await fingerprint(`${path}.pub`),
      });
    }
    const firstHostKey = hostKeyFiles[0];
    if (!firstHostKey) throw new Error('startSshd: hostKeyTypes is empty');
    const hostPublicKey = firstHostKey.publicKey;
    const hostKeyFingerprint = firstHostKey.fingerprint;
    const user = await generateKey(join(dir, 'user'));
    const authorizedKeysPath = join(dir, 'authorized_keys');
    await writeFile(
      authorizedKeysPath,
      [user.publicKey, ...(opts.authorizedKeys ?? [])].join('\n') + '\n',
      { mode: 0o600 },
    );

    const host = opts.listenAddress ?? '127.0.0.1';
    const port = opts.port ?? (await freePort());
    const cfg = [
      ...(opts.extraConfig ?? []),
      `ListenAddress ${host}`,
      `Port ${port}`,
      ...hostKeyFiles.map((k) => `HostKey ${k.path}`),
      `AuthorizedKeysFile ${authorizedKeysPath}`,
      `PermitRootLogin prohibit-password`,
      `PubkeyAuthentication yes`,
      `PasswordAuthentication no`,
      `KbdInteractiveAuthentication no`,
      `StrictModes no`,
      `UsePAM no`,
      `PidFile ${join(dir, 'sshd.pid')}`,
      `MaxStartups 100`,
      `MaxSessions 100`,
      `LoginGraceTime 30`,
      `ClientAliveInterval 0`,
      `PrintMotd no`,
      `Subsystem sftp internal-sftp`,
      `LogLevel INFO`,
      ...(opts.trailingConfig ?? []),
      '',
    ].join('\n');
    const cfgPath = join(dir, 'sshd_config');
    await writeFile(cfgPath, cfg);
    // Validate first: a bad config then fails with sshd's own message.
    await run(sshdBin, ['-t', '-f', cfgPath]);

    const plain = opts.plainShell
      ? [
          'unshare',
          '--mount',
          '--propagation',
          'private',
          '--',
          '/bin/sh',
          '-c',
          'if [ -f "$HOME/.bashrc" ]; then mount --bind /dev/null "$HOME/.bashrc" || exit 1; fi; exec "$@"',
          'plain-shell',
        ]
      : [];
    const [cmd, ...args] = [
      ...(opts.commandPrefix ?? []),
      ...plain,
      sshdBin,
      '-D',
      '-e',
      '-f',
      cfgPath,
    ];
    const srv = spawnServer(cmd as string, args, { cwd: dir, group: true });
    server = srv;
    await waitForBanner(host, port, opts.startTimeoutMs ?? 10_000, server);
    const knownHostsName = port === 22 ? host : `[${host}]:${port}`;
    const knownHostsLine = `${knownHostsName} ${hostPublicKey}`;
    const hostKeys: BedHostKey[] = hostKeyFiles.map((k) => ({
      type: k.type,
      fingerprint: k.fingerprint,
      publicKey: k.publicKey,
      knownHostsLine: `${knownHostsName} ${k.publicKey}`,
    }));
    const knownHostsPath = join(dir, 'known_hosts');
    await writeFile(knownHostsPath, hostKeys.map((k) => k.knownHostsLine).join('\n') + '\n');
    const username = userInfo().username;
    let stopped = false;
    return {
      host,
      port,
      username,
      privateKeyPath: user.privateKeyPath,
      privateKey: user.privateKey,
      publicKey: user.publicKey,
      hostKeyFingerprint,
      knownHostsLine,
      knownHostsPath,
      hostPublicKey,
      hostKeys,
      dir,
      pid: srv.child.pid ?? -1,
      log: srv.log,
      authorize: (publicKey: string) => appendFile(authorizedKeysPath, publicKey.trim() + '\n'),
      actionInputs: () => ({
        host,
        port: String(port),
        username,
        'ssh-key': user.privateKey,
        'host-key': hostKeyFingerprint,
      }),
      sshArgs: () => [
        '-p',
        String(port),
        '-i',
        user.privateKeyPath,
        '-o',
        'IdentitiesOnly=yes',
        '-o',
        'BatchMode=yes',
        '-o',
        'StrictHostKeyChecking=yes',
        '-o',
        `UserKnownHostsFile=${knownHostsPath}`,
        '-o',
        'GlobalKnownHostsFile=/dev/null',
        '-o',
        'ConnectTimeout=10',
        '-o',
        'LogLevel=ERROR',
        '-F',
        '/dev/null',
      ],
      stop: async () => {
        if (stopped) return;
        stopped = true;
        await srv.kill();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (err) {
    await server?.kill();
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}
