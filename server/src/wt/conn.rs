//! One QUIC connection and what HTTP/3 and WebTransport need of it, driven
//! by its QUIC events: the peer's streams read and the CONNECT request
//! answered, the session's outbox drained into QUIC, the session closed
//! with its capsule.
//!
//! No sockets: the engine ([`super::engine`]) moves the packets. The clock
//! is read only for a closing session's deadlines.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use convene_protocol::MediaFrame;
use convene_protocol::frame::{is_media_frame, length_prefix};
use quinn_proto::{Dir, Event, StreamEvent, StreamId, VarInt};
use tokio::sync::mpsc;
use tracing::debug;
use web_transport_proto as wtp;

use super::engine::{Ready, SessionWake};
use super::h3::{
    Fed, H3_STREAM_CREATION_ERROR, Inbound, close_capsule, connect_response, feed, finish_inbound,
    forget_inbound, quarter_id, settings,
};
use super::session::{
    BUDGET_FRAMES, MAX_MEDIA_IN_FLIGHT, Session, Write, media_priority, open_media_stream,
    send_media, write_control, write_pending,
};
use super::{Command, EngineConfig, NewSession, SessionKey};
use crate::connection::{DrainTally, Incoming, drain_batch};
use crate::outbox::Wake;
use crate::state::AppState;

/// The channel from the engine to a session's task.
const INCOMING_CHANNEL: usize = 256;

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

/// What writing frames reuses from one session to the next.
#[derive(Default)]
pub(super) struct Scratch {
    /// Frames taken from an outbox.
    pub(super) frames: Vec<Bytes>,
    /// The time of this pass: read once, not per outbox drained.
    pub(super) now: Option<Instant>,
    /// What this pass drained, for the metrics once the pass is over.
    pub(super) tally: DrainTally,
    /// The last datagram built: (frame, header, datagram). A frame routed to
    /// many subscribers is one datagram for all of those whose session has
    /// the same header (nearly all: browsers open the session on stream 0).
    pub(super) datagram: Option<(Bytes, Bytes, Bytes)>,
}

/// One QUIC connection and what HTTP/3 and WebTransport need of it.
pub(super) struct Conn {
    /// Tells it from an older connection in the same slot.
    pub(super) generation: u64,
    /// quinn-proto's state of the connection.
    pub(super) q: quinn_proto::Connection,
    /// Whether it is in `dirty`.
    pub(super) is_dirty: bool,
    /// Whether it is in `blocked`.
    pub(super) is_blocked: bool,
    /// The deadline last put on the timer heap.
    pub(super) timer: Option<Instant>,
    /// Our HTTP/3 control stream, once the handshake is done.
    pub(super) h3_control: Option<StreamId>,
    /// Streams the peer opened, by what they turned out to carry.
    pub(super) inbound: HashMap<StreamId, Inbound>,
    /// The WebTransport session, once a CONNECT was accepted.
    pub(super) session: Option<Session>,
    /// When to close the connection (a session closing, or a refused request).
    pub(super) close_at: Option<(Instant, VarInt, Bytes)>,
    /// Until its WebTransport session is accepted: when the connection is
    /// closed if none has been (the handshake timeout, from the QUIC accept).
    pub(super) connect_by: Option<Instant>,
    /// Its place among connections in their handshake, handed to the
    /// session's task with the session.
    pub(super) handshake: Option<crate::slots::Handshake>,
    /// Fires if that place goes to a newer connection.
    pub(super) evicted: Arc<crate::accept::EvictSignal>,
}

/// Reacts to one QUIC event; returns a session to start when a CONNECT was accepted.
pub(super) fn handle_event(
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
                let _ = c.q.send_stream(id).write(&settings());
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
                    && is_media_frame(&frame)
                    && MediaFrame::parse_any(frame.clone()).is_ok()
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

/// Reads a peer's stream as [`read_stream`] does; when that completes a CONNECT request, answers it and, if it is accepted, returns the session to start.
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
    let buf = connect_response(status)?;
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
pub(super) fn read_stream(
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

/// Takes what the session's outbox holds and hands it to QUIC: control
/// frames to the control stream, media as datagrams or streams; then, if
/// the session has ended, closes it. Leaves frames in the outbox while QUIC
/// holds [`MAX_MEDIA_IN_FLIGHT`] of this session's frames already.
pub(super) fn write_from_outbox(c: &mut Conn, state: &AppState, scratch: &mut Scratch) {
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
            if is_media_frame(&f) {
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
pub(super) fn close_session(c: &mut Conn, code: u32, reason: String) {
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
pub(super) fn send_capsule(c: &mut Conn) {
    let Some((code, reason, _, _)) = c.session.as_mut().and_then(|s| s.capsule.take()) else {
        return;
    };
    let Some(connect) = c.session.as_ref().map(|s| s.connect) else {
        return;
    };
    let frame = close_capsule(code, &reason);
    let mut st = c.q.send_stream(connect);
    let _ = st.write(&frame);
    let _ = st.finish();
    let linger = (c.q.rtt() * 3).max(CLOSE_LINGER);
    let code = VarInt::from_u64(wtp::error_to_http3(code)).unwrap_or(VarInt::MAX);
    c.close_at = Some((Instant::now() + linger, code, Bytes::from(reason)));
}
