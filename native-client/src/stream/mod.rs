//! `convene stream`: capture (camera, test pattern or a file), encode
//! H.264, publish into a meeting; optionally sound (a tone, a microphone or
//! the file's). Reconnects with backoff when the server goes away.
//!
//! Capture and encoding run on their own thread (they block and burn CPU);
//! the async side owns the session and never waits for the encoder.

mod capture;
mod reconnect;

use std::io::{IsTerminal, Write};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use convene_client::{Client, TransportKind};
use convene_protocol::rate::RateController;
use convene_protocol::v1::{self, ClientKind, TrackInfo, TrackKind, server_message::Msg as S};
use convene_protocol::{
    AudioLevel, ClientEvent, ClientSessionConfig, FEATURE_SFU, Layer, MediaFrame, Timestamp,
};
use tokio::sync::mpsc;

use crate::args::ServerArgs;
use crate::audio;
use crate::e2ee::{E2ee, E2eeSummary};
use crate::file::{self, PlayClock, Playback};
use crate::frame::FrameFormat;
use crate::h264;
use crate::media::{OutTrack, sleep_until, unix_micros};
use crate::pattern;
use crate::source::{SourceKind, parse_source};

use capture::{EncodeStats, Media, Rung, VideoOut, ladder};
use reconnect::{AfterClose, Failure, Reconnect, Retry, after_close, closed};

/// The video track's id.
const VIDEO_TRACK: u32 = 1;
/// The audio track's id.
const AUDIO_TRACK: u32 = 2;
/// How long connecting, the handshake and joining may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// The lowest bitrate the path or a hint may take the camera to, in bit/s
/// (the browser client's floor too; lower, a picture is not worth sending).
const RATE_FLOOR_BPS: u32 = 100_000;
/// A new target from the path reaches the encoder only when it differs this
/// much from the encoder's: OpenH264 changes its rate through a new encoder,
/// which starts with a key frame, so small steps would cost more than they save.
const RATE_STEP: f64 = 0.2;
/// First and longest wait between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// `convene stream` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct StreamArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The name others see.
    #[arg(long, default_value = "convene-stream")]
    user_id: String,
    /// The meeting to publish into (1 to 64 of A-Z a-z 0-9 . _ -).
    #[arg(long)]
    meeting_id: String,
    /// `camera` (a local camera), `test-pattern` (no camera needed; the
    /// picture carries a frame counter and its capture time), or a video
    /// file: Y4M (8-bit 4:2:0), or MP4 with H.264 and Opus sound, played
    /// at its own frame rate and size, with its sound, and ended at its end
    /// (see --loop). Anything but the two keywords is a file (write
    /// `./camera` for a file named so).
    #[arg(long, default_value = "camera", value_parser = parse_source, value_name = "camera|test-pattern|FILE")]
    source: SourceKind,
    /// With --source FILE: start over at the end, until Ctrl-C or
    /// --duration (pictures and sound together).
    #[arg(long = "loop")]
    looping: bool,
    /// Which camera: N opens /dev/videoN.
    #[arg(long, default_value_t = 0)]
    video_device_index: u32,
    /// Picture size, WIDTHxHEIGHT (even numbers, at least 128x96; default
    /// 1280x720). A file plays at its own size unless this is given: then
    /// its pictures are scaled to it.
    #[arg(long, value_parser = parse_resolution)]
    resolution: Option<(usize, usize)>,
    /// Frames a second (1 to 60; default 30). A file plays at its own rate.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=60))]
    fps: Option<u32>,
    /// The raw layout asked of the camera (the test pattern is drawn in it too).
    #[arg(long, value_enum, default_value = "NV12")]
    frame_format: FrameFormat,
    /// H.264 target bitrate (50 to 20000).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(50..=20_000))]
    bitrate_kbps: u32,
    /// Seconds between key frames when nobody asks for one (key frames are
    /// also sent whenever a receiver asks).
    #[arg(long, default_value_t = 10.0)]
    key_interval: f64,
    /// `tone`: a 440 Hz sine; `mic`: a microphone (ALSA, see
    /// --audio-device); `file`: the sound of --source FILE (MP4 with Opus;
    /// the default with a file that has sound); `none`: video only (the
    /// default otherwise; with a file, it leaves the file's sound out).
    #[arg(long, value_enum)]
    audio: Option<AudioSource>,
    /// How the sound is sent: `opus` (48 kHz, DTX: nothing is sent while
    /// the microphone is silent) or `pcmu` (G.711 µ-law, 8 kHz, for
    /// receivers that know nothing else).
    #[arg(long, value_enum, default_value = "opus")]
    audio_codec: audio::Codec,
    /// With --audio mic: the ALSA capture device (`arecord -L` lists them;
    /// `plughw:1,0` is the first device of card 1, e.g. a USB microphone on
    /// a Raspberry Pi).
    #[arg(long, default_value = "default")]
    audio_device: String,
    /// The tone's level in dBFS (its peaks against full scale), -60 to 0.
    /// A server with selective forwarding hears who speaks from the levels
    /// sent beside the sound (PROTOCOL.md §6.6.4): louder tones take the
    /// floor.
    #[arg(long, default_value_t = -12.0, allow_negative_numbers = true, value_parser = tone_level)]
    tone_dbfs: f64,
    /// The tone's pitch in Hz (20 to 20000).
    #[arg(long, default_value_t = 440.0, value_parser = tone_pitch)]
    tone_hz: f64,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// Print a JSON summary on stdout when done.
    #[arg(long)]
    json: bool,
    /// Encrypt media end to end (SFrame, keys exchanged with HPKE; the
    /// server cannot decrypt). Receivers need --e2ee too; compare the safety
    /// code printed here with theirs.
    #[arg(long)]
    e2ee: bool,
    /// Send the picture as up to three encodings (full, half and quarter
    /// size, at about 1, 1/3 and 1/10 of --bitrate-kbps), one OpenH264
    /// encoder each, so the server gives each receiver the one that suits
    /// its tile and its path (PROTOCOL.md §6.6). Encodings nobody receives
    /// are not encoded. A server without selective forwarding gets the
    /// full-size one only.
    #[arg(long)]
    simulcast: bool,
    /// Publish the pictures as a shared screen (track kind SCREEN) rather
    /// than a camera: receivers show it large, recorders write it to
    /// `-screen.mp4`, and an active-speaker live stream shows it while it
    /// is shared.
    #[arg(long)]
    screen: bool,
    /// What the flags above come to once the source is known.
    #[arg(skip)]
    plan: Plan,
}

/// The picture and sound a run sends, from the flags and the source.
#[derive(Debug, Clone, Default)]
struct Plan {
    width: usize,
    height: usize,
    fps: u32,
    audio: AudioSource,
    /// With --source FILE: how it is played.
    file: Option<Playback>,
}

/// Audio to send.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
enum AudioSource {
    /// No audio track.
    #[default]
    None,
    /// A 440 Hz tone.
    Tone,
    /// A microphone.
    Mic,
    /// The sound of the file given with --source.
    File,
}

/// Where the sound being sent comes from.
enum SoundIn {
    /// No sound.
    None,
    /// The tone, a frame each tick.
    Tone(audio::Tone),
    /// A microphone's frames, paced by its device.
    Mic(mpsc::Receiver<Vec<i16>>),
    /// A file's sound, decoded and paced by the file's clock.
    File(mpsc::Receiver<Vec<i16>>),
}

impl SoundIn {
    /// Frames come from a thread at their own pace (microphone, file).
    fn paced(&self) -> bool {
        matches!(self, SoundIn::Mic(_) | SoundIn::File(_))
    }

    /// The microphone's or the file's next frame; never, for the other sources.
    async fn paced_frame(&mut self) -> Option<Vec<i16>> {
        match self {
            SoundIn::Mic(rx) | SoundIn::File(rx) => rx.recv().await,
            _ => std::future::pending().await,
        }
    }
}

/// Resolves size, rate and sound from the flags and, with a file, what it holds.
fn plan(args: &StreamArgs) -> anyhow::Result<Plan> {
    let SourceKind::File(path) = &args.source else {
        if args.looping {
            anyhow::bail!("--loop starts a file over at its end: it needs --source FILE");
        }
        if args.audio == Some(AudioSource::File) {
            anyhow::bail!(
                "--audio file plays the sound of --source FILE; give a file, or another --audio"
            );
        }
        let (width, height) = args.resolution.unwrap_or((1280, 720));
        return Ok(Plan {
            width,
            height,
            fps: args.fps.unwrap_or(30),
            audio: args.audio.unwrap_or_default(),
            file: None,
        });
    };
    let info = file::probe(path)?;
    let name = path.display();
    if let Some(fps) = args.fps {
        anyhow::bail!(
            "{name} plays at its own frame rate ({:.2} fps); leave out --fps {fps}",
            info.rate.fps()
        );
    }
    let (width, height) = match args.resolution {
        Some(size) => size,
        None => {
            let (w, h) = (info.width, info.height);
            if w < 16 || h < 16 || w > 3840 || h > 2160 {
                anyhow::bail!(
                    "{name} is {w}x{h}; the encoder takes 16x16 to 3840x2160: scale it with --resolution, e.g. --resolution 1280x720"
                );
            }
            (w, h)
        }
    };
    let convert = format!("ffmpeg -i {name} -c:v copy -c:a libopus out.mp4");
    let audio = match (args.audio, &info.sound) {
        (None | Some(AudioSource::File), file::mp4::Sound::Opus { .. }) => AudioSource::File,
        (None, file::mp4::Sound::None) => AudioSource::None,
        (Some(AudioSource::File), file::mp4::Sound::None) => {
            anyhow::bail!(
                "{name} has no sound; leave out --audio file, or send a tone: --audio tone"
            )
        }
        (None | Some(AudioSource::File), file::mp4::Sound::Other(codec)) => anyhow::bail!(
            "the sound of {name} is {codec}; convene plays Opus sound from files: convert it with `{convert}`, or leave it out with --audio none"
        ),
        (Some(other), _) => other,
    };
    let rate = info.rate;
    Ok(Plan {
        width,
        height,
        fps: rate.whole(),
        audio,
        file: Some(Playback {
            info,
            looping: args.looping,
            clock: Arc::new(PlayClock::default()),
        }),
    })
}

fn tone_pitch(s: &str) -> Result<f64, String> {
    let hz: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of Hz, e.g. 440"))?;
    if (20.0..=20_000.0).contains(&hz) {
        Ok(hz)
    } else {
        Err(format!("{hz} Hz is outside 20 to 20000"))
    }
}

fn tone_level(s: &str) -> Result<f64, String> {
    let db: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a number of dBFS, e.g. -12"))?;
    if (-60.0..=0.0).contains(&db) {
        Ok(db)
    } else {
        Err(format!("{db} dBFS is outside -60 to 0"))
    }
}

fn parse_resolution(s: &str) -> Result<(usize, usize), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("`{s}` is not WIDTHxHEIGHT, e.g. 1280x720"))?;
    let w: usize = w
        .trim()
        .parse()
        .map_err(|_| format!("bad width in `{s}`"))?;
    let h: usize = h
        .trim()
        .parse()
        .map_err(|_| format!("bad height in `{s}`"))?;
    if !w.is_multiple_of(2) || !h.is_multiple_of(2) {
        return Err(format!("{w}x{h}: width and height must be even"));
    }
    if w < pattern::MIN_WIDTH || h < pattern::MIN_HEIGHT || w > 3840 || h > 2160 {
        return Err(format!(
            "{w}x{h} is out of range: {}x{} to 3840x2160",
            pattern::MIN_WIDTH,
            pattern::MIN_HEIGHT
        ));
    }
    Ok((w, h))
}

/// The summary `--json` prints.
#[derive(Debug, Default, serde::Serialize)]
struct Summary {
    transport: Option<String>,
    /// Congestion hints received for the video track.
    congestion_hints: u64,
    /// The lowest video bitrate the encoder was set to, in kbit/s (hints and
    /// the publisher's own path: round trip, loss, backlog).
    min_bitrate_kbps: u32,
    /// Times the encoder's bitrate changed.
    bitrate_changes: u32,
    /// What the last path report made of the path: `clean`, `hold` or `congested`.
    path: Option<String>,
    /// The last round trip measured (QUIC's, or a Ping's over WebSocket), in ms.
    rtt_ms: Option<f64>,
    /// The server streamed to last (of those given with --server).
    server: Option<String>,
    participant_id: u32,
    width: usize,
    height: usize,
    frames_encoded: u64,
    frames_skipped_by_rate_control: u64,
    key_frames: u64,
    key_frame_requests: u64,
    /// With --simulcast: per encoding (smallest first), its size, the
    /// pictures encoded and the mean encoding time, and the last demand.
    encodings: Vec<EncodingSummary>,
    /// The server's last EncodingDemand mask (§6.6.5), with --simulcast.
    demand_mask: Option<u32>,
    video_frames_sent: u64,
    audio_frames_sent: u64,
    /// Silent frames the Opus encoder left out (DTX).
    audio_frames_silent: u64,
    /// The codec of the sound sent, if any.
    audio_codec: Option<&'static str>,
    bytes_sent: u64,
    mean_encode_ms: f64,
    connects: u32,
    /// With --e2ee: the last safety code and what the keyring did.
    e2ee: Option<E2eeSummary>,
}

/// The encodings announced with --simulcast (§6.6.1), or none.
fn simulcast_encodings(args: &StreamArgs, width: usize, height: usize) -> Vec<v1::Encoding> {
    let rungs = ladder(width, height, args.bitrate_kbps, args.simulcast);
    convene_protocol::simulcast::encodings(&rungs, args.plan.fps, 1)
}

/// One simulcast encoding in the summary.
#[derive(Debug, Default, serde::Serialize)]
struct EncodingSummary {
    width: u32,
    height: u32,
    kbps: u32,
    frames_encoded: u64,
    mean_encode_ms: f64,
}

/// Starts the capture thread, then streams, one session after another, until
/// Ctrl-C, `--duration` or a close not worth reconnecting after.
pub(crate) async fn run(mut args: StreamArgs) -> anyhow::Result<std::process::ExitCode> {
    let endpoints = args.server.endpoints().await?;
    if args.key_interval.is_nan() || args.key_interval <= 0.0 {
        anyhow::bail!("--key-interval must be a positive number of seconds");
    }
    args.plan = plan(&args)?;
    let args = args;
    let clock = Instant::now();
    let codec = args.audio_codec;
    let sound = match args.plan.audio {
        AudioSource::None => SoundIn::None,
        AudioSource::File => SoundIn::File(file::play_sound(
            args.plan.file.clone().expect("a file plan"),
            codec.sample_rate(),
            codec.samples_per_frame(),
        )?),
        AudioSource::Tone => SoundIn::Tone(audio::Tone::at(
            args.tone_hz,
            args.tone_dbfs,
            codec.sample_rate(),
        )),
        AudioSource::Mic => SoundIn::Mic(crate::mic::open(
            &args.audio_device,
            codec.sample_rate(),
            codec.samples_per_frame(),
        )?),
    };
    let encoder = match args.plan.audio {
        AudioSource::None => None,
        _ => Some(anyhow::Context::context(
            audio::Encoder::new(codec),
            "cannot start the audio encoder",
        )?),
    };
    let (media, video_rx) = Media::start(&args).await?;
    if let Some(p) = &args.plan.file {
        let info = &p.info;
        let sound = match args.plan.audio {
            AudioSource::File => "with its sound",
            AudioSource::None => "without sound",
            AudioSource::Tone => "with a tone instead of its sound",
            AudioSource::Mic => "with the microphone",
        };
        let size = if (info.width, info.height) == (args.plan.width, args.plan.height) {
            String::new()
        } else {
            format!(" scaled to {}x{}", args.plan.width, args.plan.height)
        };
        let length = info
            .duration
            .map_or(String::new(), |d| format!(", {:.1} s", d.as_secs_f64()));
        let looping = if p.looping { ", looping" } else { "" };
        eprintln!(
            "playing {} ({}x{}{size} at {:.2} fps{length}{looping}) {sound}",
            info.path.display(),
            info.width,
            info.height,
            info.rate.fps(),
        );
    }
    let mut stream = Stream::new(&args, endpoints, clock, &media, video_rx, sound, encoder);
    let outcome = loop {
        let joined = tokio::select! {
            r = stream.connect() => r,
            _ = tokio::signal::ctrl_c() => break Ok(()),
            _ = sleep_until(stream.deadline) => break Ok(()),
        };
        let next = match joined {
            Ok((client, present, e2ee_required)) => {
                let session = stream.start_session(client, present, e2ee_required)?;
                stream.publish(session).await
            }
            Err(failure) => stream.connect_failed(failure).await,
        };
        if let ControlFlow::Break(outcome) = next {
            break outcome;
        }
    };
    let media_error = media.finish(stream.video_rx).await;
    stream.status.done();
    if let Err(e) = outcome {
        return Err(media_error.unwrap_or(e));
    }
    stream.summary.e2ee = stream.e2ee.as_ref().map(E2ee::summary);
    if stream.rungs.len() > 1 {
        stream.summary.encodings = stream
            .rungs
            .iter()
            .zip(&stream.stats.per_encoding)
            .map(|(r, (n, us))| {
                let n = n.load(Ordering::Relaxed);
                EncodingSummary {
                    width: r.width,
                    height: r.height,
                    kbps: r.kbps,
                    frames_encoded: n,
                    mean_encode_ms: us.load(Ordering::Relaxed) as f64 / 1000.0 / n.max(1) as f64,
                }
            })
            .collect();
    }
    print_summary(stream.summary, &stream.stats, args.json)?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// What `convene stream` carries from one session to the next.
struct Stream<'a> {
    args: &'a StreamArgs,
    /// The servers given with --server, in the same order as the URLs in
    /// `reconnect`.
    endpoints: Vec<convene_client::Endpoint>,
    reconnect: Reconnect,
    status: StatusLine,
    /// When --duration is up, if it was given.
    deadline: Option<tokio::time::Instant>,
    /// Encoded pictures from the capture thread.
    video_rx: mpsc::Receiver<VideoOut>,
    /// Shared with the capture thread: see [`Media`].
    key_wanted: Arc<AtomicBool>,
    key_mask: Arc<AtomicU8>,
    demand: Arc<AtomicU8>,
    /// The encodings of the picture, smallest first (one without --simulcast).
    rungs: Vec<Rung>,
    stats: Arc<EncodeStats>,
    target_kbps: Arc<AtomicU32>,
    /// Set when the source came to its end: see [`Media`].
    ended: Arc<AtomicBool>,
    /// With a file: the clock it plays by, started at the first join.
    play: Option<Arc<PlayClock>>,
    /// Turns congestion hints and path reports into `target_kbps`.
    rate: RateController,
    /// The zero of the timestamps `rate` is given.
    clock: Instant,
    sound: SoundIn,
    /// Encodes the sound (None without sound).
    encoder: Option<audio::Encoder>,
    /// Our tracks, whose sequence numbers go on from one session to the next.
    video: OutTrack,
    audio: OutTrack,
    /// The session's end-to-end encryption, with --e2ee (new keys per session).
    e2ee: Option<E2ee>,
    summary: Summary,
}

/// What the stream does after an event of its session.
#[derive(Debug)]
enum Next {
    /// Goes on with this session.
    Continue,
    /// Reconnects, after losing the session for this reason.
    Reconnect(String),
    /// Ends the run.
    End(anyhow::Result<()>),
}

/// One joined session, and what lives as long as it does.
struct Session {
    client: Client,
    /// How many others are in the room, for the status line.
    peers: usize,
    /// Everyone in the room, us included: whom a keyring started later counts in.
    present: Vec<u32>,
    /// The session negotiated sfu.1 and the track was published with its
    /// encodings: pictures go out as LAYERED frames.
    layered: bool,
    /// The session negotiated sfu.1: the tone goes out with its level
    /// beside it (LAYERED, §6.6.2).
    levels: bool,
    /// When the tone's next frame is due.
    audio_tick: tokio::time::Interval,
    /// When the path is checked and the status line redrawn.
    status_tick: tokio::time::Interval,
    /// Frames and bytes since the status line was last drawn.
    window: Window,
}

impl<'a> Stream<'a> {
    fn new(
        args: &'a StreamArgs,
        endpoints: Vec<convene_client::Endpoint>,
        clock: Instant,
        media: &Media,
        video_rx: mpsc::Receiver<VideoOut>,
        sound: SoundIn,
        encoder: Option<audio::Encoder>,
    ) -> Stream<'a> {
        let (width, height) = (args.plan.width, args.plan.height);
        Stream {
            args,
            endpoints,
            reconnect: Reconnect::new(args.server.urls().iter().map(|u| u.to_string()).collect()),
            status: StatusLine::new(),
            deadline: args
                .duration
                .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0))),
            video_rx,
            key_wanted: media.key_wanted.clone(),
            key_mask: media.key_mask.clone(),
            demand: media.demand.clone(),
            rungs: ladder(width, height, args.bitrate_kbps, args.simulcast),
            stats: media.stats.clone(),
            target_kbps: media.target_kbps.clone(),
            ended: media.ended.clone(),
            play: media.clock.clone(),
            rate: RateController::new(args.bitrate_kbps.saturating_mul(1000), RATE_FLOOR_BPS),
            clock,
            sound,
            encoder,
            video: OutTrack::new(VIDEO_TRACK),
            audio: OutTrack::new(AUDIO_TRACK),
            e2ee: None,
            summary: Summary {
                width,
                height,
                min_bitrate_kbps: args.bitrate_kbps,
                audio_codec: (args.plan.audio != AudioSource::None)
                    .then(|| args.audio_codec.name()),
                ..Summary::default()
            },
        }
    }

    /// Connects to the server whose turn it is, joins and publishes.
    async fn connect(&self) -> Result<(Client, Vec<u32>, bool), Failure> {
        let (width, height) = (self.args.plan.width, self.args.plan.height);
        let endpoint = &self.endpoints[self.reconnect.at];
        connect(self.args, endpoint, width, height, &self.status).await
    }

    /// An attempt to join failed: goes on at once, after a wait, or not at all.
    async fn connect_failed(&mut self, failure: Failure) -> ControlFlow<anyhow::Result<()>> {
        match self.reconnect.failed(failure, &self.args.server.server) {
            Retry::Now(note) => self.status.note(&note),
            Retry::After(wait, why) => {
                self.status.note(&format!("{why}; retrying in {wait:?}"));
                if wait_or_stop(wait, self.deadline).await {
                    return ControlFlow::Break(Ok(()));
                }
            }
            Retry::GiveUp(why) => return ControlFlow::Break(Err(anyhow::anyhow!(why))),
        }
        ControlFlow::Continue(())
    }

    /// A session joined: notes it, starts E2EE with --e2ee or when the
    /// meeting requires it, and asks for a key frame.
    fn start_session(
        &mut self,
        mut client: Client,
        present: Vec<u32>,
        e2ee_required: bool,
    ) -> anyhow::Result<Session> {
        let peers = present.len().saturating_sub(1);
        self.reconnect.connected();
        self.summary.connects += 1;
        self.summary.transport = Some(format!("{:?}", client.transport()));
        self.summary.server = Some(self.reconnect.url().to_string());
        self.summary.participant_id = client.participant_id();
        let (width, height) = (self.args.plan.width, self.args.plan.height);
        self.status.note(&format!(
            "streaming {width}x{height}@{} {} kbps into `{}` as participant {} over {:?} at {}",
            self.args.plan.fps,
            self.args.bitrate_kbps,
            self.args.meeting_id,
            client.participant_id(),
            client.transport(),
            self.reconnect.url()
        ));
        if e2ee_required && !self.args.e2ee {
            self.status.note(&format!(
                "meeting `{}` requires end-to-end encryption: encrypting as with --e2ee",
                self.args.meeting_id
            ));
        }
        self.e2ee = if self.args.e2ee || e2ee_required {
            Some(E2ee::start(
                &mut client,
                &self.args.meeting_id,
                &present,
                &self.status,
            )?)
        } else {
            None
        };
        // Whoever is already there needs a picture to start from.
        self.key_wanted.store(true, Ordering::Relaxed);
        // A file starts playing when the stream first joins (later calls
        // change nothing: a reconnect goes on where the file is).
        if let Some(play) = &self.play {
            play.start();
        }
        let mut audio_tick = tokio::time::interval(Duration::from_millis(
            1000 / u64::from(audio::FRAMES_PER_SECOND),
        ));
        // A late tick is made up at once, and each frame is stamped with
        // the time it was due: the tone's timeline has no holes a busy
        // machine made (a recorder would fill them with silence).
        audio_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let status_tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        // Each session starts with every encoding on (a new server has said
        // nothing yet), or only the full picture for a server without sfu.1.
        let layered = client.sfu() && self.rungs.len() > 1;
        let all = if layered || self.rungs.len() == 1 {
            0b111
        } else {
            1 << (self.rungs.len() - 1)
        };
        self.demand.store(all, Ordering::Relaxed);
        if self.rungs.len() > 1 && !layered {
            self.status
                .note("the server does not offer selective forwarding (sfu.1): sending the full-size encoding only");
        }
        Ok(Session {
            levels: client.sfu(),
            client,
            layered,
            peers,
            present,
            audio_tick,
            status_tick,
            window: Window::default(),
        })
    }

    /// Publishes over `s` until the run ends or the session is lost; after a
    /// loss, waits before the next attempt.
    async fn publish(&mut self, mut s: Session) -> ControlFlow<anyhow::Result<()>> {
        let tone = self.args.plan.audio == AudioSource::Tone;
        // What the microphone or the file said while we were away is not sent late.
        if let SoundIn::Mic(rx) | SoundIn::File(rx) = &mut self.sound {
            while rx.try_recv().is_ok() {}
        }
        let lost = loop {
            let paced = self.sound.paced();
            let next = tokio::select! {
                ev = s.client.next_event() => self.on_event(&mut s, ev),
                v = self.video_rx.recv() => match v {
                    // The file is over: say goodbye and end the run.
                    None if self.ended.load(Ordering::Relaxed) => s.finish().await,
                    v => self.send_video(&mut s, v),
                },
                due = s.audio_tick.tick(), if tone => {
                    let pcm = match &mut self.sound {
                        SoundIn::Tone(t) => t.next_samples(self.args.audio_codec.samples_per_frame()),
                        _ => Vec::new(),
                    };
                    let late = tokio::time::Instant::now().saturating_duration_since(due);
                    self.send_audio(&mut s, &pcm, unix_micros().saturating_sub(late.as_micros() as u64))
                }
                pcm = self.sound.paced_frame(), if paced => match pcm {
                    Some(pcm) => self.send_audio(&mut s, &pcm, unix_micros()),
                    // The file's sound is over (the pictures may go on a little).
                    None if matches!(self.sound, SoundIn::File(_)) => {
                        self.sound = SoundIn::None;
                        Next::Continue
                    }
                    None => Next::End(Err(anyhow::anyhow!("the microphone stopped (see the log above)"))),
                },
                _ = s.status_tick.tick() => self.on_status_tick(&mut s),
                _ = tokio::signal::ctrl_c() => s.stop().await,
                _ = sleep_until(self.deadline) => s.finish().await,
            };
            match next {
                Next::Continue => {}
                Next::Reconnect(why) => break why,
                Next::End(outcome) => return ControlFlow::Break(outcome),
            }
        };
        self.lost(&lost).await
    }

    /// Something from the server: a key frame request, a peer coming or
    /// going, a congestion hint, or the end of the session.
    fn on_event(&mut self, s: &mut Session, ev: Option<ClientEvent>) -> Next {
        if let (Some(e), Some(ev)) = (self.e2ee.as_mut(), ev.as_ref()) {
            // A stream only sends: frames it would ask for do not concern it.
            let _ = e.on_event(&mut s.client, ev, &self.status);
        }
        match ev {
            Some(ClientEvent::Room(S::KeyFrameRequest(k))) if k.track_id == VIDEO_TRACK => {
                self.summary.key_frame_requests += 1;
                // A mask names the encodings that need one (§6.6.3); 0 is all.
                match k.encoding_mask {
                    0 => self.key_wanted.store(true, Ordering::Relaxed),
                    m => {
                        self.key_mask.fetch_or(m as u8, Ordering::Relaxed);
                    }
                }
            }
            Some(ClientEvent::Room(S::EncodingDemand(d))) if d.track_id == VIDEO_TRACK => {
                // Encodings nobody receives are not encoded (§6.6.5); the
                // capture thread starts one that comes back at a key frame.
                self.summary.demand_mask = Some(d.active_mask);
                if s.layered {
                    self.demand.store(d.active_mask as u8, Ordering::Relaxed);
                }
                tracing::info!(mask = d.active_mask, "encoding demand");
            }
            Some(ClientEvent::Room(S::ParticipantJoined(j))) => {
                s.peers += 1;
                s.present.extend(j.participant.map(|p| p.participant_id));
            }
            Some(ClientEvent::Room(S::ParticipantLeft(l))) => {
                s.peers = s.peers.saturating_sub(1);
                s.present.retain(|p| *p != l.participant_id);
            }
            Some(ClientEvent::Error(e))
                if e.code == convene_protocol::ErrorCode::E2eeRequired as i32
                    && self.e2ee.is_none() =>
            {
                // The meeting came to require encryption while we were in it.
                self.status.note(&format!(
                    "meeting `{}` now requires end-to-end encryption: encrypting from now on",
                    self.args.meeting_id
                ));
                match E2ee::start(
                    &mut s.client,
                    &self.args.meeting_id,
                    &s.present,
                    &self.status,
                ) {
                    Ok(e) => self.e2ee = Some(e),
                    Err(e) => return Next::End(Err(e)),
                }
            }
            Some(ClientEvent::Room(S::CongestionHint(h))) if h.track_id == VIDEO_TRACK => {
                self.summary.congestion_hints += 1;
                // The server's word goes to the encoder at once
                // (within the floor and --bitrate-kbps).
                self.rate
                    .on_hint(h.target_bitrate_kbps.saturating_mul(1000));
                let kbps = self.rate.target() / 1000;
                tracing::info!(kbps, reason = h.reason, "congestion hint");
                set_bitrate(&self.target_kbps, kbps, &mut self.summary);
            }
            Some(ClientEvent::Closed) | None => return self.on_close(s.client.close_reason()),
            Some(_) => {}
        }
        Next::Continue
    }

    /// The session ended: reconnect, or end the run, as [`after_close`] decides.
    fn on_close(&self, reason: Option<&convene_protocol::CloseReason>) -> Next {
        match after_close(reason) {
            AfterClose::Reconnect(why) => Next::Reconnect(why),
            AfterClose::Stop(note) => {
                self.status.note(&note);
                Next::End(Ok(()))
            }
            AfterClose::Fail(why) => Next::End(Err(anyhow::anyhow!(why))),
        }
    }

    /// Sends an encoded picture; `None` means the capture thread is gone.
    fn send_video(&mut self, s: &mut Session, v: Option<VideoOut>) -> Next {
        let Some(v) = v else {
            return Next::End(Err(anyhow::anyhow!("the capture thread stopped")));
        };
        let frame = match v.encoding {
            // Every encoding of a picture carries the picture's number (§6.6.1).
            Some(encoding) if s.layered => {
                let layer = Layer {
                    encoding,
                    ..Layer::default()
                };
                let frame = self.video.frame_at(v.picture, v.key, v.capture_us, &v.data);
                seal(&mut self.e2ee, frame).with_layer(layer)
            }
            // A server without sfu.1 gets the full picture only.
            Some(encoding) if usize::from(encoding) + 1 != self.rungs.len() => {
                return Next::Continue;
            }
            _ => seal(
                &mut self.e2ee,
                self.video.frame(v.key, v.capture_us, &v.data),
            ),
        };
        if s.client.send_media(frame).is_ok() {
            self.summary.video_frames_sent += 1;
            self.summary.bytes_sent += v.data.len() as u64;
            s.window.frames += 1;
            s.window.bytes += v.data.len() as u64;
        }
        Next::Continue
    }

    /// Encodes and sends 20 ms of sound.
    /// `captured_us` is when the sound was due (Unix µs).
    fn send_audio(&mut self, s: &mut Session, pcm: &[i16], captured_us: u64) -> Next {
        let Some(encoder) = self.encoder.as_mut() else {
            return Next::Continue;
        };
        let payload = match encoder.encode(pcm) {
            Ok(Some(p)) => p,
            Ok(None) => {
                self.summary.audio_frames_silent += 1;
                return Next::Continue;
            }
            Err(e) => {
                return Next::End(Err(anyhow::Error::new(e).context("cannot encode the sound")));
            }
        };
        let mut frame = seal(
            &mut self.e2ee,
            self.audio.frame(true, captured_us, &payload),
        );
        if s.levels {
            frame = frame.with_layer(Layer {
                level: Some(AudioLevel::measure(&audio::to_float(pcm))),
                ..Layer::default()
            });
        }
        if s.client.send_media(frame).is_ok() {
            self.summary.audio_frames_sent += 1;
            self.summary.bytes_sent += payload.len() as u64;
            s.window.bytes += payload.len() as u64;
        }
        Next::Continue
    }

    /// Once a second: the bitrate follows the path, and the status line is redrawn.
    fn on_status_tick(&mut self, s: &mut Session) -> Next {
        self.follow_path(s);
        self.show_status(s);
        Next::Continue
    }

    /// Sets the encoder's bitrate from what the path looks like (round trip,
    /// loss, backlog), in steps of at least [`RATE_STEP`] except to the
    /// floor or back to --bitrate-kbps.
    fn follow_path(&mut self, s: &mut Session) {
        if s.client.transport() == TransportKind::WebSocket {
            // A publisher always has something to send, so the
            // session never pings by itself: ask for a round trip.
            let _ = s.client.ping();
        }
        let path = s.client.path_report();
        self.summary.rtt_ms = path.rtt.map(|r| r.as_secs_f64() * 1e3);
        let now = Timestamp(self.clock.elapsed().as_micros() as u64);
        let bps = self
            .rate
            .on_path(now, path.rtt, path.loss, path.backlog_bytes);
        self.summary.path = self
            .rate
            .path_state()
            .map(|p| format!("{p:?}").to_lowercase());
        let current = self.target_kbps.load(Ordering::Relaxed);
        let kbps = bps / 1000;
        if f64::from(kbps.abs_diff(current)) >= RATE_STEP * f64::from(current)
            || (kbps != current && (bps == self.rate.floor() || kbps == self.args.bitrate_kbps))
        {
            tracing::info!(kbps, ?path, "bitrate from the path");
            set_bitrate(&self.target_kbps, kbps, &mut self.summary);
        }
    }

    /// Redraws the status line and starts a new window.
    fn show_status(&self, s: &mut Session) {
        let secs = s.window.since.elapsed().as_secs_f64().max(0.001);
        let rtt = s
            .client
            .rtt()
            .map_or("-".into(), |r| format!("{:.1} ms", r.as_secs_f64() * 1e3));
        self.status.show(&format!(
            "{:.1} fps  {:.0} kbps (target {})  rtt {rtt}  peers {}  key frames {}  dropped {}",
            s.window.frames as f64 / secs,
            s.window.bytes as f64 * 8.0 / secs / 1000.0,
            self.target_kbps.load(Ordering::Relaxed),
            s.peers,
            self.stats.key_frames.load(Ordering::Relaxed),
            self.stats.dropped.load(Ordering::Relaxed) + s.client.congested_drops(),
        ));
        s.window = Window::default();
    }

    /// The session was lost: waits before reconnecting; breaks when the run
    /// should end instead.
    async fn lost(&mut self, why: &str) -> ControlFlow<anyhow::Result<()>> {
        let wait = self.reconnect.next_backoff();
        self.status.note(&format!(
            "lost the server ({why}); reconnecting in {wait:?}"
        ));
        // Pictures made while away are stale: let them go.
        if wait_or_stop_draining(wait, self.deadline, &mut self.video_rx).await {
            return ControlFlow::Break(Ok(()));
        }
        ControlFlow::Continue(())
    }
}

impl Session {
    /// Ctrl-C: says goodbye and ends the run.
    async fn stop(&mut self) -> Next {
        self.client.close("stream stopped").await;
        Next::End(Ok(()))
    }

    /// --duration is up: says goodbye, waiting at most 5 s, and ends the run.
    async fn finish(&mut self) -> Next {
        let _ =
            tokio::time::timeout(Duration::from_secs(5), self.client.close("stream done")).await;
        Next::End(Ok(()))
    }
}

/// Prints what was sent: JSON with --json, a line on stderr otherwise.
fn print_summary(mut summary: Summary, stats: &EncodeStats, json: bool) -> anyhow::Result<()> {
    summary.frames_encoded = stats.frames.load(Ordering::Relaxed);
    summary.key_frames = stats.key_frames.load(Ordering::Relaxed);
    summary.frames_skipped_by_rate_control = stats.skipped.load(Ordering::Relaxed);
    summary.mean_encode_ms = stats.encode_us.load(Ordering::Relaxed) as f64
        / 1000.0
        / summary.frames_encoded.max(1) as f64;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!(
            "sent {} video frames ({} key, {} asked for) and {} audio frames, {:.1} MB; encode {:.2} ms a frame",
            summary.video_frames_sent,
            summary.key_frames,
            summary.key_frame_requests,
            summary.audio_frames_sent,
            summary.bytes_sent as f64 / 1e6,
            summary.mean_encode_ms
        );
        for e in &summary.encodings {
            eprintln!(
                "  encoding {}x{} at {} kbps: {} pictures, {:.2} ms each",
                e.width, e.height, e.kbps, e.frames_encoded, e.mean_encode_ms
            );
        }
    }
    Ok(())
}

/// Tells the encoder thread a new bitrate, in kbit/s.
fn set_bitrate(target: &AtomicU32, kbps: u32, summary: &mut Summary) {
    if target.swap(kbps, Ordering::Relaxed) != kbps {
        summary.bitrate_changes += 1;
        summary.min_bitrate_kbps = summary.min_bitrate_kbps.min(kbps);
    }
}

/// Encrypts a frame when E2EE is on.
fn seal(e2ee: &mut Option<E2ee>, frame: MediaFrame) -> MediaFrame {
    match e2ee {
        Some(e) => e.seal(frame),
        None => frame,
    }
}

/// Frames and bytes over the last status period.
#[derive(Debug)]
struct Window {
    since: Instant,
    frames: u64,
    bytes: u64,
}

impl Default for Window {
    fn default() -> Window {
        Window {
            since: Instant::now(),
            frames: 0,
            bytes: 0,
        }
    }
}

/// Connects, joins and publishes; returns the client and how many others are in the room.
async fn connect(
    args: &StreamArgs,
    endpoint: &convene_client::Endpoint,
    width: usize,
    height: usize,
    status: &StatusLine,
) -> Result<(Client, Vec<u32>, bool), Failure> {
    let mut until = tokio::time::Instant::now() + JOIN_TIMEOUT;
    let config = ClientSessionConfig {
        client_kind: ClientKind::Native,
        client_version: concat!("convene-stream/", env!("CARGO_PKG_VERSION")).into(),
        auth_token: args.server.token.clone().unwrap_or_default(),
        // Simulcast needs the extension, and so does the sound's level.
        features: if args.simulcast || args.plan.audio != AudioSource::None {
            vec![FEATURE_SFU.to_string()]
        } else {
            Vec::new()
        },
        ..ClientSessionConfig::default()
    };
    let mut c = tokio::time::timeout_at(
        until,
        Client::connect(endpoint, args.server.transport, config),
    )
    .await
    .map_err(|_| Failure::TimedOut)?
    .map_err(|e| Failure::Unreachable(format!("cannot connect: {e}")))?;
    // Who is in the room (us included), kept up to date until we return.
    let mut present: Vec<u32>;
    let e2ee_required;
    let mut waiting = false;
    loop {
        // A waiting room may hold us as long as the moderator takes.
        let ev = if waiting {
            c.next_event().await
        } else {
            tokio::time::timeout_at(until, c.next_event())
                .await
                .map_err(|_| Failure::TimedOut)?
        };
        match ev {
            Some(ClientEvent::Welcome(_)) => {
                c.join(&args.meeting_id, &args.user_id, false)
                    .map_err(|e| Failure::Refused(e.to_string()))?;
            }
            Some(ClientEvent::Joined(j)) => {
                present = j.participants.iter().map(|p| p.participant_id).collect();
                e2ee_required = j.e2ee_required;
                break;
            }
            Some(ClientEvent::Waiting(_)) => {
                waiting = true;
                status.note(&format!(
                    "waiting for a moderator to admit us to `{}`",
                    args.meeting_id
                ));
            }
            Some(ClientEvent::JoinRefused(e)) | Some(ClientEvent::Error(e)) => {
                use convene_protocol::ErrorCode as E;
                let text = crate::args::refusal(&e, &args.meeting_id);
                if matches!(
                    E::try_from(e.code),
                    Ok(E::ServerBusy | E::TooManyConnections)
                ) {
                    return Err(Failure::Busy(text));
                }
                return Err(Failure::Refused(text));
            }
            Some(_) => {}
            None => return Err(closed(&c)),
        }
    }
    let me = c.participant_id();
    let mut tracks = vec![TrackInfo {
        track_id: VIDEO_TRACK,
        kind: if args.screen {
            TrackKind::Screen as i32
        } else {
            TrackKind::Video as i32
        },
        codec: h264::codec_string(width as u32, height as u32, args.plan.fps).into(),
        width: width as u32,
        height: height as u32,
        frame_rate: args.plan.fps,
        target_bitrate_kbps: args.bitrate_kbps,
        encodings: if c.sfu() {
            simulcast_encodings(args, width, height)
        } else {
            Vec::new()
        },
        ..Default::default()
    }];
    if args.plan.audio != AudioSource::None {
        tracks.push(TrackInfo {
            track_id: AUDIO_TRACK,
            kind: TrackKind::Audio as i32,
            codec: args.audio_codec.name().into(),
            audio_levels: c.sfu(),
            ..Default::default()
        });
    }
    until = tokio::time::Instant::now() + JOIN_TIMEOUT;
    for t in tracks {
        let id = t.track_id;
        c.publish(t).map_err(|e| Failure::Refused(e.to_string()))?;
        loop {
            let ev = tokio::time::timeout_at(until, c.next_event())
                .await
                .map_err(|_| Failure::TimedOut)?;
            match ev {
                Some(ClientEvent::Room(S::TrackPublished(p)))
                    if p.participant_id == me
                        && p.track.as_ref().is_some_and(|t| t.track_id == id) =>
                {
                    break;
                }
                Some(ClientEvent::Room(S::ParticipantJoined(j))) => {
                    present.extend(j.participant.map(|p| p.participant_id));
                }
                Some(ClientEvent::Room(S::ParticipantLeft(l))) => {
                    present.retain(|p| *p != l.participant_id);
                }
                Some(ClientEvent::Error(e)) => {
                    return Err(Failure::Refused(format!(
                        "the server refused track {id}: {}",
                        crate::args::describe(&e)
                    )));
                }
                Some(_) => {}
                None => return Err(closed(&c)),
            }
        }
    }
    Ok((c, present, e2ee_required))
}

/// Sleeps; true when the run should end instead (Ctrl-C or `--duration`).
async fn wait_or_stop(d: Duration, deadline: Option<tokio::time::Instant>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = tokio::signal::ctrl_c() => true,
        _ = sleep_until(deadline) => true,
    }
}

async fn wait_or_stop_draining(
    d: Duration,
    deadline: Option<tokio::time::Instant>,
    rx: &mut mpsc::Receiver<VideoOut>,
) -> bool {
    let until = tokio::time::Instant::now() + d;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return false,
            _ = tokio::signal::ctrl_c() => return true,
            _ = sleep_until(deadline) => return true,
            v = rx.recv() => if v.is_none() { return true },
        }
    }
}

/// The live status line on stderr: redrawn in place on a terminal, a plain
/// line every few seconds otherwise (logs, pipes).
#[derive(Debug)]
pub(crate) struct StatusLine {
    tty: bool,
    printed: std::sync::atomic::AtomicU32,
}

impl StatusLine {
    pub(crate) fn new() -> StatusLine {
        StatusLine {
            tty: std::io::stderr().is_terminal(),
            printed: std::sync::atomic::AtomicU32::new(0),
        }
    }

    /// Updates the live line.
    pub(crate) fn show(&self, line: &str) {
        let n = self.printed.fetch_add(1, Ordering::Relaxed);
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else if n.is_multiple_of(5) {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
    }

    /// A message that stays (connected, reconnecting, …).
    pub(crate) fn note(&self, line: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K");
        }
        let _ = writeln!(err, "{line}");
    }

    /// Ends the live line.
    pub(crate) fn done(&self) {
        if self.tty {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolutions_parse_and_are_checked() {
        assert_eq!(parse_resolution("1280x720"), Ok((1280, 720)));
        assert_eq!(parse_resolution("320X240"), Ok((320, 240)));
        assert!(
            parse_resolution("1280")
                .unwrap_err()
                .contains("WIDTHxHEIGHT")
        );
        assert!(parse_resolution("321x240").unwrap_err().contains("even"));
        assert!(
            parse_resolution("64x48")
                .unwrap_err()
                .contains("out of range")
        );
    }
}
