#!/usr/bin/env bash
# Installs what the tests need (when missing) and runs every check CI runs:
# formatting, clippy with warnings as errors (the server's workspace and the plugin workspace in
# plugins/), and the whole test suite against real processes.
#
#   ./scripts/test.sh            # everything
#   ./scripts/test.sh --no-lint  # skip fmt and clippy (quicker while iterating)
set -euo pipefail
cd "$(dirname "$0")/.."
# A fleet is thousands of sockets: lift the soft open-files limit to the hard one.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

lint=1
for arg in "$@"; do
  case "$arg" in
    --no-lint) lint=0 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done

step() { printf '\n==> %s\n' "$*"; }

# --- prerequisites -------------------------------------------------------------------------
need_apt=()
command -v mosquitto_pub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v influxd >/dev/null 2>&1 || need_apt+=(influxdb)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)   # tests/tls.rs: HTTPS with --cacert
# tests/order_notifications.rs: a local SMTP sink (Debian's aiosmtpd, for the system python3).
/usr/bin/python3 -c 'import aiosmtpd' >/dev/null 2>&1 || need_apt+=(python3-aiosmtpd)
# tests/rabbitmq_auth.rs, cluster.rs, cluster_script.rs: real RabbitMQ nodes
# (scripts/rabbitmq-node.sh, scripts/cluster.sh; Debian's 3.10).
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
# tests/alerts.rs: promtool checks and unit-tests dashboards/alerts.yml (Debian's prometheus).
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# tests/console.rs: the console and tracking page in headless Chromium, driven over WebDriver.
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need_apt+=(chromium-driver)
if ((${#need_apt[@]})); then
  step "installing ${need_apt[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
# Debian's influxdb package starts a system influxd on :8086; the tests start their own on
# free ports, so the system one is not needed (and may not be running at all in CI).

targets=(wasm32-wasip2 aarch64-linux-android aarch64-apple-ios)
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  if ! grep -qx "$t" <<<"$installed"; then
    step "rustup target add $t"
    rustup target add "$t"
  fi
done
if [ "$lint" = 1 ]; then
  rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed | grep -q '^clippy' || rustup component add clippy
fi

# --- checks --------------------------------------------------------------------------------
if [ "$lint" = 1 ]; then
  step "cargo fmt --check"
  cargo fmt --all --check
  step "cargo clippy --all-targets -- -D warnings"
  cargo clippy --workspace --all-targets --features locus-sdk/client -- -D warnings

  # The plugin workspace (plugins/) is a workspace of its own, built for wasm32-wasip2, so the
  # two commands above never see it. It is linted for that target in its own target directory
  # (plugins/target, where the tests build the components too), whatever CARGO_TARGET_DIR says;
  # host RUSTFLAGS are dropped as the tests' build drops them (they can break the Wasm build).
  step "plugins/: cargo fmt --check"
  cargo fmt --manifest-path plugins/Cargo.toml --all --check
  step "plugins/: cargo clippy --all-targets --target wasm32-wasip2 -- -D warnings"
  env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_TARGET \
    cargo clippy --manifest-path plugins/Cargo.toml --target-dir plugins/target \
    --all-targets --target wasm32-wasip2 -- -D warnings

  # The edge component (edge/) is a workspace of its own too, built for wasm32-wasip2 (its
  # src/host/ exists only there) into edge/target, where the tests build it as well.
  step "edge/: cargo fmt --check"
  cargo fmt --manifest-path edge/Cargo.toml --all --check
  step "edge/: cargo clippy --all-targets --target wasm32-wasip2 -- -D warnings"
  env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_TARGET \
    cargo clippy --manifest-path edge/Cargo.toml --target-dir edge/target --release \
    --all-targets --target wasm32-wasip2 -- -D warnings
fi

# The courier SDK must build for phones. TLS crates that compile C need the phone toolchains
# (NDK, Xcode), which CI lacks, so the phone check is without the `tls` feature.
for t in aarch64-linux-android aarch64-apple-ios; do
  step "cargo check -p locus-sdk --features client --target $t"
  cargo check -p locus-sdk --features client --target "$t"
done

# Every test binary runs even when one fails (--no-fail-fast), so one failure never hides
# another; the script still exits non-zero.
step "cargo test"
failed=0
cargo test --workspace --no-fail-fast --features locus-sdk/client || failed=1

# The vendored rumqttd's own unit tests (its patches have some: vendor/rumqttd/PATCHES.md). It is
# outside the workspace, so it builds on its own, in vendor/rumqttd/target, with its own lock.
step "vendor/rumqttd: cargo test --lib"
cargo test --manifest-path vendor/rumqttd/Cargo.toml --target-dir vendor/rumqttd/target \
  --locked --lib || failed=1

# The edge component's own unit tests (routing, parsing, splitting, answers) run on the host;
# its end-to-end tests (tests/tests/edge.rs) ran with the workspace above.
step "edge/: cargo test"
cargo test --manifest-path edge/Cargo.toml --target-dir edge/target --locked || failed=1

# Fuzz targets (fuzz/README.md): `cargo test` above ran each for 2 s; here each runs for 30 s,
# two at a time, in the dev profile. A crash fails the run and is saved in fuzz/crashes/.
# Same package selection and features as above, so nothing is rebuilt.
step "fuzz targets, 30 s each"
LOCUS_FUZZ_SECONDS=30 cargo test --workspace --features locus-sdk/client --test fuzz \
  -- --test-threads 2 || failed=1

if [ "$failed" != 0 ]; then
  echo "some tests failed (see above)" >&2
  exit 1
fi
