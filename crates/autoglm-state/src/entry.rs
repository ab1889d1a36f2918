//! The value stored per entity and the key it is stored under.
//!
//! ```text
//!   key   = route bytes ‖ 0x00 ‖ entity key bytes
//!   value = format(1) ‖ version(24, big-endian) ‖ flags(1) ‖ updated_at_ms(8, big-endian)
//! ```
//!
//! The value is also the payload of the state changelog records, so the decoder treats its
//! input as untrusted: any length, format byte or flag bit it does not know is an error,
//! never a panic.

use autoglm_core::Version;

use crate::StateError;

const FORMAT_V1: u8 = 1;
const FLAG_DELETED: u8 = 0b01;
const FLAG_SNAPSHOT: u8 = 0b10;
const KNOWN_FLAGS: u8 = FLAG_DELETED | FLAG_SNAPSHOT;

/// Builds the state key of an entity: the route name, a `0x00` separator, then the entity key.
///
/// Route names cannot contain NUL (config validation rejects them), so the separator makes the
/// encoding unambiguous and `route ‖ 0x00` is the prefix of every key of a route (see
/// [`route_prefix`]).
pub fn state_key(route: &str, entity_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(route.len() + 1 + entity_key.len());
    key.extend_from_slice(route.as_bytes());
    key.push(0);
    key.extend_from_slice(entity_key);
    key
}

/// The prefix shared by every [`state_key`] of `route`.
pub fn route_prefix(route: &str) -> Vec<u8> {
    state_key(route, &[])
}

/// What the guard remembers about an entity: the newest accepted version and how it got there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StateEntry {
    /// The newest accepted version.
    pub version: Version,
    /// The newest accepted change was a delete: this is a versioned tombstone, kept so that a
    /// late, older update cannot bring the row back.
    pub deleted: bool,
    /// The newest accepted change came from a snapshot read (Debezium `op=r`).
    pub snapshot: bool,
    /// Wall clock (ms since the epoch) when the change was accepted; drives tombstone retention.
    pub updated_at_ms: i64,
}

impl StateEntry {
    /// Size of [`StateEntry::encode`].
    pub const ENCODED_LEN: usize = 1 + Version::ENCODED_LEN + 1 + 8;

    /// The fixed binary encoding (see the module docs).
    pub fn encode(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[0] = FORMAT_V1;
        out[1..1 + Version::ENCODED_LEN].copy_from_slice(&self.version.to_bytes());
        let mut flags = 0;
        if self.deleted {
            flags |= FLAG_DELETED;
        }
        if self.snapshot {
            flags |= FLAG_SNAPSHOT;
        }
        out[1 + Version::ENCODED_LEN] = flags;
        out[2 + Version::ENCODED_LEN..].copy_from_slice(&self.updated_at_ms.to_be_bytes());
        out
    }

    /// Parses [`StateEntry::encode`]. Rejects wrong lengths, unknown formats and unknown flags.
    pub fn decode(bytes: &[u8]) -> Result<StateEntry, StateError> {
        let bytes: &[u8; Self::ENCODED_LEN] =
            bytes.try_into().map_err(|_| StateError::MalformedEntry {
                reason: "wrong length",
            })?;
        let (format, rest) = bytes.split_at(1);
        if format != [FORMAT_V1] {
            return Err(StateError::MalformedEntry {
                reason: "unknown format byte",
            });
        }
        let (version, rest) = rest.split_at(Version::ENCODED_LEN);
        let (flags, updated_at) = rest.split_at(1);
        let version = Version::from_bytes(version).ok_or(StateError::MalformedEntry {
            reason: "bad version",
        })?;
        let flags = flags.first().copied().unwrap_or(0);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(StateError::MalformedEntry {
                reason: "unknown flag bits",
            });
        }
        let updated_at: [u8; 8] =
            updated_at
                .try_into()
                .map_err(|_| StateError::MalformedEntry {
                    reason: "bad timestamp",
                })?;
        Ok(StateEntry {
            version,
            deleted: flags & FLAG_DELETED != 0,
            snapshot: flags & FLAG_SNAPSHOT != 0,
            updated_at_ms: i64::from_be_bytes(updated_at),
        })
    }

    /// Whether this is a tombstone older than the retention: the guard then treats the entity
    /// as never seen, and a compaction may purge it from the store (see
    /// [`RocksOptions::tombstone_retention_ms`](crate::RocksOptions::tombstone_retention_ms)).
    ///
    /// A retention of `i64::MAX` keeps tombstones forever.
    pub fn is_expired_tombstone(&self, now_ms: i64, tombstone_retention_ms: i64) -> bool {
        self.deleted && now_ms.saturating_sub(self.updated_at_ms) > tombstone_retention_ms
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry() -> StateEntry {
        StateEntry {
            version: Version([7, u64::MAX, 3]),
            deleted: true,
            snapshot: false,
            updated_at_ms: -42,
        }
    }

    #[test]
    fn encoding_round_trips() {
        let e = entry();
        assert_eq!(StateEntry::decode(&e.encode()).ok(), Some(e));
    }

    #[test]
    fn empty_and_short_input_is_an_error() {
        assert!(StateEntry::decode(&[]).is_err());
        assert!(StateEntry::decode(&entry().encode()[..10]).is_err());
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut bytes = entry().encode().to_vec();
        bytes.push(0);
        assert!(StateEntry::decode(&bytes).is_err());
    }

    #[test]
    fn unknown_format_byte_is_an_error() {
        let mut bytes = entry().encode();
        bytes[0] = 2;
        assert!(StateEntry::decode(&bytes).is_err());
    }

    #[test]
    fn unknown_flag_bits_are_an_error() {
        let mut bytes = entry().encode();
        bytes[1 + Version::ENCODED_LEN] |= 0b100;
        assert!(StateEntry::decode(&bytes).is_err());
    }

    #[test]
    fn state_key_separates_route_and_entity() {
        assert_eq!(state_key("crm", b"42"), b"crm\x0042".to_vec());
        assert!(state_key("crm", b"42").starts_with(&route_prefix("crm")));
        assert!(!state_key("crm2", b"42").starts_with(&route_prefix("crm")));
    }

    #[test]
    fn tombstone_expires_only_after_retention() {
        let e = StateEntry {
            updated_at_ms: 1_000,
            ..entry()
        };
        assert!(!e.is_expired_tombstone(1_500, 500));
        assert!(e.is_expired_tombstone(1_501, 500));
        assert!(!e.is_expired_tombstone(i64::MAX, i64::MAX));
        let live = StateEntry {
            deleted: false,
            ..e
        };
        assert!(!live.is_expired_tombstone(i64::MAX, 0));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = StateEntry::decode(&bytes);
        }

        #[test]
        fn any_entry_round_trips(
            v in any::<[u64; 3]>(), deleted: bool, snapshot: bool, at: i64,
        ) {
            let e = StateEntry { version: Version(v), deleted, snapshot, updated_at_ms: at };
            prop_assert_eq!(StateEntry::decode(&e.encode()).ok(), Some(e));
        }
    }
}
