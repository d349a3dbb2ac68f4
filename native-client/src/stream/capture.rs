//! The capture-and-encode thread of `convene stream`: it blocks on the
//! camera and burns CPU in the encoder, so it runs apart from the async side,
//! which takes its pictures from a channel and never waits for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::StreamArgs;
use crate::file::PlayClock;
use crate::frame::I420;
use crate::h264::{EncoderSettings, H264Encoder};
use crate::source::{Picture, Source, SourceSpec};

/// One encoded picture on its way to the network.
#[derive(Debug)]
pub(super) struct VideoOut {
    pub(super) data: Bytes,
    pub(super) key: bool,
    pub(super) capture_us: u64,
    /// With --simulcast: the encoding (0 the smallest), else `None`.
    pub(super) encoding: Option<u8>,
    /// The captured picture's number, the same in every encoding (§6.6.1).
    pub(super) picture: u32,
}

pub(super) use convene_protocol::simulcast::Rung;

/// The encodings `--simulcast` sends for a picture of `width`x`height` at
/// `kbps` (the ladder every Convene publisher uses, PROTOCOL.md §6.6.1).
pub(super) fn ladder(width: usize, height: usize, kbps: u32, simulcast: bool) -> Vec<Rung> {
    convene_protocol::simulcast::ladder(width as u32, height as u32, kbps, simulcast)
}

/// Counters the media thread keeps.
#[derive(Debug, Default)]
pub(super) struct EncodeStats {
    pub(super) frames: AtomicU64,
    pub(super) key_frames: AtomicU64,
    pub(super) encode_us: AtomicU64,
    /// Pictures dropped because the network side was behind.
    pub(super) dropped: AtomicU64,
    /// Pictures the encoder's rate control skipped.
    pub(super) skipped: AtomicU64,
    /// Per encoding (lowest first): pictures encoded and microseconds spent.
    pub(super) per_encoding: [(AtomicU64, AtomicU64); 3],
}

/// The capture-and-encode thread, and what the async side shares with it.
#[derive(Debug)]
pub(super) struct Media {
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
    /// Tells the thread to end.
    stop: Arc<AtomicBool>,
    /// Set when the next picture should be a key frame (of every encoding).
    pub(super) key_wanted: Arc<AtomicBool>,
    /// Encodings whose next picture should be a key frame (bit per encoding).
    pub(super) key_mask: Arc<AtomicU8>,
    /// Encodings anyone receives (the server's EncodingDemand, §6.6.5).
    pub(super) demand: Arc<AtomicU8>,
    pub(super) stats: Arc<EncodeStats>,
    /// The bitrate to encode at: --bitrate-kbps, lowered and raised again by
    /// the server's congestion hints and by what this publisher sees of its
    /// own path (never above --bitrate-kbps).
    pub(super) target_kbps: Arc<AtomicU32>,
    /// Set when the source came to its end (a file without --loop): the
    /// pictures stopping is then the end of the run, not a failure.
    pub(super) ended: Arc<AtomicBool>,
    /// With a file: the clock its pictures and sound are played by.
    pub(super) clock: Option<Arc<PlayClock>>,
}

impl Media {
    /// Starts the thread; returns once it has opened the source and the
    /// encoder, with the channel the encoded pictures come out of.
    pub(super) async fn start(
        args: &StreamArgs,
    ) -> anyhow::Result<(Media, mpsc::Receiver<VideoOut>)> {
        let (width, height) = (args.plan.width, args.plan.height);
        let spec = SourceSpec {
            kind: args.source.clone(),
            file: args.plan.file.clone(),
            device_index: args.video_device_index,
            width,
            height,
            fps: args.plan.fps,
            format: args.frame_format,
        };
        let clock = args.plan.file.as_ref().map(|p| p.clock.clone());
        let ended = Arc::new(AtomicBool::new(false));
        let key_wanted = Arc::new(AtomicBool::new(true));
        let key_mask = Arc::new(AtomicU8::new(0));
        let demand = Arc::new(AtomicU8::new(0b111));
        let rungs = ladder(width, height, args.bitrate_kbps, args.simulcast);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(EncodeStats::default());
        let (video_tx, video_rx) = mpsc::channel::<VideoOut>(4);
        // A camera handle stays on the thread that opened it, so the thread opens
        // the source and says whether that worked before anything connects: a
        // missing camera should say so at once.
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
        let target_kbps = Arc::new(AtomicU32::new(args.bitrate_kbps));
        let thread = {
            let shared = Shared {
                target_kbps: target_kbps.clone(),
                key_wanted: key_wanted.clone(),
                key_mask: key_mask.clone(),
                demand: demand.clone(),
                stop: stop.clone(),
                stats: stats.clone(),
                ended: ended.clone(),
            };
            let fps = args.plan.fps;
            let interval = Duration::from_secs_f64(args.key_interval);
            std::thread::Builder::new()
                .name("capture-encode".into())
                .spawn(move || {
                    let source = match Source::open(spec.clone()) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("{e:#}")));
                            return Ok(());
                        }
                    };
                    let mut encoders = Vec::new();
                    for r in &rungs {
                        let settings = EncoderSettings {
                            bitrate_kbps: r.kbps,
                            fps,
                        };
                        match H264Encoder::new(settings) {
                            Ok(e) => encoders.push((e, settings)),
                            Err(e) => {
                                let _ = ready_tx
                                    .send(Err(format!("cannot start the H.264 encoder: {e}")));
                                return Ok(());
                            }
                        }
                    }
                    let _ = ready_tx.send(Ok(()));
                    media_thread(source, encoders, spec, interval, shared, video_tx)
                })
                .context("cannot start the capture thread")?
        };
        let ready = tokio::task::spawn_blocking(move || ready_rx.recv())
            .await
            .context("the capture thread failed")?;
        match ready {
            Ok(Ok(())) => {}
            Ok(Err(e)) => anyhow::bail!(e),
            Err(_) => anyhow::bail!("the capture thread stopped before it started"),
        }
        let media = Media {
            thread,
            stop,
            key_wanted,
            key_mask,
            demand,
            stats,
            target_kbps,
            ended,
            clock,
        };
        Ok((media, video_rx))
    }

    /// Stops the thread and waits for it; the error it ended with, if any.
    pub(super) async fn finish(self, video_rx: mpsc::Receiver<VideoOut>) -> Option<anyhow::Error> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(clock) = &self.clock {
            clock.stop();
        }
        drop(video_rx);
        match tokio::task::spawn_blocking(move || self.thread.join()).await {
            Ok(Ok(Err(e))) => Some(e.context("capture or encoding failed")),
            Ok(Err(_)) => Some(anyhow::anyhow!("the capture thread panicked")),
            _ => None,
        }
    }
}

/// What the capture thread shares with the async side.
struct Shared {
    target_kbps: Arc<AtomicU32>,
    key_wanted: Arc<AtomicBool>,
    key_mask: Arc<AtomicU8>,
    demand: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    stats: Arc<EncodeStats>,
    ended: Arc<AtomicBool>,
}

/// Capture, convert, encode each encoding anyone wants, hand over; until
/// told to stop.
fn media_thread(
    mut source: Source,
    mut encoders: Vec<(H264Encoder, EncoderSettings)>,
    spec: SourceSpec,
    key_interval: Duration,
    shared: Shared,
    out: mpsc::Sender<VideoOut>,
) -> anyhow::Result<()> {
    let Shared {
        target_kbps,
        key_wanted,
        key_mask,
        demand,
        stop,
        stats,
        ended,
    } = shared;
    let simulcast = encoders.len() > 1;
    let top = encoders.len() - 1;
    let mut last_key = Instant::now();
    // Encodings that were off: each starts again at a key frame (§6.6.5).
    let mut was_on = u8::MAX;
    let mut picture = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let Some(captured) = source.capture()? else {
            ended.store(true, Ordering::Relaxed);
            return Ok(());
        };
        let t0 = Instant::now();
        let full = match captured.picture {
            Picture::I420(p) => p,
            Picture::Raw(data) => {
                match I420::decode_from(spec.format, &data, spec.width, spec.height) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!("skipping a frame: {e}");
                        continue;
                    }
                }
            }
        };
        picture = picture.wrapping_add(1);
        // A new target bitrate (a congestion hint or the path) is the top
        // encoding's: OpenH264 takes it through a fresh encoder, which
        // starts from a key frame.
        let target = target_kbps.load(Ordering::Relaxed);
        let (_, settings) = &mut encoders[top];
        if target != settings.bitrate_kbps && !simulcast {
            settings.bitrate_kbps = target;
            match H264Encoder::new(*settings) {
                Ok(e) => {
                    encoders[top].0 = e;
                    key_wanted.store(true, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!("cannot change the bitrate to {target} kbit/s: {e}"),
            }
        }
        let on = if simulcast {
            demand.load(Ordering::Relaxed)
        } else {
            1
        };
        let mut keys = key_mask.swap(0, Ordering::Relaxed) | (on & !was_on);
        if key_wanted.swap(false, Ordering::Relaxed) || last_key.elapsed() >= key_interval {
            keys = u8::MAX;
        }
        was_on = on;
        let mut owed = 0u8;
        // Smallest first: each encoding's picture is half the next one's.
        let mut pictures = vec![full];
        for _ in 1..encoders.len() {
            let smaller = pictures[0].half();
            pictures.insert(0, smaller);
        }
        let mut any_key = false;
        for (i, ((encoder, _), pic)) in encoders.iter_mut().zip(&pictures).enumerate() {
            if on & (1 << i) == 0 {
                continue;
            }
            let started = Instant::now();
            let key = keys & (1 << i) != 0;
            let encoded = encoder.encode(pic, key)?;
            let (n, us) = &stats.per_encoding[i];
            n.fetch_add(1, Ordering::Relaxed);
            us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            if encoded.data.is_empty() {
                stats.skipped.fetch_add(1, Ordering::Relaxed);
                // A skipped key frame is still owed.
                if key {
                    owed |= 1 << i;
                }
                continue;
            }
            if encoded.key {
                any_key = true;
                stats.key_frames.fetch_add(1, Ordering::Relaxed);
            }
            let v = VideoOut {
                data: Bytes::from(encoded.data),
                key: encoded.key,
                capture_us: captured.capture_us,
                encoding: simulcast.then_some(i as u8),
                picture,
            };
            match out.try_send(v) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(v)) => {
                    stats.dropped.fetch_add(1, Ordering::Relaxed);
                    // A dropped key frame would leave receivers waiting: ask again.
                    if v.key {
                        owed |= 1 << i;
                    }
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
            }
        }
        if any_key && keys == u8::MAX {
            last_key = Instant::now();
        }
        key_mask.fetch_or(owed, Ordering::Relaxed);
        stats
            .encode_us
            .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.frames.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
