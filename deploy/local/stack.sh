#!/usr/bin/env bash
# The local stack, all on 127.0.0.1, no Docker needed:
#   - a real Apache Kafka broker (KRaft, combined broker+controller, single node);
#   - a real Apicurio Registry (Confluent-compatible API at /apis/ccompat/v7);
#   - PostgreSQL (Debian's package) as the CRM database, its own cluster under .stack/postgres,
#     with wal_level=logical;
#   - Kafka Connect (distributed mode, same Kafka version) with the Debezium PostgreSQL connector
#     and Apicurio's Avro converter as plugins;
#   - Keycloak (dev mode) as the OIDC provider: realm `autoglm` (deploy/local/security/
#     realm-autoglm.json), 30-second access tokens, confidential clients autoglm-sync,
#     autoglm-registry and autoglm-disabled (disabled), client scope `kafka` (audience kafka-broker);
#   - a second Apicurio Registry (the same jars), HTTPS only with the broker's certificate, that
#     wants a bearer token of the realm on every request (the secure registry);
#   - Jaeger (the v2 binary, built on the OpenTelemetry collector) as the trace collector: OTLP
#     over HTTP and gRPC in, traces kept in memory (lost when it stops), its query API over HTTP.
# The jars come from Maven Central (deploy/local/pom.xml); Jaeger is built from the Go module proxy
# once per machine (deploy/local/tools.sh).
#
# The broker's secured side (the same broker; inter-broker and controller traffic stay PLAINTEXT):
#   SCRAM     SASL_SSL, SCRAM-SHA-512 and SCRAM-SHA-256; users autoglm/autoglm-secret (a processor
#             principal) and admin/admin-secret (a super user)
#   OAUTH     SASL_SSL, OAUTHBEARER: Keycloak's tokens, checked against its JWKS, audience
#             kafka-broker, principal User:<azp> (the client id); sessions re-authenticate at least
#             every 15 s (and before the token expires)
#   MTLS      SSL, client certificate required; principal User:<CN> (User:autoglm-mtls)
#   MISMATCH  like SCRAM, but its certificate names only elsewhere.invalid (hostname checks fail)
# The StandardAuthorizer denies what no ACL allows. Super users: User:ANONYMOUS (every PLAINTEXT
# client, Kafka Connect, the controller) and User:admin. The processor principals User:autoglm,
# User:autoglm-sync and User:autoglm-mtls get prefixed ACLs only: topics in. (Read, Describe),
# out. and dlq. (Write, Describe), sec. (Read, Write, Describe, Create); groups sec. (Read,
# Describe); transactional ids sec.g. (Write, Describe).
# TLS material is made once by openssl in $AUTOGLM_STACK_DIR/security (never committed): ca.pem
# (the local CA), broker.p12 (SAN IP:127.0.0.1, DNS:localhost), mismatch.p12 (SAN
# DNS:elsewhere.invalid), truststore.p12 (the CA), client.pem/client.key (CN=autoglm-mtls,
# unencrypted PEM), other-ca.pem (an unrelated CA). Every store's password is `changeit`.
# deploy/local/security/check.sh tries each way in (and the ways it must refuse) with Kafka's Java
# clients.
#
#   stack.sh up       fetch jars if missing, start what is not running, wait until ready (idempotent)
#   stack.sh down     stop every service; no process is left behind (data is kept)
#   stack.sh status   print each service's state; exit 0 only when all are ready
#   stack.sh reset    down, then delete the stack's data and logs, Keycloak's and the TLS material
#   stack.sh env      print the addresses (and the TLS files, the OIDC endpoints) as shell
#                     assignments (for `eval`)
#   stack.sh bounce-kafka hard|clean [SECONDS]
#                                       kill -9 (or stop) the broker, then start it again
#                                       (after SECONDS down; default 0)
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
#   AUTOGLM_SCRAM_PORT       SASL_SSL SCRAM listener           (default: 39096)
#   AUTOGLM_OAUTH_PORT       SASL_SSL OAUTHBEARER listener     (default: 39097)
#   AUTOGLM_MTLS_PORT        SSL listener, client certificates (default: 39098)
#   AUTOGLM_MISMATCH_PORT    SASL_SSL SCRAM, wrong host name   (default: 39099)
#   AUTOGLM_REGISTRY_PORT    Apicurio Registry HTTP port       (default: 38081)
#   AUTOGLM_REGISTRY_MANAGEMENT_PORT  its health/metrics port  (default: 38082)
#   AUTOGLM_SECURE_REGISTRY_PORT  the secure registry's HTTPS port (default: 38086)
#   AUTOGLM_SECURE_REGISTRY_MANAGEMENT_PORT  its health port   (default: 38087)
#   AUTOGLM_POSTGRES_PORT    PostgreSQL                        (default: 35432)
#   AUTOGLM_CONNECT_PORT     Kafka Connect REST API            (default: 38083)
#   AUTOGLM_KEYCLOAK_PORT    Keycloak HTTP port                (default: 38084); admin/admin
#   AUTOGLM_KEYCLOAK_MANAGEMENT_PORT  its management port      (default: 38085)
#   AUTOGLM_JAEGER_OTLP_PORT  Jaeger's OTLP/HTTP receiver      (default: 38088)
#   AUTOGLM_JAEGER_OTLP_GRPC_PORT  its OTLP/gRPC receiver      (default: 38089)
#   AUTOGLM_JAEGER_QUERY_PORT  Jaeger's query API and UI (HTTP) (default: 38090)
#   AUTOGLM_JAEGER_QUERY_GRPC_PORT  its query API over gRPC    (default: 38091)
#   AUTOGLM_STACK_TIMEOUT_SECS  readiness timeout per service  (default: 120)
#   REGISTRY_JAVA_HOME       JDK for Apicurio and Keycloak (needs 21+)
#                                                              (default: newest Temurin in /usr/lib/jvm)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
stack_dir=${AUTOGLM_STACK_DIR:-$repo/.stack}
[[ $stack_dir == /* ]] || stack_dir=$PWD/$stack_dir
kafka_port=${AUTOGLM_KAFKA_PORT:-39092}
controller_port=${AUTOGLM_CONTROLLER_PORT:-39093}
faults_port=${AUTOGLM_FAULTS_PORT:-39094}
cuts_port=${AUTOGLM_CUTS_PORT:-39095}
registry_port=${AUTOGLM_REGISTRY_PORT:-38081}
registry_mgmt_port=${AUTOGLM_REGISTRY_MANAGEMENT_PORT:-38082}
postgres_port=${AUTOGLM_POSTGRES_PORT:-35432}
connect_port=${AUTOGLM_CONNECT_PORT:-38083}
scram_port=${AUTOGLM_SCRAM_PORT:-39096}
oauth_port=${AUTOGLM_OAUTH_PORT:-39097}
mtls_port=${AUTOGLM_MTLS_PORT:-39098}
mismatch_port=${AUTOGLM_MISMATCH_PORT:-39099}
keycloak_port=${AUTOGLM_KEYCLOAK_PORT:-38084}
secure_registry_port=${AUTOGLM_SECURE_REGISTRY_PORT:-38086}
secure_registry_mgmt_port=${AUTOGLM_SECURE_REGISTRY_MANAGEMENT_PORT:-38087}
keycloak_mgmt_port=${AUTOGLM_KEYCLOAK_MANAGEMENT_PORT:-38085}
jaeger_otlp_port=${AUTOGLM_JAEGER_OTLP_PORT:-38088}
jaeger_otlp_grpc_port=${AUTOGLM_JAEGER_OTLP_GRPC_PORT:-38089}
jaeger_query_port=${AUTOGLM_JAEGER_QUERY_PORT:-38090}
jaeger_query_grpc_port=${AUTOGLM_JAEGER_QUERY_GRPC_PORT:-38091}
timeout_secs=${AUTOGLM_STACK_TIMEOUT_SECS:-120}
# The CRM database and its superuser (initdb's bootstrap user; it may replicate, as Debezium needs).
pg_db=crm
pg_user=autoglm
# The secured side. Internal to this machine, so plain constants: the password of every PKCS12
# store, the SCRAM users (name:password), the OIDC realm and its endpoints.
security_dir=$stack_dir/security
store_pass=changeit
scram_users=(autoglm:autoglm-secret admin:admin-secret)
# Those the processor runs as, one per way in (SCRAM, OAuth client id, mTLS certificate's CN).
processor_principals=(User:autoglm User:autoglm-sync User:autoglm-mtls)
keycloak_url=http://127.0.0.1:$keycloak_port
oidc_issuer=$keycloak_url/realms/autoglm
oidc_token_endpoint=$oidc_issuer/protocol/openid-connect/token
oidc_jwks_endpoint=$oidc_issuer/protocol/openid-connect/certs

pom_prop() { sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" "$here/pom.xml" | head -n1; }
kafka_version=$(pom_prop kafka.version)
apicurio_version=$(pom_prop apicurio.version)
kafka_lib=$stack_dir/lib/kafka-$kafka_version
apicurio_lib=$stack_dir/lib/apicurio-$apicurio_version
debezium_version=$(pom_prop debezium.version)
plugins_dir=$stack_dir/lib/connect-plugins
keycloak_version=$(pom_prop keycloak.version)
keycloak_home=$stack_dir/lib/keycloak-$keycloak_version

log() { printf 'stack: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Whether the pid file names a running process of that program (java unless named; alternatives
# separated by |): after a restart of the machine its number may belong to another program, or to
# a thread (kill -0 accepts one).
pid_alive() {
  local pidfile=$1 program=${2:-java} comm
  [[ -f $pidfile ]] || return 1
  comm=$(ps -p "$(head -n1 "$pidfile")" -o comm= 2>/dev/null) || return 1
  [[ -n $comm && "|$program|" == *"|$comm|"* ]]
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
    -f $plugins_dir/debezium-postgres-$debezium_version/debezium-connector-postgres-$debezium_version.jar &&
    -f $keycloak_home/bin/kc.sh ]]; then
    return
  fi
  command -v mvn >/dev/null || die "maven (mvn) is needed to fetch the stack's jars"
  log "fetching Kafka $kafka_version (broker and Connect), Apicurio Registry $apicurio_version, Debezium $debezium_version and Keycloak $keycloak_version from Maven Central"
  mvn -q -B -f "$here/pom.xml" -Dstack.lib="$stack_dir/lib" generate-resources \
    || die "maven could not fetch the stack's jars (see the output above)"
}

# The TLS material of the secured listeners, made once (all of it again when a file is missing):
#   ca.pem, ca.key              the local CA that signs everything below
#   broker.p12                  the broker's key and certificate, SAN IP:127.0.0.1 and DNS:localhost
#   mismatch.p12                the MISMATCH listener's: SAN DNS:elsewhere.invalid only
#   truststore.p12              the CA, for the broker (it checks the MTLS clients' certificates)
#   client.pem, client.key      the MTLS client's certificate (CN=autoglm-mtls) and unencrypted key
#   other-ca.pem                an unrelated CA, that signed nothing here (untrusted-CA tests)
# The PKCS12 stores' password is $store_pass. The keys are EC P-256.
security_files=(ca.pem ca.key broker.p12 mismatch.p12 truststore.p12 client.pem client.key other-ca.pem)
make_security() {
  local dir=$security_dir f missing=0
  for f in "${security_files[@]}"; do [[ -f $dir/$f ]] || missing=1; done
  ((missing)) || return 0
  command -v openssl >/dev/null || die "openssl is needed to make the stack's TLS certificates"
  log "making the TLS certificates in $dir"
  rm -rf "$dir"
  mkdir -p "$dir"
  local logfile=$dir/openssl.log
  ssl() { openssl "$@" >>"$logfile" 2>&1 || die "openssl $1 failed; see $logfile"; }
  # A self-signed CA: "$1" its file stem, "$2" its name.
  ca() {
    printf '[req]\ndistinguished_name=dn\nx509_extensions=ca\n[dn]\n[ca]\nbasicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n' >"$dir/$1.cnf"
    ssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days 3650 \
      -config "$dir/$1.cnf" -subj "/CN=$2" -keyout "$dir/$1.key" -out "$dir/$1.pem"
  }
  # A certificate signed by the CA: "$1" its file stem, "$2" its subject, "$3" its extensions.
  leaf() {
    printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nauthorityKeyIdentifier=keyid\n%b\n' "$3" >"$dir/$1.ext"
    ssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -subj "$2" \
      -keyout "$dir/$1.key" -out "$dir/$1.csr"
    ssl x509 -req -sha256 -days 3650 -in "$dir/$1.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
      -set_serial "0x$(openssl rand -hex 16)" -extfile "$dir/$1.ext" -out "$dir/$1.pem"
  }
  # A PKCS12 keystore of "$1": its key, its certificate and the CA's.
  keystore() {
    ssl pkcs12 -export -name "$1" -inkey "$dir/$1.key" -in "$dir/$1.pem" -certfile "$dir/ca.pem" \
      -passout "pass:$store_pass" -out "$dir/$1.p12"
  }
  ca ca "Open-AutoGLM local stack CA"
  ca other-ca "Open-AutoGLM unrelated CA"
  leaf broker /CN=localhost 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth'
  leaf mismatch /CN=elsewhere.invalid 'subjectAltName=DNS:elsewhere.invalid\nextendedKeyUsage=serverAuth'
  leaf client /CN=autoglm-mtls 'extendedKeyUsage=clientAuth'
  keystore broker
  keystore mismatch
  # Java takes a PKCS12 certificate as trusted only with Oracle's trust attribute, which OpenSSL
  # writes from 3.2 on (-jdktrust); keytool writes it everywhere.
  keytool -importcert -noprompt -alias autoglm-ca -file "$dir/ca.pem" -storetype PKCS12 \
    -keystore "$dir/truststore.p12" -storepass "$store_pass" >>"$logfile" 2>&1 ||
    die "keytool could not make the truststore; see $logfile"
  rm -f "$dir"/*.csr "$dir"/*.cnf "$dir"/*.ext
}

# Wait until "$2" (a command) succeeds, or fail naming the log file "$3"; the process in the pid
# file "$4" (a program named "$5", java unless named) must stay alive meanwhile.
wait_ready() {
  local name=$1 check=$2 logfile=$3 pidfile=$4 program=${5:-java} deadline=$((SECONDS + timeout_secs))
  until eval "$check"; do
    # (setsid and nohup: the moment before they become the program)
    if ! pid_alive "$pidfile" "$program|setsid|nohup"; then
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

# The broker's JVM options (also its storage tool's). Kafka's OAuth code contacts only the URLs
# that the last one lists.
kafka_jvm=(-Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true
  "-Dlog4j2.configurationFile=$stack_dir/kafka/log4j2.properties" "-Dkafka.logs.dir=$stack_dir/kafka"
  "-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls=$oidc_jwks_endpoint,$oidc_token_endpoint")

# The broker's configuration, and its storage formatted when new (with the SCRAM users): `up` does
# this while Keycloak starts.
prepare_kafka() {
  local dir=$stack_dir/kafka
  pid_alive "$dir/kafka.pid" && return
  make_security
  mkdir -p "$dir/data"
  local sec=$security_dir scram_jaas='org.apache.kafka.common.security.scram.ScramLoginModule required;'
  {
    cat "$here/kafka.properties"
    echo "controller.quorum.bootstrap.servers=127.0.0.1:$controller_port"
    echo "listeners=PLAINTEXT://127.0.0.1:$kafka_port,CONTROLLER://127.0.0.1:$controller_port,FAULTS://127.0.0.1:$faults_port,SCRAM://127.0.0.1:$scram_port,OAUTH://127.0.0.1:$oauth_port,MTLS://127.0.0.1:$mtls_port,MISMATCH://127.0.0.1:$mismatch_port"
    echo "advertised.listeners=PLAINTEXT://127.0.0.1:$kafka_port,FAULTS://127.0.0.1:$cuts_port,SCRAM://127.0.0.1:$scram_port,OAUTH://127.0.0.1:$oauth_port,MTLS://127.0.0.1:$mtls_port,MISMATCH://127.0.0.1:$mismatch_port"
    echo "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,FAULTS:PLAINTEXT,SCRAM:SASL_SSL,OAUTH:SASL_SSL,MTLS:SSL,MISMATCH:SASL_SSL"
    echo "log.dirs=$dir/data"
    cat <<PROPERTIES
# The secured side (see stack.sh's header). ACLs decide; PLAINTEXT clients are ANONYMOUS, a super user.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:ANONYMOUS;User:admin
# TLS, for every SSL and SASL_SSL listener unless overridden (MISMATCH)
ssl.keystore.type=PKCS12
ssl.keystore.location=$sec/broker.p12
ssl.keystore.password=$store_pass
ssl.key.password=$store_pass
ssl.truststore.type=PKCS12
ssl.truststore.location=$sec/truststore.p12
ssl.truststore.password=$store_pass
# SCRAM: users in the cluster's metadata (StorageTool format --add-scram, or ConfigCommand)
listener.name.scram.sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.scram.scram-sha-512.sasl.jaas.config=$scram_jaas
listener.name.scram.scram-sha-256.sasl.jaas.config=$scram_jaas
# MISMATCH: SCRAM, with a certificate for elsewhere.invalid only
listener.name.mismatch.ssl.keystore.location=$sec/mismatch.p12
listener.name.mismatch.sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256
listener.name.mismatch.scram-sha-512.sasl.jaas.config=$scram_jaas
listener.name.mismatch.scram-sha-256.sasl.jaas.config=$scram_jaas
# MTLS: the client's certificate is required; its CN is the principal
listener.name.mtls.ssl.client.auth=required
listener.name.mtls.ssl.principal.mapping.rules=RULE:^CN=([^,]+)\$/\$1/,DEFAULT
# OAUTH: Keycloak's access tokens, checked against its keys (JWKS); the principal is the client id
listener.name.oauth.sasl.enabled.mechanisms=OAUTHBEARER
listener.name.oauth.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;
listener.name.oauth.oauthbearer.sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler
listener.name.oauth.oauthbearer.connections.max.reauth.ms=15000
# Kafka 4.1's default validator (DefaultJwtValidator), built by this handler without a key resolver,
# falls back to the client-side checks: no signature, issuer or audience check. Name the broker's.
sasl.oauthbearer.jwt.validator.class=org.apache.kafka.common.security.oauthbearer.BrokerJwtValidator
sasl.oauthbearer.jwks.endpoint.url=$oidc_jwks_endpoint
sasl.oauthbearer.expected.audience=kafka-broker
sasl.oauthbearer.expected.issuer=$oidc_issuer
sasl.oauthbearer.sub.claim.name=azp
PROPERTIES
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
  if [[ ! -f $dir/data/meta.properties ]]; then
    log "formatting kafka storage in $dir/data (with the SCRAM users)"
    local scram=() user
    for user in "${scram_users[@]}"; do
      scram+=(--add-scram "SCRAM-SHA-512=[name=${user%%:*},password=${user#*:}]"
        --add-scram "SCRAM-SHA-256=[name=${user%%:*},password=${user#*:}]")
    done
    java "${kafka_jvm[@]}" -cp "$classpath" kafka.tools.StorageTool format --standalone \
      -t "$(java -cp "$classpath" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n1)" \
      -c "$dir/server.properties" "${scram[@]}" >"$dir/format.log" 2>&1 \
      || die "kafka storage format failed; see $dir/format.log"
    # A new cluster: its SCRAM users exist, its ACLs not yet (kafka_access).
    touch "$dir/scram-users.done"
    rm -f "$dir/acls.done" "$dir/acls-demo.done"
  fi
}

start_kafka() {
  local dir=$stack_dir/kafka pidfile=$stack_dir/kafka/kafka.pid
  if pid_alive "$pidfile"; then
    kafka_ready || wait_ready kafka kafka_ready "$dir/server.log" "$pidfile"
    kafka_access
    log "kafka already running on 127.0.0.1:$kafka_port"
    return
  fi
  port_open "$kafka_port" && die "port $kafka_port is taken by another process; set AUTOGLM_KAFKA_PORT"
  local port
  for port in "$scram_port" "$oauth_port" "$mtls_port" "$mismatch_port"; do
    port_open "$port" && die "port $port is taken by another process; see AUTOGLM_SCRAM_PORT, AUTOGLM_OAUTH_PORT, AUTOGLM_MTLS_PORT, AUTOGLM_MISMATCH_PORT"
  done
  # The broker reads the realm's keys (JWKS) as it starts, and stops if it cannot.
  if ! keycloak_ready; then
    start_keycloak
    wait_keycloak
  fi
  prepare_kafka
  : >"$dir/server.log"
  log "starting kafka $kafka_version on 127.0.0.1:$kafka_port (log: $dir/server.log)"
  setsid nohup java "${kafka_jvm[@]}" -cp "$kafka_lib/*" kafka.Kafka "$dir/server.properties" \
    >"$dir/stdout.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
  wait_ready kafka kafka_ready "$dir/server.log" "$pidfile"
  kafka_access
}

# The secured side's users and ACLs, set once per cluster over PLAINTEXT (as the super user
# ANONYMOUS); a marker file in .stack/kafka records each, since every tool run is a JVM start.
kafka_access() {
  local dir=$stack_dir/kafka user
  local tool=(java -Xms64m -Xss1m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$kafka_lib/*")
  # A cluster formatted before the secured side existed has no SCRAM users: add them (idempotent;
  # one mechanism per run, as the broker refuses two changes of one user in a request).
  if [[ ! -f $dir/scram-users.done ]]; then
    log "adding the SCRAM users to the existing cluster"
    local mechanism
    for user in "${scram_users[@]}"; do
      for mechanism in SCRAM-SHA-512 SCRAM-SHA-256; do
        "${tool[@]}" kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$kafka_port" --alter \
          --add-config "$mechanism=[password=${user#*:}]" \
          --entity-type users --entity-name "${user%%:*}" >>"$dir/access.log" 2>&1 ||
          die "could not add the SCRAM user ${user%%:*} ($mechanism); see $dir/access.log"
      done
    done
    touch "$dir/scram-users.done"
  fi
  if [[ ! -f $dir/acls.done ]]; then
    log "granting the ACLs of ${processor_principals[*]}"
    local principal allow=()
    for principal in "${processor_principals[@]}"; do allow+=(--allow-principal "$principal"); done
    # One run per set of operations; each grant is prefixed: it covers every name that begins so.
    acl() {
      "${tool[@]}" org.apache.kafka.tools.AclCommand --bootstrap-server "127.0.0.1:$kafka_port" --add \
        --resource-pattern-type prefixed "${allow[@]}" "$@" >>"$dir/access.log" 2>&1 ||
        die "could not create the ACLs ($*); see $dir/access.log"
    }
    # sources (topics in.*) and the processor's groups (sec.*)
    acl --topic in. --group sec. --operation Read --operation Describe
    # targets (out.*), dead letters (dlq.*), transactional ids (<group sec.g.*>-<instance>)
    acl --topic out. --topic dlq. --transactional-id sec.g. --operation Write --operation Describe
    # changelogs (<group sec.*>-<route>-changelog)
    acl --topic sec. --operation Read --operation Write --operation Describe --operation Create
    touch "$dir/acls.done"
  fi
  if [[ ! -f $dir/acls-demo.done ]]; then
    # `make demo SECURITY=on`: the OAuth client may run the demo's route (open-autoglm-config.yaml).
    log "granting the demo's ACLs of User:autoglm-sync"
    demo_acl() {
      "${tool[@]}" org.apache.kafka.tools.AclCommand --bootstrap-server "127.0.0.1:$kafka_port" --add \
        --resource-pattern-type prefixed --allow-principal User:autoglm-sync "$@" >>"$dir/access.log" 2>&1 ||
        die "could not create the demo's ACLs ($*); see $dir/access.log"
    }
    # its source, and its group (autoglm-demo, autoglm-demo-restore)
    demo_acl --topic crm.public.customers --group autoglm-demo --operation Read --operation Describe
    # its target, dead letters, transactional id; its changelog autoglm-demo-customers-changelog
    demo_acl --topic erp.customers --topic crm.customers.dlq --transactional-id autoglm-demo- \
      --operation Write --operation Describe
    demo_acl --topic autoglm-demo- --operation Read --operation Write --operation Describe --operation Create
    touch "$dir/acls-demo.done"
  fi
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

keycloak_ready() { curl -fsS "$oidc_issuer/.well-known/openid-configuration" >/dev/null 2>&1; }
# kc.sh runs Keycloak's JVM as its child, or (after a rebuild of its configuration) becomes it.
keycloak_programs='kc.sh|java'

# Keycloak starts in the background: the registry and PostgreSQL start meanwhile, and the broker
# after wait_keycloak (it fetches the realm's keys at start).
start_keycloak() {
  local dir=$stack_dir/keycloak pidfile=$stack_dir/keycloak/keycloak.pid
  if pid_alive "$pidfile" "$keycloak_programs"; then
    log "keycloak already running on $keycloak_url"
    return
  fi
  port_open "$keycloak_port" && die "port $keycloak_port is taken by another process; set AUTOGLM_KEYCLOAK_PORT"
  port_open "$keycloak_mgmt_port" && die "port $keycloak_mgmt_port is taken by another process; set AUTOGLM_KEYCLOAK_MANAGEMENT_PORT"
  mkdir -p "$dir" "$keycloak_home/data/import"
  # --import-realm reads Keycloak's own data/import; a realm that exists already is kept as it is.
  cp "$here/security/realm-autoglm.json" "$keycloak_home/data/import/realm-autoglm.json"
  local java_bin
  java_bin=$(registry_java)
  log "starting keycloak $keycloak_version on $keycloak_url (log: $dir/keycloak.log)"
  # Dev mode: HTTP, its H2 database in $dir/data (--db-url-path). The issuer is pinned by
  # --hostname, whatever host name a client uses. The bootstrap admin (admin/admin) is made on the
  # first start, in the master realm. C1 only (TieredStopAtLevel=1): it starts sooner. The first
  # start of a fresh copy rebuilds it for dev mode (about 12 s more).
  (
    cd "$dir"
    JAVA_HOME=${java_bin%/bin/java} JAVA_OPTS_APPEND=-XX:TieredStopAtLevel=1 \
      KC_BOOTSTRAP_ADMIN_USERNAME=admin KC_BOOTSTRAP_ADMIN_PASSWORD=admin \
      setsid nohup "$keycloak_home/bin/kc.sh" start-dev \
      --http-host=127.0.0.1 --http-port="$keycloak_port" --http-management-port="$keycloak_mgmt_port" \
      --hostname="$keycloak_url" --db-url-path="$dir" --import-realm \
      "-Dquarkus.transaction-manager.object-store.directory=$dir/data/transaction-logs" \
      >"$dir/keycloak.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
  )
  keycloak_launched=1
}

wait_keycloak() {
  local dir=$stack_dir/keycloak
  keycloak_ready || wait_ready keycloak keycloak_ready "$dir/keycloak.log" "$dir/keycloak.pid" "$keycloak_programs"
  [[ -n ${keycloak_launched:-} ]] && log "keycloak ready: realm autoglm at $oidc_issuer"
  keycloak_launched=
}

secure_registry_ready() {
  [[ $(curl -sS -o /dev/null -w '%{http_code}' --cacert "$security_dir/ca.pem" \
    "https://127.0.0.1:$secure_registry_port/apis/ccompat/v7/subjects" 2>/dev/null) == 401 ]]
}

# The secure registry: HTTPS only (the broker's certificate), and every request needs a bearer
# token of the realm (Quarkus OIDC; any client's). It starts after Keycloak, whose keys it fetches.
start_secure_registry() {
  local dir=$stack_dir/secure-registry pidfile=$stack_dir/secure-registry/registry.pid
  if pid_alive "$pidfile"; then
    log "secure registry already running on https://127.0.0.1:$secure_registry_port"
    return
  fi
  port_open "$secure_registry_port" && die "port $secure_registry_port is taken by another process; set AUTOGLM_SECURE_REGISTRY_PORT"
  port_open "$secure_registry_mgmt_port" && die "port $secure_registry_mgmt_port is taken by another process; set AUTOGLM_SECURE_REGISTRY_MANAGEMENT_PORT"
  mkdir -p "$dir"
  local java_bin
  java_bin=$(registry_java)
  log "starting the secure apicurio registry on https://127.0.0.1:$secure_registry_port (log: $dir/registry.log)"
  (
    cd "$dir"
    setsid nohup "$java_bin" -Xms128m -Xmx512m \
      -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.ssl-port="$secure_registry_port" \
      -Dquarkus.http.insecure-requests=disabled \
      "-Dquarkus.http.ssl.certificate.key-store-file=$security_dir/broker.p12" \
      "-Dquarkus.http.ssl.certificate.key-store-password=$store_pass" \
      -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$secure_registry_mgmt_port" \
      -Dquarkus.oidc.tenant-enabled=true "-Dquarkus.oidc.auth-server-url=$oidc_issuer" \
      -Dquarkus.oidc.client-id=autoglm-registry \
      -Dapicurio.storage.kind=sql -Dapicurio.storage.sql.kind=h2 \
      -Dapicurio.rest.deletion.artifact.enabled=true \
      -Dapicurio.rest.deletion.artifact-version.enabled=true \
      -Dapicurio.rest.deletion.group.enabled=true \
      -jar "$apicurio_lib/quarkus-run.jar" >"$dir/registry.log" 2>&1 </dev/null &
    echo $! >"$pidfile"
  )
}

wait_secure_registry() {
  local dir=$stack_dir/secure-registry
  secure_registry_ready ||
    wait_ready "secure registry" secure_registry_ready "$dir/registry.log" "$dir/registry.pid"
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

jaeger_version() { sed -n 's/^ *\[jaeger\]=[^@]*@v//p' "$here/tools.sh"; }
jaeger_ready() {
  port_open "$jaeger_otlp_port" && curl -fsS "http://127.0.0.1:$jaeger_query_port/api/services" >/dev/null 2>&1
}

# Jaeger v2 with a config of its own: every listener it opens on 127.0.0.1 and our ports (none of
# its defaults: 4317/4318, 16685/16686, 8888, 13133, …), no receivers but OTLP, no self-telemetry
# port, traces in memory only.
start_jaeger() {
  local dir=$stack_dir/jaeger pidfile=$stack_dir/jaeger/jaeger.pid bin
  if pid_alive "$pidfile" jaeger; then
    jaeger_ready || wait_ready jaeger jaeger_ready "$dir/jaeger.log" "$pidfile" jaeger
    log "jaeger already running on 127.0.0.1:$jaeger_otlp_port"
    return
  fi
  local port
  for port in "$jaeger_otlp_port" "$jaeger_otlp_grpc_port" "$jaeger_query_port" "$jaeger_query_grpc_port"; do
    port_open "$port" && die "port $port is taken by another process; see AUTOGLM_JAEGER_OTLP_PORT, AUTOGLM_JAEGER_OTLP_GRPC_PORT, AUTOGLM_JAEGER_QUERY_PORT, AUTOGLM_JAEGER_QUERY_GRPC_PORT"
  done
  bin=$(bash "$here/tools.sh" jaeger) || die "could not build jaeger (deploy/local/tools.sh jaeger)"
  mkdir -p "$dir"
  cat >"$dir/config.yaml" <<YAML
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    enable_tracing: false
    http:
      endpoint: 127.0.0.1:$jaeger_query_port
    grpc:
      endpoint: 127.0.0.1:$jaeger_query_grpc_port
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:$jaeger_otlp_port
      grpc:
        endpoint: 127.0.0.1:$jaeger_otlp_grpc_port
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
YAML
  log "starting jaeger on 127.0.0.1:$jaeger_otlp_port (OTLP/HTTP), query on http://127.0.0.1:$jaeger_query_port (log: $dir/jaeger.log)"
  setsid nohup "$bin/jaeger" --config "file:$dir/config.yaml" >"$dir/jaeger.log" 2>&1 </dev/null &
  echo $! >"$pidfile"
}

wait_jaeger() {
  local dir=$stack_dir/jaeger
  jaeger_ready || wait_ready jaeger jaeger_ready "$dir/jaeger.log" "$dir/jaeger.pid" jaeger
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
  local name=$1 pidfile=$2 program=${3:-java} pid
  if pid_alive "$pidfile" "$program"; then
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
  local name=$1 pidfile=$2 start=$3 mode=$4 down=${5:-0} pid started
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
  if [ "$down" -gt 0 ]; then
    log "$name stays down for ${down}s"
    sleep "$down"
  fi
  started=$SECONDS
  "$start"
  log "$name back in $((SECONDS - started))s"
}

status() {
  local ok=0
  if pid_alive "$stack_dir/keycloak/keycloak.pid" "$keycloak_programs" && keycloak_ready; then
    echo "keycloak  ready    $keycloak_url (Keycloak $keycloak_version, realm autoglm: $oidc_issuer)"
  else
    echo "keycloak  down     $keycloak_url"
    ok=1
  fi
  if pid_alive "$stack_dir/kafka/kafka.pid" && kafka_ready; then
    echo "kafka     ready    127.0.0.1:$kafka_port (Apache Kafka $kafka_version, KRaft)"
    local name port protocol
    for name in SCRAM:$scram_port:SASL_SSL/SCRAM-SHA-512,SCRAM-SHA-256 OAUTH:$oauth_port:SASL_SSL/OAUTHBEARER \
      MTLS:$mtls_port:SSL/client-certificate MISMATCH:$mismatch_port:SASL_SSL/SCRAM,wrong-host-name; do
      IFS=: read -r name port protocol <<<"$name"
      if port_open "$port"; then
        printf '          %-9s ready 127.0.0.1:%s (%s)\n' "$name" "$port" "$protocol"
      else
        printf '          %-9s down  127.0.0.1:%s\n' "$name" "$port"
        ok=1
      fi
    done
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
  if pid_alive "$stack_dir/secure-registry/registry.pid" && secure_registry_ready; then
    echo "secure-registry ready https://127.0.0.1:$secure_registry_port/apis/ccompat/v7 (Apicurio Registry $apicurio_version, bearer tokens of $oidc_issuer)"
  else
    echo "secure-registry down https://127.0.0.1:$secure_registry_port/apis/ccompat/v7"
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
  if pid_alive "$stack_dir/jaeger/jaeger.pid" jaeger && jaeger_ready; then
    echo "jaeger    ready    OTLP http://127.0.0.1:$jaeger_otlp_port (grpc 127.0.0.1:$jaeger_otlp_grpc_port), query http://127.0.0.1:$jaeger_query_port (Jaeger $(jaeger_version), in memory)"
  else
    echo "jaeger    down     http://127.0.0.1:$jaeger_otlp_port"
    ok=1
  fi
  return $ok
}

case ${1:-} in
  up)
    fetch_jars
    started=$SECONDS
    make_security
    start_keycloak
    start_jaeger
    start_postgres
    prepare_kafka
    start_registry
    wait_keycloak
    start_secure_registry
    start_kafka
    start_connect
    wait_secure_registry
    wait_jaeger
    log "stack ready in $((SECONDS - started))s"
    ;;
  down)
    stop_one jaeger "$stack_dir/jaeger/jaeger.pid" jaeger
    stop_one connect "$stack_dir/connect/connect.pid"
    stop_postgres
    stop_one registry "$stack_dir/registry/registry.pid"
    stop_one "secure registry" "$stack_dir/secure-registry/registry.pid"
    stop_one kafka "$stack_dir/kafka/kafka.pid"
    stop_one keycloak "$stack_dir/keycloak/keycloak.pid" "$keycloak_programs"
    ;;
  status) status ;;
  bounce-kafka) bounce kafka "$stack_dir/kafka/kafka.pid" start_kafka "${2:-}" "${3:-0}" ;;
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
    rm -rf "$stack_dir/kafka" "$stack_dir/registry" "$(postgres_dir)" "$stack_dir/postgres" "$stack_dir/connect" \
      "$stack_dir/keycloak" "$stack_dir/secure-registry" "$stack_dir/jaeger" "$security_dir"
    ;;
  env)
    echo "AUTOGLM_KAFKA_BOOTSTRAP=127.0.0.1:$kafka_port"
    echo "AUTOGLM_SCHEMA_REGISTRY_URL=http://127.0.0.1:$registry_port/apis/ccompat/v7"
    echo "AUTOGLM_KAFKA_FAULTS=127.0.0.1:$faults_port"
    echo "AUTOGLM_KAFKA_CUTS=127.0.0.1:$cuts_port"
    echo "AUTOGLM_POSTGRES_URL=postgresql://$pg_user@127.0.0.1:$postgres_port/$pg_db"
    echo "AUTOGLM_CONNECT_URL=http://127.0.0.1:$connect_port"
    echo "AUTOGLM_KAFKA_SCRAM=127.0.0.1:$scram_port"
    echo "AUTOGLM_KAFKA_OAUTH=127.0.0.1:$oauth_port"
    echo "AUTOGLM_KAFKA_MTLS=127.0.0.1:$mtls_port"
    echo "AUTOGLM_KAFKA_MISMATCH=127.0.0.1:$mismatch_port"
    echo "AUTOGLM_TLS_CA=$security_dir/ca.pem"
    echo "AUTOGLM_TLS_OTHER_CA=$security_dir/other-ca.pem"
    echo "AUTOGLM_TLS_CLIENT_CERT=$security_dir/client.pem"
    echo "AUTOGLM_TLS_CLIENT_KEY=$security_dir/client.key"
    echo "AUTOGLM_OIDC_TOKEN_ENDPOINT=$oidc_token_endpoint"
    echo "AUTOGLM_OIDC_ISSUER=$oidc_issuer"
    echo "AUTOGLM_KEYCLOAK_URL=$keycloak_url"
    echo "AUTOGLM_SECURE_REGISTRY_URL=https://127.0.0.1:$secure_registry_port/apis/ccompat/v7"
    echo "AUTOGLM_OTLP_ENDPOINT=http://127.0.0.1:$jaeger_otlp_port"
    echo "AUTOGLM_JAEGER_QUERY_URL=http://127.0.0.1:$jaeger_query_port"
    ;;
  *)
    echo "usage: $0 up|down|status|reset|env|bounce-kafka hard|clean [seconds]|bounce-connect hard|clean|psql [args]|kafka-tool <class> [args]" >&2
    exit 2
    ;;
esac
