//! The `--audio tone` source: a 440 Hz sine in G.711 µ-law (codec `PCMU`,
//! 8 kHz mono, 20 ms = 160 bytes a frame), and the µ-law decoder `receive`
//! uses to report the level it hears.

/// Samples a second.
pub(crate) const SAMPLE_RATE: u32 = 8_000;
/// Frames a second (20 ms each).
pub(crate) const FRAMES_PER_SECOND: u32 = 50;
/// Samples (= bytes) a frame.
pub(crate) const SAMPLES_PER_FRAME: usize = (SAMPLE_RATE / FRAMES_PER_SECOND) as usize;
/// The codec string announced for the track.
pub(crate) const CODEC: &str = "PCMU";

const BIAS: i32 = 0x84;
const CLIP: i32 = 32_635;

/// G.711 µ-law encoding of one 16-bit sample.
pub(crate) fn encode(sample: i16) -> u8 {
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
pub(crate) fn decode(byte: u8) -> i16 {
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
    /// A tone of `hz` at a quarter of full scale (about -12 dBFS).
    #[cfg(test)]
    pub(crate) fn new(hz: f64) -> Tone {
        Tone::at(hz, -12.04)
    }

    /// A tone of `hz` whose peaks are `dbfs` below full scale.
    pub(crate) fn at(hz: f64, dbfs: f64) -> Tone {
        Tone {
            phase: 0.0,
            step: std::f64::consts::TAU * hz / f64::from(SAMPLE_RATE),
            amplitude: 32_768.0 * 10f64.powf(dbfs.min(0.0) / 20.0),
        }
    }

    /// The next 20 ms, µ-law encoded.
    pub(crate) fn next_frame(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SAMPLES_PER_FRAME);
        for _ in 0..SAMPLES_PER_FRAME {
            out.push(encode((self.phase.sin() * self.amplitude) as i16));
            self.phase = (self.phase + self.step) % std::f64::consts::TAU;
        }
        out
    }
}

/// The level of a µ-law frame in dBFS (RMS); silence is -100.
pub(crate) fn level_dbfs(frame: &[u8]) -> f64 {
    if frame.is_empty() {
        return -100.0;
    }
    let sum: f64 = frame
        .iter()
        .map(|&b| {
            let s = f64::from(decode(b)) / 32_768.0;
            s * s
        })
        .sum();
    let rms = (sum / frame.len() as f64).sqrt();
    if rms <= 1e-5 {
        -100.0
    } else {
        20.0 * rms.log10()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mu_law_matches_the_standard_at_known_points() {
        assert_eq!(encode(0), 0xFF);
        assert_eq!(decode(0xFF), 0);
        assert_eq!(encode(-1), 0x7F);
        assert_eq!(encode(32_767), 0x80);
        assert_eq!(decode(0x80), 32_124);
        assert_eq!(decode(0x00), -32_124);
    }

    #[test]
    fn mu_law_round_trip_error_is_within_a_segment_step() {
        for s in (-32_000i32..32_000).step_by(97) {
            let back = i32::from(decode(encode(s as i16)));
            let step = (s.abs() / 16).max(8);
            assert!((back - s).abs() <= step, "{s} came back as {back}");
        }
    }

    #[test]
    fn the_tone_is_at_minus_15_dbfs_and_silence_is_silent() {
        let mut t = Tone::new(440.0);
        let f = t.next_frame();
        assert_eq!(f.len(), 160);
        let level = level_dbfs(&f);
        // A sine at a quarter of full scale: 20·log10(0.25/√2) ≈ -15.05 dBFS.
        assert!((level + 15.05).abs() < 0.5, "level {level}");
        assert_eq!(level_dbfs(&[0xFF; 160]), -100.0);
    }
}
