//! When and how soon the page opens a new session after one ended: the
//! protocol's rule for which endings are worth another try, and the
//! back-off between tries. Pure, so it is tested natively too; the browser
//! side of reconnecting is in `session`.

/// Whether a session that ended this way is worth opening again: the
/// protocol's rule (PROTOCOL.md §8.2), shared with the native client.
pub fn worth_reconnecting(r: &convene_protocol::CloseReason) -> bool {
    r.worth_reconnecting()
}

/// How long to wait before reconnect attempt `attempt` (counted from 1),
/// in milliseconds: 1, 2, 4, 8, then 10 s, so a server that is restarting
/// is not hammered and one that is back is found soon.
pub fn delay_ms(attempt: u32) -> i32 {
    (1000 * (1 << (attempt - 1).min(4))).min(10_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use convene_protocol::v1;

    #[test]
    fn a_lost_connection_a_shutdown_or_a_transient_error_is_worth_reconnecting() {
        use convene_protocol::{CloseReason, ProtocolError};
        use v1::{ErrorCode as E, GoodbyeReason as G};
        assert!(worth_reconnecting(&CloseReason::transport_lost()));
        assert!(worth_reconnecting(&CloseReason::goodbye(G::Shutdown, "")));
        assert!(worth_reconnecting(&CloseReason::error(ProtocolError::new(
            E::IdleTimeout,
            ""
        ))));
        for g in [G::Normal, G::Removed, G::MeetingEnded] {
            assert!(!worth_reconnecting(&CloseReason::goodbye(g, "")), "{g:?}");
        }
        for e in [E::AuthInvalid, E::AuthExpired, E::MalformedFrame] {
            assert!(
                !worth_reconnecting(&CloseReason::error(ProtocolError::new(e, ""))),
                "{e:?}"
            );
        }
    }

    #[test]
    fn attempts_wait_longer_up_to_ten_seconds() {
        let waits: Vec<i32> = (1..=7).map(delay_ms).collect();
        assert_eq!(waits, [1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]);
    }
}
