#!/usr/bin/env bash
# The whole test suite, from a fresh machine: checks the toolchain and the shared data, then
# builds once (release profile, shared with `cargo run --release`) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
data_dir=${LABELGATE_DATA_DIR:-$(pwd)/../shared/data}
for f in mnist/train-images.idx3-ubyte.gz music_genre_crowd/mturk_answers.csv; do
  [ -e "$data_dir/$f" ] || { echo "missing $data_dir/$f: set LABELGATE_DATA_DIR to the shared data directory" >&2; exit 1; }
done
export LABELGATE_DATA_DIR=$data_dir
# Two cores: the tests train networks side by side, one kernel thread each.
export LABELGATE_THREADS=1 RUST_TEST_THREADS=${RUST_TEST_THREADS:-2}
cargo test --release --locked "$@"
