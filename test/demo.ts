/**
 * The local demo: a simulated P-Rep node, a real sshd and a real MinIO on loopback; the
 * packaged action takes a backup the way a scheduled workflow would, then lists what is
 * stored. Everything it starts is stopped at the end.
 */
import { runAction } from './bed/runner.js';
import { startWorld } from './e2e/world.js';

function show(title: string, text: string): void {
  process.stdout.write(`\n===== ${title} =====\n${text.trim()}\n`);
}

const world = await startWorld({ blocks: 1500 });
try {
  show(
    'The test bed',
    [
      `sshd      127.0.0.1:${world.sshd.port}  host key ${world.sshd.hostKeyFingerprint}`,
      `S3        ${world.s3.endpoint}  bucket '${world.bucket}'`,
      `P-Rep     ${world.node.home}  peer API ${world.node.peerUrl}`,
    ].join('\n'),
  );
  const backup = await runAction({
    step: 'main',
    inputs: world.inputs(),
    env: world.env(),
    timeoutMs: 600_000,
  });
  show('mode: backup (Actions log)', backup.stdout);
  if (backup.code !== 0) throw new Error(`the backup failed:\n${backup.stderr}`);
  show('Job summary (markdown/HTML as GitHub shows it)', backup.summary);
  show('Outputs', JSON.stringify(backup.outputs, null, 2));

  const list = await runAction({
    step: 'main',
    inputs: { mode: 'list', bucket: world.bucket, endpoint: world.s3.endpoint },
    env: world.env(),
  });
  if (list.code !== 0) throw new Error(`the listing failed:\n${list.stdout}\n${list.stderr}`);
  show('mode: list', list.stdout);
  show('What is stored in the bucket', (await world.keys()).join('\n'));
  show('PRep/backup_list', (await world.backupList()).join('\n'));
  const status = await world.node.status();
  show('The node afterwards', JSON.stringify(status));
} finally {
  await world.close();
}
