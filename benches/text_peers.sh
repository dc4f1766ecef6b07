#!/usr/bin/env bash
# labelgate and cleanlab on the sentence-polarity movie reviews with labels flipped (symmetric 20 %
# and 40 %): labelgate's `eval` embeds the sentences with its encoder (all-MiniLM-L6-v2) and runs
# O2U-Net; cleanlab gets 5-fold logistic-regression probabilities on the same embeddings and the
# same noisy labels. Prints one markdown table.
#   benches/text_peers.sh                    # symmetric:0.2 and symmetric:0.4, seed 0
#   SEEDS="0 1 2" benches/text_peers.sh
# LABELGATE_BENCH_VENV (default ~/.cache/labelgate/bench-venv) is created and filled if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${LABELGATE_BENCH_VENV:-$HOME/.cache/labelgate/bench-venv}
if ! "$venv/bin/python" -c 'import cleanlab, sklearn, numpy' 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'cleanlab>=2.6,<3' scikit-learn numpy
fi
bash scripts/models.sh
data=${LABELGATE_DATA_DIR:-$(pwd)/../shared/data}
threads=${THREADS:-2}
cargo build --release -q
bin=target/release/labelgate
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$bin" embed --dataset sentence-polarity --data-dir "$data" --threads "$threads" --output "$tmp/embeddings.jsonl" >/dev/null
echo "| noise | seed | method | label precision | AP | auto precision | auto recall | auto F1 | flagged |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|"
for noise in symmetric:0.2 symmetric:0.4; do
  for seed in ${SEEDS:-0}; do
    "$bin" eval --dataset sentence-polarity --data-dir "$data" --noise "$noise" --noise-seed "$seed" --seed "$seed" --threads "$threads" \
      --json "$tmp/lg.json" --export-labels "$tmp/labels.csv" >/dev/null 2>&1
    "$venv/bin/python" benches/text_peers.py --embeddings "$tmp/embeddings.jsonl" --labels "$tmp/labels.csv" --seed "$seed" > "$tmp/peer.json"
    "$venv/bin/python" - "$noise" "$seed" "$tmp/lg.json" "$tmp/peer.json" <<'PY'
import json, sys
noise, seed, ours, peer = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3])), json.load(open(sys.argv[4]))
for name, r in (("labelgate (O2U-Net)", ours), ("cleanlab (5-fold logistic regression)", peer)):
    print("| %s | %s | %s | %.4f | %.4f | %.4f | %.4f | %.4f | %d |" % (noise, seed, name, r["label_precision"], r["average_precision"],
          r["precision_auto"], r["recall_auto"], r["f1_auto"], r["flagged_auto"]))
PY
  done
done
