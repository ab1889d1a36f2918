//! The one typed configuration of Open-AutoGLM.
//!
//! ```text
//!   open-autoglm-config.yaml ─┐
//!                             ├─► figment ─► Config (serde, deny_unknown_fields) ─► validate() ─► Valid config
//!   AUTOGLM__A__B=value ──────┘        (env overrides: AUTOGLM__KAFKA__BOOTSTRAP_SERVERS → kafka.bootstrap_servers)
//! ```
//!
//! Failure behaviour: every problem is reported before any record is read, each naming its key
//! path and the reason ([`ConfigError`]), all at once. The origin document's keys
//! (`event_queue.*`, `retries`, `backoff`, `mapping_rules`, `log_level`) are accepted and mapped
//! onto the Kafka-native design; `docs/configuration.md` documents each one.

mod model;
mod secret;
mod security;
mod validate;

use std::path::Path;

use figment::Figment;
use figment::providers::{Env, Format as _, Yaml};

pub use model::*;
pub use secret::Secret;
pub use security::{OAuthConfig, SaslConfig, SaslMechanism, SecurityConfig, TlsConfig};
pub use validate::Problem;

/// The default config file name.
pub const DEFAULT_FILE: &str = "open-autoglm-config.yaml";

/// Prefix of environment variables that override the file; `__` separates key levels.
pub const ENV_PREFIX: &str = "AUTOGLM__";

/// The configuration could not be loaded or is not valid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing or unreadable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// One or more problems, each with its key path.
    #[error("invalid configuration:\n{}", format_problems(.0))]
    Invalid(Vec<Problem>),
}

fn format_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads `path`, applies `AUTOGLM__…` environment overrides, and validates the result.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
    parse(
        &text,
        &path.display().to_string(),
        base_dir,
        Overrides::Environment,
    )
}

/// Where overrides of the YAML come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overrides {
    /// `AUTOGLM__…` environment variables.
    Environment,
    /// None: the YAML alone (tests, tools).
    None,
}

/// Parses YAML `text` (named `origin` in messages) with `overrides`, and validates it. Relative
/// paths in the config (schemas, storage) are resolved against `base_dir`.
pub fn parse(
    text: &str,
    origin: &str,
    base_dir: &Path,
    overrides: Overrides,
) -> Result<Config, ConfigError> {
    let env = match overrides {
        Overrides::Environment => Env::prefixed(ENV_PREFIX),
        // A prefix no variable has.
        Overrides::None => Env::prefixed("AUTOGLM__\0__"),
    };
    // serde_yaml first: it knows line numbers, which figment does not.
    if let Err(e) = serde_yaml::from_str::<Config>(text)
        && env_is_empty(&env)
    {
        return Err(ConfigError::Invalid(vec![Problem::from_yaml(origin, &e)]));
    }
    let config: Config = Figment::new()
        .merge(Yaml::string(text))
        .merge(env.split("__").lowercase(true))
        .extract()
        .map_err(|e| ConfigError::Invalid(e.into_iter().map(Problem::from_figment).collect()))?;
    let problems = validate::validate(&config, base_dir);
    if problems.is_empty() {
        Ok(config.with_base_dir(base_dir))
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

fn env_is_empty(env: &Env) -> bool {
    env.iter().next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
kafka:
  bootstrap_servers: 127.0.0.1:9092
schema_registry:
  url: http://127.0.0.1:8081
mapping_rules:
  "usr_?name|username": user_name
routes:
  - name: customers
    source: { topic: crm.customers, envelope: debezium, encoding: avro }
    key_fields: [id]
    version: { column: version }
    targets:
      - { topic: erp.customers, format: avro, schema: schemas/erp.customers-value.avsc }
    dlq_topic: crm.customers.dlq
"#;

    /// Relative to the crate's directory, where cargo runs its tests.
    fn repo() -> &'static Path {
        Path::new("../..")
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text, "test.yaml", repo(), Overrides::None) {
            Ok(_) => Vec::new(),
            Err(ConfigError::Invalid(problems)) => {
                problems.iter().map(ToString::to_string).collect()
            }
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn origin_document_vocabulary_is_accepted_with_its_defaults() {
        let text = format!(
            "{BASE}event_queue:\n  persistence: false\n  storage_path: /var/lib/autoglm/queue\n  flush_interval_ms: 200\n  max_retry_attempts: 5\n  enable_compression: true\nretries: 3\nbackoff:\n  initial_interval: 1s\n  max_interval: 10s\n  multiplier: 2\nlog_level: debug\n"
        );
        let config = parse(&text, "t", repo(), Overrides::None).expect("valid");
        assert!(!config.exactly_once());
        assert_eq!(config.event_queue.flush_interval_ms, 200);
        assert_eq!(config.retry_attempts(), 3);
        assert_eq!(
            config.backoff.max_interval,
            std::time::Duration::from_secs(10)
        );
        assert_eq!(
            config.mapping_spec(&config.routes[0]).rename_rules[0].to,
            "user_name"
        );
    }

    #[test]
    fn a_numeric_instance_id_is_text() {
        let text = BASE.replace(
            "bootstrap_servers: 127.0.0.1:9092",
            "bootstrap_servers: 127.0.0.1:9092\n  instance_id: 2",
        );
        let config = parse(&text, "t", repo(), Overrides::None).expect("valid");
        assert_eq!(config.kafka.instance_id, "2");
        let bad = BASE.replace(
            "bootstrap_servers: 127.0.0.1:9092",
            "bootstrap_servers: 127.0.0.1:9092\n  instance_id: [2]",
        );
        let found = problems(&bad).join("\n");
        assert!(found.contains("instance_id: expected a string"), "{found}");
    }

    #[test]
    fn an_empty_or_spaced_instance_id_is_refused() {
        for id in ["''", "' '", "'a b'"] {
            let text = BASE.replace(
                "bootstrap_servers: 127.0.0.1:9092",
                &format!("bootstrap_servers: 127.0.0.1:9092\n  instance_id: {id}"),
            );
            let found = problems(&text).join("\n");
            assert!(
                found.contains("kafka.instance_id") && found.contains("must be a non-empty id"),
                "{id}: {found}"
            );
        }
    }

    #[test]
    fn state_store_options_are_read_and_a_bloom_past_64_bits_is_refused() {
        let text = format!(
            "{BASE}state:\n  row_cache_bytes: 33554432\n  optimize_filters_for_hits: true\n  bloom_filter_bits_per_key: 0\n"
        );
        let config = parse(&text, "t", repo(), Overrides::None).expect("valid");
        assert_eq!(config.state.row_cache_bytes, 32 << 20);
        assert!(config.state.optimize_filters_for_hits);
        assert_eq!(config.state.bloom_filter_bits_per_key, 0);
        let found =
            problems(&format!("{BASE}state:\n  bloom_filter_bits_per_key: 65\n")).join("\n");
        assert!(
            found.contains("state.bloom_filter_bits_per_key") && found.contains("above 64"),
            "{found}"
        );
    }

    #[test]
    fn unknown_key_names_its_path_and_line() {
        let text = BASE.replace(
            "    key_fields: [id]",
            "    key_fields: [id]\n    key_feilds: [id]",
        );
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("routes[0]") && found[0].contains("key_feilds"),
            "{found:?}"
        );
        assert!(found[0].contains("(line "), "{found:?}");
    }

    #[test]
    fn every_semantic_problem_is_reported_at_once() {
        let text = BASE
            .replace("\"usr_?name|username\"", "\"usr_(name\"")
            .replace("    targets:\n      - { topic: erp.customers, format: avro, schema: schemas/erp.customers-value.avsc }\n", "    targets: []\n")
            .replace("bootstrap_servers: 127.0.0.1:9092", "bootstrap_servers: 127.0.0.1:9092\n  properties: { isolation.level: read_uncommitted }");
        let found = problems(&text).join("\n");
        assert!(
            found.contains("mapping_rules.\"usr_(name\": invalid regex"),
            "{found}"
        );
        assert!(
            found.contains("routes[0].targets: a route needs at least one target"),
            "{found}"
        );
        assert!(
            found.contains("kafka.properties.isolation.level"),
            "{found}"
        );
    }

    #[test]
    fn empty_batches_are_refused_by_key() {
        let text = format!("{BASE}commit: {{ max_records: 0, max_bytes: 0 }}\n");
        let found = problems(&text).join("\n");
        assert!(
            found.contains("commit.max_records: must be at least 1"),
            "{found}"
        );
        assert!(
            found.contains("commit.max_bytes: must be at least 1"),
            "{found}"
        );
    }

    #[test]
    fn mapping_onto_a_field_the_target_schema_lacks_is_an_error() {
        let text = BASE.replace(
            "    dlq_topic: crm.customers.dlq",
            "    dlq_topic: crm.customers.dlq\n    mapping:\n      fields:\n        loyalty_tier: { const: gold }",
        );
        let found = problems(&text).join("\n");
        assert!(found.contains("loyalty_tier"), "{found}");
    }

    #[test]
    fn metrics_listen_is_an_ip_and_port() {
        let config = parse(BASE, "t", repo(), Overrides::None).expect("valid");
        assert!(config.metrics.is_none(), "absent: no metrics server");
        let with = |listen: &str| format!("{BASE}metrics:\n  listen: \"{listen}\"\n");
        let config = parse(&with("0.0.0.0:9464"), "t", repo(), Overrides::None).expect("valid");
        let addr = config
            .metrics
            .expect("metrics")
            .listen_addr()
            .expect("address");
        assert_eq!(addr, "0.0.0.0:9464".parse().expect("literal"));
        for bad in ["localhost:9464", "127.0.0.1", "127.0.0.1:99999", ""] {
            let found = problems(&with(bad));
            assert_eq!(found.len(), 1, "{bad}: {found:?}");
            assert!(
                found[0].starts_with("metrics.listen: ")
                    && found[0].contains("is not an `ip:port` address"),
                "{bad}: {found:?}"
            );
        }
        let found = problems(&format!(
            "{BASE}metrics:\n  listen: 127.0.0.1:9464\n  port: 1\n"
        ));
        assert!(found.len() == 1 && found[0].contains("port"), "{found:?}");
    }

    #[test]
    fn tracing_is_off_by_default_and_its_keys_are_checked() {
        let config = parse(BASE, "t", repo(), Overrides::None).expect("valid");
        assert_eq!(config.tracing, TracingConfig::default());
        assert!(
            config.tracing.otlp_endpoint.is_none(),
            "no endpoint: no export"
        );
        assert!(!config.tracing.record_spans);
        assert_eq!(config.tracing.service_name, "autoglm");
        let with = |body: &str| format!("{BASE}tracing:\n{body}");
        let config = parse(
            &with("  otlp_endpoint: http://127.0.0.1:4318\n  sampling_ratio: 0.25\n  service_name: crm-sync\n  record_spans: true\n"),
            "t",
            repo(),
            Overrides::None,
        )
        .expect("valid");
        assert_eq!(
            config.tracing.otlp_endpoint.as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert_eq!(config.tracing.sampling_ratio, 0.25);
        assert!(config.tracing.record_spans);
        for (body, key, reason) in [
            (
                "  sampling_ratio: 1.5\n",
                "tracing.sampling_ratio",
                "between 0 and 1",
            ),
            (
                "  sampling_ratio: -0.1\n",
                "tracing.sampling_ratio",
                "between 0 and 1",
            ),
            (
                "  sampling_ratio: .nan\n",
                "tracing.sampling_ratio",
                "between 0 and 1",
            ),
            (
                "  otlp_endpoint: collector:4318\n",
                "tracing.otlp_endpoint",
                "http(s) URL",
            ),
            (
                "  otlp_endpoint: \"not a url\"\n",
                "tracing.otlp_endpoint",
                "is not a URL",
            ),
            (
                "  service_name: \"\"\n",
                "tracing.service_name",
                "must not be empty",
            ),
        ] {
            let found = problems(&with(body));
            assert_eq!(found.len(), 1, "{body}: {found:?}");
            assert!(
                found[0].starts_with(&format!("{key}: ")) && found[0].contains(reason),
                "{body}: {found:?}"
            );
        }
        let found = problems(&with("  endpoint: http://127.0.0.1:4318\n"));
        assert!(
            found.len() == 1 && found[0].contains("tracing") && found[0].contains("endpoint"),
            "{found:?}"
        );
    }

    #[test]
    fn secrets_are_masked_when_printed() {
        let text = BASE.replace(
            "  url: http://127.0.0.1:8081",
            "  url: http://127.0.0.1:8081\n  username: u\n  password: hunter2",
        );
        let config = parse(&text, "t", repo(), Overrides::None).expect("valid");
        let printed = serde_yaml::to_string(&config).expect("yaml");
        assert!(
            !printed.contains("hunter2") && printed.contains("****"),
            "{printed}"
        );
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn typed_security_owns_its_librdkafka_properties() {
        let text = BASE.replace(
            "  bootstrap_servers: 127.0.0.1:9092",
            "  bootstrap_servers: 127.0.0.1:9092\n  security:\n    sasl: { mechanism: scram-sha-512, username: u, password: hunter2 }\n  properties: { sasl.username: v, linger.ms: \"5\" }",
        );
        let found = problems(&text).join("\n");
        assert!(
            found.contains("kafka.properties.sasl.username: kafka.security is set"),
            "{found}"
        );
        assert!(!found.contains("linger.ms"), "{found}");
        let fine = BASE.replace(
            "  bootstrap_servers: 127.0.0.1:9092",
            "  bootstrap_servers: 127.0.0.1:9092\n  security:\n    sasl: { mechanism: scram-sha-512, username: u, password: hunter2 }",
        );
        let config = parse(&fine, "t", repo(), Overrides::None).expect("valid");
        let printed = serde_yaml::to_string(&config).expect("yaml");
        assert!(
            !printed.contains("hunter2") && printed.contains("scram-sha-512"),
            "{printed}"
        );
    }

    #[test]
    fn a_target_outside_allowed_targets_is_named() {
        let text = format!("{BASE}allowed_targets: [\"erp.*\"]\n");
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].starts_with(
                "routes[0].dlq_topic: \"crm.customers.dlq\" is not in allowed_targets (erp.*)"
            ),
            "{found:?}"
        );
        let both =
            format!("{BASE}allowed_targets: [erp.customers, \"crm.*.dlq\", crm.customers.dlq]\n");
        assert!(problems(&both).is_empty(), "{:?}", problems(&both));
    }

    #[test]
    fn a_rate_limit_of_zero_is_refused() {
        let text = BASE.replace(
            "    dlq_topic: crm.customers.dlq",
            "    dlq_topic: crm.customers.dlq\n    rate_limit: { records_per_second: 0, burst: 0 }",
        );
        let found = problems(&text).join("\n");
        assert!(
            found.contains("routes[0].rate_limit.records_per_second: must be at least 1"),
            "{found}"
        );
        assert!(
            found.contains("routes[0].rate_limit.burst: must be at least 1"),
            "{found}"
        );
        let fine = BASE.replace(
            "    dlq_topic: crm.customers.dlq",
            "    dlq_topic: crm.customers.dlq\n    rate_limit: { records_per_second: 250 }",
        );
        let config = parse(&fine, "t", repo(), Overrides::None).expect("valid");
        assert_eq!(config.routes[0].rate_limit.map(|r| r.burst()), Some(250));
    }
}
