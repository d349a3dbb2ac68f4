//! Sound for `convene stream` and `convene receive`: the codecs (Opus at
//! 48 kHz, and G.711 µ-law at 8 kHz for old streams), the `--audio tone`
//! source, levels, the pitch a receiver hears, and WAV files.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// Frames a second (20 ms each), for every codec.
pub(crate) const FRAMES_PER_SECOND: u32 = 50;
/// The Opus bitrate: ample for one voice (browsers send about as much).
const OPUS_BITRATE: i32 = 32_000;
/// Largest Opus packet we make or take (RFC 6716 §3.4: 1275 bytes a frame).
const OPUS_MAX_PACKET: usize = 1275;
/// An Opus encoder in DTX makes packets this small for silence; they are
/// not sent (a receiver conceals the gap).
const OPUS_DTX_PACKET: usize = 2;
/// Samples a frame of Opus at 48 kHz may hold at most (120 ms).
const OPUS_MAX_FRAME_SAMPLES: usize = 5760;

/// What went wrong with sound.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AudioError {
    /// libopus refused something.
    #[error("Opus: {0}")]
    Opus(#[from] opus::Error),
    /// A track announced a codec we cannot decode.
    #[error("cannot decode the audio codec `{0}` (only opus and PCMU)")]
    UnknownCodec(String),
    /// Writing a WAV file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// An audio codec this client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Codec {
    /// Opus, 48 kHz mono, DTX on silence: what browsers send.
    Opus,
    /// G.711 µ-law, 8 kHz mono, for receivers that know nothing else.
    Pcmu,
}

impl Codec {
    /// The codec string of a track (PROTOCOL.md §6.3).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Codec::Opus => "opus",
            Codec::Pcmu => "PCMU",
        }
    }

    /// The codec a track's codec string names, if one we know.
    pub(crate) fn from_name(name: &str) -> Option<Codec> {
        if name.eq_ignore_ascii_case("opus") {
            Some(Codec::Opus)
        } else if name.eq_ignore_ascii_case("PCMU") {
            Some(Codec::Pcmu)
        } else {
            None
        }
    }

    /// Samples a second.
    pub(crate) fn sample_rate(self) -> u32 {
        match self {
            Codec::Opus => 48_000,
            Codec::Pcmu => 8_000,
        }
    }

    /// Samples in one 20 ms frame.
    pub(crate) fn samples_per_frame(self) -> usize {
        (self.sample_rate() / FRAMES_PER_SECOND) as usize
    }
}

/// Turns 20 ms of mono samples into one frame's payload.
pub(crate) enum Encoder {
    /// µ-law: one byte a sample.
    Pcmu,
    /// libopus, VoIP mode, DTX on.
    Opus(Box<opus::Encoder>),
}

impl Encoder {
    /// An encoder for `codec`, taking samples at its rate.
    pub(crate) fn new(codec: Codec) -> Result<Encoder, AudioError> {
        Ok(match codec {
            Codec::Pcmu => Encoder::Pcmu,
            Codec::Opus => {
                let mut e = opus::Encoder::new(
                    Codec::Opus.sample_rate(),
                    opus::Channels::Mono,
                    opus::Application::Voip,
                )?;
                e.set_bitrate(opus::Bitrate::Bits(OPUS_BITRATE))?;
                e.set_dtx(true)?;
                e.set_inband_fec(true)?;
                e.set_packet_loss_perc(5)?;
                Encoder::Opus(Box::new(e))
            }
        })
    }

    /// One frame's payload, or None when the encoder says the frame is
    /// silence not worth sending (Opus DTX).
    pub(crate) fn encode(&mut self, pcm: &[i16]) -> Result<Option<Vec<u8>>, AudioError> {
        match self {
            Encoder::Pcmu => Ok(Some(pcm.iter().map(|&s| mulaw_encode(s)).collect())),
            Encoder::Opus(e) => {
                let packet = e.encode_vec(pcm, OPUS_MAX_PACKET)?;
                Ok((packet.len() > OPUS_DTX_PACKET).then_some(packet))
            }
        }
    }
}

/// Turns frames' payloads back into mono samples.
pub(crate) enum Decoder {
    /// µ-law.
    Pcmu,
    /// libopus at 48 kHz mono (a stereo stream is mixed down).
    Opus(Box<opus::Decoder>),
}

impl Decoder {
    /// A decoder for a track whose codec string is `name`.
    pub(crate) fn for_codec(name: &str) -> Result<Decoder, AudioError> {
        match Codec::from_name(name) {
            Some(Codec::Pcmu) => Ok(Decoder::Pcmu),
            Some(Codec::Opus) => Ok(Decoder::Opus(Box::new(opus::Decoder::new(
                Codec::Opus.sample_rate(),
                opus::Channels::Mono,
            )?))),
            None => Err(AudioError::UnknownCodec(name.to_string())),
        }
    }

    /// The rate of the samples it gives.
    pub(crate) fn sample_rate(&self) -> u32 {
        match self {
            Decoder::Pcmu => Codec::Pcmu.sample_rate(),
            Decoder::Opus(_) => Codec::Opus.sample_rate(),
        }
    }

    /// The samples of one payload.
    pub(crate) fn decode(&mut self, payload: &[u8]) -> Result<Vec<i16>, AudioError> {
        match self {
            Decoder::Pcmu => Ok(payload.iter().map(|&b| mulaw_decode(b)).collect()),
            Decoder::Opus(d) => {
                let mut out = vec![0i16; OPUS_MAX_FRAME_SAMPLES];
                let n = d.decode(payload, &mut out, false)?;
                out.truncate(n);
                Ok(out)
            }
        }
    }
}

const BIAS: i32 = 0x84;
const CLIP: i32 = 32_635;

/// G.711 µ-law encoding of one 16-bit sample.
pub(crate) fn mulaw_encode(sample: i16) -> u8 {
    let mut s = i32::from(sample);
    let sign = if s < 0 {
        s = -s;
        0x80
    } else {
        0
    };
    s = s.min(CLIP) + BIAS;
    let exponent = (7 - (s.leading_zeros() as i32 - 17)).clamp(0, 7);
    let mantissa = (s >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// G.711 µ-law decoding of one byte.
pub(crate) fn mulaw_decode(byte: u8) -> i16 {
    let b = !byte;
    let sign = b & 0x80;
    let exponent = i32::from((b >> 4) & 0x07);
    let mantissa = i32::from(b & 0x0F);
    let magnitude = (((mantissa << 3) + BIAS) << exponent) - BIAS;
    if sign != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

/// A sine tone, one frame at a time, phase-continuous.
#[derive(Debug)]
pub(crate) struct Tone {
    phase: f64,
    step: f64,
    amplitude: f64,
}

impl Tone {
    /// A tone of `hz` sampled at `rate`, whose peaks are `dbfs` below full scale.
    pub(crate) fn at(hz: f64, dbfs: f64, rate: u32) -> Tone {
        Tone {
            phase: 0.0,
            step: std::f64::consts::TAU * hz / f64::from(rate),
            amplitude: 32_767.0 * 10f64.powf(dbfs.min(0.0) / 20.0),
        }
    }

    /// The next `n` samples.
    pub(crate) fn next_samples(&mut self, n: usize) -> Vec<i16> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push((self.phase.sin() * self.amplitude) as i16);
            self.phase = (self.phase + self.step) % std::f64::consts::TAU;
        }
        out
    }
}

/// Samples as floats in -1..1 (what levels are measured on).
pub(crate) fn to_float(pcm: &[i16]) -> Vec<f32> {
    pcm.iter().map(|&s| f32::from(s) / 32_768.0).collect()
}

/// The level of some samples in dBFS (RMS); silence is -100.
pub(crate) fn level_dbfs(pcm: &[i16]) -> f64 {
    if pcm.is_empty() {
        return -100.0;
    }
    let sum: f64 = pcm
        .iter()
        .map(|&s| {
            let s = f64::from(s) / 32_768.0;
            s * s
        })
        .sum();
    let rms = (sum / pcm.len() as f64).sqrt();
    if rms <= 1e-5 {
        -100.0
    } else {
        20.0 * rms.log10()
    }
}

/// Frames quieter than this do not count towards the pitch (noise and
/// concealment cross zero at random).
const PITCH_FLOOR_DBFS: f64 = -50.0;

/// The frequency of a tone, from how often the sound rises through zero:
/// enough to tell which tone a receiver hears.
#[derive(Debug, Default, Clone)]
pub(crate) struct Pitch {
    rises: u64,
    seconds: f64,
    /// The last sample of the frame before, when that frame counted.
    last: Option<i16>,
}

impl Pitch {
    /// Takes one decoded frame at `rate`.
    pub(crate) fn add(&mut self, pcm: &[i16], rate: u32) {
        if pcm.is_empty() || level_dbfs(pcm) < PITCH_FLOOR_DBFS {
            self.last = None;
            return;
        }
        let mut prev = self.last;
        for &s in pcm {
            if prev.is_some_and(|p| p < 0 && s >= 0) {
                self.rises += 1;
            }
            if prev.is_some() {
                self.seconds += 1.0 / f64::from(rate);
            }
            prev = Some(s);
        }
        self.last = prev;
    }

    /// The frequency heard so far, in Hz (None before any sound).
    pub(crate) fn hz(&self) -> Option<f64> {
        (self.seconds > 0.0).then(|| self.rises as f64 / self.seconds)
    }
}

/// A 16-bit mono WAV file written as sound arrives; its sizes are set when
/// it is finished (a player reads one cut short by a crash anyway).
pub(crate) struct WavWriter {
    file: std::io::BufWriter<std::fs::File>,
    path: String,
    rate: u32,
    samples: u64,
}

impl WavWriter {
    /// Creates `path` for sound at `rate`.
    pub(crate) fn create(path: &Path, rate: u32) -> Result<WavWriter, AudioError> {
        let err = |source| AudioError::Write {
            path: path.display().to_string(),
            source,
        };
        let file = std::fs::File::create(path).map_err(err)?;
        let mut w = WavWriter {
            file: std::io::BufWriter::new(file),
            path: path.display().to_string(),
            rate,
            samples: 0,
        };
        w.header().map_err(err)?;
        Ok(w)
    }

    fn header(&mut self) -> std::io::Result<()> {
        let data = (self.samples * 2).min(u64::from(u32::MAX - 36)) as u32;
        let mut h = Vec::with_capacity(44);
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&(36 + data).to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes()); // PCM
        h.extend_from_slice(&1u16.to_le_bytes()); // mono
        h.extend_from_slice(&self.rate.to_le_bytes());
        h.extend_from_slice(&(self.rate * 2).to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(b"data");
        h.extend_from_slice(&data.to_le_bytes());
        self.file.write_all(&h)
    }

    /// Appends samples.
    pub(crate) fn write(&mut self, pcm: &[i16]) -> Result<(), AudioError> {
        let bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        self.samples += pcm.len() as u64;
        self.file
            .write_all(&bytes)
            .map_err(|source| AudioError::Write {
                path: self.path.clone(),
                source,
            })
    }

    /// Sets the sizes in the header and flushes.
    pub(crate) fn finish(mut self) -> Result<(), AudioError> {
        let path = self.path.clone();
        let err = |source| AudioError::Write {
            path: path.clone(),
            source,
        };
        self.file.flush().map_err(err)?;
        self.file.seek(SeekFrom::Start(0)).map_err(err)?;
        self.header().map_err(err)?;
        self.file.flush().map_err(err)
    }
}

/// The longest silence written for a gap in a track's capture times (DTX,
/// loss); a longer jump is a sender's clock, not silence.
const MAX_GAP_US: u64 = 5_000_000;

/// What `convene receive` does with one audio track: decodes it, measures
/// it, and with --dump-dir writes it to a WAV file, silence in its gaps.
pub(crate) struct Listener {
    decoder: Option<Decoder>,
    pitch: Pitch,
    wav: Option<WavWriter>,
    last_capture_us: Option<u64>,
    /// Frames decoded.
    pub(crate) decoded: u64,
    /// Frames that did not decode (or a codec we do not know).
    pub(crate) errors: u64,
    /// Sum of the decoded frames' levels (dBFS).
    pub(crate) level_sum: f64,
}

impl Listener {
    /// A listener for a track of `codec`, writing to `wav` if given.
    pub(crate) fn new(codec: &str, wav: Option<&Path>) -> Listener {
        let decoder = Decoder::for_codec(codec)
            .inspect_err(|e| tracing::warn!(error = %e, "audio track not decoded"))
            .ok();
        let wav = match (&decoder, wav) {
            (Some(d), Some(path)) => WavWriter::create(path, d.sample_rate())
                .inspect_err(|e| tracing::warn!(error = %e, "sound not written"))
                .ok(),
            _ => None,
        };
        Listener {
            decoder,
            pitch: Pitch::default(),
            wav,
            last_capture_us: None,
            decoded: 0,
            errors: 0,
            level_sum: 0.0,
        }
    }

    /// Takes one frame's payload, captured at `capture_us`.
    pub(crate) fn frame(&mut self, payload: &[u8], capture_us: u64) {
        let Some(decoder) = self.decoder.as_mut() else {
            self.errors += 1;
            return;
        };
        let pcm = match decoder.decode(payload) {
            Ok(pcm) => pcm,
            Err(_) => {
                self.errors += 1;
                return;
            }
        };
        let rate = decoder.sample_rate();
        self.decoded += 1;
        self.level_sum += level_dbfs(&pcm);
        self.pitch.add(&pcm, rate);
        if let Some(w) = self.wav.as_mut() {
            let frame_us = pcm.len() as u64 * 1_000_000 / u64::from(rate);
            if let Some(last) = self.last_capture_us {
                let gap = capture_us.saturating_sub(last + frame_us);
                // Jitter of the capture clock is not a gap; DTX's 400 ms is.
                if gap >= frame_us / 2 && gap <= MAX_GAP_US {
                    let missing = (gap * u64::from(rate) / 1_000_000) as usize;
                    let _ = w.write(&vec![0; missing]);
                }
            }
            if let Err(e) = w.write(&pcm) {
                tracing::warn!(error = %e, "sound no longer written");
                self.wav = None;
            }
        }
        self.last_capture_us = Some(
            self.last_capture_us
                .map_or(capture_us, |l| l.max(capture_us)),
        );
    }

    /// The tone heard, in Hz (None before any sound).
    pub(crate) fn hz(&self) -> Option<f64> {
        self.pitch.hz()
    }

    /// Finishes the WAV file, if one is written.
    pub(crate) fn finish(self) -> Result<(), AudioError> {
        match self.wav {
            Some(w) => w.finish(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mu_law_matches_the_standard_at_known_points() {
        assert_eq!(mulaw_encode(0), 0xFF);
        assert_eq!(mulaw_decode(0xFF), 0);
        assert_eq!(mulaw_encode(-1), 0x7F);
        assert_eq!(mulaw_encode(32_767), 0x80);
        assert_eq!(mulaw_decode(0x80), 32_124);
        assert_eq!(mulaw_decode(0x00), -32_124);
    }

    #[test]
    fn mu_law_round_trip_error_is_within_a_segment_step() {
        for s in (-32_000i32..32_000).step_by(97) {
            let back = i32::from(mulaw_decode(mulaw_encode(s as i16)));
            let step = (s.abs() / 16).max(8);
            assert!((back - s).abs() <= step, "{s} came back as {back}");
        }
    }

    #[test]
    fn the_tone_is_at_its_level_and_silence_is_silent() {
        let mut t = Tone::at(440.0, -12.04, 8_000);
        let f = t.next_samples(160);
        // A sine at a quarter of full scale: 20·log10(0.25/√2) ≈ -15.05 dBFS.
        let level = level_dbfs(&f);
        assert!((level + 15.05).abs() < 0.5, "level {level}");
        assert_eq!(level_dbfs(&[0; 160]), -100.0);
    }

    /// Encodes `seconds` of a tone with `codec` and decodes it again.
    fn round_trip(codec: Codec, hz: f64, seconds: u32) -> (Pitch, f64, usize) {
        let mut tone = Tone::at(hz, -12.0, codec.sample_rate());
        let mut enc = Encoder::new(codec).unwrap();
        let mut dec = Decoder::for_codec(codec.name()).unwrap();
        let mut pitch = Pitch::default();
        let (mut level, mut frames, mut bytes) = (0.0, 0, 0);
        for i in 0..seconds * FRAMES_PER_SECOND {
            let pcm = tone.next_samples(codec.samples_per_frame());
            let payload = enc.encode(&pcm).unwrap().expect("a tone is not silence");
            bytes += payload.len();
            let out = dec.decode(&payload).unwrap();
            assert_eq!(out.len(), codec.samples_per_frame());
            // The codec's start-up (Opus's look-ahead) is left out.
            if i >= 5 {
                pitch.add(&out, dec.sample_rate());
                level += level_dbfs(&out);
                frames += 1;
            }
        }
        (pitch, level / f64::from(frames), bytes)
    }

    #[test]
    fn opus_carries_a_tone_at_its_pitch_and_level() {
        for hz in [440.0, 1000.0] {
            let (pitch, level, bytes) = round_trip(Codec::Opus, hz, 2);
            let heard = pitch.hz().unwrap();
            assert!(
                (heard - hz).abs() < hz * 0.01,
                "{hz} Hz came back as {heard}"
            );
            assert!((level + 15.05).abs() < 1.5, "level {level}");
            // About 32 kbit/s: far below µ-law's 64.
            let kbps = bytes as f64 * 8.0 / 2.0 / 1000.0;
            assert!((16.0..48.0).contains(&kbps), "{kbps} kbit/s");
        }
    }

    #[test]
    fn mu_law_carries_a_tone_at_its_pitch() {
        let (pitch, level, bytes) = round_trip(Codec::Pcmu, 440.0, 1);
        let heard = pitch.hz().unwrap();
        assert!((heard - 440.0).abs() < 5.0, "440 Hz came back as {heard}");
        assert!((level + 15.05).abs() < 0.5, "level {level}");
        assert_eq!(bytes, 8_000);
    }

    #[test]
    fn opus_sends_nothing_for_long_silence() {
        let mut enc = Encoder::new(Codec::Opus).unwrap();
        let silence = vec![0i16; Codec::Opus.samples_per_frame()];
        let sent = (0..100)
            .filter(|_| enc.encode(&silence).unwrap().is_some())
            .count();
        // DTX sends a frame now and then (every 400 ms) to keep comfort
        // noise going; 2 s of silence must not be 100 frames.
        assert!(sent < 20, "{sent} of 100 silent frames sent");
    }

    #[test]
    fn unknown_codecs_and_garbage_are_errors_not_panics() {
        assert!(matches!(
            Decoder::for_codec("vorbis"),
            Err(AudioError::UnknownCodec(_))
        ));
        let mut d = Decoder::for_codec("OPUS").unwrap();
        for junk in [&[0xFFu8; 3][..], &[0x0B, 0xFF, 0xFF, 0xFF], &[0xFC; 1400]] {
            let _ = d.decode(junk);
        }
    }

    #[test]
    fn wav_files_have_the_sizes_of_what_was_written() {
        let dir = std::env::temp_dir().join(format!("convene-wav-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.wav");
        let mut w = WavWriter::create(&path, 48_000).unwrap();
        w.write(&[1, -1, 2]).unwrap();
        w.finish().unwrap();
        let b = std::fs::read(&path).unwrap();
        assert_eq!(b.len(), 44 + 6);
        assert_eq!(&b[0..4], b"RIFF");
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 42);
        assert_eq!(u32::from_le_bytes(b[24..28].try_into().unwrap()), 48_000);
        assert_eq!(u32::from_le_bytes(b[40..44].try_into().unwrap()), 6);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
