/**
 * The network of a host laid out as the original guide's (see guide-host.ts): a network
 * namespace `prep-guide-N` with `lo` and `eth0`, one end of a veth pair whose other end `pgN`
 * stays in the machine's namespace, on the /30 number N of 10.213.0.0/16. The host's default
 * route points at the machine's end, which forwards nothing, so nothing leaves the pair; IPv6
 * is off on both ends.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { run } from './proc.js';

/** The names of the hosts' network namespaces (the number after it reserves a /30). */
export const NETNS_PREFIX = 'prep-guide-';

export function ipCmd(...args: string[]): Promise<{ stdout: string; stderr: string }> {
  return run('ip', args);
}

export function ipSync(...args: string[]): void {
  try {
    execFileSync('ip', args, { stdio: 'ignore' });
  } catch {
    /* already gone */
  }
}

/** The /30 number `n` of 10.213.0.0/16: network, the machine's end, the host's end. */
function subnet(n: number): { net: string; peer: string; host: string } {
  const a = `10.213.${n >> 6}`;
  const base = (n & 63) * 4;
  return { net: `${a}.${base}`, peer: `${a}.${base + 1}`, host: `${a}.${base + 2}` };
}

/** Sets a sysctl file if it exists; false when it could not be set. */
function writeSysctl(path: string, value: string): boolean {
  try {
    if (existsSync(path)) writeFileSync(path, `${value}\n`);
    return true;
  } catch {
    return false;
  }
}

/** Forwarding off for what arrives on the machine's end: the host reaches nothing beyond it. */
function noForwarding(veth: string): void {
  const path = `/proc/sys/net/ipv4/conf/${veth}/forwarding`;
  writeSysctl(path, '0');
  if (readFileSync(path, 'utf8').trim() !== '0')
    throw new Error(`could not turn forwarding off on ${veth}: the host could reach the network`);
}

export async function makeNetwork(): Promise<{
  netns: string;
  veth: string;
  ip: string;
  peerIp: string;
}> {
  for (let attempt = 0; attempt < 40; attempt++) {
    const n = Math.floor(Math.random() * 16384);
    const netns = `${NETNS_PREFIX}${n}`;
    const veth = `pg${n}`;
    const inner = `pg${n}h`;
    const { net, peer, host } = subnet(n);
    // The /30 must be unused on the machine.
    const used = (await ipCmd('-4', '-o', 'addr', 'show', 'to', `${net}/30`)).stdout.trim();
    if (used) continue;
    // `ip netns add` fails when the name exists: the name reserves n.
    const reserved = await ipCmd('netns', 'add', netns).then(
      () => true,
      () => false,
    );
    if (!reserved) continue;
    try {
      await ipCmd('link', 'add', veth, 'type', 'veth', 'peer', 'name', inner);
    } catch {
      await ipCmd('netns', 'del', netns).catch(() => undefined);
      continue;
    }
    try {
      writeSysctl(`/proc/sys/net/ipv6/conf/${veth}/disable_ipv6`, '1');
      noForwarding(veth);
      await ipCmd('link', 'set', inner, 'netns', netns);
      await ipCmd('addr', 'add', `${peer}/30`, 'dev', veth);
      await ipCmd('link', 'set', veth, 'up');
      await run('ip', [
        'netns',
        'exec',
        netns,
        'sh',
        '-c',
        [
          'set -e',
          `ip link set ${inner} name eth0`,
          `[ ! -e /proc/sys/net/ipv6/conf/eth0/disable_ipv6 ] || echo 1 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6`,
          `ip addr add ${host}/30 dev eth0`,
          'ip link set lo up',
          'ip link set eth0 up',
          `ip route add default via ${peer} dev eth0`,
        ].join('\n'),
      ]);
      return { netns, veth, ip: host, peerIp: peer };
    } catch (err) {
      await ipCmd('link', 'del', veth).catch(() => undefined);
      await ipCmd('netns', 'del', netns).catch(() => undefined);
      throw err;
    }
  }
  throw new Error('no free /30 of 10.213.0.0/16 for a guide host');
}
