#!/usr/bin/env bash
# A throwaway Redis (Debian's redis-server) on 127.0.0.1 for the integration tests.
#   scripts/redis.sh start   # start it daemonized and wait until the labelgate user gets PONG
#   scripts/redis.sh stop    # shut it down and delete its run dir
#   scripts/redis.sh status
# REDIS_PORT (16379), REDIS_PASSWORD (labelgate-test) override. With REDIS_TLS_PORT set (16380) it
# also listens with TLS, on a self-signed CA + server cert made in the run dir, and start prints
# the CA's path on stdout (its only stdout; messages go to stderr) for `ca=$(scripts/redis.sh start)`.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
port=${REDIS_PORT:-16379}
tls_port=${REDIS_TLS_PORT:-}
password=${REDIS_PASSWORD:-labelgate-test}
run=${REDIS_RUN_DIR:-/tmp/labelgate-redis-$port}

# The password goes through the environment so that it stays out of `ps`.
cli() { REDISCLI_AUTH=$password redis-cli -h 127.0.0.1 -p "$port" --user labelgate --no-auth-warning "$@"; }

certs() {
  [ -f "$run/tls/server.crt" ] && return
  test_certs "$run/tls" "labelgate test CA" serverAuth redis.sh
}

start() {
  command -v redis-server >/dev/null || { echo "redis.sh: redis-server is needed (Debian package redis-server)" >&2; exit 1; }
  if [ -f "$run/pid" ] && kill -0 "$(cat "$run/pid")" 2>/dev/null; then
    echo "redis.sh: already running on 127.0.0.1:$port" >&2
    if [ -n "$tls_port" ]; then echo "$run/tls/ca.crt"; fi
    return
  fi
  mkdir -p "$run"; rm -f "$run/pid" "$run/redis.log"
  chmod 700 "$run"
  if [ -n "$tls_port" ]; then certs; fi
  # No persistence: the tests own their keys. The default user is off so that tests must use the
  # ACL user the service is configured with; -@dangerous drops FLUSHALL, KEYS, CONFIG, DEBUG...,
  # while scripting (EVAL/EVALSHA), MULTI/EXEC, SCAN, DEL and EXPIRE stay allowed.
  cat > "$run/redis.conf" <<CONF
bind 127.0.0.1
port $port
daemonize yes
pidfile $run/pid
logfile $run/redis.log
dir $run
save ""
appendonly no
user default off
user labelgate on >$password ~labelgate* +@all -@dangerous +info +ping +client
CONF
  if [ -n "$tls_port" ]; then
    cat >> "$run/redis.conf" <<CONF
tls-port $tls_port
tls-cert-file $run/tls/server.crt
tls-key-file $run/tls/server.key
tls-ca-cert-file $run/tls/ca.crt
tls-auth-clients no
CONF
  fi
  chmod 600 "$run/redis.conf"
  redis-server "$run/redis.conf" >"$run/stdout.log" 2>&1 || {
    echo "redis.sh: redis-server failed to start" >&2; tail -20 "$run/stdout.log" "$run/redis.log" >&2 2>/dev/null; exit 1; }
  for _ in $(seq 1 40); do
    if [ "$(cli ping 2>/dev/null)" = PONG ]; then
      echo "redis.sh: redis up on 127.0.0.1:$port${tls_port:+ and TLS on 127.0.0.1:$tls_port} (user labelgate; logs in $run)" >&2
      if [ -n "$tls_port" ]; then echo "$run/tls/ca.crt"; fi
      return
    fi
    # Fail fast when the daemon died (port taken, bad config) instead of waiting out the timeout.
    if { [ -f "$run/pid" ] && ! kill -0 "$(cat "$run/pid")" 2>/dev/null; } || grep -qiE 'aborting|fatal' "$run/redis.log" 2>/dev/null; then
      echo "redis.sh: redis-server exited; log tail ($run/redis.log):" >&2; tail -20 "$run/redis.log" >&2; exit 1
    fi
    sleep 0.5
  done
  echo "redis.sh: redis did not answer PING as user labelgate on 127.0.0.1:$port within 20 s; log tail:" >&2
  tail -20 "$run/redis.log" >&2 2>/dev/null || true
  exit 1
}

stop() { stop_run_dir "$run" 10; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if [ "$(cli ping 2>/dev/null)" = PONG ]; then echo "up on 127.0.0.1:$port${tls_port:+ (TLS on $tls_port)}"; else echo "down"; exit 1; fi ;;
  *) echo "usage: scripts/redis.sh start|stop|status" >&2; exit 2 ;;
esac
