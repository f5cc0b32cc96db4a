/**
 * The SSH side. ssh2 carries control (short commands whose output is small); the archive's
 * bytes go through a data channel (OpenSSH's client when the runner has it, which is several
 * times faster than ssh2's JavaScript ciphers under the runner's Node; ssh2 otherwise).
 * Both use the host key that was verified against the pin, and nothing else.
 */
import * as core from '@actions/core';
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { PassThrough, Readable, type Writable } from 'node:stream';
import { Client, type ClientChannel, type ConnectConfig } from 'ssh2';
import { readableSource, socketSource, type ByteSource } from '../byte-source.js';
import { ConnectError, RemoteCommandError } from '../errors.js';
import { gated, GO_LINE } from '../shell.js';
import type { SshSettings } from '../settings.js';
import {
  algorithmsOfKeyType,
  blobKeyType,
  fingerprintOf,
  knownHostsLine,
  matchesPins,
  pinnedAlgorithms,
} from './host-key.js';

export interface ExecResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  /**
   * Bytes written to the command's stdin, then closed. A promise is written when it
   * settles: the command starts now and waits for its input (a rejected one closes stdin).
   */
  stdin?: string | Buffer | Promise<string | Buffer>;
  /** Larger outputs are an error: control commands are small by design. */
  maxOutputBytes?: number;
  timeoutMs?: number;
}

/** A command opened ahead of time (see `SshSession.prepare`). */
export interface Prepared {
  /** Runs it; resolves with its stdout, or throws as `run` does. */
  go(): Promise<string>;
  /** Lets it end without running. Safe to call after `go` (then it does nothing). */
  cancel(): Promise<void>;
}

/** A running remote command whose output is a stream (the archive), or whose input is one. */
export interface RemoteStream {
  /** The command's stdout as a stream; empty from `streamOut` over OpenSSH (read `source`). */
  stdout: Readable;
  /** The command's stdout for the upload: read into its part buffers where the transport can. */
  source: ByteSource;
  stdin: Writable;
  /** The remote command's exit code (null when killed or cut off), once it has ended. */
  exit: Promise<number | null>;
  /** The remote command's stderr, as lines, for progress and errors. */
  onStderrLine(listener: (line: string) => void): void;
  stderrTail(): string;
  /** Cuts the channel. */
  kill(): void;
  transport: 'openssh' | 'ssh2';
}

export class SshSession {
  private constructor(
    private readonly client: Client,
    private readonly settings: SshSettings,
    readonly hostKey: Buffer,
    /** The host key algorithm that the verified key was presented under. */
    readonly hostKeyAlgorithm: string,
    private readonly keyDir: string | undefined,
    private readonly useOpenSsh: boolean,
  ) {}

  /**
   * Connects, proves the host key and logs in; each failure is a ConnectError that names it.
   * A server presents one host key a connection, of the first type the client offers that it
   * has: when that key is not pinned, the connection is made again offering only the types not
   * yet seen, until a pinned key is presented or no type is left.
   */
  static async connect(
    settings: SshSettings,
    options: { keyDirParent?: string; onKeyDir?: (dir: string) => void } = {},
  ): Promise<SshSession> {
    const where = `${settings.username}@${settings.host}:${settings.port}`;
    const pinned = settings.hostKeys.length > 0;
    let offer = pinned ? pinnedAlgorithms(settings.hostKeys) : undefined;
    const refused: Buffer[] = [];
    let connected: Connected | undefined;
    while (!connected) {
      const attempt = await attemptConnect(settings, offer);
      if (attempt.kind === 'connected') {
        connected = attempt;
      } else if (attempt.kind === 'refused') {
        refused.push(attempt.key);
        const keyType = blobKeyType(attempt.key) ?? '';
        const seenAlgorithms = algorithmsOfKeyType(keyType);
        const left = (offer ?? []).filter((a) => !seenAlgorithms.includes(a));
        if (left.length === 0 || left.length === offer?.length) {
          throw hostKeyMismatch(settings, refused);
        }
        core.info(
          `${settings.host}:${settings.port} presented its ${keyType} key ${fingerprintOf(attempt.key)}, which 'host-key' does not pin; asking for its other key types.`,
        );
        offer = left;
      } else {
        const err = attempt.error;
        if (offer && err.level === 'handshake' && /no matching host key/i.test(err.message)) {
          if (refused.length > 0) throw hostKeyMismatch(settings, refused);
          throw new ConnectError(
            `The host key of ${settings.host}:${settings.port} does not match 'host-key': the server has no key of the pinned type ` +
              `(${offer.join(', ')}). Pin the key that 'ssh-keyscan${settings.port === 22 ? '' : ` -p ${settings.port}`} ${settings.host}' prints on a trusted path.`,
          );
        }
        if (err.level === 'client-authentication') {
          throw new ConnectError(
            `${where} refused the login with 'ssh-key'. Check the user name and that the key's public half is in ~/.ssh/authorized_keys on the node.`,
          );
        }
        if (/passphrase|encrypted|Cannot parse privateKey/i.test(err.message)) {
          throw new ConnectError(
            `'ssh-key' could not be read: ${err.message}. Check the key and 'ssh-key-passphrase'.`,
          );
        }
        throw new ConnectError(
          `Could not reach ${where}: ${err.code ?? err.message}. Check 'host', 'port' and the firewall.`,
        );
      }
    }
    const { client, key: seenKey, algorithm } = connected;
    if (settings.hostKeys.length === 0) {
      core.warning(
        `Host key checking is off ('insecure-skip-host-key-check'). ${settings.host} presented ${fingerprintOf(seenKey)}: ` +
          `pin it with 'host-key: ${fingerprintOf(seenKey)}'.`,
      );
    } else {
      core.info(`Host key ${fingerprintOf(seenKey)} (${algorithm}) matches the pin.`);
    }

    const useOpenSsh =
      settings.transport !== 'ssh2' && (settings.transport === 'openssh' || (await hasOpenSsh()));
    if (settings.transport === 'openssh' && !(await hasOpenSsh())) {
      client.end();
      throw new ConnectError(
        `'ssh-transport: openssh' was asked for, but the runner has no 'ssh' client.`,
      );
    }
    let keyDir: string | undefined;
    if (useOpenSsh) {
      keyDir = mkdtempSync(
        join(options.keyDirParent ?? process.env.RUNNER_TEMP ?? tmpdir(), 'prep-snapshot-ssh-'),
      );
      options.onKeyDir?.(keyDir);
      chmodSync(keyDir, 0o700);
      writeFileSync(join(keyDir, 'id'), settings.privateKey, { mode: 0o600 });
      writeFileSync(
        join(keyDir, 'known_hosts'),
        `${knownHostsLine(settings.host, settings.port, seenKey)}\n`,
        {
          mode: 0o600,
        },
      );
      if (settings.passphrase) {
        writeFileSync(
          join(keyDir, 'askpass'),
          '#!/bin/sh\nprintf "%s\\n" "$PREP_SNAPSHOT_PASSPHRASE"\n',
          {
            mode: 0o700,
          },
        );
      }
    }
    return new SshSession(client, settings, seenKey, algorithm, keyDir, useOpenSsh);
  }

  get dataTransport(): 'openssh' | 'ssh2' {
    return this.useOpenSsh ? 'openssh' : 'ssh2';
  }

  /** Runs a short command and collects its output. */
  async exec(command: string, options: ExecOptions = {}): Promise<ExecResult> {
    const maxBytes = options.maxOutputBytes ?? 64 * 1024 * 1024;
    const { channel, closed: ended } = await this.openExec(command);
    return new Promise<ExecResult>((resolve, reject) => {
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      let size = 0;
      let timer: NodeJS.Timeout | undefined;
      let closed = false;
      // The time limit counts from when the input is given: a command that waits for it
      // (see `prepare`) may wait as long as it is not asked to go.
      const arm = (): void => {
        if (!options.timeoutMs || closed) return;
        timer = setTimeout(() => {
          channel.close();
          reject(
            new RemoteCommandError(
              `'${summarise(command)}'`,
              null,
              `timed out after ${options.timeoutMs} ms`,
            ),
          );
        }, options.timeoutMs);
      };
      const collect = (into: Buffer[]) => (chunk: Buffer) => {
        size += chunk.length;
        if (size > maxBytes) {
          channel.close();
          reject(
            new RemoteCommandError(
              `'${summarise(command)}'`,
              null,
              `printed more than ${maxBytes} bytes`,
            ),
          );
          return;
        }
        into.push(chunk);
      };
      channel.on('data', collect(out));
      channel.stderr.on('data', collect(err));
      void ended.then((code) => {
        closed = true;
        if (timer) clearTimeout(timer);
        resolve({
          code,
          stdout: Buffer.concat(out).toString('utf8'),
          stderr: Buffer.concat(err).toString('utf8'),
        });
      });
      channel.on('error', reject);
      if (options.stdin instanceof Promise) {
        options.stdin.then(
          (input) => {
            arm();
            channel.end(input);
          },
          () => channel.end(),
        );
      } else {
        arm();
        if (options.stdin !== undefined) channel.end(options.stdin);
        else channel.end();
      }
    });
  }

  /**
   * Opens a session for `command` now and runs it when `go` is called: the session's set-up
   * (on the host, a login shell and its rc files; on a far host, round trips) is out of the
   * way when the command is needed, as in the seconds that the node is down. A prepared
   * command that is cancelled, or whose connection ends first, runs nothing.
   */
  prepare(what: string, command: string, options: Omit<ExecOptions, 'stdin'> = {}): Prepared {
    let release: (input: string) => void = () => undefined;
    const input = new Promise<string>((resolve) => (release = resolve));
    const result = this.exec(gated(command), { ...options, stdin: input });
    result.catch(() => undefined);
    let used = false;
    return {
      go: async () => {
        used = true;
        release(GO_LINE);
        const r = await result;
        if (r.code !== 0) throw new RemoteCommandError(what, r.code, r.stderr || r.stdout);
        return r.stdout;
      },
      cancel: async () => {
        if (used) return;
        used = true;
        release('');
        await result.catch(() => undefined);
      },
    };
  }

  /** Runs a command that must succeed; its stdout is returned. */
  async run(what: string, command: string, options: ExecOptions = {}): Promise<string> {
    const result = await this.exec(command, options);
    if (result.code !== 0)
      throw new RemoteCommandError(what, result.code, result.stderr || result.stdout);
    return result.stdout;
  }

  /** Starts a command whose stdout or stdin carries a large stream, over the data transport. */
  stream(command: string): RemoteStream {
    return this.useOpenSsh ? this.streamOpenSsh(command) : this.streamSsh2(command);
  }

  /**
   * Starts a command whose stdout is the large stream. Over OpenSSH, the client's stdout is
   * a Unix socket that the upload reads straight into its part buffers (see byte-source.ts);
   * where that socket cannot be made (a path too long for one), a pipe as `stream` has.
   */
  async streamOut(command: string): Promise<RemoteStream> {
    if (!this.useOpenSsh) return this.streamSsh2(command);
    let pair: Awaited<ReturnType<typeof socketSource>>;
    try {
      pair = await socketSource(this.keyDir as string);
    } catch (error) {
      core.debug(
        `No Unix socket for the data channel (${(error as Error).message}); a pipe instead.`,
      );
      return this.streamOpenSsh(command);
    }
    try {
      return this.streamOpenSsh(command, pair);
    } finally {
      // The child holds its own copy of the writing end: EOF comes when it exits.
      pair.writer.destroy();
    }
  }

  private openSshArgs(command: string): string[] {
    const dir = this.keyDir as string;
    return [
      '-p',
      String(this.settings.port),
      '-i',
      join(dir, 'id'),
      '-o',
      'IdentitiesOnly=yes',
      '-o',
      'IdentityAgent=none',
      '-o',
      `UserKnownHostsFile=${join(dir, 'known_hosts')}`,
      '-o',
      'GlobalKnownHostsFile=/dev/null',
      '-o',
      'StrictHostKeyChecking=yes',
      '-o',
      'UpdateHostKeys=no',
      // The server presents the key that known_hosts holds only when asked for its type.
      '-o',
      `HostKeyAlgorithms=${this.hostKeyAlgorithm}`,
      '-o',
      `BatchMode=${this.settings.passphrase ? 'no' : 'yes'}`,
      '-o',
      'PasswordAuthentication=no',
      '-o',
      'KbdInteractiveAuthentication=no',
      '-o',
      'ConnectTimeout=30',
      '-o',
      'ServerAliveInterval=15',
      '-o',
      'ServerAliveCountMax=4',
      '-o',
      'Compression=no',
      // AES-GCM first: with AES-NI it moves about twice the bytes of OpenSSH's default
      // chacha20-poly1305 per core (measured 257 against 132 MiB/s on loopback here).
      '-o',
      `Ciphers=${DATA_CIPHERS}`,
      '-o',
      'LogLevel=ERROR',
      '-F',
      '/dev/null',
      '-T',
      '-l',
      this.settings.username,
      this.settings.host,
      '--',
      command,
    ];
  }

  private openSshEnv(): NodeJS.ProcessEnv {
    const dir = this.keyDir as string;
    const env: NodeJS.ProcessEnv = { ...process.env };
    if (this.settings.passphrase) {
      env.SSH_ASKPASS = join(dir, 'askpass');
      env.SSH_ASKPASS_REQUIRE = 'force';
      env.DISPLAY = env.DISPLAY ?? 'none';
      env.PREP_SNAPSHOT_PASSPHRASE = this.settings.passphrase;
    }
    return env;
  }

  private streamOpenSsh(
    command: string,
    pair?: { writer: Socket; source: ByteSource },
  ): RemoteStream {
    const child = spawn('ssh', this.openSshArgs(command), {
      stdio: ['pipe', pair ? pair.writer : 'pipe', 'pipe'],
      env: this.openSshEnv(),
    });
    const stderr = new StderrLines(child.stderr as Readable);
    const exit = new Promise<number | null>((resolve) => {
      child.on('close', (code) => resolve(code === 255 ? null : code));
      child.on('error', () => resolve(null));
    });
    // stdin and stderr are pipes here; stdout is one unless the socket pair took its place.
    const stdin = child.stdin as Writable;
    stdin.on('error', () => undefined);
    const stdout = child.stdout ?? Readable.from([]);
    return {
      stdout,
      source: pair ? pair.source : readableSource(stdout),
      stdin,
      exit,
      onStderrLine: (l) => stderr.listen(l),
      stderrTail: () => stderr.tail(),
      kill: () => child.kill('SIGKILL'),
      transport: 'openssh',
    };
  }

  private streamSsh2(command: string): RemoteStream {
    let channel: ClientChannel | undefined;
    let killed = false;
    const stdout = new PassThrough();
    const stdin = new PassThrough();
    const errStream = new PassThrough();
    const stderr = new StderrLines(errStream);
    const exit = this.openExec(command).then(
      ({ channel: ch, closed }) => {
        channel = ch;
        if (killed) ch.close();
        ch.pipe(stdout);
        ch.stderr.pipe(errStream);
        stdin.pipe(ch);
        return closed;
      },
      (error: Error) => {
        stdout.destroy(error);
        return null;
      },
    );
    return {
      stdout,
      source: readableSource(stdout),
      stdin,
      exit,
      onStderrLine: (l) => stderr.listen(l),
      stderrTail: () => stderr.tail(),
      kill: () => {
        killed = true;
        channel?.close();
      },
      transport: 'ssh2',
    };
  }

  /**
   * Starts `command` in a new channel. Its exit status and its close are listened for in the
   * exec's own callback: a command that ends at once (the watchdog's arming, which only starts
   * a process in the background) may send both in the same read as the answer to the exec, and
   * ssh2 emits them there; a listener added after an await missed the status while the runner's
   * event loop was busy, and the command read as killed by a signal.
   */
  private openExec(
    command: string,
  ): Promise<{ channel: ClientChannel; closed: Promise<number | null> }> {
    return new Promise((resolve, reject) => {
      this.client.exec(command, (error, channel) => {
        if (error) {
          reject(error);
          return;
        }
        let code: number | null = null;
        channel.on('exit', (c: number | null) => (code = c));
        const closed = new Promise<number | null>((r) => channel.on('close', () => r(code)));
        resolve({ channel, closed });
      });
    });
  }

  close(): void {
    this.client.end();
    if (this.keyDir) rmSync(this.keyDir, { recursive: true, force: true });
  }
}

interface Connected {
  kind: 'connected';
  client: Client;
  /** The host key the server presented (checked against the pins unless there are none). */
  key: Buffer;
  /** The host key algorithm it was presented under. */
  algorithm: string;
}

type Attempt =
  | Connected
  /** The server presented `key`, which no pin matches. */
  | { kind: 'refused'; key: Buffer }
  | { kind: 'failed'; error: Error & { level?: string; code?: string } };

/** One connection that offers the host key algorithms `offer` (ssh2's defaults when absent). */
function attemptConnect(settings: SshSettings, offer: string[] | undefined): Promise<Attempt> {
  const client = new Client();
  let seenKey: Buffer | undefined;
  let algorithm: string | undefined;
  let refused = false;
  const config: ConnectConfig = {
    host: settings.host,
    port: settings.port,
    username: settings.username,
    privateKey: settings.privateKey,
    passphrase: settings.passphrase,
    readyTimeout: 30_000,
    keepaliveInterval: 15_000,
    keepaliveCountMax: 4,
    hostVerifier: (key: Buffer) => {
      seenKey = Buffer.from(key);
      if (settings.hostKeys.length === 0) return true;
      refused = !matchesPins(seenKey, settings.hostKeys);
      return !refused;
    },
  };
  if (offer) config.algorithms = { serverHostKey: offer as never };
  client.once('handshake', (negotiated) => (algorithm = negotiated.serverHostKey));
  return new Promise<Attempt>((resolve) => {
    let settled = false;
    client.once('ready', () => {
      settled = true;
      if (!seenKey) {
        client.end();
        resolve({ kind: 'failed', error: new Error('the server presented no host key') });
        return;
      }
      resolve({
        kind: 'connected',
        client,
        key: seenKey,
        algorithm: algorithm ?? algorithmsOfKeyType(blobKeyType(seenKey) ?? '')[0] ?? '',
      });
    });
    // Stays attached: a connection that failed can report a second error (the reset that
    // follows a refused handshake), and one that is up reports its end through its channels.
    client.on('error', (error: Error & { level?: string; code?: string }) => {
      if (settled) return;
      settled = true;
      client.end();
      resolve(refused && seenKey ? { kind: 'refused', key: seenKey } : { kind: 'failed', error });
    });
    try {
      client.connect(config);
    } catch (error) {
      // A key that cannot be read is thrown here, before any connection.
      settled = true;
      client.end();
      resolve({ kind: 'failed', error: error as Error });
    }
  });
}

/** The error for host keys that match no pin: the fingerprints of every key presented. */
function hostKeyMismatch(settings: SshSettings, keys: Buffer[]): ConnectError {
  const fingerprints = [...new Set(keys.map(fingerprintOf))];
  const which =
    fingerprints.length === 1
      ? `The host key of ${settings.host}:${settings.port} (${fingerprints[0]}) does not match 'host-key'.`
      : `The host keys of ${settings.host}:${settings.port} (${fingerprints.join(', ')}) do not match 'host-key'.`;
  return new ConnectError(
    `${which} If the node was rebuilt, check the new key on a trusted path and update 'host-key'; otherwise someone may be in between.`,
  );
}

class StderrLines {
  private readonly listeners: Array<(line: string) => void> = [];
  private readonly lines: string[] = [];
  private partial = '';

  constructor(stream: Readable) {
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      const parts = (this.partial + chunk).split('\n');
      this.partial = parts.pop() ?? '';
      for (const line of parts) this.emit(line);
    });
    stream.on('end', () => {
      if (this.partial) this.emit(this.partial);
      this.partial = '';
    });
  }

  private emit(line: string): void {
    this.lines.push(line);
    if (this.lines.length > 200) this.lines.shift();
    for (const l of this.listeners) l(line);
  }

  listen(listener: (line: string) => void): void {
    this.listeners.push(listener);
  }

  tail(): string {
    return this.lines.join('\n');
  }
}

const DATA_CIPHERS = [
  'aes128-gcm@openssh.com',
  'aes256-gcm@openssh.com',
  'chacha20-poly1305@openssh.com',
  'aes128-ctr',
  'aes256-ctr',
].join(',');

let openSshPresent: Promise<boolean> | undefined;
function hasOpenSsh(): Promise<boolean> {
  openSshPresent ??= new Promise((resolve) => {
    const child = spawn('ssh', ['-V'], { stdio: 'ignore' });
    child.on('error', () => resolve(false));
    child.on('close', (code) => resolve(code === 0));
  });
  return openSshPresent;
}

function summarise(command: string): string {
  const first = command.split('\n')[0] ?? '';
  return first.length > 80 ? `${first.slice(0, 77)}...` : first;
}

/**
 * Ends a remote command that was started ahead and never given its go line, and waits for
 * it (it ends with nothing done); cut after `graceMs` if it does not.
 */
export async function closeUnused(remote: RemoteStream, graceMs = 30_000): Promise<void> {
  remote.stdin.end();
  const timer = setTimeout(() => remote.kill(), graceMs);
  await remote.exit;
  clearTimeout(timer);
  remote.source.destroy();
}
