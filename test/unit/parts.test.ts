/** The upload's part plan, made before the node stops: it fits S3's 10,000 parts and the runner's memory. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InputError } from '../../src/errors.ts';
import { MAX_UPLOAD_BUFFER_BYTES } from '../../src/settings.ts';
import { MAX_PARTS, planParts } from '../../src/s3/upload.ts';

const MiB = 1024 ** 2;
const GiB = 1024 ** 3;

describe('the part plan', () => {
  it('refuses an explicit part size that cannot hold the archive in 10,000 parts', () => {
    assert.throws(
      () => planParts(60 * GiB, { partSize: 5 * MiB, queueSize: 4 }, MAX_UPLOAD_BUFFER_BYTES),
      (e: unknown) =>
        e instanceof InputError &&
        /'part-size' \(5\.00 MiB\) allows an archive of at most .* this one may reach 60\.0 GiB/.test(
          e.message,
        ),
    );
    const ok = planParts(40 * GiB, { partSize: 5 * MiB, queueSize: 4 }, MAX_UPLOAD_BUFFER_BYTES);
    assert.equal(ok.partSize * MAX_PARTS >= 40 * GiB, true);
  });

  it('chooses parts for a database of 1.2 TB that fit, with the runner under its bound', () => {
    const plan = planParts(1.2e12, { queueSize: 4 }, MAX_UPLOAD_BUFFER_BYTES);
    assert.ok(plan.partSize * MAX_PARTS >= 1.2e12);
    assert.ok((plan.queueSize + 1) * plan.partSize <= MAX_UPLOAD_BUFFER_BYTES);
    assert.equal(plan.queueSize, 4);
  });

  it('lowers the parts in flight where large parts would pass the memory bound', () => {
    const plan = planParts(4e12, { queueSize: 16 }, MAX_UPLOAD_BUFFER_BYTES);
    assert.ok(plan.queueSize < 16 && plan.queueSize >= 1, String(plan.queueSize));
    assert.ok((plan.queueSize + 1) * plan.partSize <= MAX_UPLOAD_BUFFER_BYTES);
  });

  it('refuses what no plan can carry within the bound', () => {
    assert.throws(
      () => planParts(20e12, { queueSize: 4 }, MAX_UPLOAD_BUFFER_BYTES),
      /two of them exceed the 2\.00 GiB of part buffers/,
    );
  });
});
