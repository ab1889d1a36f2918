#!/usr/bin/env bash
# The local stack, all on 127.0.0.1, no Docker needed:
#   - a real Apache Kafka broker (KRaft, combined broker+controller, single node);
#   - a real Apicurio Registry (Confluent-compatible API at /apis/ccompat/v7);
#   - PostgreSQL (Debian's package) as the CRM database, its own cluster under .stack/postgres,
#     with wal_level=logical;
#   - Kafka Connect (distributed mode, same Kafka version) with the Debezium PostgreSQL connector
#     and Apicurio's Avro converter as plugins.
# The jars come from Maven Central (deploy/local/pom.xml).
#
#   stack.sh up       fetch jars if missing, start what is not running, wait until ready (idempotent)
#   stack.sh down     stop every service; no process is left behind (data is kept)
#   stack.sh status   print each service's state; exit 0 only when all are ready
#   stack.sh reset    down, then delete the stack's data and logs
#   stack.sh env      print the addresses as shell assignments (for `eval`)
#   stack.sh bounce-kafka hard|clean    kill -9 (or stop) the broker, then start it again
#   stack.sh bounce-connect hard|clean  the same for the Kafka Connect worker
#   stack.sh psql [args]                psql on the CRM database (as the stack's superuser)
#   stack.sh kafka-tool <class> [args]  run a Kafka CLI tool class from the fetched jars
#
# Settings (environment):
#   AUTOGLM_STACK_DIR        data, logs and jars               (default: <repo>/.stack)
#   AUTOGLM_KAFKA_PORT       broker listener                   (default: 39092)
#   AUTOGLM_CONTROLLER_PORT  KRaft controller listener         (default: 39093)
#   AUTOGLM_FAULTS_PORT      broker listener for fault tests   (default: 39094); it advertises
#                            AUTOGLM_CUTS_PORT (default: 39095), where a test's proxy that cuts
#                            one client's connections listens (tests/support/cuts.rs)
#   AUTOGLM_REGISTRY_PORT    Apicurio Registry HTTP port       (default: 38081)
#   AUTOGLM_REGISTRY_MANAGEMENT_PORT  its health/metrics port  (default: 38082)
#   AUTOGLM_POSTGRES_PORT    PostgreSQL                        (default: 35432)
#   AUTOGLM_CONNECT_PORT     Kafka Connect REST API            (default: 38083)
#   AUTOGLM_STACK_TIMEOUT_SECS  readiness timeout per service  (default: 120)
#   REGISTRY_JAVA_HOME       JDK for Apicurio (needs 21+)      (default: newest Temurin in /usr/lib/jvm)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
stack_dir=${AUTOGLM_STACK_DIR:-$repo/.stack}
kafka_port=${AUTOGLM_KAFKA_PORT:-39092}
controller_port=${AUTOGLM_CONTROLLER_PORT:-39093}
faults_port=${AUTOGLM_FAULTS_PORT:-39094}
cuts_port=${AUTOGLM_CUTS_PORT:-39095}
registry_port=${AUTOGLM_REGISTRY_PORT:-38081}
registry_mgmt_port=${AUTOGLM_REGISTRY_MANAGEMENT_PORT:-38082}
postgres_port=${AUTOGLM_POSTGRES_PORT:-35432}
connect_port=${AUTOGLM_CONNECT_PORT:-38083}
timeout_secs=${AUTOGLM_STACK_TIMEOUT_SECS:-120}
# The CRM database and its superuser (initdb's bootstrap user; it may replicate, as Debezium needs).
pg_db=crm
pg_user=autoglm

pom_prop() { sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" "$here/pom.xml" | head -n1; }
kafka_version=$(pom_prop kafka.version)
apicurio_version=$(pom_prop apicurio.version)
kafka_lib=$stack_dir/lib/kafka-$kafka_version
apicurio_lib=$stack_dir/lib/apicurio-$apicurio_version
debezium_version=$(pom_prop debezium.version)
plugins_dir=$stack_dir/lib/connect-plugins

log() { printf 'stack: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Whether the pid file names a running process of that program (java unless named): after a restart
# of the machine its number may belong to another program, or to a thread (kill -0 accepts one).
pid_alive() {
  local pidfile=$1 program=${2:-java}
  [[ -f $pidfile ]] && [[ $(ps -p "$(head -n1 "$pidfile")" -o comm= 2>/dev/null) == "$program" ]]
}

registry_java() {
  if [[ -n ${REGISTRY_JAVA_HOME:-} ]]; then
    echo "$REGISTRY_JAVA_HOME/bin/java"
    return
  fi
  local jdk
  jdk=$(ls -d /usr/lib/jvm/temurin-2[5-9]* /usr/lib/jvm/temurin-2[1-4]* 2>/dev/null | sort -V | tail -n1 || true)
  [[ -n $jdk ]] || die "no JDK 21+ for Apicurio Registry under /usr/lib/jvm; set REGISTRY_JAVA_HOME"
  echo "$jdk/bin/java"
}

fetch_jars() {
  if [[ -f $kafka_lib/connect-runtime-$kafka_version.jar && -f $apicurio_lib/quarkus-run.jar &&
    -f $plugins_dir/debezium-postgres-$debezium_version/debezium-connector-postgres-$debezium_version.jar ]]; then
    return
  fi
  command -v mvn >/dev/null || die "maven (mvn) is needed to fetch the stack's jars"
  log "fetching Kafka $kafka_version (broker and Connect), Apicurio Registry $apicurio_version and Debezium $debezium_version from Maven Central"
  mvn -q -B -f "$here/pom.xml" -Dstack.lib="$stack_dir/lib" generate-resources \
    || die "maven could not fetch the stack's jars (see the output above)"
}

# Wait until "$2" (a command) succeeds, or fail naming the log file "$3"; the process in the pid
# file "$4" (a program named "$5", java unless named) must stay alive meanwhile.
wait_ready() {
  local name=$1 check=$2 logfile=$3 pidfile=$4 program=${5:-java} deadline=$((SECONDS + timeout_secs))
  until eval "$check"; do
    if ! pid_alive "$pidfile" "$program"; then
      tail -n 20 "$logfile" >&2 || true
      die "$name exited during start-up; see $logfile"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 20 "$logfile" >&2 || true
      die "$name was not ready after ${timeout_secs}s; see $logfile"
    fi
    sleep 0.5
  done
}

kafka_ready() { port_open "$kafka_port" && grep -q 'Kafka Server started' "$stack_dir/kafka/server.log" 2>/dev/null; }
registry_ready() { curl -fsS "http://127.0.0.1:$registry_port/apis/ccompat/v7/subjects" >/dev/null 2>&1; }

start_kafka() {
  local dir=$stack_dir/kafka pidfile=$stack_dir/kafka/kafka.pid
  if pid_alive "$pidfile"; then
    kafka_ready || wait_ready kafka kafka_ready "$dir/server.log" "$pidfile"
    log "kafka already running on 127.0.0.1:$kafka_port"
    return
  fi
  port_open "$kafka_port" && die "port $kafka_port is taken by another process; set AUTOGLM_KAFKA_PORT"
  mkdir -p "$dir/data"
  {
    cat "$here/kafka.properties"
    echo "controller.quorum.bootstrap.servers=127.0.0.1:$controller_port"
    echo "listeners=PLAINTEXT://127.0.0.1:$kafka_port,CONTROLLER://127.0.0.1:$controller_port,FAULTS://127.0.0.1:$faults_port"
    echo "advertised.listeners=PLAINTEXT://127.0.0.1:$kafka_port,FAULTS://127.0.0.1:$cuts_port"
    echo "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,FAULTS:PLAINTEXT"
    echo "log.dirs=$dir/data"
  } >"$dir/server.properties"
  cat >"$dir/log4j2.properties" <<EOF
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
appender.file.type=File
appender.file.name=file
appender.file.fileName=$dir/server.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka
logger.kafka.level=INFO
logger.apache.name=org.apache.kafka
logger.apache.level=INFO
EOF
  local classpath="$kafka_lib/*"
  local jvm=(-Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=$dir/log4j2.properties" "-Dkafka.logs.dir=$dir")
  if [[ ! -f $dir/data/meta.properties ]]; then
    log "formatting kafka storage in $dir/data"
    java "${jvm[@]}" -cp "$classpath" kafka.tools.StorageTool format --standalone \
      -t "$(java -cp "$classpath" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)" \
      -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || die "kafka storage format failed; see $dir/format.log"
  fi
  : >"$dir/server.log"
  log "starting kafka $kafka_version on 127.0.0.1:$kafka_port (log: $dir/server.log)"
  setsid nohup java "${jvm[@]}" -cp "$classpath" kafka.Kafka "$dir/server.properties" \
    >"$dir/stdout.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  wait_ready kafka kafka_ready "$dir/server.log" "$pidfile"
}

start_registry() {
  local dir=$stack_dir/registry pidfile=$stack_dir/registry/registry.pid
  if pid_alive "$pidfile"; then
    registry_ready || wait_ready registry registry_ready "$dir/registry.log" "$pidfile"
    log "registry already running on 127.0.0.1:$registry_port"
    return
  fi
  port_open "$registry_port" && die "port $registry_port is taken by another process; set AUTOGLM_REGISTRY_PORT"
  mkdir -p "$dir"
  local java_bin
  java_bin=$(registry_java)
  log "starting apicurio registry $apicurio_version on 127.0.0.1:$registry_port (log: $dir/registry.log)"
  (
    cd "$dir"
    setsid nohup "$java_bin" -Xms128m -Xmx768m \
      -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$registry_port" \
      -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$registry_mgmt_port" \
      -Dapicurio.storage.kind=sql -Dapicurio.storage.sql.kind=h2 \
      -Dapicurio.rest.deletion.artifact.enabled=true \
      -Dapicurio.rest.deletion.artifact-version.enabled=true \
      -Dapicurio.rest.deletion.group.enabled=true \
      -jar "$apicurio_lib/quarkus-run.jar" >"$dir/registry.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
  )
  wait_ready registry registry_ready "$dir/registry.log" "$pidfile"
}

# PostgreSQL refuses to run as root: then its cluster belongs to the `postgres` user that Debian's
# package creates.
pg_bin() {
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
  [[ -n $bin ]] || die "PostgreSQL is not installed (make deps installs Debian's postgresql)"
  echo "$bin"
}
as_pg() {
  if ((EUID == 0)); then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}
# The cluster lives in .stack/postgres. When the postgres user cannot reach the clone (a clone
# under /root, say), it lives in /var/tmp instead, and .stack/postgres links to it.
postgres_dir() {
  local dir=$stack_dir/postgres
  if ((EUID == 0)) && [[ ! -L $dir ]]; then
    mkdir -p "$stack_dir"
    if ! runuser -u postgres -- test -x "$stack_dir" 2>/dev/null; then
      local real
      real=/var/tmp/autoglm-postgres-$(printf '%s' "$stack_dir" | md5sum | cut -c1-12)
      mkdir -p "$real"
      ln -sfn "$real" "$dir"
    fi
  fi
  if [[ -L $dir ]]; then readlink -f "$dir"; else echo "$dir"; fi
}
postgres_ready() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$postgres_port" -d "$pg_db" -U "$pg_user"; }
psql_cmd() { "$(pg_bin)/psql" -X -q -h 127.0.0.1 -p "$postgres_port" -U "$pg_user" "$@"; }
postgres_version() { "$(pg_bin)/postgres" --version | awk '{print $3}'; }

start_postgres() {
  local dir bin
  dir=$(postgres_dir)
  local data=$dir/data pidfile=$dir/data/postmaster.pid
  bin=$(pg_bin)
  if pid_alive "$pidfile" postgres; then
    postgres_ready || wait_ready postgres postgres_ready "$dir/postgres.log" "$pidfile" postgres
    log "postgres already running on 127.0.0.1:$postgres_port"
    return
  fi
  port_open "$postgres_port" && die "port $postgres_port is taken by another process; set AUTOGLM_POSTGRES_PORT"
  mkdir -p "$dir"
  if ((EUID == 0)); then chown postgres: "$dir"; fi
  if [[ ! -f $data/PG_VERSION ]]; then
    log "initialising a PostgreSQL cluster in $data"
    as_pg "$bin/initdb" -D "$data" -U "$pg_user" --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 ||
      die "initdb failed; see $dir/initdb.log"
  fi
  log "starting postgres $(postgres_version) on 127.0.0.1:$postgres_port (log: $dir/postgres.log)"
  # Logical decoding for Debezium (pgoutput); sockets in the cluster's own directory.
  as_pg "$bin/pg_ctl" -D "$data" -l "$dir/postgres.log" -s -w -t "$timeout_secs" start -o \
    "-c listen_addresses=127.0.0.1 -p $postgres_port -c unix_socket_directories=$dir -c wal_level=logical -c max_replication_slots=32 -c max_wal_senders=32 -c shared_buffers=64MB" ||
    { tail -n 20 "$dir/postgres.log" >&2; die "postgres did not start; see $dir/postgres.log"; }
  wait_ready postgres postgres_ready "$dir/postgres.log" "$pidfile" postgres
  if [[ -z $(psql_cmd -d postgres -tAc "select 1 from pg_database where datname = '$pg_db'") ]]; then
    psql_cmd -d postgres -c "create database $pg_db" >/dev/null
  fi
}

stop_postgres() {
  local data
  data=$(postgres_dir)/data
  if pid_alive "$data/postmaster.pid" postgres; then
    log "stopping postgres (pid $(head -n1 "$data/postmaster.pid"))"
    as_pg "$(pg_bin)/pg_ctl" -D "$data" -s -m fast -w stop || true
  fi
}

connect_ready() { curl -fsS "http://127.0.0.1:$connect_port/connector-plugins" 2>/dev/null | grep -q PostgresConnector; }

start_connect() {
  local dir=$stack_dir/connect pidfile=$stack_dir/connect/connect.pid
  if pid_alive "$pidfile"; then
    connect_ready || wait_ready connect connect_ready "$dir/connect.log" "$pidfile"
    log "kafka connect already running on 127.0.0.1:$connect_port"
    return
  fi
  port_open "$connect_port" && die "port $connect_port is taken by another process; set AUTOGLM_CONNECT_PORT"
  mkdir -p "$dir"
  # Distributed mode, as production runs it: connector configs, source offsets and status live
  # in Kafka topics, so a restarted worker resumes its connectors where they stopped.
  cat >"$dir/worker.properties" <<PROPERTIES
bootstrap.servers=127.0.0.1:$kafka_port
group.id=autoglm-connect
listeners=http://127.0.0.1:$connect_port
rest.advertised.host.name=127.0.0.1
rest.advertised.port=$connect_port
plugin.path=$plugins_dir
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
config.storage.topic=_connect-configs
offset.storage.topic=_connect-offsets
status.storage.topic=_connect-status
config.storage.replication.factor=1
offset.storage.replication.factor=1
status.storage.replication.factor=1
offset.flush.interval.ms=1000
scheduled.rebalance.max.delay.ms=0
PROPERTIES
  cat >"$dir/log4j2.properties" <<PROPERTIES
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
appender.file.type=File
appender.file.name=file
appender.file.fileName=$dir/connect.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
logger.reflections.name=org.reflections
logger.reflections.level=ERROR
PROPERTIES
  # The last run's log is kept beside the new one: a test that kills the worker reads both.
  [[ -s $dir/connect.log ]] && mv "$dir/connect.log" "$dir/connect.log.1"
  : >"$dir/connect.log"
  log "starting kafka connect $kafka_version with Debezium $debezium_version on 127.0.0.1:$connect_port (log: $dir/connect.log)"
  setsid nohup java -Xms128m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
    "-Dlog4j2.configurationFile=$dir/log4j2.properties" -cp "$kafka_lib/*" \
    org.apache.kafka.connect.cli.ConnectDistributed "$dir/worker.properties" \
    >"$dir/stdout.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  wait_ready connect connect_ready "$dir/connect.log" "$pidfile"
}

stop_one() {
  local name=$1 pidfile=$2 pid
  if pid_alive "$pidfile"; then
    pid=$(cat "$pidfile")
    log "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "$name did not stop in 30s; killing it"
      kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$pidfile"
}

# Fault tests: `hard` kills a service ("$1", pid file "$2") with SIGKILL, `clean` stops it; then
# "$3" starts it again.
bounce() {
  local name=$1 pidfile=$2 start=$3 mode=$4 pid started
  case $mode in
    hard)
      if pid_alive "$pidfile"; then
        pid=$(cat "$pidfile")
        log "killing $name (pid $pid) with SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
        rm -f "$pidfile"
      fi
      ;;
    clean) stop_one "$name" "$pidfile" ;;
    *) die "usage: $0 bounce-${name// /-} hard|clean" ;;
  esac
  started=$SECONDS
  "$start"
  log "$name back in $((SECONDS - started))s"
}

status() {
  local ok=0
  if pid_alive "$stack_dir/kafka/kafka.pid" && kafka_ready; then
    echo "kafka     ready    127.0.0.1:$kafka_port (Apache Kafka $kafka_version, KRaft)"
  else
    echo "kafka     down     127.0.0.1:$kafka_port"
    ok=1
  fi
  if pid_alive "$stack_dir/registry/registry.pid" && registry_ready; then
    echo "registry  ready    http://127.0.0.1:$registry_port/apis/ccompat/v7 (Apicurio Registry $apicurio_version)"
  else
    echo "registry  down     http://127.0.0.1:$registry_port/apis/ccompat/v7"
    ok=1
  fi
  if pid_alive "$(postgres_dir)/data/postmaster.pid" postgres && postgres_ready; then
    echo "postgres  ready    postgresql://$pg_user@127.0.0.1:$postgres_port/$pg_db (PostgreSQL $(postgres_version), wal_level=logical)"
  else
    echo "postgres  down     postgresql://$pg_user@127.0.0.1:$postgres_port/$pg_db"
    ok=1
  fi
  if pid_alive "$stack_dir/connect/connect.pid" && connect_ready; then
    echo "connect   ready    http://127.0.0.1:$connect_port (Kafka Connect $kafka_version, Debezium $debezium_version)"
    # One line per connector: its state and its tasks' states.
    curl -fsS "http://127.0.0.1:$connect_port/connectors?expand=status" 2>/dev/null |
      python3 -c 'import json, sys
for name, c in sorted(json.load(sys.stdin).items()):
    s = c["status"]
    tasks = ", ".join(t["state"] for t in s["tasks"]) or "no tasks"
    print("          connector %s: %s (tasks: %s)" % (name, s["connector"]["state"], tasks))' || true
  else
    echo "connect   down     http://127.0.0.1:$connect_port"
    ok=1
  fi
  return $ok
}

case ${1:-} in
  up)
    fetch_jars
    started=$SECONDS
    start_kafka
    start_registry
    start_postgres
    start_connect
    log "stack ready in $((SECONDS - started))s"
    ;;
  down)
    stop_one connect "$stack_dir/connect/connect.pid"
    stop_postgres
    stop_one registry "$stack_dir/registry/registry.pid"
    stop_one kafka "$stack_dir/kafka/kafka.pid"
    ;;
  status) status ;;
  bounce-kafka) bounce kafka "$stack_dir/kafka/kafka.pid" start_kafka "${2:-}" ;;
  bounce-connect) bounce "kafka connect" "$stack_dir/connect/connect.pid" start_connect "${2:-}" ;;
  psql)
    shift
    psql_cmd -d "$pg_db" "$@"
    ;;
  kafka-tool)
    # Runs a Kafka command-line tool class, e.g. org.apache.kafka.tools.TransactionsCommand.
    shift
    [[ $# -ge 1 ]] || die "usage: $0 kafka-tool <main class> [args…]"
    exec java -cp "$kafka_lib/*" "$@"
    ;;
  reset)
    "$0" down
    rm -rf "$stack_dir/kafka" "$stack_dir/registry" "$(postgres_dir)" "$stack_dir/postgres" "$stack_dir/connect"
    ;;
  env)
    echo "AUTOGLM_KAFKA_BOOTSTRAP=127.0.0.1:$kafka_port"
    echo "AUTOGLM_SCHEMA_REGISTRY_URL=http://127.0.0.1:$registry_port/apis/ccompat/v7"
    echo "AUTOGLM_KAFKA_FAULTS=127.0.0.1:$faults_port"
    echo "AUTOGLM_KAFKA_CUTS=127.0.0.1:$cuts_port"
    echo "AUTOGLM_POSTGRES_URL=postgresql://$pg_user@127.0.0.1:$postgres_port/$pg_db"
    echo "AUTOGLM_CONNECT_URL=http://127.0.0.1:$connect_port"
    ;;
  *)
    echo "usage: $0 up|down|status|reset|env|bounce-kafka hard|clean|bounce-connect hard|clean|psql [args]|kafka-tool <class> [args]" >&2
    exit 2
    ;;
esac
