#!/usr/bin/env bash
# Starts or stops a goloop server on an existing node dir, the way a node operator's own start
# and stop commands would (a restore's start-command and stop-command in the tests):
#   goloop-server.sh start GOLOOP NODE_DIR KEYSTORE PASSWORD RPC P2P_PORT
#   goloop-server.sh stop NODE_DIR
# RPC is a port on 127.0.0.1, or ADDRESS:PORT (`0.0.0.0:9000`, as icon2-node listens on a host).
# The server runs detached, its PID in NODE_DIR.pid and its output in NODE_DIR.log; start
# returns once the control socket NODE_DIR/cli.sock is there, stop once the process is gone.
set -euo pipefail
cmd=$1
case "$cmd" in
start)
  goloop=$2 node=$3 keystore=$4 password=$5 rpc=$6 p2p=$7
  case "$rpc" in *:*) ;; *) rpc="127.0.0.1:$rpc" ;; esac
  if [ -f "$node.pid" ] && kill -0 "$(cat "$node.pid")" 2>/dev/null; then exit 0; fi
  mkdir -p "$node"
  setsid nohup "$goloop" server start --node_dir "$node" --node_sock "$node/cli.sock" \
    --rpc_addr "$rpc" --p2p "127.0.0.1:$p2p" --p2p_listen "127.0.0.1:$p2p" \
    --key_store "$keystore" --key_password "$password" --console_level warn \
    </dev/null >>"$node.log" 2>&1 &
  echo "$!" >"$node.pid"
  for _ in $(seq 1 600); do
    [ -S "$node/cli.sock" ] && exit 0
    kill -0 "$(cat "$node.pid")" 2>/dev/null || { echo "goloop exited:" >&2; tail -20 "$node.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "no $node/cli.sock within 60 s" >&2
  exit 1
  ;;
stop)
  node=$2
  [ -f "$node.pid" ] || exit 0
  pid=$(cat "$node.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$node.pid" "$node/cli.sock"
  ;;
*)
  echo "usage: goloop-server.sh start|stop ..." >&2
  exit 2
  ;;
esac
