//! One WebTransport session's state: its streams and queues, the budgets
//! that bound what a peer can make it hold, and the writes that hand its
//! frames to QUIC (control frames on the control stream, media as
//! datagrams or a stream each, in priority order).
//!
//! Sans-IO: no sockets, no clock. It writes into `quinn-proto`'s
//! connection state, which the engine ([`super::engine`]) turns into
//! packets.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use convene_protocol::frame::stream_priority;
use convene_protocol::{ErrorCode, ProtocolError};
use quinn_proto::{Dir, StreamId, VarInt};
use tokio::sync::mpsc;
use web_transport_proto as wtp;

use super::h3::{DATAGRAM_HEADER_STREAM_0, UNI_HEADER_STREAM_0, quarter_id, shared_header};
use super::path::PathSample;
use crate::connection::{ExternalClose, Incoming};
use crate::outbox::Outbox;

/// Frames queued for a session's task beyond its channel before the engine
/// stops reading that session's streams (QUIC's flow control then holds the
/// peer back). Datagrams that find the queue non-empty are dropped.
const MAX_PENDING_INCOMING: usize = 64;

/// Media frames handed to QUIC and not yet taken by it (waiting for stream
/// credit or send window), per session. Beyond this the engine leaves
/// frames in the outbox, where the spec's drop order (video deltas first)
/// and the slow-subscriber rule apply, instead of piling them up inside
/// QUIC without bound.
pub(super) const MAX_MEDIA_IN_FLIGHT: usize = 32;

/// An established WebTransport session on a connection.
pub(super) struct Session {
    /// The CONNECT stream: its id is the session id.
    pub(super) connect: StreamId,
    /// Where frames, violations and the end go to the session's task.
    pub(super) tx: mpsc::Sender<Incoming>,
    /// What could not go into `tx` yet.
    pub(super) pending: VecDeque<Incoming>,
    /// Streams left unread while `pending` is full.
    pub(super) stalled: Vec<StreamId>,
    /// The stream type and session id in front of every stream we open.
    pub(super) uni_header: Bytes,
    /// The quarter stream id in front of every datagram.
    pub(super) datagram_header: Bytes,
    /// Our side of the control stream, once the peer opened it.
    pub(super) control: Option<StreamId>,
    /// Control bytes waiting for the control stream or for credit.
    pub(super) control_queue: VecDeque<Write>,
    /// Media frames waiting for the peer to allow another stream.
    pub(super) media_queue: VecDeque<(Bytes, i32)>,
    /// Streams whose bytes QUIC has not all taken yet.
    pub(super) writing: HashMap<StreamId, Write>,
    /// Media streams the peer has open now.
    pub(super) media_streams_open: usize,
    /// Whether a second bidirectional stream was already refused.
    pub(super) extra_bidi_refused: bool,
    /// Whether the control stream was given its priority.
    pub(super) control_prioritized: bool,
    /// The session's outbox, once its task has attached it.
    pub(super) outbox: Option<Arc<Outbox>>,
    /// The session's close reason and notice (from its task).
    pub(super) close: Option<Arc<ExternalClose>>,
    /// Whether the session's waker has it queued in `ready`.
    pub(super) queued: Arc<AtomicBool>,
    /// Frames in the outbox were left there because QUIC holds
    /// [`MAX_MEDIA_IN_FLIGHT`] already.
    pub(super) backlogged: bool,
    /// Media frames sent so far: older frames first among equals.
    pub(super) sent: u32,
    /// QUIC's path statistics when last sampled.
    pub(super) sampled: Option<PathSample>,
    /// What the path carries, smoothed over the samples.
    pub(super) estimate: crate::estimate::Smoothed,
    /// The lowest round trip sampled: the path without a queue.
    pub(super) min_rtt: Option<std::time::Duration>,
    /// Whether the session is closing (or its connection is lost): nothing more is taken from its outbox.
    pub(super) closing: bool,
    /// The close capsule waiting for the control stream to be acknowledged:
    /// code, reason, when it goes anyway, and the earliest it may go.
    pub(super) capsule: Option<(u32, String, Instant, Instant)>,
    /// The largest frame the session accepts now: the Hello limit until its
    /// Welcome is queued, then `max_frame_bytes` (set by the session's task).
    pub(super) frame_limit: Arc<AtomicUsize>,
    /// The limit QUIC's receive window was last sized for.
    pub(super) window_for: usize,
    /// Bytes held in media streams not yet complete.
    pub(super) partial: usize,
    /// Bytes of frames handed towards the session's task and not yet taken by it.
    pub(super) queued_bytes: Arc<AtomicUsize>,
}

/// What a session may hold of media frames still arriving, and of frames
/// waiting for its task, in frames of the size in force: 32 KiB before Hello,
/// 1 MiB after with the default 256 KiB frames (PROTOCOL.md §11.5).
pub const BUDGET_FRAMES: usize = 4;

impl Session {
    /// The largest frame accepted now.
    pub(super) fn limit(&self) -> usize {
        self.frame_limit.load(Ordering::Acquire)
    }

    /// What partial media streams, and frames queued for the task, may hold now.
    pub(super) fn budget(&self) -> usize {
        BUDGET_FRAMES * self.limit()
    }

    /// True while the session's task has more waiting than it may.
    pub(super) fn task_behind(&self) -> bool {
        self.pending.len() >= MAX_PENDING_INCOMING
            || self.queued_bytes.load(Ordering::Acquire) >= self.budget()
    }
}

impl Session {
    /// A session on the CONNECT stream `connect`, delivering to `tx`.
    pub(super) fn new(
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
            estimate: Default::default(),
            min_rtt: None,
            closing: false,
            window_for: 0,
            partial: 0,
            frame_limit,
            queued_bytes,
        }
    }
}

/// Bytes on their way into a stream.
pub(super) struct Write {
    /// What is left to write, in order.
    pub(super) chunks: Vec<Bytes>,
    /// Whether the stream is finished once they are all in.
    pub(super) finish: bool,
}

/// Hands `item` to the session's task, or queues it behind what waits already.
pub(super) fn push(s: &mut Session, item: Incoming) {
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

/// Tells the session's task that its peer broke the protocol.
pub(super) fn violation(s: &mut Session, code: ErrorCode, text: &str) {
    push(
        s,
        Incoming::Violation(ProtocolError::new(code, text.to_string())),
    );
}

/// Writes what the control stream has queued, as far as QUIC takes it.
pub(super) fn write_control(q: &mut quinn_proto::Connection, s: &mut Session) {
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
pub(super) fn write_pending(q: &mut quinn_proto::Connection, id: StreamId, w: &mut Write) -> bool {
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

/// A media frame's stream priority (PROTOCOL.md §3.3): audio streams first,
/// then video key frames, then deltas; older frames first within each.
pub(super) fn media_priority(frame: &Bytes, audio: bool, order: u32) -> i32 {
    let rank = if audio {
        2
    } else if convene_protocol::MediaHeader::peek(frame).is_some_and(|h| h.key) {
        1
    } else {
        0
    };
    stream_priority(rank, order)
}

/// Sends one media frame (PROTOCOL.md §3.3): audio as a datagram when it
/// fits, anything else on a unidirectional stream of its own.
pub(super) fn send_media(
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
pub(super) fn open_media_stream(
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

#[cfg(test)]
mod tests {
    use super::*;
    use quinn_proto::Side;

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
        assert_eq!(&first.uni_header[..], &[0x40, 0x54, 0x00]);
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
}
