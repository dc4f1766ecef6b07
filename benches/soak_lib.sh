# Shared by benches/chaos.sh and benches/faults.sh (sourced): where the test broker and Redis are,
# the gate's settings for a soak, and reading its /metrics.
# In: KAFKA_PORT (19092) / LABELGATE_KAFKA_BOOTSTRAP, REDIS_PORT (16379) / LABELGATE_REDIS_URL,
# LABELGATE_REDIS_USER, LABELGATE_REDIS_PASSWORD or REDIS_PASSWORD, KAFKA_RUN_DIR, REDIS_RUN_DIR.
kafka_port=${KAFKA_PORT:-19092}
bootstrap=${LABELGATE_KAFKA_BOOTSTRAP:-127.0.0.1:$kafka_port}
kafka_port=${bootstrap##*:}
krun=${KAFKA_RUN_DIR:-/tmp/labelgate-kafka-$kafka_port}
redis_port=${REDIS_PORT:-16379}
redis_url=${LABELGATE_REDIS_URL:-redis://127.0.0.1:$redis_port/0}
redis_user=${LABELGATE_REDIS_USER:-labelgate}
redis_password=${LABELGATE_REDIS_PASSWORD:-${REDIS_PASSWORD:-labelgate-test}}
rrun=${REDIS_RUN_DIR:-/tmp/labelgate-redis-$redis_port}
libs=${LABELGATE_CACHE:-$HOME/.cache/labelgate}/kafka-${KAFKA_VERSION:-4.1.1}/libs

# gate_env TOPICS NAME PORT COMMAND...: runs COMMAND (exec) with the soak's gate settings: topics
# prefixed TOPICS, group TOPICS, instance TOPICS-NAME, metrics on PORT, 32 features, small windows.
gate_env() {
  local t=$1 name=$2 port=$3
  # exec: in the background this function is a subshell, and $! must be the gate itself.
  exec env LABELGATE_LOG=${LABELGATE_LOG:-info} LABELGATE__KAFKA__BOOTSTRAP_SERVERS="$bootstrap" LABELGATE__KAFKA__GROUP_ID="$t" \
    LABELGATE__KAFKA__INSTANCE_ID="$t-$name" LABELGATE__KAFKA__TRANSACTIONAL_ID_PREFIX="$t-$name" \
    LABELGATE__KAFKA__INPUT_TOPIC="$t.annotations" LABELGATE__KAFKA__ACCEPTED_TOPIC="$t.accepted" \
    LABELGATE__KAFKA__REREVIEW_TOPIC="$t.rereview" LABELGATE__KAFKA__VERDICTS_TOPIC="$t.verdicts" \
    LABELGATE__KAFKA__DLQ_TOPIC="$t.dlq" LABELGATE__KAFKA__PROGRESS_TOPIC="$t.progress" \
    LABELGATE__KAFKA__REVIEWS_TOPIC="$t.reviews" \
    LABELGATE__STATE__REDIS__URL="$redis_url" LABELGATE__STATE__REDIS__USERNAME="$redis_user" \
    LABELGATE__STATE__REDIS__PASSWORD="$redis_password" LABELGATE__STATE__REDIS__KEY_PREFIX="labelgate:$t:" \
    LABELGATE__GATE__FEATURE_DIM=32 LABELGATE__GATE__MIN_WINDOW_RECORDS=3000 LABELGATE__GATE__MAX_WINDOW_RECORDS=6000 \
    LABELGATE__GATE__MAX_WINDOW_WAIT_SECS=1 LABELGATE__GATE__DELIVERY_TIMEOUT_SECS=5 LABELGATE__GATE__CROSSFIT_MIN_STEPS=50 \
    LABELGATE__ENGINE__STAGE1_EPOCHS=2 LABELGATE__ENGINE__MIN_STAGE1_STEPS=50 LABELGATE__RUNTIME__THREADS=1 \
    LABELGATE__METRICS__LISTEN="127.0.0.1:$port" "${@:4}"
}

# metric PORT NAME: the sum of its series, -1 when /metrics does not answer.
metric() {
  local body
  body=$(curl -sf --max-time 1 "http://127.0.0.1:$1/metrics" 2>/dev/null) || { echo -1; return; }
  awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%d\n", s }' <<<"$body"
}

# status_of PORT PATH: the HTTP status of PATH (000 when nothing answers).
status_of() { curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$1$2" 2>/dev/null || true; }

# create_input_topic TOPIC OUT: 4 partitions, records up to 4 MiB (the gate's own limit is 1 MiB).
create_input_topic() {
  java -Xmx128m -cp "$libs/*" org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" --create \
    --topic "$1" --partitions 4 --replication-factor 1 --config max.message.bytes=4194304 >"$2/topics.log" 2>&1 \
    || { echo "cannot create the input topic $1; see $2/topics.log" >&2; cat "$2/topics.log" >&2; return 1; }
}

# dump_outputs TOPICS OUT: the input and every output, read_committed, for `chaos.py verify`.
dump_outputs() {
  local t=$1 out=$2
  dump() { kcat -C -b "$bootstrap" -X isolation.level=read_committed -X fetch.message.max.bytes=8388608 -o beginning -e -q -t "$1" -f "$2"; }
  dump "$t.annotations" '%p\t%o\t%S\t%k\t%s\n' > "$out/input.dump"
  dump "$t.accepted" '%s\n' > "$out/accepted.dump"
  dump "$t.rereview" '%s\n' > "$out/rereview.dump"
  dump "$t.dlq" '%h\t%S\n' > "$out/dlq.dump"
  dump "$t.verdicts" '%s\n' > "$out/verdicts.dump"
}
