//! Checks that serde cannot express: one problem per key path, all reported at once.

use std::fmt;
use std::path::Path;

use autoglm_codec::Encoding;
use autoglm_kafka::ClientSettings;
use autoglm_mapping::{Mapping, Severity};

use crate::{Config, Route};

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `routes[0].source.topic_pattern`.
    pub path: String,
    /// The line in the file, where known.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{} (line {line}): {}", self.path, self.reason),
            None => write!(f, "{}: {}", self.path, self.reason),
        }
    }
}

impl Problem {
    fn new(path: impl Into<String>, reason: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            line: None,
            reason: reason.into(),
        }
    }

    pub(crate) fn from_yaml(origin: &str, error: &serde_yaml::Error) -> Problem {
        // serde_yaml says "routes[0].source: unknown field `topc`, expected …"; split the path off.
        let text = error.to_string();
        let (path, reason) = match text.split_once(": ") {
            Some((path, reason)) if !path.contains(' ') => (path.to_owned(), reason.to_owned()),
            _ => (origin.to_owned(), text.clone()),
        };
        let reason = reason
            .split(" at line ")
            .next()
            .unwrap_or(&reason)
            .to_owned();
        Problem {
            path,
            line: error.location().map(|l| l.line()),
            reason,
        }
    }

    pub(crate) fn from_figment(error: figment::Error) -> Problem {
        let path = if error.path.is_empty() {
            "(top level)".to_owned()
        } else {
            error.path.join(".")
        };
        let origin = error
            .metadata
            .as_ref()
            .map(|m| format!(" (from {})", m.name))
            .unwrap_or_default();
        Problem::new(path, format!("{}{origin}", error.kind))
    }
}

impl Config {
    /// The route's mapping with the global `mapping_rules` placed before its own rename rules.
    pub fn mapping_spec(&self, route: &Route) -> autoglm_mapping::MappingSpec {
        route.mapping.clone().with_global_rules(
            self.mapping_rules
                .iter()
                .map(|(pattern, to)| (pattern.clone(), to.clone())),
        )
    }
}

pub(crate) fn validate(config: &Config, base_dir: &Path) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut problem = |path: String, reason: String| problems.push(Problem::new(path, reason));

    let mut client = ClientSettings::new(&config.kafka.bootstrap_servers);
    let security = &config.kafka.security;
    for (key, value) in &config.kafka.properties {
        if security.is_set() && crate::security::owned_by_security(key) {
            problem(
                format!("kafka.properties.{key}"),
                "kafka.security is set: it owns `security.protocol`, `ssl.*` and `sasl.*`; \
                 set this through kafka.security, or drop kafka.security"
                    .into(),
            );
            continue;
        }
        match client.clone().with_property(key, value) {
            Ok(next) => client = next,
            Err(e) => problem(format!("kafka.properties.{key}"), e.to_string()),
        }
    }
    for (key, reason) in security.problems(base_dir) {
        problem(format!("kafka.security.{key}"), reason);
    }
    if security.is_set() && config.kafka.sasl_password.is_some() {
        problem(
            "kafka.sasl_password".into(),
            "kafka.security is set: give the password as kafka.security.sasl.password".into(),
        );
    }
    for (path, reason) in registry_problems(config, base_dir)
        .into_iter()
        .chain(outside_allowed_targets(config))
    {
        problem(path, reason);
    }
    let bloom = config.state.bloom_filter_bits_per_key;
    if bloom > 64 {
        problem(
            "state.bloom_filter_bits_per_key".into(),
            format!(
                "{bloom} is above 64; 10 bits give about 1% false positives, 0 turns the filter off"
            ),
        );
    }
    if config.kafka.bootstrap_servers.trim().is_empty() {
        problem("kafka.bootstrap_servers".into(), "must not be empty".into());
    }
    let instance_id = &config.kafka.instance_id;
    if instance_id.trim().is_empty() || instance_id.chars().any(char::is_whitespace) {
        problem(
            "kafka.instance_id".into(),
            format!(
                "{instance_id:?}: must be a non-empty id without spaces; it makes the \
                 transactional id `<group_id>-<instance_id>`, which instances must not share \
                 (an empty AUTOGLM__KAFKA__INSTANCE_ID gives every instance the same one)"
            ),
        );
    }
    if config.event_queue.flush_interval_ms == 0 {
        problem(
            "event_queue.flush_interval_ms".into(),
            "must be at least 1 (it is the transaction commit cadence)".into(),
        );
    }
    if config.commit.max_records == 0 {
        problem("commit.max_records".into(), "must be at least 1".into());
    }
    if config.commit.max_bytes == 0 {
        problem("commit.max_bytes".into(), "must be at least 1".into());
    }
    if config.backoff.multiplier < 1.0 {
        problem("backoff.multiplier".into(), "must be at least 1.0".into());
    }
    if config.backoff.initial_interval > config.backoff.max_interval {
        problem(
            "backoff.initial_interval".into(),
            "is longer than backoff.max_interval".into(),
        );
    }
    if config.retry_attempts() == 0 {
        problem("retries".into(), "must be at least 1 attempt".into());
    }
    if let Err(e) = config.log_level.parse::<LogFilter>() {
        problem("log_level".into(), e);
    }
    if let Some(metrics) = &config.metrics
        && let Err(e) = metrics.listen_addr()
    {
        problem(
            "metrics.listen".into(),
            format!(
                "{:?} is not an `ip:port` address ({e}), e.g. 0.0.0.0:9464 or 127.0.0.1:9464",
                metrics.listen
            ),
        );
    }
    for (path, reason) in tracing_problems(&config.tracing) {
        problem(path, reason);
    }
    for (pattern, _) in &config.mapping_rules {
        if let Err(e) = regex::Regex::new(pattern) {
            problem(
                format!("mapping_rules.{pattern:?}"),
                format!("invalid regex: {e}"),
            );
        }
    }
    if config.routes.is_empty() {
        problem("routes".into(), "at least one route is needed".into());
    }
    for (i, route) in config.routes.iter().enumerate() {
        let at = |key: &str| format!("routes[{i}].{key}");
        if route.name.is_empty() || route.name.contains('\0') {
            problem(at("name"), "must be a non-empty name without NUL".into());
        }
        if config.routes[..i].iter().any(|r| r.name == route.name) {
            problem(
                at("name"),
                format!("route name {:?} is used twice", route.name),
            );
        }
        match (&route.source.topic, &route.source.topic_pattern) {
            (Some(_), Some(_)) | (None, None) => problem(
                at("source"),
                "set exactly one of `topic` and `topic_pattern`".into(),
            ),
            (None, Some(pattern)) => {
                if let Err(e) = regex::Regex::new(pattern) {
                    problem(at("source.topic_pattern"), format!("invalid regex: {e}"));
                }
            }
            (Some(_), None) => {}
        }
        if route.source.encoding == Encoding::Avro && config.schema_registry.is_none() {
            problem(
                at("source.encoding"),
                "avro needs `schema_registry.url`".into(),
            );
        }
        if route.key_fields.is_empty() {
            problem(at("key_fields"), "at least one key field is needed".into());
        }
        if let Some(limit) = &route.rate_limit {
            if limit.records_per_second == 0 {
                problem(
                    at("rate_limit.records_per_second"),
                    "must be at least 1 (remove rate_limit for no limit)".into(),
                );
            }
            if limit.burst == Some(0) {
                problem(at("rate_limit.burst"), "must be at least 1".into());
            }
        }
        if route.dlq_topic.trim().is_empty() {
            problem(at("dlq_topic"), "must name a topic".into());
        }
        if route.targets.is_empty() {
            problem(at("targets"), "a route needs at least one target".into());
        }
        let mapping = match Mapping::compile(&route.name, &config.mapping_spec(route)) {
            Ok(mapping) => Some(mapping),
            Err(errors) => {
                for e in errors {
                    problem(format!("routes[{i}].{}", e.path), e.reason);
                }
                None
            }
        };
        for (t, target) in route.targets.iter().enumerate() {
            let at = |key: &str| format!("routes[{i}].targets[{t}].{key}");
            if route.source.topic.as_deref() == Some(&target.topic) {
                problem(
                    at("topic"),
                    "a target cannot be the route's own source".into(),
                );
            }
            match (target.format, &target.schema) {
                (Encoding::Avro, None) => {
                    problem(at("schema"), "avro targets need a schema file".into())
                }
                (Encoding::Avro, Some(_)) if config.schema_registry.is_none() => {
                    problem(at("format"), "avro needs `schema_registry.url`".into())
                }
                (_, Some(schema)) => {
                    let path = if schema.is_relative() {
                        base_dir.join(schema)
                    } else {
                        schema.clone()
                    };
                    match schema_fields(&path) {
                        Ok(fields) => {
                            if let Some(mapping) = &mapping {
                                for d in mapping.check(None, Some(&fields)) {
                                    if d.severity == Severity::Error {
                                        problem(
                                            format!("routes[{i}].{}", d.path),
                                            format!(
                                                "{} (target schema {})",
                                                d.message,
                                                schema.display()
                                            ),
                                        );
                                    }
                                }
                            }
                        }
                        Err(reason) => problem(at("schema"), reason),
                    }
                }
                (Encoding::Json, None) => {}
            }
        }
    }
    problems
}

/// `schema_registry.tls` and `.oauth`: what the typed Kafka security refuses, and what an http
/// URL cannot carry.
fn registry_problems(config: &Config, base_dir: &Path) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut problem = |path: String, reason: String| problems.push((path, reason));
    if let Some(registry) = &config.schema_registry {
        let https = registry.url.starts_with("https://");
        let as_kafka = crate::SecurityConfig {
            tls: registry.tls.clone(),
            sasl: None,
            oauth: registry.oauth.clone(),
        };
        for (key, reason) in as_kafka.problems(base_dir) {
            // An https URL is TLS without a `tls` block (the system's CAs).
            if key == "oauth" && https {
                continue;
            }
            problem(format!("schema_registry.{key}"), reason);
        }
        if registry.tls.is_some() && !https {
            problem(
                "schema_registry.tls".into(),
                format!("{} is not an https URL", registry.url),
            );
        }
        if registry.tls.as_ref().is_some_and(|t| !t.verify_hostname) {
            problem(
                "schema_registry.tls.verify_hostname".into(),
                "the registry's client always checks the host name".into(),
            );
        }
        if registry.oauth.is_some() && registry.username.is_some() {
            problem(
                "schema_registry.oauth".into(),
                "set either `username`/`password` or `oauth`, not both".into(),
            );
        }
    }
    problems
}

/// `tracing`: an endpoint the exporter can post to, a ratio that is one, a service name.
fn tracing_problems(tracing: &crate::TracingConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Some(endpoint) = &tracing.otlp_endpoint {
        match url::Url::parse(endpoint) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => {}
            Ok(_) => problems.push((
                "tracing.otlp_endpoint".to_owned(),
                format!(
                    "{endpoint:?} is not an http(s) URL of an OTLP/HTTP receiver, e.g. http://collector:4318"
                ),
            )),
            Err(e) => problems.push((
                "tracing.otlp_endpoint".to_owned(),
                format!("{endpoint:?} is not a URL ({e}), e.g. http://collector:4318"),
            )),
        }
    }
    if !(0.0..=1.0).contains(&tracing.sampling_ratio) {
        problems.push((
            "tracing.sampling_ratio".to_owned(),
            format!(
                "{} is not a share between 0 and 1 (0: no new trace, 1: all of them)",
                tracing.sampling_ratio
            ),
        ));
    }
    if tracing.service_name.trim().is_empty() {
        problems.push((
            "tracing.service_name".to_owned(),
            "must not be empty".to_owned(),
        ));
    }
    problems
}

/// Every topic a route writes (targets, DLQ, audit) that `allowed_targets` does not allow.
fn outside_allowed_targets(config: &Config) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut problem = |path: String, reason: String| problems.push((path, reason));
    if let Some(allowed) = &config.allowed_targets {
        let permitted = |topic: &str| {
            allowed.iter().any(|entry| match entry.strip_suffix('*') {
                Some(prefix) => topic.starts_with(prefix),
                None => topic == entry,
            })
        };
        for (i, route) in config.routes.iter().enumerate() {
            let written = route
                .targets
                .iter()
                .enumerate()
                .map(|(t, target)| (format!("routes[{i}].targets[{t}].topic"), &target.topic))
                .chain(std::iter::once((
                    format!("routes[{i}].dlq_topic"),
                    &route.dlq_topic,
                )))
                .chain(
                    route
                        .audit_topic
                        .iter()
                        .map(|topic| (format!("routes[{i}].audit_topic"), topic)),
                );
            for (key, topic) in written {
                if !permitted(topic) {
                    problem(
                        key,
                        format!(
                            "{topic:?} is not in allowed_targets ({}): this service may not \
                             write there",
                            allowed.join(", ")
                        ),
                    );
                }
            }
        }
    }
    problems
}

/// Top-level field names of an Avro record schema file.
fn schema_fields(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let schema: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    schema
        .get("fields")
        .and_then(serde_json::Value::as_array)
        .map(|fields| {
            fields
                .iter()
                .filter_map(|f| f.get("name")?.as_str().map(str::to_owned))
                .collect()
        })
        .ok_or_else(|| format!("{} is not an Avro record schema", path.display()))
}

/// Accepts the origin document's levels and `tracing` filter directives.
struct LogFilter;

impl std::str::FromStr for LogFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<LogFilter, String> {
        let level = |l: &str| {
            matches!(
                l.to_ascii_lowercase().as_str(),
                "error" | "warn" | "info" | "debug" | "trace" | "off"
            )
        };
        let ok = s.split(',').all(|directive| {
            let l = directive.rsplit('=').next().unwrap_or("");
            level(l.trim())
        });
        if ok && !s.trim().is_empty() {
            Ok(LogFilter)
        } else {
            Err(format!(
                "{s:?} is not a level (error, warn, info, debug, trace) or a `target=level` list"
            ))
        }
    }
}
