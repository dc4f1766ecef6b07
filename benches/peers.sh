#!/usr/bin/env bash
# Runs labelgate and its peers (cleanlab on 5-fold cross-validated probabilities, an O2U-Net
# reference in PyTorch) on the same features and the same noisy labels, one setting after the
# other on this machine, and prints one markdown table.
#   benches/peers.sh                       # every setting in docs/benchmarks.md
#   benches/peers.sh mnist:symmetric:0.2   # one setting
# THREADS (default 1) sets the kernel threads of every method alike.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-1}
data_dir=${LABELGATE_DATA_DIR:-$(pwd)/../shared/data}
venv=${LABELGATE_BENCH_VENV:-$HOME/.cache/labelgate/bench-venv}
out=${BENCH_OUT:-bench-out}
mkdir -p "$out"
if ! "$venv/bin/python" -c 'import torch, cleanlab, sklearn' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'torch>=2.4' 'cleanlab>=2.6,<3' scikit-learn numpy
fi
cargo build --release -q
settings=("$@")
[ ${#settings[@]} -gt 0 ] || settings=(mnist:symmetric:0.2 mnist:symmetric:0.4 mnist:symmetric:0.8 mnist:pairflip:0.45 music-genre)
for setting in "${settings[@]}"; do
  dataset=${setting%%:*}
  noise=${setting#*:}
  name=${setting//:/-}
  noise_args=()
  [ "$noise" = "$setting" ] || noise_args=(--noise "$noise")
  echo "== $setting" >&2
  # Five stage-1 epochs on every data set, as the PyTorch reference trains (music-genre's own default is 20).
  ./target/release/labelgate eval --dataset "$dataset" "${noise_args[@]}" --threads "$threads" --stage1-epochs 5 \
    --data-dir "$data_dir" --json "$out/$name.labelgate.json" --export-labels "$out/$name.labels.csv" >&2
  "$venv/bin/python" benches/peers.py --dataset "$dataset" --data-dir "$data_dir" \
    --labels "$out/$name.labels.csv" --threads "$threads" > "$out/$name.peers.jsonl"
done
"$venv/bin/python" benches/table.py "$out" "${settings[@]}"
