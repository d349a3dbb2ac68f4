//! What happens in meetings, written down off the media path: joins and
//! leaves (attendance), tracks, recordings.
//!
//! Rooms and connections hand events to [`Events::emit`], which never
//! blocks: it puts them in a bounded queue ([`QUEUE_CAPACITY`]) and, when
//! that is full, drops the event and counts it. One task ([`run_writer`])
//! takes them out in batches and writes each batch to the store on a
//! blocking thread, in the order they were emitted.

pub mod webhook;
pub mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};

pub use writer::{RETENTION_INTERVAL, run_retention, run_writer};

/// Most events waiting for the writer; more are dropped and counted.
pub const QUEUE_CAPACITY: usize = 65_536;

/// Most events the writer puts in one transaction.
pub const MAX_BATCH: usize = 1_024;

/// Why a participant left a meeting, as attendance and webhooks say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// The participant left (Leave, or Goodbye from the client).
    Left,
    /// A moderator or the operator removed them.
    Removed,
    /// A moderator or the operator ended the meeting.
    MeetingEnded,
    /// The connection broke or timed out without a goodbye.
    ConnectionLost,
    /// The server shut down.
    ServerShutdown,
    /// The server closed a connection that did not read its frames.
    SlowConsumer,
    /// The session ended with a protocol error.
    Error,
    /// The server stopped without recording the leave (found at the next start).
    ServerStopped,
}

impl LeaveReason {
    /// The name stored and sent: `left`, `removed`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            LeaveReason::Left => "left",
            LeaveReason::Removed => "removed",
            LeaveReason::MeetingEnded => "meeting_ended",
            LeaveReason::ConnectionLost => "connection_lost",
            LeaveReason::ServerShutdown => "server_shutdown",
            LeaveReason::SlowConsumer => "slow_consumer",
            LeaveReason::Error => "error",
            LeaveReason::ServerStopped => "server_stopped",
        }
    }
}

/// A participant as events describe them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    /// The participant id in the meeting.
    pub participant_id: u32,
    /// The token's subject, empty without tokens.
    pub user_id: String,
    /// The name others see.
    pub display_name: String,
    /// The node they are connected to.
    pub node_id: u32,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The first participant came into the meeting's empty room on this node.
    MeetingStarted,
    /// The meeting's room on this node emptied (everyone left, or it was ended).
    MeetingEnded,
    /// A participant joined.
    ParticipantJoined(Who),
    /// A participant left, and why.
    ParticipantLeft(Who, LeaveReason),
    /// A participant published a track.
    TrackPublished {
        /// The publisher.
        participant_id: u32,
        /// The track id.
        track_id: u32,
        /// `audio`, `video` or `screen`.
        kind: &'static str,
    },
    /// A track went (unpublished, or its publisher left).
    TrackUnpublished {
        /// The publisher.
        participant_id: u32,
        /// The track id.
        track_id: u32,
    },
    /// A recorder joined the meeting.
    RecordingStarted(Who),
    /// A recorder left the meeting.
    RecordingEnded(Who),
}

impl EventKind {
    /// The event's name in webhooks: `participant_joined`, ...
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::MeetingStarted => "meeting_started",
            EventKind::MeetingEnded => "meeting_ended",
            EventKind::ParticipantJoined(_) => "participant_joined",
            EventKind::ParticipantLeft(..) => "participant_left",
            EventKind::TrackPublished { .. } => "track_published",
            EventKind::TrackUnpublished { .. } => "track_unpublished",
            EventKind::RecordingStarted(_) => "recording_started",
            EventKind::RecordingEnded(_) => "recording_ended",
        }
    }
}

/// One event, stamped when it was emitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unique: the node, when it started, and a sequence number.
    pub id: String,
    /// The meeting it happened in.
    pub meeting_id: String,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// What.
    pub kind: EventKind,
}

/// What the writer's queue carries.
#[derive(Debug)]
pub enum Queued {
    /// An event to write.
    Event(Event),
    /// Answered once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// Where rooms and connections hand their events; cheap to call, never blocks.
#[derive(Debug)]
pub struct Events {
    /// The writer's queue; `None` when nothing is recorded (unit tests of rooms).
    tx: Option<mpsc::Sender<Queued>>,
    /// Makes ids unique across restarts: `<node>-<start ms, hex>-`.
    prefix: String,
    /// The next event's sequence number.
    seq: AtomicU64,
    /// Events dropped because the queue was full.
    dropped: Counter,
}

/// Milliseconds since the Unix epoch, by the system clock.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Events {
    /// A sink that records nothing.
    pub fn disabled() -> Arc<Events> {
        Arc::new(Events {
            tx: None,
            prefix: String::new(),
            seq: AtomicU64::new(0),
            dropped: Counter::default(),
        })
    }

    /// A sink for node `node`, and the queue its writer reads; drops are
    /// counted in `dropped`.
    pub fn new(node: u32, dropped: Counter) -> (Arc<Events>, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let events = Events {
            tx: Some(tx),
            prefix: format!("{node}-{:x}-", unix_ms()),
            seq: AtomicU64::new(1),
            dropped,
        };
        (Arc::new(events), rx)
    }

    /// Whether events are recorded at all (callers skip building them when not).
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues an event about `meeting`, stamped now. Never waits: with the
    /// queue full the event is dropped, counted, and logged now and then.
    pub fn emit(&self, meeting: &str, kind: EventKind) {
        let Some(tx) = &self.tx else {
            return;
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let event = Event {
            id: format!("{}{seq}", self.prefix),
            meeting_id: meeting.to_string(),
            at_ms: unix_ms(),
            kind,
        };
        if tx.try_send(Queued::Event(event)).is_err() {
            let n = self.dropped.inc() + 1;
            // The first, then one in a thousand: a full queue must not also flood the log.
            if n == 1 || n.is_multiple_of(1_000) {
                tracing::warn!(
                    dropped = n,
                    capacity = QUEUE_CAPACITY,
                    "event queue full: events dropped (attendance and webhooks miss them); is the disk slow?"
                );
            }
        }
    }

    /// Waits until every event emitted before the call is written, or the
    /// writer is gone. May wait for room in the queue: not for the media path.
    pub async fn flush(&self) {
        let Some(tx) = &self.tx else {
            return;
        };
        let (done, wait) = oneshot::channel();
        if tx.send(Queued::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let dropped = Counter::default();
        let (events, mut rx) = Events::new(3, dropped.clone());
        for _ in 0..QUEUE_CAPACITY + 5 {
            events.emit("m", EventKind::MeetingStarted);
        }
        assert_eq!(dropped.get(), 5);
        let Some(Queued::Event(first)) = rx.recv().await else {
            panic!("the first event is queued")
        };
        assert!(
            first.id.starts_with("3-") && first.id.ends_with("-1"),
            "{}",
            first.id
        );
        assert_eq!(first.meeting_id, "m");
    }

    #[test]
    fn a_disabled_sink_takes_everything_and_keeps_nothing() {
        let e = Events::disabled();
        assert!(!e.enabled());
        e.emit("m", EventKind::MeetingEnded);
    }
}
