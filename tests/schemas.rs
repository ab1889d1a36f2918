//! `Pipeline::check_schemas` (what `autoglm schemas check` prints) against the real registry:
//! a new subject, a compatible and two incompatible changes under a subject-level BACKWARD rule,
//! and a registry that does not answer. Every subject is unique, so runs do not interfere.
//!
//! Apicurio 3 notes, found while writing this (they shape what is asserted):
//! - `PUT /config/{subject}` `{"compatibility":"BACKWARD"}` is honoured per subject, and
//!   `GET /config/{subject}` then answers `BACKWARD` (the global default stays `NONE`).
//! - `POST /compatibility/subjects/{s}/versions/latest` answers `{"is_compatible":true}` for a
//!   subject that does not exist (no 404/40401), and never sends reasons, even with
//!   `?verbose=true`. So the check asks `GET /subjects/{s}/versions` first, and reasons come from
//!   a local Avro check, marked `local check:`.

use std::path::PathBuf;

use autoglm_codec::Compatibility;
use autoglm_config::Overrides;
use autoglm_core::chain;
use autoglm_runtime::{Pipeline, RunError, SchemaCheck};
use autoglm_tests::{Stack, repo_root, stack, unique};
use serde_json::{Value, json};

const V1: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"long"},
    {"name":"amount","type":"long"}]}"#;

/// v1 plus a field with a default: new readers fill it in for old data (BACKWARD).
const V2_ADDS_DEFAULTED_FIELD: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"long"},
    {"name":"amount","type":"long"},
    {"name":"note","type":["null","string"],"default":null}]}"#;

/// v1 plus a field without a default: new readers cannot read old data.
const V3_ADDS_REQUIRED_FIELD: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"long"},
    {"name":"amount","type":"long"},
    {"name":"currency","type":"string"}]}"#;

/// v1 with `amount` turned from long into boolean: no promotion exists.
const V4_CHANGES_A_TYPE: &str = r#"{"type":"record","name":"Order","namespace":"shop","fields":[
    {"name":"id","type":"long"},
    {"name":"amount","type":"boolean"}]}"#;

/// A one-route config whose only Avro target is `topic` with the schema `schema`.
fn config(
    registry_url: &str,
    bootstrap: &str,
    topic: &str,
    schema: &str,
) -> autoglm_config::Config {
    let dir = scratch_dir();
    let schema_file = dir.join("target.avsc");
    std::fs::write(&schema_file, schema).expect("schema file");
    let text = format!(
        r#"
kafka:
  bootstrap_servers: {bootstrap}
  group_id: {group}
schema_registry:
  url: {registry_url}
event_queue:
  storage_path: {state}
routes:
  - name: orders
    source: {{ topic: {source}, envelope: upsert, encoding: json }}
    key_fields: [id]
    version: {{ column: id }}
    targets:
      - {{ topic: {topic}, format: avro, schema: {schema_file} }}
    dlq_topic: {dlq}
"#,
        group = unique("g"),
        state = dir.join("state").display(),
        source = unique("src"),
        dlq = unique("dlq"),
        schema_file = schema_file.display(),
    );
    autoglm_config::parse(&text, "test", &repo_root(), Overrides::None).expect("valid config")
}

fn scratch_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("autoglm-schemas"));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

async fn check(stack: &Stack, topic: &str, schema: &str) -> SchemaCheck {
    let pipeline = Pipeline::new(config(&stack.registry_url, &stack.bootstrap, topic, schema))
        .expect("pipeline");
    let mut checks = pipeline
        .check_schemas()
        .await
        .expect("the registry answers");
    assert_eq!(checks.len(), 1, "one avro target, one check: {checks:?}");
    checks.remove(0)
}

/// Raw registry calls, independent of the code under test.
async fn registry(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> Value {
    let client = reqwest::Client::new();
    let mut request = client.request(method, format!("{}{path}", stack.registry_url));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("registry request");
    let status = response.status();
    let body: Value = response.json().await.expect("json answer");
    assert!(status.is_success(), "{path}: {status} {body}");
    body
}

async fn versions(stack: &Stack, subject: &str) -> Value {
    registry(
        stack,
        reqwest::Method::GET,
        &format!("/subjects/{subject}/versions"),
        None,
    )
    .await
}

fn reasons(check: &SchemaCheck) -> &[String] {
    match &check.compatibility {
        Compatibility::Incompatible { reasons, .. } => reasons,
        other => panic!("{}: expected incompatible, got {other:?}", check.subject),
    }
}

#[tokio::test]
async fn check_of_a_new_subject_passes_and_registers_nothing() {
    let stack = stack().await;
    let topic = unique("schemas-new");
    let result = check(&stack, &topic, V1).await;
    assert_eq!(result.topic, topic);
    assert_eq!(result.subject, format!("{topic}-value"));
    assert_eq!(result.compatibility, Compatibility::NewSubject);
    let subjects = registry(&stack, reqwest::Method::GET, "/subjects", None).await;
    assert!(
        !subjects
            .as_array()
            .expect("list")
            .contains(&json!(result.subject)),
        "a check must not register: {subjects}"
    );
}

#[tokio::test]
async fn check_under_backward_accepts_a_defaulted_field_and_rejects_breaking_changes_with_reasons()
{
    let stack = stack().await;
    let topic = unique("schemas-backward");
    let subject = format!("{topic}-value");

    let pipeline =
        Pipeline::new(config(&stack.registry_url, &stack.bootstrap, &topic, V1)).expect("pipeline");
    let ids = pipeline.register_schemas().await.expect("register v1");
    assert_eq!(ids.len(), 1);
    let answer = registry(
        &stack,
        reqwest::Method::PUT,
        &format!("/config/{subject}"),
        Some(json!({"compatibility": "BACKWARD"})),
    )
    .await;
    assert_eq!(answer["compatibility"], "BACKWARD", "{answer}");
    let level = registry(
        &stack,
        reqwest::Method::GET,
        &format!("/config/{subject}"),
        None,
    )
    .await;
    assert_eq!(
        level["compatibilityLevel"], "BACKWARD",
        "the registry keeps the subject level"
    );

    let same = check(&stack, &topic, V1).await;
    assert_eq!(
        same.compatibility,
        Compatibility::Compatible {
            level: "BACKWARD".into(),
            latest: 1
        }
    );

    let compatible = check(&stack, &topic, V2_ADDS_DEFAULTED_FIELD).await;
    assert_eq!(
        compatible.compatibility,
        Compatibility::Compatible {
            level: "BACKWARD".into(),
            latest: 1
        }
    );

    let required = check(&stack, &topic, V3_ADDS_REQUIRED_FIELD).await;
    let text = reasons(&required).join("; ");
    assert!(
        text.contains("'currency'") && text.contains("must have a default value"),
        "the reason names the field without a default: {text}"
    );
    assert!(
        required
            .compatibility
            .to_string()
            .starts_with("INCOMPATIBLE (BACKWARD, latest version 1): "),
        "{}",
        required.compatibility
    );

    let retyped = check(&stack, &topic, V4_CHANGES_A_TYPE).await;
    let text = reasons(&retyped).join("; ");
    let lower = text.to_lowercase();
    assert!(
        text.contains("'amount'") && lower.contains("'long'") && lower.contains("'boolean'"),
        "the reason names the field and both types: {text}"
    );

    // The registry agrees with the verdicts: v3 is refused on registration, and the checks above
    // registered nothing.
    assert_eq!(versions(&stack, &subject).await, json!([1]));
    let refused = Pipeline::new(config(
        &stack.registry_url,
        &stack.bootstrap,
        &topic,
        V3_ADDS_REQUIRED_FIELD,
    ))
    .expect("pipeline")
    .register_schemas()
    .await;
    assert!(
        refused.is_err(),
        "the registry must refuse what the check called incompatible"
    );
    assert_eq!(versions(&stack, &subject).await, json!([1]));
}

#[tokio::test]
async fn check_against_an_unreachable_registry_fails_naming_the_url() {
    let stack = stack().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}/apis/ccompat/v7");
    let topic = unique("schemas-down");
    let err = Pipeline::new(config(&url, &stack.bootstrap, &topic, V1))
        .expect("pipeline")
        .check_schemas()
        .await
        .expect_err("nothing listens there");
    assert!(matches!(err, RunError::Schema { .. }), "{err:?}");
    let text = chain(&err);
    assert!(
        text.contains(&format!(
            "GET {url}/subjects/{topic}-value/versions: cannot connect"
        )),
        "{text}"
    );
}

#[tokio::test]
async fn check_against_the_registry_root_fails_instead_of_reporting_a_new_subject() {
    let stack = stack().await;
    let root = stack
        .registry_url
        .split("/apis/")
        .next()
        .expect("a url")
        .to_owned();
    let topic = unique("schemas-root");
    let err = Pipeline::new(config(&root, &stack.bootstrap, &topic, V1))
        .expect("pipeline")
        .check_schemas()
        .await
        .expect_err("the root is not the Confluent API");
    let text = chain(&err);
    assert!(text.contains("HTTP 404"), "{text}");
}
