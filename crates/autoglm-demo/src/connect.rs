//! Kafka Connect's REST API, as far as the demo and the tests need it, and the Debezium
//! PostgreSQL connector configurations they run.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value as Json, json};

/// A Kafka Connect worker's REST API.
#[derive(Debug, Clone)]
pub struct Connect {
    url: String,
    http: reqwest::Client,
}

impl Connect {
    /// The worker at `url` (`http://127.0.0.1:38083`).
    pub fn new(url: &str) -> Self {
        Self {
            url: url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// Creates or reconfigures a connector, and waits until it and its task run.
    pub async fn put(&self, name: &str, config: &Json) -> anyhow::Result<()> {
        let response = self
            .http
            .put(format!("{}/connectors/{name}/config", self.url))
            .json(config)
            .send()
            .await
            .with_context(|| format!("Kafka Connect at {} is not reachable", self.url))?;
        if !response.status().is_success() {
            bail!(
                "Kafka Connect refused connector {name}: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        self.wait_running(name, Duration::from_secs(90)).await
    }

    /// The connector's status document, if it exists.
    pub async fn status(&self, name: &str) -> anyhow::Result<Option<Json>> {
        let response = self
            .http
            .get(format!("{}/connectors/{name}/status", self.url))
            .send()
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Ok(Some(response.error_for_status()?.json().await?))
    }

    /// Waits until the connector and all its tasks are `RUNNING`; a `FAILED` one is an error
    /// with its trace.
    pub async fn wait_running(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_state(name, "RUNNING", timeout).await
    }

    async fn wait_state(&self, name: &str, want: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            // The worker answers 404 or 409 while it (re)starts or rebalances.
            if let Ok(Some(status)) = self.status(name).await {
                let connector = status["connector"]["state"].as_str().unwrap_or("");
                let tasks = status["tasks"].as_array().cloned().unwrap_or_default();
                if let Some(failed) = std::iter::once(&status["connector"])
                    .chain(tasks.iter())
                    .find(|s| s["state"] == "FAILED")
                {
                    bail!(
                        "connector {name} failed: {}",
                        failed["trace"].as_str().unwrap_or("(no trace)")
                    );
                }
                let tasks_ok = want == "STOPPED"
                    || (!tasks.is_empty() && tasks.iter().all(|t| t["state"] == want));
                if connector == want && tasks_ok {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!("connector {name} was not {want} after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until Connect has committed a streaming offset of the connector: one past its
    /// snapshot. Until then a restarted worker makes Debezium take the snapshot again, and a
    /// row deleted meanwhile is missing from it, with no delete event: Debezium's behaviour.
    pub async fn wait_streaming(&self, name: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let offsets: Json = self
                .http
                .get(format!("{}/connectors/{name}/offsets", self.url))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let streaming = offsets["offsets"].as_array().is_some_and(|all| {
                all.iter().any(|o| {
                    o["offset"].get("snapshot").is_none() && o["offset"].get("lsn_proc").is_some()
                })
            });
            if streaming {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("connector {name} committed no streaming offset in {timeout:?}: {offsets}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Removes a connector and the source offsets Connect keeps for it, so that one of the same
    /// name starts from scratch (with a new snapshot). Nothing happens if it does not exist.
    pub async fn remove(&self, name: &str) -> anyhow::Result<()> {
        if self.status(name).await?.is_none() {
            return Ok(());
        }
        // Offsets can be reset only while the connector is stopped (KIP-875).
        self.http
            .put(format!("{}/connectors/{name}/stop", self.url))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("stopping connector {name}"))?;
        self.wait_state(name, "STOPPED", Duration::from_secs(60))
            .await?;
        self.http
            .delete(format!("{}/connectors/{name}/offsets", self.url))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("resetting connector {name}'s offsets"))?;
        self.http
            .delete(format!("{}/connectors/{name}", self.url))
            .send()
            .await?
            .error_for_status()
            .with_context(|| format!("deleting connector {name}"))?;
        Ok(())
    }
}

/// How the connector writes keys and values: the converter settings a user picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Converter {
    /// Kafka's `JsonConverter` with `schemas.enable=true`: the `{schema, payload}` wrapper.
    JsonWithSchema,
    /// `JsonConverter` with `schemas.enable=false`: the bare payload.
    JsonWithoutSchema,
    /// Apicurio's `AvroConverter`, writing the Confluent wire format (magic byte, 4-byte id)
    /// with schemas registered in the stack's registry.
    Avro,
}

impl Converter {
    fn settings(self, side: &str, registry_v2: &str) -> Vec<(String, String)> {
        let json = "org.apache.kafka.connect.json.JsonConverter";
        let pairs: Vec<(&str, &str)> = match self {
            Converter::JsonWithSchema => vec![("", json), (".schemas.enable", "true")],
            Converter::JsonWithoutSchema => vec![("", json), (".schemas.enable", "false")],
            Converter::Avro => vec![
                ("", "io.apicurio.registry.utils.converter.AvroConverter"),
                (".apicurio.registry.url", registry_v2),
                (".apicurio.registry.auto-register", "true"),
                (".apicurio.registry.find-latest", "true"),
                // The Confluent wire format and the registry's content ids, which its
                // Confluent-compatible API serves: what autoglm reads.
                (".apicurio.registry.as-confluent", "true"),
                (".apicurio.registry.use-id", "contentId"),
                (".apicurio.registry.headers.enabled", "false"),
            ],
        };
        pairs
            .into_iter()
            .map(|(k, v)| (format!("{side}.converter{k}"), v.to_owned()))
            .collect()
    }
}

/// A Debezium PostgreSQL connector (`pgoutput`) capturing `public.customers` of the database at
/// `postgres_url` into `<topic_prefix>.public.customers`.
#[derive(Debug, Clone)]
pub struct DebeziumSource {
    /// `postgresql://user@host:port/db`.
    pub postgres_url: String,
    /// The topic prefix (Debezium's `topic.prefix`); also names the slot and publication.
    pub topic_prefix: String,
    /// The converter for keys and values.
    pub converter: Converter,
    /// `decimal.handling.mode`: `precise`, `string` or `double`.
    pub decimal_handling_mode: &'static str,
    /// `time.precision.mode`: `adaptive`, `adaptive_time_microseconds` or `connect`.
    pub time_precision_mode: &'static str,
    /// The registry's Apicurio v2 API, for [`Converter::Avro`].
    pub registry_v2_url: String,
    /// Partitions of the topic Connect creates.
    pub partitions: u32,
}

impl DebeziumSource {
    /// The topic the connector writes `public.customers` to.
    pub fn topic(&self) -> String {
        format!("{}.public.customers", self.topic_prefix)
    }

    /// The replication slot's name.
    pub fn slot(&self) -> String {
        format!("{}_slot", self.topic_prefix.replace(['.', '-'], "_"))
    }

    /// The publication's name.
    pub fn publication(&self) -> String {
        format!("{}_pub", self.topic_prefix.replace(['.', '-'], "_"))
    }

    /// The connector configuration, as Kafka Connect's REST API takes it.
    pub fn config(&self) -> anyhow::Result<Json> {
        let url = url::Url::parse(&self.postgres_url)
            .with_context(|| format!("not a PostgreSQL URL: {}", self.postgres_url))?;
        let mut config = json!({
            "connector.class": "io.debezium.connector.postgresql.PostgresConnector",
            "plugin.name": "pgoutput",
            "database.hostname": url.host_str().unwrap_or("127.0.0.1"),
            "database.port": url.port().unwrap_or(5432).to_string(),
            "database.user": url.username(),
            "database.password": url.password().unwrap_or(""),
            "database.dbname": url.path().trim_start_matches('/'),
            "topic.prefix": self.topic_prefix,
            "table.include.list": "public.customers",
            "slot.name": self.slot(),
            "publication.name": self.publication(),
            "publication.autocreate.mode": "filtered",
            "snapshot.mode": "initial",
            // Truncates are skipped by default; the processor logs and skips them itself.
            "skipped.operations": "none",
            "decimal.handling.mode": self.decimal_handling_mode,
            "time.precision.mode": self.time_precision_mode,
            "tombstones.on.delete": "true",
            "topic.creation.default.replication.factor": "1",
            "topic.creation.default.partitions": self.partitions.to_string(),
        });
        for side in ["key", "value"] {
            for (k, v) in self.converter.settings(side, &self.registry_v2_url) {
                config[k] = Json::String(v);
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(converter: Converter) -> DebeziumSource {
        DebeziumSource {
            postgres_url: "postgresql://autoglm:secret@db.example:6432/crm".to_owned(),
            topic_prefix: "crm-eu.1".to_owned(),
            converter,
            decimal_handling_mode: "string",
            time_precision_mode: "connect",
            registry_v2_url: "http://registry:8080/apis/registry/v2".to_owned(),
            partitions: 6,
        }
    }

    #[test]
    fn the_config_takes_the_database_from_the_url_and_names_from_the_prefix() {
        let config = source(Converter::JsonWithoutSchema)
            .config()
            .expect("config");
        assert_eq!(config["database.hostname"], "db.example");
        assert_eq!(config["database.port"], "6432");
        assert_eq!(config["database.user"], "autoglm");
        assert_eq!(config["database.password"], "secret");
        assert_eq!(config["database.dbname"], "crm");
        assert_eq!(
            config["slot.name"], "crm_eu_1_slot",
            "slot names allow [a-z0-9_] only"
        );
        assert_eq!(config["publication.name"], "crm_eu_1_pub");
        assert_eq!(config["decimal.handling.mode"], "string");
        assert_eq!(config["time.precision.mode"], "connect");
        assert_eq!(config["topic.creation.default.partitions"], "6");
        assert_eq!(config["value.converter.schemas.enable"], "false");
        assert_eq!(config["key.converter.schemas.enable"], "false");
        assert_eq!(
            source(Converter::JsonWithoutSchema).topic(),
            "crm-eu.1.public.customers"
        );
    }

    #[test]
    fn avro_writes_the_confluent_wire_format_with_content_ids_for_keys_and_values() {
        let config = source(Converter::Avro).config().expect("config");
        for side in ["key", "value"] {
            let get = |k: &str| config[format!("{side}.converter{k}")].clone();
            assert_eq!(
                get(""),
                "io.apicurio.registry.utils.converter.AvroConverter"
            );
            assert_eq!(get(".apicurio.registry.as-confluent"), "true");
            assert_eq!(get(".apicurio.registry.use-id"), "contentId");
            assert_eq!(get(".apicurio.registry.headers.enabled"), "false");
            assert_eq!(
                get(".apicurio.registry.url"),
                "http://registry:8080/apis/registry/v2"
            );
        }
    }
}
