#!/usr/bin/env bash
# Gate ingest throughput and memory (feature records, no window running) against `kcat -C`
# reading the same topic from the same broker, in one run: records/s side by side, and the
# gate's resident memory once every record is buffered against the records' f32 feature bytes.
# Needs the broker: scripts/kafka.sh start.
#   benches/ingest.sh [RECORDS]                  (default 100000; 128 Gaussian features, 5 decimals)
#   FEATURES=mnist benches/ingest.sh 100000      (784 MNIST pixels scaled to [0, 1], 4 decimals)
#   FEATURES=gauss DIM=784 benches/ingest.sh
set -euo pipefail
cd "$(dirname "$0")/.."
records=${1:-100000}
features=${FEATURES:-gauss}
dim=${DIM:-128}
[ "$features" = mnist ] && dim=784
data_dir=${LABELGATE_DATA_DIR:-$(pwd)/../shared/data}
bootstrap=${LABELGATE_KAFKA_BOOTSTRAP:-127.0.0.1:19092}
topic=bench-ingest-$$
cargo build --release -q
python3 - "$records" "$features" "$dim" "$data_dir" > /tmp/$topic.txt <<'PY'
import gzip, json, random, sys
random.seed(0)
n, kind, dim, data_dir = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
if kind == "mnist":
    with gzip.open(f"{data_dir}/mnist/train-images.idx3-ubyte.gz") as f:
        raw = f.read()[16:]
    images = [raw[i * 784:(i + 1) * 784] for i in range(len(raw) // 784)]
for i in range(n):
    batch = f"b{i // 1000}"
    if kind == "mnist":
        values = [round(p / 255, 4) for p in images[i % len(images)]]
    else:
        values = [round(random.gauss(0, 1), 5) for _ in range(dim)]
    rec = {"sample_id": f"s{i}", "batch_id": batch, "vendor_id": "v", "label": str(i % 10), "features": values}
    print(f"{batch}\t{json.dumps(rec)}")
PY
kcat -P -b "$bootstrap" -t "$topic" -K $'\t' -X topic.partitions=4 < /tmp/$topic.txt 2>/dev/null || kcat -P -b "$bootstrap" -t "$topic" -K $'\t' < /tmp/$topic.txt
bytes=$(stat -c %s /tmp/$topic.txt); rm -f /tmp/$topic.txt
start=$(date +%s.%N)
kcat -C -b "$bootstrap" -t "$topic" -o beginning -e -q > /dev/null
kcat_s=$(echo "$(date +%s.%N) - $start" | bc)
gate=$(LABELGATE__KAFKA__BOOTSTRAP_SERVERS=$bootstrap LABELGATE__KAFKA__INPUT_TOPIC=$topic \
  LABELGATE__KAFKA__GROUP_ID=$topic LABELGATE__GATE__FEATURE_DIM=$dim \
  LABELGATE__GATE__MIN_WINDOW_RECORDS=1000000 LABELGATE__GATE__MAX_WINDOW_RECORDS=1000000 \
  LABELGATE__GATE__MAX_BUFFERED_RECORDS=2000000 LABELGATE__GATE__DELIVERY_TIMEOUT_SECS=3600 \
  ./target/release/labelgate bench-ingest --records "$records" 2>/dev/null)
python3 - "$bytes" "$kcat_s" "$gate" "$features" "$dim" <<'PY'
import json, sys
size, k, g = int(sys.argv[1]), float(sys.argv[2]), json.loads(sys.argv[3])
n, secs = g["records"], g["seconds"]
print("| records | features | input MB | kcat -C records/s | labelgate ingest records/s | ratio | RSS MB | f32 feature MB | RSS / features | buffer MB (gauge) | RSS before consuming MB |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
rss, feat = g["rss_bytes"], g["feature_bytes"]
print(f"| {n:,} | {sys.argv[5]} {sys.argv[4]} | {size/1e6:.0f} | {n/k:,.0f} | {n/secs:,.0f} | {(n/secs)/(n/k):.2f}× | {rss/1e6:.0f} | {feat/1e6:.0f} | {rss/feat:.2f}× | {g['buffered_bytes']/1e6:.0f} | {g['rss_before_bytes']/1e6:.0f} |")
PY
