//! The SFrame header (RFC 9605 §4.3): the key id (KID) and counter (CTR)
//! in front of every end-to-end encrypted frame. A config byte `X KKK Y CCC`
//! says, for each value, either the value itself (0 to 7) or how many
//! big-endian bytes of it follow (1 to 8).

/// Why bytes are not an SFrame header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer bytes than the config byte announces.
    #[error("SFrame header cut short: {needed} bytes needed, {got} given")]
    Truncated {
        /// Bytes the header needs.
        needed: usize,
        /// Bytes given.
        got: usize,
    },
}

/// A parsed SFrame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    /// The key id: which sender key encrypted the frame.
    pub kid: u64,
    /// The counter: makes the nonce unique per key.
    pub ctr: u64,
}

/// Bytes a value needs big-endian, at least 1.
fn width(v: u64) -> usize {
    (8 - v.leading_zeros() as usize / 8).max(1)
}

impl Header {
    /// The header's bytes, each value in as few bytes as it takes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8];
        let mut part = |v: u64, shift: u8| {
            if v < 8 {
                out[0] |= (v as u8) << shift;
            } else {
                let n = width(v);
                out[0] |= (0x8 | (n as u8 - 1)) << shift;
                out.extend_from_slice(&v.to_be_bytes()[8 - n..]);
            }
        };
        part(self.kid, 4);
        part(self.ctr, 0);
        out
    }

    /// Reads a header from the front of `bytes`; returns it and its length.
    pub fn parse(bytes: &[u8]) -> Result<(Header, usize), HeaderError> {
        let truncated = |needed| HeaderError::Truncated {
            needed,
            got: bytes.len(),
        };
        let config = *bytes.first().ok_or(truncated(1))?;
        let mut at = 1;
        let mut value = |nibble: u8| -> Result<u64, HeaderError> {
            if nibble & 0x8 == 0 {
                return Ok(u64::from(nibble & 0x7));
            }
            let n = usize::from(nibble & 0x7) + 1;
            let field = bytes.get(at..at + n).ok_or(truncated(at + n))?;
            at += n;
            Ok(field.iter().fold(0u64, |acc, b| acc << 8 | u64::from(*b)))
        };
        let kid = value(config >> 4)?;
        let ctr = value(config & 0xF)?;
        Ok((Header { kid, ctr }, at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_values_live_in_the_config_byte() {
        assert_eq!(Header { kid: 7, ctr: 3 }.encode(), vec![0x73]);
        assert_eq!(
            Header::parse(&[0x73, 0xAA]),
            Ok((Header { kid: 7, ctr: 3 }, 1))
        );
    }

    #[test]
    fn a_short_header_is_an_error_not_a_panic() {
        assert!(Header::parse(&[]).is_err());
        // KID of 8 bytes announced, 2 given.
        assert_eq!(
            Header::parse(&[0xF0, 1, 2]),
            Err(HeaderError::Truncated { needed: 9, got: 3 })
        );
    }
}
