#!/usr/bin/env bash
# The two crowd-model peers of labelgate's vendor-accuracy estimates (one-coin Dawid-Skene on the
# votes, cleanlab's CROWDLAB on 5-fold logistic-regression probabilities) on the real crowd sets,
# with every worker's true accuracy against the gold labels; prints one markdown table.
#   benches/crowd_peers.sh                                   # music-genre, music-genre-noise, crowd-text
#   benches/crowd_peers.sh --sets crowd-text --per-worker /tmp/workers.csv
# Arguments go to benches/crowd_peers.py (--data-dir, --sets, --min-labels, --per-worker, --seed).
# LABELGATE_BENCH_VENV (default ~/.cache/labelgate/bench-venv) is created and filled if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${LABELGATE_BENCH_VENV:-$HOME/.cache/labelgate/bench-venv}
if ! "$venv/bin/python" -c 'import cleanlab, sklearn, numpy, pandas, scipy' 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'cleanlab>=2.6,<3' scikit-learn numpy pandas scipy
fi
args=("$@")
has_data_dir=0
for a in "${args[@]}"; do [ "$a" = "--data-dir" ] && has_data_dir=1; done
[ "$has_data_dir" = 1 ] || args+=(--data-dir "${LABELGATE_DATA_DIR:-$(pwd)/../shared/data}")
"$venv/bin/python" benches/crowd_peers.py "${args[@]}" | "$venv/bin/python" -c '
import json, sys
print("| set | peer | workers | Spearman | MAE |")
print("|---|---|---:|---:|---:|")
for line in sys.stdin:
    r = json.loads(line)
    print("| %s | %s | %d | %.3f | %.3f |" % (r["set"], r["peer"], r["workers"], r["spearman"], r["mae"]))
'
