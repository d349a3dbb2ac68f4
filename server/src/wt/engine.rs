//! The engine: the I/O side of WebTransport. One task owns the UDP socket
//! and every connection: it reads datagrams in batches and hands them to
//! `quinn-proto`, keeps the connections' timers, takes the sessions'
//! commands and wake-ups, has each touched connection handle its events
//! ([`super::conn`]), and sends every connection's packets in one pass.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::IoSliceMut;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{ConnectionHandle, DatagramEvent, EndpointConfig, ServerConfig, VarInt};
use tokio::io::Interest;
use tokio::sync::mpsc;
use tracing::debug;

use super::conn::{
    Conn, Scratch, close_session, handle_event, read_stream, send_capsule, write_from_outbox,
};
use super::h3::H3_NO_ERROR;
use super::path::sample_path;
use super::session::MAX_MEDIA_IN_FLIGHT;
use super::{Command, EngineConfig, NewSession, SessionKey};
use crate::outbox::Wake;
use crate::state::AppState;

/// Wakes the engine to drain one session's outbox.
pub(super) struct SessionWake {
    /// The session to drain.
    pub(super) key: SessionKey,
    /// Set while the session waits in `ready`, so it is queued once.
    pub(super) queued: Arc<AtomicBool>,
    /// The list it goes on, and the engine's wake-up.
    pub(super) ready: Arc<Ready>,
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
pub(super) struct Ready {
    keys: std::sync::Mutex<Vec<SessionKey>>,
    notify: tokio::sync::Notify,
}

/// How long the engine keeps running after shutdown for sessions to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
        out: super::udp::Batch::default(),
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
    out: super::udp::Batch,
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
        self.out.push(super::udp::Queued::new(t, buf));
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
            if let Some(kbps) = sample_path(&c.q, s, now) {
                self.state.metrics.path_estimate_kbps.observe(kbps as f64);
            }
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
                    if self.out.push(super::udp::Queued::new(&t, buf)) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
