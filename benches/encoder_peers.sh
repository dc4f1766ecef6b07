#!/usr/bin/env bash
# labelgate's sentence encoder (candle) against sentence-transformers (PyTorch), same model
# (all-MiniLM-L6-v2 from scripts/models.sh), same sentences (the first --limit of
# sentence_polarity): the cosine of each pair of embeddings, and texts per second at 1 and 2
# threads for each batch size, both encoders in one run; prints one markdown table.
#   benches/encoder_peers.sh                 # 1,000 sentences
#   benches/encoder_peers.sh --limit 2000
# LABELGATE_ENCODER_VENV (default ~/.cache/labelgate/encoder-venv) is created and filled with
# torch and sentence-transformers (about 3 GB) if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=1000
[ "${1:-}" = "--limit" ] && limit=$2
venv=${LABELGATE_ENCODER_VENV:-$HOME/.cache/labelgate/encoder-venv}
if ! "$venv/bin/python" -c 'import sentence_transformers, torch, numpy' 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch sentence-transformers numpy
fi
bash scripts/models.sh
model=$(bash scripts/models.sh path)
data=${LABELGATE_DATA_DIR:-$(pwd)/../shared/data}
cargo build --release -q
bin=target/release/labelgate
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
"$bin" embed --dataset sentence-polarity --data-dir "$data" --limit "$limit" --output "$tmp/ours.jsonl" >/dev/null
{
  for threads in 1 2; do
    for batch in 16 32 64 128; do
      "$bin" embed --dataset sentence-polarity --data-dir "$data" --limit "$limit" --threads "$threads" --text-batch-size "$batch" --repeat 2 \
        | "$venv/bin/python" -c 'import json,sys; r=json.loads(sys.stdin.read()); r.update(check="speed", encoder="labelgate"); print(json.dumps(r))'
    done
  done
  "$venv/bin/python" benches/encoder_peers.py --data-dir "$data" --model-dir "$model" --limit "$limit" --labelgate-embeddings "$tmp/ours.jsonl"
} | "$venv/bin/python" -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin]
for r in rows:
    if r["check"] == "cosine":
        print("cosine, labelgate vs sentence-transformers, %d sentences: min %.6f, 1st percentile %.6f, mean %.6f\n" % (r["sentences"], r["min"], r["p01"], r["mean"]))
speed = [r for r in rows if r["check"] == "speed"]
print("| threads | batch | labelgate texts/s | sentence-transformers texts/s | ratio |")
print("|---:|---:|---:|---:|---:|")
for t in (1, 2):
    for b in sorted({r["batch_size"] for r in speed}):
        ours = [r for r in speed if r["encoder"] == "labelgate" and r["threads"] == t and r["batch_size"] == b]
        theirs = [r for r in speed if r["encoder"] != "labelgate" and r["threads"] == t and r["batch_size"] == b]
        if ours and theirs:
            o, s = ours[0]["texts_per_second"], theirs[0]["texts_per_second"]
            print("| %d | %d | %.1f | %.1f | %.2f |" % (t, b, o, s, o / s))
for t in (1, 2):
    o = max((r["texts_per_second"] for r in speed if r["encoder"] == "labelgate" and r["threads"] == t), default=0)
    s = max((r["texts_per_second"] for r in speed if r["encoder"] != "labelgate" and r["threads"] == t), default=0)
    if o and s:
        print("\nbest at %d thread(s): labelgate %.1f, sentence-transformers %.1f texts/s, ratio %.2f" % (t, o, s, o / s))
'
