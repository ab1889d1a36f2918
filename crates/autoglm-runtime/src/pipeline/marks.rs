//! What each input offset commit carries beside the offset, in the commit's metadata (Kafka
//! keeps it with the offset, in the group): how far the route's changelog partition reached,
//! and the route's key layout. The group outlives any instance's state directory, so a store
//! rebuilt from the changelog alone (a new instance, a deleted or corrupt directory) is checked
//! against what the last commit saw:
//!
//! - a changelog partition that now ends before the mark was deleted or truncated under the
//!   group: fatal, as for a store whose checkpoint is past the changelog's end (`restore`).
//!   Rebuilding from it would accept stale versions again.
//! - a route whose key layout is not the config's, on a store with no layout of its own
//!   (`layout`): refused unless `--accept-layout-change`.
//!
//! ```text
//!  commit:     offset + {"changelog_end": N, "layout": {...}}   (per input partition)
//!  assignment: the group's committed metadata ─► [`Marks::check`] ─► restore's lower bounds
//! ```
//!
//! Offsets another tool committed (`kafka-consumer-groups --reset-offsets` writes none) carry no
//! mark and are not checked: a reset is how an operator replays the sources from scratch.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use autoglm_config::Config;
use serde::{Deserialize, Serialize};

use crate::RunError;
use crate::group::Partition;
use crate::layout::{self, Layout};

/// One input partition's mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Mark {
    /// The end of the route's changelog partition (of the same number) when this offset was
    /// committed: the changelog holds at least this much.
    pub changelog_end: i64,
    /// The route's key layout.
    pub layout: Layout,
}

impl Mark {
    /// The commit metadata that carries this mark.
    pub(crate) fn to_metadata(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The mark in `metadata`, if it is one (another tool's metadata is not).
    pub(crate) fn from_metadata(metadata: &str) -> Option<Mark> {
        serde_json::from_str(metadata).ok()
    }
}

/// The run's marks: the changelog ends known so far, the routes' layouts, and which routes'
/// layouts no local store vouched for.
#[derive(Debug)]
pub(crate) struct Marks {
    /// By changelog partition: the highest end seen (a restore's log end, a commit's acks).
    ends: Mutex<HashMap<Partition, i64>>,
    /// By route, in the config's order.
    layouts: Vec<Layout>,
    /// The routes whose layout the store's own file does not hold yet.
    unvouched: Mutex<Unvouched>,
}

/// Routes whose layout the store's own file did not hold at start, until the group's commits
/// vouched for them.
#[derive(Debug, Default)]
struct Unvouched {
    routes: BTreeSet<usize>,
    /// Whether a changed layout is accepted (`--accept-layout-change`).
    accept: bool,
    /// The store's directory, whose layout file records each route once vouched for.
    store: PathBuf,
}

impl Marks {
    pub(crate) fn new(config: &Config) -> Result<Marks, RunError> {
        Ok(Marks {
            ends: Mutex::default(),
            layouts: config
                .routes
                .iter()
                .map(layout::of_route)
                .collect::<Result<_, _>>()?,
            unvouched: Mutex::default(),
        })
    }

    /// Notes which routes' layouts the store in `store` did not hold (by name), and whether to
    /// accept a changed one.
    pub(crate) fn set_unvouched(
        &self,
        config: &Config,
        (store, names): (&Path, &BTreeSet<String>),
        accept: bool,
    ) {
        let routes = (config.routes.iter().enumerate())
            .filter(|(_, r)| names.contains(&r.name))
            .map(|(i, _)| i)
            .collect();
        *self
            .unvouched
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Unvouched {
            routes,
            accept,
            store: store.to_owned(),
        };
    }

    /// Raises the known ends of these changelog partitions.
    pub(crate) fn note_ends(&self, ends: impl IntoIterator<Item = (Partition, i64)>) {
        let mut known = self.ends.lock().unwrap_or_else(PoisonError::into_inner);
        for (partition, end) in ends {
            let slot = known.entry(partition).or_insert(end);
            *slot = (*slot).max(end);
        }
    }

    /// The mark of route `route`'s input partition `partition`, whose changelog is
    /// `changelog`.
    pub(crate) fn mark(&self, route: usize, changelog: &str, partition: i32) -> Mark {
        let known = self.ends.lock().unwrap_or_else(PoisonError::into_inner);
        Mark {
            changelog_end: known
                .get(&(changelog.to_owned(), partition))
                .copied()
                .unwrap_or(0),
            layout: self.layouts[route].clone(),
        }
    }

    /// Checks the marks the group committed for route `route`'s input partitions: refuses a
    /// layout other than the config's on a route no local layout vouched for (unless accepted),
    /// then records the route's layout beside the store. Returns the changelog end each mark
    /// requires, by changelog partition.
    pub(crate) fn check(
        &self,
        route: (usize, &str, &str),
        committed: impl IntoIterator<Item = (i32, Mark)>,
    ) -> Result<HashMap<Partition, i64>, RunError> {
        let (index, name, changelog) = route;
        let mut unvouched = self
            .unvouched
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let running = &self.layouts[index];
        let mut ends = HashMap::new();
        for (partition, mark) in committed {
            if unvouched.routes.contains(&index) && mark.layout != *running {
                let change = layout::describe(name, &mark.layout, running).join("; ");
                if !unvouched.accept {
                    return Err(RunError::Config(format!(
                        "the group's last commit of route {name}'s input partition {partition} \
                         was made with another key layout: {change}. This instance's state was \
                         rebuilt from the changelog, whose keys and versions do not fit the new \
                         layout: old changes would be accepted again, or new ones dropped. \
                         Restore the config, or run once with --accept-layout-change to start \
                         this route's keys with no history"
                    )));
                }
                tracing::warn!(%change, partition, "the group committed another key layout (--accept-layout-change): this route's keys start with no history");
            }
            let end = ends.entry((changelog.to_owned(), partition)).or_insert(0);
            *end = mark.changelog_end.max(*end);
        }
        if unvouched.routes.remove(&index) {
            layout::record(&unvouched.store, name, running)?;
        }
        Ok(ends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(key_fields: &str) -> Config {
        layout::tests::config(key_fields, "{ column: rev }")
    }

    fn unvouched(marks: &Marks, config: &Config, store: &Path, accept: bool) {
        let names = BTreeSet::from(["accounts".to_owned()]);
        marks.set_unvouched(config, (store, &names), accept);
    }

    #[test]
    fn a_mark_round_trips_through_the_metadata_and_another_tools_metadata_is_no_mark() {
        let marks = Marks::new(&config("[id]")).expect("marks");
        marks.note_ends([(("cl".to_owned(), 2), 40), (("cl".to_owned(), 2), 7)]);
        let mark = marks.mark(0, "cl", 2);
        assert_eq!(mark.changelog_end, 40, "the highest end noted");
        assert_eq!(Mark::from_metadata(&mark.to_metadata()), Some(mark));
        assert_eq!(marks.mark(0, "cl", 3).changelog_end, 0, "none known yet");
        for foreign in [
            "",
            "reset by kafka-consumer-groups",
            "{\"changelog_end\": 1}",
        ] {
            assert_eq!(Mark::from_metadata(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn committed_marks_give_the_changelog_ends_each_partition_must_reach() {
        let marks = Marks::new(&config("[id]")).expect("marks");
        let mark = |end| Mark {
            changelog_end: end,
            ..marks.mark(0, "cl", 0)
        };
        let ends = marks
            .check((0, "accounts", "cl"), [(0, mark(12)), (1, mark(0))])
            .expect("no layout change");
        assert_eq!(ends[&("cl".to_owned(), 0)], 12);
        assert_eq!(ends[&("cl".to_owned(), 1)], 0);
    }

    #[test]
    fn another_layout_in_the_group_is_refused_on_a_store_without_its_own_unless_accepted() {
        let old = Marks::new(&config("[id]")).expect("marks").mark(0, "cl", 0);
        let running = config("[id, tenant]");
        let marks = Marks::new(&running).expect("marks");
        // A store whose own file vouched for the layout: the local check covers it.
        assert!(
            marks
                .check((0, "accounts", "cl"), [(0, old.clone())])
                .is_ok()
        );
        let store = tempfile::tempdir().expect("tempdir");
        unvouched(&marks, &running, store.path(), false);
        let refused = marks
            .check((0, "accounts", "cl"), [(0, old.clone())])
            .expect_err("refused")
            .to_string();
        assert!(
            refused.contains("route accounts: key_fields [\"id\"] → [\"id\", \"tenant\"]")
                && refused.contains("--accept-layout-change"),
            "{refused}"
        );
        let vouched = |config| layout::check(store.path(), config, false).expect("check");
        assert!(
            !vouched(&running).is_empty(),
            "a refused layout is not recorded beside the store"
        );
        unvouched(&marks, &running, store.path(), true);
        assert!(marks.check((0, "accounts", "cl"), [(0, old)]).is_ok());
        assert!(
            vouched(&running).is_empty(),
            "an accepted one is: the next run's store vouches for it"
        );
    }
}
