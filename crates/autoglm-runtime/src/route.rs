//! A configured route, compiled for the hot path: topic matching, entity keys, versions, mapping
//! and targets.

use autoglm_codec::{AvroTarget, CodecError, Encoding, Envelope};
use autoglm_config::{Config, DeleteMode, Route, VersionSource};
use autoglm_core::{ChangeEvent, Row, Version};
use autoglm_mapping::Mapping;
use autoglm_state::Change;
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use serde_json::Value as Json;

/// Why a record's key or version could not be read.
#[derive(Debug, thiserror::Error)]
#[error("route {route}: {reason}")]
pub struct RecordError {
    route: String,
    /// `key_fields` or `version`.
    pub rule: &'static str,
    reason: String,
}

/// An output topic, ready to encode.
#[derive(Debug)]
pub(crate) enum TargetRuntime {
    Avro {
        topic: String,
        avro: Box<AvroTarget>,
    },
    Json {
        topic: String,
    },
}

impl TargetRuntime {
    pub(crate) fn topic(&self) -> &str {
        match self {
            TargetRuntime::Avro { topic, .. } | TargetRuntime::Json { topic } => topic,
        }
    }

    pub(crate) async fn encode(&self, row: &Row) -> Result<Vec<u8>, CodecError> {
        match self {
            TargetRuntime::Avro { avro, .. } => avro.encode(row).await,
            TargetRuntime::Json { .. } => serde_json::to_vec(row).map_err(CodecError::Json),
        }
    }

    /// [`encode`](Self::encode) without waiting, of a row given as its fields in name order,
    /// each name once (what `Mapping::apply_sorted` returns); `None` while an Avro target's
    /// schema id is not known yet (its first `encode` registers it).
    pub(crate) fn encode_fields_cached(
        &self,
        fields: &[(String, Json)],
    ) -> Option<Result<Vec<u8>, CodecError>> {
        match self {
            TargetRuntime::Avro { avro, .. } => avro.encode_fields_cached(fields),
            TargetRuntime::Json { .. } => {
                Some(serde_json::to_vec(&AsObject(fields)).map_err(CodecError::Json))
            }
        }
    }
}

/// Fields in name order, serialized as the JSON object of the row they make.
struct AsObject<'f>(&'f [(String, Json)]);

impl serde::Serialize for AsObject<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(name, value)| (name, value)))
    }
}

/// One route, compiled.
#[derive(Debug)]
pub struct RouteRuntime {
    /// The route's name (metric label, state key prefix).
    pub name: String,
    topic: Option<String>,
    pattern: Option<regex::Regex>,
    pub(crate) envelope: Envelope,
    pub(crate) encoding: Encoding,
    key_fields: Vec<String>,
    version: VersionSource,
    pub(crate) mapping: Mapping,
    pub(crate) targets: Vec<TargetRuntime>,
    pub(crate) dlq_topic: String,
    pub(crate) audit_topic: Option<String>,
    pub(crate) delete: DeleteMode,
    /// Output records carry their input's topic, partition and offset as headers.
    pub(crate) lineage_headers: bool,
    /// Compacted topic holding this route's state entries.
    pub(crate) changelog_topic: String,
}

impl RouteRuntime {
    /// Compiles `route`. The config was validated, so errors here are about files and schemas.
    pub fn compile(
        config: &Config,
        route: &Route,
        registry: Option<&SrSettings>,
    ) -> Result<RouteRuntime, String> {
        let mapping =
            Mapping::compile(&route.name, &config.mapping_spec(route)).map_err(|errors| {
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })?;
        let mut targets = Vec::new();
        for target in &route.targets {
            targets.push(match (target.format, &target.schema) {
                (Encoding::Avro, Some(schema)) => {
                    let text = std::fs::read_to_string(schema)
                        .map_err(|e| format!("cannot read {}: {e}", schema.display()))?;
                    let registry = registry.ok_or("avro target without schema_registry")?;
                    let avro = AvroTarget::new(registry.clone(), &target.topic, &text)
                        .map_err(|e| format!("{}: {e}", schema.display()))?;
                    TargetRuntime::Avro {
                        topic: target.topic.clone(),
                        avro: Box::new(avro),
                    }
                }
                (Encoding::Avro, None) => return Err("avro target without schema".to_owned()),
                (Encoding::Json, _) => TargetRuntime::Json {
                    topic: target.topic.clone(),
                },
            });
        }
        let pattern = match &route.source.topic_pattern {
            Some(p) => Some(regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(RouteRuntime {
            name: route.name.clone(),
            topic: route.source.topic.clone(),
            pattern,
            envelope: route.source.envelope,
            encoding: route.source.encoding,
            key_fields: route.key_fields.clone(),
            version: route.version.clone(),
            mapping,
            targets,
            dlq_topic: route.dlq_topic.clone(),
            audit_topic: route.audit_topic.clone(),
            delete: route.delete,
            lineage_headers: route.lineage_headers,
            changelog_topic: format!("{}-{}-changelog", config.kafka.group_id, route.name),
        })
    }

    /// The subscription entry: the topic, or `^pattern` (librdkafka's regex subscription).
    pub(crate) fn subscription(&self) -> String {
        match (&self.topic, &self.pattern) {
            (Some(topic), _) => topic.clone(),
            (None, Some(pattern)) => format!("^{}", pattern.as_str().trim_start_matches('^')),
            (None, None) => String::new(),
        }
    }

    /// Whether records of `topic` belong to this route.
    pub(crate) fn matches(&self, topic: &str) -> bool {
        self.topic.as_deref() == Some(topic)
            || self.pattern.as_ref().is_some_and(|p| p.is_match(topic))
    }

    /// The entity key: the key fields' values as a JSON array, read from the row (or the record
    /// key for deletes without a row).
    pub(crate) fn entity_key(&self, event: &ChangeEvent) -> Result<Vec<u8>, RecordError> {
        let mut values = Vec::with_capacity(self.key_fields.len());
        for field in &self.key_fields {
            let value = event
                .row()
                .and_then(|r| r.get(field))
                .or_else(|| event.key.as_ref().and_then(|k| k.get(field)))
                .or_else(|| self.scalar_key(event))
                .filter(|v| !v.is_null())
                .ok_or_else(|| {
                    self.error("key_fields", format!("key field `{field}` is missing"))
                })?;
            values.push(value.clone());
        }
        serde_json::to_vec(&values).map_err(|e| self.error("key_fields", e.to_string()))
    }

    /// What `event` does to its key's state: an upsert or delete at its version, or a delete
    /// without one, which deletes whatever version is stored. A delete comes without a version
    /// when it has no row (an upsert topic's key-only delete), or when its row lacks the
    /// version column: PostgreSQL logs only the key of a deleted row unless the table has
    /// `REPLICA IDENTITY FULL`, so Debezium's `before` holds the key and nulls.
    pub(crate) fn change(&self, event: &ChangeEvent) -> Result<Change, RecordError> {
        match self.version(event) {
            Ok(version) => Ok(Change::versioned(version, event.op.is_delete())),
            Err(_) if event.op.is_delete() && self.lacks_version_columns(event) => {
                Ok(Change::UnversionedDelete)
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the event's row is absent, or holds none of the version columns (each missing
    /// or null). A version source that is not a column is never absent this way.
    fn lacks_version_columns(&self, event: &ChangeEvent) -> bool {
        let Some(row) = event.row() else {
            return true;
        };
        let absent = |column: &str| row.get(column).is_none_or(Json::is_null);
        match &self.version {
            VersionSource::Column(column) => absent(column),
            VersionSource::Hlc(hlc) => absent(&hlc.physical_column) && absent(&hlc.logical_column),
            VersionSource::SourceTimestamp | VersionSource::LogPosition => false,
        }
    }

    /// A record key that is a bare value (Kafka Connect's `StringConverter`, a number), not an
    /// object: it is the single key field's value.
    fn scalar_key<'e>(&self, event: &'e ChangeEvent) -> Option<&'e Json> {
        let key = event.key.as_ref()?;
        match (self.key_fields.len(), key.len()) {
            (1, 1) => key.get("key"),
            _ => None,
        }
    }

    /// The version of `event` under this route's version source.
    pub(crate) fn version(&self, event: &ChangeEvent) -> Result<Version, RecordError> {
        let row = event.row();
        let number = |field: &str| -> Result<i64, RecordError> {
            let value = row.and_then(|r| r.get(field)).ok_or_else(|| {
                self.error("version", format!("version column `{field}` is missing"))
            })?;
            as_i64(value).ok_or_else(|| {
                self.error(
                    "version",
                    format!("version column `{field}` is not an integer: {value}"),
                )
            })
        };
        match &self.version {
            VersionSource::Column(column) => number(column).map(Version::from_i64),
            VersionSource::SourceTimestamp => event
                .source
                .ts_ms
                .or(event.ts_ms)
                .map(Version::from_i64)
                .ok_or_else(|| self.error("version", "the event has no source.ts_ms".to_owned())),
            VersionSource::LogPosition => {
                let s = &event.source;
                if let Some((commit, lsn)) = s.sequence {
                    Ok(Version([commit, lsn, 0]))
                } else if let Some(lsn) = s.lsn {
                    Ok(Version([lsn, 0, 0]))
                } else if let (Some(file), Some(pos)) = (&s.binlog_file, s.binlog_pos) {
                    let index = file
                        .rsplit('.')
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                        .ok_or_else(|| {
                            self.error("version", format!("binlog file {file:?} has no index"))
                        })?;
                    Ok(Version([index, pos, s.binlog_row.unwrap_or(0)]))
                } else {
                    Err(self.error(
                        "version",
                        "the event has no source.lsn, source.sequence or binlog position"
                            .to_owned(),
                    ))
                }
            }
            VersionSource::Hlc(hlc) => {
                let physical = number(&hlc.physical_column)?;
                let logical = number(&hlc.logical_column)?;
                let region = row
                    .and_then(|r| r.get(&hlc.region_column))
                    .and_then(Json::as_str)
                    .unwrap_or_default();
                let priority = hlc
                    .region_priority
                    .iter()
                    .position(|r| r == region)
                    .map_or(0, |p| p as u64 + 1);
                Ok(Version([
                    Version::from_i64(physical).0[0],
                    Version::from_i64(logical).0[0],
                    priority,
                ]))
            }
        }
    }

    /// The version as people read it: the column value or timestamp for single-number sources,
    /// `a.b.c` components otherwise.
    pub(crate) fn version_label(&self, version: Version) -> String {
        match self.version {
            VersionSource::Column(_) | VersionSource::SourceTimestamp => {
                ((version.0[0] ^ (1 << 63)) as i64).to_string()
            }
            _ => version.to_string(),
        }
    }

    /// The output key: a single key field's value as text, or the JSON array of several.
    pub(crate) fn output_key(&self, entity_key: &[u8]) -> Vec<u8> {
        if self.key_fields.len() == 1
            && let Ok(Json::Array(values)) = serde_json::from_slice::<Json>(entity_key)
            && let Some(value) = values.first()
        {
            return match value {
                Json::String(s) => s.clone().into_bytes(),
                other => other.to_string().into_bytes(),
            };
        }
        entity_key.to_vec()
    }

    fn error(&self, rule: &'static str, reason: String) -> RecordError {
        RecordError {
            route: self.name.clone(),
            rule,
            reason,
        }
    }
}

fn as_i64(value: &Json) -> Option<i64> {
    match value {
        Json::Number(n) => n.as_i64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}
