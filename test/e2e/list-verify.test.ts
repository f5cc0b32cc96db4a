/**
 * mode list and mode verify, end to end (no host needed), and the same check after a backup
 * (`verify: true`); both from a public bucket without credentials (`s3-unsigned: true`).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { PutBucketPolicyCommand } from '@aws-sdk/client-s3';
import { errors, getBytes, putBytes, runMain, said } from './restore-kit.js';
import { startWorld, type World } from './world.js';

interface Row {
  key: string;
  entry: string;
  blockHeight: number;
  size: number;
  listed: boolean;
  manifest: boolean;
  sha256?: string;
  permanent: boolean;
}

describe('list and verify', () => {
  let world: World;
  const ours: Array<{ key: string; sha256: string; height: number; size: number }> = [];
  let archive: Buffer;
  let manifest: Record<string, unknown>;
  before(async () => {
    world = await startWorld({ blocks: 600 });
    for (let i = 0; i < 2; i++) {
      // The first one runs the verify after its upload.
      const run = await runMain(world, world.inputs(i === 0 ? { verify: 'true' } : {}));
      assert.equal(run.code, 0, said(run));
      if (i === 0) assert.match(run.stdout, /: whole\. \d+ files, /);
      ours.push({
        key: run.outputs.key as string,
        sha256: run.outputs.sha256 as string,
        height: Number(run.outputs['block-height']),
        size: Number(run.outputs.size),
      });
    }
    archive = await getBytes(world, ours[1]!.key);
    manifest = JSON.parse(
      await world.s3.getText(world.bucket, `_prep-snapshot/${ours[1]!.key}.json`),
    ) as Record<string, unknown>;
  });
  after(() => world?.close());

  const listOrVerify = (mode: 'list' | 'verify', extra: Record<string, string> = {}) =>
    runMain(world, { mode, bucket: world.bucket, endpoint: world.s3.endpoint, ...extra });

  /** Stores a copy of the latest archive under another name of the same day; `meta` as its manifest. */
  async function storeVariant(
    tag: string,
    body: Buffer,
    meta?: Record<string, unknown>,
  ): Promise<string> {
    const m = /^PRep\/(\d{8})\//.exec(ours[1]!.key)!;
    const variant = `PRep/${m[1]}/PRep_BH${tag}_data-${m[1]}_0001.tar.gz`;
    await putBytes(world, variant, body);
    if (meta) {
      await putBytes(
        world,
        `_prep-snapshot/${variant}.json`,
        JSON.stringify({ ...meta, key: variant, entry: variant.slice(5) }),
      );
    }
    return variant;
  }

  it('lists the snapshots newest first, as JSON and as a summary table', async () => {
    const run = await listOrVerify('list');
    assert.equal(run.code, 0, said(run));
    const rows = JSON.parse(run.outputs.snapshots ?? '[]') as Row[];
    const mine = rows.filter((r) => ours.some((o) => o.key === r.key));
    assert.deepEqual(
      mine.map((r) => r.key),
      [ours[1]!.key, ours[0]!.key],
      'newest first',
    );
    for (const [i, r] of mine.entries()) {
      const o = ours[1 - i]!;
      assert.equal(r.blockHeight, o.height);
      assert.equal(r.size, o.size);
      assert.equal(r.manifest, true);
      assert.equal(r.sha256, o.sha256);
      assert.equal(r.listed, true);
    }
    // The permanent copy is of the day's first snapshot.
    assert.equal(mine[1]!.permanent, true);
    assert.equal(mine[0]!.permanent, false);
    assert.match(run.summary, /<table>/);
    assert.match(run.summary, /Block height/);
    assert.ok(run.summary.includes(ours[0]!.key));
    assert.ok(run.summary.includes(String(ours[1]!.height)));
  });

  it('verifies a good snapshot (the latest by default)', async () => {
    const run = await listOrVerify('verify');
    assert.equal(run.code, 0, said(run));
    assert.equal(run.outputs.key, ours[1]!.key);
    assert.equal(run.outputs.sha256, ours[1]!.sha256);
    assert.equal(run.outputs.size, String(ours[1]!.size));
    assert.equal(run.outputs.files, String(manifest.files));
    // The files' bytes; the manifest's uncompressedBytes is the tar stream's (headers and padding too).
    const content = Number(run.outputs['uncompressed-size']);
    assert.ok(
      content > 0 && content <= Number(manifest.uncompressedBytes),
      `${content} vs ${String(manifest.uncompressedBytes)}`,
    );
    assert.match(run.summary, /matches the manifest/);
  });

  it('fails clearly on a corrupted snapshot: sha256 mismatch', async () => {
    const bad = Buffer.from(archive);
    for (let i = Math.floor(bad.length / 2); i < Math.floor(bad.length / 2) + 64; i++)
      bad[i] = bad[i]! ^ 0xff;
    const variant = await storeVariant('88', bad, manifest);
    const run = await listOrVerify('verify', { snapshot: variant });
    assert.notEqual(run.code, 0);
    assert.match(
      errors(run),
      /sha256 [0-9a-f]{64} differs from the manifest's [0-9a-f]{64}: the stored archive is damaged/,
    );
  });

  it('fails clearly on a truncated snapshot without a manifest', async () => {
    const variant = await storeVariant('89', archive.subarray(0, Math.floor(archive.length * 0.6)));
    const run = await listOrVerify('verify', { snapshot: variant });
    assert.notEqual(run.code, 0);
    assert.ok(
      run.annotations.some((a) => a.level === 'warning' && /has no manifest/.test(a.message)),
    );
    assert.match(errors(run), /is not whole: .*Do not restore from it/);
  });

  it('lists and verifies a public bucket without credentials (s3-unsigned)', async () => {
    const bucket = 'public-snaps';
    await world.s3.createBucket(bucket);
    const policy = {
      Version: '2012-10-17',
      Statement: [
        {
          Effect: 'Allow',
          Principal: { AWS: ['*'] },
          Action: ['s3:GetBucketLocation', 's3:ListBucket'],
          Resource: [`arn:aws:s3:::${bucket}`],
        },
        {
          Effect: 'Allow',
          Principal: { AWS: ['*'] },
          Action: ['s3:GetObject'],
          Resource: [`arn:aws:s3:::${bucket}/*`],
        },
      ],
    };
    await world.s3
      .client()
      .send(new PutBucketPolicyCommand({ Bucket: bucket, Policy: JSON.stringify(policy) }));
    const { key } = ours[1]!;
    const put = async (k: string, body: Buffer | string) =>
      world.s3.client().send(
        new (await import('@aws-sdk/client-s3')).PutObjectCommand({
          Bucket: bucket,
          Key: k,
          Body: body,
        }),
      );
    await put(key, archive);
    await put(`_prep-snapshot/${key}.json`, JSON.stringify(manifest));
    await put('PRep/backup_list', `${key.slice(5)}\n`);

    // No AWS variable at all in the step's environment (the bed strips AWS_* from its own).
    const env = { env: {} };
    const signed = await runMain(world, { mode: 'list', bucket, endpoint: world.s3.endpoint }, env);
    assert.notEqual(signed.code, 0, 'without s3-unsigned, no credentials: it fails');
    assert.match(errors(signed), /credentials/i);

    const list = await runMain(
      world,
      { mode: 'list', bucket, endpoint: world.s3.endpoint, 's3-unsigned': 'true' },
      env,
    );
    assert.equal(list.code, 0, said(list));
    const rows = JSON.parse(list.outputs.snapshots ?? '[]') as Row[];
    assert.deepEqual(
      rows.map((r) => [r.key, r.manifest]),
      [[key, true]],
    );
    const verify = await runMain(
      world,
      { mode: 'verify', bucket, endpoint: world.s3.endpoint, 's3-unsigned': 'true' },
      env,
    );
    assert.equal(verify.code, 0, said(verify));
    assert.equal(verify.outputs.sha256, ours[1]!.sha256);

    // And the bucket really is closed to writes without credentials: an unsigned PUT is refused.
    const res = await fetch(`${world.s3.endpoint}/${bucket}/probe`, { method: 'PUT', body: 'x' });
    assert.equal(res.status, 403);
  });
});
