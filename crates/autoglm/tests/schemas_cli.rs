//! The real `autoglm` binary: `schemas check` prints one line per target and its exit status says
//! whether registering would be refused. Runs against the local stack (`make up`); fails when it
//! is down. The verdicts themselves are tested through the library in `tests/schemas.rs`.

use std::path::PathBuf;
use std::process::{Command, Output};

use autoglm_tests::{Stack, stack, unique};
use serde_json::json;

const V1: &str = r#"{"type":"record","name":"Order","fields":[{"name":"id","type":"long"}]}"#;
const V2_BREAKS: &str = r#"{"type":"record","name":"Order","fields":[
    {"name":"id","type":"long"},{"name":"currency","type":"string"}]}"#;

/// Writes a one-target config for `topic` with `schema` and the registry at `registry_url`.
fn config_file(stack: &Stack, registry_url: &str, topic: &str, schema: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("autoglm-cli"));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let schema_file = dir.join("target.avsc");
    std::fs::write(&schema_file, schema).expect("schema");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            r#"
kafka: {{ bootstrap_servers: "{bootstrap}", group_id: {group} }}
schema_registry: {{ url: "{registry_url}" }}
event_queue: {{ storage_path: {state} }}
routes:
  - name: orders
    source: {{ topic: {source}, envelope: upsert, encoding: json }}
    key_fields: [id]
    version: {{ column: id }}
    targets: [{{ topic: {topic}, format: avro, schema: target.avsc }}]
    dlq_topic: {dlq}
"#,
            bootstrap = stack.bootstrap,
            group = unique("g"),
            state = dir.join("state").display(),
            source = unique("src"),
            dlq = unique("dlq"),
        ),
    )
    .expect("config");
    config
}

fn autoglm(args: &[&str], config: &PathBuf) -> Output {
    Command::new(env!("CARGO_BIN_EXE_autoglm"))
        .args(args)
        .arg("--config")
        .arg(config)
        // Only the file counts: no AUTOGLM__… overrides from the caller's environment.
        .env_clear()
        .env("RUST_LOG", "error")
        .env("NO_COLOR", "1")
        .output()
        .expect("run autoglm")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn schemas_check_exit_status_follows_the_registry_verdict() {
    let stack = stack().await;
    let topic = unique("cli");
    let subject = format!("{topic}-value");

    let v1 = config_file(&stack, &stack.registry_url, &topic, V1);
    let out = autoglm(&["schemas", "check"], &v1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with(&format!("{topic}  {subject}  new subject")),
        "{stdout}"
    );

    let out = autoglm(&["schemas", "register"], &v1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let put = reqwest::Client::new()
        .put(format!("{}/config/{subject}", stack.registry_url))
        .json(&json!({"compatibility": "BACKWARD"}))
        .send()
        .await
        .expect("PUT /config");
    assert!(put.status().is_success(), "{put:?}");

    let out = autoglm(&["schemas", "check"], &v1);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("compatible (BACKWARD, latest version 1)"));

    let v2 = config_file(&stack, &stack.registry_url, &topic, V2_BREAKS);
    let out = autoglm(&["schemas", "check"], &v2);
    assert!(
        !out.status.success(),
        "an incompatible schema must fail the check"
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("INCOMPATIBLE (BACKWARD, latest version 1)")
            && stdout.contains("'currency'"),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("1 of 1 target schemas would be refused by the registry"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn schemas_check_fails_naming_the_registry_that_does_not_answer() {
    let stack = stack().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let url = format!("http://127.0.0.1:{port}/apis/ccompat/v7");
    let topic = unique("cli-down");
    let out = autoglm(
        &["schemas", "check"],
        &config_file(&stack, &url, &topic, V1),
    );
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "GET {url}/subjects/{topic}-value/versions: cannot connect"
        )),
        "{stderr}"
    );
}
