/**
 * The Compose stand-ins of a host laid out as the original guide's or as icon2-node's (see
 * guide-host.ts): `docker-compose` (v1) or `docker` with its `compose` subcommand (v2), which
 * take `[-f FILE] down|up -d` in the prep dir and stop or start the node of FILE's folder, as
 * the compose file says:
 * - the guide's (the `iconloop/prep-node` image): the simulated loopchain node whose home is
 *   the folder;
 * - icon2-node's (the `iconloop/icon2-node` image): a real goloop on the node dir `./data`, with
 *   the keystore `./config/{KEY_STORE_FILENAME}` and `KEY_PASSWORD`, its API on port 9000 of
 *   every address (network_mode: host) and its P2P on 7100 of the loopback; then, as the
 *   image's entrypoint does, the chain is joined where the node dir has none (from
 *   `./config/genesis.zip`, in place of the service's genesis that the image carries) and
 *   every chain that is not started is started, in the background: `up -d` returns while
 *   they start.
 */
import { join } from 'node:path';
import { quote as q } from '../../src/shell.js';
import { repoRoot } from './paths.js';

/** Which Compose the host has: `docker-compose` (v1) or `docker compose` (v2). */
export type Compose = 'v1' | 'v2';

export const TSX = join(repoRoot, 'node_modules/.bin/tsx');
export const SIM = join(repoRoot, 'test/sim/prep-node.ts');
export const GOLOOP_SERVER = join(repoRoot, 'test/bed/goloop-server.sh');

/** What the stand-in runs: the node runtime of the simulator, and the goloop binary. */
export interface StandInTools {
  /** The Node.js that runs the simulator (through tsx). */
  node: string;
  goloop: string;
}

/**
 * icon2-node's entrypoint after goloop is up, as `bash -c` runs it with `$1` the goloop binary
 * and `$2` the compose file's folder: the chain joined where the node dir has none, then every
 * chain that is not started is started. Its output goes to the node's log.
 */
const ICON2_ENTRYPOINT = [
  'g=$1 home=$2',
  'export GOLOOP_NODE_SOCK="$home/data/cli.sock"',
  'have=',
  'for c in "$home"/data/*/config.json; do [ -f "$c" ] && have=1; done',
  'if [ -z "$have" ] && [ -f "$home/config/genesis.zip" ]; then',
  '  "$g" chain join --genesis "$home/config/genesis.zip" --channel icon_dex --seed 127.0.0.1:7100',
  'fi',
  'for cid in $(curl -fsS --unix-socket "$GOLOOP_NODE_SOCK" http://localhost/chain | grep -o \'"cid": *"0x[0-9a-f]*"\' | grep -o \'0x[0-9a-f]*\'); do',
  '  "$g" chain start "$cid" || true',
  'done',
].join('\n');

/** The shell of a Compose stand-in: `[-f FILE] down|up -d` on the node of FILE's folder. */
function composeBody(prog: string, tools: StandInTools, port: number): string {
  const sim = `${q(tools.node)} ${q(TSX)} ${q(SIM)}`;
  const server = `bash ${q(GOLOOP_SERVER)}`;
  return [
    `file=docker-compose.yml`,
    `while [ $# -gt 0 ]; do`,
    `  case "$1" in`,
    `    -f|--file) file=$2; shift 2 ;;`,
    `    *) break ;;`,
    `  esac`,
    `done`,
    `if [ ! -f "$file" ]; then`,
    `  echo "${prog}: no configuration file $file in $(pwd)" >&2`,
    `  exit 14`,
    `fi`,
    `home=$(cd "$(dirname "$file")" && pwd -P)`,
    `case "$*" in`,
    `  down|'up -d') ;;`,
    `  *) echo "${prog}: this host simulates 'down' and 'up -d' only, not: $*" >&2; exit 2 ;;`,
    `esac`,
    `if grep -q 'iconloop/icon2-node' "$file"; then`,
    // An environment entry of the compose file, as `NAME: value` or `NAME: 'value'`.
    `  env_of() { sed -n "s/^ *$1: *[\\"']\\{0,1\\}\\([^\\"']*\\)[\\"']\\{0,1\\} *$/\\1/p" "$file" | head -n 1; }`,
    `  if [ "$*" = down ]; then exec ${server} stop "$home/data"; fi`,
    `  ks=$home/config/$(env_of KEY_STORE_FILENAME)`,
    `  if [ ! -f "$ks" ]; then echo "${prog}: icon2-node: no keystore $ks" >&2; exit 1; fi`,
    `  ${server} start ${q(tools.goloop)} "$home/data" "$ks" "$(env_of KEY_PASSWORD)" 0.0.0.0:${port} 7100`,
    `  setsid nohup bash -c ${q(ICON2_ENTRYPOINT)} icon2-entrypoint ${q(tools.goloop)} "$home" </dev/null >>"$home/data.log" 2>&1 &`,
    `  exit 0`,
    `fi`,
    `case "$*" in`,
    `  down) exec ${sim} stop --home "$home" ;;`,
    `  'up -d') exec ${sim} start --home "$home" --port ${port} --rate 20 --value-bytes 4096 --data-dir "$home/data/loopchain" ;;`,
    `esac`,
  ].join('\n');
}

/** `docker-compose` (v1) or `docker` (v2: its `compose` subcommand only). */
export function standIn(
  compose: Compose,
  tools: StandInTools,
  port: number,
): { name: string; text: string } {
  if (compose === 'v1') {
    return {
      name: 'docker-compose',
      text: [
        '#!/bin/sh',
        '# Compose v1 stand-in: starts and stops the node of the compose file (simulated loopchain, or goloop).',
        'set -eu',
        composeBody('docker-compose', tools, port),
        '',
      ].join('\n'),
    };
  }
  return {
    name: 'docker',
    text: [
      '#!/bin/sh',
      '# Docker CLI stand-in with Compose v2: `docker compose` starts and stops the node of the',
      '# compose file (simulated loopchain, or goloop); there is no other subcommand.',
      'set -eu',
      'if [ "${1:-}" != compose ]; then',
      `  echo "docker: '\${1:-}' is not simulated on this host (only 'docker compose')" >&2`,
      '  exit 1',
      'fi',
      'shift',
      composeBody('docker compose', tools, port),
      '',
    ].join('\n'),
  };
}

/** The guide's compose file: the node image with host networking and ./data mounted. */
export const COMPOSE_YML = `# The P-Rep node of the guide (on this test host, the Compose stand-in runs a simulator).
version: '3'
services:
  prep:
    image: 'iconloop/prep-node:1910211829xc2286d'
    container_name: 'prep-mainnet'
    network_mode: host
    restart: 'always'
    environment:
      NETWORK_ENV: 'mainnet'
      LOG_OUTPUT_TYPE: 'file'
      CERT_PATH: '/cert'
      FASTEST_START: 'no'
    cap_add:
      - SYS_TIME
    volumes:
      - ./data:/data
      - ./cert:/cert
`;

/** The keystore's name in `./config` and its password, as an icon2-node compose file names them. */
export const ICON2_KEYSTORE = { file: 'keystore.json', password: 'gx' };

/**
 * icon2-node's compose file (its README's): the node dir `./data` mounted as /goloop/data, the
 * keystore in `./config`, host networking. FASTEST_START is off: the node does not fetch a
 * snapshot of its own.
 */
export const ICON2_COMPOSE_YML = `# An ICON 2 P-Rep node (on this test host, the Compose stand-in runs goloop itself).
version: '3'
services:
  prep:
    image: 'iconloop/icon2-node:v1.4.4'
    container_name: 'icon2-node'
    network_mode: host
    restart: 'on-failure'
    environment:
      SERVICE: 'MainNet'
      GOLOOP_LOG_LEVEL: 'info'
      KEY_STORE_FILENAME: '${ICON2_KEYSTORE.file}'
      KEY_PASSWORD: '${ICON2_KEYSTORE.password}'
      FASTEST_START: 'false'
      ROLE: 3
    cap_add:
      - SYS_TIME
    volumes:
      - ./data:/goloop/data
      - ./config:/goloop/config
      - ./logs:/goloop/logs
`;
