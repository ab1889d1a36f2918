//! Versions: a total order over "which change of an entity is newer".

use std::fmt;

/// A version, compared lexicographically over three unsigned components. Each version source
/// fills them in its own way, so that a newer change always compares greater:
///
/// | source | components |
/// | --- | --- |
/// | a version column | `[value, 0, 0]` (signed values are order-preserving mapped) |
/// | PostgreSQL LSN | `[last commit lsn, lsn, 0]` from `source.sequence`, or `[lsn, 0, 0]` |
/// | MySQL binlog | `[file index, pos, row]` |
/// | source timestamp | `[ts_ms, 0, 0]` |
/// | hybrid logical clock + region | `[physical ms, logical counter, region priority]` |
///
/// Versions from different sources are never compared: a route has exactly one version source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version(pub [u64; 3]);

impl Version {
    /// Size of [`Version::to_bytes`].
    pub const ENCODED_LEN: usize = 24;

    /// A version from a single signed number (a version column, a timestamp).
    pub const fn from_i64(value: i64) -> Version {
        Version([order_preserving(value), 0, 0])
    }

    /// Big-endian bytes: their byte order is the version order.
    pub fn to_bytes(self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        for (chunk, part) in out.chunks_exact_mut(8).zip(self.0) {
            chunk.copy_from_slice(&part.to_be_bytes());
        }
        out
    }

    /// Parses [`Version::to_bytes`]; `None` when `bytes` has the wrong length.
    pub fn from_bytes(bytes: &[u8]) -> Option<Version> {
        if bytes.len() != Self::ENCODED_LEN {
            return None;
        }
        let mut parts = [0u64; 3];
        for (part, chunk) in parts.iter_mut().zip(bytes.chunks_exact(8)) {
            *part = u64::from_be_bytes(chunk.try_into().ok()?);
        }
        Some(Version(parts))
    }
}

/// Maps i64 onto u64 keeping the order (flips the sign bit).
const fn order_preserving(value: i64) -> u64 {
    (value as u64) ^ (1 << 63)
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c] = self.0;
        write!(f, "{a}.{b}.{c}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_values_keep_their_order() {
        let values = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for pair in values.windows(2) {
            assert!(
                Version::from_i64(pair[0]) < Version::from_i64(pair[1]),
                "{pair:?}"
            );
        }
    }

    #[test]
    fn byte_order_is_version_order() {
        let a = Version([1, u64::MAX, 0]);
        let b = Version([2, 0, 0]);
        assert!(a < b);
        assert!(a.to_bytes() < b.to_bytes());
        assert_eq!(Version::from_bytes(&b.to_bytes()), Some(b));
        assert_eq!(Version::from_bytes(&[0; 3]), None);
    }
}
