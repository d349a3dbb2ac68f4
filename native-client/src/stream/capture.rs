//! The capture-and-encode thread of `convene stream`: it blocks on the
//! camera and burns CPU in the encoder, so it runs apart from the async side,
//! which takes its pictures from a channel and never waits for it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::StreamArgs;
use crate::frame::I420;
use crate::h264::{EncoderSettings, H264Encoder};
use crate::source::{Source, SourceSpec};

/// One encoded picture on its way to the network.
#[derive(Debug)]
pub(super) struct VideoOut {
    pub(super) data: Bytes,
    pub(super) key: bool,
    pub(super) capture_us: u64,
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
}

/// The capture-and-encode thread, and what the async side shares with it.
#[derive(Debug)]
pub(super) struct Media {
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
    /// Tells the thread to end.
    stop: Arc<AtomicBool>,
    /// Set when the next picture should be a key frame.
    pub(super) key_wanted: Arc<AtomicBool>,
    pub(super) stats: Arc<EncodeStats>,
    /// The bitrate to encode at: --bitrate-kbps, lowered and raised again by
    /// the server's congestion hints and by what this publisher sees of its
    /// own path (never above --bitrate-kbps).
    pub(super) target_kbps: Arc<AtomicU32>,
}

impl Media {
    /// Starts the thread; returns once it has opened the source and the
    /// encoder, with the channel the encoded pictures come out of.
    pub(super) async fn start(
        args: &StreamArgs,
    ) -> anyhow::Result<(Media, mpsc::Receiver<VideoOut>)> {
        let (width, height) = args.resolution;
        let spec = SourceSpec {
            kind: args.source,
            device_index: args.video_device_index,
            width,
            height,
            fps: args.fps,
            format: args.frame_format,
        };
        let key_wanted = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(EncodeStats::default());
        let (video_tx, video_rx) = mpsc::channel::<VideoOut>(4);
        // A camera handle stays on the thread that opened it, so the thread opens
        // the source and says whether that worked before anything connects: a
        // missing camera should say so at once.
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(), String>>(1);
        let target_kbps = Arc::new(AtomicU32::new(args.bitrate_kbps));
        let thread = {
            let (key_wanted, stop, stats) = (key_wanted.clone(), stop.clone(), stats.clone());
            let target = target_kbps.clone();
            let settings = EncoderSettings {
                bitrate_kbps: args.bitrate_kbps,
                fps: args.fps,
            };
            let interval = Duration::from_secs_f64(args.key_interval);
            std::thread::Builder::new()
                .name("capture-encode".into())
                .spawn(move || {
                    let source = match Source::open(spec) {
                        Ok(s) => s,
                        Err(e) => {
                            let _ = ready_tx.send(Err(format!("{e:#}")));
                            return Ok(());
                        }
                    };
                    let encoder = match H264Encoder::new(settings) {
                        Ok(e) => e,
                        Err(e) => {
                            let _ =
                                ready_tx.send(Err(format!("cannot start the H.264 encoder: {e}")));
                            return Ok(());
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    media_thread(
                        source, encoder, settings, target, spec, interval, key_wanted, stop, stats,
                        video_tx,
                    )
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
            stats,
            target_kbps,
        };
        Ok((media, video_rx))
    }

    /// Stops the thread and waits for it; the error it ended with, if any.
    pub(super) async fn finish(self, video_rx: mpsc::Receiver<VideoOut>) -> Option<anyhow::Error> {
        self.stop.store(true, Ordering::Relaxed);
        drop(video_rx);
        match tokio::task::spawn_blocking(move || self.thread.join()).await {
            Ok(Ok(Err(e))) => Some(e.context("capture or encoding failed")),
            Ok(Err(_)) => Some(anyhow::anyhow!("the capture thread panicked")),
            _ => None,
        }
    }
}

/// Capture, convert, encode, hand over; until told to stop.
#[allow(clippy::too_many_arguments)]
fn media_thread(
    mut source: Source,
    mut encoder: H264Encoder,
    mut settings: EncoderSettings,
    target_kbps: Arc<AtomicU32>,
    spec: SourceSpec,
    key_interval: Duration,
    key_wanted: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    stats: Arc<EncodeStats>,
    out: mpsc::Sender<VideoOut>,
) -> anyhow::Result<()> {
    let mut last_key = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let captured = source.capture()?;
        let t0 = Instant::now();
        let picture = match I420::decode_from(spec.format, &captured.data, spec.width, spec.height)
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("skipping a frame: {e}");
                continue;
            }
        };
        // A new target bitrate (a congestion hint): OpenH264 takes it through
        // a fresh encoder, which starts from a key frame.
        let target = target_kbps.load(Ordering::Relaxed);
        if target != settings.bitrate_kbps {
            settings.bitrate_kbps = target;
            match H264Encoder::new(settings) {
                Ok(e) => {
                    encoder = e;
                    key_wanted.store(true, Ordering::Relaxed);
                }
                Err(e) => tracing::warn!("cannot change the bitrate to {target} kbit/s: {e}"),
            }
        }
        let key = key_wanted.swap(false, Ordering::Relaxed) || last_key.elapsed() >= key_interval;
        let encoded = encoder.encode(&picture, key)?;
        stats
            .encode_us
            .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        stats.frames.fetch_add(1, Ordering::Relaxed);
        if encoded.data.is_empty() {
            stats.skipped.fetch_add(1, Ordering::Relaxed);
            // A skipped key frame is still owed.
            if key {
                key_wanted.store(true, Ordering::Relaxed);
            }
            continue;
        }
        if encoded.key {
            last_key = Instant::now();
            stats.key_frames.fetch_add(1, Ordering::Relaxed);
        }
        let v = VideoOut {
            data: Bytes::from(encoded.data),
            key: encoded.key,
            capture_us: captured.capture_us,
        };
        match out.try_send(v) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(v)) => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
                // A dropped key frame would leave receivers waiting: ask again.
                if v.key {
                    key_wanted.store(true, Ordering::Relaxed);
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => break,
        }
    }
    Ok(())
}
