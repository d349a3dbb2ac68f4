//! `convene load`: many simulated participants against one server.
//!
//! Phases: participants connect and join, spread over the ramp-up; once all
//! are in (or have failed), every publisher sends synthetic audio and video
//! at the configured rates for the duration; everyone keeps receiving for a
//! short drain; then the numbers are added up. Because sending starts only
//! when every room is complete, the expected number of deliveries is exact:
//! each frame a publisher sends is owed to every other member of its room.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use convene_client::{Client, TransportKind};
use convene_protocol::v1::{
    self, ClientKind, TrackInfo, TrackKind, client_message::Msg as C, server_message::Msg as S,
};
use convene_protocol::{AudioLevel, ClientEvent, ClientSessionConfig, Layer, MediaFrame};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::args::ServerArgs;
use crate::media::{OutTrack, unix_micros};
use crate::stats::{SequenceTracker, percentile};

const AUDIO_TRACK: u32 = 1;
const VIDEO_TRACK: u32 = 2;
/// How long receivers keep listening after the publishers stop.
const DRAIN: Duration = Duration::from_secs(1);
/// How long a participant may take to connect and join before it counts as failed.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Flags of `convene load`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LoadArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Participants in all.
    #[arg(long, short = 'n', default_value_t = 10)]
    participants: usize,
    /// Rooms they are spread over (round robin).
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Publishers per room (the first to join); the others only subscribe.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Meeting id, or prefix of the meeting ids when there are several rooms.
    #[arg(long, default_value = "load")]
    meeting: String,
    /// Video frames per second per publisher (0: no video).
    #[arg(long, default_value_t = 30)]
    video_fps: u32,
    /// Bytes of payload per video frame.
    #[arg(long, default_value_t = 2000)]
    video_bytes: usize,
    /// Audio frames per second per publisher (0: no audio).
    #[arg(long, default_value_t = 50)]
    audio_fps: u32,
    /// Bytes of payload per audio frame.
    #[arg(long, default_value_t = 100)]
    audio_bytes: usize,
    /// A video key frame at least this often, in seconds (and whenever asked).
    #[arg(long, default_value_t = 2.0)]
    key_interval: f64,
    /// Seconds over which participants connect.
    #[arg(long, default_value_t = 2.0)]
    ramp_up: f64,
    /// Seconds of sending, after everyone has joined.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// The server's process id: report its CPU time per delivered frame (Linux).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Exit with status 1 when loss exceeds this many percent.
    #[arg(long)]
    max_loss: Option<f64>,
    /// Exit with status 1 when the end-to-end latency p99 exceeds this many milliseconds.
    #[arg(long)]
    max_p99_ms: Option<f64>,
    /// `broadcast`: the first --publishers of each room send audio and
    /// video, and everyone receives all of it. `meeting`: a large meeting as
    /// selective forwarding serves it: everyone sends audio (the first
    /// --speakers at --audio-fps with a speech level, the rest comfort noise
    /// at --comfort-fps), the first --cameras send video as three simulcast
    /// encodings, and everyone receives the cameras of the last --last-n
    /// speakers (small tiles, the dominant speaker large) and the
    /// --loudest-audio loudest microphones.
    #[arg(long, value_enum, default_value_t = Shape::Broadcast)]
    shape: Shape,
    /// Meeting: participants per room who speak.
    #[arg(long, default_value_t = 3)]
    speakers: usize,
    /// Meeting: participants per room who send camera video.
    #[arg(long, default_value_t = 25)]
    cameras: usize,
    /// Meeting: comfort-noise frames a second from those who do not speak
    /// (a codec's discontinuous transmission sends one every 400 ms).
    #[arg(long, default_value_t = 2.5)]
    comfort_fps: f64,
    /// Meeting: cameras each participant receives, the latest speakers' first.
    #[arg(long, default_value_t = 7)]
    last_n: u32,
    /// Meeting: microphones each participant receives, the loudest.
    #[arg(long, default_value_t = 3)]
    loudest_audio: u32,
    /// Meeting: the height of a small tile, in pixels; the dominant
    /// speaker's camera is received without a cap.
    #[arg(long, default_value_t = 180)]
    tile_height: u32,
    /// Meeting: do not offer selective forwarding (sfu.1), so each camera
    /// sends one encoding and every member receives everything: the same
    /// meeting for comparison.
    #[arg(long)]
    without_sfu: bool,
}

/// What the participants make together (`--shape`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Shape {
    /// A few publishers, everyone receives everything.
    Broadcast,
    /// Speakers, comfort noise, simulcast cameras, last-N and loudest-N.
    Meeting,
}

impl LoadArgs {
    /// The meeting shape with selective forwarding offered.
    fn selective(&self) -> bool {
        self.shape == Shape::Meeting && !self.without_sfu
    }
}

/// What one participant sends.
#[derive(Debug, Clone, Copy, Default)]
struct Role {
    /// Sends audio at all.
    audio: bool,
    /// Sends speech at --audio-fps (else comfort noise at --comfort-fps).
    speaker: bool,
    /// Sends camera video.
    video: bool,
}

impl Role {
    /// The role of the `nth` member to join its room.
    fn of(args: &LoadArgs, nth: usize) -> Role {
        match args.shape {
            Shape::Broadcast => {
                let publisher = nth < args.publishers;
                Role {
                    audio: publisher && args.audio_fps > 0,
                    speaker: publisher,
                    video: publisher && args.video_fps > 0,
                }
            }
            Shape::Meeting => Role {
                audio: args.audio_fps > 0,
                speaker: nth < args.speakers,
                video: nth < args.cameras && args.video_fps > 0,
            },
        }
    }
}

/// First payload byte of a speaker's audio frame (comfort noise has 0), so
/// receivers can tell whose audio they were owed.
const SPEECH_MARK: u8 = 0x5C;
/// The level speech is sent at, and comfort noise's.
const SPEECH_LEVEL: AudioLevel = AudioLevel {
    voice: true,
    dbov: 20,
};
const COMFORT_LEVEL: AudioLevel = AudioLevel {
    voice: false,
    dbov: 80,
};
/// The picture a meeting's cameras send, and its simulcast encodings' rate
/// proportions (the payload of the top one is --video-bytes).
const CAMERA: (u32, u32, u32) = (1280, 720, 1200);

/// When to send and when to stop, shared once everyone is in.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    /// Halfway through sending.
    settled: tokio::time::Instant,
    send_until: tokio::time::Instant,
    stop_at: tokio::time::Instant,
}

/// Live counters for the progress line.
#[derive(Debug, Default)]
struct Progress {
    joined: AtomicU64,
    failed: AtomicU64,
    sent: AtomicU64,
    received: AtomicU64,
}

/// What one participant saw.
#[derive(Debug, Default)]
struct Outcome {
    room: usize,
    joined: bool,
    transport: Option<TransportKind>,
    connect_us: Option<u64>,
    error: Option<String>,
    ended_early: bool,
    sent_audio: u64,
    sent_video: u64,
    key_frames_sent: u64,
    received_audio: u64,
    received_video: u64,
    received_bytes: u64,
    latencies_us: Vec<u64>,
    gaps: u64,
    /// Meeting: speech audio frames sent and received.
    sent_speech: u64,
    received_speech: u64,
    /// Meeting: comfort-noise audio frames sent and received.
    sent_comfort: u64,
    received_comfort: u64,
    /// Video frames received of each encoding (one without simulcast counts as the top).
    video_by_encoding: [u64; 3],
    /// Distinct cameras video was received from in the second half of sending.
    cameras_received: usize,
}

/// The report, as printed and as JSON.
#[derive(Debug, Serialize)]
struct Report {
    shape: Shape,
    /// The session negotiated selective forwarding (sfu.1).
    selective_forwarding: bool,
    participants: usize,
    rooms: usize,
    publishers_per_room: usize,
    transports: Vec<(String, usize)>,
    duration_s: f64,
    joined: usize,
    failed: usize,
    ended_early: usize,
    connect_ms: Percentiles,
    sent_audio: u64,
    sent_video: u64,
    key_frames_sent: u64,
    expected: u64,
    received: u64,
    received_audio: u64,
    received_video: u64,
    lost: u64,
    loss_percent: f64,
    /// Audio frames owed to members and not delivered, in percent.
    audio_loss_percent: f64,
    sequence_gaps: u64,
    latency_ms: Percentiles,
    frames_per_second: f64,
    megabits_per_second: f64,
    server_cpu_s: Option<f64>,
    server_cpu_us_per_frame: Option<f64>,
    /// The server's resident memory before anyone connected, KiB.
    server_rss_kib_before: Option<u64>,
    /// The server's resident memory with everyone still connected, after sending, KiB.
    server_rss_kib_after: Option<u64>,
    /// The difference per joined participant, KiB.
    server_kib_per_connection: Option<f64>,
    /// Meeting only (broadcast leaves these empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    meeting: Option<MeetingReport>,
    errors: Vec<String>,
}

/// What a meeting-shaped load measured beside the common counts. In a
/// meeting, `expected` and `lost` count the speakers' audio only: it alone
/// is owed to every member whatever the server selects.
#[derive(Debug, Serialize)]
struct MeetingReport {
    speakers_per_room: usize,
    cameras_per_room: usize,
    last_n: u32,
    loudest_audio: u32,
    sent_speech: u64,
    received_speech: u64,
    speech_loss_percent: f64,
    sent_comfort: u64,
    /// Comfort-noise frames owed to every member without selection.
    comfort_owed: u64,
    received_comfort: u64,
    /// Video frames received of each encoding, smallest first.
    video_by_encoding: [u64; 3],
    /// Distinct cameras each member received video from in the second
    /// half of sending (who is shown first settles when speakers are known).
    cameras_received_min: usize,
    cameras_received_max: usize,
    /// What each member received, kbit/s over the sending window.
    receive_kbps: Spread,
}

/// p50 / p99 / max of a per-member figure.
#[derive(Debug, Serialize)]
struct Spread {
    p50: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

impl Spread {
    fn of(mut v: Vec<u64>) -> Spread {
        v.sort_unstable();
        let f = |x: Option<u64>| x.map(|x| x as f64);
        Spread {
            p50: f(percentile(&v, 50.0)),
            p99: f(percentile(&v, 99.0)),
            max: f(v.last().copied()),
        }
    }
}

/// p50 / p95 / p99 / max, in milliseconds.
#[derive(Debug, Serialize)]
struct Percentiles {
    p50: Option<f64>,
    p95: Option<f64>,
    p99: Option<f64>,
    max: Option<f64>,
}

impl Percentiles {
    fn of_us(mut v: Vec<u64>) -> Percentiles {
        v.sort_unstable();
        let ms = |x: Option<u64>| x.map(|us| us as f64 / 1000.0);
        Percentiles {
            p50: ms(percentile(&v, 50.0)),
            p95: ms(percentile(&v, 95.0)),
            p99: ms(percentile(&v, 99.0)),
            max: ms(v.last().copied()),
        }
    }
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1} ms"))
}

/// Runs the load and prints the report; exit status 1 when a threshold is exceeded.
pub(crate) async fn run(args: LoadArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::ensure!(args.participants > 0, "--participants must be at least 1");
    anyhow::ensure!(args.rooms > 0, "--rooms must be at least 1");
    anyhow::ensure!(
        args.duration > 0.0 && args.duration.is_finite(),
        "--duration must be a positive number of seconds"
    );
    anyhow::ensure!(
        args.ramp_up >= 0.0 && args.ramp_up.is_finite(),
        "--ramp-up must be zero or more seconds"
    );
    anyhow::ensure!(
        args.key_interval > 0.0 && args.key_interval.is_finite(),
        "--key-interval must be a positive number of seconds"
    );
    if args.shape == Shape::Meeting {
        anyhow::ensure!(
            args.comfort_fps > 0.0 && args.comfort_fps.is_finite(),
            "--comfort-fps must be a positive number of frames a second"
        );
        anyhow::ensure!(
            args.without_sfu || args.speakers <= args.loudest_audio as usize,
            "--speakers ({}) is more than --loudest-audio ({}): the speakers' audio is what a meeting owes everyone",
            args.speakers,
            args.loudest_audio
        );
    }
    let endpoint = args.server.endpoint().await?;
    let rss_before = args.server_pid.map(server_rss_kib).transpose()?;
    let args = Arc::new(args);
    let progress = Arc::new(Progress::default());
    let (go_tx, go_rx) = watch::channel::<Option<Schedule>>(None);
    let (ready_tx, mut ready_rx) = mpsc::channel::<bool>(args.participants);
    let n = args.participants;
    let started = Instant::now();

    let mut tasks = Vec::with_capacity(n);
    let mut per_room = vec![0usize; args.rooms];
    for i in 0..n {
        let room = i % args.rooms;
        let role = Role::of(&args, per_room[room]);
        per_room[room] += 1;
        let delay = Duration::from_secs_f64(args.ramp_up * i as f64 / n as f64);
        let (args, endpoint, progress, go_rx, ready_tx) = (
            args.clone(),
            endpoint.clone(),
            progress.clone(),
            go_rx.clone(),
            ready_tx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            participant(i, room, role, &args, &endpoint, &progress, go_rx, ready_tx).await
        }));
    }
    drop(ready_tx);

    // Wait until everyone has joined or failed, showing progress.
    let status = Status::new(!args.json);
    let mut settled = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    while settled < n {
        tokio::select! {
            r = ready_rx.recv() => match r {
                Some(_) => settled += 1,
                None => break,
            },
            _ = ticker.tick() => status.show(&format!(
                "joining  {}/{} joined, {} failed, {:.1} s",
                progress.joined.load(Ordering::Relaxed),
                n,
                progress.failed.load(Ordering::Relaxed),
                started.elapsed().as_secs_f64()
            )),
        }
    }
    let joined = progress.joined.load(Ordering::Relaxed);
    if joined == 0 {
        status.done();
        let first_error = futures_first_error(tasks).await;
        anyhow::bail!(
            "no participant could join: {}",
            first_error.unwrap_or_else(|| "unknown error".into())
        );
    }

    let cpu_before = args.server_pid.map(server_cpu_seconds).transpose()?;
    let send_for = Duration::from_secs_f64(args.duration);
    let now = tokio::time::Instant::now();
    let schedule = Schedule {
        settled: now + send_for / 2,
        send_until: now + send_for,
        stop_at: now + send_for + DRAIN,
    };
    let _ = go_tx.send(Some(schedule));
    let sending_started = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = tokio::time::sleep_until(schedule.stop_at) => break,
        }
        let t = sending_started.elapsed().as_secs_f64().min(args.duration);
        status.show(&format!(
            "sending  {} {:.1}/{:.1} s  sent {}  received {}",
            bar(t / args.duration),
            t,
            args.duration,
            progress.sent.load(Ordering::Relaxed),
            progress.received.load(Ordering::Relaxed)
        ));
    }
    let cpu_after = args.server_pid.map(server_cpu_seconds).transpose()?;
    // Everyone is still connected: what they cost the server now.
    let rss_after = args.server_pid.map(server_rss_kib).transpose()?;
    let mut outcomes = Vec::with_capacity(n);
    for t in tasks {
        outcomes.push(t.await.context("a participant task failed")?);
    }
    status.done();
    let cpu = cpu_before.zip(cpu_after).map(|(a, b)| b - a);
    let mut report = report(&args, outcomes, cpu);
    report.server_rss_kib_before = rss_before;
    report.server_rss_kib_after = rss_after;
    report.server_kib_per_connection = rss_before
        .zip(rss_after)
        .filter(|_| report.joined > 0)
        .map(|(b, a)| (a as f64 - b as f64) / report.joined as f64);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    let mut failed = false;
    if let Some(max) = args.max_loss
        && report.loss_percent > max
    {
        eprintln!(
            "convene load: loss {:.3} % exceeds --max-loss {max} %",
            report.loss_percent
        );
        failed = true;
    }
    if let Some(max) = args.max_p99_ms {
        match report.latency_ms.p99 {
            Some(p99) if p99 <= max => {}
            Some(p99) => {
                eprintln!("convene load: latency p99 {p99:.1} ms exceeds --max-p99-ms {max} ms");
                failed = true;
            }
            None => {
                eprintln!("convene load: no frames were received, so --max-p99-ms cannot be met");
                failed = true;
            }
        }
    }
    Ok(if failed {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    })
}

async fn futures_first_error(tasks: Vec<tokio::task::JoinHandle<Outcome>>) -> Option<String> {
    for t in tasks {
        t.abort();
        if let Ok(o) = t.await
            && o.error.is_some()
        {
            return o.error;
        }
    }
    None
}

fn bar(fraction: f64) -> String {
    let filled = (fraction.clamp(0.0, 1.0) * 20.0).round() as usize;
    format!("[{}{}]", "#".repeat(filled), ".".repeat(20 - filled))
}

/// The progress line on stderr: redrawn in place on a terminal, a line every few seconds otherwise.
struct Status {
    enabled: bool,
    tty: bool,
    last: std::sync::Mutex<Option<Instant>>,
}

impl Status {
    fn new(enabled: bool) -> Status {
        Status {
            enabled,
            tty: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            last: std::sync::Mutex::new(None),
        }
    }

    fn show(&self, line: &str) {
        if !self.enabled {
            return;
        }
        if self.tty {
            eprint!("\r\x1b[2K{line}");
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(2)) {
            eprintln!("{line}");
            *last = Some(Instant::now());
        }
    }

    fn done(&self) {
        if self.enabled && self.tty {
            eprint!("\r\x1b[2K");
        }
    }
}

fn meeting_id(args: &LoadArgs, room: usize) -> String {
    if args.rooms == 1 {
        args.meeting.clone()
    } else {
        format!("{}-{room}", args.meeting)
    }
}

#[allow(clippy::too_many_arguments)]
async fn participant(
    index: usize,
    room: usize,
    role: Role,
    args: &LoadArgs,
    endpoint: &convene_client::Endpoint,
    progress: &Progress,
    mut go: watch::Receiver<Option<Schedule>>,
    ready: mpsc::Sender<bool>,
) -> Outcome {
    let mut out = Outcome {
        room,
        ..Outcome::default()
    };
    let t0 = Instant::now();
    let joined = tokio::time::timeout(JOIN_TIMEOUT, join(index, room, role, args, endpoint)).await;
    let (mut client, cameras, mut camera) = match joined {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            out.error = Some(e);
            progress.failed.fetch_add(1, Ordering::Relaxed);
            let _ = ready.send(false).await;
            return out;
        }
        Err(_) => {
            out.error = Some(format!("did not join within {JOIN_TIMEOUT:?}"));
            progress.failed.fetch_add(1, Ordering::Relaxed);
            let _ = ready.send(false).await;
            return out;
        }
    };
    out.joined = true;
    out.transport = Some(client.transport());
    out.connect_us = Some(t0.elapsed().as_micros() as u64);
    let me = client.participant_id();
    let selective = client.sfu();
    let mut tiles = Tiles::new(args, selective);
    if selective {
        let _ = client.send(C::ReceiverSettings(v1::ReceiverSettings {
            video_n: args.last_n,
            audio_n: args.loudest_audio,
            max_receive_kbps: 0,
        }));
    }
    for (pid, track) in cameras {
        tiles.add(&mut client, pid, track);
    }
    progress.joined.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(true).await;

    let mut sequences = SequenceTracker::default();
    let mut speech_sequences = SequenceTracker::default();
    let mut senders = std::collections::HashSet::new();
    let mut audio_payload = vec![0xA5; args.audio_bytes.max(1)];
    audio_payload[0] = if role.speaker { SPEECH_MARK } else { 0 };
    let audio_payload = Bytes::from(audio_payload);
    let audio_level = if role.speaker {
        SPEECH_LEVEL
    } else {
        COMFORT_LEVEL
    };
    let key_interval = Duration::from_secs_f64(args.key_interval);
    let mut schedule: Option<Schedule> = None;
    let mut sending = false;
    let period = |fps: f64| Duration::from_secs_f64(1.0 / fps.max(0.01));
    let audio_fps = if role.speaker {
        f64::from(args.audio_fps)
    } else {
        args.comfort_fps
    };
    let mut audio_tick = tokio::time::interval(period(audio_fps));
    let mut video_tick = tokio::time::interval(period(f64::from(args.video_fps)));
    // A late tick is sent late, not in a burst: the rate stays what was asked.
    audio_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    video_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut audio = OutTrack::new(AUDIO_TRACK);
    let mut last_key = Instant::now();
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);

    loop {
        let (send_until, stop_at) = schedule.map_or((far, far), |s| (s.send_until, s.stop_at));
        tokio::select! {
            ev = client.next_event() => match ev {
                Some(ClientEvent::Media(m)) => {
                    let h = m.header();
                    if sequences.record(h.sender, h.track_id, h.sequence) {
                        let latency = unix_micros().saturating_sub(h.capture_timestamp_us);
                        out.latencies_us.push(latency);
                        out.received_bytes += m.as_bytes().len() as u64;
                        if h.track_id == AUDIO_TRACK {
                            out.received_audio += 1;
                            if m.payload().first() == Some(&SPEECH_MARK) {
                                out.received_speech += 1;
                                speech_sequences.record(h.sender, h.track_id, h.sequence);
                            } else {
                                out.received_comfort += 1;
                            }
                        } else {
                            out.received_video += 1;
                            // Who is shown settles once the speakers are
                            // known: count cameras over the second half.
                            if schedule.is_some_and(|s| tokio::time::Instant::now() >= s.settled) {
                                senders.insert(h.sender);
                            }
                            // One encoding alone is the top one.
                            let e = m.layer().map_or(2, |l| usize::from(l.encoding));
                            out.video_by_encoding[e.min(2)] += 1;
                        }
                        progress.received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(ClientEvent::Room(S::KeyFrameRequest(k))) if k.track_id == VIDEO_TRACK => {
                    camera.want_key(k.encoding_mask);
                }
                Some(ClientEvent::Room(S::EncodingDemand(d))) if d.track_id == VIDEO_TRACK => {
                    camera.active = d.active_mask;
                }
                Some(ClientEvent::Room(S::TrackPublished(p))) => {
                    if let Some(t) = p.track.filter(|t| t.kind == TrackKind::Video as i32)
                        && p.participant_id != me
                    {
                        tiles.add(&mut client, p.participant_id, t.track_id);
                    }
                }
                Some(ClientEvent::Room(S::ActiveSpeakers(a))) => {
                    let dominant = a.speakers.iter().find(|s| s.dominant).map(|s| s.participant_id);
                    tiles.follow(&mut client, dominant);
                }
                Some(ClientEvent::Closed) | None => {
                    out.ended_early = true;
                    out.error = Some(match client.close_reason() {
                        Some(r) => format!("the session ended early: {} {}", r.transport_reason(), r.text),
                        None => "the session ended early".into(),
                    });
                    break;
                }
                Some(_) => {}
            },
            changed = go.changed(), if schedule.is_none() => {
                if changed.is_err() {
                    break;
                }
                schedule = *go.borrow();
                if schedule.is_some() {
                    sending = true;
                    audio_tick.reset();
                    video_tick.reset();
                }
            }
            _ = audio_tick.tick(), if sending && role.audio => {
                let mut frame = audio.frame(true, unix_micros(), &audio_payload);
                if selective {
                    frame = frame.with_layer(Layer {
                        level: Some(audio_level),
                        ..Layer::default()
                    });
                }
                if client.send_media(frame).is_ok() {
                    out.sent_audio += 1;
                    if role.speaker {
                        out.sent_speech += 1;
                    } else {
                        out.sent_comfort += 1;
                    }
                    progress.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = video_tick.tick(), if sending && role.video => {
                if last_key.elapsed() >= key_interval {
                    camera.want_key(0);
                    last_key = Instant::now();
                }
                for frame in camera.picture() {
                    if frame.header().key {
                        out.key_frames_sent += 1;
                    }
                    if client.send_media(frame).is_ok() {
                        out.sent_video += 1;
                        progress.sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ = tokio::time::sleep_until(send_until), if sending => sending = false,
            _ = tokio::time::sleep_until(stop_at) => break,
        }
    }
    out.gaps = match args.shape {
        Shape::Broadcast => sequences.gaps(),
        // Selection leaves gaps in everything but the speakers' audio.
        Shape::Meeting => speech_sequences.gaps(),
    };
    out.cameras_received = senders.len();
    if !out.ended_early {
        let _ = tokio::time::timeout(Duration::from_secs(5), client.close("load test done")).await;
    }
    out
}

/// A simulated camera: a picture a tick, as one frame or as a LAYERED frame
/// per encoding in demand (§6.6), key frames where asked.
struct Camera {
    track: OutTrack,
    /// Its simulcast encodings (one without selective forwarding), smallest first.
    rungs: Vec<convene_protocol::simulcast::Rung>,
    /// Payload per encoding, smallest first.
    payloads: Vec<Bytes>,
    /// The encodings someone receives (EncodingDemand), a bit each.
    active: u32,
    /// Encodings whose next picture is a key frame.
    key: u32,
    /// The picture number every encoding of a picture shares.
    picture: u32,
    layered: bool,
}

impl Camera {
    fn new(args: &LoadArgs, selective: bool) -> Camera {
        let rungs = convene_protocol::simulcast::ladder(CAMERA.0, CAMERA.1, CAMERA.2, selective);
        let top = rungs.last().map_or(1, |r| r.kbps.max(1));
        let payloads = rungs
            .iter()
            .map(|r| {
                let n = (args.video_bytes as u64 * u64::from(r.kbps) / u64::from(top)).max(1);
                Bytes::from(vec![0x5A; n as usize])
            })
            .collect::<Vec<_>>();
        let all = (1u32 << payloads.len()) - 1;
        Camera {
            track: OutTrack::new(VIDEO_TRACK),
            rungs,
            payloads,
            active: all,
            key: all,
            picture: 0,
            layered: selective,
        }
    }

    /// A key frame is wanted of the encodings in `mask` (0: all).
    fn want_key(&mut self, mask: u32) {
        self.key |= if mask == 0 { u32::MAX } else { mask };
    }

    /// The frames of the next picture.
    fn picture(&mut self) -> Vec<MediaFrame> {
        let now = unix_micros();
        let mut frames = Vec::with_capacity(self.payloads.len());
        for (e, payload) in self.payloads.iter().enumerate() {
            let bit = 1u32 << e;
            if self.layered && self.active & bit == 0 {
                continue;
            }
            let key = self.key & bit != 0;
            self.key &= !bit;
            let frame = self.track.frame_at(self.picture, key, now, payload);
            frames.push(if self.layered {
                frame.with_layer(Layer {
                    encoding: e as u8,
                    ..Layer::default()
                })
            } else {
                frame
            });
        }
        self.picture = self.picture.wrapping_add(1);
        frames
    }
}

/// What a meeting member asks of each camera: a small tile, or the
/// dominant speaker's large one.
struct Tiles {
    enabled: bool,
    tile_height: u32,
    /// Camera tracks by publisher.
    cameras: std::collections::HashMap<u32, u32>,
    dominant: Option<u32>,
}

impl Tiles {
    fn new(args: &LoadArgs, selective: bool) -> Tiles {
        Tiles {
            enabled: selective,
            tile_height: args.tile_height,
            cameras: std::collections::HashMap::new(),
            dominant: None,
        }
    }

    fn ask(&self, client: &mut Client, pid: u32, large: bool) {
        let Some(&track) = self.cameras.get(&pid).filter(|_| self.enabled) else {
            return;
        };
        let _ = client.send(C::UpdateSubscription(v1::UpdateSubscription {
            participant_id: pid,
            track_id: track,
            preferences: Some(v1::SubscriptionPreferences {
                max_height: if large { 0 } else { self.tile_height },
                ..Default::default()
            }),
        }));
    }

    /// A camera appeared: shown small, unless it is the speaker's.
    fn add(&mut self, client: &mut Client, pid: u32, track: u32) {
        self.cameras.insert(pid, track);
        self.ask(client, pid, self.dominant == Some(pid));
    }

    /// The dominant speaker is `now`: their tile grows, the last one's shrinks.
    fn follow(&mut self, client: &mut Client, now: Option<u32>) {
        if now == self.dominant {
            return;
        }
        if let Some(old) = self.dominant {
            self.ask(client, old, false);
        }
        self.dominant = now;
        if let Some(new) = now {
            self.ask(client, new, true);
        }
    }
}

/// Connects, joins, and publishes what `role` sends, waiting for each
/// answer; returns the client, the cameras already in the room and the
/// camera whose encodings were announced.
async fn join(
    index: usize,
    room: usize,
    role: Role,
    args: &LoadArgs,
    endpoint: &convene_client::Endpoint,
) -> Result<(Client, Vec<(u32, u32)>, Camera), String> {
    let config = ClientSessionConfig {
        client_kind: ClientKind::Load,
        client_version: concat!("convene-load/", env!("CARGO_PKG_VERSION")).into(),
        auth_token: args.server.token.clone().unwrap_or_default(),
        features: if args.selective() {
            vec![convene_protocol::FEATURE_SFU.to_string()]
        } else {
            Vec::new()
        },
        ..ClientSessionConfig::default()
    };
    let mut c = Client::connect(endpoint, args.server.transport, config)
        .await
        .map_err(|e| e.to_string())?;
    let mut cameras = Vec::new();
    until(&mut c, &mut cameras, |e| {
        matches!(e, ClientEvent::Welcome(_))
    })
    .await?;
    if args.selective() && !c.sfu() {
        return Err(
            "the server does not offer selective forwarding (sfu.1); run the meeting --without-sfu"
                .into(),
        );
    }
    c.join(&meeting_id(args, room), &format!("load-{index}"), true)
        .map_err(|e| e.to_string())?;
    if let ClientEvent::Joined(j) = until(&mut c, &mut cameras, |e| {
        matches!(e, ClientEvent::Joined(_))
    })
    .await?
    {
        cameras.extend(j.participants.iter().flat_map(|p| {
            p.tracks
                .iter()
                .filter(|t| t.kind == TrackKind::Video as i32)
                .map(|t| (p.participant_id, t.track_id))
        }));
        cameras.retain(|(pid, _)| *pid != c.participant_id());
    }
    let me = c.participant_id();
    let selective = c.sfu();
    let camera = Camera::new(args, selective);
    let mut tracks = Vec::new();
    if role.audio {
        tracks.push(TrackInfo {
            track_id: AUDIO_TRACK,
            kind: TrackKind::Audio as i32,
            codec: "opus".into(),
            audio_levels: selective,
            ..Default::default()
        });
    }
    if role.video {
        tracks.push(TrackInfo {
            track_id: VIDEO_TRACK,
            kind: TrackKind::Video as i32,
            codec: "avc1.42E01F".into(),
            width: CAMERA.0,
            height: CAMERA.1,
            target_bitrate_kbps: CAMERA.2,
            frame_rate: args.video_fps,
            encodings: convene_protocol::simulcast::encodings(&camera.rungs, args.video_fps, 1),
            ..Default::default()
        });
    }
    for t in tracks {
        let id = t.track_id;
        c.publish(t).map_err(|e| e.to_string())?;
        // Our own TrackPublished says the server will route the track.
        until(&mut c, &mut cameras, |e| {
            matches!(e, ClientEvent::Room(S::TrackPublished(p))
                if p.participant_id == me && p.track.as_ref().is_some_and(|t| t.track_id == id))
        })
        .await?;
    }
    Ok((c, cameras, camera))
}

/// Waits for an event and returns it; a refusal or the end of the session
/// is an error. Others' cameras announced meanwhile are noted in `cameras`.
async fn until(
    c: &mut Client,
    cameras: &mut Vec<(u32, u32)>,
    pred: impl Fn(&ClientEvent) -> bool,
) -> Result<ClientEvent, String> {
    loop {
        match c.next_event().await {
            Some(e) if pred(&e) => return Ok(e),
            Some(ClientEvent::Room(S::TrackPublished(p))) => {
                if let Some(t) = p.track.filter(|t| t.kind == TrackKind::Video as i32)
                    && p.participant_id != c.participant_id()
                {
                    cameras.push((p.participant_id, t.track_id));
                }
            }
            Some(ClientEvent::JoinRefused(e)) | Some(ClientEvent::Error(e)) => {
                return Err(format!("the server refused: {}", crate::args::describe(&e)));
            }
            Some(ClientEvent::Waiting(_)) => {
                return Err(
                    "held in the waiting room; load participants need a room without one".into(),
                );
            }
            Some(_) => {}
            None => {
                return Err(match c.close_reason() {
                    Some(r) => format!(
                        "the server closed the session: {} {}",
                        r.transport_reason(),
                        r.text
                    ),
                    None => "the server closed the session".into(),
                });
            }
        }
    }
}

/// A process's resident memory in KiB, from `/proc/PID/status`.
fn server_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| {
        format!("cannot read {path}: is --server-pid {pid} a running process on this machine?")
    })?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("no VmRSS line in {path}"))
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
fn server_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| {
        format!("cannot read {path}: is --server-pid {pid} a running process on this machine?")
    })?;
    // The command name may contain spaces; fields after it are space-separated.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("unexpected /proc stat format")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, utime field 14, stime field 15.
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i - 3)
            .context("short /proc stat")?
            .parse::<f64>()?)
    };
    // Linux reports clock ticks of 1/100 s on every common configuration.
    Ok((ticks(14)? + ticks(15)?) / 100.0)
}

fn report(args: &LoadArgs, outcomes: Vec<Outcome>, cpu: Option<f64>) -> Report {
    let mut members = vec![0u64; args.rooms];
    let mut sent_in_room = vec![0u64; args.rooms];
    let mut audio_in_room = vec![0u64; args.rooms];
    let mut speech_in_room = vec![0u64; args.rooms];
    let mut comfort_in_room = vec![0u64; args.rooms];
    for o in outcomes.iter().filter(|o| o.joined) {
        members[o.room] += 1;
        sent_in_room[o.room] += o.sent_audio + o.sent_video;
        audio_in_room[o.room] += o.sent_audio;
        speech_in_room[o.room] += o.sent_speech;
        comfort_in_room[o.room] += o.sent_comfort;
    }
    // What each room's frames are owed: one to every other member.
    let owed = |per_room: &[u64]| -> u64 {
        (0..args.rooms)
            .map(|r| per_room[r] * members[r].saturating_sub(1))
            .sum()
    };
    let sum = |f: fn(&Outcome) -> u64| -> u64 { outcomes.iter().map(f).sum() };
    let received_audio = sum(|o| o.received_audio);
    let received_video = sum(|o| o.received_video);
    let received = received_audio + received_video;
    let received_speech = sum(|o| o.received_speech);
    // A broadcast owes every frame to every other member; a meeting owes
    // only the speakers' audio (the rest is the server's to select).
    let (expected, expected_audio, delivered, delivered_audio) = match args.shape {
        Shape::Broadcast => (
            owed(&sent_in_room),
            owed(&audio_in_room),
            received,
            received_audio,
        ),
        Shape::Meeting => {
            let speech = owed(&speech_in_room);
            (speech, speech, received_speech, received_speech)
        }
    };
    let percent = |lost: u64, of: u64| {
        if of == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / of as f64
        }
    };
    let mut transports: Vec<(String, usize)> = Vec::new();
    for o in &outcomes {
        if let Some(k) = o.transport {
            match transports.iter_mut().find(|(n, _)| *n == k.to_string()) {
                Some((_, c)) => *c += 1,
                None => transports.push((k.to_string(), 1)),
            }
        }
    }
    let bytes = sum(|o| o.received_bytes);
    let lost = expected.saturating_sub(delivered);
    let mut errors: Vec<String> = outcomes.iter().filter_map(|o| o.error.clone()).collect();
    errors.sort();
    errors.dedup();
    let latencies: Vec<u64> = outcomes
        .iter()
        .flat_map(|o| o.latencies_us.iter().copied())
        .collect();
    let joined: Vec<&Outcome> = outcomes.iter().filter(|o| o.joined).collect();
    let meeting = (args.shape == Shape::Meeting).then(|| {
        let mut by_encoding = [0u64; 3];
        for o in &outcomes {
            for (e, n) in o.video_by_encoding.iter().enumerate() {
                by_encoding[e] += n;
            }
        }
        let sent_speech = sum(|o| o.sent_speech);
        MeetingReport {
            speakers_per_room: args.speakers,
            cameras_per_room: args.cameras,
            last_n: args.last_n,
            loudest_audio: args.loudest_audio,
            sent_speech,
            received_speech,
            speech_loss_percent: percent(lost, expected),
            sent_comfort: sum(|o| o.sent_comfort),
            comfort_owed: owed(&comfort_in_room),
            received_comfort: sum(|o| o.received_comfort),
            video_by_encoding: by_encoding,
            cameras_received_min: joined.iter().map(|o| o.cameras_received).min().unwrap_or(0),
            cameras_received_max: joined.iter().map(|o| o.cameras_received).max().unwrap_or(0),
            receive_kbps: Spread::of(
                joined
                    .iter()
                    .map(|o| (o.received_bytes as f64 * 8.0 / 1e3 / args.duration) as u64)
                    .collect(),
            ),
        }
    });
    Report {
        shape: args.shape,
        selective_forwarding: args.selective(),
        participants: args.participants,
        rooms: args.rooms,
        publishers_per_room: match args.shape {
            Shape::Broadcast => args.publishers,
            Shape::Meeting => args.cameras,
        },
        transports,
        duration_s: args.duration,
        joined: joined.len(),
        failed: outcomes.iter().filter(|o| !o.joined).count(),
        ended_early: outcomes.iter().filter(|o| o.ended_early).count(),
        connect_ms: Percentiles::of_us(outcomes.iter().filter_map(|o| o.connect_us).collect()),
        sent_audio: sum(|o| o.sent_audio),
        sent_video: sum(|o| o.sent_video),
        key_frames_sent: sum(|o| o.key_frames_sent),
        expected,
        received,
        received_audio,
        received_video,
        lost,
        loss_percent: percent(lost, expected),
        audio_loss_percent: percent(
            expected_audio.saturating_sub(delivered_audio),
            expected_audio,
        ),
        sequence_gaps: sum(|o| o.gaps),
        latency_ms: Percentiles::of_us(latencies),
        frames_per_second: received as f64 / args.duration,
        megabits_per_second: bytes as f64 * 8.0 / 1e6 / args.duration,
        server_cpu_s: cpu,
        server_cpu_us_per_frame: cpu
            .filter(|_| received > 0)
            .map(|c| c * 1e6 / received as f64),
        server_rss_kib_before: None,
        server_rss_kib_after: None,
        server_kib_per_connection: None,
        meeting,
        errors,
    }
}

fn print_table(r: &Report) {
    let transports = r
        .transports
        .iter()
        .map(|(k, n)| format!("{n} over {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "convene load: {} participants in {} room(s), {} publisher(s) per room, {:.1} s of sending",
        r.participants, r.rooms, r.publishers_per_room, r.duration_s
    );
    println!("  transport    {transports}");
    println!(
        "  joined       {} ok, {} failed, {} ended early",
        r.joined, r.failed, r.ended_early
    );
    println!(
        "  connect      p50 {}  p95 {}  p99 {}  max {}",
        fmt_ms(r.connect_ms.p50),
        fmt_ms(r.connect_ms.p95),
        fmt_ms(r.connect_ms.p99),
        fmt_ms(r.connect_ms.max)
    );
    println!(
        "  sent         {} audio + {} video frames ({} key frames)",
        r.sent_audio, r.sent_video, r.key_frames_sent
    );
    match &r.meeting {
        None => println!(
            "  delivered    {} of {} expected ({} audio, {} video)  loss {:.3} %  sequence gaps {}",
            r.received,
            r.expected,
            r.received_audio,
            r.received_video,
            r.loss_percent,
            r.sequence_gaps
        ),
        Some(m) => {
            println!(
                "  meeting      {} speakers, {} cameras a room; last-{} video, loudest {} audio; selective forwarding {}",
                m.speakers_per_room,
                m.cameras_per_room,
                m.last_n,
                m.loudest_audio,
                if r.selective_forwarding { "on" } else { "off" }
            );
            println!(
                "  speech       {} of {} owed  loss {:.3} %  sequence gaps {}",
                m.received_speech, r.expected, m.speech_loss_percent, r.sequence_gaps
            );
            println!(
                "  comfort      {} of {} frames a member would get without selection",
                m.received_comfort, m.comfort_owed
            );
            println!(
                "  video        {} frames by encoding (small, medium, top) {:?}; cameras per member {}-{} (second half)",
                r.received_video,
                m.video_by_encoding,
                m.cameras_received_min,
                m.cameras_received_max
            );
            let kbps = |v: Option<f64>| v.map_or("-".into(), |x| format!("{x:.0}"));
            println!(
                "  per member   p50 {}  p99 {}  max {} kbit/s received",
                kbps(m.receive_kbps.p50),
                kbps(m.receive_kbps.p99),
                kbps(m.receive_kbps.max)
            );
        }
    }
    println!(
        "  latency      p50 {}  p95 {}  p99 {}  max {}",
        fmt_ms(r.latency_ms.p50),
        fmt_ms(r.latency_ms.p95),
        fmt_ms(r.latency_ms.p99),
        fmt_ms(r.latency_ms.max)
    );
    println!(
        "  throughput   {:.0} frames/s  {:.2} Mbit/s",
        r.frames_per_second, r.megabits_per_second
    );
    if let (Some(cpu), per) = (r.server_cpu_s, r.server_cpu_us_per_frame) {
        println!(
            "  server CPU   {cpu:.2} s{}",
            per.map_or(String::new(), |p| format!(
                "  ({p:.2} µs per delivered frame)"
            ))
        );
    }
    if let (Some(before), Some(after)) = (r.server_rss_kib_before, r.server_rss_kib_after) {
        println!(
            "  server RSS   {:.1} MiB before, {:.1} MiB connected{}",
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            r.server_kib_per_connection
                .map_or(String::new(), |k| format!("  ({k:.0} KiB per connection)"))
        );
    }
    for e in &r.errors {
        println!("  error        {e}");
    }
}
