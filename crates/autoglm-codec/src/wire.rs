//! The Confluent wire format: magic byte 0, a 4-byte big-endian schema id, then the body.

use crate::CodecError;

/// Length of the header before the Avro body.
pub const WIRE_HEADER_LEN: usize = 5;

/// The schema id of a Confluent-framed payload.
pub fn schema_id(bytes: &[u8]) -> Result<u32, CodecError> {
    match bytes {
        [0, a, b, c, d, ..] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        [0, ..] => Err(CodecError::WireFormat("shorter than the 5-byte header")),
        [] => Err(CodecError::WireFormat("empty value")),
        _ => Err(CodecError::WireFormat("magic byte is not 0")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_parsed_not_indexed() {
        assert_eq!(schema_id(&[0, 0, 0, 1, 2, 9]).ok(), Some(258));
        assert!(schema_id(&[0, 0, 1]).is_err());
        assert!(schema_id(&[]).is_err());
        assert!(schema_id(b"{\"a\":1}").is_err());
    }
}
