//! The meeting's sound in one track (`meeting-audio.mp4`): every
//! participant's sound decoded, placed on the recording's timeline by its
//! capture time to the sample, summed, and encoded again as Opus. It is what
//! a listener of the whole meeting wants, and the sound of an
//! active-speaker HLS stream.
//!
//! A 20 ms stretch of the mix is encoded once the recorder's own clock is
//! [`LAG`] past it, so sound that arrives a little late still makes it in;
//! sound later than that, or claiming to be from the future, is left out
//! (and counted), which bounds what a participant's clock can do to the
//! mix and what the mixer holds.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::fmp4::{Fragment, Media, TrackFile};
use crate::audio;

/// Samples in a 20 ms frame at 48 kHz.
const FRAME: u64 = 960;
/// How far behind the recorder's clock the mix is encoded: 300 ms.
const LAG: u64 = 15;
/// Sound placed more than this ahead of the recorder's clock is left out: 1 s.
const AHEAD: u64 = 50;
/// A 20 ms Opus frame of silence (CELT, full band, mono).
const OPUS_SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];
/// The longest silence written for a stretch nobody spoke in (10 min).
const MAX_SILENCE_FILL: u64 = 10 * 60 * 50;

/// The mix being made.
pub(crate) struct Mixer {
    path: PathBuf,
    decoders: HashMap<(u32, u32), Option<audio::Decoder>>,
    encoder: audio::Encoder,
    /// Sums of the frames not yet encoded, by frame number on the timeline.
    frames: BTreeMap<u64, Box<[i32; FRAME as usize]>>,
    /// Frames before this one are encoded (or were silence).
    done: u64,
    file: Option<TrackFile>,
    /// Decoded frames that came too late or too early for the mix.
    pub(crate) left_out: u64,
    /// Frames mixed.
    pub(crate) mixed: u64,
}

impl Mixer {
    /// A mixer writing `dir/meeting-audio.mp4` once there is sound.
    pub(crate) fn new(dir: &Path) -> Result<Mixer, audio::AudioError> {
        Ok(Mixer {
            path: dir.join("meeting-audio.mp4"),
            decoders: HashMap::new(),
            encoder: audio::Encoder::new(audio::Codec::Opus)?,
            frames: BTreeMap::new(),
            done: 0,
            file: None,
            left_out: 0,
            mixed: 0,
        })
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The file, once written to.
    pub(crate) fn file(&self) -> Option<&TrackFile> {
        self.file.as_ref()
    }

    /// Adds a frame of track `key` (codec `codec`) that starts at sample
    /// `at` of the timeline, when the recorder's clock says `now` (samples).
    /// Returns the fragments of the mix written meanwhile.
    pub(crate) fn add(
        &mut self,
        key: (u32, u32),
        codec: &str,
        payload: &[u8],
        at: u64,
        now: u64,
    ) -> std::io::Result<Vec<Fragment>> {
        let decoder = self
            .decoders
            .entry(key)
            .or_insert_with(|| audio::Decoder::for_codec(codec).ok());
        let Some(decoder) = decoder.as_mut() else {
            return Ok(Vec::new());
        };
        let Ok(pcm) = decoder.decode(payload) else {
            return Ok(Vec::new());
        };
        // µ-law is 8 kHz: each sample six times.
        let step = (48_000 / decoder.sample_rate().max(1)) as usize;
        let first = at / FRAME;
        let last = (at + (pcm.len() * step) as u64) / FRAME;
        if first < self.done || last > now / FRAME + AHEAD {
            self.left_out += 1;
        } else {
            self.mixed += 1;
            let total = pcm.len() * step;
            let mut i = 0;
            while i < total {
                let n = at + i as u64;
                let offset = (n % FRAME) as usize;
                let take = (FRAME as usize - offset).min(total - i);
                let frame = self
                    .frames
                    .entry(n / FRAME)
                    .or_insert_with(|| Box::new([0; FRAME as usize]));
                for k in 0..take {
                    frame[offset + k] += i32::from(pcm[(i + k) / step]);
                }
                i += take;
            }
        }
        self.encode_until((now / FRAME).saturating_sub(LAG))
    }

    /// A track ended: its decoder goes.
    pub(crate) fn forget(&mut self, key: (u32, u32)) {
        self.decoders.remove(&key);
    }

    /// Encodes every frame before `until`.
    fn encode_until(&mut self, until: u64) -> std::io::Result<Vec<Fragment>> {
        let mut written = Vec::new();
        while let Some(entry) = self.frames.first_entry() {
            let n = *entry.key();
            if n >= until {
                break;
            }
            let sum = entry.remove();
            let pcm: Vec<i16> = sum
                .iter()
                .map(|&s| s.clamp(-32_768, 32_767) as i16)
                .collect();
            let packet = match self.encoder.encode(&pcm) {
                Ok(Some(p)) => p,
                _ => OPUS_SILENCE.to_vec(),
            };
            if self.file.is_none() {
                self.file = Some(TrackFile::create(&self.path, &Media::Opus { channels: 1 })?);
                self.done = n;
            }
            let Some(file) = self.file.as_mut() else {
                break;
            };
            // Nobody spoke between: silence keeps the timeline whole.
            if n > self.done && n - self.done <= MAX_SILENCE_FILL {
                for m in self.done..n {
                    written.extend(file.push(m * FRAME, OPUS_SILENCE.to_vec(), true)?.1);
                }
            }
            written.extend(file.push(n * FRAME, packet, true)?.1);
            self.done = n + 1;
        }
        Ok(written)
    }

    /// Encodes what is held and writes it to the file as a fragment now
    /// (the end of the recording); returns the fragments written.
    pub(crate) fn flush(&mut self) -> std::io::Result<Vec<Fragment>> {
        let mut written = self.encode_until(u64::MAX)?;
        if let Some(file) = self.file.as_mut() {
            written.extend(file.flush(FRAME)?);
        }
        Ok(written)
    }

    /// Closes the file. Returns, when there was sound, the file's samples,
    /// bytes, start and length (seconds).
    pub(crate) fn finish(mut self) -> std::io::Result<Option<(u64, u64, f64, f64)>> {
        self.flush()?;
        let Some(file) = self.file.take() else {
            return Ok(None);
        };
        let first = file.first_dts().unwrap_or(0);
        let end = file
            .fragments()
            .last()
            .map_or(first, |f| f.start + f.duration);
        let summary = (
            file.samples(),
            file.len(),
            first as f64 / 48_000.0,
            (end - first) as f64 / 48_000.0,
        );
        file.finish(FRAME)?;
        Ok(Some(summary))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goertzel power of `hz` in `pcm` at 48 kHz, normalised.
    fn power(pcm: &[i16], hz: f64) -> f64 {
        let w = std::f64::consts::TAU * hz / 48_000.0;
        let (mut a, mut b) = (0.0, 0.0);
        for &x in pcm {
            let c = f64::from(x) + 2.0 * w.cos() * a - b;
            b = a;
            a = c;
        }
        (a * a + b * b - 2.0 * w.cos() * a * b) / (pcm.len() as f64).powi(2)
    }

    #[test]
    fn two_voices_are_mixed_in_time_and_late_or_future_sound_is_left_out() {
        let dir = std::env::temp_dir().join(format!("convene-mix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut mix = Mixer::new(&dir).unwrap();
        let mut encoders = [
            audio::Encoder::new(audio::Codec::Opus).unwrap(),
            audio::Encoder::new(audio::Codec::Opus).unwrap(),
        ];
        let mut tones = [
            audio::Tone::at(440.0, -12.0, 48_000),
            audio::Tone::at(1000.0, -12.0, 48_000),
        ];
        // Two voices 7 ms apart on the timeline, 2 s of each; the clock
        // runs with them.
        for f in 0..100u64 {
            for (v, offset) in [(0usize, 0u64), (1, 336)] {
                let packet = encoders[v]
                    .encode(&tones[v].next_samples(960))
                    .unwrap()
                    .unwrap();
                let at = 48_000 + f * FRAME + offset;
                mix.add((v as u32, 1), "opus", &packet, at, at).unwrap();
            }
        }
        // Far too late, and from the future: left out.
        let packet = encoders[0]
            .encode(&tones[0].next_samples(960))
            .unwrap()
            .unwrap();
        mix.add((0, 1), "opus", &packet, 0, 48_000 + 100 * FRAME)
            .unwrap();
        mix.add((0, 1), "opus", &packet, 10 * 48_000, 48_000 + 100 * FRAME)
            .unwrap();
        assert_eq!(mix.left_out, 2);
        assert_eq!(mix.mixed, 200);
        let path = mix.path().to_path_buf();
        let (samples, _, start, seconds) = mix.finish().unwrap().unwrap();
        assert!((start - 1.0).abs() < 0.001, "starts at {start}");
        assert!((seconds - 2.02).abs() < 0.03, "{seconds} s");
        assert!((101..=102).contains(&samples), "{samples} frames");
        // Both voices are in the decoded mix, well above a pitch neither has.
        let data = std::fs::read(&path).unwrap();
        let mut dec = audio::Decoder::for_codec("opus").unwrap();
        let mut pcm = Vec::new();
        // The samples of each fragment's mdat: sizes from the trun.
        let mut at = 0;
        while at + 8 <= data.len() {
            let size = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
            if &data[at + 4..at + 8] == b"moof" {
                let moof = &data[at..at + size];
                let trun = moof.windows(4).position(|w| w == b"trun").unwrap();
                let count =
                    u32::from_be_bytes(moof[trun + 8..trun + 12].try_into().unwrap()) as usize;
                let mut payload = at + size + 8;
                for i in 0..count {
                    let e = trun + 16 + i * 12;
                    let len = u32::from_be_bytes(moof[e + 4..e + 8].try_into().unwrap()) as usize;
                    pcm.extend(dec.decode(&data[payload..payload + len]).unwrap());
                    payload += len;
                }
            }
            at += size;
        }
        let middle = &pcm[24_000..72_000];
        let (a, b, none) = (
            power(middle, 440.0),
            power(middle, 1000.0),
            power(middle, 700.0),
        );
        assert!(
            a > 100.0 * none && b > 100.0 * none,
            "440: {a}, 1000: {b}, 700: {none}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
