#!/usr/bin/env bash
# A single-node Apache Kafka 4.x broker (KRaft) on 127.0.0.1 for the integration tests.
#   scripts/kafka.sh start   # fetch the jars from Maven Central (once), format, start, wait
#   scripts/kafka.sh stop    # stop it and delete its data
#   scripts/kafka.sh status
#   scripts/kafka.sh restart # start it again on its data (after a crash or kill -9; benches/chaos.sh)
#   scripts/kafka.sh start-secure|stop-secure|status-secure   # a second, secured broker (below)
# KAFKA_VERSION (4.1.1), KAFKA_PORT (19092), LABELGATE_CACHE (~/.cache/labelgate) override.
#
# The secured broker listens on KAFKA_SECURE_PORT (KAFKA_PORT + 2; its controller on the next
# port) with SASL_SSL only: SCRAM-SHA-512 users created when the storage is formatted, a CA and
# broker certificate made here with openssl, and the StandardAuthorizer with no access unless an
# ACL grants it. Users: admin (super user: inter-broker traffic, topics, ACLs), labelgate (the
# gate) and vendor-acme (a vendor's producer); scripts/kafka-acls.sh grants the latter two their
# ACLs. Passwords are KAFKA_ADMIN_PASSWORD, KAFKA_GATE_PASSWORD and KAFKA_VENDOR_PASSWORD, random
# when unset. start-secure prints, as its only stdout, the path of a file (mode 600) to source:
# it exports LABELGATE_KAFKA_SECURE_BOOTSTRAP, LABELGATE_KAFKA_CA, LABELGATE_KAFKA_ADMIN_CONFIG
# (Java client properties for the admin, for Kafka's tools) and the three passwords as
# LABELGATE_KAFKA_{ADMIN,GATE,VENDOR}_PASSWORD.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
version=${KAFKA_VERSION:-4.1.1}
case "${1:-}" in
  *-secure) secure=1; port=${KAFKA_SECURE_PORT:-$(( ${KAFKA_PORT:-19092} + 2 ))}; run=${KAFKA_RUN_DIR:-/tmp/labelgate-kafka-secure-$port} ;;
  *) secure=; port=${KAFKA_PORT:-19092}; run=${KAFKA_RUN_DIR:-/tmp/labelgate-kafka-$port} ;;
esac
controller_port=$((port + 1))
cache=${LABELGATE_CACHE:-$HOME/.cache/labelgate}
libs=$cache/kafka-$version/libs

fetch() {
  # kafka-tools (AclCommand, for scripts/kafka-acls.sh) came later: a cache without it is topped up.
  [ -f "$libs/.complete" ] && [ -f "$libs/kafka-tools-$version.jar" ] && return
  command -v mvn >/dev/null || { echo "kafka.sh: Maven (mvn) is needed to fetch Kafka" >&2; exit 1; }
  mkdir -p "$cache/kafka-$version"
  cat > "$cache/kafka-$version/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>labelgate</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version></dependency>
    <!-- AclCommand alone: the broker's jars cover what it needs, the rest is Kafka Connect. -->
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$version</version>
      <exclusions><exclusion><groupId>*</groupId><artifactId>*</artifactId></exclusion></exclusions></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
POM
  echo "kafka.sh: fetching Apache Kafka $version from Maven Central into $libs" >&2
  mvn -q -f "$cache/kafka-$version/pom.xml" dependency:copy-dependencies -DoutputDirectory="$libs" -DincludeScope=runtime >&2
  touch "$libs/.complete"
}

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

# The secured broker's CA and certificate (SAN 127.0.0.1), as one PEM key + chain for Kafka's PEM
# keystore, and its passwords; all in the run dir, which only this user can read.
secure_material() {
  test_certs "$run/tls" "labelgate test Kafka CA" serverAuth,clientAuth kafka.sh
  # Kafka's PEM keystore wants an unencrypted PKCS#8 key followed by the certificate chain.
  openssl pkcs8 -topk8 -nocrypt -in "$run/tls/server.key" -out "$run/tls/server.pk8"
  cat "$run/tls/server.pk8" "$run/tls/server.crt" > "$run/tls/server.pem"
  # Letters and hex: no quoting in JAAS lines or librdkafka settings, and never read as a number
  # from an environment variable.
  admin_password=${KAFKA_ADMIN_PASSWORD:-pw$(openssl rand -hex 16)}
  gate_password=${KAFKA_GATE_PASSWORD:-pw$(openssl rand -hex 16)}
  vendor_password=${KAFKA_VENDOR_PASSWORD:-pw$(openssl rand -hex 16)}
}

plain_properties() {
  cat <<PROPS
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
auto.create.topics.enable=true
PROPS
}

# Clients reach only the SASL_SSL listener. The controller listener (loopback, this node's own
# broker -> controller traffic) is SASL_PLAINTEXT with PLAIN as admin: KRaft controllers do not
# take SCRAM (its credentials are metadata the controller itself serves), and on a PLAINTEXT one
# the broker would be User:ANONYMOUS, which would then need cluster rights that anyone reaching
# the port would have too.
secure_properties() {
  cat <<PROPS
listeners=SASL_SSL://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=SASL_SSL://127.0.0.1:$port
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT
inter.broker.listener.name=SASL_SSL
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_password";
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="$admin_password" user_admin="$admin_password";
ssl.keystore.type=PEM
ssl.keystore.location=$run/tls/server.pem
ssl.truststore.type=PEM
ssl.truststore.location=$run/tls/ca.crt
ssl.client.auth=none
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:admin
allow.everyone.if.no.acl.found=false
# Topics are the admin's to create (the gate's principal has no CREATE).
auto.create.topics.enable=false
PROPS
}

# What tests and scripts/kafka-acls.sh need to reach the secured broker, sourced by the caller.
secure_client_files() {
  cat > "$run/admin.properties" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$admin_password";
ssl.truststore.type=PEM
ssl.truststore.location=$run/tls/ca.crt
PROPS
  cat > "$run/client.env" <<ENV
export LABELGATE_KAFKA_SECURE_BOOTSTRAP=127.0.0.1:$port
export LABELGATE_KAFKA_CA=$run/tls/ca.crt
export LABELGATE_KAFKA_ADMIN_CONFIG=$run/admin.properties
export LABELGATE_KAFKA_ADMIN_PASSWORD=$admin_password
export LABELGATE_KAFKA_GATE_PASSWORD=$gate_password
export LABELGATE_KAFKA_VENDOR_PASSWORD=$vendor_password
ENV
  chmod 600 "$run/admin.properties" "$run/client.env"
}

start() {
  fetch
  if [ -f "$run/pid" ] && kill -0 "$(cat "$run/pid")" 2>/dev/null; then
    echo "kafka.sh: already running on 127.0.0.1:$port" >&2
    if [ -n "$secure" ]; then echo "$run/client.env"; fi
    return
  fi
  rm -rf "$run"; mkdir -p "$run/data"; chmod 700 "$run"
  local format_extra=()
  if [ -n "$secure" ]; then
    secure_material
    # SCRAM credentials are metadata records: written at format time, before the broker can
    # authenticate anyone (the admin included).
    format_extra=(--add-scram "SCRAM-SHA-512=[name=admin,password=$admin_password]"
      --add-scram "SCRAM-SHA-512=[name=labelgate,password=$gate_password]"
      --add-scram "SCRAM-SHA-512=[name=vendor-acme,password=$vendor_password]")
  fi
  {
    cat <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
controller.listener.names=CONTROLLER
log.dirs=$run/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
message.max.bytes=4194304
PROPS
    if [ -n "$secure" ]; then secure_properties; else plain_properties; fi
  } > "$run/server.properties"
  chmod 600 "$run/server.properties"
  cat > "$run/log4j2.properties" <<LOG
rootLogger.level=WARN
rootLogger.appenderRef.file.ref=file
appender.file.type=File
appender.file.name=file
appender.file.fileName=$run/server.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
LOG
  local java_opts=(-Xms256m -Xmx768m -XX:+UseG1GC "-Dlog4j2.configurationFile=$run/log4j2.properties")
  local cluster_id
  cluster_id=$(java "${java_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
  java "${java_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool format -t "$cluster_id" -c "$run/server.properties" "${format_extra[@]}" >"$run/format.log" 2>&1 \
    || { echo "kafka.sh: formatting the storage failed; see $run/format.log" >&2; tail -5 "$run/format.log" >&2; exit 1; }
  nohup java "${java_opts[@]}" -cp "$libs/*" kafka.Kafka "$run/server.properties" >"$run/stdout.log" 2>&1 &
  echo $! > "$run/pid"
  for _ in $(seq 1 120); do
    if answers; then
      sleep 2
      if [ -n "$secure" ]; then secure_client_files; admin_answers; fi
      echo "kafka.sh: broker up on 127.0.0.1:$port${secure:+ (SASL_SSL, SCRAM-SHA-512, ACLs)} (logs in $run)" >&2
      if [ -n "$secure" ]; then echo "$run/client.env"; fi
      return
    fi
    kill -0 "$(cat "$run/pid")" 2>/dev/null || { echo "kafka.sh: broker exited; see $run/stdout.log" >&2; tail -20 "$run/stdout.log" >&2; exit 1; }
    sleep 1
  done
  echo "kafka.sh: broker did not answer on 127.0.0.1:$port within 120 s" >&2; exit 1
}

# The port answering is not enough on the secured broker: wait until the admin authenticates over
# TLS and may list ACLs (this also proves the CA, the SAN and the SCRAM user).
admin_answers() {
  for _ in $(seq 1 30); do
    if java -Xmx128m "-Dlog4j2.configurationFile=$run/log4j2.properties" -cp "$libs/*" org.apache.kafka.tools.AclCommand \
      --bootstrap-server "127.0.0.1:$port" --command-config "$run/admin.properties" --list >"$run/admin-check.log" 2>&1; then return; fi
    sleep 1
  done
  echo "kafka.sh: the secured broker does not accept the admin over SASL_SSL; see $run/admin-check.log and $run/server.log" >&2
  tail -5 "$run/admin-check.log" >&2; exit 1
}

stop() { stop_run_dir "$run" 30; }

# Starts the broker of an existing run dir again on its data and configuration (no format), e.g.
# after `kill -9 $(cat $run/pid)`; waits until it answers.
restart() {
  [ -f "$run/server.properties" ] || { echo "kafka.sh: no broker was started in $run" >&2; exit 1; }
  # A killed broker may linger a moment as a zombie until its new parent reaps it: not running.
  if [ -f "$run/pid" ] && kill -0 "$(cat "$run/pid")" 2>/dev/null && ! grep -q '^[^)]*) Z' "/proc/$(cat "$run/pid")/stat" 2>/dev/null; then
    echo "kafka.sh: already running on 127.0.0.1:$port" >&2; return
  fi
  local java_opts=(-Xms256m -Xmx768m -XX:+UseG1GC "-Dlog4j2.configurationFile=$run/log4j2.properties")
  nohup java "${java_opts[@]}" -cp "$libs/*" kafka.Kafka "$run/server.properties" >>"$run/stdout.log" 2>&1 &
  echo $! > "$run/pid"
  for _ in $(seq 1 120); do
    if answers; then echo "kafka.sh: broker restarted on 127.0.0.1:$port" >&2; return; fi
    kill -0 "$(cat "$run/pid")" 2>/dev/null || { echo "kafka.sh: broker exited; see $run/stdout.log" >&2; tail -20 "$run/stdout.log" >&2; exit 1; }
    sleep 0.5
  done
  echo "kafka.sh: broker did not answer on 127.0.0.1:$port within 60 s" >&2; exit 1
}

case "${1:-}" in
  start|start-secure) start ;;
  stop|stop-secure) stop ;;
  restart|restart-secure) restart ;;
  status|status-secure) if answers; then echo "up on 127.0.0.1:$port"; else echo "down"; exit 1; fi ;;
  fetch) fetch ;;
  *) echo "usage: scripts/kafka.sh start|stop|restart|status|start-secure|stop-secure|status-secure|fetch" >&2; exit 2 ;;
esac
