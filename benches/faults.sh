#!/usr/bin/env bash
# Fault soak for "never silently stuck": the gate under broker SIGKILL + restarts and broker stalls
# (SIGSTOP), with /readyz, /healthz and its progress sampled every second, then a read_committed
# check that every input record is in exactly one output (benches/chaos.py verify), that /metrics
# and the DLQ headers carry no control byte from hostile ids, that promtool accepts /metrics, and a
# start with a wrong Redis password. A gate that exits is restarted at once, as a supervisor would
# (an exit on a fatal client error is the designed path: counted, not a violation).
#   benches/faults.sh           # 10 broker restarts, stalls of 30 s (idle) and 75 s (a window in flight)
#   benches/faults.sh --short   # CI: 3 broker restarts, a 30 s stall with a window in flight
# Needs the broker and Redis of scripts/kafka.sh and scripts/redis.sh (see benches/soak_lib.sh);
# FAULTS_METRICS_PORT (29474), FAULTS_OUT (output dir) override. Prints the figures and exits
# non-zero on any missed target.
set -euo pipefail
cd "$(dirname "$0")/.."
restarts=10 stalls="30:idle 75:window" records=30000 deliveries=30
if [ "${1:-}" = --short ]; then restarts=3 stalls="30:window" records=12000 deliveries=12; fi
. benches/soak_lib.sh
port=${FAULTS_METRICS_PORT:-29474}
id=faults$(date +%s)
out=${FAULTS_OUT:-$(pwd)/target/faults/$id}
mkdir -p "$out"
[ -f "$krun/pid" ] || { echo "faults.sh: no broker run dir $krun: start it with scripts/kafka.sh start" >&2; exit 1; }
cargo build --release -q
start_s=$(date +%s)
log() { echo "faults.sh [$(( $(date +%s) - start_s ))s] $*" >&2; }
now() { date +%s.%N; }
since() { printf %.1f "$(echo "$(now) - $1" | bc)"; }
failures=()
fail() { failures+=("$*"); log "MISSED: $*"; }

# 1. A wrong Redis password: the gate exits at once, naming the credential settings.
t0=$(now) rc=0
(redis_password=wrong-password gate_env "$id-pw" A "$port" timeout 60 ./target/release/labelgate run) >"$out/wrong-password.log" 2>&1 || rc=$?
pw_secs=$(since "$t0")
if [ "$rc" = 0 ] || [ "$rc" = 124 ] || ! grep -q 'state.redis.username / state.redis.password' "$out/wrong-password.log"; then
  fail "wrong Redis password: rc $rc after $pw_secs s, message: $(tail -1 "$out/wrong-password.log" | cut -c1-300)"
elif [ "$(echo "$pw_secs > 5" | bc)" = 1 ]; then fail "wrong Redis password: exit after $pw_secs s (target 5 s)"; fi
log "wrong Redis password: exit $rc after $pw_secs s"

# 2. The gate, supervised, on a stream fed chunk by chunk.
t=$id
create_input_topic "$t.annotations" "$out" || exit 1
python3 benches/chaos.py gen "$out" "$records" "$deliveries" "$id" > "$out/gen.json"
produce() { kcat -P -b "$bootstrap" -t "$t.annotations" -K $'\t' -X message.max.bytes=4194304 -X linger.ms=50 "$@"; }
chunks=("$out"/main-*.txt) fed=0
feed_one() { if [ "$fed" -lt ${#chunks[@]} ]; then produce -l "${chunks[$fed]}"; fed=$((fed + 1)); fi; }

gate_pid= exits=0 fatal_exits=0 starts=0 probe_restarts=0 probe_failures=0 last_probe=0
start_gate() {
  echo "=== start $(date -u +%T.%N)" >>"$out/gate.log"
  local create=(); [ "$starts" -gt 0 ] || create=(--create-topics 4)
  gate_env "$t" A "$port" ./target/release/labelgate run "${create[@]}" >>"$out/gate.log" 2>&1 &
  gate_pid=$! starts=$((starts + 1))
  echo "$gate_pid" > "$out/gate.pid"
}
# Restarts a gate that exited, as a supervisor would, or that failed its liveness probe three
# times in a row, 5 s apart (the chart's probe: periodSeconds 5, failureThreshold 3); counts why.
supervise() {
  if [ -n "$gate_pid" ] && [ $(( $(date +%s) - last_probe )) -ge 5 ]; then
    last_probe=$(date +%s)
    if [ "$(status_of "$port" /healthz)" = 503 ]; then probe_failures=$((probe_failures + 1)); else probe_failures=0; fi
    if [ "$probe_failures" -ge 3 ]; then
      log "liveness probe failed 3 times ($(curl -s --max-time 1 "http://127.0.0.1:$port/healthz")): SIGKILL and restart"
      kill -9 "$gate_pid" 2>/dev/null || true; wait "$gate_pid" 2>/dev/null || true
      probe_restarts=$((probe_restarts + 1)) probe_failures=0
      start_gate
      return
    fi
  fi
  if [ -n "$gate_pid" ] && ! kill -0 "$gate_pid" 2>/dev/null; then
    local rc=0; wait "$gate_pid" || rc=$?
    exits=$((exits + 1))
    if tail -3 "$out/gate.log" | grep -q 'fatal error'; then fatal_exits=$((fatal_exits + 1)); fi
    log "gate exited with $rc: $(grep -v '^===' "$out/gate.log" | tail -1 | cut -c1-300)"
    start_gate
  fi
}
trap '[ -z "$gate_pid" ] || kill -9 "$gate_pid" 2>/dev/null || true; [ -z "${sampler:-}" ] || kill "$sampler" 2>/dev/null || true; [ -z "${kbroker:-}" ] || kill -CONT "$kbroker" 2>/dev/null || true' EXIT
# A CI timeout or ^C must not leave the suite's broker stopped: through the EXIT trap.
trap 'exit 143' TERM
trap 'exit 130' INT

# The sampler: every second, the gate's pid, /readyz, /healthz, what it routed and buffers, its lag
# gauge, and whether the broker is down on purpose (a file this script keeps).
echo up > "$out/broker"
(
  while :; do
    body=$(curl -sf --max-time 1 "http://127.0.0.1:$port/metrics" 2>/dev/null || true)
    # A series not there yet (nothing routed) is 0; -1 only when /metrics does not answer.
    sum() { [ -n "$body" ] || { printf -- -1; return; }; awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%d", s }' <<<"$body"; }
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(date +%s.%N)" "$(cat "$out/gate.pid" 2>/dev/null)" "$(status_of "$port" /readyz)" \
      "$(status_of "$port" /healthz)" "$(sum labelgate_records_total)" "$(sum labelgate_buffered_records)" \
      "$(sum labelgate_consumer_lag_records)" "$(cat "$out/broker")"
    sleep 1
  done
) > "$out/samples.tsv" 2>/dev/null &
sampler=$!

start_gate
feed_one
# wait_until WHAT SECS COMMAND...: true once COMMAND succeeds, within SECS (supervising meanwhile).
wait_until() {
  local what=$1 limit=$2 t0; t0=$(now); shift 2
  while ! "$@"; do
    supervise
    if [ "$(echo "$(now) - $t0 > $limit" | bc)" = 1 ]; then log "$what: not within $limit s"; return 1; fi
    sleep 0.25
  done
}
ready() { [ "$(status_of "$port" /readyz)" = 200 ]; }
routed_or_buffered() { local r b; r=$(metric "$port" labelgate_records_total) b=$(metric "$port" labelgate_buffered_records); [ "$r" -ge 0 ] && echo $((r + b)) || echo -1; }
# consuming_since PID BASE: the gate consumed since BASE was read (or a new process has consumed).
# (A BASE of -1, read while nothing answered, counts as 0: a new process must have consumed.)
consuming_since() { local c; c=$(routed_or_buffered); { [ "$gate_pid" != "$1" ] && [ "$c" -gt 0 ]; } || [ "$c" -gt "$(( $2 < 0 ? 0 : $2 ))" ]; }
window_in_flight() {
  local started done failed
  started=$(metric "$port" labelgate_windows_started_total) done=$(metric "$port" labelgate_windows_total) failed=$(metric "$port" labelgate_windows_failed_total)
  [ "$started" -gt $(( done + (failed < 0 ? 0 : failed) )) ]
}
all_routed() { [ "$(metric "$port" labelgate_buffered_records)" = 0 ] && ! window_in_flight; }
wait_until "first ready" 120 ready || fail "the gate never became ready"
wait_until "first records" 120 consuming_since "$gate_pid" 0 || true

# 3. Broker SIGKILL + restart, each followed by new input and a check that the gate consumes it.
resume=()
for i in $(seq 1 "$restarts"); do
  kbroker=$(cat "$krun/pid")
  echo down > "$out/broker"
  kill -9 "$kbroker"
  for _ in $(seq 1 60); do [ -d "/proc/$kbroker" ] && ! grep -q '^[^)]*) Z' "/proc/$kbroker/stat" 2>/dev/null || break; sleep 0.5; done
  kbroker=
  sleep $(( 2 + (i * 7) % 20 ))   # outages of 2 to 21 s
  KAFKA_PORT=$kafka_port KAFKA_RUN_DIR=$krun scripts/kafka.sh restart >>"$out/broker.log" 2>&1
  echo up > "$out/broker"
  t0=$(now) pid0=$gate_pid base=$(routed_or_buffered)
  feed_one
  if wait_until "consuming after broker restart $i" 60 consuming_since "$pid0" "$base"; then
    s=$(since "$t0"); resume+=("$s"); log "broker restart $i: consuming again after $s s (gate restarts so far: $exits)"
    [ "$(echo "$s > 30" | bc)" = 0 ] || fail "broker restart $i: consuming again only after $s s (target 30 s)"
  else
    resume+=(never); fail "broker restart $i: not consuming within 60 s"
  fi
  wait_until "ready after broker restart $i" 60 ready || fail "broker restart $i: not ready within 60 s"
done

# 4. Broker stalls: SIGSTOP for S s, idle or with a window in flight (its commit blocks).
stall_rows=()
for spec in $stalls; do
  secs=${spec%%:*} kind=${spec##*:}
  wait_until "ready before the stall" 60 ready || fail "not ready before the $secs s stall"
  if [ "$kind" = window ]; then
    feed_one
    wait_until "a window in flight" 90 window_in_flight || log "no window in flight: stalling anyway"
  else
    wait_until "the gate idle" 180 all_routed || log "the gate is not idle: stalling anyway"
  fi
  kbroker=$(cat "$krun/pid")
  echo down > "$out/broker"
  kill -STOP "$kbroker"; t0=$(now)
  to503=
  while [ "$(echo "$(now) - $t0 < $secs" | bc)" = 1 ]; do
    if [ -z "$to503" ] && [ "$(status_of "$port" /readyz)" != 200 ]; then to503=$(since "$t0"); fi
    supervise; sleep 0.25
  done
  kill -CONT "$kbroker"; kbroker=; t1=$(now)
  echo up > "$out/broker"
  to200=never
  if wait_until "ready after the stall" 60 ready; then to200=$(since "$t1"); fi
  stall_rows+=("$secs s ($kind)|${to503:-never}|$to200")
  log "stall of $secs s ($kind): /readyz 503 after ${to503:-never} s, 200 after $to200 s of SIGCONT"
  { [ -n "$to503" ] && [ "$(echo "$to503 <= 10" | bc)" = 1 ]; } || fail "stall of $secs s ($kind): /readyz 503 after ${to503:-never} s (target 10 s)"
  { [ "$to200" != never ] && [ "$(echo "$to200 <= 10" | bc)" = 1 ]; } || fail "stall of $secs s ($kind): /readyz 200 after $to200 s of SIGCONT (target 10 s)"
done

# 5. The rest of the input, the late record, then idle and stop.
while [ "$fed" -lt ${#chunks[@]} ]; do feed_one; supervise; done
produce -l "$out/oversized.txt"
idle_for() { # nothing routed for $1 s and nothing buffered
  local last=-1 since_s; since_s=$(date +%s)
  while :; do
    supervise
    local c; c=$(routed_or_buffered)
    if [ "$c" != "$last" ]; then last=$c since_s=$(date +%s); fi
    if [ $(( $(date +%s) - since_s )) -ge "$1" ] && all_routed; then return 0; fi
    [ $(( $(date +%s) - start_s )) -lt 1800 ] || return 1
    sleep 1
  done
}
idle_for 12 || fail "the gate did not route all input within the deadline"
produce -l "$out/late.txt"
sleep 3; idle_for 8 || true
curl -sf "http://127.0.0.1:$port/metrics" > "$out/metrics.txt" || true
kill -TERM "$gate_pid"; wait "$gate_pid" || true; gate_pid=
kill "$sampler" 2>/dev/null || true; sampler=

# 6. Checks on what came out.
dump_outputs "$t" "$out"
python3 benches/chaos.py verify "$out" > "$out/verify.json" || fail "exactly-once: $(python3 -c 'import json,sys; print("; ".join(json.load(open(sys.argv[1]))["problems"]))' "$out/verify.json")"
python3 - "$out" <<'PY' || fail "control bytes in /metrics or the DLQ headers (see $out)"
import sys
out = sys.argv[1]
bad = []
metrics = open(f"{out}/metrics.txt", "rb").read()
if not metrics:
    bad.append("no /metrics captured")
bad += [f"/metrics byte {b:#04x}" for b in set(metrics) if b < 0x20 and b != 0x0a]
for line in open(f"{out}/dlq.dump", "rb").read().split(b"\n"):
    headers = line.rsplit(b"\t", 1)[0]
    bad += [f"DLQ header byte {b:#04x}" for b in set(headers) if b < 0x20]
# The exposition format escapes the escapes' backslashes once more.
if b"evil-\\\\u{1b}[2J\\\\u{7}\\\\0-vendor" not in metrics:
    bad.append("the hostile vendor's series is missing from /metrics")
print("\n".join(bad) or "no control bytes", file=sys.stderr)
sys.exit(1 if bad else 0)
PY
if command -v promtool >/dev/null; then
  promtool check metrics < "$out/metrics.txt" > "$out/promtool.txt" 2>&1 || fail "promtool check metrics: $(head -3 "$out/promtool.txt")"
fi
# The longest time, counted from the broker's restart (its outages excluded), with input waiting
# (the lag gauge, which the monitor reads from the broker's watermarks), nothing consumed and
# /healthz 200.
stuck=$(python3 - "$out" <<'PY'
import sys
rows = [l.split("\t") for l in open(f"{sys.argv[1]}/samples.tsv").read().splitlines()]
longest, start, prev = 0.0, None, None
for ts, pid, ready, health, routed, buffered, lag, broker in rows:
    ts = float(ts)
    progress = (pid, int(routed) + int(buffered)) if int(routed) >= 0 else None
    waiting = int(lag) > 0
    stuck = broker == "up" and health == "200" and waiting and progress is not None and progress == prev
    if stuck:
        start = start if start is not None else ts
        longest = max(longest, ts - start)
    else:
        start = None
    prev = progress
print(f"{longest:.0f}")
PY
) || { fail "the samples could not be read"; stuck=0; }
[ "$stuck" -le 60 ] || fail "a period of $stuck s with input waiting, nothing consumed and /healthz 200 (target 60 s)"
health_503=$(awk -F'\t' '$4 == 503' "$out/samples.tsv" | wc -l)
# The gate's log lines per broker outage (from the kill to 10 s after the restart), the most of any.
outage_lines=$(python3 - "$out" <<'PY'
import datetime, sys
out = sys.argv[1]
rows = [l.split("\t") for l in open(f"{out}/samples.tsv").read().splitlines()]
spans, start = [], None
for r in rows:
    ts, broker = float(r[0]), r[7]
    if broker == "down" and start is None:
        start = ts
    elif broker == "up" and start is not None:
        spans.append((start, ts + 10)); start = None
stamps = []
for line in open(f"{out}/gate.log", errors="replace"):
    try:
        stamps.append(datetime.datetime.fromisoformat(line[:27].rstrip("Z") + "+00:00").timestamp())
    except ValueError:
        pass
counts = [sum(1 for t in stamps if a <= t <= b) for a, b in spans]
print(f"{max(counts) if counts else 0} (over {len(counts)} outages)")
PY
) || outage_lines="(not measured)"

if python3 - "$out" "$pw_secs" "$exits" "$fatal_exits" "$stuck" "$health_503" "$(( $(date +%s) - start_s ))" "${resume[*]}" "$probe_restarts" "$outage_lines" "${stall_rows[@]}" <<'PY'
import json, sys
out, pw, exits, fatal, stuck, h503, run_s, resume, probed, outage_lines = sys.argv[1:11]
stalls = sys.argv[11:]
v = json.load(open(f"{out}/verify.json"))
print("| records (valid + bad) | deliveries | verdicts | lost | duplicated | valid in DLQ | broker restarts: consuming again after (s) | gate exits (fatal) | liveness-probe restarts | longest stuck with /healthz 200 | /healthz 503 samples | wrong Redis password: exit after | run |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
print(f"| {v['input_records']:,} ({v['valid']:,} + {v['bad']}) | {v['deliveries']} | {v['verdicts']} | {v['lost']} | {v['duplicated']} | {v['valid_in_dlq']} | {resume} | {exits} ({fatal}) | {probed} | {stuck} s | {h503} | {pw} s | {run_s} s |")
print()
print("| broker stall | /readyz 503 after (s) | /readyz 200 after SIGCONT (s) |")
print("|---|---|---|")
for row in stalls:
    print("| " + " | ".join(row.split("|")) + " |")
print()
print(f"- most log lines in one broker outage (kill to 10 s after the restart): {outage_lines}")
for p in v["problems"]:
    print(f"- VIOLATION: {p}")
PY
then :; else fail "the summary could not be printed"; fi
if [ ${#failures[@]} -gt 0 ]; then
  printf 'faults.sh: MISSED: %s\n' "${failures[@]}" >&2
  echo "faults.sh: FAILED (details in $out)" >&2; exit 1
fi
echo "faults.sh: every target met (details in $out)" >&2
