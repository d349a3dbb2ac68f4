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
use convene_protocol::v1::{ClientKind, TrackInfo, TrackKind, server_message::Msg as S};
use convene_protocol::{ClientEvent, ClientSessionConfig};
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
}

/// When to send and when to stop, shared once everyone is in.
#[derive(Debug, Clone, Copy)]
struct Schedule {
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
}

/// The report, as printed and as JSON.
#[derive(Debug, Serialize)]
struct Report {
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
    errors: Vec<String>,
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
        let publisher = per_room[room] < args.publishers;
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
            participant(
                i, room, publisher, &args, &endpoint, &progress, go_rx, ready_tx,
            )
            .await
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
    publisher: bool,
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
    let joined =
        tokio::time::timeout(JOIN_TIMEOUT, join(index, room, publisher, args, endpoint)).await;
    let mut client = match joined {
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
    progress.joined.fetch_add(1, Ordering::Relaxed);
    let _ = ready.send(true).await;

    let mut sequences = SequenceTracker::default();
    let audio_payload = Bytes::from(vec![0xA5; args.audio_bytes]);
    let video_payload = Bytes::from(vec![0x5A; args.video_bytes]);
    let key_interval = Duration::from_secs_f64(args.key_interval);
    let mut schedule: Option<Schedule> = None;
    let mut sending = false;
    let period = |fps: u32| Duration::from_secs_f64(1.0 / fps.max(1) as f64);
    let mut audio_tick = tokio::time::interval(period(args.audio_fps));
    let mut video_tick = tokio::time::interval(period(args.video_fps));
    // A late tick is sent late, not in a burst: the rate stays what was asked.
    audio_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    video_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut audio, mut video) = (OutTrack::new(AUDIO_TRACK), OutTrack::new(VIDEO_TRACK));
    let mut key_wanted = true;
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
                        } else {
                            out.received_video += 1;
                        }
                        progress.received.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Some(ClientEvent::Room(S::KeyFrameRequest(k))) if k.track_id == VIDEO_TRACK => {
                    key_wanted = true;
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
                    sending = publisher;
                    audio_tick.reset();
                    video_tick.reset();
                }
            }
            _ = audio_tick.tick(), if sending && args.audio_fps > 0 => {
                if client.send_media(audio.frame(true, unix_micros(), &audio_payload)).is_ok() {
                    out.sent_audio += 1;
                    progress.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = video_tick.tick(), if sending && args.video_fps > 0 => {
                let key = key_wanted || last_key.elapsed() >= key_interval;
                if key {
                    key_wanted = false;
                    last_key = Instant::now();
                    out.key_frames_sent += 1;
                }
                if client.send_media(video.frame(key, unix_micros(), &video_payload)).is_ok() {
                    out.sent_video += 1;
                    progress.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = tokio::time::sleep_until(send_until), if sending => sending = false,
            _ = tokio::time::sleep_until(stop_at) => break,
        }
    }
    out.gaps = sequences.gaps();
    if !out.ended_early {
        let _ = tokio::time::timeout(Duration::from_secs(5), client.close("load test done")).await;
    }
    out
}

/// Connects, joins, and (for publishers) publishes, waiting for each answer.
async fn join(
    index: usize,
    room: usize,
    publisher: bool,
    args: &LoadArgs,
    endpoint: &convene_client::Endpoint,
) -> Result<Client, String> {
    let config = ClientSessionConfig {
        client_kind: ClientKind::Load,
        client_version: concat!("convene-load/", env!("CARGO_PKG_VERSION")).into(),
        auth_token: args.server.token.clone().unwrap_or_default(),
        ..ClientSessionConfig::default()
    };
    let mut c = Client::connect(endpoint, args.server.transport, config)
        .await
        .map_err(|e| e.to_string())?;
    until(&mut c, |e| matches!(e, ClientEvent::Welcome(_))).await?;
    c.join(&meeting_id(args, room), &format!("load-{index}"), true)
        .map_err(|e| e.to_string())?;
    until(&mut c, |e| matches!(e, ClientEvent::Joined(_))).await?;
    if publisher {
        let me = c.participant_id();
        let mut tracks = Vec::new();
        if args.audio_fps > 0 {
            tracks.push(TrackInfo {
                track_id: AUDIO_TRACK,
                kind: TrackKind::Audio as i32,
                codec: "opus".into(),
                ..Default::default()
            });
        }
        if args.video_fps > 0 {
            tracks.push(TrackInfo {
                track_id: VIDEO_TRACK,
                kind: TrackKind::Video as i32,
                codec: "avc1.42E01F".into(),
                frame_rate: args.video_fps,
                ..Default::default()
            });
        }
        for t in tracks {
            let id = t.track_id;
            c.publish(t).map_err(|e| e.to_string())?;
            // Our own TrackPublished says the server will route the track.
            until(&mut c, |e| {
                matches!(e, ClientEvent::Room(S::TrackPublished(p))
                    if p.participant_id == me && p.track.as_ref().is_some_and(|t| t.track_id == id))
            })
            .await?;
        }
    }
    Ok(c)
}

/// Waits for an event; a refusal or the end of the session is an error.
async fn until(c: &mut Client, pred: impl Fn(&ClientEvent) -> bool) -> Result<(), String> {
    loop {
        match c.next_event().await {
            Some(e) if pred(&e) => return Ok(()),
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
    for o in outcomes.iter().filter(|o| o.joined) {
        members[o.room] += 1;
        sent_in_room[o.room] += o.sent_audio + o.sent_video;
        audio_in_room[o.room] += o.sent_audio;
    }
    let expected_audio: u64 = (0..args.rooms)
        .map(|r| audio_in_room[r] * members[r].saturating_sub(1))
        .sum();
    // Every frame sent is owed to every other member of its room.
    let expected: u64 = (0..args.rooms)
        .map(|r| sent_in_room[r] * members[r].saturating_sub(1))
        .sum();
    let mut transports: Vec<(String, usize)> = Vec::new();
    for o in &outcomes {
        if let Some(k) = o.transport {
            match transports.iter_mut().find(|(n, _)| *n == k.to_string()) {
                Some((_, c)) => *c += 1,
                None => transports.push((k.to_string(), 1)),
            }
        }
    }
    let received_audio: u64 = outcomes.iter().map(|o| o.received_audio).sum();
    let received_video: u64 = outcomes.iter().map(|o| o.received_video).sum();
    let received = received_audio + received_video;
    let bytes: u64 = outcomes.iter().map(|o| o.received_bytes).sum();
    let lost = expected.saturating_sub(received);
    let mut errors: Vec<String> = outcomes.iter().filter_map(|o| o.error.clone()).collect();
    errors.sort();
    errors.dedup();
    let latencies: Vec<u64> = outcomes
        .iter()
        .flat_map(|o| o.latencies_us.iter().copied())
        .collect();
    Report {
        participants: args.participants,
        rooms: args.rooms,
        publishers_per_room: args.publishers,
        transports,
        duration_s: args.duration,
        joined: outcomes.iter().filter(|o| o.joined).count(),
        failed: outcomes.iter().filter(|o| !o.joined).count(),
        ended_early: outcomes.iter().filter(|o| o.ended_early).count(),
        connect_ms: Percentiles::of_us(outcomes.iter().filter_map(|o| o.connect_us).collect()),
        sent_audio: outcomes.iter().map(|o| o.sent_audio).sum(),
        sent_video: outcomes.iter().map(|o| o.sent_video).sum(),
        key_frames_sent: outcomes.iter().map(|o| o.key_frames_sent).sum(),
        expected,
        received,
        received_audio,
        received_video,
        lost,
        loss_percent: if expected == 0 {
            0.0
        } else {
            lost as f64 * 100.0 / expected as f64
        },
        audio_loss_percent: if expected_audio == 0 {
            0.0
        } else {
            expected_audio.saturating_sub(received_audio) as f64 * 100.0 / expected_audio as f64
        },
        sequence_gaps: outcomes.iter().map(|o| o.gaps).sum(),
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
    println!(
        "  delivered    {} of {} expected ({} audio, {} video)  loss {:.3} %  sequence gaps {}",
        r.received, r.expected, r.received_audio, r.received_video, r.loss_percent, r.sequence_gaps
    );
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
