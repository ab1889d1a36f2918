//! The runtime: wires consumer, codecs, version guard, mapping and the transactional producer.
//!
//! ```text
//!  poll batch (≤ max_records or flush_interval_ms)
//!     │ decode ─► route ─► key + version ─► guard.process (one multi_get)
//!     │                                        │ accepted: map ─► encode ─► target topics
//!     │                                        │ stale/duplicate: counted (─► audit topic)
//!     │ poison at any step ─► DLQ topic (original bytes + reason headers)
//!     ▼
//!  changelog records (state entries) ─► send_offsets_to_transaction ─► commit
//!     ▼
//!  guard.commit ─► one RocksDB WriteBatch (state follows commits)
//!     ‖ meanwhile: poll and prepare (decode, key, version, map) the next batch
//! ```
//!
//! The per-record CPU work runs on all cores (rayon's pool: `RAYON_NUM_THREADS` sizes it,
//! default one thread per core): decode, key, version and map for the whole batch at once; the
//! encode of every mapped row while the guard reads the store; and the produce calls, each
//! key's records from one thread in input order (a key's records share a partition). Everything
//! else that orders — dead letters, guard decisions — runs in input order on the loop's task. A
//! record whose writer schema, or a target whose schema id, is not known yet waits for the
//! registry on that task instead, once per schema. The next batch is polled only once Kafka
//! committed, so a rebalance never meets an open transaction.
//!
//! Scale-out (the `group` module): the consumer is a static member of the group with
//! cooperative-sticky assignment. Rebalances happen inside `recv`, between transactions; an
//! assigned partition first restores its changelog tail ([`restore`]) from the store's
//! checkpoint, records of a revoked partition that were polled but not processed are dropped,
//! and a lost partition forgets its checkpoint so that its next assignment restores it whole.
//!
//! Operations (the `metrics` module): each pipeline has its own Prometheus registry, updated
//! once per committed batch (counts of an aborted batch are dropped, so the counters agree with
//! [`RunSummary`]), and, with `metrics.listen`, an HTTP task serving `/metrics`, `/health` (the
//! loop is alive) and `/ready` (producer initialised, first assignment restored) that stops with
//! the run.
//!
//! Failure behaviour: a poison record goes to the route's DLQ in the same transaction and its
//! offset advances. A transient failure (registry down, broker timeout, abortable transaction
//! error) aborts the transaction, drops the uncommitted state, rewinds the consumer to the
//! batch's first offsets and polls again after an exponential backoff; after the configured
//! attempts it keeps waiting and says so once a minute — it never skips. A fatal error (fenced,
//! authorization, configuration) stops the pipeline with an error and a non-zero exit.

mod group;
mod metrics;
mod pipeline;
mod restore;
mod route;

pub use group::GroupContext;
pub use metrics::Metrics;
pub use pipeline::{Pipeline, RunError, RunOptions, RunSummary, SchemaCheck};
pub use restore::{RestoreStats, restore};
pub use route::RouteRuntime;
