//! The runtime: wires consumer, codecs, version guard, mapping and the transactional producer.
//!
//! ```text
//!  poll batch (≤ max_records, ≤ max_bytes, or flush_interval_ms)
//!     │ decode ─► route ─► key + version ─► map ─► encode (the parallel pass, done ahead)
//!     │ guard.process (cached entries, one multi_get for the rest)
//!     │    accepted: encoded rows ─► target topics
//!     │    stale/duplicate: counted (─► audit topic)
//!     │ poison at any step ─► DLQ topic (original bytes + reason headers)
//!     ▼
//!  changelog records (state entries) ─► wait for the acks ─► send_offsets_to_transaction ─► commit
//!     ‖ meanwhile: the parallel pass of the next batch
//!     ▼
//!  guard.commit ─► one RocksDB WriteBatch (state follows commits), then the guard's cache
//!     ‖ meanwhile: poll the rest of the next batch and the one after it
//! ```
//!
//! The per-record CPU work runs on all cores (rayon's pool: `RAYON_NUM_THREADS` sizes it,
//! default one thread per core): decode, key, version, map and encode for a whole batch at once,
//! while the batch before it waits for the broker's acknowledgements; and the produce calls,
//! each key's records from one thread in input order (a key's records share a partition).
//! Everything else that orders — dead letters, guard decisions — runs in input order on the
//! loop's task. A record whose writer schema, or a target whose schema id, is not known yet
//! waits for the registry on that task instead, once per schema. Records are polled only
//! between transactions (after a commit, beside the state write, and right before the next
//! transaction begins), so a rebalance never meets an open transaction; records polled ahead
//! of partitions it revokes are dropped, prepared or not.
//!
//! The acks are counted per batch by the producer's context (the `acks` module), not awaited
//! one future per record.
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
//! Operator tools (the [`tools`] module): `autoglm dlq list | show | replay` and `autoglm state
//! get | stats`, beside the pipeline and never writing its state.
//!
//! Failure behaviour: a poison record goes to the route's DLQ in the same transaction and its
//! offset advances. A transient failure (registry down, broker timeout, abortable transaction
//! error) aborts the transaction, drops the uncommitted state, rewinds the consumer to the
//! batch's first offsets and polls again after an exponential backoff; after the configured
//! attempts it keeps waiting and says so once a minute — it never skips. A producer the broker
//! fenced (its transaction timed out while the broker was out of reach) is made again, once per
//! 5 minutes. A fatal error (fenced again, authorization, configuration) stops the pipeline
//! with an error and a non-zero exit.
//! `docs/failure-modes.md` gives the outcome of each hostile input and fault, with its test.

mod acks;
mod group;
mod layout;
mod metrics;
mod pipeline;
mod restore;
mod rights;
mod route;
mod throttle;
pub mod tools;
pub mod traces;

pub use group::GroupContext;
pub use metrics::Metrics;
pub use pipeline::{Pipeline, RunError, RunOptions, RunSummary, SchemaCheck};
pub use restore::{RestoreStats, restore};
pub use rights::{Finding, Need, Resource, Verdict};
pub use route::RouteRuntime;
pub use traces::{Traces, TracesError};
