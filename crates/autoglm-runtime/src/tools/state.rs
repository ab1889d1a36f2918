//! `autoglm state get | stats`: one entity's stored version, and the store's counts against
//! the changelog, read-only while `autoglm run` holds the store.
//!
//! ```text
//!  KEY as the user sees it ─► entity key (the route's key_fields, JSON array) ─► state key
//!     (route ‖ 0x00 ‖ entity key) ─► StateInspector (RocksDB secondary, read only) ─► entry
//!
//!  stats: full scan per route (exact) + RocksDB estimates
//!         checkpoints (store) vs the changelog's last stable offset (broker, read_committed)
//! ```
//!
//! The store at `event_queue.storage_path` holds the partitions *this* instance owns (and
//! what it restored of others before they moved): an entity whose input partition another
//! instance owns is in that instance's store. The stored entry has the version, the tombstone
//! and snapshot flags, and the wall-clock time it was accepted; the changelog partition and
//! offset of an entity are not stored per key (the checkpoint is per changelog partition).
//!
//! Failure behaviour: a key that does not fit the route's key fields is a usage error; a
//! missing store is [`StateError::NoStore`](autoglm_state::StateError); a missing entry is not
//! an error (the report says so).

use std::collections::BTreeMap;

use autoglm_state::{StateEntry, StateInspector, state_key};
use rdkafka::consumer::{BaseConsumer, Consumer};
use serde::Serialize;
use serde_json::Value as Json;

use super::{
    REQUEST_TIMEOUT, ToolError, blocking, kafka, partitions, reader_config, render, rfc3339_ms,
    table,
};
use crate::pipeline::Pipeline;

/// The entity keys `input` may mean for a route whose key fields are `key_fields`, most likely
/// first (the bytes the pipeline stores: the key fields' values as a JSON array).
///
/// `input` is a JSON object of the key fields (`{"id": 42}`), a JSON array of their values in
/// `key_fields` order (`[42, "eu"]`, as a multi-field output key prints), or, for a single key
/// field, its plain value: `42` is tried as the number and then as the string `"42"` (a key
/// column may be text), `abc` is the string.
pub fn entity_keys(key_fields: &[String], input: &str) -> Result<Vec<Vec<u8>>, ToolError> {
    let usage = |why: String| ToolError::Usage(format!("key {input:?}: {why}"));
    let encode = |values: &[Json]| serde_json::to_vec(values).unwrap_or_default();
    match serde_json::from_str::<Json>(input.trim()) {
        Ok(Json::Object(mut object)) => {
            let mut values = Vec::with_capacity(key_fields.len());
            for field in key_fields {
                let value = object
                    .remove(field)
                    .filter(|v| !v.is_null())
                    .ok_or_else(|| usage(format!("key field `{field}` is missing")))?;
                values.push(value);
            }
            if let Some(extra) = object.keys().next() {
                return Err(usage(format!(
                    "`{extra}` is not a key field (the route's key fields: {})",
                    key_fields.join(", ")
                )));
            }
            Ok(vec![encode(&values)])
        }
        Ok(Json::Array(values)) if values.len() == key_fields.len() => Ok(vec![encode(&values)]),
        _ if key_fields.len() != 1 => Err(usage(format!(
            "the route's key has the fields {}: give a JSON object ({{\"{}\": …}}) or an array of their values",
            key_fields.join(", "),
            key_fields.first().map_or("", String::as_str)
        ))),
        Ok(value @ (Json::Number(_) | Json::Bool(_))) => Ok(vec![
            encode(&[value]),
            encode(&[Json::String(input.trim().to_owned())]),
        ]),
        Ok(value @ Json::String(_)) => Ok(vec![encode(&[value])]),
        _ => Ok(vec![encode(&[Json::String(input.to_owned())])]),
    }
}

/// One entity's stored state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntityState {
    /// The route.
    pub route: String,
    /// The key as given.
    pub key: String,
    /// The entity key looked up (found, or the first tried), as stored: a JSON array.
    pub entity_key: String,
    /// The store directory.
    pub store: String,
    /// The route's changelog topic.
    pub changelog_topic: String,
    /// The entry, if the store has one.
    pub entry: Option<EntryView>,
}

/// A stored entry, for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryView {
    /// The version, as the route's version source reads (a column value, a timestamp, or
    /// `a.b.c` for log positions and hybrid clocks).
    pub version: String,
    /// The version's three components, as compared.
    pub version_components: [u64; 3],
    /// The newest accepted change was a delete: a versioned tombstone.
    pub tombstone: bool,
    /// The newest accepted change came from a snapshot read (`op=r`).
    pub snapshot: bool,
    /// When it was accepted (wall clock, ms since the epoch).
    pub updated_at_ms: i64,
    /// The same, RFC 3339.
    pub updated_at: String,
    /// For a tombstone: when the guard stops honouring it (`state.tombstone_retention`).
    pub tombstone_expires_at: Option<String>,
}

impl EntityState {
    /// As text, one `name value` line each.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let mut line = |name: &str, value: &str| out.push_str(&format!("{name:<10} {value}\n"));
        line("route", &self.route);
        line(
            "key",
            &format!("{} (stored as {})", self.key, self.entity_key),
        );
        line("store", &self.store);
        match &self.entry {
            None => line(
                "entry",
                "none: never accepted here, a purged tombstone, or the key's partition is \
                 owned by another instance (its own store)",
            ),
            Some(e) => {
                line("version", &e.version);
                line("tombstone", if e.tombstone { "yes" } else { "no" });
                line("snapshot", if e.snapshot { "yes" } else { "no" });
                line(
                    "accepted",
                    &format!("{} ({} ms)", e.updated_at, e.updated_at_ms),
                );
                if let Some(expires) = &e.tombstone_expires_at {
                    line("expires", expires);
                }
            }
        }
        line(
            "changelog",
            &format!(
                "{} (the offset is kept per partition, not per key: `autoglm state stats`)",
                self.changelog_topic
            ),
        );
        out
    }
}

/// The stored state of the entity `key` of `route`, from the config's store, read-only.
pub async fn get(pipeline: &Pipeline, route: &str, key: &str) -> Result<EntityState, ToolError> {
    let config = pipeline.config();
    let runtime = super::route(pipeline, route)?;
    let key_fields = config
        .routes
        .iter()
        .find(|r| r.name == runtime.name)
        .map(|r| r.key_fields.clone())
        .unwrap_or_default();
    let candidates = entity_keys(&key_fields, key)?;
    let path = config.event_queue.storage_path.clone();
    let name = runtime.name.clone();
    let found = blocking(move || {
        let inspector = StateInspector::open(&path)?;
        for candidate in &candidates {
            if let Some(entry) = inspector.get(&state_key(&name, candidate))? {
                return Ok((candidate.clone(), Some(entry)));
            }
        }
        Ok((candidates.first().cloned().unwrap_or_default(), None))
    })
    .await?;
    let retention = i64::try_from(config.state.tombstone_retention.as_millis()).unwrap_or(i64::MAX);
    let (entity_key, entry) = found;
    Ok(EntityState {
        route: runtime.name.clone(),
        key: key.to_owned(),
        entity_key: String::from_utf8_lossy(&entity_key).into_owned(),
        store: config.event_queue.storage_path.display().to_string(),
        changelog_topic: runtime.changelog_topic.clone(),
        entry: entry.map(|e: StateEntry| EntryView {
            version: runtime.version_label(e.version),
            version_components: e.version.0,
            tombstone: e.deleted,
            snapshot: e.snapshot,
            updated_at_ms: e.updated_at_ms,
            updated_at: rfc3339_ms(e.updated_at_ms),
            tombstone_expires_at: e
                .deleted
                .then(|| rfc3339_ms(e.updated_at_ms.saturating_add(retention))),
        }),
    })
}

/// A route's exact counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteCounts {
    /// The route (a name not in the config is marked so).
    pub route: String,
    /// Whether the config has this route.
    pub configured: bool,
    /// Entries (rows and tombstones).
    pub keys: u64,
    /// Versioned tombstones.
    pub tombstones: u64,
    /// Entries from snapshot reads.
    pub snapshot: u64,
    /// Key and value bytes, uncompressed.
    pub bytes: u64,
    /// Values that do not decode.
    pub malformed: u64,
    /// The oldest and the newest acceptance time.
    pub oldest_update: Option<String>,
    /// The newest.
    pub newest_update: Option<String>,
}

/// One changelog partition: the store's checkpoint against the broker's committed end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangelogPartition {
    /// The route.
    pub route: String,
    /// The changelog topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The next changelog offset the store would replay; `None`: this store never held it.
    pub checkpoint: Option<i64>,
    /// The changelog's last stable offset (read_committed end); `None` if the topic is absent.
    pub end: Option<i64>,
    /// `end - checkpoint`: changelog offsets (records and transaction markers) the store
    /// does not reflect yet.
    pub behind: Option<i64>,
}

/// `state stats`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StateStats {
    /// The store directory.
    pub store: String,
    /// Per route (key prefix), exact, from a full scan.
    pub routes: Vec<RouteCounts>,
    /// Per changelog partition.
    pub changelogs: Vec<ChangelogPartition>,
    /// RocksDB's estimates for the whole state column family.
    pub estimates: Estimates,
}

/// RocksDB's estimates (see [`autoglm_state::Estimates`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Estimates {
    /// `rocksdb.estimate-num-keys`.
    pub keys: Option<u64>,
    /// `rocksdb.estimate-live-data-size`.
    pub live_data_bytes: Option<u64>,
    /// `rocksdb.total-sst-files-size`.
    pub sst_files_bytes: Option<u64>,
    /// `rocksdb.cur-size-all-mem-tables`.
    pub memtable_bytes: Option<u64>,
}

impl StateStats {
    /// As text: a table per route, a table per changelog partition, the estimates.
    pub fn to_text(&self) -> String {
        let mut out = format!("store {} (counts from a full scan)\n", self.store);
        let mut routes = table([
            "ROUTE",
            "KEYS",
            "TOMBSTONES",
            "SNAPSHOT",
            "BYTES",
            "OLDEST UPDATE",
            "NEWEST UPDATE",
        ]);
        for r in &self.routes {
            let name = if r.configured {
                r.route.clone()
            } else {
                format!("{} (not in the config)", r.route)
            };
            routes.add_row([
                name,
                r.keys.to_string(),
                r.tombstones.to_string(),
                r.snapshot.to_string(),
                r.bytes.to_string(),
                r.oldest_update.clone().unwrap_or_default(),
                r.newest_update.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&render(&mut routes));
        out.push('\n');
        let mut changelogs = table([
            "CHANGELOG",
            "PARTITION",
            "CHECKPOINT",
            "END (LSO)",
            "BEHIND",
        ]);
        let dash = |v: Option<i64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        for c in &self.changelogs {
            changelogs.add_row([
                c.topic.clone(),
                c.partition.to_string(),
                dash(c.checkpoint),
                dash(c.end),
                dash(c.behind),
            ]);
        }
        out.push_str(&render(&mut changelogs));
        let e = &self.estimates;
        let n = |v: Option<u64>| v.map_or_else(|| "?".to_owned(), |v| v.to_string());
        out.push_str(&format!(
            "rocksdb estimates: keys ~{}, live data ~{} B, sst files {} B, memtables {} B\n",
            n(e.keys),
            n(e.live_data_bytes),
            n(e.sst_files_bytes),
            n(e.memtable_bytes)
        ));
        out
    }
}

/// `state stats` of the config's store: every route's counts and, for the routes in the
/// config (or `only`), each changelog partition's checkpoint against the broker's end.
pub async fn stats(pipeline: &Pipeline, only: Option<&str>) -> Result<StateStats, ToolError> {
    let routes: Vec<(String, String)> = match only {
        Some(name) => {
            let r = super::route(pipeline, name)?;
            vec![(r.name.clone(), r.changelog_topic.clone())]
        }
        None => pipeline
            .routes()
            .iter()
            .map(|r| (r.name.clone(), r.changelog_topic.clone()))
            .collect(),
    };
    let path = pipeline.config().event_queue.storage_path.clone();
    let store = path.display().to_string();
    let (prefixes, checkpoints, estimates) = blocking(move || {
        let inspector = StateInspector::open(&path)?;
        Ok((
            inspector.scan()?,
            inspector.checkpoints()?,
            inspector.estimates()?,
        ))
    })
    .await?;
    let settings = pipeline.client_settings().clone();
    let topics: Vec<(String, String)> = routes.clone();
    let ends = blocking(move || {
        let consumer: BaseConsumer = reader_config(&settings, None)
            .create()
            .map_err(kafka("creating the changelog reader"))?;
        let mut ends: BTreeMap<(String, i32), Option<i64>> = BTreeMap::new();
        for (_, topic) in &topics {
            let parts = match partitions(&consumer, topic) {
                Ok(parts) => parts,
                Err(ToolError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            for partition in parts {
                // A read_committed client is told the last stable offset.
                let (_, end) = consumer
                    .fetch_watermarks(topic, partition, REQUEST_TIMEOUT)
                    .map_err(kafka(format!("end offsets of {topic}")))?;
                ends.insert((topic.clone(), partition), Some(end));
            }
        }
        Ok(ends)
    })
    .await?;
    let mut changelogs: BTreeMap<(String, i32), ChangelogPartition> = BTreeMap::new();
    let route_of = |topic: &str| {
        routes
            .iter()
            .find(|(_, t)| t == topic)
            .map(|(name, _)| name.clone())
    };
    for ((topic, partition), end) in &ends {
        changelogs.insert(
            (topic.clone(), *partition),
            ChangelogPartition {
                route: route_of(topic).unwrap_or_default(),
                topic: topic.clone(),
                partition: *partition,
                checkpoint: None,
                end: *end,
                behind: None,
            },
        );
    }
    for (topic, partition, offset) in checkpoints {
        let Some(route) = route_of(&topic) else {
            continue;
        };
        let entry = changelogs
            .entry((topic.clone(), partition))
            .or_insert_with(|| ChangelogPartition {
                route,
                topic,
                partition,
                checkpoint: None,
                end: None,
                behind: None,
            });
        entry.checkpoint = Some(offset);
        entry.behind = entry.end.map(|end| end - offset);
    }
    let configured: Vec<&str> = pipeline.routes().iter().map(|r| r.name.as_str()).collect();
    let counts = prefixes
        .into_iter()
        .filter(|p| only.is_none_or(|name| p.route == name))
        .map(|p| RouteCounts {
            configured: configured.contains(&p.route.as_str()),
            route: p.route,
            keys: p.keys,
            tombstones: p.tombstones,
            snapshot: p.snapshot,
            bytes: p.bytes,
            malformed: p.malformed,
            oldest_update: p.updated_ms.map(|(oldest, _)| rfc3339_ms(oldest)),
            newest_update: p.updated_ms.map(|(_, newest)| rfc3339_ms(newest)),
        })
        .collect();
    Ok(StateStats {
        store,
        routes: counts,
        changelogs: changelogs.into_values().collect(),
        estimates: Estimates {
            keys: estimates.keys,
            live_data_bytes: estimates.live_data_bytes,
            sst_files_bytes: estimates.sst_files_bytes,
            memtable_bytes: estimates.memtable_bytes,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    fn keys(key_fields: &[&str], input: &str) -> Vec<String> {
        entity_keys(&fields(key_fields), input)
            .expect("a key")
            .into_iter()
            .map(|k| String::from_utf8(k).expect("utf-8"))
            .collect()
    }

    #[test]
    fn a_single_field_key_takes_its_plain_value_as_number_then_text() {
        assert_eq!(keys(&["id"], "42"), [r#"[42]"#, r#"["42"]"#]);
        assert_eq!(keys(&["id"], "abc"), [r#"["abc"]"#]);
        assert_eq!(keys(&["id"], r#""42""#), [r#"["42"]"#]);
        assert_eq!(keys(&["id"], r#"{"id": 7}"#), [r#"[7]"#]);
        assert_eq!(keys(&["id"], "[7]"), [r#"[7]"#]);
    }

    #[test]
    fn a_composite_key_takes_an_object_in_key_field_order_or_an_array() {
        assert_eq!(
            keys(&["tenant", "id"], r#"{"id": 7, "tenant": "eu"}"#),
            [r#"["eu",7]"#]
        );
        assert_eq!(keys(&["tenant", "id"], r#"["eu", 7]"#), [r#"["eu",7]"#]);
    }

    #[test]
    fn a_key_that_does_not_fit_the_key_fields_says_why() {
        let err = |key_fields: &[&str], input: &str| {
            entity_keys(&fields(key_fields), input)
                .expect_err("no key")
                .to_string()
        };
        assert!(err(&["tenant", "id"], "7").contains("tenant, id"));
        assert!(err(&["tenant", "id"], r#"{"id": 7}"#).contains("`tenant` is missing"));
        assert!(err(&["id"], r#"{"id": 7, "x": 1}"#).contains("`x` is not a key field"));
        assert!(err(&["id"], r#"{"id": null}"#).contains("`id` is missing"));
    }

    #[test]
    fn stats_print_dashes_for_what_is_not_known() {
        let stats = StateStats {
            store: "/s".into(),
            routes: vec![RouteCounts {
                route: "old".into(),
                configured: false,
                keys: 2,
                tombstones: 1,
                snapshot: 0,
                bytes: 80,
                malformed: 0,
                oldest_update: None,
                newest_update: None,
            }],
            changelogs: vec![ChangelogPartition {
                route: "a".into(),
                topic: "g-a-changelog".into(),
                partition: 1,
                checkpoint: None,
                end: Some(9),
                behind: None,
            }],
            estimates: Estimates {
                keys: Some(2),
                live_data_bytes: None,
                sst_files_bytes: Some(0),
                memtable_bytes: Some(2048),
            },
        };
        let text = stats.to_text();
        assert!(text.contains("old (not in the config)"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == ["g-a-changelog", "1", "-", "9", "-"]),
            "{text}"
        );
        assert!(text.contains("live data ~? B"), "{text}");
    }
}
