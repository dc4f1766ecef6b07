#!/usr/bin/env bash
# A single-node Apache Kafka 4.x broker (KRaft) on 127.0.0.1 for the integration tests.
#   scripts/kafka.sh start   # fetch the jars from Maven Central (once), format, start, wait
#   scripts/kafka.sh stop    # stop it and delete its data
#   scripts/kafka.sh status
# KAFKA_VERSION (4.1.1), KAFKA_PORT (19092), LABELGATE_CACHE (~/.cache/labelgate) override.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
version=${KAFKA_VERSION:-4.1.1}
port=${KAFKA_PORT:-19092}
controller_port=$((port + 1))
cache=${LABELGATE_CACHE:-$HOME/.cache/labelgate}
libs=$cache/kafka-$version/libs
run=${KAFKA_RUN_DIR:-/tmp/labelgate-kafka-$port}

fetch() {
  [ -f "$libs/.complete" ] && return
  command -v mvn >/dev/null || { echo "kafka.sh: Maven (mvn) is needed to fetch Kafka" >&2; exit 1; }
  mkdir -p "$cache/kafka-$version"
  cat > "$cache/kafka-$version/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>labelgate</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$version</version></dependency>
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

start() {
  fetch
  if [ -f "$run/pid" ] && kill -0 "$(cat "$run/pid")" 2>/dev/null; then echo "kafka.sh: already running on 127.0.0.1:$port" >&2; return; fi
  rm -rf "$run"; mkdir -p "$run/data"
  cat > "$run/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$run/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
message.max.bytes=4194304
PROPS
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
  java "${java_opts[@]}" -cp "$libs/*" kafka.tools.StorageTool format -t "$cluster_id" -c "$run/server.properties" >"$run/format.log" 2>&1
  nohup java "${java_opts[@]}" -cp "$libs/*" kafka.Kafka "$run/server.properties" >"$run/stdout.log" 2>&1 &
  echo $! > "$run/pid"
  for _ in $(seq 1 120); do
    if answers; then sleep 2; echo "kafka.sh: broker up on 127.0.0.1:$port (logs in $run)" >&2; return; fi
    kill -0 "$(cat "$run/pid")" 2>/dev/null || { echo "kafka.sh: broker exited; see $run/stdout.log" >&2; tail -20 "$run/stdout.log" >&2; exit 1; }
    sleep 1
  done
  echo "kafka.sh: broker did not answer on 127.0.0.1:$port within 120 s" >&2; exit 1
}

stop() { stop_run_dir "$run" 30; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if answers; then echo "up on 127.0.0.1:$port"; else echo "down"; exit 1; fi ;;
  fetch) fetch ;;
  *) echo "usage: scripts/kafka.sh start|stop|status|fetch" >&2; exit 2 ;;
esac
