//! Frames (PROTOCOL.md §3.1): one type byte and a body, the same on every
//! transport; and the WebTransport control stream's length prefix (§3.3).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::ErrorCode;
use crate::error::ProtocolError;
use crate::media::MediaFrame;

/// Frame type of a control frame.
pub const FRAME_CONTROL: u8 = 0x01;
/// Frame type of a media frame.
pub const FRAME_MEDIA: u8 = 0x02;
/// First frame type of the extension range, ignored when unknown.
pub const FRAME_EXTENSION_START: u8 = 0x80;
/// Frame type of a LAYERED media frame (extension `sfu.1`, PROTOCOL.md §6.6.2).
pub const FRAME_LAYERED: u8 = 0x80;
/// True for a frame that travels as media (PROTOCOL.md §3.3): MEDIA, or
/// LAYERED (§6.6.2), whatever the session negotiated; the session discards
/// a LAYERED frame it did not negotiate.
pub fn is_media_frame(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(&FRAME_MEDIA) | Some(&FRAME_LAYERED))
}

/// The feature name of the selective-forwarding extension (PROTOCOL.md §6.6).
pub const FEATURE_SFU: &str = "sfu.1";

/// The feature name of the raised hands and reactions extension (PROTOCOL.md §5.9).
pub const FEATURE_REACTIONS: &str = "reactions.1";

/// The feature name of the recording extension (PROTOCOL.md §5.10).
pub const FEATURE_RECORDING: &str = "recording.1";

/// A decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame<M> {
    /// A control message (`ClientMessage` or `ServerMessage`).
    Control(M),
    /// A media frame.
    Media(MediaFrame),
    /// A frame of the extension range; the receiver discards it.
    Extension(u8),
}

/// Decodes one whole frame. `max_frame_bytes` is the limit in force.
///
/// Errors are the spec's: empty or type 0 is `MALFORMED_FRAME`, a reserved
/// type is `UNKNOWN_FRAME_TYPE` (non-fatal), a body that is not the expected
/// protobuf is `MALFORMED_MESSAGE`, anything over the limit `FRAME_TOO_LARGE`.
pub fn decode_frame<M: Message + Default>(
    bytes: Bytes,
    max_frame_bytes: usize,
) -> Result<Frame<M>, ProtocolError> {
    decode_frame_with(bytes, max_frame_bytes, false)
}

/// Decodes one whole frame as [`decode_frame`] does; with `layered` (the
/// session negotiated `sfu.1`) a LAYERED frame is parsed as media instead of
/// being left for the caller to discard.
pub fn decode_frame_with<M: Message + Default>(
    bytes: Bytes,
    max_frame_bytes: usize,
    layered: bool,
) -> Result<Frame<M>, ProtocolError> {
    if bytes.len() > max_frame_bytes {
        return Err(ProtocolError::new(
            ErrorCode::FrameTooLarge,
            format!(
                "frame of {} bytes exceeds the limit of {max_frame_bytes}",
                bytes.len()
            ),
        ));
    }
    let Some(&ty) = bytes.first() else {
        return Err(ProtocolError::new(ErrorCode::MalformedFrame, "empty frame"));
    };
    match ty {
        FRAME_CONTROL => M::decode(bytes.slice(1..))
            .map(Frame::Control)
            .map_err(|e| {
                ProtocolError::new(
                    ErrorCode::MalformedMessage,
                    format!("control message does not decode: {e}"),
                )
            }),
        FRAME_MEDIA => MediaFrame::parse(bytes).map(Frame::Media),
        FRAME_LAYERED if layered => MediaFrame::parse_layered(bytes).map(Frame::Media),
        0 => Err(ProtocolError::new(
            ErrorCode::MalformedFrame,
            "frame type 0",
        )),
        t if t >= FRAME_EXTENSION_START => Ok(Frame::Extension(t)),
        t => Err(ProtocolError::new(
            ErrorCode::UnknownFrameType,
            format!("frame type 0x{t:02x} is reserved"),
        )),
    }
}

/// Encodes a control message as a frame: the type byte, then the protobuf.
pub fn encode_control<M: Message>(msg: &M) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + msg.encoded_len());
    b.put_u8(FRAME_CONTROL);
    msg.encode(&mut b).expect("BytesMut grows as needed");
    b.freeze()
}

/// The 4-byte length prefix of a frame on the WebTransport control stream.
pub fn length_prefix(frame_len: usize) -> [u8; 4] {
    (frame_len as u32).to_be_bytes()
}

/// Splits the byte stream of a WebTransport control stream into frames
/// (PROTOCOL.md §3.3), refusing a frame over the limit before buffering it.
#[derive(Debug)]
pub struct StreamDecoder {
    /// Bytes received and not yet returned as frames.
    buf: BytesMut,
    /// The largest frame accepted.
    max_frame_bytes: usize,
}

impl StreamDecoder {
    /// A decoder that accepts frames up to `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        StreamDecoder {
            buf: BytesMut::new(),
            max_frame_bytes,
        }
    }

    /// Changes the limit, e.g. from the handshake limit to the session limit.
    pub fn set_max_frame_bytes(&mut self, max: usize) {
        self.max_frame_bytes = max;
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, ProtocolError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len == 0 {
            return Err(ProtocolError::new(
                ErrorCode::MalformedFrame,
                "zero length prefix",
            ));
        }
        if len > self.max_frame_bytes {
            return Err(ProtocolError::new(
                ErrorCode::FrameTooLarge,
                format!(
                    "length prefix {len} exceeds the limit of {}",
                    self.max_frame_bytes
                ),
            ));
        }
        if self.buf.len() < 4 + len {
            self.buf.reserve(4 + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(4);
        Ok(Some(self.buf.split_to(len).freeze()))
    }

    /// Bytes buffered and not yet returned.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{ClientMessage, Ping, client_message::Msg};

    fn ping(ts: u64) -> ClientMessage {
        ClientMessage {
            request_id: 0,
            msg: Some(Msg::Ping(Ping { timestamp_us: ts })),
        }
    }

    #[test]
    fn control_round_trip() {
        let f = encode_control(&ping(5));
        assert_eq!(&f[..], &[0x01, 0x62, 0x02, 0x08, 0x05]);
        assert_eq!(
            decode_frame::<ClientMessage>(f, 100).unwrap(),
            Frame::Control(ping(5))
        );
    }

    #[test]
    fn frame_type_ranges() {
        let code = |b: &'static [u8]| {
            decode_frame::<ClientMessage>(Bytes::from_static(b), 100)
                .unwrap_err()
                .code
        };
        assert_eq!(code(&[]), ErrorCode::MalformedFrame);
        assert_eq!(code(&[0]), ErrorCode::MalformedFrame);
        assert_eq!(code(&[3]), ErrorCode::UnknownFrameType);
        assert_eq!(code(&[0x7f, 1]), ErrorCode::UnknownFrameType);
        assert_eq!(code(&[1, 0xff]), ErrorCode::MalformedMessage);
        assert_eq!(
            decode_frame::<ClientMessage>(Bytes::from_static(&[0x80, 1]), 100).unwrap(),
            Frame::Extension(0x80)
        );
        assert_eq!(
            decode_frame::<ClientMessage>(Bytes::from(vec![1; 101]), 100)
                .unwrap_err()
                .code,
            ErrorCode::FrameTooLarge
        );
    }

    #[test]
    fn stream_decoder_reassembles_and_refuses_large_prefixes_early() {
        let mut d = StreamDecoder::new(10);
        let f = encode_control(&ping(1));
        let mut wire = length_prefix(f.len()).to_vec();
        wire.extend_from_slice(&f);
        wire.extend_from_slice(&wire.clone());
        for b in &wire[..wire.len() - 1] {
            d.push(&[*b]);
        }
        assert_eq!(d.next_frame().unwrap(), Some(f.clone()));
        assert_eq!(d.next_frame().unwrap(), None);
        d.push(&wire[wire.len() - 1..]);
        assert_eq!(d.next_frame().unwrap(), Some(f));
        let mut d = StreamDecoder::new(10);
        d.push(&[0, 0, 0, 11]);
        assert_eq!(d.next_frame().unwrap_err().code, ErrorCode::FrameTooLarge);
        let mut d = StreamDecoder::new(10);
        d.push(&[0, 0, 0, 0]);
        assert_eq!(d.next_frame().unwrap_err().code, ErrorCode::MalformedFrame);
    }
}

/// The QUIC send priority of a stream (PROTOCOL.md §3.3): `rank` 3 for the
/// control stream, 2 audio, 1 video key frames, 0 video deltas; within a rank
/// the stream opened earlier (`counter`, counting per session) goes first, so
/// frames leave whole and in order instead of sharing the path round robin,
/// which would make every frame late. Higher values are sent first.
pub fn stream_priority(rank: u8, counter: u32) -> i32 {
    (i32::from(rank.min(3)) << 24) - (counter & 0x00FF_FFFF) as i32
}

#[cfg(test)]
mod priority_tests {
    use super::stream_priority;

    #[test]
    fn ranks_come_first_then_age() {
        assert!(stream_priority(3, 0) > stream_priority(2, 0));
        assert!(stream_priority(2, 0xFF_FFFF) > stream_priority(1, 0));
        assert!(stream_priority(1, 0xFF_FFFF) > stream_priority(0, 0));
        assert!(stream_priority(0, 1) > stream_priority(0, 2));
    }
}
