#!/usr/bin/env bash
# scripts/cluster.sh — a local Locus cluster on one machine, for trying cluster mode and for
# tests: a 3-node RabbitMQ 3.10 cluster (MQTT plugin for devices, HTTP auth backend asking
# locusd, consistent-hash exchange; nodes from scripts/rabbitmq-node.sh), an InfluxDB 1.x
# (ours, or yours), and N locusd workers in RabbitMQ mode sharing one token secret.
# Everything lives in one temp dir (CLUSTER_DIR) on free loopback ports; nothing touches a
# system RabbitMQ, InfluxDB or port 1883/4369/5672/8086.
#
# Needs: rabbitmq-server, influxdb (unless INFLUX_URL), curl, python3 (free ports), and a
# built locusd (cargo build -p locus-broker [--release]). See rabbitmq-node.sh for installs.
#
# Usage
#   scripts/cluster.sh start [WORKERS]          (WORKERS default 2; 0 = brokers and InfluxDB only)
#       env: LOCUSD (default target/release/locusd if present, else target/debug/locusd),
#            INFLUX_URL + INFLUX_DB (an existing InfluxDB 1.x; default: start our own influxd
#            and create database "locus"; with INFLUX_URL the database is created if missing),
#            PARTITIONS (default 8), CLUSTER_AUTH_URL (the nodes' HTTP auth backend base URL;
#            default http://127.0.0.1:<worker 1's HTTP port>/rabbitmq/auth),
#            CLUSTER_WORKER_TOML (TOML appended to every worker's config; start it with a
#            [section] header), CLUSTER_WORKER_TIMEOUT (s to wait for a worker's /healthz,
#            default 60), CLUSTER_KEEP=1 (keep the dir after a failed start, for a look),
#            CLUSTER_TMP (parent dir), RMQ_WORKER_USER / RMQ_WORKER_PASS (the workers' AMQP
#            user; default locus-worker and a random password), RMQ_START_TIMEOUT etc. as in
#            rabbitmq-node.sh.
#       Prints eval-able lines (also written to CLUSTER_DIR/env), e.g.
#           CLUSTER_DIR='/tmp/locus-cluster.AbC123'
#           RMQ_NODES='locus-test-1-x@localhost locus-test-1-y@localhost locus-test-1-z@localhost'
#           RMQ_DIRS='...'   RMQ_MQTT_PORTS='40001 40002 40003'   RMQ_AMQP_PORTS='...'
#           RMQ_AMQP_URLS='amqp://locus-worker:PASS@127.0.0.1:40011/%2f ...'
#           RMQ_WORKER_USER='locus-worker'   RMQ_WORKER_PASS='...'   RMQ_AUTH_URL='...'
#           INFLUX_URL='http://127.0.0.1:40100'   INFLUX_DB='locus'
#           WORKER_HTTP='127.0.0.1:40200 127.0.0.1:40201'   WORKER_PIDS='1234 1240'
#           ADMIN_TOKEN='...'   (valid at every worker: they share one token.key)
#       Exit 0 only when the 3 nodes run as one cluster and every worker answers
#       GET /healthz; on failure it prints what failed (a worker's log tail) and stops
#       everything it started (unless CLUSTER_KEEP=1).
#   scripts/cluster.sh stop [CLUSTER_DIR]      (default: $CLUSTER_DIR)
#       Workers (TERM, KILL after 10 s), the nodes (graceful, in parallel), our influxd,
#       the shared epmd; removes CLUSTER_DIR (only a dir made by this script). Safe twice.
#   scripts/cluster.sh status CLUSTER_DIR
#   scripts/cluster.sh kill-worker CLUSTER_DIR I      kill -9 of worker I (1-based)
#   scripts/cluster.sh start-worker CLUSTER_DIR I     (re)start worker I, same config and data
#   scripts/cluster.sh kill-node CLUSTER_DIR I        kill -9 of RabbitMQ node I (1..3)
#   scripts/cluster.sh restart-node CLUSTER_DIR I     bring node I back; it rejoins by itself
#   scripts/cluster.sh ctl CLUSTER_DIR I rabbitmqctl-args...   e.g. ctl "$CLUSTER_DIR" 1 list_queues
#
# Example
#   eval "$(scripts/cluster.sh start 2)"
#   curl -s -H "Authorization: Bearer $ADMIN_TOKEN" "http://${WORKER_HTTP%% *}/v1/couriers"
#   scripts/cluster.sh kill-node "$CLUSTER_DIR" 2; scripts/cluster.sh status "$CLUSTER_DIR"
#   scripts/cluster.sh stop "$CLUSTER_DIR"
#
# Layout of CLUSTER_DIR: env (the printed lines), node-I.vars (rabbitmq-node.sh's output for
# node I) and locus-rmq.*/ (the nodes' dirs), tokens/token.key (the shared secret), worker-I/
# (data dir), worker-I.toml, worker-I.log, worker-I.pid, influxd/ (ours: config, data, log).
#
# The nodes: one cookie and one epmd port for all three (Erlang finds peers through epmd,
# and a node accepts only peers with its cookie). The first node to boot starts epmd on that
# port, the others register with it; rabbitmq-node.sh's `stop` of one node leaves it to the
# others (epmd refuses -kill while nodes are registered), and `stop` here kills it at the
# end. Nodes 2 and 3 join node 1 (stop_app, reset, join_cluster, start_app).
#
# The auth backend URL: every node asks worker 1 (in production this URL is a load balancer
# in front of all workers; any worker answers alike, they share the token secret). So here,
# with worker 1 killed, no NEW device can log in (connected ones go on publishing: RabbitMQ
# caches checks per connection).
#
# Timing seen on this 2-core machine (with a cargo build or test running beside it at times):
# `start 2` 29-37 s to ready (the three nodes boot at once, 14-16 s; the two joins 4-5 s
# each, one after the other; workers answer /healthz under 1 s after), `start 0` 26.5 s;
# `stop` 2.7-5.3 s; `kill-node` 0.1 s, `restart-node` 6.5-8 s; `kill-worker` under 1 s,
# `start-worker` 0.5 s; `status` ~1 s. Memory: ~140 MB per node, plus influxd and workers.
set -euo pipefail
# A failure inside $(...) stops the script too (bash otherwise ignores it there).
shopt -s inherit_errexit

CLUSTER_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CLUSTER_ROOT=$(dirname "$CLUSTER_HERE")
# rmq_node_start / _stop / _kill / _restart / _join, rmq__free_port, rmq__alive, rmq__cli.
# shellcheck source=scripts/rabbitmq-node.sh
. "$CLUSTER_HERE/rabbitmq-node.sh"

NODES=3

cl__log() { echo "cluster: $*" >&2; }
cl__die() { cl__log "$*"; exit 1; }

cl__check_dir() {
  [[ -n ${1:-} && -f $1/.locus-cluster ]] || cl__die "${1:-(no dir)}: not a dir made by cluster.sh start"
}

# The locusd binary, as an absolute path (later commands may run from another dir).
cl__locusd() {
  local l
  if [[ -n ${LOCUSD:-} ]]; then l=$LOCUSD
  elif [[ -x $CLUSTER_ROOT/target/release/locusd ]]; then l=$CLUSTER_ROOT/target/release/locusd
  else l=$CLUSTER_ROOT/target/debug/locusd; fi
  [[ $l == /* ]] || l=$PWD/$l
  echo "$l"
}

# A value of node I (RMQ_NODE, RMQ_DIR, RMQ_MQTT_PORT, RMQ_AMQP_PORT, ...).
cl__node_var() { sed -n "s/^$3=//p" "$1/node-$2.vars"; }

# A value from CLUSTER_DIR/settings (what start decided; read by the later commands).
cl__setting() { sed -n "s/^$2=//p" "$1/settings"; }

cl__worker_pid() { cat "$1/worker-$2.pid" 2>/dev/null || true; }

# Whether worker I runs (its pid is alive and is still that worker's locusd).
cl__worker_alive() {
  local pid; pid=$(cl__worker_pid "$1" "$2")
  [[ -n $pid ]] && rmq__alive "$pid" && grep -qF "$1/worker-$2.toml" "/proc/$pid/cmdline" 2>/dev/null
}

# Worker I's HTTP port (chosen at start, before the nodes: worker 1's is the auth URL's).
cl__worker_port() { local ports; read -ra ports <<<"$(cl__setting "$1" WORKER_PORTS)"; echo "${ports[$(($2 - 1))]}"; }

cl__http_code() { curl -s -o /dev/null -m 5 -w '%{http_code}' "$@" || true; }

# ---------------------------------------------------------------------------------------
# InfluxDB: ours (Debian's influxdb 1.x, scripts/influxd.conf.in, as the tests use it) or yours.

cl__influxd_start() {
  local dir=$1/influxd http_port rpc_port
  http_port=$(rmq__free_port); rpc_port=$(rmq__free_port)
  mkdir -p "$dir"
  local conf; conf=$(<"$CLUSTER_HERE/influxd.conf.in")
  conf=${conf//@DIR@/$dir}; conf=${conf//@RPC_PORT@/$rpc_port}; conf=${conf//@HTTP_PORT@/$http_port}
  printf '%s\n' "$conf" > "$dir/influxd.conf"
  local influxd=${INFLUXD:-/usr/bin/influxd}
  [[ -x $influxd ]] || influxd=$(command -v influxd) ||
    cl__die "influxd not found: apt-get install -y influxdb, or set INFLUX_URL"
  setsid "$influxd" -config "$dir/influxd.conf" >> "$dir/influxd.log" 2>&1 < /dev/null &
  echo $! > "$dir/influxd.pid"
  local pid=$! deadline=$((SECONDS + 90))
  until [[ $(cl__http_code "http://127.0.0.1:$http_port/ping") == 204 ]]; do
    if ! rmq__alive "$pid" || (( SECONDS >= deadline )); then
      tail -n 20 "$dir/influxd.log" >&2; cl__die "influxd did not answer /ping"
    fi
    sleep 0.1
  done
  echo "http://127.0.0.1:$http_port"
}

cl__influx_create_db() {
  local url=$1 db=$2 answer
  answer=$(curl -sS -m 30 -XPOST "$url/query" --data-urlencode "q=CREATE DATABASE \"$db\"" 2>&1) || true
  [[ $answer == *'"results"'* && $answer != *'"error"'* ]] || cl__die "CREATE DATABASE $db at $url: $answer"
}

# ---------------------------------------------------------------------------------------
# Workers.

# worker-I.toml: the node URLs rotated so that worker I starts with node ((I-1) mod 3) + 1.
cl__write_worker_config() {
  local cdir=$1 i=$2 workers=$3
  local user pass urls="" k n
  user=$(cl__setting "$cdir" RMQ_WORKER_USER); pass=$(cl__setting "$cdir" RMQ_WORKER_PASS)
  for k in $(seq 0 $((NODES - 1))); do
    n=$(( (i - 1 + k) % NODES + 1 ))
    urls+="${urls:+, }\"amqp://$user:$pass@127.0.0.1:$(cl__node_var "$cdir" "$n" RMQ_AMQP_PORT)/%2f\""
  done
  cat > "$cdir/worker-$i.toml" <<EOF
# Worker $i of $workers, written by scripts/cluster.sh.
data_dir = "$cdir/worker-$i"

[broker]
mode = "rabbitmq"

[broker.rabbitmq]
amqp_urls = [$urls]
partitions = $(cl__setting "$cdir" PARTITIONS)
worker_index = $((i - 1))
workers = $workers

[http]
listen = "127.0.0.1:$(cl__worker_port "$cdir" "$i")"
rabbitmq_auth_backend = true

[influx]
url = "$(cl__setting "$cdir" INFLUX_URL)"
database = "$(cl__setting "$cdir" INFLUX_DB)"
EOF
  if [[ -n ${CLUSTER_WORKER_TOML:-} ]]; then printf '\n%s\n' "$CLUSTER_WORKER_TOML" >> "$cdir/worker-$i.toml"; fi
}

# Starts worker I (its config exists) with the shared token secret; no waiting.
cl__worker_launch() {
  local cdir=$1 i=$2 locusd; locusd=$(cl__setting "$cdir" LOCUSD)
  mkdir -p "$cdir/worker-$i"
  install -m 600 "$cdir/tokens/token.key" "$cdir/worker-$i/token.key"
  echo "--- $(date -Is) start: $locusd --config $cdir/worker-$i.toml" >> "$cdir/worker-$i.log"
  # setsid: its own session, so a Ctrl-C in the shell that ran `start` does not reach it.
  setsid "$locusd" --config "$cdir/worker-$i.toml" >> "$cdir/worker-$i.log" 2>&1 < /dev/null &
  echo $! > "$cdir/worker-$i.pid"
}

# Waits until worker I answers GET /healthz with 200; on exit or timeout prints its log tail.
cl__worker_await() {
  local cdir=$1 i=$2 port; port=$(cl__worker_port "$cdir" "$i")
  local deadline=$((SECONDS + ${CLUSTER_WORKER_TIMEOUT:-60}))
  until [[ $(cl__http_code "http://127.0.0.1:$port/healthz") == 200 ]]; do
    if ! cl__worker_alive "$cdir" "$i" || (( SECONDS >= deadline )); then
      if cl__worker_alive "$cdir" "$i"; then cl__log "worker $i: no healthy /healthz on port $port within ${CLUSTER_WORKER_TIMEOUT:-60} s"
      else cl__log "worker $i exited during start"; fi
      cl__log "tail of $cdir/worker-$i.log:"; tail -n 25 "$cdir/worker-$i.log" >&2
      return 1
    fi
    sleep 0.2
  done
}

# TERM, then KILL after 10 s.
cl__worker_stop() {
  local cdir=$1 i=$2 pid k; pid=$(cl__worker_pid "$cdir" "$i")
  cl__worker_alive "$cdir" "$i" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for k in $(seq 1 100); do cl__worker_alive "$cdir" "$i" || return 0; sleep 0.1; done
  cl__log "worker $i (pid $pid) still running 10 s after SIGTERM: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------------------
# env: the eval-able lines, rebuilt from the dir's state after every change.

cl__write_env() {
  local cdir=$1 workers i v nodes="" dirs="" mqtt="" amqp="" urls="" http="" pids=""
  workers=$(cl__setting "$cdir" WORKERS)
  local user pass; user=$(cl__setting "$cdir" RMQ_WORKER_USER); pass=$(cl__setting "$cdir" RMQ_WORKER_PASS)
  for i in $(seq 1 $NODES); do
    nodes+="${nodes:+ }$(cl__node_var "$cdir" "$i" RMQ_NODE)"
    dirs+="${dirs:+ }$(cl__node_var "$cdir" "$i" RMQ_DIR)"
    mqtt+="${mqtt:+ }$(cl__node_var "$cdir" "$i" RMQ_MQTT_PORT)"
    v=$(cl__node_var "$cdir" "$i" RMQ_AMQP_PORT)
    amqp+="${amqp:+ }$v"; urls+="${urls:+ }amqp://$user:$pass@127.0.0.1:$v/%2f"
  done
  for i in $(seq 1 "$workers"); do
    http+="${http:+ }127.0.0.1:$(cl__worker_port "$cdir" "$i")"
    if cl__worker_alive "$cdir" "$i"; then v=$(cl__worker_pid "$cdir" "$i"); else v=-; fi
    pids+="${pids:+ }$v"
  done
  {
    printf "%s='%s'\n" CLUSTER_DIR "$cdir" RMQ_NODES "$nodes" RMQ_DIRS "$dirs" \
      RMQ_MQTT_PORTS "$mqtt" RMQ_AMQP_PORTS "$amqp" RMQ_AMQP_URLS "$urls" \
      RMQ_WORKER_USER "$user" RMQ_WORKER_PASS "$pass" \
      RMQ_AUTH_URL "$(cl__setting "$cdir" RMQ_AUTH_URL)" \
      INFLUX_URL "$(cl__setting "$cdir" INFLUX_URL)" INFLUX_DB "$(cl__setting "$cdir" INFLUX_DB)" \
      LOCUSD "$(cl__setting "$cdir" LOCUSD)" WORKERS "$workers" \
      WORKER_HTTP "$http" WORKER_PIDS "$pids" ADMIN_TOKEN "$(cat "$cdir/admin.token" 2>/dev/null || true)"
  } > "$cdir/env.tmp"
  mv "$cdir/env.tmp" "$cdir/env"
}

# ---------------------------------------------------------------------------------------

cl_start() {
  local workers=${1:-2}
  [[ $workers =~ ^[0-9]+$ ]] || cl__die "WORKERS must be a number, not $workers"
  local locusd; locusd=$(cl__locusd)
  if (( workers > 0 )); then
    [[ -x $locusd ]] || cl__die "no locusd at $locusd: cargo build -p locus-broker, or set LOCUSD"
    cl__log "locusd: $locusd"
  fi
  local t0; t0=$(date +%s.%N)
  local cdir; cdir=$(mktemp -d "${CLUSTER_TMP:-${TMPDIR:-/tmp}}/locus-cluster.XXXXXX")
  : > "$cdir/.locus-cluster"   # marker: stop only deletes dirs carrying it
  # From here on a failed or interrupted start takes down what it started (CLUSTER_KEEP=1:
  # left running). Bash runs the EXIT trap on a signal only if that signal is trapped.
  trap 'cl__start_failed "$?" "'"$cdir"'"' EXIT
  trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM

  # What every node and worker shares. The worker password goes into rabbitmq.conf and URLs.
  local cookie epmd_port user pass
  cookie=$(rmq__random_hex 24); epmd_port=$(rmq__free_port)
  user=${RMQ_WORKER_USER:-locus-worker}; pass=${RMQ_WORKER_PASS:-$(rmq__random_hex 16)}

  # Worker HTTP ports first: node config needs worker 1's (the auth backend).
  local ports=() i
  for i in $(seq 1 "$workers"); do ports+=("$(rmq__free_port)"); done
  local auth_url=${CLUSTER_AUTH_URL:-}
  if [[ -z $auth_url ]]; then
    if (( workers > 0 )); then auth_url="http://127.0.0.1:${ports[0]}/rabbitmq/auth"
    else auth_url="http://127.0.0.1:$(rmq__free_port)/rabbitmq/auth"; cl__log "no workers and no CLUSTER_AUTH_URL: devices cannot log in"; fi
  fi

  # InfluxDB first (ready in about a second), then the nodes.
  local influx_url=${INFLUX_URL:-} influx_db=${INFLUX_DB:-locus}
  if [[ -z $influx_url ]]; then
    influx_url=$(cl__influxd_start "$cdir")
    cl__influx_create_db "$influx_url" "$influx_db"
  else
    # Yours: create the database if it is missing (a no-op otherwise); with authentication
    # on this fails, so create it yourself then.
    (cl__influx_create_db "$influx_url" "$influx_db") || cl__log "carrying on without CREATE DATABASE $influx_db"
  fi

  cat > "$cdir/settings" <<EOF
WORKERS=$workers
WORKER_PORTS=${ports[*]}
PARTITIONS=${PARTITIONS:-8}
LOCUSD=$locusd
RMQ_COOKIE=$cookie
RMQ_EPMD_PORT=$epmd_port
RMQ_WORKER_USER=$user
RMQ_WORKER_PASS=$pass
RMQ_AUTH_URL=$auth_url
INFLUX_URL=$influx_url
INFLUX_DB=$influx_db
EOF

  # The three nodes boot at once (~15 s on 2 cores, vs ~12 s for one), dirs inside cdir.
  local failed=0
  for i in $(seq 1 $NODES); do
    ( RMQ_COOKIE=$cookie RMQ_EPMD_PORT=$epmd_port RMQ_WORKER_USER=$user RMQ_WORKER_PASS=$pass \
        RMQ_TMP=$cdir rmq_node_start 0 "$auth_url" > "$cdir/node-$i.vars" 2> "$cdir/node-$i.err" ) &
    CL_STARTING+=($!)
  done
  for i in $(seq 1 $NODES); do
    wait "${CL_STARTING[$((i - 1))]}" || { failed=1; cl__log "node $i did not start:"; cat "$cdir/node-$i.err" >&2; }
  done
  CL_STARTING=()
  (( failed == 0 )) || exit 1
  local seed; seed=$(cl__node_var "$cdir" 1 RMQ_NODE)
  for i in $(seq 2 $NODES); do
    rmq_node_join "$(cl__node_var "$cdir" "$i" RMQ_DIR)" "$seed" > /dev/null
  done
  cl__await_cluster "$cdir" 1 $NODES 60
  cl__log "RabbitMQ cluster of $NODES up after $(rmq__since "$t0") s"

  # One token secret for all workers (32 random bytes, hex, mode 600).
  mkdir -p "$cdir/tokens"
  (umask 077; rmq__random_hex 32 > "$cdir/tokens/token.key")
  for i in $(seq 1 "$workers"); do
    cl__write_worker_config "$cdir" "$i" "$workers"
    cl__worker_launch "$cdir" "$i"
  done
  for i in $(seq 1 "$workers"); do cl__worker_await "$cdir" "$i"; done
  if [[ -x $locusd ]]; then
    "$locusd" token admin --data-dir "$cdir/tokens" 2>/dev/null | tail -n1 > "$cdir/admin.token"
  fi
  cl__write_env "$cdir"
  trap - EXIT
  cl__log "ready after $(rmq__since "$t0") s"
  cat "$cdir/env"
}

# Subshells still starting nodes (an interrupted start ends them before stopping the nodes).
CL_STARTING=()

cl__start_failed() {
  local rc=$1 cdir=$2
  (( rc != 0 )) || return 0
  trap '' HUP INT TERM   # let the clean-up finish
  if (( ${#CL_STARTING[@]} > 0 )); then kill "${CL_STARTING[@]}" 2>/dev/null || true; wait || true; fi
  if [[ ${CLUSTER_KEEP:-} == 1 ]]; then
    cl__log "start failed; everything left running for a look (CLUSTER_KEEP=1): $cdir"
    cl__log "  scripts/cluster.sh stop $cdir"
  else
    cl__log "start failed; stopping what was started"
    cl_stop "$cdir" || true
  fi
}

# Waits until node I's cluster_status lists N running nodes.
cl__await_cluster() {
  local cdir=$1 i=$2 want=$3 timeout=$4 running=0
  local deadline=$((SECONDS + timeout)) dir; dir=$(cl__node_var "$cdir" "$i" RMQ_DIR)
  while (( SECONDS < deadline )); do
    running=$(rmq__cli "$dir" rabbitmqctl -q cluster_status --formatter json 2>/dev/null |
      python3 -c 'import json,sys; print(len(json.load(sys.stdin)["running_nodes"]))' 2>/dev/null) || running=0
    (( running == want )) && return 0
    sleep 1
  done
  cl__die "cluster_status of node $i shows $running running nodes, not $want, after $timeout s"
}

cl_stop() {
  local cdir=${1:-${CLUSTER_DIR:-}}
  [[ -n $cdir ]] || cl__die "usage: stop CLUSTER_DIR (or set CLUSTER_DIR)"
  [[ -e $cdir ]] || return 0   # already stopped
  cl__check_dir "$cdir"
  local i f
  for f in "$cdir"/worker-*.pid; do
    [[ -e $f ]] || continue
    i=${f##*/worker-}; i=${i%.pid}
    cl__worker_stop "$cdir" "$i" &
  done
  wait
  # The nodes in parallel (each a graceful `rabbitmqctl stop`, TERM/KILL after RMQ_STOP_TIMEOUT).
  # Found by their dirs' node.vars (written before a node boots), so a start interrupted
  # while nodes were booting leaves none behind.
  for f in "$cdir"/locus-rmq.*/node.vars; do
    [[ -s $f ]] || continue
    ( rmq_node_stop "$(sed -n 's/^RMQ_NODE=//p' "$f")" "$(sed -n 's/^RMQ_DIR=//p' "$f")" ) &
  done
  wait
  if [[ -f $cdir/influxd/influxd.pid ]]; then
    local pid k; pid=$(cat "$cdir/influxd/influxd.pid")
    if rmq__alive "$pid"; then
      kill -TERM "$pid" 2>/dev/null || true
      for k in $(seq 1 100); do rmq__alive "$pid" || break; sleep 0.1; done
      if rmq__alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
  fi
  # The shared epmd: each node's stop asked it to exit; it refuses while anything (a node,
  # a CLI call) is registered, so ask again now that all are gone.
  local epmd_port; epmd_port=$(cl__setting "$cdir" RMQ_EPMD_PORT 2>/dev/null || true)
  if [[ -n $epmd_port ]]; then epmd -port "$epmd_port" -kill >/dev/null 2>&1 || true; fi
  rm -rf -- "$cdir"
}

cl_status() {
  local cdir=${1:-${CLUSTER_DIR:-}}; cl__check_dir "$cdir"
  local i lpid dir state up="" workers
  for i in $(seq 1 $NODES); do
    [[ -s $cdir/node-$i.vars ]] || continue
    dir=$(cl__node_var "$cdir" "$i" RMQ_DIR); lpid=$(cat "$dir/launcher.pid" 2>/dev/null || true)
    if [[ -n $lpid ]] && rmq__alive "$lpid"; then state=running; up=${up:-$i}; else state=down; fi
    echo "node $i $(cl__node_var "$cdir" "$i" RMQ_NODE) $state mqtt=$(cl__node_var "$cdir" "$i" RMQ_MQTT_PORT) amqp=$(cl__node_var "$cdir" "$i" RMQ_AMQP_PORT)"
  done
  if [[ -n $up ]]; then
    echo "cluster_status (asked node $up): running_nodes:"
    rmq__cli "$(cl__node_var "$cdir" "$up" RMQ_DIR)" rabbitmqctl -q cluster_status --formatter json 2>/dev/null |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print("\n".join("  "+n for n in d["running_nodes"]))' || echo "  (no answer)"
  fi
  workers=$(cl__setting "$cdir" WORKERS)
  for i in $(seq 1 "$workers"); do
    local port; port=$(cl__worker_port "$cdir" "$i")
    if cl__worker_alive "$cdir" "$i"; then
      echo "worker $i pid $(cl__worker_pid "$cdir" "$i") http 127.0.0.1:$port /healthz $(cl__http_code "http://127.0.0.1:$port/healthz")"
    else echo "worker $i down (http 127.0.0.1:$port)"; fi
  done
  if [[ -f $cdir/influxd/influxd.pid ]]; then
    if rmq__alive "$(cat "$cdir/influxd/influxd.pid")"; then echo "influxd running $(cl__setting "$cdir" INFLUX_URL)"
    else echo "influxd down"; fi
  else echo "influxdb external $(cl__setting "$cdir" INFLUX_URL)"; fi
}

cl__worker_arg() {
  local cdir=$1 i=${2:-}; cl__check_dir "$cdir"
  [[ $i =~ ^[0-9]+$ && -f $cdir/worker-$i.toml ]] || cl__die "no worker ${i:-(none)} in $cdir (workers 1..$(cl__setting "$cdir" WORKERS))"
}

cl__node_arg() {
  local cdir=$1 i=${2:-}; cl__check_dir "$cdir"
  [[ $i =~ ^[1-9]$ && -s $cdir/node-$i.vars ]] || cl__die "no node ${i:-(none)} in $cdir (nodes 1..$NODES)"
}

cl_kill_worker() {
  local cdir=${1:-} i=${2:-}; cl__worker_arg "$cdir" "$i"
  if cl__worker_alive "$cdir" "$i"; then
    local pid k; pid=$(cl__worker_pid "$cdir" "$i")
    kill -KILL "$pid"
    for k in $(seq 1 50); do rmq__alive "$pid" || break; sleep 0.1; done
  fi
  cl__write_env "$cdir"
}

cl_start_worker() {
  local cdir=${1:-} i=${2:-}; cl__worker_arg "$cdir" "$i"
  cl__worker_alive "$cdir" "$i" && cl__die "worker $i runs (pid $(cl__worker_pid "$cdir" "$i"))"
  cl__worker_launch "$cdir" "$i"
  cl__worker_await "$cdir" "$i" || { cl__worker_stop "$cdir" "$i"; cl__write_env "$cdir"; exit 1; }
  cl__write_env "$cdir"
  echo "WORKER_PID=$(cl__worker_pid "$cdir" "$i")"
  echo "WORKER_HTTP=127.0.0.1:$(cl__worker_port "$cdir" "$i")"
}

cl_kill_node() {
  local cdir=${1:-} i=${2:-}; cl__node_arg "$cdir" "$i"
  rmq_node_kill "$(cl__node_var "$cdir" "$i" RMQ_NODE)" "$(cl__node_var "$cdir" "$i" RMQ_DIR)"
}

cl_restart_node() {
  local cdir=${1:-} i=${2:-}; cl__node_arg "$cdir" "$i"
  rmq_node_restart "$(cl__node_var "$cdir" "$i" RMQ_DIR)" | grep '^RMQ_START_SECONDS='
}

cmd=${1:-}; shift || true
case $cmd in
  start) cl_start "$@" ;;
  stop) cl_stop "$@" ;;
  status) cl_status "$@" ;;
  kill-worker) cl_kill_worker "$@" ;;
  start-worker) cl_start_worker "$@" ;;
  kill-node) cl_kill_node "$@" ;;
  restart-node) cl_restart_node "$@" ;;
  ctl) d=${1:-}; i=${2:-}; cl__node_arg "$d" "$i"; shift 2; rmq__cli "$(cl__node_var "$d" "$i" RMQ_DIR)" rabbitmqctl "$@" ;;
  *) sed -n '2,/^# Example/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
