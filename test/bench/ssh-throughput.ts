/**
 * SSH data channel throughput, run by bench.ts under the runner's Node 24 with tsx
 * (`node24 --import tsx test/bench/ssh-throughput.ts`). It uses the action's own SshSession
 * (src/ssh/session.ts) with each transport, reads `cat FILE` from the host through
 * session.streamOut() into reused part-sized buffers and hashes every byte with sha256, as
 * the backup does.
 *
 * Input: env BENCH_SSH (JSON: host, port, username, privateKey, hostKey, file, transports).
 * Output: one line `BENCH_SSH_RESULT {json}` on stdout.
 */
import { createHash } from 'node:crypto';
import { SshSession } from '../../src/ssh/session.js';
import { parseHostKeyPins } from '../../src/ssh/host-key.js';
import type { SshTransport } from '../../src/settings.js';

interface Input {
  host: string;
  port: number;
  username: string;
  privateKey: string;
  hostKey: string;
  file: string;
  transports: Array<'openssh' | 'ssh2'>;
}

interface Measured {
  transport: string;
  bytes: number;
  seconds: number;
  mibPerSecond: number;
  sha256: string;
  exitCode: number | null;
}

async function measure(input: Input, transport: SshTransport): Promise<Measured> {
  const session = await SshSession.connect({
    host: input.host,
    port: input.port,
    username: input.username,
    privateKey: input.privateKey,
    hostKeys: parseHostKeyPins(input.hostKey, { host: input.host, port: input.port }),
    transport,
    connections: 1,
  });
  try {
    const q = `'${input.file.replace(/'/g, `'\\''`)}'`;
    const t = performance.now();
    // As the backup reads the archive: into reused part-sized buffers, hashing each read.
    const remote = await session.streamOut(`cat -- ${q}`);
    remote.stdin.end();
    const hash = createHash('sha256');
    let bytes = 0;
    const parts = [Buffer.allocUnsafe(8 * 1024 * 1024), Buffer.allocUnsafe(8 * 1024 * 1024)];
    let part = 0;
    let filled = 0;
    await remote.source.flow({
      space: () => parts[part % 2]?.subarray(filled),
      wrote: (chunk) => {
        hash.update(chunk);
        bytes += chunk.length;
        const target = parts[part % 2] as Buffer;
        if (chunk.buffer !== target.buffer) chunk.copy(target, filled);
        filled += chunk.length;
        if (filled >= target.length) {
          part++;
          filled = 0;
        }
        return true;
      },
    });
    const exitCode = await remote.exit;
    const seconds = (performance.now() - t) / 1000;
    return {
      transport: remote.transport,
      bytes,
      seconds,
      mibPerSecond: bytes / 1024 / 1024 / seconds,
      sha256: hash.digest('hex'),
      exitCode,
    };
  } finally {
    session.close();
  }
}

const input = JSON.parse(process.env.BENCH_SSH ?? '{}') as Input;
const results: Measured[] = [];
for (const t of input.transports) results.push(await measure(input, t));
process.stdout.write(`BENCH_SSH_RESULT ${JSON.stringify({ node: process.version, results })}\n`);
