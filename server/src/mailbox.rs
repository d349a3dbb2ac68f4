//! What the room decided about one session of this node, waiting for that
//! session's connection to act on it: a removal or the end of the meeting,
//! and the answer to a Join the room could not answer at once (a moderator's
//! decision on a waiting participant, or a Join held while a room opened on
//! one node of a cluster learned who is in the meeting).
//!
//! The [`Outbox`](crate::outbox::Outbox) carries frames to the subscriber;
//! this carries decisions to its session. They are apart because they have
//! different readers (the writer drains the outbox; the connection's own
//! task reads the mailbox and has its session answer) and different rules
//! (frames are dropped under pressure, decisions never are). No I/O: the
//! shell hands in a [`Wake`] that reaches its task.

use std::sync::Mutex;

use convene_protocol::ProtocolError;

use crate::outbox::Wake;

/// How the room answered a Join it could not answer at once: a moderator's
/// decision on a participant in the waiting room, or the outcome of a Join
/// held while a room opened on one node of a cluster learned who is in the
/// meeting.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    /// Admitted: `Joined` is already queued.
    Admitted,
    /// Denied: the session answers ADMISSION_DENIED.
    Denied,
    /// The held Join goes to the waiting room: the session sends `Waiting`.
    Held,
    /// The held Join is refused (locked, full): the session answers this.
    Refused(ProtocolError),
}

/// Why the room ended a participant's session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kick {
    /// A moderator removed the participant.
    Removed,
    /// A moderator ended the meeting.
    MeetingEnded,
    /// The meeting requires end-to-end encryption and the participant
    /// announced no key in time (§14.7).
    NoKey,
}

#[derive(Debug, Default)]
struct Letters {
    /// Set when the room ended the session (removal, end of meeting).
    kicked: Option<Kick>,
    /// Set when the room answered a held Join; taken once.
    admission: Option<Admission>,
}

/// The room's decisions on one session, read by that session's connection.
pub struct Mailbox {
    letters: Mutex<Letters>,
    waker: Box<dyn Wake>,
}

impl std::fmt::Debug for Mailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailbox")
            .field("letters", &*self.lock())
            .finish_non_exhaustive()
    }
}

impl Mailbox {
    /// An empty mailbox that calls `waker` when a decision arrives.
    pub fn new(waker: Box<dyn Wake>) -> Self {
        Mailbox {
            letters: Mutex::new(Letters::default()),
            waker,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Letters> {
        // A panic elsewhere must not lose a decision.
        self.letters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the session on the room's behalf; its connection says Goodbye.
    pub fn kick(&self, why: Kick) {
        self.lock().kicked = Some(why);
        self.waker.wake();
    }

    /// Answers a held Join. [`Admission::Admitted`] is settled before its
    /// `Joined` is queued: whatever the client sends after reading Joined
    /// must find the decision here.
    pub fn settle(&self, how: Admission) {
        self.settle_then(how, || ());
    }

    /// [`settle`](Self::settle), running `then` once the decision is
    /// recorded and before the reader is woken (the room queues `Joined`
    /// there, so the decision is in place before that frame can be read).
    pub fn settle_then(&self, how: Admission, then: impl FnOnce()) {
        self.lock().admission = Some(how);
        then();
        self.waker.wake();
    }

    /// The answer to a held Join, once (taken by the connection).
    pub fn take_admission(&self) -> Option<Admission> {
        self.lock().admission.take()
    }

    /// Why the room ended the session, if it did.
    pub fn kicked(&self) -> Option<Kick> {
        self.lock().kicked
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Count(Arc<AtomicUsize>);
    impl Wake for Count {
        fn wake(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn mailbox() -> (Mailbox, Arc<AtomicUsize>) {
        let wakes = Arc::new(AtomicUsize::new(0));
        (Mailbox::new(Box::new(Count(wakes.clone()))), wakes)
    }

    #[test]
    fn an_admission_is_taken_once_and_each_decision_wakes_the_reader() {
        let (m, wakes) = mailbox();
        assert_eq!(m.take_admission(), None);
        m.settle(Admission::Held);
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        assert_eq!(m.take_admission(), Some(Admission::Held));
        assert_eq!(m.take_admission(), None, "a decision is acted on once");
        m.settle(Admission::Admitted);
        assert_eq!(wakes.load(Ordering::SeqCst), 2);
        assert_eq!(m.take_admission(), Some(Admission::Admitted));
    }

    #[test]
    fn a_kick_stays_readable_and_does_not_touch_the_admission() {
        let (m, wakes) = mailbox();
        m.kick(Kick::MeetingEnded);
        assert_eq!(wakes.load(Ordering::SeqCst), 1);
        assert_eq!(m.kicked(), Some(Kick::MeetingEnded));
        assert_eq!(
            m.kicked(),
            Some(Kick::MeetingEnded),
            "a kick is not consumed"
        );
        assert_eq!(m.take_admission(), None);
    }
}
