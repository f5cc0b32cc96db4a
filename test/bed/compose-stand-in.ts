/**
 * The Compose stand-ins of a host laid out as the original guide's (see guide-host.ts):
 * `docker-compose` (v1) or `docker` with its `compose` subcommand (v2), which take
 * `[-f FILE] down|up -d` in the prep dir and stop or start the simulated loopchain node
 * whose home is FILE's folder; and the guide's compose file they read.
 */
import { join } from 'node:path';
import { quote as q } from '../../src/shell.js';
import { repoRoot } from './paths.js';

/** Which Compose the host has: `docker-compose` (v1) or `docker compose` (v2). */
export type Compose = 'v1' | 'v2';

export const TSX = join(repoRoot, 'node_modules/.bin/tsx');
export const SIM = join(repoRoot, 'test/sim/prep-node.ts');

/** The shell of a Compose stand-in: `[-f FILE] down|up -d` on the node whose home is FILE's folder. */
function composeBody(prog: string, node: string, port: number): string {
  const sim = `${q(node)} ${q(TSX)} ${q(SIM)}`;
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
    `  down) exec ${sim} stop --home "$home" ;;`,
    `  'up -d') exec ${sim} start --home "$home" --port ${port} --rate 20 --value-bytes 4096 --data-dir "$home/data/loopchain" ;;`,
    `  *) echo "${prog}: this host simulates 'down' and 'up -d' only, not: $*" >&2; exit 2 ;;`,
    `esac`,
  ].join('\n');
}

/** `docker-compose` (v1) or `docker` (v2: its `compose` subcommand only). */
export function standIn(
  compose: Compose,
  node: string,
  port: number,
): { name: string; text: string } {
  if (compose === 'v1') {
    return {
      name: 'docker-compose',
      text: [
        '#!/bin/sh',
        '# Compose v1 stand-in: starts and stops the simulated loopchain node of the compose file.',
        'set -eu',
        composeBody('docker-compose', node, port),
        '',
      ].join('\n'),
    };
  }
  return {
    name: 'docker',
    text: [
      '#!/bin/sh',
      '# Docker CLI stand-in with Compose v2: `docker compose` starts and stops the simulated',
      '# loopchain node of the compose file; there is no other subcommand.',
      'set -eu',
      'if [ "${1:-}" != compose ]; then',
      `  echo "docker: '\${1:-}' is not simulated on this host (only 'docker compose')" >&2`,
      '  exit 1',
      'fi',
      'shift',
      composeBody('docker compose', node, port),
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
