#!/usr/bin/env bash
# The whole test suite from a fresh machine: installs what the tests need (kcat from Debian, the
# Apache Kafka broker from Maven Central), starts the broker, builds once (release profile,
# shared with `cargo run --release`), runs every test, and stops the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)" >&2; exit 1; }
data_dir=${LABELGATE_DATA_DIR:-$(pwd)/../shared/data}
for f in mnist/train-images.idx3-ubyte.gz music_genre_crowd/mturk_answers.csv; do
  [ -e "$data_dir/$f" ] || { echo "missing $data_dir/$f: set LABELGATE_DATA_DIR to the shared data directory" >&2; exit 1; }
done
export LABELGATE_DATA_DIR=$data_dir

missing=()
command -v kcat >/dev/null || missing+=(kcat)
command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}" >&2
  ${SUDO:-} apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq "${missing[@]}" >&2
fi

export KAFKA_PORT=${KAFKA_PORT:-19092}
scripts/kafka.sh start
trap 'scripts/kafka.sh stop' EXIT
export LABELGATE_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT

# Two cores: the tests train networks side by side, one kernel thread each.
export LABELGATE_THREADS=1 RUST_TEST_THREADS=${RUST_TEST_THREADS:-2}
cargo test --release --locked "$@"
