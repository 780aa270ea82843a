#!/usr/bin/env bash
# The README's benchmark table in one command: for each row a release locusd on a fresh data
# dir, then `locusd bench --baseline` (locusd first, then a bare rumqttd with the same [mqtt]
# settings inside the bench process, and the ratio of the two from the same run).
#
#   ./scripts/bench.sh            # every row
#   ./scripts/bench.sh 1 3        # rows 1 (1 fix per report), 2 (10 per report), 3 (20k/s)
#
# The per-connection publish-rate throttle is off here ([mqtt] max_publish_rate = 0): at its
# default (1,000 reports/s per connection) 100 couriers could not publish more than 100k
# reports/s, and the point is to measure the server, not the throttle.
set -euo pipefail
cd "$(dirname "$0")/.."

rows=("${@:-1 2 3}")
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

start_server() {
  stop_server
  rm -rf "$work/data"
  mqtt=$(port)
  http=$(port)
  {
    echo "data_dir = \"$work/data\""
    echo "allow_anonymous = true"
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
for row in ${rows[*]}; do
  start_server
  case "$row" in
    1) echo "== 1 fix per report, 100 couriers, as fast as acks allow"
       bench --couriers 100 --duration-s 10 ;;
    2) echo "== 10 fixes per report, 100 couriers, as fast as acks allow"
       bench --couriers 100 --fixes-per-report 10 --duration-s 10 ;;
    3) echo "== 20,000 fixes/s, 1 fix per report, 100 couriers"
       bench --couriers 100 --rate 20000 --duration-s 10 ;;
    *) echo "unknown row $row" >&2; exit 2 ;;
  esac
done
