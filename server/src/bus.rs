//! The bus between server nodes: what one node tells the others so that a
//! meeting spread over several nodes behaves as one room.
//!
//! Every node keeps its own copy of each room it has participants in: its
//! local members (with outboxes) and the remote ones (without). A change that
//! starts on one node (a join, a publication, a chat message, a moderator's
//! lock) is applied there, then published on the bus as the same operation;
//! the other nodes apply it to their copies, which reaches their local
//! members. Media is published once per frame by the publisher's node, and
//! only while the room has members elsewhere; each node fans it out locally.
//! A key-frame request for a remote publisher goes to that publisher's node.
//!
//! The router only sees the [`Bus`] trait. [`InProcessHub`] connects nodes
//! inside one process (the default has a single node, so nothing crosses);
//! a NATS backend implements the same trait.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use convene_protocol::RoomRequest;
use convene_protocol::v1::Participant;
use tokio::sync::mpsc;

/// A node's id: the top bits of every participant id it hands out, so ids
/// are unique across a cluster without coordination.
pub type NodeId = u16;

/// Bits of a participant id left for a node's own counter.
pub const PARTICIPANT_BITS: u32 = 20;

/// Most nodes a cluster can have (node ids 0 to this minus one).
pub const MAX_NODES: u32 = 1 << (32 - PARTICIPANT_BITS);

/// Messages a node may have waiting from the bus before newer ones are
/// dropped (and counted): a node that stops reading must not grow memory.
pub const INBOUND_QUEUE: usize = 8192;

/// One operation crossing the bus.
#[derive(Debug, Clone)]
pub enum BusMessage {
    /// A participant joined the meeting on `node`.
    Join {
        /// The meeting.
        meeting: String,
        /// Where the participant is connected.
        node: NodeId,
        /// As the room shows it (tracks included, for snapshots).
        participant: Participant,
        /// Whether they receive every track.
        subscribe_all: bool,
    },
    /// A participant left.
    Leave {
        /// The meeting.
        meeting: String,
        /// Who.
        participant_id: u32,
    },
    /// A room request a participant made, already accepted on their node.
    Request {
        /// The meeting.
        meeting: String,
        /// Who made it.
        participant_id: u32,
        /// The request.
        request: RoomRequest,
        /// The origin's clock when it was accepted (chat timestamps).
        server_time_us: u64,
    },
    /// A media frame, stamped with its sender.
    Media {
        /// The meeting.
        meeting: String,
        /// The frame as forwarded to subscribers.
        frame: Bytes,
    },
    /// Ask a publisher (on the receiving node) for a key frame.
    KeyFrameRequest {
        /// The meeting.
        meeting: String,
        /// The publisher.
        publisher: u32,
        /// The track.
        track: u32,
        /// Who asks (0: the server, on subscribers' behalf).
        requester: u32,
        /// Ask even if the publisher was asked within the last second (a
        /// new subscriber must not wait for the rate limit).
        force: bool,
        /// The encodings that need one, a bit each (0: all; PROTOCOL.md §6.6.3).
        encodings: u8,
    },
    /// Which encodings of a publisher's track the subscribers on `node`
    /// want (PROTOCOL.md §6.6.5), for the publisher's node: it tells its
    /// publisher what anyone on any node wants. Said when it changes, and
    /// again every [`crate::room::DEMAND_REPEAT`] after it first did, so a
    /// lost message is put right; a node that never said wants everything.
    Demand {
        /// The meeting.
        meeting: String,
        /// The node whose subscribers these are.
        node: NodeId,
        /// The publisher.
        publisher: u32,
        /// The track.
        track: u32,
        /// The encodings wanted, a bit each.
        encodings: u8,
    },
    /// A node opened a room for the meeting (or came back after an outage):
    /// every node answers with its [`BusMessage::Roster`].
    SyncRequest {
        /// The meeting.
        meeting: String,
        /// Who asks.
        node: NodeId,
    },
    /// Everyone one node has in a meeting: replaces what the receiver knew
    /// of that node's participants there (who left, who joined, which tracks
    /// they publish), so a roster that missed messages is put right.
    Roster {
        /// The meeting.
        meeting: String,
        /// Whose participants these are.
        node: NodeId,
        /// All of them, tracks included.
        members: Vec<RosterEntry>,
        /// Whether a moderator locked the room.
        locked: bool,
        /// Who waits in the waiting room on that node.
        waiting: Vec<Participant>,
    },
    /// A newcomer entered the waiting room on `node`: moderators anywhere
    /// hear of it, and their Admit or Deny goes to `node`.
    Waiting {
        /// The meeting.
        meeting: String,
        /// Where the newcomer waits.
        node: NodeId,
        /// The newcomer.
        participant: Participant,
    },
    /// A newcomer left the waiting room without joining (denied, or gone).
    WaitingGone {
        /// The meeting.
        meeting: String,
        /// Who.
        participant_id: u32,
    },
    /// Said by the bus backend, never sent: `node` stopped answering, so its
    /// participants leave every room here.
    NodeDown {
        /// The silent node.
        node: NodeId,
    },
    /// Said by the bus backend, never sent: the bus is back after an outage,
    /// so every room tells the others who is here and asks who is there.
    Resync,
}

/// One participant in a [`BusMessage::Roster`].
#[derive(Debug, Clone, PartialEq)]
pub struct RosterEntry {
    /// As the room shows it, tracks included.
    pub participant: Participant,
    /// Whether they receive every track.
    pub subscribe_all: bool,
}

impl BusMessage {
    /// True for what every node must hear, not only those with participants
    /// in the meeting: a roster request, which nodes without the meeting
    /// answer too (with "nobody here"), so the asking node need not wait.
    pub fn to_every_node(&self) -> bool {
        matches!(self, BusMessage::SyncRequest { .. })
    }

    /// The meeting this message is about; `None` for what concerns every room.
    pub fn meeting(&self) -> Option<&str> {
        match self {
            BusMessage::Join { meeting, .. }
            | BusMessage::Leave { meeting, .. }
            | BusMessage::Request { meeting, .. }
            | BusMessage::Media { meeting, .. }
            | BusMessage::KeyFrameRequest { meeting, .. }
            | BusMessage::Demand { meeting, .. }
            | BusMessage::SyncRequest { meeting, .. }
            | BusMessage::Roster { meeting, .. }
            | BusMessage::Waiting { meeting, .. }
            | BusMessage::WaitingGone { meeting, .. } => Some(meeting),
            BusMessage::NodeDown { .. } | BusMessage::Resync => None,
        }
    }
}

/// How a node reaches the others.
pub trait Bus: Send + Sync + std::fmt::Debug {
    /// This node's id.
    fn node(&self) -> NodeId;
    /// Sends to every other node that has participants in the meeting.
    fn publish(&self, msg: BusMessage);
    /// Sends to one node.
    fn send_to(&self, node: NodeId, msg: BusMessage);
    /// This node now has (or no longer has) participants in `meeting`, so it
    /// wants (or no longer wants) that meeting's messages.
    fn interest(&self, meeting: &str, interested: bool);
    /// Messages dropped because a receiving node was too far behind, or
    /// the bus was down.
    fn dropped(&self) -> u64 {
        0
    }
    /// The other nodes alive now, as far as this node knows: a room opening
    /// here waits for each of them to say who it has in the meeting.
    fn peers(&self) -> Vec<NodeId> {
        Vec::new()
    }
    /// Whether the bus reaches the other nodes now (`/readyz` says not ready
    /// when it does not: this node then serves only its own participants).
    fn ready(&self) -> bool {
        true
    }
}

/// Nodes in one process, connected through bounded queues.
#[derive(Debug, Default)]
pub struct InProcessHub {
    inner: Mutex<HubInner>,
}

#[derive(Debug, Default)]
struct HubInner {
    nodes: HashMap<NodeId, mpsc::Sender<BusMessage>>,
    interest: HashMap<String, HashSet<NodeId>>,
    dropped: u64,
}

impl InProcessHub {
    /// An empty hub.
    pub fn new() -> Arc<InProcessHub> {
        Arc::new(InProcessHub::default())
    }

    /// Adds node `node`; returns its bus and the queue of what others send it.
    pub fn attach(self: &Arc<Self>, node: NodeId) -> (Arc<dyn Bus>, mpsc::Receiver<BusMessage>) {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        self.lock().nodes.insert(node, tx);
        (
            Arc::new(InProcessBus {
                hub: self.clone(),
                node,
            }),
            rx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl HubInner {
    fn deliver(&mut self, to: NodeId, msg: BusMessage) {
        if let Some(tx) = self.nodes.get(&to) {
            match tx.try_send(msg) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => self.dropped += 1,
                // A node that shut down: forget it.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.nodes.remove(&to);
                }
            }
        }
    }
}

/// One node's handle on an [`InProcessHub`].
#[derive(Debug)]
struct InProcessBus {
    hub: Arc<InProcessHub>,
    node: NodeId,
}

impl Bus for InProcessBus {
    fn node(&self) -> NodeId {
        self.node
    }

    fn publish(&self, msg: BusMessage) {
        let mut inner = self.hub.lock();
        let targets: Vec<NodeId> = if msg.to_every_node() {
            inner
                .nodes
                .keys()
                .copied()
                .filter(|n| *n != self.node)
                .collect()
        } else {
            let Some(nodes) = msg.meeting().and_then(|m| inner.interest.get(m)) else {
                return;
            };
            nodes.iter().copied().filter(|n| *n != self.node).collect()
        };
        for n in targets {
            inner.deliver(n, msg.clone());
        }
    }

    fn send_to(&self, node: NodeId, msg: BusMessage) {
        if node != self.node {
            self.hub.lock().deliver(node, msg);
        }
    }

    fn peers(&self) -> Vec<NodeId> {
        let inner = self.hub.lock();
        inner
            .nodes
            .iter()
            .filter(|(n, tx)| **n != self.node && !tx.is_closed())
            .map(|(n, _)| *n)
            .collect()
    }

    fn interest(&self, meeting: &str, interested: bool) {
        let mut inner = self.hub.lock();
        if interested {
            inner
                .interest
                .entry(meeting.to_string())
                .or_default()
                .insert(self.node);
        } else if let Some(set) = inner.interest.get_mut(meeting) {
            set.remove(&self.node);
            if set.is_empty() {
                inner.interest.remove(meeting);
            }
        }
    }

    fn dropped(&self) -> u64 {
        self.hub.lock().dropped
    }
}

/// The bus of a single node: there is nobody to tell.
#[derive(Debug, Default)]
pub struct NoBus;

impl Bus for NoBus {
    fn node(&self) -> NodeId {
        0
    }
    fn publish(&self, _msg: BusMessage) {}
    fn send_to(&self, _node: NodeId, _msg: BusMessage) {}
    fn interest(&self, _meeting: &str, _interested: bool) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn media(meeting: &str) -> BusMessage {
        BusMessage::Media {
            meeting: meeting.into(),
            frame: Bytes::from_static(b"x"),
        }
    }

    #[tokio::test]
    async fn only_other_interested_nodes_hear_a_meeting() {
        let hub = InProcessHub::new();
        let (a, _ra) = hub.attach(1);
        let (b, mut rb) = hub.attach(2);
        let (_c, mut rc) = hub.attach(3);
        a.interest("m", true);
        b.interest("m", true);
        a.publish(media("m"));
        a.publish(media("other"));
        assert!(matches!(rb.try_recv(), Ok(BusMessage::Media { meeting, .. }) if meeting == "m"));
        assert!(
            rb.try_recv().is_err(),
            "nothing about a meeting it has no interest in"
        );
        assert!(rc.try_recv().is_err(), "node 3 has nobody in m");
        b.interest("m", false);
        a.publish(media("m"));
        assert!(rb.try_recv().is_err());
        a.send_to(3, media("m"));
        assert!(rc.try_recv().is_ok(), "direct messages need no interest");
    }

    #[tokio::test]
    async fn a_node_that_stops_reading_costs_bounded_memory() {
        let hub = InProcessHub::new();
        let (a, _ra) = hub.attach(1);
        let (b, _rb) = hub.attach(2);
        b.interest("m", true);
        for _ in 0..INBOUND_QUEUE + 10 {
            a.publish(media("m"));
        }
        assert_eq!(a.dropped(), 10);
    }
}
