//! docker-compose.yml cannot run here (no Docker engine), so this checks that it describes the
//! same stack as `make up`: the same versions, host ports and broker settings.

use std::collections::BTreeMap;
use std::fs;

use autoglm_tests::repo_root;
use serde_yaml::Value;

fn read(path: &str) -> String {
    fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn compose() -> Value {
    serde_yaml::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is valid YAML")
}

/// `${NAME:-default}` in deploy/local/stack.sh.
fn stack_default(name: &str) -> String {
    let script = read("deploy/local/stack.sh");
    let marker = format!("${{{name}:-");
    let start = script
        .find(&marker)
        .unwrap_or_else(|| panic!("{name} in stack.sh"))
        + marker.len();
    let end = start + script[start..].find('}').expect("closing brace");
    script[start..end].to_owned()
}

/// `<name>value</name>` in deploy/local/pom.xml.
fn pom_property(name: &str) -> String {
    let pom = read("deploy/local/pom.xml");
    let open = format!("<{name}>");
    let start = pom
        .find(&open)
        .unwrap_or_else(|| panic!("{name} in pom.xml"))
        + open.len();
    let end = start + pom[start..].find('<').expect("closing tag");
    pom[start..end].to_owned()
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .and_then(|s| s.get(name))
        .unwrap_or_else(|| panic!("service {name} in docker-compose.yml"))
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    let env = service
        .get("environment")
        .and_then(Value::as_mapping)
        .expect("environment mapping");
    env.iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => panic!("unexpected value {other:?}"),
            };
            (k.as_str().expect("string key").to_owned(), value)
        })
        .collect()
}

fn ports(service: &Value) -> Vec<String> {
    service
        .get("ports")
        .and_then(Value::as_sequence)
        .expect("ports")
        .iter()
        .map(|p| p.as_str().expect("port string").to_owned())
        .collect()
}

#[test]
fn compose_images_match_the_local_stack_versions() {
    let compose = compose();
    let image = |name| {
        service(&compose, name)
            .get("image")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    assert_eq!(
        image("kafka"),
        Some(format!("apache/kafka:{}", pom_property("kafka.version")))
    );
    assert_eq!(
        image("registry"),
        Some(format!(
            "apicurio/apicurio-registry:{}",
            pom_property("apicurio.version")
        ))
    );
}

#[test]
fn compose_host_ports_match_the_local_stack_defaults() {
    let compose = compose();
    let kafka_port = stack_default("AUTOGLM_KAFKA_PORT");
    let registry_port = stack_default("AUTOGLM_REGISTRY_PORT");
    assert!(
        ports(service(&compose, "kafka")).contains(&format!("{kafka_port}:{kafka_port}")),
        "kafka must publish {kafka_port} on the host"
    );
    let kafka_env = environment(service(&compose, "kafka"));
    assert!(
        kafka_env["KAFKA_ADVERTISED_LISTENERS"].contains(&format!("127.0.0.1:{kafka_port}")),
        "host clients must be told 127.0.0.1:{kafka_port}"
    );
    assert!(
        ports(service(&compose, "registry"))
            .iter()
            .any(|p| p.starts_with(&format!("{registry_port}:"))),
        "registry must publish {registry_port} on the host"
    );
}

#[test]
fn compose_cdc_source_matches_the_local_stack() {
    let compose = compose();
    let postgres_port = stack_default("AUTOGLM_POSTGRES_PORT");
    let connect_port = stack_default("AUTOGLM_CONNECT_PORT");
    assert!(
        ports(service(&compose, "postgres")).contains(&format!("{postgres_port}:5432")),
        "postgres must publish {postgres_port} on the host"
    );
    assert!(
        ports(service(&compose, "connect")).contains(&format!("{connect_port}:8083")),
        "connect must publish {connect_port} on the host"
    );
    let image = service(&compose, "connect")["image"]
        .as_str()
        .expect("connect image");
    assert_eq!(
        image,
        format!(
            "quay.io/debezium/connect:{}",
            pom_property("debezium.version")
        ),
        "the Debezium version matches the local stack's"
    );
}

#[test]
fn compose_broker_settings_match_the_local_stack() {
    let compose = compose();
    let env = environment(service(&compose, "kafka"));
    let properties = read("deploy/local/kafka.properties");
    let mut checked = 0;
    for line in properties.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line.split_once('=').expect("key=value");
        let var = format!("KAFKA_{}", key.to_uppercase().replace('.', "_"));
        assert_eq!(
            env.get(&var).map(String::as_str),
            Some(value),
            "{var} for {key}"
        );
        checked += 1;
    }
    assert!(
        checked >= 5,
        "kafka.properties holds the single-node settings"
    );
}

#[test]
fn compose_processor_is_built_from_the_repo_and_points_at_the_stack() {
    let compose = compose();
    let processor = service(&compose, "processor");
    let dockerfile = processor
        .get("build")
        .and_then(|b| b.get("dockerfile"))
        .and_then(Value::as_str)
        .expect("processor is built from a Dockerfile");
    assert!(
        repo_root().join(dockerfile).is_file(),
        "{dockerfile} exists"
    );
    let env = environment(processor);
    assert_eq!(env["AUTOGLM__KAFKA__BOOTSTRAP_SERVERS"], "kafka:19092");
    assert!(env["AUTOGLM__SCHEMA_REGISTRY__URL"].ends_with("/apis/ccompat/v7"));
    let command: Vec<&str> = processor
        .get("command")
        .and_then(Value::as_sequence)
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        command.first(),
        Some(&"run"),
        "the processor runs the pipeline"
    );
}
