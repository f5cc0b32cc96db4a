/**
 * A tree restore's transfer over several channels: the host's side is the real commands (the
 * main extraction and the other channels' receivers), run here by bash and GNU tar into a
 * folder of this machine; the files' bytes come from memory in place of S3 (the transfer's own
 * logic is under test, not the SDK's).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { readableSource } from '../../src/byte-source.ts';
import { IntegrityError } from '../../src/errors.ts';
import { extractCommand, receiveMoreCommand } from '../../src/node-kind/extract.ts';
import type { NodeHost } from '../../src/node-kind/host.ts';
import { loopchain } from '../../src/node-kind/loopchain/layout.ts';
import type { RemoteStream } from '../../src/ssh/session.ts';
import type { FetchItem } from '../../src/tree/fetch-file.ts';
import { fetchTree } from '../../src/tree/fetch.ts';

const root = mkdtempSync(join(tmpdir(), 'prep-fetch-'));
after(() => rmSync(root, { recursive: true, force: true }));

const TABLES = '.score_data/db/icon_dex';
const BLOCKS = `.storage/${loopchain.placeholder}`;
const DIRS = ['.score_data', '.score_data/db', TABLES, '.storage', BLOCKS];

/**
 * `command` run here as the host runs it; what reached its input is counted. Its kill does what
 * the end of an SSH channel does: the pipes close.
 */
function local(command: string): {
  remote: RemoteStream;
  received: () => number;
  input: () => Buffer;
} {
  const child = spawn('bash', ['-c', command], { stdio: ['pipe', 'pipe', 'pipe'] });
  const chunks: Buffer[] = [];
  const write = child.stdin.write.bind(child.stdin);
  child.stdin.write = ((chunk: Uint8Array | string, ...rest: never[]) => {
    chunks.push(Buffer.from(chunk));
    return write(chunk, ...rest);
  }) as typeof child.stdin.write;
  let stderr = '';
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const exit = new Promise<number | null>((r) => child.on('close', r));
  return {
    remote: {
      stdin: child.stdin,
      stdout: child.stdout,
      source: readableSource(child.stdout),
      exit,
      onStderrLine: () => undefined,
      stderrTail: () => stderr,
      kill: () => {
        child.stdin.destroy();
        child.stdout.destroy();
      },
      transport: 'openssh',
    },
    received: () => chunks.reduce((s, c) => s + c.length, 0),
    input: () => Buffer.concat(chunks),
  };
}

/** A file of `size` bytes, read in pieces of 64 KiB; `damaged` hands other bytes than its sha256's. */
function item(path: string, size: number, damaged = false): FetchItem & { bytes: Buffer } {
  const bytes = Buffer.alloc(size, path);
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  const sent = damaged ? Buffer.alloc(size, 'x') : bytes;
  return {
    path,
    size,
    mode: 0o644,
    sha256,
    bytes,
    read: async (start, take) => {
      for (let at = start; at < size; at += 64 * 1024) {
        await take(sent.subarray(at, Math.min(size, at + 64 * 1024)));
        await new Promise((r) => setImmediate(r));
      }
    },
  };
}

let n = 0;
function restoreInto(items: FetchItem[], more: number, moreCommand?: string) {
  const stage = join(root, `stage-${++n}`);
  const main = local(extractCommand(loopchain, root, stage, { keep: true }));
  const others = Array.from({ length: more }, () =>
    local(moreCommand ?? receiveMoreCommand(stage)),
  );
  const run = fetchTree({
    host: {} as NodeHost,
    stage,
    stageFound: false,
    inDataDir: { paths: [], address: '' },
    remote: main.remote,
    more: others.map((o) => o.remote),
    onGo: () => undefined,
    items,
    dirs: DIRS,
    filesInFlight: 4,
    bytesInFlight: 16 * 1024 ** 2,
  });
  return { stage, run, main, others };
}

/** The processes whose command line names `folder` (none once a restore has ended). */
function running(folder: string): string {
  try {
    return execFileSync('pgrep', ['-a', '-f', folder], { encoding: 'utf8' }).trim();
  } catch {
    return '';
  }
}

describe("a tree restore's files over several channels", () => {
  const files = [
    ...Array.from({ length: 24 }, (_, i) =>
      item(`${TABLES}/${String(i + 10).padStart(6, '0')}.ldb`, 300_000 + i * 1000),
    ),
    // Larger than a quarter of the bytes in flight: it streams alone, in whichever channel takes it.
    item(`${TABLES}/000090.ldb`, 5 * 1024 ** 2),
    item(`${BLOCKS}/CURRENT`, 16),
  ];

  it('shares the files among the channels; every file lands whole, and the main one counts them all', async () => {
    const { stage, run, main, others } = restoreInto(files, 2);
    const got = await run;
    assert.equal(got.channels, 3);
    assert.equal(got.files, files.length);
    assert.equal(got.counted, files.length, 'the main channel counted the files of every channel');
    for (const f of files) assert.ok(readFileSync(join(stage, f.path)).equals(f.bytes), f.path);
    for (const o of others) {
      assert.ok(o.received() > 300_000, 'each other channel carried files');
      // Its tar makes the folders before its first file (see fetchTree).
      const input = o.input();
      const names = execFileSync('tar', ['-t'], {
        input: input.subarray(input.indexOf('\n') + 1),
        encoding: 'utf8',
      })
        .trim()
        .split('\n');
      assert.deepEqual(
        names.slice(0, DIRS.length),
        DIRS.map((d) => `${d}/`),
      );
    }
    assert.ok(main.received() > 300_000, 'the main channel carried files');
    assert.equal(running(stage), '');
  });

  it('one channel alone does the same', async () => {
    const { stage, run } = restoreInto(files, 0);
    const got = await run;
    assert.equal(got.channels, 1);
    assert.equal(got.counted, files.length);
    for (const f of files) assert.ok(readFileSync(join(stage, f.path)).equals(f.bytes), f.path);
  });

  it('a damaged file stops every channel; what reached the host stays, and no process is left', async () => {
    const damaged = [...files.slice(0, 12), item(`${TABLES}/000070.ldb`, 400_000, true)];
    const { stage, run } = restoreInto(damaged, 2);
    await assert.rejects(
      run,
      (e: unknown) => e instanceof IntegrityError && /000070\.ldb/.test(String(e)),
    );
    assert.ok(existsSync(stage), 'the staging folder is kept for the next run');
    assert.equal(running(stage), '');
  });

  it('a host that fails on another channel fails the restore with what it said', async () => {
    const { stage, run } = restoreInto(
      files,
      1,
      `IFS=' ' read -r word name; head -c 100000 >/dev/null; echo 'No space left on device' >&2; exit 2`,
    );
    await assert.rejects(run, /No space left on device/);
    assert.equal(running(stage), '');
  });
});
