import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InputError } from '../../src/errors.ts';
import { composeCommand, parseSettings } from '../../src/settings.ts';

const KEY = '-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----';
const FP = 'SHA256:' + 'A'.repeat(43);

function reader(values: Record<string, string>) {
  return (name: string) => values[name] ?? '';
}
const base = { bucket: 'snapshots', host: 'node.example', 'ssh-key': KEY, 'host-key': FP };

describe('parseSettings', () => {
  it('fills the defaults of the original scripts', () => {
    const s = parseSettings(reader(base));
    assert.equal(s.mode, 'backup');
    assert.equal(s.node.prepDir, '/app/prep');
    assert.equal(s.node.dataDir, '/app/prep/data/loopchain');
    assert.equal(s.node.stopCommand, composeCommand('/app/prep', 'down'));
    assert.equal(s.node.startCommand, composeCommand('/app/prep', 'up -d'));
    assert.equal(s.s3.prefix, 'PRep');
    assert.equal(s.s3.permanentPrefix, 'Permanent/PRep');
    assert.equal(s.backup.compression, 'gzip');
    assert.equal(s.backup.compressionLevel, 3);
    assert.equal(
      parseSettings(reader({ ...base, compression: 'zstd' })).backup.compressionLevel,
      1,
    );
    assert.equal(s.backup.consistency, 'hardlink');
    assert.equal(s.backup.retentionDays, 15);
    assert.equal(s.node.maxDowntimeSeconds, 1800);
    assert.equal(s.ssh?.port, 22);
    assert.equal(s.ssh?.username, 'root');
  });

  it('derives prefixes from the service', () => {
    const s = parseSettings(reader({ ...base, service: 'Citizen' }));
    assert.equal(s.s3.prefix, 'Citizen');
    assert.equal(s.s3.permanentPrefix, 'Permanent/Citizen');
  });

  it('uses path-style addressing with a custom endpoint', () => {
    assert.equal(
      parseSettings(reader({ ...base, endpoint: 'http://127.0.0.1:9000' })).s3.forcePathStyle,
      true,
    );
    assert.equal(parseSettings(reader(base)).s3.forcePathStyle, false);
  });

  it('needs no host for list and verify', () => {
    const s = parseSettings(reader({ bucket: 'snapshots', mode: 'list' }));
    assert.equal(s.ssh, undefined);
  });

  const bad: Array<[string, Record<string, string>, RegExp]> = [
    ['an unknown mode', { ...base, mode: 'snapshot' }, /Input 'mode' is 'snapshot'/],
    ['no bucket', { ...base, bucket: '' }, /'bucket' is required/],
    ['a bad bucket', { ...base, bucket: 'No_Such' }, /not a valid S3 bucket name/],
    ['no host', { ...base, host: '' }, /'host' is required/],
    ['an option as host', { ...base, host: '-oProxyCommand=x' }, /not a host name/],
    ['no key', { ...base, 'ssh-key': '' }, /'ssh-key' is required/],
    ['a path as key', { ...base, 'ssh-key': '~/.ssh/id_ed25519' }, /does not hold a private key/],
    ['no host key', { ...base, 'host-key': '' }, /'host-key' is required/],
    ['a bad fingerprint', { ...base, 'host-key': 'SHA256:short' }, /malformed fingerprint/],
    [
      'a loose boolean',
      { ...base, 'insecure-skip-host-key-check': 'yes' },
      /Use 'true' or 'false'/,
    ],
    ['a bad port', { ...base, port: '70000' }, /'port' is '70000'/],
    ['a negative retention', { ...base, 'retention-days': '-1' }, /'retention-days'/],
    ['a bad duration', { ...base, 'max-downtime': 'ten minutes' }, /not a duration/],
    ['a bad compression', { ...base, compression: 'xz' }, /'compression' is 'xz'/],
    ['a gzip level of 12', { ...base, 'compression-level': '12' }, /'compression-level'/],
    ['a relative data dir', { ...base, 'data-dir': 'data/loopchain' }, /absolute path/],
    ['the root as data dir', { ...base, 'data-dir': '/' }, /cannot be a node's directory/],
    ['a prefix with ..', { ...base, prefix: 'a/../b' }, /'prefix'/],
    ['a tiny part size', { ...base, 'part-size': '1MiB' }, /between 5 MiB and 5 GiB/],
    ['a bad consistency', { ...base, consistency: 'snapshot' }, /'consistency'/],
  ];
  for (const [what, values, message] of bad) {
    it(`rejects ${what}`, () => {
      assert.throws(
        () => parseSettings(reader(values)),
        (e: unknown) => e instanceof InputError && message.test(e.message),
      );
    });
  }

  it('accepts the insecure opt-out without a host key', () => {
    const s = parseSettings(
      reader({ ...base, 'host-key': '', 'insecure-skip-host-key-check': 'true' }),
    );
    assert.deepEqual(s.ssh?.hostKeys, []);
  });

  it('parses durations with units', () => {
    assert.equal(
      parseSettings(reader({ ...base, 'max-downtime': '1h30m' })).node.maxDowntimeSeconds,
      5400,
    );
    assert.equal(
      parseSettings(reader({ ...base, 'max-downtime': '90' })).node.maxDowntimeSeconds,
      90,
    );
  });
});
