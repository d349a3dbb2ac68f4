//! The media frame of PROTOCOL.md §6.1: a fixed 24-byte header, an optional
//! decoder configuration and an opaque payload.
//!
//! The header has a fixed layout so that the server stamps the sender by
//! writing four bytes ([`stamp_sender`]) and never decodes the payload.

use bytes::{BufMut, Bytes, BytesMut};

use crate::ErrorCode;
use crate::error::ProtocolError;
use crate::frame::{FRAME_LAYERED, FRAME_MEDIA};

/// Length of the fixed media header, type byte included.
pub const MEDIA_HEADER_LEN: usize = 24;
/// Flag bit: the payload is a key frame.
pub const FLAG_KEY: u8 = 0x01;
/// Flag bit: a decoder configuration follows the header.
pub const FLAG_CONFIG: u8 = 0x02;
/// Byte offset of the sender field, which the server overwrites.
pub const SENDER_OFFSET: usize = 4;

/// The decoded fixed header of a media frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MediaHeader {
    /// The KEY flag.
    pub key: bool,
    /// Sender participant id: 0 from clients, stamped by the server.
    pub sender: u32,
    /// The publisher's track id, never 0.
    pub track_id: u32,
    /// Per-track sequence number.
    pub sequence: u32,
    /// Capture time, µs since the Unix epoch.
    pub capture_timestamp_us: u64,
}

impl MediaHeader {
    /// The track and KEY flag of an encoded frame (type byte first), read
    /// without validating the rest: for shells that only sort frames into
    /// queues. `None` when `frame` is not a media frame with a whole header.
    /// Frames from the network are still validated by [`MediaFrame::parse`]
    /// before anything relies on them.
    pub fn peek(frame: &[u8]) -> Option<MediaPeek> {
        let frame = match frame.first() {
            Some(&FRAME_LAYERED) => frame.get(LAYERED_PREFIX_LEN..)?,
            _ => frame,
        };
        if frame.len() < MEDIA_HEADER_LEN || frame[0] != FRAME_MEDIA {
            return None;
        }
        Some(MediaPeek {
            key: frame[1] & FLAG_KEY != 0,
            track_id: u32::from_be_bytes([frame[8], frame[9], frame[10], frame[11]]),
        })
    }
}

/// What [`MediaHeader::peek`] reads of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaPeek {
    /// The KEY flag.
    pub key: bool,
    /// The track id.
    pub track_id: u32,
}

/// Length of the LAYERED prefix before the MEDIA frame (PROTOCOL.md §6.6.2).
pub const LAYERED_PREFIX_LEN: usize = 4;
/// LAYERED flag bit: byte 3 carries an audio level.
pub const LAYERED_FLAG_LEVEL: u8 = 0x01;
/// LAYERED flag bit: a temporal switch point (§6.6.1).
pub const LAYERED_FLAG_SWITCH_POINT: u8 = 0x02;
/// Most spatial encodings of one track (§6.6.1).
pub const MAX_ENCODINGS: usize = 3;
/// Most temporal layers of one encoding (§6.6.1).
pub const MAX_TEMPORAL_LAYERS: u8 = 4;

/// An audio level as RFC 6464 carries it: voice activity and loudness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioLevel {
    /// The sender's voice-activity flag (V).
    pub voice: bool,
    /// Level in −dBov: 0 is the loudest, 127 silence.
    pub dbov: u8,
}

impl AudioLevel {
    /// Quiet: what a level is said to be when nothing was measured.
    pub const SILENT: AudioLevel = AudioLevel {
        voice: false,
        dbov: 127,
    };

    /// The level of `samples` (linear, full scale ±1.0), in −dBov from
    /// their RMS as RFC 6464 §3 defines it, in steps of 4 dB (rounded
    /// toward quiet; PROTOCOL.md §6.6.6 asks publishers to send no finer levels
    /// where media is end-to-end encrypted; they serve speaker detection
    /// everywhere alike). V stays clear: this is a level, not voice
    /// activity detection.
    pub fn measure(samples: &[f32]) -> AudioLevel {
        if samples.is_empty() {
            return AudioLevel::SILENT;
        }
        let power = samples
            .iter()
            .map(|s| {
                let s = if s.is_finite() {
                    s.clamp(-1.0, 1.0)
                } else {
                    0.0
                };
                f64::from(s) * f64::from(s)
            })
            .sum::<f64>()
            / samples.len() as f64;
        // Full-scale sine has an RMS of 1/√2: RFC 6464 counts dBov from a
        // full-scale square wave, RMS 1.
        let db = if power > 0.0 {
            -10.0 * power.log10()
        } else {
            127.0
        };
        let dbov = (db.clamp(0.0, 127.0) as u8).div_ceil(4) * 4;
        AudioLevel {
            voice: false,
            dbov: dbov.min(127),
        }
    }
}

/// The LAYERED prefix of a media frame (PROTOCOL.md §6.6.2): which encoding
/// and temporal layer it belongs to, and an audio frame's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Layer {
    /// Spatial encoding index, 0 (lowest) to 2.
    pub encoding: u8,
    /// Temporal layer id, 0 to 3.
    pub temporal: u8,
    /// Later frames of a layer up to this one's depend on nothing before it above layer 0.
    pub switch_point: bool,
    /// The sender's audio level, on audio tracks that announce levels.
    pub level: Option<AudioLevel>,
}

impl Layer {
    /// The 4-byte prefix that carries this layer.
    pub fn prefix(&self) -> [u8; LAYERED_PREFIX_LEN] {
        let mut flags = 0;
        if self.level.is_some() {
            flags |= LAYERED_FLAG_LEVEL;
        }
        if self.switch_point {
            flags |= LAYERED_FLAG_SWITCH_POINT;
        }
        let level = self
            .level
            .map_or(0, |l| (u8::from(l.voice) << 7) | (l.dbov & 0x7f));
        [
            FRAME_LAYERED,
            flags,
            (self.encoding & 0x03) | ((self.temporal & 0x03) << 2),
            level,
        ]
    }

    /// Reads a LAYERED prefix, checking its reserved bits.
    pub fn parse(prefix: &[u8]) -> Result<Self, ProtocolError> {
        let malformed = |why: &str| ProtocolError::new(ErrorCode::MalformedFrame, why);
        if prefix.len() < LAYERED_PREFIX_LEN || prefix[0] != FRAME_LAYERED {
            return Err(malformed("not a LAYERED frame"));
        }
        let (flags, layer, level) = (prefix[1], prefix[2], prefix[3]);
        if flags & !(LAYERED_FLAG_LEVEL | LAYERED_FLAG_SWITCH_POINT) != 0 || layer & 0xf0 != 0 {
            return Err(malformed("reserved LAYERED bits set"));
        }
        let encoding = layer & 0x03;
        if encoding as usize >= MAX_ENCODINGS {
            return Err(malformed("encoding index 3 does not exist (0 to 2)"));
        }
        let has_level = flags & LAYERED_FLAG_LEVEL != 0;
        if !has_level && level != 0 {
            return Err(malformed("a level byte without the LEVEL flag"));
        }
        Ok(Layer {
            encoding,
            temporal: (layer >> 2) & 0x03,
            switch_point: flags & LAYERED_FLAG_SWITCH_POINT != 0,
            level: has_level.then_some(AudioLevel {
                voice: level & 0x80 != 0,
                dbov: level & 0x7f,
            }),
        })
    }
}

/// A validated media frame: the whole frame's bytes, shared, with parsed offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaFrame {
    /// The MEDIA frame, type byte first (inside the LAYERED wrapper, if any).
    bytes: Bytes,
    /// The parsed header.
    header: MediaHeader,
    /// Length of the decoder configuration.
    config_len: usize,
    /// For a LAYERED frame: its prefix, and the whole frame as received.
    layered: Option<(Layer, Bytes)>,
}

impl MediaFrame {
    /// Validates `bytes` (a whole frame, type byte first) as a media frame.
    pub fn parse(bytes: Bytes) -> Result<Self, ProtocolError> {
        let malformed = |why: &str| ProtocolError::new(ErrorCode::MalformedFrame, why);
        if bytes.len() < MEDIA_HEADER_LEN {
            return Err(malformed("media frame shorter than its 24-byte header"));
        }
        if bytes[0] != FRAME_MEDIA {
            return Err(malformed("not a media frame"));
        }
        let flags = bytes[1];
        if flags & !(FLAG_KEY | FLAG_CONFIG) != 0 {
            return Err(malformed("reserved media flag bits set"));
        }
        let config_len = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
        let has_config = flags & FLAG_CONFIG != 0;
        let key = flags & FLAG_KEY != 0;
        if has_config && !key {
            return Err(malformed("CONFIG flag without KEY flag"));
        }
        if !has_config && config_len != 0 {
            return Err(malformed(
                "config_len is not 0 but the CONFIG flag is clear",
            ));
        }
        if MEDIA_HEADER_LEN + config_len > bytes.len() {
            return Err(malformed("config_len runs past the end of the frame"));
        }
        let u32_at =
            |o: usize| u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let track_id = u32_at(8);
        if track_id == 0 {
            return Err(malformed("track id 0"));
        }
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&bytes[16..24]);
        let header = MediaHeader {
            key,
            sender: u32_at(SENDER_OFFSET),
            track_id,
            sequence: u32_at(12),
            capture_timestamp_us: u64::from_be_bytes(ts),
        };
        Ok(MediaFrame {
            bytes,
            header,
            config_len,
            layered: None,
        })
    }

    /// Validates `bytes` (a whole frame, type byte first) as a LAYERED
    /// frame (PROTOCOL.md §6.6.2): the prefix, then a valid MEDIA frame.
    /// Whether the layer exists on the track is for the room to check.
    pub fn parse_layered(bytes: Bytes) -> Result<Self, ProtocolError> {
        if bytes.len() < LAYERED_PREFIX_LEN + MEDIA_HEADER_LEN {
            return Err(ProtocolError::new(
                ErrorCode::MalformedFrame,
                "LAYERED frame shorter than its 28-byte headers",
            ));
        }
        let layer = Layer::parse(&bytes)?;
        let inner = MediaFrame::parse(bytes.slice(LAYERED_PREFIX_LEN..))?;
        Ok(MediaFrame {
            layered: Some((layer, bytes)),
            ..inner
        })
    }

    /// Builds a LAYERED frame from its parts.
    pub fn build_layered(
        layer: Layer,
        header: &MediaHeader,
        config: Option<&[u8]>,
        payload: &[u8],
    ) -> Self {
        MediaFrame::build(header, config, payload).with_layer(layer)
    }

    /// Validates a frame that travels as media (PROTOCOL.md §3.3): a MEDIA
    /// frame, or a LAYERED one (§6.6.2), told apart by the type byte.
    pub fn parse_any(bytes: Bytes) -> Result<Self, ProtocolError> {
        match bytes.first() {
            Some(&FRAME_LAYERED) => MediaFrame::parse_layered(bytes),
            _ => MediaFrame::parse(bytes),
        }
    }

    /// The same frame wrapped in a LAYERED prefix (a copy), e.g. after a
    /// sender has encrypted the MEDIA frame inside.
    pub fn with_layer(&self, layer: Layer) -> Self {
        let mut b = BytesMut::with_capacity(LAYERED_PREFIX_LEN + self.bytes.len());
        b.put_slice(&layer.prefix());
        b.put_slice(&self.bytes);
        let whole = b.freeze();
        MediaFrame {
            bytes: whole.slice(LAYERED_PREFIX_LEN..),
            header: self.header,
            config_len: self.config_len,
            layered: Some((layer, whole)),
        }
    }

    /// The LAYERED prefix, for a frame that came or goes as LAYERED.
    pub fn layer(&self) -> Option<Layer> {
        self.layered.as_ref().map(|(l, _)| *l)
    }

    /// The frame as it travels to a peer that negotiated `sfu.1`: LAYERED
    /// when it came so, else the MEDIA frame.
    pub fn as_wire(&self) -> &Bytes {
        self.layered.as_ref().map_or(&self.bytes, |(_, w)| w)
    }

    /// Builds a frame from its parts.
    pub fn build(header: &MediaHeader, config: Option<&[u8]>, payload: &[u8]) -> Self {
        let config = config.unwrap_or(&[]);
        let config_len = config.len().min(u16::MAX as usize);
        let mut flags = 0;
        if header.key {
            flags |= FLAG_KEY;
        }
        if config_len > 0 {
            flags |= FLAG_CONFIG | FLAG_KEY;
        }
        let mut b = BytesMut::with_capacity(MEDIA_HEADER_LEN + config_len + payload.len());
        b.put_u8(FRAME_MEDIA);
        b.put_u8(flags);
        b.put_u16(config_len as u16);
        b.put_u32(header.sender);
        b.put_u32(header.track_id);
        b.put_u32(header.sequence);
        b.put_u64(header.capture_timestamp_us);
        b.put_slice(&config[..config_len]);
        b.put_slice(payload);
        let header = MediaHeader {
            key: flags & FLAG_KEY != 0,
            ..*header
        };
        MediaFrame {
            bytes: b.freeze(),
            header,
            config_len,
            layered: None,
        }
    }

    /// The parsed header.
    pub fn header(&self) -> &MediaHeader {
        &self.header
    }

    /// The decoder configuration, if the frame carries one.
    pub fn config(&self) -> Option<&[u8]> {
        (self.config_len > 0)
            .then(|| &self.bytes[MEDIA_HEADER_LEN..MEDIA_HEADER_LEN + self.config_len])
    }

    /// The encoded payload (opaque; maybe encrypted).
    pub fn payload(&self) -> Bytes {
        self.bytes.slice(MEDIA_HEADER_LEN + self.config_len..)
    }

    /// The MEDIA frame (without a LAYERED prefix): what a v1 peer receives.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The MEDIA frame (without a LAYERED prefix).
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Writes `sender` into the frame's sender field, copying the frame only if
    /// its buffer is shared.
    pub fn stamp_sender(self, sender: u32) -> Self {
        if self.header.sender == sender {
            return self;
        }
        let MediaFrame {
            bytes,
            header,
            config_len,
            layered,
        } = self;
        let header = MediaHeader { sender, ..header };
        match layered {
            // The MEDIA frame is a view of the LAYERED one: dropped first so
            // that the buffer is not shared and is stamped in place.
            Some((layer, whole)) => {
                drop(bytes);
                let whole = stamp_at(whole, LAYERED_PREFIX_LEN + SENDER_OFFSET, sender);
                MediaFrame {
                    bytes: whole.slice(LAYERED_PREFIX_LEN..),
                    header,
                    config_len,
                    layered: Some((layer, whole)),
                }
            }
            None => MediaFrame {
                bytes: stamp_sender(bytes, sender),
                header,
                config_len,
                layered: None,
            },
        }
    }
}

/// Writes `sender` at the sender offset of a media frame's bytes, in place
/// when the buffer is not shared. The frame must be at least a header long.
pub fn stamp_sender(bytes: Bytes, sender: u32) -> Bytes {
    stamp_at(bytes, SENDER_OFFSET, sender)
}

/// Writes `sender` at `offset`, in place when the buffer is not shared.
fn stamp_at(bytes: Bytes, offset: usize, sender: u32) -> Bytes {
    let mut m = bytes
        .try_into_mut()
        .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
    m[offset..offset + 4].copy_from_slice(&sender.to_be_bytes());
    m.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_measured_in_4_db_steps() {
        assert_eq!(AudioLevel::measure(&[]), AudioLevel::SILENT);
        assert_eq!(AudioLevel::measure(&[0.0; 960]).dbov, 127);
        // A full-scale square wave is 0 dBov.
        let square: Vec<f32> = (0..960)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert_eq!(AudioLevel::measure(&square).dbov, 0);
        // A sine at a tenth of full scale: RMS 0.0707, 23 dB down, said as 24.
        let sine: Vec<f32> = (0..960)
            .map(|i| 0.1 * (i as f32 * std::f32::consts::TAU * 440.0 / 48_000.0).sin())
            .collect();
        assert_eq!(AudioLevel::measure(&sine).dbov, 24);
        assert!(!AudioLevel::measure(&sine).voice);
        // Out-of-range and broken samples do not panic or exceed the scale.
        assert_eq!(
            AudioLevel::measure(&[f32::NAN, f32::INFINITY, 5.0, -5.0]).dbov,
            4
        );
    }

    fn header() -> MediaHeader {
        MediaHeader {
            key: true,
            sender: 0,
            track_id: 3,
            sequence: 0x0102_0304,
            capture_timestamp_us: 0x1122_3344_5566_7788,
        }
    }

    #[test]
    fn peek_reads_the_track_and_key_flag_of_whole_headers_only() {
        let key = MediaFrame::build(&header(), None, &[1]);
        let peek = MediaHeader::peek(key.as_bytes());
        assert_eq!(
            peek,
            Some(MediaPeek {
                key: true,
                track_id: 3
            })
        );
        let delta = MediaFrame::build(
            &MediaHeader {
                key: false,
                track_id: 9,
                ..header()
            },
            None,
            &[],
        );
        let peek = MediaHeader::peek(delta.as_bytes());
        assert_eq!(
            peek,
            Some(MediaPeek {
                key: false,
                track_id: 9
            })
        );
        assert_eq!(
            MediaHeader::peek(&key.as_bytes()[..MEDIA_HEADER_LEN - 1]),
            None
        );
        let mut control = key.as_bytes().to_vec();
        control[0] = crate::frame::FRAME_CONTROL;
        assert_eq!(MediaHeader::peek(&control), None);
    }

    #[test]
    fn layout_matches_the_spec_byte_for_byte() {
        let f = MediaFrame::build(&header(), Some(&[0xAA, 0xBB]), &[0xCC]);
        assert_eq!(
            hex(f.as_bytes()),
            concat!(
                "0203",
                "0002",
                "00000000",
                "00000003",
                "01020304",
                "1122334455667788",
                "aabb",
                "cc"
            )
        );
        let parsed = MediaFrame::parse(f.as_bytes().clone()).unwrap();
        assert_eq!(parsed.header(), &header());
        assert_eq!(parsed.config(), Some(&[0xAA, 0xBB][..]));
        assert_eq!(&parsed.payload()[..], &[0xCC]);
    }

    #[test]
    fn stamping_writes_only_the_sender_field() {
        let f = MediaFrame::build(&header(), None, b"payload");
        let before = f.as_bytes().clone();
        let stamped = f.stamp_sender(0xDEAD_BEEF);
        let after = stamped.as_bytes();
        assert_eq!(&after[4..8], &[0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(&after[..4], &before[..4]);
        assert_eq!(&after[8..], &before[8..]);
        assert_eq!(
            MediaFrame::parse(after.clone()).unwrap().header().sender,
            0xDEAD_BEEF
        );
    }

    #[test]
    fn rejects_each_malformation() {
        let good = MediaFrame::build(&header(), None, b"x").into_bytes();
        let mut short = good.to_vec();
        short.truncate(23);
        let mut reserved = good.to_vec();
        reserved[1] |= 0x80;
        let mut config_no_key = good.to_vec();
        config_no_key[1] = FLAG_CONFIG;
        let mut len_no_flag = good.to_vec();
        len_no_flag[3] = 1;
        let mut past_end = good.to_vec();
        past_end[1] = FLAG_KEY | FLAG_CONFIG;
        past_end[3] = 2;
        let mut zero_track = good.to_vec();
        zero_track[8..12].copy_from_slice(&[0, 0, 0, 0]);
        for bad in [
            short,
            reserved,
            config_no_key,
            len_no_flag,
            past_end,
            zero_track,
        ] {
            let e = MediaFrame::parse(Bytes::from(bad)).unwrap_err();
            assert_eq!(e.code, ErrorCode::MalformedFrame);
        }
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }
}
