//! Sans-IO session machines: the server's view of a connection and the client's.

pub mod client;
pub mod server;

use crate::ErrorCode;
use crate::error::ProtocolError;
use crate::v1::GoodbyeReason;

/// Why a session ended, and how to close its transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// The fatal error, if the session ended with one.
    pub error: Option<ErrorCode>,
    /// The Goodbye reason, if the session ended with a Goodbye.
    pub goodbye: Option<GoodbyeReason>,
    /// Detail for logs and for the transport's close reason.
    pub text: String,
}

impl CloseReason {
    /// Ended by a fatal error.
    pub fn error(err: ProtocolError) -> Self {
        CloseReason {
            error: Some(err.code),
            goodbye: None,
            text: err.text,
        }
    }

    /// Ended by a Goodbye.
    pub fn goodbye(reason: GoodbyeReason, text: &str) -> Self {
        CloseReason {
            error: None,
            goodbye: Some(reason),
            text: text.to_string(),
        }
    }

    /// Ended because the transport went away.
    pub fn transport_lost() -> Self {
        CloseReason {
            error: None,
            goodbye: None,
            text: "transport closed".into(),
        }
    }

    /// Whether a client may open a new session on its own after this one
    /// ended (PROTOCOL.md §8.2): after a lost transport, `Goodbye(SHUTDOWN)`
    /// or a fatal error marked retryable; not after any other Goodbye or
    /// fatal error, which would recur or was meant to end the session.
    pub fn worth_reconnecting(&self) -> bool {
        match (self.goodbye, self.error) {
            (Some(g), _) => g == GoodbyeReason::Shutdown,
            (None, Some(code)) => code.is_retryable(),
            (None, None) => true,
        }
    }

    /// The WebSocket close status (PROTOCOL.md §3.2): `4000 + code` for an
    /// error, 1000 otherwise.
    pub fn websocket_code(&self) -> u16 {
        match self.error {
            Some(code) => 4000 + code as u16,
            None => 1000,
        }
    }

    /// The WebTransport session error code (PROTOCOL.md §3.3): the error's
    /// number, 0 otherwise.
    pub fn webtransport_code(&self) -> u32 {
        self.error.map_or(0, |c| c as u32)
    }

    /// The short reason sent with the transport close: the error's name, or `goodbye`.
    pub fn transport_reason(&self) -> &'static str {
        match self.error {
            Some(code) => code.name(),
            None => "goodbye",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_ends_are_worth_reconnecting_and_refusals_are_not() {
        use ErrorCode as E;
        use GoodbyeReason as G;
        let after = |code| CloseReason::error(ProtocolError::new(code, "")).worth_reconnecting();
        assert!(CloseReason::transport_lost().worth_reconnecting());
        assert!(CloseReason::goodbye(G::Shutdown, "").worth_reconnecting());
        for g in [G::Normal, G::Removed, G::MeetingEnded, G::Replaced] {
            assert!(!CloseReason::goodbye(g, "").worth_reconnecting(), "{g:?}");
        }
        for e in [
            E::IdleTimeout,
            E::HandshakeTimeout,
            E::ServerBusy,
            E::ShuttingDown,
            E::TooManyConnections,
            E::SlowConsumer,
            E::InternalError,
        ] {
            assert!(after(e), "{e:?}");
        }
        for e in [
            E::AuthInvalid,
            E::AuthExpired,
            E::AuthRequired,
            E::MalformedFrame,
            E::UnsupportedVersion,
            E::FrameTooLarge,
        ] {
            assert!(!after(e), "{e:?}");
        }
        // The spec marks only fatal errors retryable: a non-fatal one ends no session.
        for e in ErrorCode::ALL {
            assert!(!e.is_retryable() || e.is_fatal(), "{e:?}");
        }
    }
}
