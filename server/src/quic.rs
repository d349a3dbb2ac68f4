//! The WebTransport engine: one task drives every QUIC connection of the
//! endpoint through `quinn-proto`'s state machines, with HTTP/3's few
//! WebTransport pieces (SETTINGS, the CONNECT request, stream and datagram
//! headers, the close capsule) on top.
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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use convene_protocol::frame::{FRAME_MEDIA, length_prefix, stream_priority};
use convene_protocol::{ErrorCode, MediaFrame, ProtocolError, StreamDecoder};
use quinn_proto::{
    ConnectionHandle, DatagramEvent, Dir, EndpointConfig, Event, ServerConfig, StreamEvent,
    StreamId, VarInt,
};
use tokio::io::Interest;
use tokio::sync::mpsc;
use tracing::debug;
use web_transport_proto as wtp;

use crate::connection::{DrainTally, ExternalClose, Incoming, drain_batch};
use crate::outbox::{Outbox, Wake};
use crate::state::AppState;

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

/// Wakes the engine to drain one session's outbox.
struct SessionWake {
    key: SessionKey,
    /// Set while the session waits in `ready`, so it is queued once.
    queued: Arc<AtomicBool>,
    ready: Arc<Ready>,
}

impl Wake for SessionWake {
    fn wake(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let mut keys = self.ready.keys.lock().unwrap_or_else(|p| p.into_inner());
            // The engine takes the whole list when notified: only the first
            // key into an empty list needs to wake it.
            let first = keys.is_empty();
            keys.push(self.key);
            drop(keys);
            if first {
                self.ready.notify.notify_one();
            }
        }
    }
}

/// Sessions with frames to drain.
#[derive(Default)]
struct Ready {
    keys: std::sync::Mutex<Vec<SessionKey>>,
    notify: tokio::sync::Notify,
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

/// Frames queued for a session's task beyond its channel before the engine
/// stops reading that session's streams (QUIC's flow control then holds the
/// peer back). Datagrams that find the queue non-empty are dropped.
const MAX_PENDING_INCOMING: usize = 64;
/// The channel from the engine to a session's task.
const INCOMING_CHANNEL: usize = 256;
/// Bytes of a CONNECT request or of a stream header before giving up on it.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// HTTP/3's H3_STREAM_CREATION_ERROR, for streams of a type we do not take.
const H3_STREAM_CREATION_ERROR: u32 = 0x103;
/// HTTP/3's H3_NO_ERROR, closing a connection that never opened a session.
const H3_NO_ERROR: u32 = 0x100;
/// The WebTransport bidirectional stream signal (a frame type on request streams).
const WT_BIDI_SIGNAL: u64 = 0x41;
/// How long a closing session waits for its last bytes and the close
/// capsule to be acknowledged before the connection is closed under them.
const CLOSE_LINGER: Duration = Duration::from_millis(100);
/// How long a closing session waits for the peer to acknowledge the end of
/// its control stream before the close capsule goes anyway.
const CAPSULE_WAIT: Duration = Duration::from_millis(500);
/// The least a closing session waits before the close capsule, even once
/// the control stream is acknowledged: a peer acknowledges data before its
/// application has read it, and one that sees the session end first may
/// never read it (the conformance runner lost an Error that way).
const CAPSULE_READ: Duration = Duration::from_millis(50);
/// How long the engine keeps running after shutdown for sessions to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Media frames handed to QUIC and not yet taken by it (waiting for stream
/// credit or send window), per session. Beyond this the engine leaves
/// frames in the outbox, where the spec's drop order (video deltas first)
/// and the slow-subscriber rule apply, instead of piling them up inside
/// QUIC without bound.
const MAX_MEDIA_IN_FLIGHT: usize = 32;
/// How often a session whose queue to its task is full is retried.
const RETRY_PENDING: Duration = Duration::from_millis(2);

/// Runs the engine on `socket` until `stop` turns true and the sessions are
/// gone (or [`SHUTDOWN_GRACE`] passes); `on_session` is called for every
/// accepted WebTransport session.
pub async fn run(
    state: Arc<AppState>,
    socket: std::net::UdpSocket,
    server_config: Arc<ServerConfig>,
    config: EngineConfig,
    mut stop: tokio::sync::watch::Receiver<bool>,
    on_session: impl Fn(NewSession) + Send + 'static,
) {
    let socket = match tokio::net::UdpSocket::from_std(socket) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the WebTransport socket");
            return;
        }
    };
    let udp = match quinn_udp::UdpSocketState::new((&socket).into()) {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "cannot set up the WebTransport socket");
            return;
        }
    };
    let (commands_tx, mut commands) = mpsc::unbounded_channel();
    let endpoint = quinn_proto::Endpoint::new(
        Arc::new(EndpointConfig::default()),
        Some(server_config),
        !udp.may_fragment(),
        None,
    );
    let mut engine = Engine {
        endpoint,
        conns: Conns::default(),
        timers: BinaryHeap::new(),
        dirty: Vec::new(),
        blocked: Vec::new(),
        next_generation: 1,
        config,
        commands_tx,
        on_session: Box::new(on_session),
        ready: Arc::new(Ready::default()),
        ready_spare: Vec::new(),
        state,
        scratch: Scratch::default(),
        out: crate::sendmmsg::Batch::default(),
        stopping: false,
        udp,
        socket,
    };
    let gro = engine.udp.gro_segments().max(1);
    let mut recv_bufs: Vec<Vec<u8>> = (0..quinn_udp::BATCH_SIZE)
        .map(|_| vec![0u8; 1500 * gro])
        .collect();
    let mut stop_at: Option<Instant> = None;
    let ready_notify = engine.ready.clone();
    let ready_notify = &ready_notify.notify;
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    loop {
        let now = Instant::now();
        let mut wake = engine.next_timer();
        if !engine.blocked.is_empty() {
            wake = Some(wake.map_or(now + RETRY_PENDING, |w| w.min(now + RETRY_PENDING)));
        }
        if let Some(s) = stop_at {
            if now >= s || engine.conns.is_empty() {
                break;
            }
            wake = Some(wake.map_or(s, |w| w.min(s)));
        }
        let wake = wake.unwrap_or(now + Duration::from_secs(3600));
        if sleep.deadline() != wake.into() {
            sleep.as_mut().reset(wake.into());
        }
        tokio::select! {
            biased;
            r = engine.socket.readable() => {
                if r.is_ok() {
                    engine.receive(&mut recv_bufs);
                }
            }
            c = commands.recv() => {
                // The engine holds a sender itself, so the channel never closes.
                if let Some(c) = c {
                    engine.command(c);
                    // Take what else is queued before building packets.
                    let mut n = 0;
                    while n < 4096 {
                        match commands.try_recv() {
                            Ok(c) => engine.command(c),
                            Err(_) => break,
                        }
                        n += 1;
                    }
                }
            }
            _ = &mut sleep => engine.expire(Instant::now()),
            _ = ready_notify.notified() => {}
            r = stop.changed(), if stop_at.is_none() => {
                if r.is_err() || *stop.borrow() {
                    engine.stopping = true;
                    stop_at = Some(Instant::now() + SHUTDOWN_GRACE);
                }
            }
        }
        engine.scratch.now = Some(Instant::now());
        engine.flush_pending();
        engine.drain_ready();
        engine.process_dirty();
        engine.scratch.tally.record(&engine.state);
        engine.scratch.now = None;
    }
}

/// Everything the engine owns.
struct Engine {
    endpoint: quinn_proto::Endpoint,
    conns: Conns,
    /// Deadlines: (when, slot, generation); stale entries are skipped.
    timers: BinaryHeap<Reverse<(Instant, usize, u64)>>,
    /// Connections to poll for events and packets.
    dirty: Vec<usize>,
    /// Connections whose task is behind: frames wait in its queue, or streams wait unread.
    blocked: Vec<usize>,
    next_generation: u64,
    config: EngineConfig,
    commands_tx: mpsc::UnboundedSender<Command>,
    on_session: Box<dyn Fn(NewSession) + Send>,
    /// Sessions whose outbox has frames.
    ready: Arc<Ready>,
    /// The other half of `ready`'s list, empty between drains.
    ready_spare: Vec<SessionKey>,
    state: Arc<AppState>,
    scratch: Scratch,
    /// Packets built and not yet sent.
    out: crate::sendmmsg::Batch,
    stopping: bool,
    udp: quinn_udp::UdpSocketState,
    socket: tokio::net::UdpSocket,
}

/// The connections by slot. quinn-proto's connection handles are indices
/// into its own slab (small, dense, reused), so a vector indexed by them
/// finds a connection without hashing, which the engine does several
/// times per connection for every frame routed.
struct Slots<T> {
    slots: Vec<Option<T>>,
    len: usize,
}

type Conns = Slots<Conn>;

impl<T> Default for Slots<T> {
    fn default() -> Self {
        Slots {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slots<T> {
    fn get(&self, slot: &usize) -> Option<&T> {
        self.slots.get(*slot).and_then(Option::as_ref)
    }

    fn get_mut(&mut self, slot: &usize) -> Option<&mut T> {
        self.slots.get_mut(*slot).and_then(Option::as_mut)
    }

    fn insert(&mut self, slot: usize, c: T) {
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || None);
        }
        if self.slots[slot].replace(c).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, slot: &usize) {
        if self.slots.get_mut(*slot).and_then(Option::take).is_some() {
            self.len -= 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What writing frames reuses from one session to the next.
#[derive(Default)]
struct Scratch {
    /// Frames taken from an outbox.
    frames: Vec<Bytes>,
    /// The time of this pass: read once, not per outbox drained.
    now: Option<Instant>,
    /// What this pass drained, for the metrics once the pass is over.
    tally: DrainTally,
    /// The last datagram built: (frame, header, datagram). A frame routed to
    /// many subscribers is one datagram for all of those whose session has
    /// the same header (nearly all: browsers open the session on stream 0).
    datagram: Option<(Bytes, Bytes, Bytes)>,
}

/// One QUIC connection and what HTTP/3 and WebTransport need of it.
struct Conn {
    generation: u64,
    q: quinn_proto::Connection,
    /// Whether it is in `dirty`.
    is_dirty: bool,
    /// Whether it is in `blocked`.
    is_blocked: bool,
    /// The deadline last put on the timer heap.
    timer: Option<Instant>,
    /// Our HTTP/3 control stream, once the handshake is done.
    h3_control: Option<StreamId>,
    /// Streams the peer opened, by what they turned out to carry.
    inbound: HashMap<StreamId, Inbound>,
    /// The WebTransport session, once a CONNECT was accepted.
    session: Option<Session>,
    /// When to close the connection (a session closing, or a refused request).
    close_at: Option<(Instant, VarInt, Bytes)>,
    /// Until its WebTransport session is accepted: when the connection is
    /// closed if none has been (the handshake timeout, from the QUIC accept).
    connect_by: Option<Instant>,
    /// Its place among connections in their handshake, handed to the
    /// session's task with the session.
    handshake: Option<crate::slots::Handshake>,
    /// Fires if that place goes to a newer connection.
    evicted: Arc<crate::accept::EvictSignal>,
}

/// Closes a QUIC connection whose handshaking slot went to a newer one:
/// through the engine before its session exists, through the session's
/// task after.
struct QuicEvict {
    signal: Arc<crate::accept::EvictSignal>,
    commands: mpsc::UnboundedSender<Command>,
    key: std::sync::OnceLock<SessionKey>,
}

impl crate::slots::Evict for QuicEvict {
    fn evict(&self) {
        crate::slots::Evict::evict(&*self.signal);
        if let Some(key) = self.key.get() {
            let _ = self.commands.send(Command::Evict { key: *key });
        }
    }
}

/// A stream the peer opened.
enum Inbound {
    /// Its first bytes, until they say what it is.
    Header { bytes: Vec<u8>, bidi: bool },
    /// HTTP/3 control, QPACK or anything else we read and ignore.
    Ignored,
    /// The CONNECT request stream after the request: capsules, ignored
    /// until it ends, which ends the session.
    Connect,
    /// A media frame on a unidirectional stream, being collected.
    Media { bytes: BytesMut },
    /// The session's control stream.
    Control { decoder: StreamDecoder },
}

/// An established WebTransport session on a connection.
struct Session {
    /// The CONNECT stream: its id is the session id.
    connect: StreamId,
    tx: mpsc::Sender<Incoming>,
    /// What could not go into `tx` yet.
    pending: VecDeque<Incoming>,
    /// Streams left unread while `pending` is full.
    stalled: Vec<StreamId>,
    /// The stream type and session id in front of every stream we open.
    uni_header: Bytes,
    /// The quarter stream id in front of every datagram.
    datagram_header: Bytes,
    /// Our side of the control stream, once the peer opened it.
    control: Option<StreamId>,
    /// Control bytes waiting for the control stream or for credit.
    control_queue: VecDeque<Write>,
    /// Media frames waiting for the peer to allow another stream.
    media_queue: VecDeque<(Bytes, i32)>,
    /// Streams whose bytes QUIC has not all taken yet.
    writing: HashMap<StreamId, Write>,
    /// Media streams the peer has open now.
    media_streams_open: usize,
    /// Whether a second bidirectional stream was already refused.
    extra_bidi_refused: bool,
    /// Whether the control stream was given its priority.
    control_prioritized: bool,
    outbox: Option<Arc<Outbox>>,
    /// The session's close reason and notice (from its task).
    close: Option<Arc<ExternalClose>>,
    /// Whether the session's waker has it queued in `ready`.
    queued: Arc<AtomicBool>,
    /// Frames in the outbox were left there because QUIC holds
    /// [`MAX_MEDIA_IN_FLIGHT`] already.
    backlogged: bool,
    /// Media frames sent so far: older frames first among equals.
    sent: u32,
    sampled: Option<crate::wt::PathSample>,
    closing: bool,
    /// The close capsule waiting for the control stream to be acknowledged:
    /// code, reason, when it goes anyway, and the earliest it may go.
    capsule: Option<(u32, String, Instant, Instant)>,
    /// The largest frame the session accepts now: the Hello limit until its
    /// Welcome is queued, then `max_frame_bytes` (set by the session's task).
    frame_limit: Arc<AtomicUsize>,
    /// The limit QUIC's receive window was last sized for.
    window_for: usize,
    /// Bytes held in media streams not yet complete.
    partial: usize,
    /// Bytes of frames handed towards the session's task and not yet taken by it.
    queued_bytes: Arc<AtomicUsize>,
}

/// What a session may hold of media frames still arriving, and of frames
/// waiting for its task, in frames of the size in force: 32 KiB before Hello,
/// 1 MiB after with the default 256 KiB frames (PROTOCOL.md §11.5).
pub const BUDGET_FRAMES: usize = 4;

impl Session {
    /// The largest frame accepted now.
    fn limit(&self) -> usize {
        self.frame_limit.load(Ordering::Acquire)
    }

    /// What partial media streams, and frames queued for the task, may hold now.
    fn budget(&self) -> usize {
        BUDGET_FRAMES * self.limit()
    }

    /// True while the session's task has more waiting than it may.
    fn task_behind(&self) -> bool {
        self.pending.len() >= MAX_PENDING_INCOMING
            || self.queued_bytes.load(Ordering::Acquire) >= self.budget()
    }
}

/// The unidirectional stream header of a session on CONNECT stream 0
/// (every browser's first session): stream type 0x54, session 0.
const UNI_HEADER_STREAM_0: [u8; 3] = [0x40, 0x54, 0x00];

/// The datagram header of a session on CONNECT stream 0: quarter stream id 0.
const DATAGRAM_HEADER_STREAM_0: [u8; 1] = [0x00];

/// `header` as bytes, static when it is the common one: cloned for every
/// frame sent, a static header costs no reference counting.
fn shared_header(header: Vec<u8>, common: &'static [u8]) -> Bytes {
    if header == common {
        Bytes::from_static(common)
    } else {
        Bytes::from(header)
    }
}

impl Session {
    /// A session on the CONNECT stream `connect`, delivering to `tx`.
    fn new(
        connect: StreamId,
        tx: mpsc::Sender<Incoming>,
        queued: Arc<AtomicBool>,
        frame_limit: Arc<AtomicUsize>,
        queued_bytes: Arc<AtomicUsize>,
    ) -> Self {
        let mut uni_header = Vec::new();
        wtp::StreamUni::WEBTRANSPORT.encode(&mut uni_header);
        wtp::VarInt::from_u64(VarInt::from(connect).into_inner())
            .unwrap_or(wtp::VarInt::MAX)
            .encode(&mut uni_header);
        let mut datagram_header = Vec::new();
        wtp::VarInt::from_u64(quarter_id(connect))
            .unwrap_or(wtp::VarInt::MAX)
            .encode(&mut datagram_header);
        Session {
            connect,
            tx,
            pending: VecDeque::new(),
            stalled: Vec::new(),
            uni_header: shared_header(uni_header, &UNI_HEADER_STREAM_0),
            datagram_header: shared_header(datagram_header, &DATAGRAM_HEADER_STREAM_0),
            control: None,
            control_queue: VecDeque::new(),
            media_queue: VecDeque::new(),
            writing: HashMap::new(),
            media_streams_open: 0,
            extra_bidi_refused: false,
            control_prioritized: false,
            outbox: None,
            close: None,
            queued,
            backlogged: false,
            sent: 0,
            capsule: None,
            sampled: None,
            closing: false,
            window_for: 0,
            partial: 0,
            frame_limit,
            queued_bytes,
        }
    }
}

/// Bytes on their way into a stream.
struct Write {
    chunks: Vec<Bytes>,
    finish: bool,
}

impl Engine {
    fn next_timer(&mut self) -> Option<Instant> {
        while let Some(Reverse((at, slot, generation))) = self.timers.peek().copied() {
            let live = self
                .conns
                .get(&slot)
                .is_some_and(|c| c.generation == generation && c.timer == Some(at));
            if live {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    fn mark_dirty(&mut self, slot: usize) {
        if let Some(c) = self.conns.get_mut(&slot)
            && !c.is_dirty
        {
            c.is_dirty = true;
            self.dirty.push(slot);
        }
    }

    /// Reads every datagram the socket has and hands them to QUIC.
    fn receive(&mut self, bufs: &mut [Vec<u8>]) {
        let mut metas = [quinn_udp::RecvMeta::default(); quinn_udp::BATCH_SIZE];
        let mut response = Vec::new();
        let mut slices: Vec<IoSliceMut<'_>> = bufs
            .iter_mut()
            .map(|b| IoSliceMut::new(&mut b[..]))
            .collect();
        loop {
            let n = {
                let (socket, udp) = (&self.socket, &self.udp);
                match socket.try_io(Interest::READABLE, || {
                    udp.recv(socket.into(), &mut slices, &mut metas)
                }) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                    Err(e) => {
                        // ICMP errors from one peer show up here; the next read goes on.
                        debug!(error = %e, "WebTransport socket receive error");
                        continue;
                    }
                }
            };
            let now = Instant::now();
            for (meta, buf) in metas.iter().zip(slices.iter()).take(n) {
                let mut data: BytesMut = buf[..meta.len].into();
                let stride = meta.stride.max(1);
                while !data.is_empty() {
                    let datagram = data.split_to(stride.min(data.len()));
                    let ecn = meta
                        .ecn
                        .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
                    match self.endpoint.handle(
                        now,
                        meta.addr,
                        meta.dst_ip,
                        ecn,
                        datagram,
                        &mut response,
                    ) {
                        Some(DatagramEvent::ConnectionEvent(ch, event)) => {
                            if let Some(c) = self.conns.get_mut(&ch.0) {
                                c.q.handle_event(event);
                                self.mark_dirty(ch.0);
                            }
                        }
                        Some(DatagramEvent::NewConnection(incoming)) => {
                            let evict = Arc::new(QuicEvict {
                                signal: crate::accept::EvictSignal::new(),
                                commands: self.commands_tx.clone(),
                                key: std::sync::OnceLock::new(),
                            });
                            let slot = if self.stopping {
                                None
                            } else {
                                let ip = incoming.remote_address().ip();
                                let slot = self.state.slots.handshake(ip, evict.clone());
                                if slot.is_none() {
                                    self.state.metrics.refused("handshaking_per_address");
                                }
                                slot
                            };
                            match slot {
                                None => {
                                    let t = self.endpoint.refuse(incoming, &mut response);
                                    self.send_transmit(&t, &mut response);
                                }
                                Some(slot) => {
                                    match self.endpoint.accept(incoming, now, &mut response, None) {
                                        Ok((ch, q)) => self.add(ch, q, slot, evict),
                                        Err(e) => {
                                            if let Some(t) = e.response {
                                                self.send_transmit(&t, &mut response);
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        Some(DatagramEvent::Response(t)) => self.send_transmit(&t, &mut response),
                        None => {}
                    }
                    response.clear();
                }
            }
        }
    }

    fn add(
        &mut self,
        ch: ConnectionHandle,
        q: quinn_proto::Connection,
        handshake: crate::slots::Handshake,
        evict: Arc<QuicEvict>,
    ) {
        let generation = self.next_generation;
        self.next_generation += 1;
        let _ = evict.key.set(SessionKey {
            slot: ch.0,
            generation,
        });
        let connect_by =
            Instant::now() + Duration::from_millis(self.state.config.handshake_timeout_ms as u64);
        self.conns.insert(
            ch.0,
            Conn {
                generation,
                q,
                is_dirty: false,
                is_blocked: false,
                timer: None,
                h3_control: None,
                inbound: HashMap::new(),
                session: None,
                close_at: None,
                connect_by: Some(connect_by),
                handshake: Some(handshake),
                evicted: evict.signal.clone(),
            },
        );
        self.mark_dirty(ch.0);
    }

    /// Sends a packet the endpoint built outside any connection (a refusal,
    /// a stateless reset, a version negotiation) right away, through the
    /// same path as the connections' packets.
    fn send_transmit(&mut self, t: &quinn_proto::Transmit, buf: &mut Vec<u8>) {
        let buf = std::mem::replace(buf, self.out.buffer());
        self.out.push(crate::sendmmsg::Queued::new(t, buf));
        self.out.flush(&self.socket, &self.udp);
    }

    /// Handles timers that are due.
    fn expire(&mut self, now: Instant) {
        while let Some(Reverse((at, slot, generation))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns.get_mut(&slot) else {
                continue;
            };
            if c.generation != generation || c.timer != Some(at) {
                continue;
            }
            c.timer = None;
            match deadline(c) {
                // Nearly every expiry: the deadline registered earlier has
                // since moved later (each packet sent pushes the loss and
                // idle timers out). Registering it anew is all there is to
                // do; polling the connection would find nothing.
                Some(at) if at > now => {
                    c.timer = Some(at);
                    self.timers.push(Reverse((at, slot, generation)));
                    continue;
                }
                None => continue,
                Some(_) => {}
            }
            let capsule_due = c
                .session
                .as_ref()
                .and_then(|s| s.capsule.as_ref())
                .is_some_and(|(_, _, at, _)| *at <= now);
            if c.connect_by.is_some_and(|at| at <= now) && c.session.is_none() {
                c.connect_by = None;
                self.state.metrics.refused("webtransport_no_session");
                c.q.close(
                    now,
                    VarInt::from_u32(H3_NO_ERROR),
                    Bytes::from_static(b"no WebTransport session within the handshake timeout"),
                );
            }
            let close_due = c.close_at.as_ref().is_some_and(|(when, _, _)| *when <= now);
            let quic_due = c.q.poll_timeout().is_some_and(|t| t <= now);
            if capsule_due {
                send_capsule(c);
            }
            if close_due && let Some((_, code, reason)) = c.close_at.take() {
                c.q.close(now, code, reason);
            }
            if quic_due {
                c.q.handle_timeout(now);
            }
            self.mark_dirty(slot);
        }
    }

    fn command(&mut self, command: Command) {
        let key = match &command {
            Command::Attach { key, .. } | Command::Close { key, .. } | Command::Evict { key } => {
                *key
            }
        };
        let Some(c) = self.conns.get_mut(&key.slot) else {
            if let Command::Attach { close, .. } = command {
                close.done.notify_one();
            }
            return;
        };
        if c.generation != key.generation {
            if let Command::Attach { close, .. } = command {
                close.done.notify_one();
            }
            return;
        }
        match command {
            Command::Attach { outbox, close, .. } => {
                let Some(s) = c.session.as_mut() else {
                    return;
                };
                s.outbox = Some(outbox);
                s.close = Some(close);
                // Frames queued before the engine knew the outbox.
                write_from_outbox(c, &self.state, &mut self.scratch);
            }
            Command::Close { code, reason, .. } => close_session(c, code, reason),
            Command::Evict { .. } => {
                if c.session.is_none() {
                    c.connect_by = None;
                    self.state.metrics.refused("handshaking_evicted");
                    c.q.close(
                        Instant::now(),
                        VarInt::from_u32(H3_NO_ERROR),
                        Bytes::from_static(
                            b"the server has its most connections in their handshake; connect again",
                        ),
                    );
                }
            }
        }
        self.mark_dirty(key.slot);
    }

    /// Drains the outboxes of the sessions whose writer was woken.
    fn drain_ready(&mut self) {
        // Swapped with a list kept for the purpose, so neither side
        // allocates again once both have grown to the room's size.
        std::mem::swap(
            &mut self.ready_spare,
            &mut *self.ready.keys.lock().unwrap_or_else(|p| p.into_inner()),
        );
        for key in self.ready_spare.drain(..) {
            let Some(c) = self.conns.get_mut(&key.slot) else {
                continue;
            };
            if c.generation != key.generation {
                continue;
            }
            if let Some(s) = c.session.as_ref() {
                s.queued.store(false, Ordering::Release);
            }
            write_from_outbox(c, &self.state, &mut self.scratch);
            if !c.is_dirty {
                c.is_dirty = true;
                self.dirty.push(key.slot);
            }
        }
    }

    /// Moves queued frames into the sessions' channels as room frees up.
    fn flush_pending(&mut self) {
        if self.blocked.is_empty() {
            return;
        }
        let blocked = std::mem::take(&mut self.blocked);
        for slot in blocked {
            let Some(c) = self.conns.get_mut(&slot) else {
                continue;
            };
            c.is_blocked = false;
            let Some(s) = c.session.as_mut() else {
                continue;
            };
            while let Some(item) = s.pending.pop_front() {
                match s.tx.try_send(item) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(item)) => {
                        s.pending.push_front(item);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        s.pending.clear();
                        break;
                    }
                }
            }
            let stalled = if !s.task_behind() {
                std::mem::take(&mut s.stalled)
            } else {
                Vec::new()
            };
            for id in stalled {
                read_stream(c, id, &self.config);
            }
            // Retried while the task is behind: frames wait in `pending`, or
            // streams were left unread because what the task has queued
            // reached its budget (it drains without telling the engine).
            if c.session
                .as_ref()
                .is_some_and(|s| !s.pending.is_empty() || !s.stalled.is_empty())
            {
                c.is_blocked = true;
                self.blocked.push(slot);
            }
            if !c.is_dirty {
                c.is_dirty = true;
                self.dirty.push(slot);
            }
        }
    }

    /// Polls every connection that had something happen: its endpoint and
    /// application events, then its packets.
    fn process_dirty(&mut self) {
        let now = *self.scratch.now.get_or_insert_with(Instant::now);
        let mut i = 0;
        // Handling events may dirty more connections (never others here, but
        // the loop does not rely on it).
        while i < self.dirty.len() {
            let slot = self.dirty[i];
            i += 1;
            self.process(slot, now);
        }
        self.dirty.clear();
        self.out.flush(&self.socket, &self.udp);
    }

    fn process(&mut self, slot: usize, now: Instant) {
        let max_segments = self.out.max_segments(&self.udp);
        let Some(c) = self.conns.get_mut(&slot) else {
            return;
        };
        c.is_dirty = false;
        let ch = ConnectionHandle(slot);
        loop {
            let mut progressed = false;
            while let Some(ev) = c.q.poll_endpoint_events() {
                progressed = true;
                if let Some(back) = self.endpoint.handle_event(ch, ev) {
                    c.q.handle_event(back);
                }
            }
            while let Some(ev) = c.q.poll() {
                progressed = true;
                if let Some(new) =
                    handle_event(c, ev, &self.config, slot, &self.commands_tx, &self.ready)
                {
                    (self.on_session)(new);
                }
            }
            if !progressed {
                break;
            }
        }
        if c.session.as_ref().is_some_and(|s| {
            s.backlogged && s.media_queue.len() + s.writing.len() < MAX_MEDIA_IN_FLIGHT
        }) {
            write_from_outbox(c, &self.state, &mut self.scratch);
        }
        if let Some(s) = c.session.as_mut() {
            sample_path(&c.q, s, now);
            if (!s.pending.is_empty() || !s.stalled.is_empty()) && !c.is_blocked {
                c.is_blocked = true;
                self.blocked.push(slot);
            }
        }
        // Sent together with the other connections' packets, after the pass
        // (or once a batch is full).
        loop {
            let mut buf = self.out.buffer();
            match c.q.poll_transmit(now, max_segments, &mut buf) {
                Some(t) => {
                    if self.out.push(crate::sendmmsg::Queued::new(&t, buf)) {
                        self.out.flush(&self.socket, &self.udp);
                    }
                }
                None => {
                    self.out.unused(buf);
                    break;
                }
            }
        }
        if c.q.is_drained() {
            // What an operator needs to see whether a path was the trouble.
            let st = c.q.stats();
            debug!(
                sent_packets = st.udp_tx.datagrams,
                send_calls = st.udp_tx.ios,
                received_packets = st.udp_rx.datagrams,
                acks_received = st.frame_rx.acks,
                lost_packets = st.path.lost_packets,
                rtt_ms = st.path.rtt.as_secs_f64() * 1000.0,
                "QUIC connection closed"
            );
            if let Some(close) = c.session.as_ref().and_then(|s| s.close.as_ref()) {
                close.done.notify_one();
            }
            self.conns.remove(&slot);
            return;
        }
        let deadline = deadline(c);
        // Deadlines mostly move later (every packet pushes the idle timeout
        // out); an earlier registered one just fires early and is renewed,
        // so the heap only grows when a deadline moves earlier.
        if let Some(at) = deadline
            && c.timer.is_none_or(|t| at < t)
        {
            c.timer = Some(at);
            self.timers.push(Reverse((at, slot, c.generation)));
        }
    }
}

/// The connection's next deadline: QUIC's own timers, the connection's
/// close, or the session's close capsule, whichever comes first.
fn deadline(c: &mut Conn) -> Option<Instant> {
    [
        c.q.poll_timeout(),
        c.close_at.as_ref().map(|x| x.0),
        c.session
            .as_ref()
            .and_then(|s| s.capsule.as_ref())
            .map(|x| x.2),
        c.connect_by.filter(|_| c.session.is_none()),
    ]
    .into_iter()
    .flatten()
    .min()
}

/// Reacts to one QUIC event; returns a session to start when a CONNECT was accepted.
fn handle_event(
    c: &mut Conn,
    ev: Event,
    config: &EngineConfig,
    slot: usize,
    commands: &mpsc::UnboundedSender<Command>,
    ready: &Arc<Ready>,
) -> Option<NewSession> {
    match ev {
        Event::Connected => {
            // Our HTTP/3 SETTINGS say WebTransport, datagrams and extended CONNECT are on.
            if let Some(id) = c.q.streams().open(Dir::Uni) {
                let mut settings = wtp::Settings::default();
                settings.enable_webtransport(1);
                let mut buf = Vec::new();
                settings.encode(&mut buf);
                let _ = c.q.send_stream(id).write(&buf);
                c.h3_control = Some(id);
            }
            None
        }
        Event::ConnectionLost { reason } => {
            debug!(%reason, "WebTransport connection lost");
            if let Some(s) = c.session.as_mut() {
                s.pending.push_back(Incoming::Closed);
                s.media_queue.clear();
                s.writing.clear();
                s.control_queue.clear();
                s.closing = true;
                // Nothing more can be written: the session's task need not wait.
                if let Some(close) = &s.close {
                    close.done.notify_one();
                }
            }
            None
        }
        Event::Stream(StreamEvent::Opened { dir }) => {
            let mut new = None;
            while let Some(id) = c.q.streams().accept(dir) {
                c.inbound.insert(
                    id,
                    Inbound::Header {
                        bytes: Vec::new(),
                        bidi: dir == Dir::Bi,
                    },
                );
                if let Some(n) = read_stream_accepting(c, id, config, slot, commands, ready) {
                    new = Some(n);
                }
            }
            new
        }
        Event::Stream(StreamEvent::Readable { id }) => {
            read_stream_accepting(c, id, config, slot, commands, ready)
        }
        Event::Stream(StreamEvent::Writable { id }) => {
            if let Some(s) = c.session.as_mut() {
                if Some(id) == s.control {
                    write_control(&mut c.q, s);
                } else if let Some(mut w) = s.writing.remove(&id)
                    && !write_pending(&mut c.q, id, &mut w)
                {
                    s.writing.insert(id, w);
                }
            }
            None
        }
        Event::Stream(StreamEvent::Available { dir: Dir::Uni }) => {
            if let Some(s) = c.session.as_mut() {
                while let Some((frame, priority)) = s.media_queue.front() {
                    if !open_media_stream(&mut c.q, s, &frame.clone(), *priority) {
                        break;
                    }
                    s.media_queue.pop_front();
                }
            }
            None
        }
        Event::Stream(StreamEvent::Finished { id }) => {
            // The peer has all of the control stream: the close capsule may
            // go, once its application has had a moment to read it.
            if let Some(s) = c.session.as_mut()
                && s.control == Some(id)
                && let Some((_, _, at, earliest)) = s.capsule.as_mut()
            {
                *at = (*at).min(*earliest);
            }
            None
        }
        Event::Stream(StreamEvent::Stopped { id, .. }) => {
            if let Some(s) = c.session.as_mut() {
                s.writing.remove(&id);
            }
            None
        }
        Event::DatagramReceived => {
            while let Some(d) = c.q.datagrams().recv() {
                let Some(s) = c.session.as_mut() else {
                    continue;
                };
                let mut rest = d.clone();
                let Ok(quarter) = wtp::VarInt::decode(&mut rest) else {
                    continue;
                };
                // A datagram that is not a media frame is discarded: datagrams are too
                // unreliable to tie the session's fate to (PROTOCOL.md §3.3).
                let frame = d.slice(d.len() - rest.remaining()..);
                if quarter.into_inner() == quarter_id(s.connect)
                    && frame.first() == Some(&FRAME_MEDIA)
                    && MediaFrame::parse(frame.clone()).is_ok()
                    && s.pending.is_empty()
                    && !s.task_behind()
                {
                    let len = frame.len();
                    s.queued_bytes.fetch_add(len, Ordering::AcqRel);
                    // Datagrams may be lost; a task that is behind loses them.
                    if s.tx.try_send(Incoming::Frame(frame)).is_err() {
                        s.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                    }
                }
            }
            None
        }
        Event::Stream(_) | Event::HandshakeDataReady | Event::DatagramsUnblocked => None,
    }
}

/// The quarter stream id of a session (RFC 9297): its CONNECT stream's id over four.
fn quarter_id(connect: StreamId) -> u64 {
    VarInt::from(connect).into_inner() / 4
}

fn read_stream_accepting(
    c: &mut Conn,
    id: StreamId,
    config: &EngineConfig,
    slot: usize,
    commands: &mpsc::UnboundedSender<Command>,
    ready: &Arc<Ready>,
) -> Option<NewSession> {
    let connect = read_stream(c, id, config);
    let request = connect?;
    // A CONNECT request arrived complete on `id`.
    let accepted =
        c.session.is_none() && request.url.path() == config.path && request.url.scheme() == "https";
    let status = if accepted {
        wtp::http::StatusCode::OK
    } else if c.session.is_some() {
        wtp::http::StatusCode::TOO_MANY_REQUESTS
    } else {
        wtp::http::StatusCode::NOT_FOUND
    };
    let mut buf = Vec::new();
    if wtp::ConnectResponse::new(status).encode(&mut buf).is_err() {
        return None;
    }
    let mut st = c.q.send_stream(id);
    let _ = st.write(&buf);
    if !accepted {
        let _ = st.finish();
        c.inbound.insert(id, Inbound::Ignored);
        return None;
    }
    c.inbound.insert(id, Inbound::Connect);
    let generation = c.generation;
    let key = SessionKey { slot, generation };
    let (tx, rx) = mpsc::channel(INCOMING_CHANNEL);
    let queued = Arc::new(AtomicBool::new(false));
    let writer: Arc<dyn Wake> = Arc::new(SessionWake {
        key,
        queued: queued.clone(),
        ready: ready.clone(),
    });
    let frame_limit = Arc::new(AtomicUsize::new(
        convene_protocol::limits::max::MAX_HELLO_FRAME_BYTES as usize,
    ));
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    c.session = Some(Session::new(
        id,
        tx,
        queued,
        frame_limit.clone(),
        queued_bytes.clone(),
    ));
    c.connect_by = None;
    // Streams that arrived before the response (none from well-behaved
    // peers) are read now that the session exists.
    let waiting: Vec<StreamId> = c
        .inbound
        .iter()
        .filter(|(_, s)| matches!(s, Inbound::Header { .. }))
        .map(|(id, _)| *id)
        .collect();
    for w in waiting {
        read_stream(c, w, config);
    }
    Some(NewSession {
        key,
        peer: c.q.remote_address(),
        incoming: rx,
        commands: commands.clone(),
        writer,
        frame_limit,
        queued_bytes,
        handshake: c.handshake.take(),
        evicted: c.evicted.clone(),
    })
}

/// Reads what a peer's stream has; returns a CONNECT request when one is complete.
fn read_stream(
    c: &mut Conn,
    id: StreamId,
    config: &EngineConfig,
) -> Option<Box<wtp::ConnectRequest>> {
    if let Some(s) = c.session.as_mut()
        && s.task_behind()
    {
        if !s.stalled.contains(&id) {
            s.stalled.push(id);
        }
        return None;
    }
    let mut state = c.inbound.remove(&id)?;
    let mut request = None;
    let mut ended = false;
    let mut keep = true;
    let mut stop_code = VarInt::from_u32(H3_STREAM_CREATION_ERROR);
    {
        let mut rs = c.q.recv_stream(id);
        let mut chunks = match rs.read(true) {
            Ok(ch) => ch,
            Err(_) => {
                // The stream is gone: what it held is let go.
                forget_inbound(c.session.as_mut(), state);
                return None;
            }
        };
        loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => {
                    match feed(&mut state, chunk.bytes, c.session.as_mut(), config, id) {
                        Fed::More => {}
                        Fed::Request(r) => request = Some(r),
                        Fed::Drop => {
                            keep = false;
                            break;
                        }
                        Fed::Shed => {
                            stop_code = VarInt::from_u64(wtp::error_to_http3(0))
                                .unwrap_or(VarInt::from_u32(H3_STREAM_CREATION_ERROR));
                            keep = false;
                            break;
                        }
                    }
                    if c.session.as_ref().is_some_and(Session::task_behind) {
                        if let Some(s) = c.session.as_mut()
                            && !s.stalled.contains(&id)
                        {
                            s.stalled.push(id);
                        }
                        break;
                    }
                }
                Ok(None) => {
                    ended = true;
                    break;
                }
                Err(quinn_proto::ReadError::Blocked) => break,
                Err(quinn_proto::ReadError::Reset(_)) => {
                    ended = true;
                    // A reset media stream is not an error: the partial frame is discarded.
                    if let Inbound::Media { .. } = state {
                        forget_inbound(c.session.as_mut(), state);
                        state = Inbound::Ignored;
                    }
                    break;
                }
            }
        }
        let _ = chunks.finalize();
    }
    if !keep {
        let _ = c.q.recv_stream(id).stop(stop_code);
        return request;
    }
    if ended {
        finish_inbound(c.session.as_mut(), state);
        return request;
    }
    c.inbound.insert(id, state);
    request
}

/// What feeding bytes to a stream's reader gave.
enum Fed {
    More,
    Request(Box<wtp::ConnectRequest>),
    /// The stream is of no use: stop it.
    Drop,
    /// The session's partial media streams hold their budget: this one's
    /// frame is discarded and the stream stopped, as if its sender had
    /// reset it (PROTOCOL.md §3.3).
    Shed,
}

/// Lets go of what a stream that will not complete held.
fn forget_inbound(session: Option<&mut Session>, state: Inbound) {
    if let (Some(s), Inbound::Media { bytes }) = (session, state) {
        s.media_streams_open = s.media_streams_open.saturating_sub(1);
        s.partial -= bytes.len();
    }
}

fn push(s: &mut Session, item: Incoming) {
    if let Incoming::Frame(f) = &item {
        s.queued_bytes.fetch_add(f.len(), Ordering::AcqRel);
    }
    if s.pending.is_empty() {
        match s.tx.try_send(item) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(item)) => s.pending.push_back(item),
        }
    } else {
        s.pending.push_back(item);
    }
}

fn violation(s: &mut Session, code: ErrorCode, text: &str) {
    push(
        s,
        Incoming::Violation(ProtocolError::new(code, text.to_string())),
    );
}

fn feed(
    state: &mut Inbound,
    bytes: Bytes,
    session: Option<&mut Session>,
    config: &EngineConfig,
    id: StreamId,
) -> Fed {
    match state {
        Inbound::Ignored | Inbound::Connect => Fed::More,
        Inbound::Media { bytes: buf } => {
            let Some(s) = session else {
                *state = Inbound::Ignored;
                return Fed::Drop;
            };
            let limit = s.limit();
            if buf.len() + bytes.len() > limit {
                s.media_streams_open = s.media_streams_open.saturating_sub(1);
                s.partial -= buf.len();
                violation(
                    s,
                    ErrorCode::FrameTooLarge,
                    &format!("a media stream is longer than the maximum frame size ({limit})"),
                );
                *state = Inbound::Ignored;
                return Fed::Drop;
            }
            if s.partial + bytes.len() > s.budget() {
                s.media_streams_open = s.media_streams_open.saturating_sub(1);
                s.partial -= buf.len();
                debug!(
                    held = s.partial,
                    "media streams hold their budget: one is stopped and its frame discarded"
                );
                *state = Inbound::Ignored;
                return Fed::Shed;
            }
            s.partial += bytes.len();
            buf.extend_from_slice(&bytes);
            Fed::More
        }
        Inbound::Control { decoder } => {
            let Some(s) = session else {
                return Fed::More;
            };
            decoder.set_max_frame_bytes(s.limit());
            decoder.push(&bytes);
            loop {
                match decoder.next_frame() {
                    Ok(Some(f)) => {
                        if f.first() == Some(&FRAME_MEDIA) {
                            violation(
                                s,
                                ErrorCode::WrongStream,
                                "media frames do not travel on the control stream",
                            );
                        } else {
                            push(s, Incoming::Frame(f));
                        }
                    }
                    Ok(None) => return Fed::More,
                    Err(e) => {
                        push(s, Incoming::Violation(e));
                        *state = Inbound::Ignored;
                        return Fed::More;
                    }
                }
            }
        }
        Inbound::Header { bytes: head, bidi } => {
            head.extend_from_slice(&bytes);
            let bidi = *bidi;
            let mut view = &head[..];
            let Ok(kind) = wtp::VarInt::decode(&mut view) else {
                return Fed::More;
            };
            let kind = kind.into_inner();
            if bidi && kind == wtp::Frame::HEADERS.0.into_inner() {
                // An HTTP/3 request: wait for the whole HEADERS frame.
                let mut all = &head[..];
                return match wtp::ConnectRequest::decode(&mut all) {
                    Ok(r) => {
                        *state = Inbound::Connect;
                        Fed::Request(Box::new(r))
                    }
                    Err(wtp::ConnectError::UnexpectedEnd) if head.len() < MAX_HEADER_BYTES => {
                        Fed::More
                    }
                    Err(e) => {
                        debug!(error = %e, "bad HTTP/3 request");
                        Fed::Drop
                    }
                };
            }
            let wt = (bidi && kind == WT_BIDI_SIGNAL)
                || (!bidi && kind == wtp::StreamUni::WEBTRANSPORT.0.into_inner());
            if !wt {
                // HTTP/3 control and QPACK streams are read and ignored (we
                // never use QPACK's dynamic table); anything else is refused.
                let h3 = !bidi
                    && (kind == wtp::StreamUni::CONTROL.0.into_inner()
                        || kind == wtp::StreamUni::QPACK_ENCODER.0.into_inner()
                        || kind == wtp::StreamUni::QPACK_DECODER.0.into_inner());
                *state = Inbound::Ignored;
                return if h3 { Fed::More } else { Fed::Drop };
            }
            let Ok(session_id) = wtp::VarInt::decode(&mut view) else {
                return Fed::More;
            };
            let Some(s) = session else {
                return Fed::Drop;
            };
            if session_id.into_inner() != VarInt::from(s.connect).into_inner() {
                return Fed::Drop;
            }
            let rest = Bytes::copy_from_slice(view);
            if bidi {
                if s.control.is_some() {
                    if !s.extra_bidi_refused {
                        s.extra_bidi_refused = true;
                        violation(
                            s,
                            ErrorCode::WrongStream,
                            "only one bidirectional stream, the control stream, is allowed",
                        );
                    }
                    *state = Inbound::Ignored;
                    return Fed::Drop;
                }
                // The first bidirectional stream is the control stream; it goes
                // ahead of every media stream.
                s.control = Some(id);
                *state = Inbound::Control {
                    decoder: StreamDecoder::new(s.limit()),
                };
            } else {
                if s.media_streams_open >= config.max_streams {
                    violation(
                        s,
                        ErrorCode::TooManyStreams,
                        &format!("more than {} streams open at once", config.max_streams),
                    );
                    *state = Inbound::Ignored;
                    return Fed::Drop;
                }
                s.media_streams_open += 1;
                *state = Inbound::Media {
                    bytes: BytesMut::new(),
                };
            }
            if rest.is_empty() {
                Fed::More
            } else {
                feed(state, rest, Some(s), config, id)
            }
        }
    }
}

/// A peer's stream ended (finished or reset): what it held is delivered.
fn finish_inbound(session: Option<&mut Session>, state: Inbound) {
    let Some(s) = session else {
        return;
    };
    match state {
        Inbound::Media { bytes } => {
            s.media_streams_open = s.media_streams_open.saturating_sub(1);
            s.partial -= bytes.len();
            if bytes.first() == Some(&FRAME_MEDIA) {
                push(s, Incoming::Frame(bytes.freeze()));
            } else if !bytes.is_empty() {
                violation(
                    s,
                    ErrorCode::WrongStream,
                    "a unidirectional stream must carry one media frame",
                );
            }
        }
        Inbound::Control { .. } | Inbound::Connect => push(s, Incoming::Closed),
        Inbound::Header { .. } | Inbound::Ignored => {}
    }
}

/// Writes what the control stream has queued, as far as QUIC takes it.
fn write_control(q: &mut quinn_proto::Connection, s: &mut Session) {
    let Some(id) = s.control else {
        return;
    };
    if !s.control_prioritized {
        // Control goes ahead of every media stream.
        let _ = q.send_stream(id).set_priority(stream_priority(3, 0));
        s.control_prioritized = true;
    }
    while let Some(mut w) = s.control_queue.pop_front() {
        if !write_pending(q, id, &mut w) {
            s.control_queue.push_front(w);
            return;
        }
    }
}

/// Writes `w` into stream `id`; true when all of it went (and the stream is
/// finished if asked), false when QUIC is out of credit.
fn write_pending(q: &mut quinn_proto::Connection, id: StreamId, w: &mut Write) -> bool {
    let written = write_chunks(q, id, &mut w.chunks, w.finish);
    w.chunks.drain(..written);
    w.chunks.is_empty()
}

/// Writes `chunks` into stream `id` until they are all in or QUIC takes no
/// more, and finishes the stream if asked once they are all in. Returns how
/// many chunks went in whole; the next one may have been advanced past what
/// went in. A stream that is gone takes them all: nothing is left to wait
/// for. Writing on until QUIC says `Blocked` matters: only that registers
/// the stream for the `Writable` event that resumes it.
fn write_chunks(
    q: &mut quinn_proto::Connection,
    id: StreamId,
    chunks: &mut [Bytes],
    finish: bool,
) -> usize {
    let mut st = q.send_stream(id);
    let mut done = 0;
    while done < chunks.len() {
        match st.write_chunks(&mut chunks[done..]) {
            Ok(written) => {
                done += written.chunks;
                if written.bytes == 0 {
                    return done;
                }
            }
            Err(quinn_proto::WriteError::Blocked) => return done,
            Err(_) => return chunks.len(),
        }
    }
    if finish {
        let _ = st.finish();
    }
    done
}

/// Takes what the session's outbox holds and hands it to QUIC: control
/// frames to the control stream, media as datagrams or streams; then, if
/// the session has ended, closes it. Leaves frames in the outbox while QUIC
/// holds [`MAX_MEDIA_IN_FLIGHT`] of this session's frames already.
fn write_from_outbox(c: &mut Conn, state: &AppState, scratch: &mut Scratch) {
    let Scratch {
        frames: batch,
        datagram,
        now,
        tally,
    } = scratch;
    let now = *now.get_or_insert_with(Instant::now);
    let Some(s) = c.session.as_mut() else {
        return;
    };
    if s.closing {
        return;
    }
    let Some(close) = s.close.as_ref() else {
        return;
    };
    // Read the close reason before draining: the session queues its last
    // words (Goodbye, Error) before setting the reason, so a drain after
    // this read sends them before the close.
    // Lock-free: read for every drain, set once when the session ends.
    let closing = close.reason.get().cloned();
    // Taken out while frames are written (the writes borrow the session),
    // and put back below: no reference count traffic per drain.
    let Some(outbox) = s.outbox.take() else {
        return;
    };
    s.backlogged = false;
    loop {
        if s.media_queue.len() + s.writing.len() >= MAX_MEDIA_IN_FLIGHT {
            s.backlogged = true;
            break;
        }
        let lanes = drain_batch(&outbox, batch, state, now, tally);
        if batch.is_empty() {
            break;
        }
        for (i, f) in batch.drain(..).enumerate() {
            let audio = i >= lanes.control && i < lanes.control + lanes.audio;
            if f.first() == Some(&FRAME_MEDIA) {
                s.sent = s.sent.wrapping_add(1);
                let priority = media_priority(&f, audio, s.sent);
                send_media(&mut c.q, s, f, audio, priority, datagram);
            } else {
                s.control_queue.push_back(Write {
                    chunks: vec![Bytes::copy_from_slice(&length_prefix(f.len())), f],
                    finish: false,
                });
            }
        }
        write_control(&mut c.q, s);
        if !lanes.more {
            break;
        }
    }
    s.outbox = Some(outbox);
    // Once the session's limit is raised (its Welcome is queued), QUIC's
    // receive window grows with it; the credit goes out with the Welcome.
    let limit = s.limit();
    if limit != s.window_for {
        s.window_for = limit;
        c.q.set_receive_window(
            VarInt::from_u64((BUDGET_FRAMES * limit) as u64).unwrap_or(VarInt::MAX),
        );
    }
    if let Some(reason) = closing {
        close_session(
            c,
            reason.webtransport_code(),
            reason.transport_reason().to_string(),
        );
    }
}

/// Ends the session: finishes the control stream and, once the peer has
/// everything on it (or after [`CAPSULE_WAIT`]), sends the close capsule.
/// The capsule waits because a peer that sees the session closed may stop
/// reading the control stream, and the session's last words (Goodbye, an
/// Error) are on it.
fn close_session(c: &mut Conn, code: u32, reason: String) {
    let Some(s) = c.session.as_mut() else {
        return;
    };
    if s.closing {
        return;
    }
    s.closing = true;
    if let Some(close) = &s.close {
        close.done.notify_one();
    }
    let now = Instant::now();
    s.capsule = Some((code, reason, now + CAPSULE_WAIT, now + CAPSULE_READ));
    if s.control.is_some() {
        s.control_queue.push_back(Write {
            chunks: Vec::new(),
            finish: true,
        });
        write_control(&mut c.q, s);
    } else {
        send_capsule(c);
    }
}

/// Sends the close capsule in a DATA frame on the CONNECT stream, and
/// closes the connection once it has had [`CLOSE_LINGER`] (or three round
/// trips) to arrive.
fn send_capsule(c: &mut Conn) {
    let Some((code, reason, _, _)) = c.session.as_mut().and_then(|s| s.capsule.take()) else {
        return;
    };
    let Some(connect) = c.session.as_ref().map(|s| s.connect) else {
        return;
    };
    let mut capsule = Vec::new();
    wtp::Capsule::CloseWebTransportSession {
        code,
        reason: reason.clone(),
    }
    .encode(&mut capsule);
    let mut frame = Vec::new();
    wtp::Frame::DATA.encode(&mut frame);
    wtp::VarInt::from_u32(capsule.len() as u32).encode(&mut frame);
    frame.extend_from_slice(&capsule);
    let mut st = c.q.send_stream(connect);
    let _ = st.write(&frame);
    let _ = st.finish();
    let linger = (c.q.rtt() * 3).max(CLOSE_LINGER);
    let code = VarInt::from_u64(wtp::error_to_http3(code)).unwrap_or(VarInt::MAX);
    c.close_at = Some((Instant::now() + linger, code, Bytes::from(reason)));
}

/// A media frame's stream priority (PROTOCOL.md §3.3): audio streams first,
/// then video key frames, then deltas; older frames first within each.
fn media_priority(frame: &Bytes, audio: bool, order: u32) -> i32 {
    let rank = if audio {
        2
    } else if frame.get(1).is_some_and(|flags| flags & 0x01 != 0) {
        1
    } else {
        0
    };
    stream_priority(rank, order)
}

/// Sends one media frame (PROTOCOL.md §3.3): audio as a datagram when it
/// fits, anything else on a unidirectional stream of its own.
fn send_media(
    q: &mut quinn_proto::Connection,
    s: &mut Session,
    frame: Bytes,
    audio: bool,
    priority: i32,
    last: &mut Option<(Bytes, Bytes, Bytes)>,
) {
    if audio
        && q.datagrams()
            .max_size()
            .is_some_and(|m| frame.len() + s.datagram_header.len() <= m)
    {
        let d = match last {
            Some((f, h, d))
                if f.as_ptr() == frame.as_ptr()
                    && f.len() == frame.len()
                    && *h == s.datagram_header =>
            {
                d.clone()
            }
            _ => {
                let mut d = BytesMut::with_capacity(s.datagram_header.len() + frame.len());
                d.extend_from_slice(&s.datagram_header);
                d.extend_from_slice(&frame);
                let d = d.freeze();
                *last = Some((frame.clone(), s.datagram_header.clone(), d.clone()));
                d
            }
        };
        // Refused only when the peer takes no datagrams: then a stream carries it.
        if q.datagrams().send(d, true).is_ok() {
            return;
        }
    }
    if !s.media_queue.is_empty() || !open_media_stream(q, s, &frame, priority) {
        s.media_queue.push_back((frame, priority));
    }
}

/// Opens a stream for one frame and writes it; false when the peer allows
/// no more streams now.
fn open_media_stream(
    q: &mut quinn_proto::Connection,
    s: &mut Session,
    frame: &Bytes,
    priority: i32,
) -> bool {
    let Some(id) = q.streams().open(Dir::Uni) else {
        return false;
    };
    let _ = q.send_stream(id).set_priority(priority);
    // On the stack: nearly every frame goes in whole, and then nothing
    // outlives this call.
    let mut chunks = [s.uni_header.clone(), frame.clone()];
    let written = write_chunks(q, id, &mut chunks, true);
    if written < chunks.len() {
        // Rare: the send window is full; the rest waits for credit.
        s.writing.insert(
            id,
            Write {
                chunks: chunks[written..].to_vec(),
                finish: true,
            },
        );
    }
    true
}

/// QUIC's view of the path, sampled for the slow-subscriber rule.
fn sample_path(q: &quinn_proto::Connection, s: &mut Session, now: Instant) {
    let Some(outbox) = s.outbox.as_ref() else {
        return;
    };
    if s.sampled
        .is_some_and(|p| now.duration_since(p.at) < crate::wt::PATH_SAMPLE)
    {
        return;
    }
    let stats = q.stats();
    let sample = crate::wt::PathSample {
        at: now,
        sent_packets: stats.path.sent_packets,
        lost_packets: stats.path.lost_packets,
        sent_bytes: stats.udp_tx.bytes,
        rtt: stats.path.rtt,
        cwnd: stats.path.cwnd,
    };
    if let Some(before) = &s.sampled {
        outbox.set_congested(crate::wt::path_congested(before, &sample));
    }
    s.sampled = Some(sample);
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn_proto::Side;

    const CONFIG: fn() -> EngineConfig = || EngineConfig {
        path: "/convene/wt".into(),
        max_frame: 1000,
        max_streams: 2,
    };

    /// A session on CONNECT stream 0 whose task's channel holds `capacity`.
    fn session(capacity: usize) -> (Session, mpsc::Receiver<Incoming>) {
        let (tx, rx) = mpsc::channel(capacity);
        let connect = StreamId::new(Side::Client, Dir::Bi, 0);
        (
            Session::new(
                connect,
                tx,
                Arc::new(AtomicBool::new(false)),
                Arc::new(AtomicUsize::new(CONFIG().max_frame)),
                Arc::new(AtomicUsize::new(0)),
            ),
            rx,
        )
    }

    /// Feeds `bytes` to a stream of session `s`.
    fn fed(state: &mut Inbound, s: &mut Session, bytes: Vec<u8>, id: StreamId) -> Fed {
        feed(state, Bytes::from(bytes), Some(s), &CONFIG(), id)
    }

    /// The code of the violation the session's task was told of next.
    fn next_violation(rx: &mut mpsc::Receiver<Incoming>) -> ErrorCode {
        match rx.try_recv() {
            Ok(Incoming::Violation(e)) => e.code,
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    fn uni(i: u64) -> StreamId {
        StreamId::new(Side::Client, Dir::Uni, i)
    }

    /// A media stream's opening bytes: the WebTransport type and session 0.
    fn wt_uni_header() -> Vec<u8> {
        vec![0x40, 0x54, 0x00]
    }

    fn header(bidi: bool) -> Inbound {
        Inbound::Header {
            bytes: Vec::new(),
            bidi,
        }
    }

    /// A small seeded generator, so a failing case can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// One stream's bytes as a peer might send them: well-formed media,
    /// oversized media, a wrong session, HTTP/3 streams, unknown types,
    /// or noise; with the bytes flipped now and then.
    fn stream_bytes(rng: &mut Rng) -> Vec<u8> {
        let mut b = match rng.below(6) {
            0 | 1 => wt_uni_header(),
            2 => vec![0x40, 0x54, 0x04],
            3 => vec![rng.below(4) as u8],
            4 => vec![0x21],
            _ => Vec::new(),
        };
        let body = match rng.below(4) {
            0 => 1001 + rng.below(2000),
            _ => rng.below(1001),
        };
        let start = b.len();
        b.extend((0..body).map(|_| rng.next() as u8));
        if body > 0 && rng.below(3) > 0 {
            b[start] = FRAME_MEDIA;
        }
        if rng.below(10) == 0 && !b.is_empty() {
            let i = rng.below(b.len());
            b[i] ^= 1 << rng.below(8);
        }
        b
    }

    #[test]
    fn streams_of_any_shape_in_any_chunks_never_break_the_stream_accounting() {
        // 300 seeds x up to 12 interleaved streams each. Checked after every
        // step: no more media streams counted open than the limit; a media
        // stream never holds more than the maximum frame; and once every
        // stream has ended, none is counted open. Every violation reported
        // is one the spec names for streams.
        for seed in 1..=300u64 {
            let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (mut s, mut rx) = session(1 << 16);
            let config = CONFIG();
            let mut streams: Vec<(StreamId, Inbound, Vec<u8>, usize)> = (0..1 + rng.below(12))
                .map(|i| (uni(i as u64), header(false), stream_bytes(&mut rng), 0))
                .collect();
            while !streams.is_empty() {
                let k = rng.below(streams.len());
                let (id, state, bytes, at) = &mut streams[k];
                let take = (1 + rng.below(700)).min(bytes.len() - *at);
                let chunk = Bytes::copy_from_slice(&bytes[*at..*at + take]);
                *at += take;
                let fed = if take > 0 {
                    feed(state, chunk, Some(&mut s), &config, *id)
                } else {
                    Fed::More
                };
                if let Inbound::Media { bytes } = state {
                    assert!(bytes.len() <= config.max_frame, "seed {seed}");
                }
                assert!(s.media_streams_open <= config.max_streams, "seed {seed}");
                assert!(s.partial <= s.budget(), "seed {seed}: {} held", s.partial);
                let dropped = matches!(fed, Fed::Drop | Fed::Shed);
                let ended = dropped || *at == bytes.len();
                if ended {
                    let (_, state, _, _) = streams.swap_remove(k);
                    if !dropped {
                        finish_inbound(Some(&mut s), state);
                    }
                }
            }
            assert_eq!(
                s.media_streams_open, 0,
                "seed {seed}: a stream place leaked"
            );
            assert_eq!(s.partial, 0, "seed {seed}: partial bytes leaked");
            while let Ok(item) = rx.try_recv() {
                match item {
                    Incoming::Frame(f) => assert_eq!(f.first(), Some(&FRAME_MEDIA), "seed {seed}"),
                    Incoming::Violation(e) => assert!(
                        matches!(
                            e.code,
                            ErrorCode::FrameTooLarge
                                | ErrorCode::TooManyStreams
                                | ErrorCode::WrongStream
                        ),
                        "seed {seed}: {:?}",
                        e.code
                    ),
                    other => panic!("seed {seed}: unexpected {other:?}"),
                }
            }
        }
    }

    /// Many media streams that each stop short of their frame's end hold at
    /// most the session's budget: the stream that would go over it is shed
    /// (stopped, its bytes let go), not buffered. The budget follows the
    /// frame limit in force: small before Hello.
    #[test]
    fn partial_media_streams_hold_at_most_the_budget() {
        let (mut s, _rx) = session(16);
        s.frame_limit.store(100, Ordering::Release);
        let mut config = CONFIG();
        config.max_streams = 100;
        let mut open = Vec::new();
        let mut shed = 0;
        for i in 0..20 {
            let mut state = header(false);
            let mut bytes = wt_uni_header();
            bytes.push(FRAME_MEDIA);
            bytes.extend_from_slice(&[0; 89]);
            match feed(
                &mut state,
                Bytes::from(bytes),
                Some(&mut s),
                &config,
                uni(i),
            ) {
                Fed::More => open.push(state),
                Fed::Shed => shed += 1,
                _ => panic!("stream {i}"),
            }
            assert!(s.partial <= 400, "{} held", s.partial);
        }
        assert_eq!((open.len(), shed), (4, 16));
        assert_eq!(s.media_streams_open, 4);
        // The limit is raised (Welcome): the budget with it.
        s.frame_limit.store(1000, Ordering::Release);
        let mut more = header(false);
        let mut bytes = wt_uni_header();
        bytes.push(FRAME_MEDIA);
        bytes.extend_from_slice(&[0; 899]);
        assert!(matches!(
            feed(
                &mut more,
                Bytes::from(bytes),
                Some(&mut s),
                &config,
                uni(99)
            ),
            Fed::More
        ));
        assert_eq!(s.partial, 360 + 900);
    }

    #[test]
    fn a_session_on_stream_0_shares_the_static_headers_and_others_get_their_own() {
        let (tx, _rx) = mpsc::channel(1);
        let queued = Arc::new(AtomicBool::new(false));
        let limit = Arc::new(AtomicUsize::new(1000));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let first = Session::new(
            StreamId::new(Side::Client, Dir::Bi, 0),
            tx.clone(),
            queued.clone(),
            limit.clone(),
            queued_bytes.clone(),
        );
        assert_eq!(&first.uni_header[..], &wt_uni_header()[..]);
        assert_eq!(first.uni_header.as_ptr(), UNI_HEADER_STREAM_0.as_ptr());
        assert_eq!(&first.datagram_header[..], &[0x00]);
        assert_eq!(
            first.datagram_header.as_ptr(),
            DATAGRAM_HEADER_STREAM_0.as_ptr()
        );
        // Client bidirectional stream 1 is stream id 4: quarter id 1.
        let second = Session::new(
            StreamId::new(Side::Client, Dir::Bi, 1),
            tx,
            queued,
            limit,
            queued_bytes,
        );
        assert_eq!(&second.uni_header[..], &[0x40, 0x54, 0x04]);
        assert_eq!(&second.datagram_header[..], &[0x01]);
        assert_ne!(second.uni_header.as_ptr(), UNI_HEADER_STREAM_0.as_ptr());
    }

    #[test]
    fn slots_count_what_they_hold_and_forget_what_is_removed() {
        let mut slots: Slots<u32> = Slots::default();
        assert!(slots.is_empty());
        slots.insert(3, 30);
        slots.insert(0, 1);
        assert_eq!(slots.get(&3), Some(&30));
        assert_eq!(slots.get(&1), None);
        assert_eq!(slots.get(&99), None);
        slots.insert(3, 31);
        *slots.get_mut(&0).unwrap() += 1;
        assert_eq!((slots.get(&3), slots.get(&0)), (Some(&31), Some(&2)));
        slots.remove(&3);
        slots.remove(&3);
        slots.remove(&50);
        assert!(!slots.is_empty());
        assert_eq!(slots.get(&3), None);
        slots.remove(&0);
        assert!(slots.is_empty());
    }

    #[test]
    fn a_media_stream_is_recognised_and_its_frame_collected_across_chunks() {
        let (mut s, _rx) = session(8);
        let mut state = header(false);
        let mut first = wt_uni_header();
        first.extend_from_slice(&[FRAME_MEDIA, 1, 2]);
        // The header split over two chunks, the frame over two more.
        assert!(matches!(
            fed(&mut state, &mut s, first[..2].to_vec(), uni(0)),
            Fed::More
        ));
        fed(&mut state, &mut s, first[2..].to_vec(), uni(0));
        fed(&mut state, &mut s, vec![3, 4], uni(0));
        match &state {
            Inbound::Media { bytes } => assert_eq!(&bytes[..], &[FRAME_MEDIA, 1, 2, 3, 4]),
            _ => panic!("not read as a media stream"),
        }
        assert_eq!(s.media_streams_open, 1);
    }

    #[test]
    fn an_oversized_media_stream_is_frame_too_large_and_frees_its_place() {
        let (mut s, mut rx) = session(8);
        let mut state = header(false);
        fed(&mut state, &mut s, wt_uni_header(), uni(0));
        assert_eq!(s.media_streams_open, 1);
        let got = fed(&mut state, &mut s, vec![FRAME_MEDIA; 1001], uni(0));
        assert!(matches!(got, Fed::Drop));
        assert_eq!(next_violation(&mut rx), ErrorCode::FrameTooLarge);
        // Otherwise every oversized stream would count against the limit forever.
        assert_eq!(s.media_streams_open, 0);
    }

    #[test]
    fn one_stream_more_than_the_limit_is_too_many_streams() {
        let (mut s, mut rx) = session(8);
        for i in 0..2 {
            let mut st = header(false);
            fed(&mut st, &mut s, wt_uni_header(), uni(i));
        }
        let mut third = header(false);
        let got = fed(&mut third, &mut s, wt_uni_header(), uni(2));
        assert!(matches!(got, Fed::Drop));
        assert_eq!(next_violation(&mut rx), ErrorCode::TooManyStreams);
    }

    #[test]
    fn http3_control_and_qpack_streams_are_ignored_and_unknown_ones_stopped() {
        let (mut s, mut rx) = session(8);
        for kind in [0x00u8, 0x02, 0x03] {
            let mut st = header(false);
            assert!(matches!(
                fed(&mut st, &mut s, vec![kind, 4, 0], uni(0)),
                Fed::More
            ));
            assert!(matches!(st, Inbound::Ignored));
        }
        let mut st = header(false);
        assert!(matches!(
            fed(&mut st, &mut s, vec![0x21], uni(0)),
            Fed::Drop
        ));
        assert!(rx.try_recv().is_err(), "ignoring a stream is no violation");
    }

    #[test]
    fn control_frames_wait_in_order_while_the_sessions_task_is_behind() {
        let (mut s, mut rx) = session(1);
        let mut state = header(true);
        // The control stream: the bidirectional signal and session 0, then three frames.
        let mut bytes = vec![0x40, 0x41, 0x00];
        for n in 1..=3u8 {
            bytes.extend_from_slice(&length_prefix(2));
            bytes.extend_from_slice(&[convene_protocol::frame::FRAME_CONTROL, n]);
        }
        fed(
            &mut state,
            &mut s,
            bytes,
            StreamId::new(Side::Client, Dir::Bi, 1),
        );
        assert_eq!(s.control, Some(StreamId::new(Side::Client, Dir::Bi, 1)));
        // One fits the channel; two wait, nothing is lost or reordered.
        assert_eq!(s.pending.len(), 2);
        let mut seen = Vec::new();
        while let Ok(Incoming::Frame(f)) = rx.try_recv() {
            seen.push(f[1]);
        }
        while let Some(Incoming::Frame(f)) = s.pending.pop_front() {
            seen.push(f[1]);
        }
        assert_eq!(seen, vec![1, 2, 3]);
    }

    #[test]
    fn a_media_frame_on_the_control_stream_is_wrong_stream() {
        let (mut s, mut rx) = session(8);
        let mut state = header(true);
        let mut bytes = vec![0x40, 0x41, 0x00];
        bytes.extend_from_slice(&length_prefix(2));
        bytes.extend_from_slice(&[FRAME_MEDIA, 0]);
        fed(
            &mut state,
            &mut s,
            bytes,
            StreamId::new(Side::Client, Dir::Bi, 1),
        );
        assert_eq!(next_violation(&mut rx), ErrorCode::WrongStream);
    }
}
