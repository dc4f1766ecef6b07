#!/usr/bin/env bash
# Chaos soak: the gate under SIGKILLs (some mid-window), a broker SIGKILL + restart on its data, a
# Redis SIGKILL + restart, two replicas for part of the run and every bad-input kind of the wire
# contract (a 2 MiB oversized record included); then a read_committed reader checks that every
# input record (by partition/offset and by batch_id + sample_id) is in exactly one output, that no
# valid record is dead-lettered, that each bad record has its documented reason and that each
# delivery has one verdict. Prints the figures (resume time after each kill included) and exits
# non-zero on any violated invariant.
#   benches/chaos.sh           # full soak: 200,000 records, 101 deliveries, 10 gate kills (5 mid-window)
#   benches/chaos.sh --short   # CI: 20,000 records, 21 deliveries, 3 kills (1 mid-window)
# Needs a running broker and Redis started by scripts/kafka.sh and scripts/redis.sh (it kills and
# restarts them through their run dirs): KAFKA_PORT (19092) / LABELGATE_KAFKA_BOOTSTRAP,
# REDIS_PORT (16379) / LABELGATE_REDIS_URL, LABELGATE_REDIS_USER, LABELGATE_REDIS_PASSWORD or
# REDIS_PASSWORD. Overrides: CHAOS_RECORDS, CHAOS_DELIVERIES, CHAOS_KILLS, CHAOS_MID_KILLS,
# CHAOS_BROKER_KILL (1/0), CHAOS_REDIS_KILL (1/0), CHAOS_REPLICAS (2/1), CHAOS_DEADLINE_SECS,
# CHAOS_METRICS_PORT (29464; replica B uses +1), CHAOS_OUT (output dir).
set -euo pipefail
cd "$(dirname "$0")/.."
records=200000 deliveries=101 kills=10 mid_kills=5 broker_kill=1 redis_kill=1 replicas=2 deadline=1800
if [ "${1:-}" = --short ]; then
  records=20000 deliveries=21 kills=3 mid_kills=1 broker_kill=1 redis_kill=1 replicas=2 deadline=300
fi
records=${CHAOS_RECORDS:-$records} deliveries=${CHAOS_DELIVERIES:-$deliveries} kills=${CHAOS_KILLS:-$kills}
mid_kills=${CHAOS_MID_KILLS:-$mid_kills} broker_kill=${CHAOS_BROKER_KILL:-$broker_kill}
redis_kill=${CHAOS_REDIS_KILL:-$redis_kill} replicas=${CHAOS_REPLICAS:-$replicas} deadline=${CHAOS_DEADLINE_SECS:-$deadline}

. benches/soak_lib.sh
metrics_port=${CHAOS_METRICS_PORT:-29464}
id=chaos$(date +%s)
out=${CHAOS_OUT:-$(pwd)/target/chaos/$id}
mkdir -p "$out"
[ -f "$krun/pid" ] || { echo "chaos.sh: no broker run dir $krun: start it with scripts/kafka.sh start (KAFKA_PORT=$kafka_port)" >&2; exit 1; }
{ [ "$broker_kill" = 0 ] && [ "$redis_kill" = 0 ]; } || [ -f "$rrun/redis.conf" ] || [ "$redis_kill" = 0 ] \
  || { echo "chaos.sh: no Redis run dir $rrun: start it with scripts/redis.sh start (REDIS_PORT=$redis_port)" >&2; exit 1; }
cargo build --release -q
start_s=$(date +%s)
log() { echo "chaos.sh [$(( $(date +%s) - start_s ))s] $*" >&2; }
now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc; }

t=$id
create_input_topic "$t.annotations" "$out" || exit 1
python3 benches/chaos.py gen "$out" "$records" "$deliveries" "$id" > "$out/gen.json"
log "input: $(cat "$out/gen.json")"
produce() { kcat -P -b "$bootstrap" -t "$t.annotations" -K $'\t' -X message.max.bytes=4194304 -X linger.ms=50 "$@"; }
produce -l "$out/oversized.txt"
chunks=("$out"/main-*.txt) fed=0 fed_records=0
chunk_records=$(( $(cat "${chunks[0]}" | wc -l) ))
lead=$(( chunk_records * 2 > 8000 ? chunk_records * 2 : 8000 ))
# feed: the input goes in chunk by chunk, kept `lead` records ahead of what is routed, so that
# every kill lands on a gate with work to resume.
feed() {
  while [ "$fed" -lt ${#chunks[@]} ] && [ $((fed_records - lead)) -le "$(cumulative)" ]; do
    produce -l "${chunks[$fed]}"; fed_records=$((fed_records + $(wc -l < "${chunks[$fed]}"))); fed=$((fed + 1))
  done
}

declare -A pid=() dead_routed=()
# The gates this script started are stopped however it ends.
cleanup() { local p; for p in "${pid[@]}"; do [ -z "$p" ] || kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
port_of() { if [ "$1" = A ]; then echo "$metrics_port"; else echo $((metrics_port + 1)); fi; }
start_gate() {
  local name=$1
  echo "=== start $(date -u +%T.%N)" >>"$out/gate-$name.log"
  # The output topics are made once, by the first start (a later start while the broker is down
  # would fail on the admin request instead of waiting for Kafka).
  local create=(); [ -n "${pid[$name]+set}" ] || [ "$name" != A ] || create=(--create-topics 4)
  gate_env "$t" "$name" "$(port_of "$name")" ./target/release/labelgate run "${create[@]}" >>"$out/gate-$name.log" 2>&1 &
  pid[$name]=$!
  dead_routed[$name]=${dead_routed[$name]:-0}
}
# routed_of NAME: what the running process NAME has routed (the last answer kept in a file, as this
# runs in command substitutions).
routed_of() {
  local v; v=$(metric "$(port_of "$1")" labelgate_records_total)
  if [ "$v" -ge 0 ]; then echo "$v" > "$out/routed-$1"; else v=$(cat "$out/routed-$1" 2>/dev/null || echo 0); fi
  echo "$v"
}
# bury NAME: the process NAME is gone; its routed count joins the dead ones'.
bury() { dead_routed[$1]=$((dead_routed[$1] + $(cat "$out/routed-$1" 2>/dev/null || echo 0))); echo 0 > "$out/routed-$1"; }
# Records routed so far by every process, the killed ones included.
cumulative() {
  local sum=0 name
  for name in "${!pid[@]}"; do
    if [ -n "${pid[$name]}" ]; then sum=$((sum + dead_routed[$name] + $(routed_of "$name"))); else sum=$((sum + dead_routed[$name])); fi
  done
  echo $sum
}
exits=() broker_exits=() broker_until=0
# Restarts a gate that exited on its own (that is a finding: reported, and a violation).
supervise() {
  local name
  for name in "${!pid[@]}"; do
    [ -n "${pid[$name]}" ] || continue
    if ! kill -0 "${pid[$name]}" 2>/dev/null; then
      local rc=0; wait "${pid[$name]}" || rc=$?
      local why; why="gate $name exited with $rc at $(( $(date +%s) - start_s ))s: $(grep -v '^===' "$out/gate-$name.log" | grep -v librdkafka | tail -2 | tr '\n' ' ' | cut -c1-400)"
      # A transaction that fails while the broker is down stops the gate by design
      # (docs/delivery-guarantee.md); any other exit is a finding.
      if [ "$(date +%s)" -le "$broker_until" ]; then broker_exits+=("$why"); log "exit during the broker outage: $why"
      else exits+=("$why"); log "UNEXPECTED EXIT: $why"; fi
      bury "$name"
      start_gate "$name"
    fi
  done
}
over() { [ $(( $(date +%s) - start_s )) -lt "$deadline" ] || { log "deadline of ${deadline}s reached"; return 0; }; return 1; }
wait_progress() { # until the cumulative routed count reaches $1
  while [ "$(cumulative)" -lt "$1" ]; do supervise; feed; over && return 1; sleep 0.5; done
}
resumes=() resume_rows=()
# wait_resume NAME T0 BASE WHAT: seconds from T0 until NAME is ready (partitions assigned, a broker
# answering) and routes again (NAME all: every process together has routed more than BASE) or,
# when its partitions hold nothing more to read, until it is ready.
wait_resume() {
  local name=$1 t0=$2 base=$3 what=$4 ready_at= g=$1
  [ "$g" = all ] && g=A
  while :; do
    supervise; feed; over && { resume_rows+=("$what|timeout|timeout"); return; }
    local port; port=$(port_of "$g")
    if [ "$(metric "$port" labelgate_ready)" = 1 ]; then
      [ -n "$ready_at" ] || ready_at=$(elapsed "$t0")
      local c; if [ "$name" = all ]; then c=$(cumulative); else c=$(routed_of "$name"); fi
      if [ "$c" -gt "$base" ] || { [ "$name" != all ] && [ "$(metric "$port" labelgate_buffered_records)" -gt 0 ]; }; then
        local s; s=$(printf %.1f "$(elapsed "$t0")") r=
        # And until it routes (commits a window or a dead letter), for at most 30 s more.
        if [ "$name" = all ]; then r=$s; else
          local until=$(( $(date +%s) + 30 ))
          while [ "$(date +%s)" -lt "$until" ]; do
            if [ "$(routed_of "$name")" -gt "$base" ]; then r=$(printf %.1f "$(elapsed "$t0")"); break; fi
            supervise; feed; sleep 0.2
          done
        fi
        resume_rows+=("$what|$s|${r:-—}"); log "$what: consuming again after $s s, routing after ${r:-(more than 30 s)} s"; return
      fi
      if [ "$(echo "$(elapsed "$t0") - $ready_at > 30" | bc)" = 1 ]; then
        resume_rows+=("$what|$(printf %.1f "$ready_at")|—"); log "$what: ready after $(printf %.1f "$ready_at") s, nothing to read"; return
      fi
    fi
    sleep 0.2
  done
}
mids_done=0 kills_done=0
kill_gate() {
  local name=$1 mid=$2 port; port=$(port_of "$name")
  if [ "$mid" = 1 ]; then
    # The planned replica, or the other one if it has a window training first (a replica may hold
    # no partitions for a while).
    local until=$(( $(date +%s) + 60 )) found= n
    while [ -z "$found" ]; do
      for n in "$name" A B; do
        [ -n "${pid[$n]:-}" ] || continue
        local p; p=$(port_of "$n")
        if [ "$(metric "$p" labelgate_windows_started_total)" -gt "$(metric "$p" labelgate_windows_total)" ]; then found=$n; break; fi
      done
      [ -n "$found" ] && break
      supervise; feed; [ "$(date +%s)" -lt "$until" ] || { mid=0; log "no window started within 60 s: a plain kill"; break; }; sleep 0.1
    done
    [ -z "$found" ] || { name=$found; port=$(port_of "$name"); }
  fi
  routed_of "$name" >/dev/null
  kill -9 "${pid[$name]}" 2>/dev/null || true; wait "${pid[$name]}" 2>/dev/null || true
  bury "$name"
  kills_done=$((kills_done + 1)); [ "$mid" = 1 ] && mids_done=$((mids_done + 1))
  local t0; t0=$(now)
  start_gate "$name"
  log "SIGKILL gate $name ($([ "$mid" = 1 ] && echo mid-window || echo between windows)), restarted"
  wait_resume "$name" "$t0" 0 "SIGKILL gate $name $([ "$mid" = 1 ] && echo mid-window || echo plain)"
}

# The schedule, by the share of the input routed: kills spread evenly, replica B from 15% to 70%,
# the broker at 45%, Redis at 60%.
total=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["records"])' "$out/gen.json")
events=()
for i in $(seq 1 "$kills"); do
  pct=$(( i * 85 / (kills + 1) + 3 ))
  events+=("$pct kill $i")
done
[ "$replicas" -ge 2 ] && events+=("15 b-start" "70 b-stop")
[ "$broker_kill" = 1 ] && events+=("46 broker")
[ "$redis_kill" = 1 ] && events+=("61 redis")
mapfile -t events < <(printf '%s\n' "${events[@]}" | sort -n -k1,1)
b_running=0
start_gate A
for ev in "${events[@]}"; do
  read -r pct what arg <<<"$ev"
  wait_progress $(( total * pct / 100 )) || break
  case $what in
    kill)
      left=$((kills - arg + 1)); need=$((mid_kills - mids_done))
      mid=0; { [ "$need" -gt 0 ] && { [ $((arg % 2)) = 1 ] || [ "$left" -le "$need" ]; }; } && mid=1
      target=A; [ "$b_running" = 1 ] && [ $((arg % 2)) = 0 ] && target=B
      kill_gate "$target" "$mid" ;;
    b-start) start_gate B; b_running=1; log "replica B started" ;;
    b-stop) kill -TERM "${pid[B]}"; wait "${pid[B]}" || true; bury B; pid[B]=; b_running=0
      log "replica B stopped (SIGTERM)" ;;
    broker)
      base=$(cumulative)
      broker_until=$(( $(date +%s) + 600 ))
      kbroker=$(cat "$krun/pid"); kill -9 "$kbroker"; log "SIGKILL broker"
      for _ in $(seq 1 60); do [ -d "/proc/$kbroker" ] && ! grep -q '^[^)]*) Z' "/proc/$kbroker/stat" 2>/dev/null || break; sleep 0.5; done
      sleep 1
      KAFKA_PORT=$kafka_port KAFKA_RUN_DIR=$krun scripts/kafka.sh restart
      wait_resume all "$(now)" "$base" "SIGKILL broker (from its restart)"
      broker_until=$(( $(date +%s) + 5 )) ;;
    redis)
      base=$(cumulative)
      kill -9 "$(cat "$rrun/pid")"; log "SIGKILL redis"; sleep 2
      t0=$(now); redis-server "$rrun/redis.conf" >>"$rrun/stdout.log" 2>&1
      wait_resume all "$t0" "$base" "SIGKILL redis (from its restart)" ;;
  esac
done
if [ "$b_running" = 1 ]; then kill -TERM "${pid[B]}"; wait "${pid[B]}" || true; bury B; pid[B]=; fi

# Done when nothing is buffered, no window runs and nothing was routed for 12 s; then the late record.
wait_idle() {
  local last=-1 since; since=$(date +%s)
  while :; do
    supervise; feed; over && return 1
    local c; c=$(cumulative)
    if [ "$c" != "$last" ]; then last=$c; since=$(date +%s); fi
    # (Not labelgate_consumer_lag_records: it was seen stuck at thousands with the group at its end.)
    if [ $(( $(date +%s) - since )) -ge 12 ] && [ "$(metric "$metrics_port" labelgate_buffered_records)" = 0 ] \
      && [ "$(metric "$metrics_port" labelgate_windows_started_total)" = "$(metric "$metrics_port" labelgate_windows_total)" ]; then return 0; fi
    sleep 1
  done
}
while [ "$fed" -lt ${#chunks[@]} ]; do supervise; feed; over && break; sleep 0.5; done
log "all input produced"
wait_idle || true
produce -l "$out/late.txt"
log "late record produced"
sleep 3; wait_idle || true
kill -TERM "${pid[A]}"; wait "${pid[A]}" || true
run_s=$(( $(date +%s) - start_s ))

dump_outputs "$t" "$out"
rc=0
python3 benches/chaos.py verify "$out" > "$out/verify.json" || rc=1
printf '%s\n' "${resume_rows[@]}" > "$out/resumes.txt"
if [ ${#exits[@]} -gt 0 ]; then printf '%s\n' "${exits[@]}"; fi > "$out/exits.txt"
if [ ${#broker_exits[@]} -gt 0 ]; then printf '%s\n' "${broker_exits[@]}"; fi > "$out/broker-exits.txt"
python3 - "$out" "$run_s" "$kills_done" "$mids_done" <<'PY'
import json, statistics, sys
out, run_s, kills, mids = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
v = json.load(open(f"{out}/verify.json"))
rows = [l.split("|") for l in open(f"{out}/resumes.txt").read().splitlines() if l]
gate = [float(s) for w, s, r in rows if w.startswith("SIGKILL gate") and s != "timeout"]
route = [float(r) for w, s, r in rows if w.startswith("SIGKILL gate") and r not in ("timeout", "—")]
exits = [l for l in open(f"{out}/exits.txt").read().splitlines() if l]
def mmm(xs):
    return f"{min(xs):.1f} / {statistics.median(xs):.1f} / {max(xs):.1f} s" if xs else "—"
print(f"| records (valid + bad) | deliveries | verdicts | accepted / rereview / dlq | gate SIGKILLs (mid-window) | consuming again after a gate SIGKILL min / median / max | routing again, min / median / max | lost | duplicated | valid in DLQ | unexpected exits | run |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
print(f"| {v['input_records']:,} ({v['valid']:,} + {v['bad']}) | {v['deliveries']} | {v['verdicts']} | {v['accepted']:,} / {v['rereview']:,} / {v['dlq']} | {kills} ({mids}) | {mmm(gate)} | {mmm(route)} | {v['lost']} | {v['duplicated']} | {v['valid_in_dlq']} | {len(exits)} | {run_s} s |")
print()
for w, s, r in rows:
    print(f"- {w}: consuming again after {s} s, routing after {r} s")
print(f"- dead-letter reasons: {', '.join(f'{k} {n}' for k, n in v['dlq_reasons'].items())}")
for e in exits:
    print(f"- unexpected exit: {e}")
for e in open(f"{out}/broker-exits.txt").read().splitlines():
    print(f"- exit while the broker was down (by design: a failed transaction stops the gate, the restart resumes): {e}")
for p in v["problems"]:
    print(f"- VIOLATION: {p}")
PY
timeouts=$(grep -c timeout "$out/resumes.txt" || true)
slow=$(awk -F'|' '$1 ~ /^SIGKILL gate/ && $2 != "timeout" && $2 + 0 > 10' "$out/resumes.txt" | wc -l)
[ "$kills_done" -ge "$kills" ] || { echo "chaos.sh: only $kills_done of $kills kills happened (deadline)" >&2; rc=1; }
[ "$mids_done" -ge "$mid_kills" ] || { echo "chaos.sh: only $mids_done of $mid_kills kills were mid-window" >&2; rc=1; }
[ "$timeouts" = 0 ] || { echo "chaos.sh: $timeouts restarts did not resume before the deadline" >&2; rc=1; }
[ "$slow" = 0 ] || { echo "chaos.sh: $slow gate restarts took more than 10 s to resume" >&2; rc=1; }
[ ${#exits[@]} = 0 ] || { echo "chaos.sh: the gate exited on its own (see above)" >&2; rc=1; }
[ "$rc" = 0 ] && echo "chaos.sh: all invariants hold (details in $out)" >&2 || echo "chaos.sh: FAILED (details in $out)" >&2
exit $rc
