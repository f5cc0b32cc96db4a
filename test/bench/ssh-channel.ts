/**
 * The SSH data channel figure of `npm run bench` (`--parts ssh`): `cat` of a file of random bytes
 * on the host, read by plain OpenSSH and by the action's SshSession.stream() (ssh-throughput.ts,
 * under Node 24) with transport openssh and ssh2.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { node24Bin, repoRoot } from '../bed/paths.js';
import type { Sshd } from '../bed/sshd.js';
import { exec, fmtB, log, q, ratio, table, verdict } from './kit.js';

const NODE24 = node24Bin();

export interface SshFigures {
  bytes: number;
  plainOpenSshMiBs?: number;
  plainRunsMiBs?: number[];
  plainSha256sumMiBs?: number;
  actionOpenSshMiBs?: number;
  actionSsh2MiBs?: number;
  node?: string;
  error?: string;
}

export async function sshThroughput(
  ctx: { root: string; sshd: Sshd },
  sshMib: number,
): Promise<SshFigures> {
  const file = join(ctx.root, 'random.bin');
  const bytes = sshMib * 1024 * 1024;
  const out: SshFigures = { bytes };
  try {
    log(`SSH data channel: ${sshMib} MiB of random bytes`);
    await exec('bash', [
      '-c',
      `head -c ${bytes} /dev/urandom > ${q(file)} && cat ${q(file)} > /dev/null`,
    ]);
    // Plain OpenSSH, as a reference: ssh host 'cat file' > /dev/null. Run before and after the
    // action's channels (the machine is shared); the better of the two is the reference.
    const plain = async (): Promise<number> => {
      const t = Date.now();
      await exec('bash', [
        '-c',
        `ssh ${ctx.sshd.sshArgs().map(q).join(' ')} ${q(`${ctx.sshd.username}@${ctx.sshd.host}`)} ${q(`cat ${q(file)}`)} > /dev/null`,
      ]);
      return sshMib / ((Date.now() - t) / 1000);
    };
    out.plainRunsMiBs = [await plain()];
    // The same with the bytes hashed, as the action hashes them: what sha256 itself costs here.
    {
      const t = Date.now();
      await exec('bash', [
        '-c',
        `ssh ${ctx.sshd.sshArgs().map(q).join(' ')} ${q(`${ctx.sshd.username}@${ctx.sshd.host}`)} ${q(`cat ${q(file)}`)} | sha256sum > /dev/null`,
      ]);
      out.plainSha256sumMiBs = sshMib / ((Date.now() - t) / 1000);
    }
    const { stdout } = await exec(
      NODE24,
      ['--import', 'tsx', join(repoRoot, 'test/bench/ssh-throughput.ts')],
      {
        cwd: repoRoot,
        maxBuffer: 1 << 24,
        env: {
          ...process.env,
          NODE_OPTIONS: '',
          BENCH_SSH: JSON.stringify({
            host: ctx.sshd.host,
            port: ctx.sshd.port,
            username: ctx.sshd.username,
            privateKey: ctx.sshd.privateKey,
            hostKey: ctx.sshd.hostKeyFingerprint,
            file,
            transports: ['openssh', 'ssh2'],
          }),
        },
      },
    );
    const line = stdout.split('\n').find((l) => l.startsWith('BENCH_SSH_RESULT '));
    if (!line) throw new Error(`no result from ssh-throughput.ts: ${stdout.slice(-1000)}`);
    const res = JSON.parse(line.slice('BENCH_SSH_RESULT '.length)) as {
      node: string;
      results: Array<{
        transport: string;
        bytes: number;
        mibPerSecond: number;
        exitCode: number | null;
      }>;
    };
    out.node = res.node;
    for (const m of res.results) {
      if (m.bytes !== bytes || m.exitCode !== 0)
        throw new Error(`${m.transport}: got ${m.bytes} of ${bytes} bytes, exit ${m.exitCode}`);
      if (m.transport === 'openssh') out.actionOpenSshMiBs = m.mibPerSecond;
      if (m.transport === 'ssh2') out.actionSsh2MiBs = m.mibPerSecond;
    }
    out.plainRunsMiBs.push(await plain());
    out.plainOpenSshMiBs = Math.max(...out.plainRunsMiBs);
  } catch (error) {
    out.error = String(error);
  } finally {
    rmSync(file, { force: true });
  }
  return out;
}

/** The report's lines for the SSH data channel. */
export function sshReport(ssh: SshFigures): string[] {
  const out: string[] = [];
  out.push(
    '',
    `SSH data channel (${fmtB(ssh.bytes)} of random bytes from the host, Node ${ssh.node ?? '?'})`,
  );
  if (ssh.error) out.push(`  error: ${ssh.error}`);
  const mbs = (v?: number): string => (v === undefined ? '-' : `${v.toFixed(0)} MiB/s`);
  out.push(
    table([
      ['channel', 'throughput', 'vs plain OpenSSH'],
      [
        `plain \`ssh host cat > /dev/null\` (best of ${(ssh.plainRunsMiBs ?? []).map((v) => v.toFixed(0)).join(', ')})`,
        mbs(ssh.plainOpenSshMiBs),
        '1.000x',
      ],
      [
        'plain `ssh host cat | sha256sum`',
        mbs(ssh.plainSha256sumMiBs),
        ratio(ssh.plainSha256sumMiBs, ssh.plainOpenSshMiBs),
      ],
      [
        'action: OpenSSH spawned by Node + sha256',
        mbs(ssh.actionOpenSshMiBs),
        ratio(ssh.actionOpenSshMiBs, ssh.plainOpenSshMiBs),
      ],
      [
        'action: ssh2 JavaScript channel + sha256',
        mbs(ssh.actionSsh2MiBs),
        ratio(ssh.actionSsh2MiBs, ssh.plainOpenSshMiBs),
      ],
    ]),
  );
  const r =
    ssh.actionOpenSshMiBs && ssh.plainOpenSshMiBs
      ? ssh.actionOpenSshMiBs / ssh.plainOpenSshMiBs
      : undefined;
  out.push(
    `target: the action's data channel >= 0.8x OpenSSH: ${verdict(r === undefined ? undefined : r >= 0.8)}`,
  );
  return out;
}
