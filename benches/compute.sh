#!/usr/bin/env bash
# Training speed and quality side by side, in one run on this machine: labelgate and the PyTorch
# O2U-Net reference (benches/peers.py) train the MLP on MNIST 60k with 20 % symmetric noise at
# 1 and 2 threads, alternating, REPEATS times each; the table gives each one's median samples/s,
# the ratios the compute issue asks for, and the detection quality of every run.
#   benches/compute.sh                 # CPU, 3 repeats
#   REPEATS=5 benches/compute.sh
#   DEVICE=cuda BIN=target/release/labelgate benches/compute.sh   # on a GPU machine, cuda build
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${REPEATS:-3}
device=${DEVICE:-cpu}
data_dir=${LABELGATE_DATA_DIR:-$(pwd)/../shared/data}
venv=${LABELGATE_BENCH_VENV:-$HOME/.cache/labelgate/bench-venv}
out=${BENCH_OUT:-bench-out}/compute
bin=${BIN:-}
mkdir -p "$out"
rm -f "$out"/*.jsonl
if ! "$venv/bin/python" -c 'import torch, cleanlab, sklearn' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'torch>=2.4' 'cleanlab>=2.6,<3' scikit-learn numpy
fi
if [ -z "$bin" ]; then
  cargo build --release -q
  bin=target/release/labelgate
fi
threads_list=(1 2)
[ "$device" = cpu ] || threads_list=(1)
"$bin" eval --dataset mnist --noise symmetric:0.2 --threads 1 --device "$device" --stage1-epochs 5 --data-dir "$data_dir" \
  --export-labels "$out/labels.csv" --json /dev/null >/dev/null 2>&1
for rep in $(seq "$repeats"); do
  for threads in "${threads_list[@]}"; do
    echo "== repeat $rep, $threads thread(s)" >&2
    "$bin" eval --dataset mnist --noise symmetric:0.2 --threads "$threads" --device "$device" --stage1-epochs 5 \
      --data-dir "$data_dir" --json "$out/run.json" >/dev/null 2>&1
    python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["peer"]="labelgate"; d["threads"]=int(sys.argv[2]); print(json.dumps(d))' \
      "$out/run.json" "$threads" >> "$out/labelgate.jsonl"
    "$venv/bin/python" benches/peers.py --dataset mnist --data-dir "$data_dir" --labels "$out/labels.csv" \
      --peers o2u-torch --threads "$threads" --device "$device" >> "$out/torch.jsonl"
  done
done
python3 - "$out" "$device" <<'PY'
import json, statistics, sys
out, device = sys.argv[1], sys.argv[2]
runs = [json.loads(l) for f in ("labelgate", "torch") for l in open(f"{out}/{f}.jsonl")]
def median(peer, threads, key="samples_per_second"):
    xs = [r[key] for r in runs if r["peer"] == peer and r["threads"] == threads]
    return statistics.median(xs) if xs else None
print(f"| device | threads | labelgate samples/s (median) | PyTorch samples/s (median) | labelgate / PyTorch | labelgate AP | PyTorch AP |")
print("|---|---|---|---|---|---|---|")
for t in sorted({r["threads"] for r in runs}):
    lg, pt = median("labelgate", t), median("o2u-torch", t)
    print(f"| {device} | {t} | {lg:,.0f} | {pt:,.0f} | {lg/pt:.2f}× | {median('labelgate', t, 'average_precision'):.4f} | {median('o2u-torch', t, 'average_precision'):.4f} |")
if median("labelgate", 2):
    print(f"\nlabelgate 2 threads / 1 thread: {median('labelgate', 2) / median('labelgate', 1):.2f}×; "
          f"PyTorch: {median('o2u-torch', 2) / median('o2u-torch', 1):.2f}×")
print("\nevery run (samples/s):")
for peer in ("labelgate", "o2u-torch"):
    for t in sorted({r["threads"] for r in runs}):
        print(f"  {peer} {t} thread(s): " + ", ".join(f"{r['samples_per_second']:,.0f}" for r in runs if r["peer"] == peer and r["threads"] == t))
PY
