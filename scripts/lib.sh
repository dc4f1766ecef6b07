# Shared by kafka.sh and redis.sh (sourced, not run).

# stop_run_dir DIR SECONDS: TERM the process in DIR/pid, KILL it after SECONDS, remove DIR.
# (Signals, not a client SHUTDOWN: the Redis ACL user may not run it.)
stop_run_dir() {
  local dir=$1 seconds=$2
  if [ -f "$dir/pid" ]; then
    local pid; pid=$(cat "$dir/pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((seconds * 2))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}

# test_certs DIR CA_NAME USAGES WHO: a throw-away CA (DIR/ca.crt) and a server certificate for
# 127.0.0.1 signed by it (DIR/server.key, DIR/server.crt); USAGES is the extendedKeyUsage list.
# openssl's chatter goes to DIR/openssl.log, shown (prefixed by WHO) only when it fails.
test_certs() {
  local dir=$1 ca_name=$2 usages=$3 who=$4
  command -v openssl >/dev/null || { echo "$who: openssl is needed for TLS" >&2; exit 1; }
  mkdir -p "$dir"
  (
    cd "$dir"
    openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days 365 -subj "/CN=$ca_name" \
      -keyout ca.key -out ca.crt
    openssl req -new -nodes -newkey rsa:2048 -sha256 -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
    # Clients check the name they dialled against the SAN, not the CN.
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=%s\n' "$usages" > server.ext
    openssl x509 -req -sha256 -days 365 -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
      -extfile server.ext -out server.crt
  ) >"$dir/openssl.log" 2>&1 || { echo "$who: openssl failed" >&2; cat "$dir/openssl.log" >&2; exit 1; }
}
