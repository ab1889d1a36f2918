//! What the state store's entries mean, per route: the key fields its keys are made of and the
//! version source its versions come from. Kept beside the store (`autoglm-layout.json` in
//! `event_queue.storage_path`) and compared with the config at start.
//!
//! A route whose key fields or version source changed over existing state is refused: its
//! stored keys would no longer name the same entities, or its stored versions would be compared
//! with versions of another kind, and old changes would be accepted again or new ones dropped.
//! `autoglm run --accept-layout-change` goes on anyway: the route's keys start with no history
//! (its old entries stay, unread), and the file records the new layout.
//!
//! A mapping change touches nothing stored: it applies to the records processed from then on
//! (earlier output is not rewritten; `autoglm dlq replay` sends dead letters through the new
//! one). A renamed route is a new route, with a state of its own.
//!
//! The file is local: a store rebuilt from the changelog alone (a new instance, a deleted or
//! corrupt directory) has none. For such a store's routes, the layout each input offset commit
//! carries is checked instead (`pipeline::marks`), when their partitions are assigned.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use autoglm_config::{Config, Route};
use serde::{Deserialize, Serialize};

use crate::RunError;

/// The file's name in the store directory. RocksDB leaves files of other names alone.
const FILE: &str = "autoglm-layout.json";

/// One route's layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Layout {
    key_fields: Vec<String>,
    /// The route's `version`, as the config writes it.
    version: serde_json::Value,
}

/// The layouts by route name.
type Layouts = BTreeMap<String, Layout>;

/// The layout `route` runs with.
pub(crate) fn of_route(route: &Route) -> Result<Layout, RunError> {
    let version = serde_json::to_value(&route.version)
        .map_err(|e| RunError::Config(format!("route {}: version: {e}", route.name)))?;
    Ok(Layout {
        key_fields: route.key_fields.clone(),
        version,
    })
}

/// The layouts `config` runs with.
fn of_config(config: &Config) -> Result<Layouts, RunError> {
    config
        .routes
        .iter()
        .map(|route| Ok((route.name.clone(), of_route(route)?)))
        .collect()
}

/// What changed from `old` to `new` in route `route`'s layout, one line per change.
pub(crate) fn describe(route: &str, old: &Layout, new: &Layout) -> Vec<String> {
    let mut changes = Vec::new();
    if old.key_fields != new.key_fields {
        changes.push(format!(
            "route {route}: key_fields {:?} → {:?}",
            old.key_fields, new.key_fields
        ));
    }
    if old.version != new.version {
        changes.push(format!(
            "route {route}: version {} → {}",
            old.version, new.version
        ));
    }
    changes
}

/// What changed between `stored` and `running`, one line per change; empty if nothing.
fn changes(stored: &Layouts, running: &Layouts) -> Vec<String> {
    (running.iter())
        .filter_map(|(route, new)| Some(describe(route, stored.get(route)?, new)))
        .flatten()
        .collect()
}

/// Compares the layout stored in `dir` with `config`'s, refuses a changed one unless `accept`,
/// and records `config`'s for the routes the file held. Routes the config no longer has stay
/// recorded: they may come back. Returns the routes the file held no layout for (a new store, a
/// new route), unrecorded: the group's commits vouch for theirs, and [`record`] notes each once
/// they did (`pipeline::marks`).
pub(crate) fn check(
    dir: &Path,
    config: &Config,
    accept: bool,
) -> Result<BTreeSet<String>, RunError> {
    let path = dir.join(FILE);
    let mut stored: Layouts = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            RunError::Config(format!(
                "{}: not the state's layout file ({e}); delete it to record the config's",
                path.display()
            ))
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Layouts::new(),
        Err(e) => return Err(RunError::Config(format!("{}: {e}", path.display()))),
    };
    let running = of_config(config)?;
    let changes = changes(&stored, &running);
    if !changes.is_empty() {
        if !accept {
            return Err(RunError::Config(format!(
                "the state at {} was built with another key layout: {}. Its stored keys and \
                 versions do not fit the new one: old changes would be accepted again, or new \
                 ones dropped. Restore the config, or run once with --accept-layout-change to \
                 start these routes' keys with no history",
                dir.display(),
                changes.join("; ")
            )));
        }
        tracing::warn!(changes = %changes.join("; "), "the key layout changed over existing state (--accept-layout-change): these routes' keys start with no history");
    }
    let (known, unvouched): (Layouts, Layouts) =
        (running.into_iter()).partition(|(route, _)| stored.contains_key(route));
    stored.extend(known);
    write(&path, &stored)?;
    Ok(unvouched.into_keys().collect())
}

/// Records route `route`'s layout in `dir`'s file.
pub(crate) fn record(dir: &Path, route: &str, layout: &Layout) -> Result<(), RunError> {
    let path = dir.join(FILE);
    let mut stored: Layouts = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
        Err(_) => Layouts::new(),
    };
    stored.insert(route.to_owned(), layout.clone());
    write(&path, &stored)
}

/// Writes `layouts` to `path` atomically (a temporary file, renamed).
fn write(path: &Path, layouts: &Layouts) -> Result<(), RunError> {
    let error = |e: &dyn std::fmt::Display| RunError::Config(format!("{}: {e}", path.display()));
    let text = serde_json::to_vec_pretty(layouts).map_err(|e| error(&e))?;
    let mut temporary = PathBuf::from(path);
    temporary.set_extension("json.tmp");
    std::fs::write(&temporary, text).map_err(|e| error(&e))?;
    std::fs::rename(&temporary, path).map_err(|e| error(&e))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A config of one upsert route, `accounts`, keyed by `key_fields`, versioned by `version`.
    pub(crate) fn config(key_fields: &str, version: &str) -> Config {
        let yaml = format!(
            r#"
kafka: {{ bootstrap_servers: "127.0.0.1:1", group_id: unit }}
routes:
  - name: accounts
    source: {{ topic: in.accounts, envelope: upsert, encoding: json }}
    key_fields: {key_fields}
    version: {version}
    targets: [ {{ topic: out.accounts, format: json }} ]
    dlq_topic: in.accounts.dlq
"#
        );
        autoglm_config::parse(
            &yaml,
            "unit.yaml",
            Path::new("../.."),
            autoglm_config::Overrides::None,
        )
        .expect("valid config")
    }

    #[test]
    fn a_changed_key_layout_is_refused_unless_accepted_and_a_mapping_change_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = config("[id]", "{ column: rev }");
        let unvouched = check(dir.path(), &first, false).expect("a new store");
        assert_eq!(
            unvouched,
            BTreeSet::from(["accounts".to_owned()]),
            "a new store vouches for no route, and records none until the group's commits did"
        );
        let layout = of_route(&first.routes[0]).expect("layout");
        record(dir.path(), "accounts", &layout).expect("recorded");
        let unvouched = check(dir.path(), &first, false).expect("the same layout");
        assert!(unvouched.is_empty(), "{unvouched:?}");

        let rekeyed = config("[id, region]", "{ column: rev }");
        let error = check(dir.path(), &rekeyed, false).expect_err("refused");
        let message = error.to_string();
        assert!(
            message.contains(r#"route accounts: key_fields ["id"] → ["id", "region"]"#),
            "{message}"
        );
        assert!(message.contains("--accept-layout-change"), "{message}");

        let reversioned = config("[id]", "log_position");
        let message = check(dir.path(), &reversioned, false)
            .expect_err("refused")
            .to_string();
        assert!(message.contains("route accounts: version"), "{message}");

        check(dir.path(), &rekeyed, true).expect("accepted");
        check(dir.path(), &rekeyed, false).expect("recorded: the new layout is the layout now");
        let message = check(dir.path(), &first, false)
            .expect_err("and going back is a change too")
            .to_string();
        assert!(
            message.contains(r#"["id", "region"] → ["id"]"#),
            "{message}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_layout_is_refused_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE), b"{not json").expect("write");
        let message = check(dir.path(), &config("[id]", "{ column: rev }"), false)
            .expect_err("refused")
            .to_string();
        assert!(message.contains(FILE), "{message}");
    }
}
