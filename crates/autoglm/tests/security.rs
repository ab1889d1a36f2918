//! The processor against the secured side of the local stack: SASL_SSL with SCRAM-SHA-512, and
//! OAUTHBEARER with tokens from Keycloak (client credentials, 30-second tokens, re-authentication
//! every 15 s), under StandardAuthorizer ACLs (`deploy/local/stack.sh`, `docs/security.md`).
//!
//! The processor's principals may read `in.*`, write `out.*` and `dlq.*`, use the changelogs
//! `sec.*`, the groups `sec.*` and the transactional ids `sec.g.*`; nothing more. Each test
//! names its topics and group to fall inside or outside those grants.
//!
//! Positive: exactly-once output over each mechanism, with a `kill -9` in the middle of the run.
//! Negative: each refusal stops the run with one clear line, writes nothing, and commits no
//! offset.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use autoglm_demo::read_committed;
use autoglm_tests::{Stack, stack, unique};
use common::{Job, Names, assert_exactly_once, expected, input, signal};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

/// A stack setting from `stack.sh env`; the suite fails without it (it never skips).
fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through `make test` (the stack's `env`)")
    })
}

/// Names inside every grant of the processor's principals.
fn granted() -> Names {
    Names {
        source: unique("in.sec"),
        target: unique("out.sec"),
        dlq: unique("dlq.sec"),
        group: unique("sec.g.sec"),
    }
}

fn tls(ca: &str) -> String {
    format!("tls: {{ ca: \"{ca}\" }}")
}

/// `kafka:` entries for SCRAM-SHA-512 on `bootstrap`, trusting `ca`.
fn scram(bootstrap: &str, ca: &str, password: &str) -> String {
    format!(
        "bootstrap_servers: \"{bootstrap}\", security: {{ {}, sasl: {{ mechanism: scram-sha-512, \
         username: autoglm, password: \"{password}\" }} }}",
        tls(ca)
    )
}

/// `kafka:` entries for OAUTHBEARER as Keycloak client `client`, asking for `scope` if any.
fn oauth(client: &str, secret: &str, scope: Option<&str>) -> String {
    let scope = scope
        .map(|s| format!(", scope: \"{s}\""))
        .unwrap_or_default();
    format!(
        "bootstrap_servers: \"{}\", security: {{ {}, oauth: {{ client_id: {client}, \
         client_secret: \"{secret}\", token_endpoint: \"{}\"{scope} }} }}",
        env("AUTOGLM_KAFKA_OAUTH"),
        tls(&env("AUTOGLM_TLS_CA")),
        env("AUTOGLM_OIDC_TOKEN_ENDPOINT"),
    )
}

/// Produces `records`, runs the processor over `kafka_yaml`, kills it once output has begun,
/// runs it again to the end (with `env`), and checks the output is exactly once. `route_yaml`
/// adds to the route (a rate limit stretches the run past a token's lifetime). Returns the log
/// of the second run.
async fn exactly_once_over(
    stack: &Stack,
    kafka_yaml: &str,
    route_yaml: &str,
    records: usize,
    env: &[(&str, &str)],
) -> String {
    let job = Job::with_names(
        stack,
        granted(),
        kafka_yaml,
        route_yaml,
        "flush_interval_ms: 100",
        500,
        3,
    )
    .await;
    let records = input(7, records, 300, true);
    job.produce(&records).await;

    let mut first = job.start(0, &[]);
    // Until some output is written (committed or not), then kill -9 in the middle of the run.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if written(&job).await > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no output within 120 s; see {}",
            job.log(0).display()
        );
        if let Some(status) = first.try_wait().expect("try_wait") {
            panic!(
                "run 0 exited ({status}) before any output; see {}",
                job.log(0).display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    signal(&first, "-KILL");
    let _ = first.wait();
    let second = job.start(1, env);
    let status = job.exit_of(second, 1).await;
    assert!(
        status.success(),
        "run 1 failed ({status}); see {}",
        job.log(1).display()
    );

    let (got, count) = job.output().await;
    assert_exactly_once(&job, &expected(&records), &got, count);
    assert_eq!(job.dead_letters().await, 0, "nothing is dead-lettered");
    std::fs::read_to_string(job.log(1)).expect("log of run 1")
}

/// Records and transaction markers in the job's target: the sum of its high watermarks.
async fn written(job: &Job) -> i64 {
    let consumer: BaseConsumer = job.kafka().client_config().create().expect("consumer");
    let target = job.target.clone();
    tokio::task::spawn_blocking(move || {
        (0..3)
            .map(|p| {
                consumer
                    .fetch_watermarks(&target, p, Duration::from_secs(5))
                    .map_or(0, |(_, high)| high)
            })
            .sum()
    })
    .await
    .expect("task")
}

/// Seconds of the day of a log line's timestamp (`2026-12-06T12:42:15.599067Z …`).
fn seconds(line: &str) -> f64 {
    let time = line.get(11..26).expect("a timestamped line");
    time.split(':')
        .map(|part| part.parse::<f64>().expect("hh:mm:ss.ffffff"))
        .fold(0.0, |total, part| total * 60.0 + part)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_over_sasl_ssl_scram() {
    let stack = stack().await;
    let kafka = scram(
        &env("AUTOGLM_KAFKA_SCRAM"),
        &env("AUTOGLM_TLS_CA"),
        "autoglm-secret",
    );
    exactly_once_over(&stack, &kafka, "", 20_000, &[]).await;
}

/// Tokens live 30 s and the broker makes clients re-authenticate every 15 s; the rate limit
/// holds the run to about 50 s, so the processor must fetch new tokens from Keycloak and
/// re-authenticate with them while it runs (a token that expired would end the session). The
/// second run logs librdkafka's security events, which show both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_over_oauthbearer_across_token_refreshes() {
    let stack = stack().await;
    let kafka = oauth("autoglm-sync", "autoglm-sync-secret", Some("kafka"));
    let slow = "    rate_limit: { records_per_second: 200, burst: 200 }\n";
    let started = std::time::Instant::now();
    let log = exactly_once_over(
        &stack,
        &kafka,
        slow,
        10_000,
        &[
            ("RUST_LOG", "info,librdkafka=debug"),
            ("AUTOGLM__KAFKA__PROPERTIES__DEBUG", "security"),
        ],
    )
    .await;
    assert!(
        started.elapsed() > Duration::from_secs(45),
        "the run must outlive a token: {:?}",
        started.elapsed()
    );
    let tokens: Vec<f64> = log
        .lines()
        .filter(|l| l.contains("after setting OAUTHBEARER token"))
        .map(seconds)
        .collect();
    let (first, last) = (tokens.first().copied(), tokens.last().copied());
    let refreshed_after = last.zip(first).map(|(last, first)| last - first);
    assert!(
        refreshed_after.is_some_and(|s| s >= 20.0),
        "a token fetched again at 80% of its 30 s life: tokens set at {tokens:?}"
    );
    let reauthentications = log.matches("Auth in state REAUTH").count();
    assert!(
        reauthentications >= 2,
        "{reauthentications} re-authentications"
    );
    assert!(
        !log.contains("autoglm-sync-secret"),
        "the debug log shows the secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_over_mutual_tls() {
    let stack = stack().await;
    let kafka = format!(
        "bootstrap_servers: \"{}\", security: {{ tls: {{ ca: \"{}\", certificate: \"{}\", key: \"{}\" }} }}",
        env("AUTOGLM_KAFKA_MTLS"),
        env("AUTOGLM_TLS_CA"),
        env("AUTOGLM_TLS_CLIENT_CERT"),
        env("AUTOGLM_TLS_CLIENT_KEY"),
    );
    exactly_once_over(&stack, &kafka, "", 5_000, &[]).await;
}

/// Runs the processor over `kafka_yaml` with `names` (input produced), expects it to stop by
/// itself with a line containing `expected`, and checks that it wrote nothing and committed no
/// offset. Returns the line.
async fn refused(names: Names, kafka_yaml: &str, expected_line: &str) -> String {
    let stack = stack().await;
    let job = Job::with_names(
        &stack,
        names,
        kafka_yaml,
        "",
        "flush_interval_ms: 100",
        500,
        3,
    )
    .await;
    job.produce(&input(3, 300, 50, false)).await;
    let child = job.start(0, &[]);
    let status = job.exit_of(child, 0).await;
    let log = std::fs::read_to_string(job.log(0)).expect("log");
    assert!(
        !status.success(),
        "the run must fail; see {}",
        job.log(0).display()
    );
    let line = log
        .lines()
        .find(|l| l.contains(expected_line))
        .unwrap_or_else(|| {
            panic!(
                "no line with {expected_line:?} in {}:\n{log}",
                job.log(0).display()
            )
        })
        .to_owned();
    for secret in ["autoglm-secret", "autoglm-sync-secret", "wrong-secret"] {
        assert!(!log.contains(secret), "the log shows a secret: {secret}");
    }
    let (_, written) = job.output().await;
    assert_eq!(written, 0, "nothing may be written");
    assert_eq!(
        committed(&job).await,
        BTreeMap::new(),
        "no offset may be committed"
    );
    line
}

/// The group's committed offsets on the source topic, read over the plaintext listener.
async fn committed(job: &Job) -> BTreeMap<i32, i64> {
    let consumer: BaseConsumer = job
        .kafka()
        .client_config()
        .set("group.id", &job.group)
        .create()
        .expect("consumer");
    let mut partitions = TopicPartitionList::new();
    for p in 0..3 {
        partitions.add_partition(&job.source, p);
    }
    let source = job.source.clone();
    tokio::task::spawn_blocking(move || {
        consumer
            .committed_offsets(partitions, Duration::from_secs(10))
            .expect("committed offsets")
            .elements_for_topic(&source)
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    })
    .await
    .expect("task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_ca_is_refused() {
    let kafka = scram(
        &env("AUTOGLM_KAFKA_SCRAM"),
        &env("AUTOGLM_TLS_OTHER_CA"),
        "autoglm-secret",
    );
    let line = refused(granted(), &kafka, "TLS handshake failed").await;
    assert!(line.contains("certificate verify failed"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostname_mismatch_is_refused() {
    let kafka = scram(
        &env("AUTOGLM_KAFKA_MISMATCH"),
        &env("AUTOGLM_TLS_CA"),
        "autoglm-secret",
    );
    refused(granted(), &kafka, "TLS handshake failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_scram_password_is_refused() {
    let kafka = scram(
        &env("AUTOGLM_KAFKA_SCRAM"),
        &env("AUTOGLM_TLS_CA"),
        "wrong-secret",
    );
    refused(granted(), &kafka, "authentication failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_client_secret_is_refused() {
    let kafka = oauth("autoglm-sync", "wrong-secret", Some("kafka"));
    refused(granted(), &kafka, "authentication failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_kafka_scope_and_audience_is_refused() {
    // Without `scope=kafka` Keycloak leaves the `kafka-broker` audience out of the token, and
    // the broker validates the audience.
    let kafka = oauth("autoglm-sync", "autoglm-sync-secret", None);
    refused(granted(), &kafka, "authentication failed").await;
}

/// A token nobody signed (librdkafka's unsecured JWT, `alg: none`) that names a granted client
/// and the right scope: the broker checks the signature against Keycloak's keys and refuses it.
/// The processor's typed config cannot send one; a raw librdkafka client can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsigned_token_is_refused() {
    let mut settings = autoglm_kafka::ClientSettings::new(env("AUTOGLM_KAFKA_OAUTH"));
    for (key, value) in [
        ("security.protocol", "SASL_SSL".to_owned()),
        ("sasl.mechanisms", "OAUTHBEARER".to_owned()),
        ("enable.sasl.oauthbearer.unsecure.jwt", "true".to_owned()),
        (
            "sasl.oauthbearer.config",
            "principal=autoglm-sync scope=kafka".to_owned(),
        ),
        ("ssl.ca.location", env("AUTOGLM_TLS_CA")),
    ] {
        settings = settings.with_property(key, value).expect("a free property");
    }
    let refused = autoglm_kafka::probe(&settings, Duration::from_secs(10))
        .await
        .expect_err("an unsigned token is refused");
    let text = refused.to_string();
    assert!(refused.is_access(), "{text}");
    assert!(text.contains("invalid_token"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_client_is_refused() {
    let kafka = oauth("autoglm-disabled", "autoglm-disabled-secret", Some("kafka"));
    refused(granted(), &kafka, "authentication failed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_without_the_write_acl_is_refused() {
    let names = Names {
        target: unique("nowrite.sec"),
        ..granted()
    };
    let kafka = scram(
        &env("AUTOGLM_KAFKA_SCRAM"),
        &env("AUTOGLM_TLS_CA"),
        "autoglm-secret",
    );
    let line = refused(names.clone(), &kafka, "lacks").await;
    assert!(line.contains("WRITE"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transactional_id_without_its_acl_is_refused() {
    // The group is granted (`sec.*`), its transactional id `sec.notxn.…-0` is not (`sec.g.*`).
    let names = Names {
        group: unique("sec.notxn.sec"),
        ..granted()
    };
    let kafka = scram(
        &env("AUTOGLM_KAFKA_SCRAM"),
        &env("AUTOGLM_TLS_CA"),
        "autoglm-secret",
    );
    let line = refused(names, &kafka, "lacks WRITE on TransactionalId").await;
    assert!(line.contains("sec.notxn.sec-"), "{line}");
}

/// Sanity of the grants themselves: the plaintext listener (every other test, Connect) keeps
/// full rights, so the ACLs above restrict only the processor's principals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plaintext_listener_keeps_its_rights() {
    let stack = stack().await;
    let topic = unique("nowrite.plain");
    autoglm_tests::create_topic(&stack, &topic, 1).await;
    autoglm_tests::produce_plain(&stack.kafka(), &topic, &[("k", Some("v".to_owned()))]).await;
    let read = read_committed(&stack.kafka(), None, &topic, Duration::from_secs(2))
        .await
        .expect("read");
    assert_eq!(read.len(), 1);
}

/// `autoglm check --config` lists, per topic and group, the rights the routes need and whether
/// the principal holds them, and fails when one is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_each_right_per_topic_and_group() {
    let stack = stack().await;
    let names = Names {
        target: unique("nowrite.sec"),
        ..granted()
    };
    let kafka = scram(
        &env("AUTOGLM_KAFKA_SCRAM"),
        &env("AUTOGLM_TLS_CA"),
        "autoglm-secret",
    );
    let job = Job::with_names(&stack, names, &kafka, "", "flush_interval_ms: 100", 500, 3).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_autoglm"))
        .args(["check", "--config"])
        .arg(job.dir().join("config.yaml"))
        .output()
        .expect("autoglm check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a missing right fails the check:\n{stdout}{stderr}"
    );
    let line = |prefix: &str, topic: &str| {
        stdout
            .lines()
            .any(|l| l.starts_with(prefix) && l.contains(&format!("{topic:?}")))
    };
    assert!(
        line("rights    ok       READ on topic", &job.source),
        "{stdout}"
    );
    assert!(
        line("rights    MISSING  WRITE on topic", &job.target),
        "{stdout}"
    );
    assert!(
        line("rights    ok       WRITE on topic", &job.dlq),
        "{stdout}"
    );
    assert!(
        line("rights    ok       READ on group", &job.group),
        "{stdout}"
    );
    assert!(
        stdout.contains("unknown  READ on topic"),
        "the changelog does not exist yet:\n{stdout}"
    );
    assert!(stderr.contains("lacks 1 right"), "{stderr}");
}

/// Runs `autoglm <args> --config open-autoglm-config.yaml` against the stack's HTTPS registry,
/// which takes only bearer tokens from Keycloak, as client `autoglm-registry` with `secret`.
fn against_the_secured_registry(args: &[&str], secret: &str) -> std::process::Output {
    let repo = autoglm_tests::repo_root();
    std::process::Command::new(env!("CARGO_BIN_EXE_autoglm"))
        .args(args)
        .arg("--config")
        .arg(repo.join("open-autoglm-config.yaml"))
        .env(
            "AUTOGLM__KAFKA__BOOTSTRAP_SERVERS",
            env("AUTOGLM_KAFKA_BOOTSTRAP"),
        )
        .env(
            "AUTOGLM__SCHEMA_REGISTRY__URL",
            env("AUTOGLM_SECURE_REGISTRY_URL"),
        )
        .env("AUTOGLM__SCHEMA_REGISTRY__TLS__CA", env("AUTOGLM_TLS_CA"))
        .env(
            "AUTOGLM__SCHEMA_REGISTRY__OAUTH__CLIENT_ID",
            "autoglm-registry",
        )
        .env("AUTOGLM__SCHEMA_REGISTRY__OAUTH__CLIENT_SECRET", secret)
        .env(
            "AUTOGLM__SCHEMA_REGISTRY__OAUTH__TOKEN_ENDPOINT",
            env("AUTOGLM_OIDC_TOKEN_ENDPOINT"),
        )
        .output()
        .expect("autoglm")
}

/// The registry over HTTPS with the stack's CA and a bearer token: `schemas register` (the
/// processor's own registry client) and `check --config` (the decoders' client, through the
/// token middleware) both get in; a wrong client secret is refused with the provider's answer,
/// and no secret is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_takes_tls_and_a_bearer_token() {
    let registered =
        against_the_secured_registry(&["schemas", "register"], "autoglm-registry-secret");
    let out = String::from_utf8_lossy(&registered.stdout);
    let err = String::from_utf8_lossy(&registered.stderr);
    assert!(registered.status.success(), "{out}{err}");
    assert!(out.contains("erp.customers-value: schema id"), "{out}");

    let checked = against_the_secured_registry(&["check"], "autoglm-registry-secret");
    let out = String::from_utf8_lossy(&checked.stdout);
    let err = String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success(), "{out}{err}");
    assert!(
        out.lines().any(
            |l| l.starts_with("registry  ok  https://127.0.0.1:") && !l.contains(" 0 subjects")
        ),
        "{out}"
    );

    let refused = against_the_secured_registry(&["schemas", "register"], "wrong-secret");
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{err}");
    assert!(err.contains("OAuth token: refused"), "{err}");
    assert!(err.contains("unauthorized_client"), "{err}");
    assert!(
        !err.contains("wrong-secret"),
        "the secret is printed: {err}"
    );
}
