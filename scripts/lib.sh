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
