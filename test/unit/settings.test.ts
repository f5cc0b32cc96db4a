import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InputError } from '../../src/errors.ts';
import { MAX_DURATION_SECONDS } from '../../src/input-values.ts';
import {
  composeCommand,
  MAX_UPLOAD_BUFFER_BYTES,
  parseSettings,
  uploadBufferBytes,
} from '../../src/settings.ts';

const KEY = '-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----';
const FP = 'SHA256:' + 'A'.repeat(43);

function reader(values: Record<string, string>) {
  return (name: string) => values[name] ?? '';
}
const base = { bucket: 'snapshots', host: 'node.example', 'ssh-key': KEY, 'host-key': FP };
const HUGE = '9'.repeat(400);
// An ed25519 public key (type and base64), as known_hosts holds it.
const HOST_KEY = 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ';

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
    assert.equal(s.s3.downloadConnections, 8);
    assert.equal(s.restore.downloadOn, 'auto');
    assert.equal(s.s3.filesInFlight, 16);
    assert.equal(s.ssh?.connections, 4);
    assert.equal(s.s3.bytesInFlight, 48 * 1024 ** 2);
    assert.equal(
      parseSettings(reader({ ...base, 'download-connections': '1' })).s3.downloadConnections,
      1,
    );
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
    ['a prefix with a . segment', { ...base, prefix: 'a/./b' }, /'prefix'/],
    ['a tiny part size', { ...base, 'part-size': '1MiB' }, /between 5 MiB and 5 GiB/],
    ['a bad consistency', { ...base, consistency: 'snapshot' }, /'consistency'/],
    [
      'a bad download-on',
      { ...base, 'download-on': 'both' },
      /'download-on' is 'both'\. Use 'auto'/,
    ],
    // Numbers too large to be exact (they would reach the host as 'Infinity').
    ['a 400-digit port', { ...base, port: HUGE }, /'port' is '9+'\. Use a whole number/],
    [
      'a 400-digit upload concurrency',
      { ...base, 'upload-concurrency': HUGE },
      /'upload-concurrency'/,
    ],
    ['a 400-digit retention', { ...base, 'retention-days': HUGE }, /'retention-days'/],
    [
      'no download connection',
      { ...base, 'download-connections': '0' },
      /'download-connections' is '0'\. Use a whole number from 1 to 16/,
    ],
    ['a fraction of a connection', { ...base, 'download-connections': '2.5' }, /from 1 to 16/],
    [
      'no SSH connection',
      { ...base, 'ssh-connections': '0' },
      /'ssh-connections' is '0'\. Use a whole number from 1 to 16/,
    ],
    ['a 400-digit local copy age', { ...base, 'local-copy-days': HUGE }, /'local-copy-days'/],
    [
      'a 400-digit compression level',
      { ...base, 'compression-level': HUGE },
      /'compression-level'/,
    ],
    ['a 400-digit max-downtime', { ...base, 'max-downtime': HUGE }, /'max-downtime' .*too long/],
    [
      'a 400-digit max-downtime in minutes',
      { ...base, 'max-downtime': `${HUGE}m` },
      /'max-downtime' .*too long/,
    ],
    [
      'a 400-digit health-timeout',
      { ...base, mode: 'restore', 'health-timeout': `${HUGE}s` },
      /'health-timeout' .*too long/,
    ],
    ['a 400-digit part size', { ...base, 'part-size': `${HUGE}MiB` }, /'part-size' .*too large/],
    ['a 400-digit disk margin', { ...base, 'disk-margin': HUGE }, /'disk-margin' .*too large/],
    ['a 400-digit block height', { ...base, snapshot: `BH${HUGE}` }, /'snapshot' .*too large/],
    // Durations within bounds.
    [
      'a max-downtime over 5 days',
      { ...base, 'max-downtime': '6d' },
      /'max-downtime' is '6d'\. Use a duration from 10s to 5d/,
    ],
    [
      'a health-timeout over 5 days',
      { ...base, 'health-timeout': '120h1s' },
      /'health-timeout' is '120h1s'\. Use a duration from 1s to 5d/,
    ],
    ['a max-downtime under 10 s', { ...base, 'max-downtime': '9s' }, /from 10s to 5d/],
    [
      'a fraction of a second',
      { ...base, 'max-downtime': '10.5s' },
      /not a whole number of seconds/,
    ],
    [
      'a disk margin over 5 TiB',
      { ...base, 'disk-margin': '6TiB' },
      /'disk-margin' is '6TiB'.*5TiB/,
    ],
    // Directories as written, segment by segment.
    [
      'a . segment in data-dir',
      { ...base, 'data-dir': '/app/prep/./data' },
      /'data-dir' is .*'\.'/,
    ],
    ['a // in data-dir', { ...base, 'data-dir': '/app//prep/data' }, /'data-dir' is .*'\/\/'/],
    ['a leading // in prep-dir', { ...base, 'prep-dir': '//app/prep' }, /'prep-dir'/],
    ['a . segment in prep-dir', { ...base, 'prep-dir': '/app/.' }, /'prep-dir'/],
    ['a .. segment in prep-dir', { ...base, 'prep-dir': '/app/../etc' }, /'prep-dir'/],
    // Key prefixes that overlap.
    [
      'a prefix equal to permanent-prefix',
      { ...base, prefix: 'Snap', 'permanent-prefix': 'Snap' },
      /'prefix' \('Snap'\) and 'permanent-prefix' \('Snap'\) are the same/,
    ],
    [
      'permanent-prefix inside prefix',
      { ...base, prefix: 'PRep', 'permanent-prefix': 'PRep/Permanent' },
      /'prefix' \('PRep'\) and 'permanent-prefix' \('PRep\/Permanent'\) overlap/,
    ],
    [
      'prefix inside permanent-prefix',
      { ...base, prefix: 'Permanent/PRep/daily' },
      /'prefix' \('Permanent\/PRep\/daily'\) and 'permanent-prefix' \('Permanent\/PRep'\) overlap/,
    ],
    [
      'prefix inside manifest-prefix',
      { ...base, prefix: '_prep-snapshot/PRep' },
      /'prefix' .* and 'manifest-prefix' .* overlap/,
    ],
    [
      'manifest-prefix inside prefix',
      { ...base, 'manifest-prefix': 'PRep/manifests' },
      /'prefix' \('PRep'\) and 'manifest-prefix' \('PRep\/manifests'\) overlap/,
    ],
    [
      'manifest-prefix equal to permanent-prefix',
      { ...base, 'manifest-prefix': 'Permanent/PRep' },
      /'permanent-prefix' .* and 'manifest-prefix' .* are the same/,
    ],
    // Runner memory of the upload.
    [
      'part buffers over the bound',
      { ...base, 'part-size': '1GiB' },
      /'part-size' \(1GiB\) and 'upload-concurrency' \(4\) would hold 5 part buffers of 1GiB \(5\.0 GiB\).*2 GiB allowed.*at most 409MiB/,
    ],
    [
      'the largest part size and upload concurrency',
      { ...base, 'part-size': '5GiB', 'upload-concurrency': '16' },
      /'part-size' \(5GiB\) and 'upload-concurrency' \(16\)/,
    ],
    [
      'the largest part size even one at a time',
      { ...base, 'part-size': '5GiB', 'upload-concurrency': '1' },
      /'part-size' \(5GiB\) and 'upload-concurrency' \(1\)/,
    ],
    // Host key pins that are not pins of this host.
    [
      'a @revoked host key line',
      { ...base, 'host-key': `@revoked node.example ${HOST_KEY}` },
      /'@revoked' line/,
    ],
    [
      'a @cert-authority host key line',
      { ...base, 'host-key': `@cert-authority *.example ${HOST_KEY}` },
      /'@cert-authority' line/,
    ],
    [
      'a known_hosts line of another host',
      { ...base, 'host-key': `other.example ${HOST_KEY}` },
      /names 'other\.example', not 'node\.example'/,
    ],
    [
      'a known_hosts line of port 22 for another port',
      { ...base, port: '2222', 'host-key': `node.example ${HOST_KEY}` },
      /names 'node\.example', not '\[node\.example\]:2222'/,
    ],
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

  it('accepts known_hosts lines of the host, with its port, and bare keys', () => {
    for (const [port, line] of [
      ['', `node.example ${HOST_KEY}`],
      ['2222', `[node.example]:2222 ${HOST_KEY}`],
      ['2222', `*.example,[node.example]:2222,!other.example ${HOST_KEY}`],
      ['2222', HOST_KEY],
    ]) {
      const s = parseSettings(reader({ ...base, port: port!, 'host-key': line! }));
      assert.equal(s.ssh?.hostKeys.length, 1, line);
    }
  });

  it('accepts directories with a trailing slash, and prefixes that only share a start', () => {
    const s = parseSettings(
      reader({ ...base, 'prep-dir': '/app/prep/', 'data-dir': '/data/icon.chain/' }),
    );
    assert.equal(s.node.prepDir, '/app/prep');
    assert.equal(s.node.dataDir, '/data/icon.chain');
    const p = parseSettings(
      reader({ ...base, prefix: 'PRep', 'permanent-prefix': 'PRep2', 'manifest-prefix': 'PRep-m' }),
    );
    assert.deepEqual(
      [p.s3.prefix, p.s3.permanentPrefix, p.s3.manifestPrefix],
      ['PRep', 'PRep2', 'PRep-m'],
    );
  });

  it('accepts part buffers up to the bound, and exports it', () => {
    assert.equal(MAX_UPLOAD_BUFFER_BYTES, 2 * 1024 ** 3);
    const s = parseSettings(reader({ ...base, 'part-size': '512MiB', 'upload-concurrency': '3' }));
    assert.equal(s.s3.partSize, 512 * 1024 ** 2);
    assert.equal(uploadBufferBytes(s.s3.partSize!, s.s3.queueSize), MAX_UPLOAD_BUFFER_BYTES);
    assert.equal(parseSettings(reader({ ...base, 'part-size': '409MiB' })).s3.queueSize, 4);
  });

  it('accepts durations up to 5 days', () => {
    assert.equal(MAX_DURATION_SECONDS, 5 * 86_400);
    const s = parseSettings(reader({ ...base, 'max-downtime': '5d', 'health-timeout': '120h' }));
    assert.equal(s.node.maxDowntimeSeconds, 5 * 86_400);
    assert.equal(s.restore.healthTimeoutSeconds, 5 * 86_400);
    assert.equal(
      parseSettings(reader({ ...base, 'max-downtime': '1.1h' })).node.maxDowntimeSeconds,
      3960,
    );
    assert.equal(
      parseSettings(reader({ ...base, 'disk-margin': '5TiB' })).restore.diskMarginBytes,
      5 * 1024 ** 4,
    );
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
