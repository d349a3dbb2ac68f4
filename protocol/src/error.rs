//! Protocol errors as values: a code from the spec and a human text.

use crate::ErrorCode;
use crate::limits::max::MAX_TEXT_BYTES;

/// A protocol error: what the spec calls it, and what happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({}): {text}", code.name(), *code as i32)]
pub struct ProtocolError {
    /// The spec's code; its fatality is [`ErrorCode::is_fatal`].
    pub code: ErrorCode,
    /// Detail for people, at most `max_text_bytes` when sent.
    pub text: String,
}

impl ProtocolError {
    /// An error with a detail text.
    pub fn new(code: ErrorCode, text: impl Into<String>) -> Self {
        ProtocolError {
            code,
            text: text.into(),
        }
    }

    /// True when the error closes the connection.
    pub fn is_fatal(&self) -> bool {
        self.code.is_fatal()
    }

    /// The error as the `Error` message that reports it, its text cut to the limit.
    pub fn to_message(&self, request_id: u32) -> crate::v1::Error {
        crate::v1::Error {
            code: self.code as i32,
            text: truncate_utf8(&self.text, MAX_TEXT_BYTES as usize).to_string(),
            request_id,
        }
    }
}

/// The longest prefix of `s` that fits in `max` bytes without splitting a character.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_never_splits_a_character() {
        assert_eq!(truncate_utf8("héllo", 2), "h");
        assert_eq!(truncate_utf8("héllo", 3), "hé");
        assert_eq!(truncate_utf8("abc", 10), "abc");
    }

    #[test]
    fn error_display_names_the_code() {
        let e = ProtocolError::new(ErrorCode::HelloRequired, "first frame was Join");
        assert_eq!(e.to_string(), "HELLO_REQUIRED (201): first frame was Join");
        assert!(e.is_fatal());
    }
}
