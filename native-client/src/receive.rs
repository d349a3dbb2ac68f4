//! `convene receive`: join a meeting, subscribe to everyone, decode their
//! video, and say per participant what arrives: frame rate, resolution,
//! bitrate, loss and latency. With `--dump-dir` it writes every Nth decoded
//! picture as PNG (and with `--y4m` into one Y4M file per track).
//!
//! Latency has two readings: from the media header's capture time (when the
//! frame arrived) and, for pictures from `convene stream --source
//! test-pattern`, from the time drawn in the picture (when it was decoded,
//! so glass to glass).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use convene_client::Client;
use convene_protocol::v1::{
    self, ClientKind, TrackInfo, TrackKind, client_message::Msg as C, server_message::Msg as S,
};
use convene_protocol::{ClientEvent, ClientSessionConfig};
use tokio::sync::mpsc;

use crate::args::ServerArgs;
use crate::audio;
use crate::e2ee::E2ee;
use crate::frame::I420;
use crate::h264::H264Decoder;
use crate::media::{sleep_until, unix_micros};
use crate::pattern;
use crate::stats::percentile;
use crate::stream::StatusLine;

/// How long connecting and joining may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Late frames of a left encoding taken as such before a switch whose key
/// frame was lost is assumed.
const STALE_RUN: u32 = 3;

/// Encoded frames waiting for the decoder before newer ones are dropped.
const DECODE_QUEUE: usize = 64;

/// `convene receive` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct ReceiveArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The meeting to watch.
    #[arg(long)]
    meeting_id: String,
    /// The name others see.
    #[arg(long, default_value = "convene-receive")]
    user_id: String,
    /// Write decoded pictures here (created if missing), and the sound of
    /// each audio track as a WAV file (`pPARTICIPANT-tTRACK.wav`, silence
    /// where the sender sent none).
    #[arg(long)]
    dump_dir: Option<PathBuf>,
    /// Write every Nth decoded picture of each track.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    dump_every: u64,
    /// Also append the dumped pictures to one Y4M file per track.
    #[arg(long, requires = "dump_dir")]
    y4m: bool,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long)]
    duration: Option<f64>,
    /// Stop once this many pictures have been decoded (all tracks together).
    #[arg(long)]
    frames: Option<u64>,
    /// Print a JSON report on stdout when done.
    #[arg(long)]
    json: bool,
    /// The meeting is end-to-end encrypted (`convene stream --e2ee`, the
    /// browser's E2EE toggle): take part in the key exchange and decrypt.
    /// Frames that do not decrypt are counted and never decoded.
    #[arg(long)]
    e2ee: bool,
    /// Ask for each camera and screen at most this tall (pixels): from a
    /// simulcast publisher the server then sends the smallest encoding at
    /// least this size (PROTOCOL.md §6.6.3).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4320))]
    max_height: Option<u32>,
    /// Ask for each camera and screen at most this many pictures a second:
    /// from a publisher that sends temporal layers the server drops the
    /// layers above it (PROTOCOL.md §6.6.3).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=120))]
    max_fps: Option<u32>,
    /// Receive the cameras of only the N most recent speakers (last-N,
    /// PROTOCOL.md §6.6.4); screens always come.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=32))]
    last_n: Option<u32>,
    /// Receive the audio of only the N loudest speakers.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16))]
    loudest_audio: Option<u32>,
}

impl ReceiveArgs {
    /// True when a flag needs the selective-forwarding extension.
    fn selective(&self) -> bool {
        self.max_height.is_some()
            || self.max_fps.is_some()
            || self.last_n.is_some()
            || self.loudest_audio.is_some()
    }
}

/// What was seen of one track.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct TrackReport {
    participant_id: u32,
    display_name: String,
    track_id: u32,
    kind: &'static str,
    codec: String,
    frames_received: u64,
    bytes_received: u64,
    /// Frames missing by sequence number.
    lost: u64,
    key_frames_received: u64,
    frames_decoded: u64,
    decode_errors: u64,
    /// Frames the decoder could not take in time.
    dropped: u64,
    width: usize,
    height: usize,
    /// Frames received of each simulcast encoding, smallest first (§6.6).
    frames_by_encoding: [u64; 3],
    /// Times the server moved us to another encoding.
    encoding_switches: u64,
    /// Delta frames of an encoding left behind that arrived after the
    /// switch, dropped undecoded.
    stale_encoding: u64,
    /// Such frames in a row.
    #[serde(skip)]
    stale_run: u32,
    /// The encoding of the last frame received, if the track has several.
    encoding: Option<u8>,
    /// Decoded pictures whose drawn stamp could be read.
    stamps_read: u64,
    first_counter: Option<u32>,
    last_counter: Option<u32>,
    /// Times a stamp's counter was not above the one before.
    counter_regressions: u64,
    /// ms from joining to the first decoded picture.
    first_picture_ms: Option<u64>,
    /// Capture (drawn in the picture) to decoded, ms.
    glass_latency_ms_p50: Option<u64>,
    glass_latency_ms_p95: Option<u64>,
    /// Capture (media header) to arrival, ms.
    arrival_latency_ms_p50: Option<f64>,
    arrival_latency_ms_p95: Option<f64>,
    /// Mean level of audio, dBFS.
    audio_level_dbfs: Option<f64>,
    /// The pitch of the sound heard (from its zero crossings), Hz.
    audio_hz: Option<f64>,
    pictures_written: u64,
    #[serde(skip)]
    glass_ms: Vec<u64>,
    #[serde(skip)]
    arrival_us: Vec<u64>,
    #[serde(skip)]
    level_sum: f64,
    #[serde(skip)]
    highest_seq: Option<u32>,
    #[serde(skip)]
    window_frames: u64,
    #[serde(skip)]
    window_bytes: u64,
}

/// The JSON report.
#[derive(Debug, serde::Serialize)]
struct Report {
    transport: String,
    participant_id: u32,
    seconds: f64,
    tracks: Vec<TrackReport>,
    /// With --e2ee: the safety code at the end and what the keyring did.
    e2ee: Option<crate::e2ee::E2eeSummary>,
    /// Whose hands are up at the end, by name (PROTOCOL.md §5.9).
    hands_raised: Vec<String>,
    /// The reactions seen, oldest first (at most [`REACTIONS_KEPT`]).
    reactions: Vec<ReactionReport>,
    /// Who recorded while we were in the room, by name (PROTOCOL.md §5.10).
    recording: Vec<String>,
}

/// One reaction as the report shows it.
#[derive(Debug, serde::Serialize)]
struct ReactionReport {
    /// Who reacted.
    from: String,
    /// What: `thumbs_up`, `clap`, … or the number of a kind not known here.
    kind: String,
}

/// The status line for a recorder in the room (PROTOCOL.md §5.10).
fn recording_line(p: &convene_protocol::v1::Participant) -> String {
    format!(
        "participant {} ({}) is recording",
        p.participant_id, p.display_name
    )
}

/// Reactions kept for the report; older ones are forgotten.
const REACTIONS_KEPT: usize = 1000;

/// A reaction kind in words.
fn reaction_name(kind: i32) -> String {
    match v1::ReactionKind::try_from(kind) {
        Ok(k) if k != v1::ReactionKind::Unspecified => k
            .as_str_name()
            .trim_start_matches("REACTION_KIND_")
            .to_ascii_lowercase(),
        _ => kind.to_string(),
    }
}

type Key = (u32, u32);
type Shared = Arc<Mutex<HashMap<Key, TrackReport>>>;

/// Work for the decoder thread.
enum Job {
    Frame {
        key: Key,
        data: bytes::Bytes,
        is_key: bool,
        gap: bool,
    },
    Forget(Key),
}

pub(crate) async fn run(args: ReceiveArgs) -> anyhow::Result<std::process::ExitCode> {
    let endpoint = args.server.endpoint().await?;
    if let Some(dir) = &args.dump_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create --dump-dir {}", dir.display()))?;
    }
    let config = ClientSessionConfig {
        client_kind: ClientKind::Native,
        client_version: concat!("convene-receive/", env!("CARGO_PKG_VERSION")).into(),
        auth_token: args.server.token.clone().unwrap_or_default(),
        // Raised hands and reactions are shown whatever else is asked for.
        features: if args.selective() {
            vec![
                convene_protocol::FEATURE_SFU.to_string(),
                convene_protocol::FEATURE_REACTIONS.to_string(),
            ]
        } else {
            vec![convene_protocol::FEATURE_REACTIONS.to_string()]
        },
        ..ClientSessionConfig::default()
    };
    let (mut client, joined) = args
        .server
        .join(
            &endpoint,
            config,
            &args.meeting_id,
            &args.user_id,
            "us",
            JOIN_TIMEOUT,
        )
        .await?;
    let started = Instant::now();
    if args.selective() {
        if !client.sfu() {
            anyhow::bail!(
                "the server does not offer selective forwarding (sfu.1), which --max-height, --max-fps, --last-n and --loudest-audio need"
            );
        }
        if args.last_n.is_some() || args.loudest_audio.is_some() {
            client.send(C::ReceiverSettings(v1::ReceiverSettings {
                video_n: args.last_n.unwrap_or(0),
                audio_n: args.loudest_audio.unwrap_or(0),
                max_receive_kbps: 0,
            }))?;
        }
    }
    // With --max-height each picture track is subscribed again with it (a
    // second Subscribe only changes the preferences).
    let prefer = |client: &mut Client, pid: u32, t: &TrackInfo| {
        if (args.max_height.is_some() || args.max_fps.is_some())
            && t.kind != TrackKind::Audio as i32
        {
            let _ = client.send(C::Subscribe(v1::Subscribe {
                participant_id: pid,
                track_id: t.track_id,
                preferences: Some(v1::SubscriptionPreferences {
                    max_height: args.max_height.unwrap_or(0),
                    max_frame_rate: args.max_fps.unwrap_or(0),
                    ..Default::default()
                }),
            }));
        }
    };
    let me_id = client.participant_id();
    for p in joined
        .participants
        .iter()
        .filter(|p| p.participant_id != me_id)
    {
        for t in &p.tracks {
            prefer(&mut client, p.participant_id, t);
        }
    }
    let me = client.participant_id();
    let status = StatusLine::new();
    status.note(&format!(
        "watching `{}` as participant {me} over {:?}",
        args.meeting_id,
        client.transport()
    ));

    if joined.e2ee_required && !args.e2ee {
        status.note(&format!(
            "meeting `{}` requires end-to-end encryption: decrypting as with --e2ee",
            args.meeting_id
        ));
    }
    let mut e2ee = if args.e2ee || joined.e2ee_required {
        let present: Vec<u32> = joined
            .participants
            .iter()
            .map(|p| p.participant_id)
            .collect();
        Some(E2ee::start(
            &mut client,
            &args.meeting_id,
            &present,
            &status,
        )?)
    } else {
        None
    };

    let shared: Shared = Arc::new(Mutex::new(HashMap::new()));
    let mut names: HashMap<u32, String> = HashMap::new();
    let mut tracks: HashMap<Key, TrackInfo> = HashMap::new();
    let mut hands: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
    let mut reactions: std::collections::VecDeque<ReactionReport> = Default::default();
    // Recorders seen in the room, in the order they were seen (§5.10).
    let mut recorders: Vec<(u32, String)> = Vec::new();
    for p in &joined.participants {
        if p.hand_raised {
            hands.insert(p.participant_id);
        }
        if p.recording && p.participant_id != me {
            status.note(&recording_line(p));
            recorders.push((p.participant_id, p.display_name.clone()));
        }
        names.insert(p.participant_id, p.display_name.clone());
        for t in &p.tracks {
            tracks.insert((p.participant_id, t.track_id), t.clone());
        }
    }
    // Sound is decoded here: 20 ms of Opus takes microseconds.
    let mut listeners: HashMap<Key, audio::Listener> = HashMap::new();
    let (job_tx, job_rx) = std::sync::mpsc::sync_channel::<Job>(DECODE_QUEUE);
    let (want_key_tx, mut want_key_rx) = mpsc::channel::<Key>(64);
    let (decoded_tx, mut decoded_rx) = mpsc::unbounded_channel::<()>();
    let decoder = {
        let shared = shared.clone();
        let dump = args.dump_dir.clone().map(|dir| Dump {
            dir,
            every: args.dump_every,
            y4m: args.y4m,
            files: HashMap::new(),
        });
        std::thread::Builder::new()
            .name("decode".into())
            .spawn(move || decode_thread(job_rx, shared, dump, want_key_tx, decoded_tx, started))
            .context("cannot start the decoder thread")?
    };

    let deadline = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut decoded_total = 0u64;
    let mut status_tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut window_start = Instant::now();
    let ended: Option<String> = loop {
        tokio::select! {
            ev = client.next_event() => {
            if let (Some(e), Some(ev)) = (e2ee.as_mut(), ev.as_ref()) {
                // Frames of this sender were dropped while its key was on the way.
                if let Some(sender) = e.on_event(&mut client, ev, &status) {
                    for (p, t) in tracks.keys().filter(|(p, _)| *p == sender) {
                        let _ = client.send(C::KeyFrameRequest(v1::KeyFrameRequest { participant_id: *p, track_id: *t, ..Default::default() }));
                    }
                }
            }
            match ev {
                Some(ClientEvent::Media(m)) => {
                    let h = m.header();
                    let key = (h.sender, h.track_id);
                    let Some(info) = tracks.get(&key) else { continue };
                    let now = unix_micros();
                    let payload = match e2ee.as_mut() {
                        None => m.payload(),
                        Some(e) => match e.open(&m) {
                            Some(p) => p,
                            None => continue,
                        },
                    };
                    let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
                    let r = guard.entry(key).or_insert_with(|| new_report(key, info, &names));
                    r.frames_received += 1;
                    r.bytes_received += payload.len() as u64;
                    r.window_bytes += payload.len() as u64;
                    r.arrival_us.push(now.saturating_sub(h.capture_timestamp_us));
                    let encoding = m.layer().map(|l| l.encoding);
                    // The server moves a subscriber to another encoding only
                    // at that encoding's key frame (§6.6.3): a delta frame of
                    // another encoding than the current one is a late frame
                    // of the one left (frames on WebTransport streams of
                    // their own can overtake each other), and no longer
                    // decodable.
                    // Several in a row mean the switch's key frame was
                    // lost: the new encoding is taken, from its next key frame.
                    let mut adopted = false;
                    if let (Some(e), Some(current)) = (encoding, r.encoding)
                        && e != current
                        && !h.key
                    {
                        r.stale_run += 1;
                        if r.stale_run <= STALE_RUN {
                            r.stale_encoding += 1;
                            continue;
                        }
                        adopted = true;
                    }
                    r.stale_run = 0;
                    // A switch to another encoding may repeat the last
                    // picture's number, in the new encoding (§6.6.3).
                    let switched = encoding.is_some() && r.encoding.is_some() && encoding != r.encoding;
                    if switched {
                        r.encoding_switches += 1;
                    }
                    if let Some(e) = encoding {
                        r.frames_by_encoding[usize::from(e).min(2)] += 1;
                        r.encoding = Some(e);
                    }
                    // With --max-fps the server leaves out the upper
                    // temporal layers of a track that has them (§6.6.3):
                    // the numbers they took are skipped, not lost, and a
                    // picture of layer 0 (or a switch point) needs none of them.
                    let skipped_by_design = args.max_fps.is_some()
                        && info.encodings.iter().any(|e| e.temporal_layers > 1)
                        && m.layer().is_some_and(|l| l.temporal == 0 || l.switch_point);
                    let gap = match r.highest_seq {
                        Some(prev) => {
                            let d = h.sequence.wrapping_sub(prev);
                            if (d == 0 && !switched) || d > u32::MAX / 2 {
                                continue; // late or duplicate
                            }
                            if !skipped_by_design {
                                r.lost += u64::from(d.saturating_sub(1));
                            }
                            (d > 1 && !skipped_by_design) || adopted
                        }
                        None => false,
                    };
                    r.highest_seq = Some(h.sequence);
                    if h.key {
                        r.key_frames_received += 1;
                    }
                    if info.kind == TrackKind::Audio as i32 {
                        let l = listeners.entry(key).or_insert_with(|| {
                            let wav = args.dump_dir.as_ref().map(|d| d.join(format!("p{}-t{}.wav", key.0, key.1)));
                            audio::Listener::new(&info.codec, wav.as_deref())
                        });
                        l.frame(&payload, h.capture_timestamp_us);
                        r.frames_decoded = l.decoded;
                        r.decode_errors = l.errors;
                        r.level_sum = l.level_sum;
                        r.audio_hz = l.hz();
                        r.window_frames += 1;
                    } else if info.codec.starts_with("avc1") {
                        let job = Job::Frame { key, data: payload, is_key: h.key, gap };
                        if job_tx.try_send(job).is_err() {
                            r.dropped += 1;
                        }
                    }
                }
                Some(ClientEvent::Room(S::TrackPublished(p))) => {
                    if let Some(t) = p.track {
                        if p.participant_id != me {
                            prefer(&mut client, p.participant_id, &t);
                        }
                        tracks.insert((p.participant_id, t.track_id), t);
                    }
                }
                Some(ClientEvent::Room(S::TrackUnpublished(u))) => {
                    tracks.remove(&(u.participant_id, u.track_id));
                    if let Some(l) = listeners.remove(&(u.participant_id, u.track_id))
                        && let Err(e) = l.finish()
                    {
                        status.note(&format!("{e}"));
                    }
                    let _ = job_tx.try_send(Job::Forget((u.participant_id, u.track_id)));
                }
                Some(ClientEvent::Room(S::ParticipantJoined(j))) => {
                    if let Some(p) = j.participant {
                        if p.recording && !recorders.iter().any(|(id, _)| *id == p.participant_id) {
                            status.note(&recording_line(&p));
                            recorders.push((p.participant_id, p.display_name.clone()));
                        }
                        names.insert(p.participant_id, p.display_name);
                    }
                }
                Some(ClientEvent::Room(S::ParticipantLeft(l))) => {
                    hands.remove(&l.participant_id);
                    if recorders.iter().any(|(id, _)| *id == l.participant_id) {
                        let who = names.get(&l.participant_id).cloned().unwrap_or_default();
                        status.note(&format!("participant {} ({who}) stopped recording and left", l.participant_id));
                    } else {
                        status.note(&format!("participant {} left", l.participant_id));
                    }
                }
                Some(ClientEvent::Room(S::HandRaised(h))) => {
                    let who = names.get(&h.participant_id).cloned().unwrap_or_else(|| h.participant_id.to_string());
                    if h.raised {
                        hands.insert(h.participant_id);
                        status.note(&format!("{who} raised a hand"));
                    } else {
                        hands.remove(&h.participant_id);
                        status.note(&format!("{who} lowered their hand"));
                    }
                }
                Some(ClientEvent::Room(S::Reaction(r))) => {
                    let from = names.get(&r.participant_id).cloned().unwrap_or_else(|| r.participant_id.to_string());
                    let kind = reaction_name(r.kind);
                    status.note(&format!("{from} reacted: {kind}"));
                    if reactions.len() == REACTIONS_KEPT {
                        reactions.pop_front();
                    }
                    reactions.push_back(ReactionReport { from, kind });
                }
                Some(ClientEvent::Closed) | None => {
                    break Some(client.close_reason().map_or("the connection ended".into(), |r| format!("{} {}", r.transport_reason(), r.text)));
                }
                Some(_) => {}
            }},
            Some(key) = want_key_rx.recv() => {
                let _ = client.send(C::KeyFrameRequest(v1::KeyFrameRequest { participant_id: key.0, track_id: key.1, ..Default::default() }));
            }
            Some(()) = decoded_rx.recv() => {
                decoded_total += 1;
                if args.frames.is_some_and(|n| decoded_total >= n) {
                    break None;
                }
            }
            _ = status_tick.tick() => {
                let secs = window_start.elapsed().as_secs_f64().max(0.001);
                window_start = Instant::now();
                let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
                let mut parts: Vec<String> = Vec::new();
                let mut keys: Vec<&Key> = guard.keys().collect();
                keys.sort();
                let keys: Vec<Key> = keys.into_iter().copied().collect();
                for k in keys {
                    let r = guard.get_mut(&k).expect("key from the map");
                    parts.push(live_line(r, secs));
                    r.window_frames = 0;
                    r.window_bytes = 0;
                }
                if parts.is_empty() {
                    status.show("waiting for media…");
                } else {
                    status.show(&parts.join(" | "));
                }
            }
            _ = tokio::signal::ctrl_c() => break None,
            _ = sleep_until(deadline) => break None,
        }
    };
    drop(job_tx);
    let _ = tokio::task::spawn_blocking(move || decoder.join()).await;
    for (_, l) in listeners.drain() {
        if let Err(e) = l.finish() {
            status.note(&format!("{e}"));
        }
    }
    status.done();
    if ended.is_none() {
        let _ = tokio::time::timeout(Duration::from_secs(5), client.close("receive done")).await;
    }
    let mut reports: Vec<TrackReport> = shared
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .map(finish)
        .collect();
    reports.sort_by_key(|r| (r.participant_id, r.track_id));
    let report = Report {
        transport: format!("{:?}", client.transport()),
        participant_id: me,
        seconds: started.elapsed().as_secs_f64(),
        tracks: reports,
        e2ee: e2ee.as_ref().map(E2ee::summary),
        hands_raised: hands
            .iter()
            .map(|p| names.get(p).cloned().unwrap_or_else(|| p.to_string()))
            .collect(),
        reactions: reactions.into(),
        recording: recorders.into_iter().map(|(_, name)| name).collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    if let Some(why) = ended {
        anyhow::bail!("the server ended the session: {why}");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn new_report(key: Key, info: &TrackInfo, names: &HashMap<u32, String>) -> TrackReport {
    TrackReport {
        participant_id: key.0,
        display_name: names.get(&key.0).cloned().unwrap_or_default(),
        track_id: key.1,
        kind: match TrackKind::try_from(info.kind) {
            Ok(TrackKind::Audio) => "audio",
            Ok(TrackKind::Screen) => "screen",
            _ => "video",
        },
        codec: info.codec.clone(),
        ..TrackReport::default()
    }
}

fn live_line(r: &TrackReport, secs: f64) -> String {
    let kbps = r.window_bytes as f64 * 8.0 / secs / 1000.0;
    let loss = 100.0 * r.lost as f64 / (r.lost + r.frames_received).max(1) as f64;
    if r.kind == "audio" {
        return format!(
            "p{} audio {:.0} fps {kbps:.0} kbps loss {loss:.1}%",
            r.participant_id,
            r.window_frames as f64 / secs
        );
    }
    let latency = match r.glass_ms.last() {
        Some(ms) => format!("{ms} ms"),
        None => r.arrival_us.last().map_or("-".into(), |us| {
            format!("{:.0} ms (arrival)", *us as f64 / 1000.0)
        }),
    };
    let encoding = r.encoding.map_or(String::new(), |e| format!(" enc {e}"));
    format!(
        "p{} {}x{}{encoding} {:.1} fps {kbps:.0} kbps loss {loss:.1}% latency {latency}",
        r.participant_id,
        r.width,
        r.height,
        r.window_frames as f64 / secs
    )
}

/// Sorts the samples into percentiles.
fn finish(mut r: TrackReport) -> TrackReport {
    r.glass_ms.sort_unstable();
    r.arrival_us.sort_unstable();
    r.glass_latency_ms_p50 = percentile(&r.glass_ms, 50.0);
    r.glass_latency_ms_p95 = percentile(&r.glass_ms, 95.0);
    r.arrival_latency_ms_p50 = percentile(&r.arrival_us, 50.0).map(|us| us as f64 / 1000.0);
    r.arrival_latency_ms_p95 = percentile(&r.arrival_us, 95.0).map(|us| us as f64 / 1000.0);
    if r.kind == "audio" && r.frames_received > 0 {
        r.audio_level_dbfs = Some(r.level_sum / r.frames_decoded.max(1) as f64);
    }
    r
}

fn print_table(report: &Report) {
    println!(
        "{:>6} {:>5} {:<6} {:>9} {:>8} {:>8} {:>6} {:>10} {:>14} {:>14}",
        "peer",
        "track",
        "kind",
        "size",
        "received",
        "decoded",
        "lost",
        "kbps",
        "glass p50/p95",
        "arrive p50/p95"
    );
    for r in &report.tracks {
        let kbps = r.bytes_received as f64 * 8.0 / report.seconds.max(0.001) / 1000.0;
        let ms = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (Some(a), Some(b)) => format!("{a}/{b} ms"),
            _ => "-".into(),
        };
        let msf = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => format!("{a:.1}/{b:.1} ms"),
            _ => "-".into(),
        };
        println!(
            "{:>6} {:>5} {:<6} {:>9} {:>8} {:>8} {:>6} {:>10.0} {:>14} {:>14}",
            r.participant_id,
            r.track_id,
            r.kind,
            if r.width > 0 {
                format!("{}x{}", r.width, r.height)
            } else {
                "-".into()
            },
            r.frames_received,
            r.frames_decoded,
            r.lost,
            kbps,
            ms(r.glass_latency_ms_p50, r.glass_latency_ms_p95),
            msf(r.arrival_latency_ms_p50, r.arrival_latency_ms_p95),
        );
    }
    if report.tracks.is_empty() {
        println!("(nobody published anything)");
    }
    if let Some(e) = &report.e2ee {
        println!(
            "end-to-end encrypted, safety code {}: {} frames decrypted, {} refused, {} without a key yet",
            e.safety_code, e.stats.decrypted, e.stats.rejected, e.stats.no_key
        );
    }
    if !report.recording.is_empty() {
        println!("recorded by: {}", report.recording.join(", "));
    }
    if !report.hands_raised.is_empty() {
        println!("hands raised: {}", report.hands_raised.join(", "));
    }
    if !report.reactions.is_empty() {
        let seen: Vec<String> = report
            .reactions
            .iter()
            .map(|r| format!("{} ({})", r.kind, r.from))
            .collect();
        println!("reactions: {}", seen.join(", "));
    }
}

/// Where and how often to write pictures.
struct Dump {
    dir: PathBuf,
    every: u64,
    y4m: bool,
    files: HashMap<Key, (std::fs::File, usize, usize)>,
}

impl Dump {
    fn write(&mut self, key: Key, n: u64, pic: &I420) -> anyhow::Result<()> {
        let name = format!("p{}-t{}-{n:06}.png", key.0, key.1);
        write_png(&self.dir.join(name), pic)?;
        if self.y4m {
            let (w, h) = (pic.width(), pic.height());
            if !self.files.contains_key(&key) {
                let path = self.dir.join(format!("p{}-t{}.y4m", key.0, key.1));
                let mut f = std::fs::File::create(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                writeln!(f, "YUV4MPEG2 W{w} H{h} F30:1 Ip A1:1 C420jpeg")?;
                self.files.insert(key, (f, w, h));
            }
            let (f, fw, fh) = self.files.get_mut(&key).expect("inserted above");
            // A Y4M file has one size; pictures of another size go to PNG only.
            if (*fw, *fh) == (w, h) {
                f.write_all(b"FRAME\n")?;
                f.write_all(pic.as_bytes())?;
            }
        }
        Ok(())
    }
}

fn write_png(path: &Path, pic: &I420) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut enc = png::Encoder::new(
        std::io::BufWriter::new(file),
        pic.width() as u32,
        pic.height() as u32,
    );
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut w = enc.write_header()?;
    w.write_image_data(&pic.to_rgb())?;
    w.finish()?;
    Ok(())
}

/// Per-track decoding state.
struct TrackDecoder {
    decoder: H264Decoder,
    /// After a gap (or at the start) the decoder waits for a key frame.
    waiting_for_key: bool,
    asked_at: Option<Instant>,
}

fn decode_thread(
    jobs: std::sync::mpsc::Receiver<Job>,
    shared: Shared,
    mut dump: Option<Dump>,
    want_key: mpsc::Sender<Key>,
    decoded: mpsc::UnboundedSender<()>,
    started: Instant,
) {
    let mut decoders: HashMap<Key, TrackDecoder> = HashMap::new();
    while let Ok(job) = jobs.recv() {
        let (key, data, is_key, gap) = match job {
            Job::Forget(key) => {
                decoders.remove(&key);
                continue;
            }
            Job::Frame {
                key,
                data,
                is_key,
                gap,
            } => (key, data, is_key, gap),
        };
        let td = match decoders.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => match H264Decoder::new() {
                Ok(d) => v.insert(TrackDecoder {
                    decoder: d,
                    waiting_for_key: true,
                    asked_at: None,
                }),
                Err(e) => {
                    tracing::error!("cannot create a decoder: {e}");
                    continue;
                }
            },
        };
        if gap && !is_key {
            td.waiting_for_key = true;
        }
        if td.waiting_for_key && !is_key {
            // The server asked on our behalf when we subscribed; after a gap we ask,
            // at most once a second.
            if td
                .asked_at
                .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
            {
                td.asked_at = Some(Instant::now());
                let _ = want_key.try_send(key);
            }
            continue;
        }
        td.waiting_for_key = false;
        let result = td.decoder.decode(&data);
        let now_ms = unix_micros() / 1000;
        let mut guard = shared.lock().unwrap_or_else(|e| e.into_inner());
        let Some(r) = guard.get_mut(&key) else {
            continue;
        };
        let pic = match result {
            Ok(Some(p)) => p,
            Ok(None) => continue,
            Err(e) => {
                r.decode_errors += 1;
                tracing::debug!("decode error on {key:?}: {e}");
                td.waiting_for_key = true;
                continue;
            }
        };
        r.frames_decoded += 1;
        r.window_frames += 1;
        r.width = pic.width();
        r.height = pic.height();
        if r.first_picture_ms.is_none() {
            r.first_picture_ms = Some(started.elapsed().as_millis() as u64);
        }
        if let Some(s) = pattern::read(pic.y(), pic.width(), pic.height()) {
            r.stamps_read += 1;
            r.first_counter.get_or_insert(s.counter);
            if r.last_counter.is_some_and(|c| s.counter <= c) {
                r.counter_regressions += 1;
            }
            r.last_counter = Some(s.counter);
            // The stamp holds the low 48 bits of the capture time.
            let sent = s.unix_ms;
            let now48 = now_ms & 0xFFFF_FFFF_FFFF;
            r.glass_ms.push(now48.saturating_sub(sent));
        }
        let n = r.frames_decoded;
        let write = dump.as_ref().is_some_and(|d| (n - 1) % d.every == 0);
        if write {
            r.pictures_written += 1;
        }
        drop(guard);
        if write
            && let Some(d) = dump.as_mut()
            && let Err(e) = d.write(key, n, &pic)
        {
            tracing::warn!("cannot write a picture: {e:#}");
        }
        let _ = decoded.send(());
    }
}
