//! What the room's tests share: members joining over `sfu.1`, and a clock.

use std::sync::Arc;

use convene_protocol::Timestamp;
use convene_protocol::v1::Participant;

use crate::mailbox::Mailbox;
use crate::outbox::{Outbox, OutboxLimits, Wake};
use crate::room::{Local, Room};

/// A waker for queues nobody drains but the test.
pub(super) struct NoWake;

impl Wake for NoWake {
    fn wake(&self) {}
}

/// `ms` milliseconds into the test.
pub(super) fn t(ms: u64) -> Timestamp {
    Timestamp(1_000_000_000 + ms * 1000)
}

/// Member `pid` ("p`pid`") joins `room` at the start with `sfu.1`,
/// receiving everything published when `subscribe_all`; its queue.
pub(super) fn join_sfu(room: &mut Room, pid: u32, subscribe_all: bool) -> Arc<Outbox> {
    let o = Arc::new(Outbox::new(OutboxLimits::default(), Box::new(NoWake)));
    let local = Local {
        outbox: o.clone(),
        mailbox: Arc::new(Mailbox::new(Box::new(NoWake))),
        sfu: true,
        reactions: true,
    };
    let p = Participant {
        participant_id: pid,
        display_name: format!("p{pid}"),
        ..Default::default()
    };
    room.join(t(0), p, subscribe_all, local).unwrap();
    o
}
