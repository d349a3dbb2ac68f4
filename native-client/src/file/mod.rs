//! `convene stream --source FILE`: pictures and sound from a Y4M or MP4
//! file, played at the file's own pace.
//!
//! Pictures are decoded to raw frames here and go through the same encoders
//! as a camera's. The file's Opus sound is decoded on a thread of its own and
//! handed over 20 ms at a time, like a microphone's. Both are paced from the
//! file's timestamps against one [`PlayClock`], so they stay together, loop
//! after loop.

pub(crate) mod mp4;
pub(crate) mod y4m;

use std::collections::{BinaryHeap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::frame::I420;
use crate::h264::H264Decoder;

/// The largest pictures read from a file (8K UHD); the encoder takes at
/// most 3840x2160, so larger files need `--resolution`.
pub(crate) const MAX_FILE_WIDTH: usize = 7680;
/// See [`MAX_FILE_WIDTH`].
pub(crate) const MAX_FILE_HEIGHT: usize = 4320;
/// How late a picture may be before it is left out to catch up (in frame
/// periods): a slow encoder drops pictures rather than falling behind the sound.
const LATE_FRAMES: u32 = 2;
/// How late 20 ms of sound may be before it is left out to catch up.
const LATE_SOUND: Duration = Duration::from_millis(200);
/// Sound frames waiting for the sender before newer ones are dropped.
const SOUND_QUEUE: usize = 16;
/// The highest frame rate played: above it a picture's time is too short to
/// wait for (and a garbled header may claim millions).
const MAX_FPS: f64 = 240.0;
/// Pictures in a row OpenH264 may refuse before the file is given up on.
const MAX_DECODE_ERRORS: u32 = 30;

/// What went wrong with a file.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FileError {
    /// The file would not open or read.
    #[error("cannot read {file}: {source}")]
    Open {
        /// The file.
        file: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file opened, but its content is not something we play.
    #[error("cannot play {file}: {why}")]
    Bad {
        /// The file.
        file: String,
        /// What is wrong, and what to do.
        why: String,
    },
}

impl FileError {
    fn open(path: &Path, source: std::io::Error) -> FileError {
        FileError::Open {
            file: path.display().to_string(),
            source,
        }
    }
}

/// A frame rate as a fraction, as files state it (30000/1001 is 29.97).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    /// Frames…
    num: u64,
    /// …per this many seconds.
    den: u64,
}

impl Rate {
    /// `num` frames in `den` seconds; none when either is zero.
    pub(crate) fn new(num: u64, den: u64) -> Option<Rate> {
        (num > 0 && den > 0).then_some(Rate { num, den })
    }

    /// Frames a second.
    pub(crate) fn fps(self) -> f64 {
        self.num as f64 / self.den as f64
    }

    /// Frames a second as the encoder and the track announce it (at least 1).
    pub(crate) fn whole(self) -> u32 {
        (self.fps().round() as u32).max(1)
    }

    /// How long one frame lasts.
    fn period(self) -> Duration {
        Duration::from_nanos((u128::from(self.den) * 1_000_000_000 / u128::from(self.num)) as u64)
    }

    /// When frame `n` is shown, from the first.
    fn at(self, n: u64) -> Duration {
        let nanos = u128::from(n) * u128::from(self.den) * 1_000_000_000 / u128::from(self.num);
        Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
    }
}

/// `n` rounded down to even (at least 2): H.264 in 4:2:0 needs even sizes.
fn even(n: usize) -> usize {
    (n & !1).max(2)
}

/// A file's container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Container {
    /// YUV4MPEG2: raw pictures, no sound.
    Y4m,
    /// MP4 with H.264 and maybe Opus.
    Mp4,
}

/// What a file holds, from its header and index.
#[derive(Debug, Clone)]
pub(crate) struct FileInfo {
    /// The file.
    pub(crate) path: PathBuf,
    /// Y4M or MP4.
    pub(crate) container: Container,
    /// Pixels across and down.
    pub(crate) width: usize,
    /// See `width`.
    pub(crate) height: usize,
    /// Frames a second.
    pub(crate) rate: Rate,
    /// Its sound.
    pub(crate) sound: mp4::Sound,
    /// How long one pass lasts, when the index says (MP4); a Y4M file's
    /// length shows at its end.
    pub(crate) duration: Option<Duration>,
}

/// Opens `path` to see what it holds: the container by its first bytes (so
/// the extension does not matter), then the header and index, checked.
pub(crate) fn probe(path: &Path) -> Result<FileInfo, FileError> {
    let info = probe_container(path)?;
    let fps = info.rate.fps();
    if fps > MAX_FPS {
        return Err(FileError::Bad {
            file: path.display().to_string(),
            why: format!(
                "its frame rate is {fps:.0} fps; convene plays files at up to {MAX_FPS} fps: \
                 convert with `ffmpeg -i IN -r 30 -c:v libx264 -pix_fmt yuv420p -c:a libopus out.mp4`"
            ),
        });
    }
    Ok(info)
}

fn probe_container(path: &Path) -> Result<FileInfo, FileError> {
    let mut head = [0u8; 12];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(path).map_err(|e| FileError::open(path, e))?;
        f.read(&mut head).map_err(|e| FileError::open(path, e))?
    };
    if head[..n].starts_with(b"YUV4MPEG2") {
        let r = y4m::Y4mReader::open(path)?;
        let (width, height) = r.size();
        return Ok(FileInfo {
            path: path.to_path_buf(),
            container: Container::Y4m,
            width,
            height,
            rate: r.rate(),
            sound: mp4::Sound::None,
            duration: None,
        });
    }
    if n >= 8 && &head[4..8] == b"ftyp" {
        let r = mp4::Mp4Reader::open(path)?;
        let v = r.video();
        let sound = r.sound().clone();
        let sound_duration = match &sound {
            mp4::Sound::Opus { duration, .. } => *duration,
            _ => Duration::ZERO,
        };
        return Ok(FileInfo {
            path: path.to_path_buf(),
            container: Container::Mp4,
            width: v.width,
            height: v.height,
            rate: v.rate().expect("checked on opening"),
            duration: Some(v.duration.max(sound_duration)),
            sound,
        });
    }
    Err(FileError::Bad {
        file: path.display().to_string(),
        why: "it is neither a Y4M file (YUV4MPEG2) nor an MP4 file (ftyp); convene plays \
              those: convert with `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p -c:a libopus out.mp4`"
            .into(),
    })
}

/// The one clock the file's pictures and sound are paced against. It starts
/// when the stream first joins the meeting, so nobody misses the beginning.
#[derive(Debug, Default)]
pub(crate) struct PlayClock {
    epoch: Mutex<Option<Instant>>,
    started: Condvar,
    stopped: AtomicBool,
}

impl PlayClock {
    /// Starts playback now (once; later calls do nothing).
    pub(crate) fn start(&self) {
        let mut epoch = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        if epoch.is_none() {
            *epoch = Some(Instant::now());
            self.started.notify_all();
        }
    }

    /// Ends playback: whoever waits on the clock returns.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        let _guard = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
        self.started.notify_all();
    }

    /// Blocks until `at` after the start; how late that is now, or `None`
    /// once stopped.
    fn wait_until(&self, at: Duration) -> Option<Duration> {
        let epoch = {
            let mut epoch = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if self.stopped.load(Ordering::Relaxed) {
                    return None;
                }
                if let Some(e) = *epoch {
                    break e;
                }
                epoch = self
                    .started
                    .wait_timeout(epoch, Duration::from_millis(100))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        let due = epoch + at;
        loop {
            if self.stopped.load(Ordering::Relaxed) {
                return None;
            }
            let now = Instant::now();
            if now >= due {
                return Some(now - due);
            }
            // In slices, so a stop is seen within a tenth of a second.
            std::thread::sleep((due - now).min(Duration::from_millis(100)));
        }
    }
}

/// How the file is played.
#[derive(Debug, Clone)]
pub(crate) struct Playback {
    /// What the file holds.
    pub(crate) info: FileInfo,
    /// Start over at the end (`--loop`).
    pub(crate) looping: bool,
    /// The clock shared with the sound.
    pub(crate) clock: Arc<PlayClock>,
}

/// Where the pictures come from, decoded.
enum Reader {
    Y4m(y4m::Y4mReader),
    Mp4 {
        reader: Box<mp4::Mp4Reader>,
        decoder: H264Decoder,
        /// Presentation times of samples fed and not yet given out: the
        /// decoder gives pictures in presentation order, which with B
        /// frames is not the order of the samples.
        pending: BinaryHeap<std::cmp::Reverse<Duration>>,
        /// Decoded pictures not yet given out.
        ready: VecDeque<(Duration, I420)>,
        /// Samples in a row that did not decode.
        errors: u32,
    },
}

/// The pictures of a file, each when it is due.
pub(crate) struct FilePictures {
    playback: Playback,
    reader: Reader,
    /// The size the encoder takes; pictures of another size are scaled.
    width: usize,
    height: usize,
    /// Where the current pass starts, from the clock's start.
    pass_start: Duration,
    /// The latest presentation time given out in this pass.
    last_pts: Duration,
    /// Frames of the current Y4M pass.
    frame: u64,
}

impl std::fmt::Debug for FilePictures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FilePictures({})", self.playback.info.path.display())
    }
}

impl FilePictures {
    /// Opens the file's pictures for an encoder taking `width`x`height`.
    pub(crate) fn open(
        playback: Playback,
        width: usize,
        height: usize,
    ) -> Result<FilePictures, FileError> {
        let path = &playback.info.path;
        let reader = match playback.info.container {
            Container::Y4m => Reader::Y4m(y4m::Y4mReader::open(path)?),
            Container::Mp4 => Reader::Mp4 {
                reader: Box::new(mp4::Mp4Reader::open(path)?),
                decoder: new_decoder(path)?,
                pending: BinaryHeap::new(),
                ready: VecDeque::new(),
                errors: 0,
            },
        };
        Ok(FilePictures {
            playback,
            reader,
            width,
            height,
            pass_start: Duration::ZERO,
            last_pts: Duration::ZERO,
            frame: 0,
        })
    }

    /// The next picture, when it is due; `None` at the end of the file
    /// (without `--loop`, once the pass, sound included, is over) or when
    /// the clock stops.
    pub(crate) fn next(&mut self) -> Result<Option<I420>, FileError> {
        let rate = self.playback.info.rate;
        let period = rate.period();
        loop {
            let Some((pts, picture)) = self.decoded()? else {
                // The pass lasts as long as its longest track.
                let length = self
                    .playback
                    .info
                    .duration
                    .unwrap_or(self.last_pts + period)
                    .max(self.last_pts + period);
                let end = self.pass_start + length;
                if !self.playback.looping {
                    let _ = self.playback.clock.wait_until(end);
                    return Ok(None);
                }
                self.pass_start = end;
                self.last_pts = Duration::ZERO;
                self.frame = 0;
                self.rewind()?;
                continue;
            };
            self.last_pts = self.last_pts.max(pts);
            let Some(late) = self.playback.clock.wait_until(self.pass_start + pts) else {
                return Ok(None);
            };
            if late > period * LATE_FRAMES {
                tracing::debug!(?late, "leaving out a late picture to catch up");
                continue;
            }
            if (picture.width(), picture.height()) == (self.width, self.height) {
                return Ok(Some(picture));
            }
            return Ok(Some(scale(&picture, self.width, self.height)));
        }
    }

    fn rewind(&mut self) -> Result<(), FileError> {
        match &mut self.reader {
            Reader::Y4m(r) => r.rewind(),
            Reader::Mp4 {
                reader,
                decoder,
                pending,
                ready,
                ..
            } => {
                reader.rewind();
                pending.clear();
                ready.clear();
                // A flushed OpenH264 decoder takes no more pictures: each
                // pass gets a fresh one.
                *decoder = new_decoder(&self.playback.info.path)?;
                Ok(())
            }
        }
    }

    /// The next picture in presentation order with its time in the pass.
    fn decoded(&mut self) -> Result<Option<(Duration, I420)>, FileError> {
        let rate = self.playback.info.rate;
        let path = &self.playback.info.path;
        match &mut self.reader {
            Reader::Y4m(r) => {
                let at = rate.at(self.frame);
                self.frame += 1;
                Ok(r.next()?.map(|p| (at, p)))
            }
            Reader::Mp4 {
                reader,
                decoder,
                pending,
                ready,
                errors,
            } => loop {
                if let Some(p) = ready.pop_front() {
                    return Ok(Some(p));
                }
                let Some(sample) = reader.next_video()? else {
                    // The decoder may hold pictures back for reordering.
                    for p in decoder.flush().unwrap_or_default() {
                        let pts = pending.pop().map_or(Duration::ZERO, |r| r.0);
                        ready.push_back((pts, p));
                    }
                    pending.clear();
                    return Ok(ready.pop_front());
                };
                pending.push(std::cmp::Reverse(sample.pts));
                match decoder.decode(&sample.data) {
                    Ok(Some(p)) => {
                        *errors = 0;
                        let pts = pending.pop().map_or(sample.pts, |r| r.0);
                        ready.push_back((pts, p));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        pending.pop();
                        *errors += 1;
                        if *errors >= MAX_DECODE_ERRORS {
                            return Err(FileError::Bad {
                                file: path.display().to_string(),
                                why: format!(
                                    "its H.264 does not decode ({e}); convene plays H.264 \
                                     that OpenH264 decodes, 8-bit 4:2:0: convert with \
                                     `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p -c:a libopus out.mp4`"
                                ),
                            });
                        }
                        tracing::warn!("skipping a picture that does not decode: {e}");
                    }
                }
            },
        }
    }
}

fn new_decoder(path: &Path) -> Result<H264Decoder, FileError> {
    H264Decoder::reordering().map_err(|e| FileError::Bad {
        file: path.display().to_string(),
        why: format!("the H.264 decoder does not start: {e}"),
    })
}

/// Scales a picture (bilinear, each plane on its own) to `width`x`height`.
pub(crate) fn scale(src: &I420, width: usize, height: usize) -> I420 {
    let (sw, sh) = (src.width(), src.height());
    let bytes = src.as_bytes();
    let (sy, rest) = bytes.split_at(sw * sh);
    let (su, sv) = rest.split_at((sw / 2) * (sh / 2));
    let mut out = I420::black(width, height);
    let (oy, ou, ov) = out.planes_mut();
    scale_plane(sy, sw, sh, oy, width, height);
    scale_plane(su, sw / 2, sh / 2, ou, width / 2, height / 2);
    scale_plane(sv, sw / 2, sh / 2, ov, width / 2, height / 2);
    out
}

fn scale_plane(src: &[u8], sw: usize, sh: usize, dst: &mut [u8], dw: usize, dh: usize) {
    // Fixed point, 8 fractional bits; pixel centres line up.
    let coord = |d: usize, dn: usize, sn: usize| -> (usize, usize, u32) {
        let pos = ((2 * d + 1) * sn * 256 / (2 * dn)).saturating_sub(128);
        let i = (pos / 256).min(sn - 1);
        (i, (i + 1).min(sn - 1), (pos % 256) as u32)
    };
    for y in 0..dh {
        let (y0, y1, fy) = coord(y, dh, sh);
        for x in 0..dw {
            let (x0, x1, fx) = coord(x, dw, sw);
            let p = |r: usize, c: usize| u32::from(src[r * sw + c]);
            let top = p(y0, x0) * (256 - fx) + p(y0, x1) * fx;
            let bottom = p(y1, x0) * (256 - fx) + p(y1, x1) * fx;
            dst[y * dw + x] = ((top * (256 - fy) + bottom * fy + (1 << 15)) >> 16) as u8;
        }
    }
}

/// Starts the thread that decodes the file's Opus sound and hands it over
/// in frames of `frame` samples at `rate`, each when it is due.
pub(crate) fn play_sound(
    playback: Playback,
    rate: u32,
    frame: usize,
) -> Result<mpsc::Receiver<Vec<i16>>, FileError> {
    let path = playback.info.path.clone();
    let thread_path = path.clone();
    let mut reader = mp4::Mp4Reader::open(&path)?;
    let mp4::Sound::Opus {
        pre_skip, gain_db, ..
    } = reader.sound().clone()
    else {
        return Err(FileError::Bad {
            file: path.display().to_string(),
            why: "it has no Opus sound".into(),
        });
    };
    let bad = move |why: String| FileError::Bad {
        file: path.display().to_string(),
        why,
    };
    let new_decoder = move || {
        opus::Decoder::new(rate, opus::Channels::Mono)
            .map_err(|e| bad(format!("the Opus decoder does not start: {e}")))
    };
    let mut decoder = new_decoder()?;
    let gain = 10f64.powf(gain_db / 20.0);
    let skip = usize::from(pre_skip) * rate as usize / 48_000;
    let (tx, rx) = mpsc::channel(SOUND_QUEUE);
    let step = Duration::from_secs(1) / crate::audio::FRAMES_PER_SECOND;
    std::thread::Builder::new()
        .name("file-sound".into())
        .spawn(move || {
            let clock = playback.clock.clone();
            let mut pass_start = Duration::ZERO;
            'passes: loop {
                let mut buf: Vec<i16> = Vec::new();
                let mut skipped = 0usize;
                let mut frames = 0u32;
                let mut out = vec![0i16; rate as usize * 120 / 1000];
                loop {
                    let packet = match reader.next_opus() {
                        Ok(Some(p)) => p,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::error!("the file's sound stopped: {e}");
                            break 'passes;
                        }
                    };
                    let n = match decoder.decode(&packet, &mut out, false) {
                        Ok(n) => n,
                        Err(e) => {
                            // A damaged packet: conceal it rather than stop.
                            tracing::warn!("an Opus packet does not decode: {e}");
                            decoder.decode(&[], &mut out, false).unwrap_or(0)
                        }
                    };
                    let start = (skip - skipped).min(n);
                    skipped += start;
                    buf.extend(
                        out[start..n]
                            .iter()
                            .map(|&s| (f64::from(s) * gain).clamp(-32_768.0, 32_767.0) as i16),
                    );
                    while buf.len() >= frame {
                        let pcm: Vec<i16> = buf.drain(..frame).collect();
                        let Some(late) = clock.wait_until(pass_start + step * frames) else {
                            break 'passes;
                        };
                        frames += 1;
                        if late > LATE_SOUND {
                            continue;
                        }
                        match tx.try_send(pcm) {
                            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                            Err(mpsc::error::TrySendError::Closed(_)) => break 'passes,
                        }
                    }
                }
                if !playback.looping {
                    break;
                }
                // The next pass starts with the pictures' next pass.
                let length = playback.info.duration.unwrap_or(step * frames);
                pass_start += length.max(step);
                reader.rewind();
                decoder = match new_decoder() {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!("{e}");
                        break;
                    }
                };
            }
        })
        .map_err(|e| FileError::open(&thread_path, e))?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_fractions() {
        let ntsc = Rate::new(30_000, 1001).unwrap();
        assert_eq!(ntsc.whole(), 30);
        assert_eq!(ntsc.at(30_000), Duration::from_secs(1001));
        assert_eq!(
            Rate::new(15, 1).unwrap().period(),
            Duration::from_nanos(66_666_666)
        );
        assert!(Rate::new(0, 1).is_none() && Rate::new(30, 0).is_none());
    }

    #[test]
    fn scaling_keeps_flat_colour_and_edges() {
        let mut p = I420::black(64, 48);
        {
            let (y, u, _) = p.planes_mut();
            for r in 0..48 {
                y[r * 64..r * 64 + 32].fill(200);
            }
            u.fill(90);
        }
        let s = scale(&p, 32, 24);
        assert_eq!((s.width(), s.height()), (32, 24));
        assert_eq!(s.y()[0], 200);
        assert_eq!(s.y()[31], 16);
        assert_eq!(s.as_bytes()[32 * 24], 90);
        let up = scale(&p, 128, 96);
        assert_eq!(up.y()[0], 200);
        assert_eq!(up.y()[127], 16);
    }

    #[test]
    fn the_container_is_told_by_its_bytes_not_its_name() {
        let d = std::env::temp_dir().join(format!("convene-probe-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let mp4 = d.join("clip.y4m");
        mp4::tests::write(&mp4, 10, 10, true);
        let info = probe(&mp4).unwrap();
        assert_eq!(info.container, Container::Mp4);
        assert_eq!((info.width, info.height, info.rate.whole()), (160, 120, 10));
        assert_eq!(info.duration, Some(Duration::from_secs(1)));
        let text = d.join("notes.mp4");
        std::fs::write(&text, "hello").unwrap();
        let e = probe(&text).unwrap_err().to_string();
        assert!(
            e.contains("neither a Y4M file") && e.contains("ffmpeg"),
            "{e}"
        );
        let fast = d.join("fast.y4m");
        std::fs::write(&fast, b"YUV4MPEG2 W16 H16 F1000000:1\nFRAME\n").unwrap();
        let e = probe(&fast).unwrap_err().to_string();
        assert!(e.contains("1000000 fps"), "{e}");
        let missing = probe(&d.join("missing.mp4")).unwrap_err().to_string();
        assert!(missing.contains("missing.mp4"), "{missing}");
        let _ = std::fs::remove_dir_all(d);
    }
}
