//! H.264 through OpenH264 (built from its bundled source): an encoder with
//! rate control and key frames on demand, and a decoder to I420.
//!
//! Frames travel as Annex B byte streams; every key frame carries its SPS
//! and PPS in band, so a receiver can start at any key frame.

use openh264::OpenH264API;
use openh264::decoder::{Decoder, DecoderConfig};
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod,
    RateControlMode, SpsPpsStrategy, UsageType,
};
use openh264::formats::YUVSource;

use crate::frame::I420;

/// What went wrong in the codec.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    /// OpenH264 refused.
    #[error("OpenH264: {0}")]
    OpenH264(#[from] openh264::Error),
}

/// One encoded picture.
#[derive(Debug)]
pub(crate) struct Encoded {
    /// Annex B NAL units; empty when rate control skipped the picture.
    pub(crate) data: Vec<u8>,
    /// An IDR picture (with SPS/PPS): a decoder can start here.
    pub(crate) key: bool,
}

/// Encoder settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EncoderSettings {
    /// Target bitrate.
    pub(crate) bitrate_kbps: u32,
    /// Frames per second the source delivers.
    pub(crate) fps: u32,
}

/// An H.264 encoder at a target bitrate.
pub(crate) struct H264Encoder {
    inner: Encoder,
    started: std::time::Instant,
    frames: u64,
}

impl std::fmt::Debug for H264Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H264Encoder")
            .field("frames", &self.frames)
            .finish_non_exhaustive()
    }
}

impl H264Encoder {
    /// A constrained-baseline encoder for real-time video.
    pub(crate) fn new(settings: EncoderSettings) -> Result<H264Encoder, CodecError> {
        let config = EncoderConfig::new()
            .usage_type(UsageType::CameraVideoRealTime)
            .rate_control_mode(RateControlMode::Bitrate)
            .bitrate(BitRate::from_bps(
                settings.bitrate_kbps.saturating_mul(1000),
            ))
            .max_frame_rate(FrameRate::from_hz(settings.fps as f32))
            // OpenH264 only holds a bitrate when it may skip a picture now
            // and then; a skipped picture comes back empty and is not sent.
            .skip_frames(true)
            .complexity(Complexity::Low)
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            // Key frames come when asked for and at our own interval.
            .intra_frame_period(IntraFramePeriod::from_num_frames(0))
            .num_threads(1);
        let inner = Encoder::with_api_config(OpenH264API::from_source(), config)?;
        Ok(H264Encoder {
            inner,
            started: std::time::Instant::now(),
            frames: 0,
        })
    }

    /// Encodes one picture; `key` forces an IDR picture.
    pub(crate) fn encode(&mut self, picture: &I420, key: bool) -> Result<Encoded, CodecError> {
        if key || self.frames == 0 {
            self.inner.force_intra_frame();
        }
        self.frames += 1;
        let at = openh264::Timestamp::from_millis(self.started.elapsed().as_millis() as u64);
        let bits = self.inner.encode_at(picture, at)?;
        let key = matches!(bits.frame_type(), FrameType::IDR | FrameType::I);
        if bits.frame_type() == FrameType::Skip {
            return Ok(Encoded {
                data: Vec::new(),
                key: false,
            });
        }
        Ok(Encoded {
            data: bits.to_vec(),
            key,
        })
    }
}

/// A decoder for one track.
pub(crate) struct H264Decoder {
    inner: Decoder,
}

impl std::fmt::Debug for H264Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("H264Decoder")
    }
}

impl H264Decoder {
    /// A fresh decoder.
    pub(crate) fn new() -> Result<H264Decoder, CodecError> {
        let inner = Decoder::with_api_config(OpenH264API::from_source(), DecoderConfig::new())?;
        Ok(H264Decoder { inner })
    }

    /// A decoder for files, whose pictures may come out of order (B
    /// frames): it is never flushed between pictures, which would end the
    /// stream's reordering, only with [`H264Decoder::flush`] at the end.
    pub(crate) fn reordering() -> Result<H264Decoder, CodecError> {
        let config = DecoderConfig::new().flush_after_decode(openh264::decoder::Flush::NoFlush);
        let inner = Decoder::with_api_config(OpenH264API::from_source(), config)?;
        Ok(H264Decoder { inner })
    }

    /// Decodes one access unit; `None` when it completes no picture.
    pub(crate) fn decode(&mut self, data: &[u8]) -> Result<Option<I420>, CodecError> {
        let Some(pic) = self.inner.decode(data)? else {
            return Ok(None);
        };
        let (w, h) = pic.dimensions();
        if w == 0 || h == 0 || w % 2 != 0 || h % 2 != 0 {
            return Ok(None);
        }
        Ok(Some(I420::from_planes(
            w,
            h,
            (pic.y(), pic.u(), pic.v()),
            pic.strides(),
        )))
    }

    /// The pictures the decoder still holds (for reordering) at the end of
    /// a stream.
    pub(crate) fn flush(&mut self) -> Result<Vec<I420>, CodecError> {
        Ok(self
            .inner
            .flush_remaining()?
            .iter()
            .filter_map(|pic| {
                let (w, h) = pic.dimensions();
                (w > 0 && h > 0 && w % 2 == 0 && h % 2 == 0)
                    .then(|| I420::from_planes(w, h, (pic.y(), pic.u(), pic.v()), pic.strides()))
            })
            .collect())
    }
}

/// The RFC 6381 codec string for what [`H264Encoder`] makes at this size:
/// constrained baseline, level 3.1 up to 1280x720 at 30 fps, else 4.0.
pub(crate) fn codec_string(width: u32, height: u32, fps: u32) -> &'static str {
    let macroblocks_per_second = (width.div_ceil(16) * height.div_ceil(16)) * fps;
    if macroblocks_per_second <= 108_000 && width * height <= 921_600 {
        "avc1.42E01F"
    } else {
        "avc1.42E028"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pattern::{self, Stamp};

    fn picture(counter: u32) -> I420 {
        let mut f = I420::black(320, 240);
        pattern::render(
            &mut f,
            Stamp {
                counter,
                unix_ms: 1_790_000_000_000 + u64::from(counter),
            },
        );
        f
    }

    #[test]
    fn the_stamp_survives_encode_and_decode() {
        let mut enc = H264Encoder::new(EncoderSettings {
            bitrate_kbps: 500,
            fps: 30,
        })
        .unwrap();
        let mut dec = H264Decoder::new().unwrap();
        let mut read = Vec::new();
        for n in 0..30 {
            let e = enc.encode(&picture(n), false).unwrap();
            assert_eq!(e.key, n == 0, "only the first picture is a key frame");
            if let Some(p) = dec.decode(&e.data).unwrap() {
                assert_eq!((p.width(), p.height()), (320, 240));
                read.push(pattern::read(p.y(), 320, 240).map(|s| s.counter));
            }
        }
        let expected: Vec<Option<u32>> = (0..30).map(Some).collect();
        assert_eq!(read, expected);
    }

    #[test]
    fn a_forced_key_frame_lets_a_new_decoder_start() {
        let mut enc = H264Encoder::new(EncoderSettings {
            bitrate_kbps: 300,
            fps: 15,
        })
        .unwrap();
        for n in 0..5 {
            enc.encode(&picture(n), false).unwrap();
        }
        let delta = enc.encode(&picture(5), false).unwrap();
        assert!(!delta.key);
        let key = enc.encode(&picture(6), true).unwrap();
        assert!(key.key);
        let mut late = H264Decoder::new().unwrap();
        let p = late
            .decode(&key.data)
            .unwrap()
            .expect("a key frame decodes alone");
        assert_eq!(pattern::read(p.y(), 320, 240).map(|s| s.counter), Some(6));
    }

    #[test]
    fn garbage_is_an_error_or_nothing_never_a_crash() {
        let mut dec = H264Decoder::new().unwrap();
        for junk in [&[][..], &[0, 0, 0, 1, 0x65, 1, 2, 3], &[0xFF; 64]] {
            if let Ok(Some(p)) = dec.decode(junk) {
                panic!("garbage decoded to {p:?}");
            }
        }
    }

    #[test]
    fn codec_strings_follow_the_level_limits() {
        assert_eq!(codec_string(1280, 720, 30), "avc1.42E01F");
        assert_eq!(codec_string(1920, 1080, 30), "avc1.42E028");
    }
}
