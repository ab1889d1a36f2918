//! The state crate's one error type.

use std::path::PathBuf;

use autoglm_core::{Classify, ErrorClass};
use rocksdb::ErrorKind;

/// Everything that can go wrong in the state layer. `Display` describes this layer only; the
/// cause is in [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The RocksDB store could not be opened.
    #[error("cannot open the state store at {path}")]
    Open {
        /// The store directory.
        path: PathBuf,
        /// RocksDB's reason.
        #[source]
        source: rocksdb::Error,
    },
    /// A corrupt store could not be moved aside (see `RocksBackend::open_or_set_aside`).
    #[error("the state store at {path} is corrupt ({reason}) and cannot be moved aside")]
    SetAside {
        /// The store directory.
        path: PathBuf,
        /// RocksDB's reason to call it corrupt.
        reason: String,
        /// The rename's error.
        #[source]
        source: std::io::Error,
    },
    /// A RocksDB operation failed.
    #[error("state store {operation} failed")]
    Rocks {
        /// Which operation (`multi_get`, `write`, ...).
        operation: &'static str,
        /// RocksDB's reason.
        #[source]
        source: rocksdb::Error,
    },
    /// The dedicated RocksDB thread could not be started.
    #[error("cannot start the state store thread")]
    Spawn(#[source] std::io::Error),
    /// A column family that `open` creates is missing: the store is broken.
    #[error("state store column family {0} is missing")]
    MissingColumnFamily(&'static str),
    /// The RocksDB thread has stopped (closed, or it died); no further call can succeed.
    #[error("the state store thread is gone")]
    BackendGone,
    /// A stored value is not a valid encoded [`StateEntry`](crate::StateEntry).
    #[error("malformed state entry: {reason}")]
    MalformedEntry {
        /// What is wrong with the bytes.
        reason: &'static str,
    },
    /// A stored changelog checkpoint is not an 8-byte offset.
    #[error("malformed checkpoint for {topic}/{partition}")]
    MalformedCheckpoint {
        /// The changelog topic.
        topic: String,
        /// The changelog partition.
        partition: i32,
    },
    /// The backend answered a `multi_get` with the wrong number of values.
    #[error("state store returned {got} values for {expected} keys")]
    ShortRead {
        /// Keys asked for.
        expected: usize,
        /// Values returned.
        got: usize,
    },
    /// No state store at the path (`autoglm state` tools read one, they never create one).
    #[error(
        "no state store at {path} (is it the config's event_queue.storage_path, on the instance that owns the partitions?)"
    )]
    NoStore {
        /// The directory looked at.
        path: PathBuf,
    },
    /// The scratch directory of a read-only inspection could not be made.
    #[error("cannot make a scratch directory for the read-only state inspection")]
    Scratch(#[source] std::io::Error),
    /// A failure injected by [`MemoryBackend`](crate::MemoryBackend) for tests.
    #[error("injected state backend failure")]
    Injected,
}

impl Classify for StateError {
    fn class(&self) -> ErrorClass {
        match self {
            StateError::Rocks { source, .. } => match source.kind() {
                ErrorKind::Busy
                | ErrorKind::TryAgain
                | ErrorKind::TimedOut
                | ErrorKind::Incomplete
                | ErrorKind::MergeInProgress => ErrorClass::Transient,
                _ => ErrorClass::Fatal,
            },
            StateError::Injected => ErrorClass::Transient,
            StateError::Open { .. }
            | StateError::SetAside { .. }
            | StateError::Spawn(_)
            | StateError::BackendGone
            | StateError::MissingColumnFamily(_)
            | StateError::ShortRead { .. }
            | StateError::MalformedEntry { .. }
            | StateError::MalformedCheckpoint { .. }
            | StateError::NoStore { .. }
            | StateError::Scratch(_) => ErrorClass::Fatal,
        }
    }
}
