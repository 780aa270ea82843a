#!/usr/bin/env bash
# scripts/rabbitmq-node.sh — start/stop a throwaway RabbitMQ node (Debian 12's
# rabbitmq-server 3.10.x) for tests: one temp dir, loopback-only free ports, the MQTT
# plugin on a chosen port, the HTTP auth backend pointing at a URL of ours for devices, an
# internal AMQP user for locusd workers, the consistent-hash exchange; nodes can be joined
# into a cluster (scripts/cluster.sh builds a 3-node one with it).
# It never touches a system node (/etc/rabbitmq, /var/lib/rabbitmq, port 5672/1883/4369).
#
# Install once (CI must do this itself):
#   DEBIAN_FRONTEND=noninteractive apt-get install -y rabbitmq-server mosquitto-clients
#   (On these machines the package does NOT start a system node: /usr/sbin/policy-rc.d
#   exits 101 and there is no systemd, so "invoke-rc.d: policy-rc.d denied execution of
#   start". On a normal Debian box it would start rabbit@<host> on 5672/25672 and epmd on
#   4369; the node started here uses other names, ports and its own epmd, so it should
#   not collide — untested, since no system node runs here.)
#
# Usage
#   scripts/rabbitmq-node.sh start [MQTT_PORT [AUTH_BASE_URL]]
#       env alternatives: RMQ_MQTT_PORT, RMQ_AUTH_URL (default http://127.0.0.1:8089/auth),
#       RMQ_AMQP_PORT, RMQ_DIST_PORT, RMQ_EPMD_PORT (each default: a free loopback port),
#       RMQ_COOKIE (default: random per node; nodes to be clustered need the same cookie
#       AND the same RMQ_EPMD_PORT, since Erlang looks peers up in epmd on that port),
#       RMQ_WORKER_USER / RMQ_WORKER_PASS (the internal AMQP user for locusd workers, an
#       administrator with .* .* .* on vhost /; default locus-worker and 32 random hex
#       digits; only A-Z a-z 0-9 . _ ~ -; clustered nodes should share them),
#       RMQ_START_TIMEOUT (s, default 90), RMQ_STOP_TIMEOUT (s, default 20),
#       RMQ_LOG_LEVEL (default info), RMQ_TMP (parent dir).
#       Prints eval-able lines on stdout (also kept in DIR/node.vars, less the seconds), e.g.
#           RMQ_NODE=locus-test-4242-x1y2z3@localhost
#           RMQ_DIR=/tmp/locus-rmq.x1y2z3
#           RMQ_MQTT_PORT=40123
#           RMQ_AMQP_PORT=40125
#           RMQ_EPMD_PORT=40127
#           RMQ_WORKER_USER=locus-worker
#           RMQ_WORKER_PASS=0f3a...
#           RMQ_START_SECONDS=9.8
#       Exit 0 only when the node has fully booted (await_startup) AND the MQTT port
#       accepts connections. On failure it prints the log tail, stops and removes the node.
#       The auth URL is a base: RabbitMQ is told to POST to BASE/user, BASE/vhost,
#       BASE/resource and BASE/topic. Logins try the internal database first (it holds only
#       the worker user; there is NO guest user), then HTTP: guest/guest goes to the HTTP
#       backend like any device and is refused unless it says allow.
#   scripts/rabbitmq-node.sh stop NODE DIR
#       `rabbitmqctl stop` (graceful, waits for the VM to exit), TERM/KILL of the
#       launcher's process group if that fails, kills the node's epmd, rm -rf DIR.
#       Safe to call twice; refuses to delete a DIR that this script did not create.
#       A shared epmd (clustered nodes) survives while other nodes use it: epmd refuses
#       -kill while any node is registered, so the last node's stop ends it.
#   scripts/rabbitmq-node.sh join DIR SEED_NODE
#       Makes the running node of DIR a member of SEED_NODE's cluster (stop_app, reset,
#       join_cluster, start_app; its own users and queues are dropped for the cluster's) and
#       waits for it to be ready again. Both must have been started with the same RMQ_COOKIE
#       and RMQ_EPMD_PORT (checked first: a ping of SEED_NODE). Prints RMQ_JOIN_SECONDS=.
#   scripts/rabbitmq-node.sh kill NODE DIR
#       kill -9 of the node's process group (a crash); DIR stays for `restart`.
#   scripts/rabbitmq-node.sh restart DIR
#       Starts a killed node again: same name, ports and data; a clustered node rejoins
#       its cluster by itself. Prints the same lines as start.
#   scripts/rabbitmq-node.sh ctl DIR rabbitmqctl-args...      e.g. ctl "$RMQ_DIR" list_queues
#   scripts/rabbitmq-node.sh diag DIR rabbitmq-diagnostics-args...
#   scripts/rabbitmq-node.sh fake-auth PORT [RULES_JSON_FILE]
#       A stdlib-only Python HTTP auth backend for manual exploration: logs one JSON line per
#       request and answers "allow"; see the rules in its docstring below.
#   Or `source` this file and call rmq_node_start / _stop / _join / _kill / _restart yourself.
#
# Example
#   eval "$(scripts/rabbitmq-node.sh start 0 http://127.0.0.1:8089/auth)"   # 0 = pick a port
#   mosquitto_pub -V mqttv311 -h 127.0.0.1 -p "$RMQ_MQTT_PORT" -u c1 -P secret -i c1 \
#       -q 1 -t couriers/c1/locations -m '{}'
#   scripts/rabbitmq-node.sh stop "$RMQ_NODE" "$RMQ_DIR"
#
# Timing seen on this 2-core machine: start to ready 12-13 s (MQTT port open after ~10.5 s,
# then await_startup ~1 s), alike with and without a cargo run busy; two nodes booting at
# once took 16.5-17.6 s. About 5-6 s of beam CPU per boot, ~140 MB RSS; idle afterwards
# ~0.6% of a core.
# Where the time goes (debug log): ~3 s VM start and prelaunch, ~3 s collecting boot steps,
# then 3-6 s (random) in which the MQTT plugin's Raft client-id tracker (mqtt_node) waits
# for cluster peers ("MQTT: will wait for 300 more ms for cluster members to join before
# triggering a Raft leader election", 10-20 times) — hard-coded in 3.10, no setting
# shortens it; the MQTT port opens only after it. So start ONE node per test binary/suite,
# not per test. `rabbitmqctl`/`rabbitmq-diagnostics` calls take 0.5-1 s; stop ~3 s.
# Three nodes booting at once: 14-15.5 s; `join` 3.7-5 s per node (MQTT port open again
# included); stop of a clustered node ~4 s; `kill` 0.1 s; `restart` 6.5-9 s (8 s for two
# killed nodes of three coming back together).
#
# Clustering on one host, what to know: node names are short names @localhost (no DNS),
# unique per dir; each node has its own AMQP, MQTT and distribution port, but all share ONE
# epmd port and ONE cookie (a CLI or node with another cookie or epmd port cannot see the
# cluster; a CLI with a wrong cookie was seen to hang). Killed nodes need no cleanup
# before `restart`: epmd drops a dead node's name when its connection closes. With 1 of 3
# nodes left, MQTT CONNECTs hang (the MQTT plugin's client-id tracker needs a Raft
# majority) and a confirmed publish to a quorum queue is nacked after ~65 s; with 2 of 3
# everything goes on (quorum queue leaders move at once, SAC consumers take over in <0.1 s).
#
# ---------------------------------------------------------------------------------------
# What RabbitMQ 3.10.8's rabbitmq_auth_backend_http sends (captured with fake-auth; all
# POST, Content-Type application/x-www-form-urlencoded, answered with a text/plain body):
#
#  MQTT CONNECT (user c1, password secret, client id c1):
#   BASE/user     username=c1&password=secret&vhost=%2F&client_id=c1
#   BASE/vhost    username=c1&vhost=%2F&ip=127.0.0.1&tags=&client_id=c1
#  First QoS1 PUBLISH to MQTT topic couriers/c1/locations (routing key uses '.'):
#   BASE/topic    username=c1&vhost=%2F&resource=topic&name=amq.topic&permission=write&tags=
#                 &routing_key=couriers.c1.locations&variable_map.client_id=c1
#                 &variable_map.username=c1&variable_map.vhost=%2F
#   BASE/resource username=c1&vhost=%2F&resource=exchange&name=amq.topic&permission=write
#                 &tags=&client_id=c1
#   BASE/topic    (the same write check again: once by the MQTT plugin, once by the channel)
#   Later publishes on the same connection and topic cause no further requests (cached per
#   connection); every new connection repeats user+vhost+checks (no auth cache plugin).
#  SUBSCRIBE couriers/c1/acks at QoS 1 (queue mqtt-subscription-<clientid>qos<0|1>):
#   BASE/resource ...&resource=queue&name=mqtt-subscription-c1qos1&permission=configure&...
#   BASE/resource ...&resource=queue&name=mqtt-subscription-c1qos1&permission=read&...
#   BASE/resource ...&resource=queue&name=mqtt-subscription-c1qos1&permission=write&...
#   BASE/resource ...&resource=exchange&name=amq.topic&permission=read&tags=&client_id=c1
#   BASE/topic    ...&resource=topic&name=amq.topic&permission=read&tags=
#                 &routing_key=couriers.c1.acks&variable_map.client_id=c1&variable_map...
#   Wildcards arrive in AMQP form: couriers/+/x/# -> routing_key=couriers.*.x.# (urlencoded
#   %2A / %23). Several topics in one SUBSCRIBE are checked in REVERSE order (last first).
#  Fields: user path gets username,password,vhost,client_id (no ip); vhost path gets
#  username,vhost,ip,tags,client_id; resource path gets username,vhost,resource
#  (exchange|queue),name,permission (configure|write|read),tags,client_id; topic path gets
#  username,vhost,resource=topic,name (the exchange),permission (write|read),tags,
#  routing_key and variable_map.{client_id,username,vhost} — NO top-level client_id there.
#
#  Answers: body "allow" or "deny" (case-insensitive: "ALLOW" works). On the user path
#  "allow tag1 tag2" grants tags, which are then sent as tags=tag1+tag2 on every later
#  request. Anything else is not "allow": "yes" on the user path -> CONNACK 4; a trailing
#  newline ("allow\n") is parsed on the user path as allow with tag "\n", and on the vhost
#  path crashes the login (case_clause) -> socket closed without CONNACK. Write exactly
#  "allow"/"deny" with no newline. Backend unreachable -> CONNACK 4 at once.
#
#  What an MQTT 3.1.1 client sees on deny:
#   user deny (or no credentials, with allow_anonymous=false)  -> CONNACK 4 (bad user/pass)
#   vhost deny                                                 -> CONNACK 5 (not authorised)
#   topic write deny on PUBLISH (QoS 0 or 1)  -> no PUBACK; the server closes the TCP
#       connection ("closing due to an authorization failure"); mosquitto_pub exits 7.
#   topic read deny on SUBSCRIBE, or queue configure deny -> NO SUBACK (no 0x80): the
#       connection is closed; a SUBSCRIBE with several topics fails as a whole.
#       mosquitto_sub silently reconnects and retries in a loop.
#   exchange (resource) write deny on PUBLISH -> the client HANGS: the internal AMQP
#       channel dies but the MQTT connection stays open, no PUBACK ever (seen for 10 min).
#       So the resource path must always allow exchange amq.topic read/write.
#  MQTT 5 is not supported by 3.10 (the CONNECT cannot be parsed, socket closed).
#
#  Other facts: MQTT '/' becomes '.' in routing keys, and a '.' inside an MQTT topic level
#  is NOT escaped: odd/a.b/c is routed as odd.a.b.c and delivered as odd/a/b/c. Default
#  vhost "/", exchange amq.topic (set explicitly below). A clean_session=false QoS1
#  subscription leaves a durable queue with x-expires=86400000 (mqtt.subscription_ttl).
#  Retained messages work out of the box: mqtt.retained_message_store defaults to
#  rabbit_mqtt_retained_msg_store_dets (file mqtt_retained_*.dets in the node's mnesia
#  dir). That store is node-local, not replicated in a cluster (RabbitMQ's docs; not
#  tested here). A retained message is delivered only to an exact-topic subscription,
#  not to a wildcard one (tested: couriers/+/state got nothing, couriers/c9/state got it).
#  rabbitmq_consistent_hash_exchange ships in the package (plugins dir; enabled here), as do
#  rabbitmq_management, rabbitmq_web_mqtt, rabbitmq_auth_backend_cache.
# ---------------------------------------------------------------------------------------

# The real scripts. NOT /usr/sbin/rabbitmq*: those Debian wrappers, when run as root,
# re-exec as the `rabbitmq` user, cd to /var/lib/rabbitmq and use ITS cookie (and
# rabbitmq-server there redirects output into /var/log/rabbitmq); as any other user they
# refuse to run. /usr/lib/rabbitmq/bin/* run as whoever calls them and obey our env vars.
RMQ_BIN=${RMQ_BIN:-/usr/lib/rabbitmq/bin}
# Plugins live in the versioned server dir (directories, not .ez, so nothing to expand).
RMQ_PLUGINS_DIR=${RMQ_PLUGINS_DIR:-$(ls -d /usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins 2>/dev/null | sort -V | tail -n1)}

rmq__log() { echo "rabbitmq-node: $*" >&2; }

# A port the kernel just handed out on 127.0.0.1 (tiny race until the node binds it).
rmq__free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

rmq__port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Whether process PID runs. Not `kill -0` alone: a process whose parent has gone is reparented
# to PID 1, which on these machines reaps late, so a dead launcher or epmd stays a zombie
# (state Z, `kill -0` succeeds) for a second or more.
rmq__alive() {
  local stat; stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }; [[ ${stat%% *} != Z ]]
}

rmq__random_hex() { head -c "$1" /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# Run a RabbitMQ CLI tool against the node whose state lives in DIR. env.sh sets HOME (the
# CLI reads the Erlang cookie from $HOME/.erlang.cookie) and ERL_EPMD_PORT (the CLI finds
# the node through the node's private epmd). Runs in a subshell so the caller's HOME stays.
rmq__cli() {
  local dir=$1 tool=$2; shift 2
  ( . "$dir/env.sh" && cd "$dir" && "$RMQ_BIN/$tool" -n "$RABBITMQ_NODENAME" "$@" )
}

# The same, against another NODE, with DIR's cookie and epmd port (reaches it only if they
# are the same as NODE's).
rmq__cli_to() {
  local dir=$1 node=$2 tool=$3; shift 3
  ( . "$dir/env.sh" && cd "$dir" && "$RMQ_BIN/$tool" -n "$node" "$@" )
}

# A value from DIR/node.vars (the lines `start` printed, kept for kill/restart/join).
rmq__var() { sed -n "s/^$2=//p" "$1/node.vars"; }

rmq__log_tail() {
  local dir=$1 node; node=$(rmq__var "$dir" RMQ_NODE)
  # The first error lines carry the reason (e.g. a bad rabbitmq.conf value); the tail
  # shows how it ended.
  { grep -m 12 -F '[error]' "$dir/log/stdout.log"; echo ...; tail -n 15 "$dir/log/stdout.log"
    tail -n 15 "$dir/log/$node.log"; } >&2 2>/dev/null || true
}

rmq_node_start() {
  local mqtt_port=${1:-${RMQ_MQTT_PORT:-0}}
  local auth_url=${2:-${RMQ_AUTH_URL:-http://127.0.0.1:8089/auth}}
  auth_url=${auth_url%/}
  [[ $mqtt_port == 0 ]] && mqtt_port=$(rmq__free_port)
  local amqp_port=${RMQ_AMQP_PORT:-$(rmq__free_port)}
  local dist_port=${RMQ_DIST_PORT:-$(rmq__free_port)}
  local epmd_port=${RMQ_EPMD_PORT:-$(rmq__free_port)}
  local level=${RMQ_LOG_LEVEL:-info}
  local worker_user=${RMQ_WORKER_USER:-locus-worker}
  local worker_pass=${RMQ_WORKER_PASS:-$(rmq__random_hex 16)}

  [[ -x $RMQ_BIN/rabbitmq-server && -d $RMQ_PLUGINS_DIR ]] || {
    rmq__log "rabbitmq-server not installed (apt-get install -y rabbitmq-server)"; return 1; }
  if rmq__port_open "$mqtt_port"; then rmq__log "MQTT port $mqtt_port is already in use"; return 1; fi
  # They go verbatim into rabbitmq.conf and into amqp:// URLs: keep them to URL-safe
  # characters, so neither needs quoting or percent-encoding.
  local v
  for v in "$worker_user" "$worker_pass"; do
    [[ $v =~ ^[A-Za-z0-9._~-]+$ ]] || {
      rmq__log "RMQ_WORKER_USER/RMQ_WORKER_PASS may only hold A-Z a-z 0-9 . _ ~ -"; return 1; }
  done

  local dir; dir=$(mktemp -d "${RMQ_TMP:-${TMPDIR:-/tmp}}/locus-rmq.XXXXXX") || return 1
  # Unique per process and per call, lower case; short name @localhost (no DNS needed).
  local node; node="locus-test-$$-$(tr 'A-Z' 'a-z' <<<"${dir##*.}")@localhost"
  mkdir -p "$dir/mnesia" "$dir/log"
  : > "$dir/.locus-rmq-node"   # marker: stop only deletes dirs carrying it

  # Our own cookie in our own HOME: the node and the CLI agree, nothing read from /root or
  # /var/lib/rabbitmq. Erlang insists on mode 400.
  # RMQ_COOKIE lets several nodes share one cookie (needed to cluster them later).
  if [[ -n ${RMQ_COOKIE:-} ]]; then printf '%s' "$RMQ_COOKIE" > "$dir/.erlang.cookie"
  else rmq__random_hex 24 > "$dir/.erlang.cookie"; fi
  chmod 400 "$dir/.erlang.cookie"

  # Empty env file, so /etc/rabbitmq/rabbitmq-env.conf (the system node's) is not read.
  : > "$dir/rabbitmq-env.conf"

  # Plugins enabled offline: the server reads this file at boot; dependencies (amqp_client,
  # ranch, ...) come implicitly. No rabbitmq_management: no HTTP port, faster boot.
  # The consistent-hash exchange type (x-consistent-hash) is for cluster mode's partitions.
  echo '[rabbitmq_mqtt,rabbitmq_auth_backend_http,rabbitmq_consistent_hash_exchange].' \
    > "$dir/enabled_plugins"

  cat > "$dir/rabbitmq.conf" <<CONF
## MQTT listener on loopback only, on the port the test chose.
mqtt.listeners.tcp.default = 127.0.0.1:$mqtt_port
## Without this a client that sends no username is logged in with mqtt.default_user/pass
## (guest/guest), which would then be sent to our HTTP backend as if it were a real user.
mqtt.allow_anonymous = false
## The defaults, spelled out: MQTT messages go to exchange amq.topic in vhost /.
mqtt.vhost = /
mqtt.exchange = amq.topic
## Retained messages: the default store (DETS file in the mnesia dir of this node).
mqtt.retained_message_store = rabbit_mqtt_retained_msg_store_dets

## Authentication: first the internal user database, which holds ONE user, the locusd
## workers' AMQP user below (no guest: default_user replaces it); every other name (the
## devices, over MQTT) falls through to our HTTP server. A user is then authorised by the
## backend that authenticated it: the worker by its internal permissions, devices by HTTP.
## guest/guest is refused by internal (no such user) and then asked of the HTTP backend.
auth_backends.1 = internal
auth_backends.2 = http
## POST sends the fields as an application/x-www-form-urlencoded body (GET: query string).
auth_http.http_method = post
auth_http.user_path = $auth_url/user
auth_http.vhost_path = $auth_url/vhost
auth_http.resource_path = $auth_url/resource
auth_http.topic_path = $auth_url/topic

## Created when the node boots with an empty database (a node that joins a cluster later
## takes the cluster's users instead, so clustered nodes should share RMQ_WORKER_PASS).
## Note: this user may also log in over MQTT (internal is asked first), with every right:
## keep its password as secret as the token key.
default_vhost = /
default_user = $worker_user
default_pass = $worker_pass
default_user_tags.administrator = true
default_permissions.configure = .*
default_permissions.read = .*
default_permissions.write = .*

log.file.level = $level
log.console = false
CONF

  # Everything the server and the CLI need, kept in the dir so `stop NODE DIR` and `ctl`
  # can find the node again from another process.
  cat > "$dir/env.sh" <<ENV
export HOME='$dir'
export RABBITMQ_NODENAME='$node'
# AMQP 0-9-1 listener (locusd workers in cluster mode), loopback only.
export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
export RABBITMQ_NODE_PORT=$amqp_port
# Erlang distribution port (default would be AMQP port + 20000; pick a free one instead).
export RABBITMQ_DIST_PORT=$dist_port
# epmd on this port: private to the node unless RMQ_EPMD_PORT was given (clustered nodes on
# one host share one). The first node to boot starts it (epmd -daemon, outside our process
# group); later nodes and the CLI register with the running one.
export ERL_EPMD_PORT=$epmd_port
export ERL_EPMD_ADDRESS=127.0.0.1
export RABBITMQ_CONF_ENV_FILE='$dir/rabbitmq-env.conf'
export RABBITMQ_CONFIG_FILE='$dir/rabbitmq.conf'
# Does not exist on purpose: keeps /etc/rabbitmq/advanced.config out.
export RABBITMQ_ADVANCED_CONFIG_FILE='$dir/advanced.config'
export RABBITMQ_ENABLED_PLUGINS_FILE='$dir/enabled_plugins'
export RABBITMQ_PLUGINS_DIR='$RMQ_PLUGINS_DIR'
# Mnesia, quorum/stream data, feature flags file, plugins-expand dir all go under here.
export RABBITMQ_MNESIA_BASE='$dir/mnesia'
export RABBITMQ_LOG_BASE='$dir/log'
export RABBITMQ_PID_FILE='$dir/rabbitmq.pid'
# Bind the distribution listener to loopback too (default is all interfaces).
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
ENV

  # What `start` prints, kept for kill, restart and join (and for cluster.sh).
  cat > "$dir/node.vars" <<VARS
RMQ_NODE=$node
RMQ_DIR=$dir
RMQ_MQTT_PORT=$mqtt_port
RMQ_AMQP_PORT=$amqp_port
RMQ_EPMD_PORT=$epmd_port
RMQ_WORKER_USER=$worker_user
RMQ_WORKER_PASS=$worker_pass
VARS

  local t0; t0=$(date +%s.%N)
  if ! rmq__launch "$dir"; then
    rmq_node_stop "$node" "$dir" >&2 || true
    return 1
  fi
  cat "$dir/node.vars"
  echo "RMQ_START_SECONDS=$(rmq__since "$t0")"
}

rmq__since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

# Starts the node of DIR (made by rmq_node_start; fresh or after `kill`) and waits until it
# is ready. On failure prints the log tail and returns 1, leaving the process to the caller.
rmq__launch() {
  local dir=$1
  (
    cd "$dir"
    . "$dir/env.sh"
    # Foreground mode of the real script (not -detached): it runs beam as its child and
    # turns SIGTERM into a graceful stop. setsid makes it a process-group leader, so stop
    # can TERM/KILL the whole group (beam, erl_child_setup, inet_gethost) by its id.
    setsid "$RMQ_BIN/rabbitmq-server" >> "$dir/log/stdout.log" 2>&1 < /dev/null &
    echo $! > "$dir/launcher.pid"
  )
  rmq__await "$dir" "$(cat "$dir/launcher.pid")"
}

# Waits for the node of DIR to be ready: polls the MQTT port (costs nothing) while the
# launcher LPID is alive, then one `await_startup` to be sure the whole boot sequence is
# done (the listener opens late, so this returns immediately in practice).
rmq__await() {
  local dir=$1 lpid=$2 timeout=${RMQ_START_TIMEOUT:-90}
  local node mqtt_port; node=$(rmq__var "$dir" RMQ_NODE); mqtt_port=$(rmq__var "$dir" RMQ_MQTT_PORT)
  local deadline=$((SECONDS + timeout))
  until rmq__port_open "$mqtt_port"; do
    if ! rmq__alive "$lpid" || (( SECONDS >= deadline )); then
      rmq__log "node $node did not open MQTT port $mqtt_port (log follows)"
      rmq__log_tail "$dir"
      return 1
    fi
    sleep 0.2
  done
  if ! rmq__cli "$dir" rabbitmqctl -q await_startup --timeout "$timeout" >/dev/null; then
    rmq__log "await_startup failed for $node"; rmq__log_tail "$dir"; return 1
  fi
}

rmq_node_stop() {
  local node=${1:?usage: stop NODE DIR} dir=${2:?usage: stop NODE DIR}
  if [[ ! -f $dir/.locus-rmq-node || ! -f $dir/env.sh ]]; then
    [[ -e $dir ]] && { rmq__log "$dir was not made by this script; not touching it"; return 1; }
    return 0   # already stopped and removed
  fi
  local epmd_port; epmd_port=$(sed -n 's/^export ERL_EPMD_PORT=//p' "$dir/env.sh")
  local lpid=""; [[ -f $dir/launcher.pid ]] && lpid=$(cat "$dir/launcher.pid")

  if [[ -n $lpid ]] && rmq__alive "$lpid"; then
    # Graceful: stop the node; with the pid file argument rabbitmqctl also waits until the
    # OS process is gone. Bounded (RMQ_STOP_TIMEOUT, default 20 s), because a wedged node
    # must not hang the test run: a CLI that cannot authenticate (wrong cookie) was seen to
    # hang rather than fail; the TERM fallback below then stopped the node cleanly.
    local bpid=""; [[ -f $dir/rabbitmq.pid ]] && bpid=$(cat "$dir/rabbitmq.pid")
    if [[ -n $bpid ]]; then
      timeout "${RMQ_STOP_TIMEOUT:-20}" bash -c '. "$1/env.sh"; cd "$1"; exec "$2/rabbitmqctl" -q -n "$3" stop "$4"' \
        _ "$dir" "$RMQ_BIN" "$node" "$dir/rabbitmq.pid" >/dev/null 2>&1 || true
    else
      timeout "${RMQ_STOP_TIMEOUT:-20}" bash -c '. "$1/env.sh"; cd "$1"; exec "$2/rabbitmqctl" -q -n "$3" stop' \
        _ "$dir" "$RMQ_BIN" "$node" >/dev/null 2>&1 || true
    fi
    for _ in $(seq 1 50); do rmq__alive "$lpid" || break; sleep 0.2; done
    # Still there: SIGTERM the group (the launcher turns it into a graceful stop), then KILL.
    if rmq__alive "$lpid"; then
      rmq__log "graceful stop of $node failed; sending TERM to process group $lpid"
      kill -TERM -- "-$lpid" 2>/dev/null || true
      for _ in $(seq 1 50); do rmq__alive "$lpid" || break; sleep 0.2; done
      kill -KILL -- "-$lpid" 2>/dev/null || true
    fi
  fi
  # The epmd daemonised itself out of our process group; ask it to exit. epmd refuses
  # (`Killing not allowed - living nodes in database`) while any node is registered with
  # it, so on a shared epmd port this ends epmd only when the last node stops (a CLI call
  # registered at that moment also keeps it alive: cluster.sh kills it again at the end).
  [[ -n $epmd_port ]] && epmd -port "$epmd_port" -kill >/dev/null 2>&1 || true
  rm -rf -- "$dir"
}

# kill -9 of the node's whole process group (launcher, beam, erl_child_setup); DIR stays,
# so `restart DIR` brings the same node back (same name, ports and data; a clustered node
# rejoins its cluster by itself). epmd (not in the group) stays.
rmq_node_kill() {
  local node=${1:?usage: kill NODE DIR} dir=${2:?usage: kill NODE DIR}
  [[ -f $dir/.locus-rmq-node && -f $dir/node.vars ]] || { rmq__log "$dir: no node made by this script"; return 1; }
  [[ $(rmq__var "$dir" RMQ_NODE) == "$node" ]] || { rmq__log "$dir holds $(rmq__var "$dir" RMQ_NODE), not $node"; return 1; }
  local lpid; lpid=$(cat "$dir/launcher.pid" 2>/dev/null) || return 0
  kill -KILL -- "-$lpid" 2>/dev/null || true
  for _ in $(seq 1 50); do rmq__alive "$lpid" || return 0; sleep 0.1; done
  rmq__log "process group $lpid of $node still alive after kill -9"; return 1
}

rmq_node_restart() {
  local dir=${1:?usage: restart DIR}
  [[ -f $dir/.locus-rmq-node && -f $dir/node.vars ]] || { rmq__log "$dir: no node made by this script"; return 1; }
  local lpid; lpid=$(cat "$dir/launcher.pid" 2>/dev/null || true)
  if [[ -n $lpid ]] && rmq__alive "$lpid"; then
    rmq__log "$(rmq__var "$dir" RMQ_NODE) is running (launcher $lpid)"; return 1
  fi
  local t0; t0=$(date +%s.%N)
  rmq__launch "$dir" || return 1
  cat "$dir/node.vars"
  echo "RMQ_START_SECONDS=$(rmq__since "$t0")"
}

# Makes the running node of DIR a member of SEED's cluster: stop_app, reset (drops this
# node's own users, queues, ...: it takes the cluster's), join_cluster, start_app, then
# waits as `start` does. Both nodes need the same cookie (RMQ_COOKIE) and the same epmd
# port (RMQ_EPMD_PORT) — checked first with a ping of SEED from DIR's settings.
rmq_node_join() {
  local dir=${1:?usage: join DIR SEED_NODE} seed=${2:?usage: join DIR SEED_NODE}
  [[ -f $dir/.locus-rmq-node && -f $dir/node.vars ]] || { rmq__log "$dir: no node made by this script"; return 1; }
  local node; node=$(rmq__var "$dir" RMQ_NODE)
  if ! rmq__cli_to "$dir" "$seed" rabbitmqctl -q --timeout 15 ping >/dev/null 2>&1; then
    rmq__log "$node cannot reach $seed: same RMQ_COOKIE and RMQ_EPMD_PORT? is it running?"
    return 1
  fi
  local t0; t0=$(date +%s.%N)
  # The CLI prints harmless feature-flag warnings and "[error] Failed to create a tracked
  # connection table ... node_not_running" lines while joining: kept in log/join.log.
  { rmq__cli "$dir" rabbitmqctl -q stop_app &&
      rmq__cli "$dir" rabbitmqctl -q reset &&
      rmq__cli "$dir" rabbitmqctl -q join_cluster "$seed" &&
      rmq__cli "$dir" rabbitmqctl -q start_app; } >> "$dir/log/join.log" 2>&1 || {
    rmq__log "joining $node to $seed failed (log/join.log follows)"
    tail -n 20 "$dir/log/join.log" >&2; rmq__log_tail "$dir"; return 1; }
  rmq__await "$dir" "$(cat "$dir/launcher.pid")" || return 1
  echo "RMQ_JOIN_SECONDS=$(rmq__since "$t0")"
}

rmq_fake_auth() {
  local port=${1:?usage: fake-auth PORT [RULES_JSON]}
  RULES=${2:-} exec python3 - "$port" <<'PY'
"""Fake RabbitMQ HTTP auth backend. One JSON line per request on stdout:
{"path": "/auth/topic", "form": {...}, "raw": "<body>", "answer": "allow"}.
Answers "allow" unless the rules file (re-read per request) says otherwise:
  {"deny_users": ["bad"], "user_answer": "allow tag1 tag2", "vhost_answer": "deny",
   "deny_topic_prefix": ["couriers.c2."], "deny_resource_names": ["mqtt-subscription-c2qos1"]}"""
import json, os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit
RULES = os.environ.get("RULES", "")
def rules():
    try:
        with open(RULES) as f: return json.load(f)
    except Exception: return {}
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without TCP_NODELAY each request costs ~40 ms
    # (Nagle + delayed ACK). With it, a check takes ~1 ms.
    disable_nagle_algorithm = True
    def log_message(self, *a): pass
    def do_POST(self):
        u = urlsplit(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n).decode() if n else u.query
        form = dict(parse_qsl(raw, keep_blank_values=True))
        r, ans = rules(), "allow"
        if u.path.endswith("/user"):
            ans = "deny" if form.get("username") in r.get("deny_users", []) else r.get("user_answer", "allow")
        elif u.path.endswith("/vhost"):
            ans = r.get("vhost_answer", "allow")
        elif u.path.endswith("/resource"):
            ans = "deny" if form.get("name") in r.get("deny_resource_names", []) else "allow"
        elif u.path.endswith("/topic"):
            rk = form.get("routing_key", "")
            ans = "deny" if any(rk.startswith(p) for p in r.get("deny_topic_prefix", [])) else "allow"
        print(json.dumps({"method": self.command, "path": u.path, "form": form, "raw": raw,
                          "answer": ans}), flush=True)
        out = ans.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST
srv = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H)
print(json.dumps({"listening": srv.server_address[1]}), flush=True)
srv.serve_forever()
PY
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  cmd=${1:-}; shift || true
  case $cmd in
    start) rmq_node_start "$@" ;;
    stop) rmq_node_stop "$@" ;;
    kill) rmq_node_kill "$@" ;;
    restart) rmq_node_restart "$@" ;;
    join) rmq_node_join "$@" ;;
    ctl) d=${1:?usage: ctl DIR args...}; shift; rmq__cli "$d" rabbitmqctl "$@" ;;
    diag) d=${1:?usage: diag DIR args...}; shift; rmq__cli "$d" rabbitmq-diagnostics "$@" ;;
    fake-auth) rmq_fake_auth "$@" ;;
    *) sed -n '2,/^# Example/p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
  esac
fi
