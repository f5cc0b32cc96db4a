/**
 * The two data channels of a tree backup, opened while the node stops: whatever the run
 * reaches, both are ended, so that no ssh is left waiting on its input (it would keep the
 * action's process from ending). The channels here stand in for `ssh` as the host's commands
 * behave: one exits when its input ends, with or without its go line.
 */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { readableSource } from '../../src/byte-source.ts';
import { GO_LINE } from '../../src/shell.ts';
import type { RemoteStream } from '../../src/ssh/session.ts';
import { closeTreeChannels, readTails } from '../../src/tree/send.ts';

/** A channel whose command reads its input to the end, then answers `reply` and exits. */
function channel(reply: Buffer = Buffer.alloc(0)): { remote: RemoteStream; input: () => string } {
  const stdin = new PassThrough();
  const stdout = new PassThrough();
  let input = '';
  stdin.on('data', (d: Buffer) => (input += d.toString('latin1')));
  const exit = new Promise<number | null>((resolve) =>
    stdin.on('end', () => {
      stdout.end(input.startsWith(GO_LINE) ? reply : undefined);
      resolve(0);
    }),
  );
  const remote: RemoteStream = {
    stdin,
    stdout,
    source: readableSource(stdout),
    exit,
    onStderrLine: () => undefined,
    stderrTail: () => '',
    kill: () => stdin.destroy(),
    transport: 'openssh',
  };
  return { remote, input: () => input };
}

describe('a tree backup’s data channels', () => {
  it('closed without being used (a failure before the proofs): both see their input end, with no go line', async () => {
    const tails = channel();
    const send = channel();
    await closeTreeChannels({ tails: tails.remote, send: Promise.resolve(send.remote) });
    assert.equal(await tails.remote.exit, 0);
    assert.equal(await send.remote.exit, 0);
    assert.equal(tails.input(), '', 'nothing reached the tails command');
    assert.equal(send.input(), '', 'nothing reached the send command');
  });

  it('closed once used: the one that read the tails is left as it ended, the other is ended', async () => {
    const tail = Buffer.from('the end of a file');
    const tails = channel(tail);
    const send = channel();
    const read = await readTails(tails.remote, [{ hostPath: 'db/000001.ldb', size: tail.length }]);
    assert.equal(read.size, 1);
    assert.equal(tails.input(), `${GO_LINE}db/000001.ldb\0`);
    await closeTreeChannels({ tails: tails.remote, send: Promise.resolve(send.remote) });
    assert.equal(await send.remote.exit, 0);
    assert.equal(send.input(), '');
  });

  it('a send channel that never connected is passed over', async () => {
    const tails = channel();
    await closeTreeChannels({
      tails: tails.remote,
      send: Promise.reject(new Error('no socket for the data channel')),
    });
    assert.equal(await tails.remote.exit, 0);
  });
});
