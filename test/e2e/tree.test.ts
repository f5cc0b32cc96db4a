/**
 * Tree snapshots of a real goloop v1.4.4 node, end to end, with the format left at its default
 * for ICON 2 (tree): the packaged action backs up over a real sshd into MinIO; a second backup
 * sends only the files written since; a restore onto a fresh node dir removes the staging
 * folder that a restore of another snapshot left, is cut by a proxy and goes on from what the
 * first run left; goloop starts on it with the snapshot's block hash.
 */
import assert from 'node:assert/strict';
import {
  closeSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startCutProxy } from '../bed/cut-proxy.js';
import {
  balanceAt,
  blockHashAt,
  startGoloop,
  type GoloopNode,
  type GoloopTransfer,
} from '../bed/goloop.js';
import { growDatabase } from '../bed/goloop-ballast.js';
import { s3Env, startMinio, type S3Server } from '../bed/minio.js';
import { goloopBin, goloopMissing, repoRoot } from '../bed/paths.js';
import { freePort } from '../bed/ports.js';
import { runAction, type RunResult } from '../bed/runner.js';
import { startSshd, type Sshd } from '../bed/sshd.js';
import { bundles } from './world.js';

const q = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;
const SERVER = join(repoRoot, 'test/bed/goloop-server.sh');
const said = (r: RunResult): string => `${r.stdout}\n${r.stderr}`;
const errors = (r: RunResult): string =>
  r.annotations
    .filter((a) => a.level === 'error')
    .map((a) => a.message)
    .join('\n');

interface Manifest {
  format: string;
  blockHeight: number;
  files: Array<{ path: string; size: number; sha256: string; tail: string }>;
  bytes: number;
  sent: { files: number; bytes: number; ahead?: { files: number; bytes: number } };
  facts: Record<string, string>;
}

describe('Tree snapshots of a real goloop node', { skip: goloopMissing() }, () => {
  let sshd: Sshd;
  let s3: S3Server;
  let g: GoloopNode;
  let root: string;
  let sent: GoloopTransfer[] = [];
  const bucket = 'trees';
  const servers: string[] = [];

  before(async () => {
    root = mkdtempSync(join(tmpdir(), 'prep-tree-'));
    [sshd, s3, g] = await Promise.all([startSshd(), startMinio(), startGoloop()]);
    await s3.createBucket(bucket);
    sent = await g.load(20);
    // Table files of some size: the restore below is cut in the middle of one.
    await growDatabase(g, 24 * 1024 ** 2);
  });
  after(async () => {
    for (const node of servers) await runShell(`bash ${q(SERVER)} stop ${q(node)}`);
    await g?.stop();
    await Promise.all([sshd?.stop(), s3?.stop()]);
    rmSync(root, { recursive: true, force: true });
  });

  const inputs = (extra: Record<string, string>): Record<string, string> => ({
    ...sshd.actionInputs(),
    bucket,
    endpoint: s3.endpoint,
    service: 'MainNet',
    ...extra,
  });
  const run = (extra: Record<string, string>, endpoint?: string): Promise<RunResult> =>
    runAction({
      step: 'main',
      inputs: { ...inputs(extra), ...(endpoint ? { endpoint } : {}) },
      env: s3Env(s3),
      script: bundles().main,
      timeoutMs: 300_000,
    });
  const backupInputs = () => ({
    mode: 'backup',
    'data-dir': g.nodeDir,
    'peer-url': `${g.rpcUrl}/admin/chain`,
  });
  const objectTimes = async (): Promise<Map<string, number>> => {
    const { ListObjectsV2Command } = await import('@aws-sdk/client-s3');
    const out = new Map<string, number>();
    let token: string | undefined;
    do {
      const res = await s3.client().send(
        new ListObjectsV2Command({
          Bucket: bucket,
          Prefix: 'MainNet/objects/',
          ContinuationToken: token,
        }),
      );
      for (const o of res.Contents ?? []) out.set(o.Key!, o.LastModified!.getTime());
      token = res.NextContinuationToken;
    } while (token);
    return out;
  };
  const manifestOf = async (key: string): Promise<Manifest> =>
    JSON.parse(await s3.getText(bucket, `${key}/manifest.json`)) as Manifest;

  let first = '';
  let second = '';
  let third = '';
  let height = 0;
  /** The node that the restore below provisions: its node dir, RPC port and restore inputs. */
  let restored: { node: string; rpc: number; inputs: Record<string, string> } | undefined;

  it('backs up as a tree by default: objects by sha256, then the manifest, index, checksum file and pointer', async () => {
    const r = await run(backupInputs());
    assert.equal(r.code, 0, said(r));
    first = r.outputs.key as string;
    assert.match(first, /^MainNet\/\d{8}\/MainNet_BH\d+_data-\d{8}_\d{4}\.tree$/);
    const m = await manifestOf(first);
    assert.equal(m.format, 'prep-snapshot-tree/1');
    assert.equal(m.facts.blockHash, await g.blockHash(m.blockHeight));
    assert.ok(
      m.files.some((f) => /\/db\/[0-9a-f]+\/\d+\.ldb$/.test(f.path)),
      'table files',
    );
    assert.ok(!m.files.some((f) => /\/(cache|tmp)\/|LOCK$|\.sock$/.test(f.path)));
    // Nothing was stored: every table file went up while the node ran, hashed as it arrived;
    // after the freeze they were proven as recorded then, and only the rest was sent.
    const ahead =
      /(\d+) of the (\d+) table files \(.*\) are new: they go up now, while the node runs/.exec(
        said(r),
      );
    assert.ok(ahead, said(r));
    assert.equal(ahead[1], ahead[2], 'every table is new');
    // They share four SSH connections (ssh-connections) by default.
    assert.match(said(r), /Sent \d+ files, .* over 4 SSH channels\)/);
    assert.ok(m.sent.ahead && m.sent.ahead.files > 0, JSON.stringify(m.sent));
    const proven = Number(
      /(\d+) files proven unchanged since no earlier snapshot of this host and the send ahead of the stop/.exec(
        said(r),
      )?.[1],
    );
    const tables = m.files.filter((f) => f.path.endsWith('.ldb')).length;
    assert.ok(proven > 0 && proven <= tables, `${proven} proven, ${tables} tables`);
    if (!/left out/.test(said(r)) && tables === Number(ahead[2])) assert.equal(proven, tables);
    // The other files that went ahead (config, genesis: settled) are hashed on the host once
    // frozen, and found stored.
    const storedAlready = Number(/ (\d+) of them stored already/.exec(said(r))?.[1] ?? 0);
    assert.equal(
      m.sent.files - m.sent.ahead.files,
      m.files.length - proven - storedAlready,
      'after the freeze, what was not sent ahead',
    );
    const keys = await s3.listKeys(bucket, 'MainNet/objects/');
    for (const f of m.files) assert.ok(keys.includes(`MainNet/objects/${f.sha256}`), f.path);
    // Published: backup_list names the folder, the pointer names its index and checksum file.
    assert.equal(
      (await s3.getText(bucket, 'MainNet/backup_list')).trim(),
      first.replace(/^MainNet\//, ''),
    );
    const pointer = JSON.parse(await s3.getText(bucket, 'MainNet/MainNet.json')) as Record<
      string,
      string
    >;
    assert.equal(pointer.index_url, `${s3.endpoint}/${bucket}/${first}/index.txt`);
    assert.equal(pointer.checksum_url, `${s3.endpoint}/${bucket}/${first}/checksum.json`);
    const index = await s3.getText(bucket, `${first}/index.txt`);
    assert.equal(index.trim().split('\n').length, 2 * m.files.length);
    const checksums = JSON.parse(await s3.getText(bucket, `${first}/checksum.json`)) as Record<
      string,
      { file_size: number; checksum: string }
    >;
    for (const f of m.files)
      assert.deepEqual(checksums[f.path], { file_size: f.size, checksum: f.tail });
    assert.equal((await g.chain()).state, 'started');
    assert.deepEqual(
      readdirSync(join(g.nodeDir, '..')).filter((n) => n.startsWith('.prep-snapshot')),
      [],
    );
  });

  it('a second backup sends only the files written since the first', async () => {
    assert.ok(first, 'the first backup ran');
    await g.load(20);
    await g.waitForHeight((await g.height()) + 10);
    const r = await run(backupInputs());
    assert.equal(r.code, 0, said(r));
    second = r.outputs.key as string;
    assert.notEqual(second, first);
    const [a, b] = [await manifestOf(first), await manifestOf(second)];
    height = b.blockHeight;
    // New content, or a file at a new path (sent as read: it holds data no snapshot has seen).
    const before = new Set(a.files.map((f) => f.sha256));
    const paths = new Set(a.files.map((f) => f.path));
    const fresh = b.files.filter((f) => !before.has(f.sha256) || !paths.has(f.path));
    assert.ok(b.sent.files <= fresh.length, `${b.sent.files} sent, ${fresh.length} new`);
    assert.ok(b.sent.files < b.files.length / 2, `${b.sent.files} of ${b.files.length} sent`);
    assert.match(said(r), /files proven unchanged since MainNet\/\d{8}\/.*\.tree\/manifest\.json/);
    // The tables written since the first backup went up while the node ran, hashed as they
    // arrived, not on the host; the files that change in place (MANIFEST, journals, wal) are
    // hashed there first, once frozen.
    const ahead =
      /(\d+) of the (\d+) table files \(.*?\) are new: they go up now, while the node runs(?:, with (\d+) other new files)?/.exec(
        said(r),
      );
    assert.ok(ahead, said(r));
    assert.ok(Number(ahead[1]) > 0 && Number(ahead[1]) < Number(ahead[2]), ahead[0]);
    assert.equal(
      b.sent.ahead?.files,
      Number(ahead[1]) + Number(ahead[3] ?? 0) - Number(/; (\d+) left out/.exec(said(r))?.[1] ?? 0),
    );
    const hashing = /(\d+) files hashed in .*; (\d+) files new since the last snapshot/.exec(
      said(r),
    );
    assert.ok(hashing, said(r));
    assert.ok(Number(hashing[1]) > 0, 'files changed in place hashed on the host');
    // No sweep ran here: the lease alone keeps what the run relies on, with no wait and no check.
    assert.match(said(r), /No sweep of objects ran since 6 h 10 min before this run's lease/);
    const pointer = JSON.parse(await s3.getText(bucket, 'MainNet/MainNet.json')) as Record<
      string,
      string
    >;
    assert.match(pointer.index_url ?? '', new RegExp(`${second}/index.txt$`));
  });

  it('a backup cut part-way keeps what it stored: the next one sends only the rest', async () => {
    assert.ok(second, 'the second backup ran');
    await growDatabase(g, 16 * 1024 ** 2);
    // Each SSH connection is cut once 6 MiB have come down through it: the new tables (about
    // 3 MiB each, 40 MiB in all) share four, each cut in the middle of its files, after the first.
    const proxy = await startCutProxy({
      targetPort: sshd.port,
      perConnection: { downBytes: 6 * 1024 ** 2 },
    });
    let cut: RunResult;
    try {
      cut = await run({ ...backupInputs(), port: String(proxy.port) });
    } finally {
      await proxy.stop();
    }
    assert.notEqual(cut.code, 0, said(cut));
    // The new tables go up before the stop: the cut came then, and the node never stopped.
    assert.match(said(cut), /are new: they go up now, while the node runs/);
    assert.ok(proxy.cuts >= 1, `${proxy.cuts} connections cut`);
    assert.doesNotMatch(said(cut), /Stopping the node/);
    assert.match(said(cut), /(\d+) files stored before the failure are kept/);
    const kept = Number(/(\d+) files stored before the failure are kept/.exec(said(cut))?.[1]);
    assert.ok(kept > 0);
    assert.equal(
      (await s3.getText(bucket, 'MainNet/backup_list')).trim().split('\n').length,
      2,
      'nothing published',
    );
    // What the cut run stored, with when: an object sent again would be written anew.
    const storedBefore = await objectTimes();
    const journalKeys = await s3.listKeys(bucket, 'MainNet/partial/');
    assert.equal(journalKeys.length, 1, 'the cut run left its journal');
    const journal = JSON.parse(await s3.getText(bucket, journalKeys[0]!)) as {
      files: Array<{ path: string; sha256: string }>;
    };
    await g.waitForHeight((await g.height()) + 3);
    const r = await run(backupInputs());
    assert.equal(r.code, 0, said(r));
    assert.match(said(r), /and 1 unfinished run\(s\)/);
    third = r.outputs.key as string;
    const c = await manifestOf(third);
    const after = await objectTimes();
    const rewritten = [...storedBefore].filter(([k, t]) => after.get(k) !== t);
    assert.deepEqual(rewritten, [], 'nothing stored before was sent again');
    const added = [...after.keys()].filter((k) => !storedBefore.has(k));
    assert.equal(added.length, c.sent.files, 'the run sent only objects that were missing');
    // The cut run's journal proves its tables unchanged: they are not even hashed again.
    const journaled = new Set(
      journal.files.filter((f) => f.path.endsWith('.ldb')).map((f) => f.sha256),
    );
    const stillThere = c.files.filter((f) => journaled.has(f.sha256)).length;
    const proven = Number(/(\d+) files proven unchanged/.exec(said(r))?.[1]);
    assert.ok(stillThere > 0, 'tables the cut run stored are in the snapshot');
    assert.ok(proven >= stillThere, `${proven} proven, ${stillThere} stored by the cut run`);
    assert.deepEqual(await s3.listKeys(bucket, 'MainNet/partial/'), [], 'its journal is gone');
    // The newest tree is what the tests below restore.
    second = third;
    height = c.blockHeight;
  });

  it('S3 failing once the copy is frozen, before a file is read: the run ends, the chain runs', async () => {
    const listText = () => s3.getText(bucket, 'MainNet/backup_list').catch(() => '');
    const listBefore = await listText();
    // The cut run above may have left its own (its SSH was cut: the post step removes it).
    const stages = () =>
      readdirSync(join(g.nodeDir, '..')).filter((n) => n.startsWith('.prep-snapshot-staging-'));
    const stagesBefore = stages();
    // S3 is cut, and refused from then on, as the staging folder appears: as the node stops.
    const proxy = await startCutProxy({ targetPort: s3.port, refuseAfterCut: true });
    let r: RunResult;
    let watching = true;
    const watch = (async () => {
      while (watching && stages().length === stagesBefore.length)
        await new Promise((resolve) => setTimeout(resolve, 2));
      if (watching) proxy.cut();
    })();
    try {
      r = await run(backupInputs(), `http://127.0.0.1:${proxy.port}`);
    } finally {
      watching = false;
      await watch;
      await proxy.stop();
    }
    assert.equal(proxy.cuts, 1, 'S3 was cut as the node stopped');
    assert.notEqual(r.code, 0, said(r));
    assert.match(said(r), /The node was down for/, 'the copy was frozen before S3 failed');
    assert.doesNotMatch(said(r), /::group::Publish/);
    // The two data channels opened for the files were ended: the process ended on its own.
    assert.equal(r.timedOut, false);
    assert.equal((await g.chain()).state, 'started');
    assert.equal(await listText(), listBefore, 'nothing published');
    assert.deepEqual(stages(), stagesBefore, 'no staging folder of this run');
  });

  it('list shows both trees; verify checks sizes, and with deep every sha256', async () => {
    const listed = await run({ mode: 'list' });
    assert.equal(listed.code, 0, said(listed));
    const rows = JSON.parse(listed.outputs.snapshots as string) as Array<{ key: string }>;
    assert.ok(rows.some((r) => r.key === second) && rows.some((r) => r.key === first));
    assert.ok(rows.every((r) => (r as { format?: string }).format === 'tree'));
    const shallow = await run({ mode: 'verify', snapshot: second });
    assert.equal(shallow.code, 0, said(shallow));
    assert.match(said(shallow), /every object is stored with its size/);
    const deep = await run({ mode: 'verify', snapshot: second, deep: 'true' });
    assert.equal(deep.code, 0, said(deep));
    assert.match(said(deep), /every object read back matches its sha256/);
  });

  it('restores onto a fresh node dir, cut once and resumed: same block hash and balances', async () => {
    assert.ok(second, 'the second backup ran');
    const balances = await Promise.all(sent.slice(0, 5).map((t) => g.balance(t.to)));
    const keystore = join(root, 'keystore.json');
    copyFileSync(g.keystore, keystore);
    const node = join(root, 'host2', 'data');
    const [rpc, p2p] = [await freePort(), await freePort()];
    servers.push(node);
    const restoreInputs = {
      mode: 'restore',
      'node-kind': 'goloop',
      'data-dir': node,
      'peer-url': `http://127.0.0.1:${rpc}/admin/chain`,
      'start-command': `bash ${q(SERVER)} start ${q(goloopBin())} ${q(node)} ${q(keystore)} ${q(g.keyPassword)} ${rpc} ${p2p}`,
      'stop-command': `bash ${q(SERVER)} stop ${q(node)}`,
      'health-timeout': '120s',
      'disk-margin': '1MiB',
    };
    // What a restore of another snapshot, cut long ago, left beside the node dir: never resumed
    // by a restore of this one.
    const other = join(root, 'host2', '.prep-snapshot-restore-tree-0123456789abcdef');
    mkdirSync(join(other, g.cid, 'db'), { recursive: true });
    writeFileSync(join(other, g.cid, 'db', '000042.ldb'), Buffer.alloc(3 * 1024 * 1024, 7));
    // The host reads the files from S3 itself ('download-on' at its default), slowly; its SSH
    // connection is cut once 1 MiB has come: the run fails, its staging folder stays.
    const proxy = await startCutProxy({ targetPort: sshd.port });
    const slow = await startCutProxy({ targetPort: s3.port, bytesPerSecond: 512 * 1024 });
    try {
      const cutting = run({
        ...restoreInputs,
        port: String(proxy.port),
        endpoint: `http://127.0.0.1:${slow.port}`,
      });
      while (slow.bytes.down < 1024 * 1024) await new Promise((r) => setTimeout(r, 50));
      proxy.cut();
      const cut = await cutting;
      assert.notEqual(cut.code, 0, said(cut));
      assert.ok(proxy.cuts >= 1, 'the proxy cut');
      assert.match(said(cut), /read from S3 by the host itself/);
      assert.match(said(cut), /The SSH connection was lost while the host fetched the files/);
      assert.match(said(cut), /staging folder .* is kept/);
      assert.match(
        said(cut),
        new RegExp(
          `Removing 1 staging folder that earlier restores left and this one does not go on from ` +
            `\\(3\\.0\\d MiB\\): ${other.replace(/[.]/g, '\\.')} \\(3\\.0\\d MiB\\)\\.`,
        ),
      );
      assert.ok(said(cut).indexOf('Removing 1 staging folder') < said(cut).indexOf('Stream '));
      assert.ok(!existsSync(other), "the other snapshot's staging folder is gone");
      // The host's extraction ends on its own once it sees its input end, and removes the
      // list of files it was reading.
      const left = (): string[] =>
        readdirSync(join(root, 'host2')).filter((n) => n.startsWith('.prep-snapshot'));
      for (let i = 0; i < 100 && left().length > 1; i++)
        await new Promise((r) => setTimeout(r, 100));
      assert.equal(
        left().length,
        1,
        `this snapshot's staging folder is kept: ${left().join(', ')}`,
      );
    } finally {
      await proxy.stop();
      await slow.stop();
    }
    assert.ok(!existsSync(join(node, g.cid)), 'nothing in place yet');
    const r = await run(restoreInputs);
    assert.equal(r.code, 0, said(r));
    assert.match(said(r), /\d+ kept and \d+ continued from an earlier run/);
    assert.match(said(r), /files fetched .* read by the host from S3\)/);
    assert.doesNotMatch(
      said(r),
      /Removing \d+ staging folder/,
      'its own folder is resumed, not removed',
    );
    assert.ok(Number(r.outputs['height-reached']) >= height);
    const rpcUrl = `http://127.0.0.1:${rpc}/api/v3/icon_dex`;
    assert.equal(await blockHashAt(rpcUrl, height), await g.blockHash(height));
    const restoredBalances = await Promise.all(
      sent.slice(0, 5).map((t) => balanceAt(rpcUrl, t.to)),
    );
    assert.deepEqual(restoredBalances, balances);
    assert.deepEqual(
      readdirSync(join(root, 'host2')).filter((n) => n.startsWith('.prep-snapshot')),
      [],
      'the staging folder is gone once swapped',
    );
    restored = { node, rpc, inputs: restoreInputs };
  });

  it('a backup of the restored node finds its files stored by their sha256 and sends only what it wrote since', async () => {
    assert.ok(restored, 'the restore ran');
    const r = await run({
      mode: 'backup',
      'data-dir': restored.node,
      'peer-url': `http://127.0.0.1:${restored.rpc}/admin/chain`,
    });
    assert.equal(r.code, 0, said(r));
    const m = await manifestOf(r.outputs.key as string);
    // No snapshot of this data dir yet, and objects stored: every file is hashed on the host
    // first, and those the restore wrote are found stored.
    assert.match(said(r), /0 files proven unchanged since no earlier snapshot of this host/);
    assert.match(said(r), new RegExp(`${m.files.length} files hashed in .*; 0 files new`));
    assert.ok(m.sent.files < m.files.length / 4, `${m.sent.files} of ${m.files.length} sent`);
  });

  it('restores onto a node that holds most of the snapshot: its tables are taken from its data dir, a damaged one is fetched', async () => {
    assert.ok(restored, 'the restore ran');
    // The running node's biggest table (ballast, which goloop never reads) damaged in its middle:
    // the same path and size as the snapshot's, not the same bytes.
    const db = join(restored.node, g.cid, 'db');
    const nid = readdirSync(db).find((n) =>
      readdirSync(join(db, n)).some((f) => f.endsWith('.ldb')),
    );
    assert.ok(nid, 'a database folder');
    const [victim] = readdirSync(join(db, nid))
      .filter((f) => f.endsWith('.ldb'))
      .map((f) => ({ f, size: statSync(join(db, nid, f)).size }))
      .sort((a, b) => b.size - a.size);
    assert.ok(victim && victim.size > 1024 * 1024, 'a table of some size');
    const fd = openSync(join(db, nid, victim.f), 'r+');
    writeSync(fd, Buffer.alloc(64, 0x55), 0, 64, Math.floor(victim.size / 2));
    closeSync(fd);

    // The newest snapshot: the backup of this very node, just above.
    const r = await run({ ...restored.inputs, 'stop-node': 'true' });
    assert.equal(r.code, 0, said(r));
    const m = await manifestOf(r.outputs.key as string);
    const linked = Number(
      /(\d+) table files of the data dir are the snapshot's/.exec(said(r))?.[1],
    );
    assert.ok(linked > m.files.length / 2, `${linked} of ${m.files.length} linked`);
    assert.match(said(r), /1 linked files differ from the snapshot's: they are fetched/);
    // The disk check counted them (and any that the running node compacted away meanwhile).
    const found = Number(
      /(\d+) table files of the data dir \([^)]+\) have the snapshot's paths and sizes/.exec(
        said(r),
      )?.[1],
    );
    assert.ok(found >= linked, `${found} found at the check, ${linked} linked`);
    assert.match(said(r), new RegExp(`, ${linked - 1} taken from the data dir`));
    const fetched = Number(/(\d+) files fetched/.exec(said(r))?.[1]);
    assert.equal(fetched, m.files.length - (linked - 1), 'the rest fetched');
    const rpcUrl = `http://127.0.0.1:${restored.rpc}/api/v3/icon_dex`;
    assert.equal(await blockHashAt(rpcUrl, m.blockHeight), m.facts.blockHash);
    const fixed = statSync(join(db, nid, victim.f), { throwIfNoEntry: false });
    assert.ok(!fixed || fixed.size === victim.size);
  });

  it('refuses a tree whose manifest names a path outside the node dir, before anything changes', async () => {
    assert.ok(second, 'the second backup ran');
    const m = JSON.parse(await s3.getText(bucket, `${second}/manifest.json`)) as Manifest;
    const forged = second.replace(/\.tree$/, '').replace(/_(\d{4})$/, '_0000') + '.tree';
    const { PutObjectCommand } = await import('@aws-sdk/client-s3');
    const bad = { ...m, files: [...m.files, { ...m.files[0], path: `${g.cid}/../../evil` }] };
    await s3.client().send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: `${forged}/manifest.json`,
        Body: JSON.stringify(bad),
      }),
    );
    const r = await run({
      mode: 'restore',
      snapshot: forged,
      'data-dir': join(root, 'host3', 'data'),
      'node-kind': 'goloop',
      'peer-url': 'http://127.0.0.1:9/admin/chain',
    });
    assert.notEqual(r.code, 0);
    assert.match(errors(r), /names the path .*evil.*cannot be used/);
    assert.ok(!existsSync(join(root, 'host3')));
  });
});

async function runShell(command: string): Promise<void> {
  const { execFile } = await import('node:child_process');
  await new Promise<void>((resolve) => execFile('bash', ['-c', command], () => resolve()));
}
