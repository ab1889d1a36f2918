#!/usr/bin/env bash
# Checks the local stack's secured listeners end to end with Kafka's own Java clients (the jars that
# stack.sh fetched), as a person would: each case connects, produces or consumes as a client and
# must succeed, or fail in the expected way. Needs a running stack (deploy/local/stack.sh up);
# takes under a minute. Prints one line per case, then "N passed, N failed"; exits 1 on a failure.
#
#   SCRAM     SCRAM-SHA-512 and SCRAM-SHA-256 as autoglm write to out.*; not to nowrite.*; a wrong
#             password and an unrelated CA are refused
#   OAUTH     a client-credentials token of autoglm-sync (scope kafka) writes to out.*, not to
#             nowrite.*; a token without the kafka-broker audience, the disabled client and a
#             token whose signature does not match are refused
#   MTLS      the autoglm-mtls certificate writes to out.*, not to nowrite.*; no certificate: refused
#   MISMATCH  the broker's certificate does not name 127.0.0.1: the host name check fails
#   groups    as autoglm, a consumer in group sec.* reads in.*; a group outside sec.* is refused
#   txns      as autoglm, transactional ids sec.g.* may write to out.*; sec.notxn.* may not
#   registry  the secure registry (HTTPS) refuses a request without a token, or with a bad one,
#             and serves one with a token of autoglm-registry
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
stack=$here/../stack.sh
eval "$("$stack" env)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
run=$(date +%s)
failures=0
passed=0

# A Kafka tool class from the stack's jars; Kafka's OAuth code reads only the URLs and files named.
java_tool() {
  "$stack" kafka-tool -Xss1m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC \
    "-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls=$AUTOGLM_OIDC_TOKEN_ENDPOINT,file://$work/forged.jwt" \
    "-Dorg.apache.kafka.sasl.oauthbearer.allowed.files=$work/forged.jwt" "$@"
}

# "$1" a case's name, "$2" the bootstrap address, "$3" its client properties file, "$4" the topic,
# "$5" what must happen: ok, or a text that the client's error output must contain.
produce() {
  local name=$1 bootstrap=$2 config=$3 topic=$4 expect=$5 out
  out=$(echo "check-$run-$name" | java_tool org.apache.kafka.tools.ConsoleProducer \
    --bootstrap-server "$bootstrap" --producer.config "$config" --topic "$topic" \
    --producer-property max.block.ms=15000 --producer-property delivery.timeout.ms=15000 \
    --producer-property request.timeout.ms=10000 2>&1) || true
  if [[ $expect == ok ]]; then
    if grep -q -E 'ERROR|Exception' <<<"$out"; then
      echo "FAIL  $name: expected success"; grep -m3 -E 'ERROR|Exception' <<<"$out" | sed 's/^/      /'
      failures=$((failures + 1))
      return
    fi
  elif ! grep -q -F "$expect" <<<"$out"; then
    echo "FAIL  $name: expected an error with \"$expect\""; grep -m3 -E 'ERROR|Exception' <<<"$out" | sed 's/^/      /'
    failures=$((failures + 1))
    return
  fi
  echo "ok    $name"
  passed=$((passed + 1))
}

for topic in in.check out.check nowrite.check; do
  java_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$AUTOGLM_KAFKA_BOOTSTRAP" \
    --create --if-not-exists --topic "$topic" --partitions 1 >/dev/null 2>&1
done
echo "check-$run-in" | java_tool org.apache.kafka.tools.ConsoleProducer \
  --bootstrap-server "$AUTOGLM_KAFKA_BOOTSTRAP" --topic in.check >/dev/null 2>&1

# The client properties, one file per case.
scram() {
  cat <<EOF
security.protocol=SASL_SSL
sasl.mechanism=$1
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="autoglm" password="$2";
ssl.truststore.type=PEM
ssl.truststore.location=$3
EOF
}
oauth() {
  cat <<EOF
security.protocol=SASL_SSL
sasl.mechanism=OAUTHBEARER
sasl.login.callback.handler.class=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginCallbackHandler
sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;
sasl.oauthbearer.token.endpoint.url=$AUTOGLM_OIDC_TOKEN_ENDPOINT
sasl.oauthbearer.client.credentials.client.id=$1
sasl.oauthbearer.client.credentials.client.secret=$2
sasl.oauthbearer.scope=$3
ssl.truststore.type=PEM
ssl.truststore.location=$AUTOGLM_TLS_CA
EOF
}
scram SCRAM-SHA-512 autoglm-secret "$AUTOGLM_TLS_CA" >"$work/scram512"
scram SCRAM-SHA-256 autoglm-secret "$AUTOGLM_TLS_CA" >"$work/scram256"
scram SCRAM-SHA-512 wrong-secret "$AUTOGLM_TLS_CA" >"$work/scram-wrong"
scram SCRAM-SHA-512 autoglm-secret "$AUTOGLM_TLS_OTHER_CA" >"$work/scram-other-ca"
oauth autoglm-sync autoglm-sync-secret kafka >"$work/oauth"
oauth autoglm-sync autoglm-sync-secret openid >"$work/oauth-no-audience"
oauth autoglm-disabled autoglm-disabled-secret kafka >"$work/oauth-disabled"
cat "$AUTOGLM_TLS_CLIENT_KEY" "$AUTOGLM_TLS_CLIENT_CERT" >"$work/client-bundle.pem"
cat >"$work/mtls" <<EOF
security.protocol=SSL
ssl.truststore.type=PEM
ssl.truststore.location=$AUTOGLM_TLS_CA
ssl.keystore.type=PEM
ssl.keystore.location=$work/client-bundle.pem
EOF
grep -v keystore "$work/mtls" >"$work/mtls-no-cert"
# A token of autoglm-sync without the audience, given the audience and a scope afterwards: its
# signature no longer matches.
python3 - "$AUTOGLM_OIDC_TOKEN_ENDPOINT" "$work/forged.jwt" <<'EOF'
import base64, json, sys, urllib.parse, urllib.request
form = urllib.parse.urlencode({"grant_type": "client_credentials", "client_id": "autoglm-sync",
                               "client_secret": "autoglm-sync-secret"}).encode()
header, payload, signature = json.load(urllib.request.urlopen(sys.argv[1], form))["access_token"].split(".")
claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
claims.update(aud="kafka-broker", scope="kafka")
payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
open(sys.argv[2], "w").write(f"{header}.{payload}.{signature}")
EOF
cat >"$work/oauth-forged" <<EOF
security.protocol=SASL_SSL
sasl.mechanism=OAUTHBEARER
sasl.login.callback.handler.class=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginCallbackHandler
sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;
sasl.oauthbearer.token.endpoint.url=file://$work/forged.jwt
ssl.truststore.type=PEM
ssl.truststore.location=$AUTOGLM_TLS_CA
EOF

produce scram-sha-512 "$AUTOGLM_KAFKA_SCRAM" "$work/scram512" out.check ok
produce scram-sha-256 "$AUTOGLM_KAFKA_SCRAM" "$work/scram256" out.check ok
produce scram-no-write-acl "$AUTOGLM_KAFKA_SCRAM" "$work/scram512" nowrite.check TopicAuthorizationException
produce scram-wrong-password "$AUTOGLM_KAFKA_SCRAM" "$work/scram-wrong" out.check "invalid credentials"
produce scram-untrusted-ca "$AUTOGLM_KAFKA_SCRAM" "$work/scram-other-ca" out.check "PKIX path building failed"
produce oauth "$AUTOGLM_KAFKA_OAUTH" "$work/oauth" out.check ok
produce oauth-no-write-acl "$AUTOGLM_KAFKA_OAUTH" "$work/oauth" nowrite.check TopicAuthorizationException
produce oauth-no-audience "$AUTOGLM_KAFKA_OAUTH" "$work/oauth-no-audience" out.check invalid_token
produce oauth-disabled-client "$AUTOGLM_KAFKA_OAUTH" "$work/oauth-disabled" out.check invalid_client
produce oauth-forged-signature "$AUTOGLM_KAFKA_OAUTH" "$work/oauth-forged" out.check invalid_token
produce mtls "$AUTOGLM_KAFKA_MTLS" "$work/mtls" out.check ok
produce mtls-no-write-acl "$AUTOGLM_KAFKA_MTLS" "$work/mtls" nowrite.check TopicAuthorizationException
produce mtls-no-certificate "$AUTOGLM_KAFKA_MTLS" "$work/mtls-no-cert" out.check SslAuthenticationException
produce mismatch-host-name "$AUTOGLM_KAFKA_MISMATCH" "$work/scram512" out.check "No subject alternative names matching IP address 127.0.0.1"

# Consumers: group sec.* may read in.*, another group may not.
consume() {
  local name=$1 group=$2 expect=$3 out
  out=$(java_tool org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server "$AUTOGLM_KAFKA_SCRAM" \
    --consumer.config "$work/scram512" --group "$group" --topic in.check --from-beginning \
    --max-messages 1 --timeout-ms 15000 2>&1) || true
  if grep -q -F "$expect" <<<"$out"; then
    echo "ok    $name"
    passed=$((passed + 1))
  else
    echo "FAIL  $name: expected \"$expect\""; grep -m3 -E 'ERROR|Exception' <<<"$out" | sed 's/^/      /'
    failures=$((failures + 1))
  fi
}
consume consumer-group-sec "sec.check-$run" "Processed a total of 1 messages"
consume consumer-group-other "other.check-$run" GroupAuthorizationException

# Transactions: ids sec.g.* may write, others (a group sec.notxn.*'s ids) may not.
transact() {
  local name=$1 id=$2 expect=$3 out
  out=$(java_tool org.apache.kafka.tools.ProducerPerformance --topic out.check --num-records 2 \
    --record-size 10 --throughput -1 --producer.config "$work/scram512" \
    --producer-props "bootstrap.servers=$AUTOGLM_KAFKA_SCRAM" max.block.ms=15000 \
    --transactional-id "$id" --transaction-duration-ms 1000 2>&1) || true
  if grep -q -F "$expect" <<<"$out"; then
    echo "ok    $name"
    passed=$((passed + 1))
  else
    echo "FAIL  $name: expected \"$expect\""; grep -m3 -E 'ERROR|Exception' <<<"$out" | sed 's/^/      /'
    failures=$((failures + 1))
  fi
}
transact transactional-id-sec-g "sec.g.check-$run-0" "2 records sent"
transact transactional-id-other "sec.notxn.check-$run-0" TransactionalIdAuthorizationException

# The secure registry: "$1" a case's name, "$2" the HTTP status wanted, then curl's arguments.
registry() {
  local name=$1 want=$2 got
  shift 2
  got=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$AUTOGLM_TLS_CA" "$@" 2>&1) || true
  if [[ $got == "$want" ]]; then
    echo "ok    $name"
    passed=$((passed + 1))
  else
    echo "FAIL  $name: HTTP $got, expected $want"
    failures=$((failures + 1))
  fi
}
token=$(curl -sS -d grant_type=client_credentials -d client_id=autoglm-registry \
  -d client_secret=autoglm-registry-secret "$AUTOGLM_OIDC_TOKEN_ENDPOINT" |
  python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])')
registry registry-no-token 401 "$AUTOGLM_SECURE_REGISTRY_URL/subjects"
registry registry-bad-token 401 -H "Authorization: Bearer ${token}x" "$AUTOGLM_SECURE_REGISTRY_URL/subjects"
registry registry-token 200 -H "Authorization: Bearer $token" "$AUTOGLM_SECURE_REGISTRY_URL/subjects"
registry registry-register 200 -H "Authorization: Bearer $token" \
  -H 'Content-Type: application/vnd.schemaregistry.v1+json' -d '{"schema": "\"string\""}' \
  "$AUTOGLM_SECURE_REGISTRY_URL/subjects/check-value/versions"

echo "$passed passed, $failures failed"
((failures == 0))
