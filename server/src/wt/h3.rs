//! HTTP/3 and WebTransport as far as the engine needs them: what a peer's
//! stream turns out to carry (its header), the CONNECT request, the stream
//! and datagram headers in front of what we send, and the reader that
//! collects media frames and control frames from a peer's streams.
//!
//! Sans-IO: no sockets, no clock. The reader hands what it collects to the
//! session ([`super::session`]), which queues it for the session's task.

use bytes::{Bytes, BytesMut};
use convene_protocol::frame::{FRAME_MEDIA, is_media_frame};
use convene_protocol::{ErrorCode, StreamDecoder};
use quinn_proto::{StreamId, VarInt};
use tracing::debug;
use web_transport_proto as wtp;

use super::EngineConfig;
use super::session::{Session, push, violation};
use crate::connection::Incoming;

/// Bytes of a CONNECT request or of a stream header before giving up on it.
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// HTTP/3's H3_STREAM_CREATION_ERROR, for streams of a type we do not take.
pub(super) const H3_STREAM_CREATION_ERROR: u32 = 0x103;

/// HTTP/3's H3_NO_ERROR, closing a connection that never opened a session.
pub(super) const H3_NO_ERROR: u32 = 0x100;

/// The WebTransport bidirectional stream signal (a frame type on request streams).
const WT_BIDI_SIGNAL: u64 = 0x41;

/// A stream the peer opened.
pub(super) enum Inbound {
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

/// The unidirectional stream header of a session on CONNECT stream 0
/// (every browser's first session): stream type 0x54, session 0.
pub(super) const UNI_HEADER_STREAM_0: [u8; 3] = [0x40, 0x54, 0x00];

/// The datagram header of a session on CONNECT stream 0: quarter stream id 0.
pub(super) const DATAGRAM_HEADER_STREAM_0: [u8; 1] = [0x00];

/// `header` as bytes, static when it is the common one: cloned for every
/// frame sent, a static header costs no reference counting.
pub(super) fn shared_header(header: Vec<u8>, common: &'static [u8]) -> Bytes {
    if header == common {
        Bytes::from_static(common)
    } else {
        Bytes::from(header)
    }
}

/// The quarter stream id of a session (RFC 9297): its CONNECT stream's id over four.
pub(super) fn quarter_id(connect: StreamId) -> u64 {
    VarInt::from(connect).into_inner() / 4
}

/// What opens our HTTP/3 control stream: its stream type and our SETTINGS,
/// which say WebTransport, datagrams and extended CONNECT are on.
pub(super) fn settings() -> Vec<u8> {
    let mut settings = wtp::Settings::default();
    settings.enable_webtransport(1);
    let mut buf = Vec::new();
    settings.encode(&mut buf);
    buf
}

/// The HTTP/3 response to a CONNECT request; `None` if it cannot be encoded.
pub(super) fn connect_response(status: wtp::http::StatusCode) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    if wtp::ConnectResponse::new(status).encode(&mut buf).is_err() {
        return None;
    }
    Some(buf)
}

/// The CLOSE_WEBTRANSPORT_SESSION capsule in an HTTP/3 DATA frame, as it
/// goes on the CONNECT stream.
pub(super) fn close_capsule(code: u32, reason: &str) -> Vec<u8> {
    let mut capsule = Vec::new();
    wtp::Capsule::CloseWebTransportSession {
        code,
        reason: reason.to_string(),
    }
    .encode(&mut capsule);
    let mut frame = Vec::new();
    wtp::Frame::DATA.encode(&mut frame);
    wtp::VarInt::from_u32(capsule.len() as u32).encode(&mut frame);
    frame.extend_from_slice(&capsule);
    frame
}

/// What feeding bytes to a stream's reader gave.
pub(super) enum Fed {
    /// Read on.
    More,
    /// A CONNECT request, complete.
    Request(Box<wtp::ConnectRequest>),
    /// The stream is of no use: stop it.
    Drop,
    /// The session's partial media streams hold their budget: this one's
    /// frame is discarded and the stream stopped, as if its sender had
    /// reset it (PROTOCOL.md §3.3).
    Shed,
}

/// Lets go of what a stream that will not complete held.
pub(super) fn forget_inbound(session: Option<&mut Session>, state: Inbound) {
    if let (Some(s), Inbound::Media { bytes }) = (session, state) {
        s.media_streams_open = s.media_streams_open.saturating_sub(1);
        s.partial -= bytes.len();
    }
}

/// Feeds bytes that arrived on stream `id` to its reader: first its header, which says what the stream is, then what it carries.
pub(super) fn feed(
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
pub(super) fn finish_inbound(session: Option<&mut Session>, state: Inbound) {
    let Some(s) = session else {
        return;
    };
    match state {
        Inbound::Media { bytes } => {
            s.media_streams_open = s.media_streams_open.saturating_sub(1);
            s.partial -= bytes.len();
            if is_media_frame(&bytes) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use convene_protocol::frame::length_prefix;
    use quinn_proto::{Dir, Side};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::sync::mpsc;

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
                    Incoming::Frame(f) => assert!(is_media_frame(&f), "seed {seed}"),
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

    #[test]
    fn our_settings_response_and_close_capsule_decode_as_meant() {
        let buf = settings();
        let mut rest = &buf[..];
        let decoded = wtp::Settings::decode(&mut rest).unwrap();
        assert!(rest.is_empty());
        assert_eq!(decoded.supports_webtransport(), 1);

        let buf = connect_response(wtp::http::StatusCode::OK).unwrap();
        let response = wtp::ConnectResponse::decode(&mut &buf[..]).unwrap();
        assert_eq!(response.status, wtp::http::StatusCode::OK);
        // The decoder (a client's) takes only 200; a refusal still encodes.
        assert!(connect_response(wtp::http::StatusCode::NOT_FOUND).is_some());

        let frame = close_capsule(7, "bye");
        let mut rest = &frame[..];
        assert_eq!(wtp::Frame::decode(&mut rest).unwrap(), wtp::Frame::DATA);
        let len = wtp::VarInt::decode(&mut rest).unwrap().into_inner();
        assert_eq!(len as usize, rest.len());
        assert_eq!(
            wtp::Capsule::decode(&mut rest).unwrap(),
            wtp::Capsule::CloseWebTransportSession {
                code: 7,
                reason: "bye".to_string(),
            }
        );
    }
}
