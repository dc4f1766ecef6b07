#!/usr/bin/env bash
# The ACLs labelgate's Kafka principals need and nothing more, applied with Kafka's own AclCommand
# by an admin principal (docs/deploying.md, "Kafka security" lists them).
#   scripts/kafka-acls.sh gate User:labelgate       # the gate: read input and reviews, write the outputs
#   scripts/kafka-acls.sh vendor User:vendor-acme   # a vendor: write the input topic, read nothing
#   scripts/kafka-acls.sh list [User:NAME]          # what the broker holds
#   scripts/kafka-acls.sh print gate|vendor User:NAME  # the AclCommand arguments, without running them
#   scripts/kafka-acls.sh command ARGS...           # AclCommand ARGS against the same broker (e.g. --remove ...)
# Topic, group and transactional-id names come from the gate's own variables
# (LABELGATE__KAFKA__INPUT_TOPIC, ..._GROUP_ID, ..._TRANSACTIONAL_ID_PREFIX, ...) or else from
# config/default.toml; the broker from LABELGATE__KAFKA__BOOTSTRAP_SERVERS; the admin's client
# properties (SASL/TLS, as for any Kafka tool's --command-config) from KAFKA_ADMIN_CONFIG.
# KAFKA_ACLS is the AclCommand to run: Kafka's bin/kafka-acls.sh, or by default the jars that
# scripts/kafka.sh fetches.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# A kafka.* key: the gate's variable if set, else its default in config/default.toml.
name() {
  local var="LABELGATE__KAFKA__${1^^}"
  if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
  sed -n "s/^$1 = \"\(.*\)\"$/\1/p" "$root/config/default.toml" | head -1
}
input=$(name input_topic) reviews=$(name reviews_topic)
accepted=$(name accepted_topic) rereview=$(name rereview_topic) verdicts=$(name verdicts_topic)
dlq=$(name dlq_topic) progress=$(name progress_topic)
group=$(name group_id) txn_prefix=$(name transactional_id_prefix)

# One AclCommand --add per line, fields separated by spaces (names cannot hold spaces).
gate_acls() {
  local p=$1
  # Consumes the input and the reviews; reads its own verdicts and progress back at start-up
  # and on assignment (src/service/topics.rs).
  echo "--allow-principal $p --operation Read --operation Describe --topic $input --topic $reviews --topic $verdicts --topic $progress"
  # Writes every output in its transactions.
  echo "--allow-principal $p --operation Write --operation Describe --topic $accepted --topic $rereview --topic $verdicts --topic $dlq --topic $progress"
  # The input group (joined, and its offsets committed in the transactions), the reviews group
  # and the group its start-up reader is configured with; literal names, not a prefix.
  echo "--allow-principal $p --operation Read --operation Describe --group $group --group $group-reviews --group $group-reader"
  # Transactional ids are {prefix}-{instance}: one prefixed ACL covers every replica. No
  # IdempotentWrite on the cluster: since Kafka 3.0 a transactional producer needs only these.
  echo "--allow-principal $p --operation Write --operation Describe --transactional-id $txn_prefix- --resource-pattern-type prefixed"
}

vendor_acls() {
  echo "--allow-principal $1 --operation Write --operation Describe --topic $input"
}

acl_command() {
  if [ -n "${KAFKA_ACLS:-}" ]; then
    # shellcheck disable=SC2086 # a command line, e.g. "/opt/kafka/bin/kafka-acls.sh"
    ${KAFKA_ACLS} "$@"
    return
  fi
  local libs=${LABELGATE_CACHE:-$HOME/.cache/labelgate}/kafka-${KAFKA_VERSION:-4.1.1}/libs
  [ -f "$libs/kafka-tools-${KAFKA_VERSION:-4.1.1}.jar" ] || "$root/scripts/kafka.sh" fetch
  # Its logging (an SLF4J notice) goes nowhere; errors still reach stderr.
  java -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$libs/*" org.apache.kafka.tools.AclCommand "$@" 2> >(grep -v '^SLF4J' >&2)
}

connection() {
  local bootstrap=${LABELGATE__KAFKA__BOOTSTRAP_SERVERS:?set LABELGATE__KAFKA__BOOTSTRAP_SERVERS to the broker}
  echo "--bootstrap-server $bootstrap${KAFKA_ADMIN_CONFIG:+ --command-config $KAFKA_ADMIN_CONFIG}"
}

# Each line in a JVM of its own, side by side (a JVM start is most of each one's time).
apply() {
  local line pids=() failed=0
  while read -r line; do
    # shellcheck disable=SC2046,SC2086 # word splitting is the point: one argument per field
    acl_command $(connection) --add $line >/dev/null &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
  [ $failed = 0 ] || { echo "kafka-acls.sh: adding ACLs failed (see above)" >&2; exit 1; }
}

principal() {
  case "${1:-}" in User:?*) echo "$1" ;; *) echo "kafka-acls.sh: the principal must look like User:NAME" >&2; exit 2 ;; esac
}

case "${1:-}" in
  gate) gate_acls "$(principal "${2:-}")" | apply; echo "kafka-acls.sh: ACLs of the gate's principal $2 added" >&2 ;;
  vendor) vendor_acls "$(principal "${2:-}")" | apply; echo "kafka-acls.sh: ACLs of vendor principal $2 added" >&2 ;;
  # shellcheck disable=SC2046 # fields of connection()
  list) acl_command $(connection) --list ${2:+--principal "$2"} ;;
  # shellcheck disable=SC2046 # fields of connection()
  command) shift; acl_command $(connection) "$@" ;;
  print) case "${2:-}" in gate) gate_acls "$(principal "${3:-}")" ;; vendor) vendor_acls "$(principal "${3:-}")" ;; *) exit 2 ;; esac ;;
  *) echo "usage: scripts/kafka-acls.sh gate|vendor User:NAME | list [User:NAME] | print gate|vendor User:NAME | command ARGS..." >&2; exit 2 ;;
esac
