//! Per-key state for the version guard: a blind, batch-only key-value backend and the ordering
//! rules above it.
//!
//! ```text
//!  poll batch ──► VersionGuard::process ──► one multi_get (keys in neither overlay nor cache)
//!                      │  decide() per record, in order; accepted entries go to the overlay
//!                      ▼
//!            pending_writes() ──► changelog records in the Kafka transaction
//!                      │
//!   Kafka commit ok ──► commit(checkpoints) ──► ONE WriteBatch: state + changelog checkpoints
//!                                             then the entries join the cache of committed ones
//!   Kafka abort     ──► abort()             ──► overlay dropped, RocksDB untouched
//! ```
//!
//! **State follows commits.** Nothing reaches the backend before the caller says the Kafka
//! transaction committed. The state and the changelog checkpoint are written in one atomic
//! batch, so after a crash the store plus "replay the changelog tail after the checkpoint" is
//! always exact: the store is a cache that can be rebuilt, never the source of truth.
//!
//! **Failure behaviour.** Every failure is a [`StateError`] with an
//! [`ErrorClass`](autoglm_core::ErrorClass): RocksDB I/O or corruption, an undecodable stored
//! entry and a vanished backend thread are fatal (stop; the store is rebuilt from the changelog
//! on restart); busy / try-again conditions are transient. A failed `process` leaves the
//! overlay as it was; a failed `commit` keeps the overlay so the (idempotent) write can be
//! retried.
//!
//! * [`backend`] — [`KvBackend`], [`RocksBackend`] (RocksDB on its own OS thread) and
//!   [`MemoryBackend`] (tests).
//! * [`entry`] — [`StateEntry`], its fixed binary encoding and [`state_key`].
//! * [`guard`] — [`Change`], [`decide`], [`Decision`] and the transactional [`VersionGuard`].
//! * [`inspect`] — [`StateInspector`]: a read-only view of a store that a running processor
//!   holds (`autoglm state get | stats`).

pub mod backend;
pub mod entry;
mod error;
pub mod guard;
pub mod inspect;

pub use backend::{KvBackend, MemoryBackend, RocksBackend, RocksOptions, ScanPage, WriteRequest};
pub use entry::{StateEntry, route_prefix, state_key};
pub use error::StateError;
pub use guard::{BatchOutcome, Change, Decision, DecisionCounts, GuardInput, VersionGuard, decide};
pub use inspect::{Estimates, PrefixStats, StateInspector};
