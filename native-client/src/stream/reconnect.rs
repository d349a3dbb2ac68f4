//! When `convene stream` tries again: which server after a failed join, how
//! long to wait, and what the end of a session means (PROTOCOL.md §4.3, §9).

use std::time::Duration;

use convene_client::Client;

use super::{BACKOFF_MAX, BACKOFF_MIN, JOIN_TIMEOUT};

/// Which server to try next, and how long to wait first.
#[derive(Debug)]
pub(super) struct Reconnect {
    /// The servers given with --server, tried in turn.
    urls: Vec<String>,
    /// The one whose turn it is.
    pub(super) at: usize,
    /// How many failed in a row since one worked: until all have, the next
    /// is tried at once.
    failed_in_turn: usize,
    /// The next wait, doubled after each up to [`BACKOFF_MAX`].
    backoff: Duration,
    /// Whether any session was made: until then, an unreachable server or
    /// one that does not let us in ends the run.
    ever_connected: bool,
}

/// What to do after an attempt to join failed.
#[derive(Debug)]
pub(super) enum Retry {
    /// Try the next server at once, noting this.
    Now(String),
    /// Wait this long for this reason, then try the next server.
    After(Duration, String),
    /// End the run with this error.
    GiveUp(String),
}

impl Reconnect {
    pub(super) fn new(urls: Vec<String>) -> Reconnect {
        Reconnect {
            urls,
            at: 0,
            failed_in_turn: 0,
            backoff: BACKOFF_MIN,
            ever_connected: false,
        }
    }

    /// The URL of the server whose turn it is.
    pub(super) fn url(&self) -> &str {
        &self.urls[self.at]
    }

    /// A session joined: the next failure starts over from the shortest wait.
    pub(super) fn connected(&mut self) {
        self.ever_connected = true;
        self.failed_in_turn = 0;
        self.backoff = BACKOFF_MIN;
    }

    /// The wait before the next attempt; the one after is twice as long.
    pub(super) fn next_backoff(&mut self) -> Duration {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        wait
    }

    /// The policy for a failed attempt to join; `server` is --server, for
    /// the message when nothing ever worked.
    pub(super) fn failed(&mut self, failure: Failure, server: &str) -> Retry {
        match failure {
            // Another server may take us: try the next one at once, until
            // every one has failed in turn.
            Failure::Busy(e) | Failure::Unreachable(e)
                if self.failed_in_turn + 1 < self.urls.len() =>
            {
                self.failed_in_turn += 1;
                let next = (self.at + 1) % self.urls.len();
                let note = format!("{e} at {}; trying {}", self.urls[self.at], self.urls[next]);
                self.at = next;
                Retry::Now(note)
            }
            Failure::Refused(e) => Retry::GiveUp(e),
            Failure::Unreachable(e) if !self.ever_connected => Retry::GiveUp(format!(
                "{e}; is the server running at {server}? (set it with --server)"
            )),
            Failure::TimedOut if !self.ever_connected => Retry::GiveUp(format!(
                "the server at {server} did not let us join within {JOIN_TIMEOUT:?}"
            )),
            f => {
                self.failed_in_turn = 0;
                self.at = (self.at + 1) % self.urls.len();
                let why = match f {
                    Failure::Later(e) => format!("the server asked us to come back later ({e})"),
                    Failure::Busy(e) => e,
                    Failure::Unreachable(e) => format!("cannot reconnect: {e}"),
                    Failure::TimedOut => "reconnect timed out".to_string(),
                    // Handled above; listed so a new kind of failure is not missed.
                    Failure::Refused(e) => e,
                };
                Retry::After(self.next_backoff(), why)
            }
        }
    }
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub(super) enum Failure {
    /// Network or TLS: worth retrying.
    Unreachable(String),
    /// The server said no (bad token, bad meeting id, room full): retrying will not help.
    Refused(String),
    /// The server is too loaded to take us (SERVER_BUSY, TOO_MANY_CONNECTIONS):
    /// another server, or this one later, may.
    Busy(String),
    /// The server asked us to come back later (it is shutting down).
    Later(String),
    /// No answer within [`JOIN_TIMEOUT`] (time in a waiting room not counted).
    TimedOut,
}

/// The reason a session closed, sorted into retry or give up.
pub(super) fn closed(c: &Client) -> Failure {
    match after_close(c.close_reason()) {
        AfterClose::Stop(why) | AfterClose::Fail(why) => return Failure::Refused(why),
        AfterClose::Reconnect(why)
            if c.close_reason().is_some_and(|r| {
                r.goodbye == Some(convene_protocol::v1::GoodbyeReason::Shutdown)
            }) =>
        {
            return Failure::Later(why);
        }
        AfterClose::Reconnect(_) => {}
    }
    match c.close_reason() {
        Some(r) => Failure::Unreachable(format!(
            "the server closed the session: {} {}",
            r.transport_reason(),
            r.text
        )),
        None => Failure::Unreachable("the server closed the connection".into()),
    }
}

/// What to do when a session ends (PROTOCOL.md §4.3, §9).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum AfterClose {
    /// Come back after a backoff (server shutdown, network loss).
    Reconnect(String),
    /// Done, and that is fine (the meeting ended).
    Stop(String),
    /// Done, and the user should know why (removed, refused).
    Fail(String),
}

/// Sorts the end of a session into reconnect, stop or fail; what the
/// protocol deems not worth reconnecting after fails.
pub(super) fn after_close(reason: Option<&convene_protocol::CloseReason>) -> AfterClose {
    use convene_protocol::v1::GoodbyeReason as G;
    let Some(r) = reason else {
        return AfterClose::Reconnect("the connection ended".into());
    };
    match r.goodbye {
        Some(G::MeetingEnded) => {
            return AfterClose::Stop(format!("a moderator ended the meeting ({})", r.text));
        }
        Some(G::Removed) => {
            return AfterClose::Fail(format!(
                "a moderator removed us from the meeting ({}); not reconnecting",
                r.text
            ));
        }
        Some(G::Replaced) => {
            return AfterClose::Fail("another session took over this one; not reconnecting".into());
        }
        _ => {}
    }
    if !r.worth_reconnecting() {
        let hint = if r.transport_reason().starts_with("AUTH_") {
            "; pass a valid token with --token (or CONVENE_TOKEN)"
        } else {
            ""
        };
        return AfterClose::Fail(format!(
            "the server refused the session: {} {}{hint}",
            r.transport_reason(),
            r.text
        ));
    }
    AfterClose::Reconnect(format!("{} {}", r.transport_reason(), r.text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(n: usize) -> Reconnect {
        Reconnect::new((1..=n).map(|i| format!("https://s{i}")).collect())
    }

    #[test]
    fn before_any_session_an_unreachable_server_passes_the_turn_then_ends_the_run() {
        let mut r = servers(2);
        match r.failed(Failure::Unreachable("refused".into()), "https://s1") {
            Retry::Now(note) => assert_eq!(note, "refused at https://s1; trying https://s2"),
            other => panic!("expected the next server at once, got {other:?}"),
        }
        assert_eq!(r.url(), "https://s2");
        match r.failed(Failure::Unreachable("refused".into()), "https://s1") {
            Retry::GiveUp(e) => assert!(e.contains("is the server running at https://s1"), "{e}"),
            other => panic!("expected the run to end, got {other:?}"),
        }
    }

    #[test]
    fn after_a_session_failures_wait_twice_as_long_each_time_up_to_the_cap_and_a_session_resets_it()
    {
        let mut r = servers(1);
        r.connected();
        let mut waits = Vec::new();
        for _ in 0..8 {
            match r.failed(Failure::Unreachable("down".into()), "https://s1") {
                Retry::After(wait, why) => {
                    assert_eq!(why, "cannot reconnect: down");
                    waits.push(wait);
                }
                other => panic!("expected a wait, got {other:?}"),
            }
        }
        assert_eq!(waits[0], BACKOFF_MIN);
        assert_eq!(waits[1], BACKOFF_MIN * 2);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), BACKOFF_MAX);
        r.connected();
        match r.failed(Failure::TimedOut, "https://s1") {
            Retry::After(wait, why) => {
                assert_eq!(wait, BACKOFF_MIN, "a session starts the waits over");
                assert_eq!(why, "reconnect timed out");
            }
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn a_refusal_ends_the_run_and_a_busy_server_hands_over_to_the_next() {
        let mut r = servers(2);
        r.connected();
        match r.failed(Failure::Busy("SERVER_BUSY".into()), "https://s1") {
            Retry::Now(_) => assert_eq!(r.url(), "https://s2"),
            other => panic!("expected the next server at once, got {other:?}"),
        }
        // Both busy in turn: wait, then start again from the first.
        match r.failed(Failure::Busy("SERVER_BUSY".into()), "https://s1") {
            Retry::After(wait, _) => assert_eq!(wait, BACKOFF_MIN),
            other => panic!("expected a wait, got {other:?}"),
        }
        assert_eq!(r.url(), "https://s1");
        match r.failed(Failure::Refused("bad token".into()), "https://s1") {
            Retry::GiveUp(e) => assert_eq!(e, "bad token"),
            other => panic!("expected the run to end, got {other:?}"),
        }
    }

    #[test]
    fn removal_and_the_end_of_the_meeting_are_final_shutdown_is_not() {
        use convene_protocol::CloseReason;
        use convene_protocol::v1::GoodbyeReason as G;
        let bye = |g| CloseReason::goodbye(g, "x");
        assert!(matches!(
            after_close(Some(&bye(G::Shutdown))),
            AfterClose::Reconnect(_)
        ));
        assert!(matches!(
            after_close(Some(&bye(G::Removed))),
            AfterClose::Fail(_)
        ));
        assert!(matches!(
            after_close(Some(&bye(G::MeetingEnded))),
            AfterClose::Stop(_)
        ));
        assert!(matches!(after_close(None), AfterClose::Reconnect(_)));
        let auth = CloseReason::error(convene_protocol::ProtocolError::new(
            convene_protocol::ErrorCode::AuthExpired,
            "old",
        ));
        assert!(matches!(after_close(Some(&auth)), AfterClose::Fail(_)));
    }

    #[test]
    fn refusals_are_not_retried_transient_errors_are() {
        use convene_protocol::ErrorCode as E;
        use convene_protocol::{CloseReason, ProtocolError};
        let after = |e| after_close(Some(&CloseReason::error(ProtocolError::new(e, "x"))));
        for e in [
            E::AuthInvalid,
            E::UnsupportedVersion,
            E::PermissionDenied,
            E::AdmissionDenied,
            E::RoomFull,
        ] {
            assert!(matches!(after(e), AfterClose::Fail(_)), "{e:?}");
        }
        for e in [
            E::ShuttingDown,
            E::IdleTimeout,
            E::ServerBusy,
            E::SlowConsumer,
        ] {
            assert!(matches!(after(e), AfterClose::Reconnect(_)), "{e:?}");
        }
    }
}
