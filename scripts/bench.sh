#!/usr/bin/env bash
# The README's benchmark table in one command: for each row a release locusd on a fresh data
# dir, then `locusd bench --baseline` (locusd first, then a bare rumqttd with the same [mqtt]
# settings inside the bench process, and the ratio of the two from the same run).
#
#   ./scripts/bench.sh            # every row
#   ./scripts/bench.sh 1 3        # rows 1 (1 fix per report), 2 (10 per report), 3 (20k/s),
#                                 # 4 (a city: 10,000 couriers at 1 fix/s, token checks on),
#                                 # 5 (10,000 idle connections: memory per connection),
#                                 # 6 (cluster mode: scripts/cluster.sh, 3 RabbitMQ nodes and
#                                 #    1, 2, then 3 workers; 10 fixes per report)
#
# The per-connection publish-rate throttle is off here ([mqtt] max_publish_rate = 0): at its
# default (1,000 reports/s per connection) 100 couriers could not publish more than 100k
# reports/s, and the point is to measure the server, not the throttle.
set -euo pipefail
cd "$(dirname "$0")/.."
# A fleet is thousands of sockets: lift the soft open-files limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

rows=("${@:-1 2 3 4 5}")
cargo build --release --quiet -p locus-broker
locusd=target/release/locusd

work=$(mktemp -d)
server=
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
stop_server() {
  if [ -n "$server" ]; then
    echo "locusd resident memory at the end: $(grep VmRSS "/proc/$server/status" | awk '{print $2, $3}')"
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=
  fi
}
trap 'stop_server; rm -rf "$work"' EXIT

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }

# Samples locusd's resident memory every 200 ms into $work/rss until the file $work/rss.stop
# appears; `peak_rss_kb` then says the highest.
sample_rss() {
  rm -f "$work/rss" "$work/rss.stop"
  (while [ ! -e "$work/rss.stop" ] && rss_kb >>"$work/rss"; do sleep 0.2; done) &
  sampler=$!
}
peak_rss_kb() {
  touch "$work/rss.stop"
  wait "$sampler"
  sort -n "$work/rss" | tail -1
}

# start_server [tokens]: anonymous unless "tokens" (then couriers need tokens from the data dir,
# which `locusd bench --data-dir` issues).
start_server() {
  stop_server
  rm -rf "$work/data"
  mqtt=$(port)
  http=$(port)
  {
    echo "data_dir = \"$work/data\""
    if [ "${1:-}" != tokens ]; then echo "allow_anonymous = true"; fi
    echo "[mqtt]"
    echo "listen = \"127.0.0.1:$mqtt\""
    echo "listen_v5 = \"off\""
    echo "max_publish_rate = 0"
    echo "[http]"
    echo "listen = \"127.0.0.1:$http\""
  } >"$work/bench.toml"
  "$locusd" serve --config "$work/bench.toml" >"$work/locusd.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$http/healthz" >/dev/null && return
    sleep 0.1
  done
  echo "locusd did not start:" >&2
  cat "$work/locusd.log" >&2
  exit 1
}

bench() { "$locusd" bench --mqtt "127.0.0.1:$mqtt" --config "$work/bench.toml" --baseline "$@"; }
# Row 6: the same load through a local RabbitMQ cluster (scripts/cluster.sh) with W workers.
# Couriers connect to node 1's MQTT listener with tokens from the cluster's shared secret;
# an ack there means InfluxDB holds the fix (README, "Running at scale").
cluster_row() {
  local workers=$1 env
  env=$(PARTITIONS=6 LOCUSD=$locusd scripts/cluster.sh start "$workers")
  eval "$env"
  echo "-- $workers worker(s)"
  "$locusd" bench --mqtt "127.0.0.1:${RMQ_MQTT_PORTS%% *}" --data-dir "$CLUSTER_DIR/tokens" \
    --couriers 100 --fixes-per-report 10 --duration-s 15 --baseline || true
  scripts/cluster.sh stop "$CLUSTER_DIR" >/dev/null
}

for row in ${rows[*]}; do
  case "$row" in
    4|5) start_server tokens ;;
    6) stop_server ;;
    *) start_server ;;
  esac
  case "$row" in
    1) echo "== 1 fix per report, 100 couriers, as fast as acks allow"
       bench --couriers 100 --duration-s 10 ;;
    2) echo "== 10 fixes per report, 100 couriers, as fast as acks allow"
       bench --couriers 100 --fixes-per-report 10 --duration-s 10 ;;
    3) echo "== 20,000 fixes/s, 1 fix per report, 100 couriers"
       bench --couriers 100 --rate 20000 --duration-s 10 ;;
    4) echo "== a city: 10,000 couriers with token checks, one fix per courier per second ±10%"
       # No --baseline here: a bare broker in the bench process would hold 10,000 server sockets
       # next to the 10,000 couriers', past this box's limit of 20,000 open files per process.
       sample_rss
       "$locusd" bench --mqtt "127.0.0.1:$mqtt" --couriers 10000 \
         --interval-ms 1000 --duration-s 30 --data-dir "$work/data"
       echo "locusd peak resident memory: $(( $(peak_rss_kb) / 1024 )) MiB" ;;
    5) echo "== 10,000 idle couriers (connected with token checks, no reports)"
       before=$(rss_kb)
       sample_rss
       "$locusd" bench --mqtt "127.0.0.1:$mqtt" --couriers 10000 --interval-ms 3600000 \
         --duration-s 10 --data-dir "$work/data"
       peak=$(peak_rss_kb)
       echo "locusd resident memory: $(( before / 1024 )) MiB before, $(( peak / 1024 )) MiB" \
         "with 10,000 connected: $(( (peak - before) * 1024 / 10000 )) bytes per connection" ;;
    6) echo "== cluster mode: 10 fixes per report, 100 couriers, as fast as acks allow"
       for workers in 1 2 3; do cluster_row "$workers"; done ;;
    *) echo "unknown row $row" >&2; exit 2 ;;
  esac
done
