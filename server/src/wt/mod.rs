//! WebTransport (PROTOCOL.md §3.3): one client-opened bidirectional
//! control stream with u32 length-prefixed frames; media frames each on
//! their own unidirectional stream, or in a datagram. QUIC and HTTP/3 run
//! in one engine task for the whole endpoint; each session's protocol runs
//! in a task of its own.
//!
//! The engine drives every QUIC connection of the endpoint through
//! `quinn-proto`'s state machines, with HTTP/3's few WebTransport pieces
//! (SETTINGS, the CONNECT request, stream and datagram headers, the close
//! capsule) on top.
//!
//! Why an engine of our own instead of quinn's driver (a task per
//! connection, each sending its own packets): a room delivers each frame to
//! every subscriber at once. Here the subscribers' outboxes wake this task,
//! not a writer task each; one wake-up takes the frame from every
//! subscriber's outbox, writes it to their streams or datagram queues, and
//! then builds and sends every connection's packets in one pass, with
//! acknowledgements read in batches (`recvmmsg`) and handled in line.
//! Measured against quinn's driver at 1 -> 200 (benches/README.md): about a
//! fifth less CPU per delivered frame and half the memory per connection.
//!
//! Each session's protocol logic stays in its own task
//! ([`crate::connection::drive_external`]), which receives [`Incoming`]
//! frames, queues what it sends in its outbox, and tells the engine of its
//! outbox and its end through [`Command`]s.
//!
//! The parts, split along the I/O line as quinn splits `quinn-proto`
//! (state), `quinn` (driver) and `quinn-udp` (sockets):
//!
//! - `h3`: HTTP/3 and WebTransport framing: stream headers, the CONNECT
//!   request, SETTINGS, the close capsule, the stream reader. Sans-IO.
//! - `session`: one session's state, its budgets, and its writes into
//!   QUIC's streams and datagrams. Sans-IO.
//! - `path`: the congestion check on QUIC's path statistics. Sans-IO.
//! - `conn`: one connection, driven by its QUIC events: streams read,
//!   CONNECT answered, outbox drained, session closed. No socket; it reads
//!   the clock only for a closing session's deadlines.
//! - `engine`: the I/O side: the socket, the timers, the run loop.
//! - `udp`: sending many connections' packets in one system call. I/O.
//! - `endpoint`: binding the endpoint and running each session's task. I/O.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use tokio::sync::mpsc;

use crate::connection::{ExternalClose, Incoming};
use crate::outbox::{Outbox, Wake};

mod conn;
mod endpoint;
mod engine;
mod h3;
mod path;
mod session;
mod udp;

pub use endpoint::{PATH, start};
pub use engine::run;
pub use session::BUDGET_FRAMES;

/// Names one session for its task and the engine: the connection's slot and
/// a number never reused, so a late command cannot reach a newer connection
/// in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionKey {
    slot: usize,
    generation: u64,
}

/// What a session's task asks of the engine.
pub enum Command {
    /// The session's outbox, which the engine drains itself when the
    /// session's writer (from [`NewSession`]) is woken, and how the session
    /// tells it to close.
    Attach {
        /// Which session.
        key: SessionKey,
        /// Its outbox.
        outbox: Arc<Outbox>,
        /// Its close reason, once it has one, and the notice of the close.
        close: Arc<ExternalClose>,
    },
    /// Ends a session that never got an outbox (refused before it started):
    /// the close capsule is sent and the connection closed shortly after.
    Close {
        /// Which session.
        key: SessionKey,
        /// The WebTransport application error code.
        code: u32,
        /// Why, for the peer.
        reason: String,
    },
    /// The connection lost its handshaking slot to a newer one: closed at
    /// once if it has no session yet (a session's task closes its own).
    Evict {
        /// Which connection.
        key: SessionKey,
    },
}

/// A session the engine has accepted, for the caller to run.
pub struct NewSession {
    /// Its name in commands.
    pub key: SessionKey,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Frames, violations and the end of the session, in order.
    pub incoming: mpsc::Receiver<Incoming>,
    /// Where to send commands.
    pub commands: mpsc::UnboundedSender<Command>,
    /// The session's writer: the outbox's waker, which has the engine drain it.
    pub writer: Arc<dyn Wake>,
    /// The largest frame the session accepts now, for the task to keep up
    /// to date (the Hello limit until Welcome).
    pub frame_limit: Arc<AtomicUsize>,
    /// Bytes of frames on their way to the task: the task subtracts what it takes.
    pub queued_bytes: Arc<AtomicUsize>,
    /// The connection's place among connections in their handshake.
    pub handshake: Option<crate::slots::Handshake>,
    /// Fires if that place goes to a newer connection.
    pub evicted: Arc<crate::accept::EvictSignal>,
}

/// The engine's limits and settings.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// The only path a CONNECT request may ask for; others get 404.
    pub path: String,
    /// Largest frame accepted on a stream, in bytes.
    pub max_frame: usize,
    /// Media streams a peer may have open at once (one more is TOO_MANY_STREAMS).
    pub max_streams: usize,
}
