#!/usr/bin/env bash
# Gate ingest throughput (128-dim feature records, no window running) against `kcat -C` reading
# the same topic from the same broker, in one run. Needs the broker: scripts/kafka.sh start.
#   benches/ingest.sh [RECORDS]      (default 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-100000}
bootstrap=${LABELGATE_KAFKA_BOOTSTRAP:-127.0.0.1:19092}
topic=bench-ingest-$$
cargo build --release -q
python3 - "$records" > /tmp/$topic.txt <<'PY'
import json, random, sys
random.seed(0)
n = int(sys.argv[1])
for i in range(n):
    batch = f"b{i // 1000}"
    rec = {"sample_id": f"s{i}", "batch_id": batch, "vendor_id": "v", "label": str(i % 10),
           "features": [round(random.gauss(0, 1), 5) for _ in range(128)]}
    print(f"{batch}\t{json.dumps(rec)}")
PY
kcat -P -b "$bootstrap" -t "$topic" -K $'\t' -X topic.partitions=4 < /tmp/$topic.txt 2>/dev/null || kcat -P -b "$bootstrap" -t "$topic" -K $'\t' < /tmp/$topic.txt
bytes=$(stat -c %s /tmp/$topic.txt); rm -f /tmp/$topic.txt
start=$(date +%s.%N)
kcat -C -b "$bootstrap" -t "$topic" -o beginning -e -q > /dev/null
kcat_s=$(echo "$(date +%s.%N) - $start" | bc)
gate=$(LABELGATE__KAFKA__BOOTSTRAP_SERVERS=$bootstrap LABELGATE__KAFKA__INPUT_TOPIC=$topic \
  LABELGATE__KAFKA__GROUP_ID=$topic LABELGATE__GATE__FEATURE_DIM=128 \
  LABELGATE__GATE__MIN_WINDOW_RECORDS=1000000 LABELGATE__GATE__MAX_WINDOW_RECORDS=1000000 \
  LABELGATE__GATE__MAX_BUFFERED_RECORDS=2000000 LABELGATE__GATE__DELIVERY_TIMEOUT_SECS=3600 \
  ./target/release/labelgate bench-ingest --records "$records" 2>/dev/null)
gate_s=$(echo "$gate" | python3 -c 'import json,sys; print(json.load(sys.stdin)["seconds"])')
python3 - "$records" "$bytes" "$kcat_s" "$gate_s" <<'PY'
import sys
n, size, k, g = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
print(f"| records | MB | kcat -C records/s | labelgate ingest records/s | ratio |")
print(f"|---|---|---|---|---|")
print(f"| {n:,} | {size/1e6:.0f} | {n/k:,.0f} | {n/g:,.0f} | {k/g:.2f}× |")
PY
