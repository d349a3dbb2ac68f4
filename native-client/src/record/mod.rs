//! `convene record`: joins a meeting as its recorder, which everyone sees,
//! and writes each participant's sound and pictures to fragmented MP4
//! files (`fmp4.rs`) that play while they grow and survive a crash up to
//! their last fragment; optionally a live HLS stream of one participant
//! from the same fragments (`hls.rs`).

mod fmp4;
mod hls;
mod mix;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use convene_client::Client;
use convene_protocol::v1::{
    self, ClientKind, TrackInfo, TrackKind, client_message::Msg as C, server_message::Msg as S,
};
use convene_protocol::{ClientEvent, ClientSessionConfig};

use crate::args::ServerArgs;
use crate::audio;
use crate::e2ee::E2ee;
use crate::media::{sleep_until, unix_micros};
use crate::stream::StatusLine;
use fmp4::{AUDIO_TIMESCALE, Media, TrackFile, VIDEO_TIMESCALE};

/// How long connecting and joining may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Samples of one 20 ms Opus frame at 48 kHz.
const OPUS_FRAME: u64 = 960;
/// A 20 ms Opus frame of silence (CELT, full band, mono): what fills the
/// gaps a sender's DTX leaves, so the file's timeline stays whole.
const OPUS_SILENCE: [u8; 3] = [0xF8, 0xFF, 0xFE];
/// The longest gap in a track's sound that is filled with silence (10 min);
/// a longer one is a jump of the sender's clock, not a pause.
const MAX_SILENCE_FILL: u64 = 10 * 60 * 50;
/// Tracks recorded at once; more are refused (each holds a file and up to
/// a fragment of media in memory).
const MAX_TRACKS: usize = 512;
/// Without keys, how long a newcomer's first frames wait before any is
/// written, for the announcement of their keys if they encrypt.
const HOLD: Duration = Duration::from_millis(500);
/// Frames held per newcomer at most (half a second is about 40).
const MAX_HELD: usize = 200;
/// With --hls, how often the live participant is asked for a key frame:
/// HLS segments start at one.
const HLS_KEY_INTERVAL: Duration = Duration::from_secs(2);

/// `convene record` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct RecordArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The meeting to record.
    #[arg(long)]
    meeting_id: String,
    /// Where the files go (created if missing): one MP4 file per
    /// participant and track kind (`pID-NAME-video.mp4`, `-audio.mp4`,
    /// `-screen.mp4`), everyone's sound mixed in `meeting-audio.mp4`, and
    /// `recording.json` listing them.
    #[arg(long)]
    out: PathBuf,
    /// The name others see.
    #[arg(long, default_value = "Recorder")]
    user_id: String,
    /// Stop after this many seconds (default: until Ctrl-C or SIGTERM).
    #[arg(long)]
    duration: Option<f64>,
    /// Print a JSON summary of the files on stdout when done.
    #[arg(long)]
    json: bool,
    /// End-to-end encryption (SFrame, §14). `auto`: take part in the key
    /// exchange as soon as a member uses it; `on`: from the start; `off`:
    /// never, and record nobody who encrypts. Taking part makes the
    /// recorder a member whose key the others hold: their safety code
    /// counts it, like any member's. Frames that do not decrypt are not
    /// recorded.
    #[arg(long, value_enum, default_value = "auto", num_args = 0..=1, default_missing_value = "on")]
    e2ee: E2eeMode,
    /// Also write a live HLS stream (`live.m3u8` in --out, whose segments
    /// are byte ranges of the recording's own files; serve --out with any
    /// web server): of one participant (display name or id), or
    /// `active-speaker`: the pictures of whoever speaks now, with the sound
    /// of the whole meeting.
    #[arg(long, value_name = "PARTICIPANT")]
    hls: Option<String>,
}

/// When the recorder takes part in end-to-end encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum E2eeMode {
    /// As soon as a member of the meeting uses it.
    Auto,
    /// From the start.
    On,
    /// Never: encrypted participants are not recorded.
    Off,
}

/// What one recorded file holds, for the summary and `recording.json`.
#[derive(Debug, Clone, serde::Serialize)]
struct FileReport {
    path: String,
    participant_id: u32,
    display_name: String,
    track_id: u32,
    kind: &'static str,
    codec: String,
    samples: u64,
    bytes: u64,
    /// Where the file starts on the recording's timeline, seconds.
    start_seconds: f64,
    /// Its length, seconds.
    seconds: f64,
    /// Sound frames of silence written where the sender sent none (DTX).
    silence_frames: u64,
    /// Frames left out: late, before the first key frame, or after a loss
    /// until the next key frame.
    frames_skipped: u64,
}

/// The JSON summary.
#[derive(Debug, serde::Serialize)]
struct Summary {
    meeting_id: String,
    out: String,
    transport: String,
    participant_id: u32,
    seconds: f64,
    files: Vec<FileReport>,
    /// Participants whose media could not be read (end-to-end encrypted
    /// without --e2ee, or no key for us).
    not_recorded: Vec<String>,
    hls: Option<String>,
    /// When the recorder took part in end-to-end encryption: its last
    /// safety code (the members' codes count it) and what its keyring did.
    e2ee: Option<crate::e2ee::E2eeSummary>,
    /// Sound frames mixed into `meeting-audio.mp4`, and those left out
    /// because they came more than 300 ms late (or claimed to be from the
    /// future); each participant's own file has them all.
    mix_frames: u64,
    mix_left_out: u64,
}

/// One track being recorded.
struct Recording {
    participant_id: u32,
    display_name: String,
    track_id: u32,
    kind: TrackKind,
    codec: String,
    frame_rate: u32,
    channels: u8,
    path: PathBuf,
    file: Option<TrackFile>,
    /// Pictures are skipped until a key frame (at the start, after a loss).
    waiting_key: bool,
    last_sequence: Option<u32>,
    /// µ-law sound is re-encoded as Opus (MP4 players know Opus).
    transcode: Option<(audio::Decoder, audio::Encoder)>,
    silence_frames: u64,
    frames_skipped: u64,
    /// The file could not be written: nothing more is tried.
    failed: bool,
}

impl Recording {
    fn report(&self, file: Option<&TrackFile>) -> FileReport {
        let scale = f64::from(if self.kind == TrackKind::Audio {
            AUDIO_TIMESCALE
        } else {
            VIDEO_TIMESCALE
        });
        let (samples, bytes, start, seconds) = match file.or(self.file.as_ref()) {
            Some(f) => {
                let first = f.first_dts().unwrap_or(0);
                let end = f
                    .fragments()
                    .last()
                    .map_or(first, |fr| fr.start + fr.duration);
                // The sample still held lasts as long as the file's last one will.
                let end = end.max(f.last_dts().map_or(0, |d| d + self.last_duration()));
                (
                    f.samples(),
                    f.len(),
                    first as f64 / scale,
                    (end - first) as f64 / scale,
                )
            }
            None => (0, 0, 0.0, 0.0),
        };
        FileReport {
            path: self.path.display().to_string(),
            participant_id: self.participant_id,
            display_name: self.display_name.clone(),
            track_id: self.track_id,
            kind: kind_name(self.kind),
            codec: if self.kind == TrackKind::Audio {
                "opus".into()
            } else {
                self.codec.clone()
            },
            samples,
            bytes,
            start_seconds: start,
            seconds,
            silence_frames: self.silence_frames,
            frames_skipped: self.frames_skipped,
        }
    }

    /// How long the last sample lasts when the file is closed.
    fn last_duration(&self) -> u64 {
        if self.kind == TrackKind::Audio {
            OPUS_FRAME
        } else {
            u64::from(VIDEO_TIMESCALE) / u64::from(self.frame_rate.clamp(1, 120))
        }
    }
}

fn kind_name(kind: TrackKind) -> &'static str {
    match kind {
        TrackKind::Audio => "audio",
        TrackKind::Screen => "screen",
        _ => "video",
    }
}

/// A name fit for a file: letters, digits, `-` and `_`, at most 32.
fn file_safe(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(32)
        .collect();
    if s.is_empty() { "unnamed".into() } else { s }
}

/// The whole recorder.
struct Recorder<'a> {
    args: &'a RecordArgs,
    status: StatusLine,
    /// Unix µs the recording's timeline starts at.
    start_us: u64,
    /// Per participant: their clock against ours (arrival − capture at
    /// their first frame), so their sound and pictures keep their own
    /// alignment on our timeline.
    offsets: HashMap<u32, i64>,
    names: HashMap<u32, String>,
    /// Who is in the room now, the recorder included.
    present: std::collections::BTreeSet<u32>,
    tracks: HashMap<(u32, u32), TrackInfo>,
    recordings: HashMap<(u32, u32), Recording>,
    finished: Vec<FileReport>,
    /// File names taken, so a second track of a kind gets its own.
    taken: std::collections::HashSet<PathBuf>,
    /// Participants that announced end-to-end encryption we cannot read.
    encrypted: std::collections::BTreeSet<u32>,
    e2ee: Option<E2ee>,
    live: Option<hls::Live>,
    /// The meeting's sound in one file (None if it cannot be written).
    mixer: Option<mix::Mixer>,
    /// The mixer's frames mixed and left out, once it is finished.
    mix_counts: (u64, u64),
    /// The transport of the session now (or the last one).
    transport: String,
    /// Our participant id in the session now (or the last one).
    me: u32,
    /// Who was not recorded for encrypting without us, by name.
    not_recorded: std::collections::BTreeSet<String>,
    /// The last session's end-to-end encryption, for the summary.
    e2ee_summary: Option<crate::e2ee::E2eeSummary>,
    /// Newcomers' first frames, held while it is not known whether they
    /// encrypt (only when the recorder has no keys).
    held: HashMap<u32, Held>,
    /// Participants whose frames are no longer held.
    cleared: std::collections::HashSet<u32>,
}

/// A newcomer's first frames, with their arrival times (Unix µs).
struct Held {
    since: Instant,
    frames: Vec<(u64, convene_protocol::MediaFrame)>,
}

/// How a session of the recorder ended.
enum Ended {
    /// Ctrl-C, SIGTERM or --duration: the recording is over.
    Asked,
    /// The server closed the session for this reason.
    Closed(String),
}

/// The longest wait between attempts to get back to the server.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Connects to `endpoint` and joins the meeting as its recorder.
async fn join(
    args: &RecordArgs,
    endpoint: &convene_client::Endpoint,
) -> anyhow::Result<(Client, v1::Joined)> {
    let config = ClientSessionConfig {
        // Everyone in the meeting is told a recorder is there (§5.10).
        client_kind: ClientKind::Recorder,
        client_version: concat!("convene-record/", env!("CARGO_PKG_VERSION")).into(),
        auth_token: args.server.token.clone().unwrap_or_default(),
        // Active speakers and the encodings of a simulcast track.
        features: vec![convene_protocol::FEATURE_SFU.to_string()],
        ..ClientSessionConfig::default()
    };
    args.server
        .join(
            endpoint,
            config,
            &args.meeting_id,
            &args.user_id,
            "the recorder",
            JOIN_TIMEOUT,
        )
        .await
}

pub(crate) async fn run(args: RecordArgs) -> anyhow::Result<std::process::ExitCode> {
    let endpoint = args.server.endpoint().await?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create --out {}", args.out.display()))?;
    // The first join's failure is the user's to see at once.
    let first = join(&args, &endpoint).await?;
    let mut rec = Recorder {
        args: &args,
        status: StatusLine::new(),
        start_us: unix_micros(),
        offsets: HashMap::new(),
        names: HashMap::new(),
        present: Default::default(),
        tracks: HashMap::new(),
        recordings: HashMap::new(),
        finished: Vec::new(),
        taken: Default::default(),
        encrypted: Default::default(),
        e2ee: None,
        live: args.hls.as_ref().map(|who| hls::Live::new(&args.out, who)),
        mixer: mix::Mixer::new(&args.out)
            .inspect_err(|e| eprintln!("the meeting's sound will not be mixed: {e}"))
            .ok(),
        mix_counts: (0, 0),
        transport: String::new(),
        me: 0,
        not_recorded: Default::default(),
        e2ee_summary: None,
        held: HashMap::new(),
        cleared: Default::default(),
    };
    let started = Instant::now();
    let deadline = args
        .duration
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    let mut next = Some(first);
    let mut backoff = Duration::from_secs(1);
    // Why the recording ended, when the server ended it, and whether
    // that is a normal end (a moderator's doing).
    let ended: Option<(String, bool)> = loop {
        let (mut client, joined) = match next.take() {
            Some(session) => session,
            None => {
                let attempt = tokio::select! {
                    r = join(&args, &endpoint) => Some(r),
                    _ = tokio::signal::ctrl_c() => None,
                    _ = sigterm.recv() => None,
                    _ = sleep_until(deadline) => None,
                };
                match attempt {
                    None => break None,
                    Some(Ok(session)) => {
                        backoff = Duration::from_secs(1);
                        session
                    }
                    Some(Err(e)) => {
                        rec.status
                            .note(&format!("{e:#}; trying again in {backoff:?}"));
                        let stop = tokio::select! {
                            _ = tokio::time::sleep(backoff) => false,
                            _ = tokio::signal::ctrl_c() => true,
                            _ = sigterm.recv() => true,
                            _ = sleep_until(deadline) => true,
                        };
                        if stop {
                            break None;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
        };
        rec.begin(&mut client, &joined)?;
        let mut status_tick = tokio::time::interval_at(
            tokio::time::Instant::now() + Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let mut key_tick = tokio::time::interval_at(
            tokio::time::Instant::now() + HLS_KEY_INTERVAL,
            HLS_KEY_INTERVAL,
        );
        let how = loop {
            tokio::select! {
                ev = client.next_event() => {
                    let Some(ev) = ev else {
                        break Ended::Closed(client.close_reason().map_or("connection lost".into(), |r| format!("{} {}", r.transport_reason(), r.text)));
                    };
                    rec.on_event(&mut client, ev, rec.me);
                }
                _ = status_tick.tick() => rec.show(started),
                _ = key_tick.tick(), if rec.live.is_some() => {
                    if let Some(key) = rec.live_video() {
                        ask_key(&mut client, key.0, key.1);
                    }
                }
                _ = tokio::signal::ctrl_c() => break Ended::Asked,
                _ = sigterm.recv() => break Ended::Asked,
                _ = sleep_until(deadline) => break Ended::Asked,
            }
        };
        match how {
            Ended::Asked => {
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), client.close("recording done"))
                        .await;
                break None;
            }
            Ended::Closed(why) => {
                use convene_protocol::v1::GoodbyeReason as G;
                let reason = client.close_reason();
                // Removed (how a node that did not start the recorder stops
                // it), the meeting ended, or a refusal that would come again:
                // the recording is over. A server that went away: the files
                // so far are finished and the recording goes on in new ones
                // when the server (or its successor) is back.
                let normal = matches!(
                    reason.and_then(|r| r.goodbye),
                    Some(G::MeetingEnded | G::Removed)
                );
                if normal || reason.is_some_and(|r| !r.worth_reconnecting()) {
                    break Some((why, normal));
                }
                rec.status.note(&format!(
                    "lost the server: {why}; the files so far are finished, reconnecting"
                ));
                rec.end_session();
            }
        }
    };
    rec.status.done();
    rec.end_session();
    rec.finish_mix();
    if let Some(live) = rec.live.as_mut() {
        live.end();
    }
    let summary = rec.summary(started);
    write_manifest(&args.out, &summary)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        for f in &summary.files {
            eprintln!(
                "{}: {} {} {:.1} s, {:.1} MB",
                f.path,
                f.kind,
                f.codec,
                f.seconds,
                f.bytes as f64 / 1e6
            );
        }
    }
    match ended {
        // A moderator who ends the meeting, or stops the recording by
        // removing the recorder, ends it normally.
        Some((why, true)) => {
            eprintln!("recording stopped: {why}");
            Ok(std::process::ExitCode::SUCCESS)
        }
        Some((why, false)) => {
            anyhow::bail!("the server ended the session: {why}; the files so far are complete")
        }
        None => Ok(std::process::ExitCode::SUCCESS),
    }
}

fn ask_key(client: &mut Client, participant_id: u32, track_id: u32) {
    let _ = client.send(C::KeyFrameRequest(v1::KeyFrameRequest {
        participant_id,
        track_id,
        ..Default::default()
    }));
}

/// `recording.json` beside the files, written whole then renamed into place.
fn write_manifest(out: &std::path::Path, summary: &Summary) -> anyhow::Result<()> {
    let path = out.join("recording.json");
    let tmp = out.join(".recording.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(summary)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

impl Recorder<'_> {
    /// A session joined: who is there, what they publish, and with
    /// `--e2ee on` our keys.
    fn begin(&mut self, client: &mut Client, joined: &v1::Joined) -> anyhow::Result<()> {
        self.me = client.participant_id();
        self.transport = format!("{:?}", client.transport());
        self.status.note(&format!(
            "recording `{}` into {} as participant {} over {:?}",
            self.args.meeting_id,
            self.args.out.display(),
            self.me,
            client.transport()
        ));
        for p in &joined.participants {
            self.names.insert(p.participant_id, p.display_name.clone());
            self.present.insert(p.participant_id);
            for t in &p.tracks {
                self.tracks
                    .insert((p.participant_id, t.track_id), t.clone());
                if p.participant_id != self.me && t.kind != TrackKind::Audio as i32 {
                    ask_key(client, p.participant_id, t.track_id);
                }
            }
        }
        // A meeting that requires encryption is joined encrypted at once
        // (the server removes members that do not announce a key).
        let required = joined.e2ee_required && self.args.e2ee == E2eeMode::Auto;
        if self.args.e2ee == E2eeMode::On || required {
            let present: Vec<u32> = self.present.iter().copied().collect();
            self.e2ee = Some(E2ee::start(
                client,
                &self.args.meeting_id,
                &present,
                &self.status,
            )?);
        }
        Ok(())
    }

    /// The session is over: every file of it is finished (a new session
    /// gives everyone new ids, and new files).
    fn end_session(&mut self) {
        let keys: Vec<(u32, u32)> = self.recordings.keys().copied().collect();
        for key in keys {
            if let Some(m) = self.mixer.as_mut() {
                m.forget(key);
            }
            self.close(key);
        }
        self.offsets.clear();
        self.held.clear();
        self.cleared.clear();
        self.names.clear();
        self.present.clear();
        self.tracks.clear();
        self.encrypted.clear();
        if let Some(e) = self.e2ee.take() {
            self.e2ee_summary = Some(e.summary());
        }
        if let Some(live) = self.live.as_mut() {
            live.session_ended();
        }
    }

    fn on_event(&mut self, client: &mut Client, ev: ClientEvent, me: u32) {
        // A member encrypts: with --e2ee auto the recorder joins the key
        // exchange now, like a member who turns encryption on.
        if self.e2ee.is_none()
            && self.args.e2ee == E2eeMode::Auto
            && matches!(ev, ClientEvent::Room(S::E2ee(_)))
        {
            self.present.insert(me);
            let present: Vec<u32> = self.present.iter().copied().collect();
            match E2ee::start(client, &self.args.meeting_id, &present, &self.status) {
                Ok(e) => {
                    // What was held came before the keys: it cannot be read.
                    self.held.clear();
                    self.e2ee = Some(e);
                }
                Err(e) => self
                    .status
                    .note(&format!("cannot take part in end-to-end encryption: {e:#}")),
            }
        }
        if let Some(e) = self.e2ee.as_mut()
            && let Some(sender) = e.on_event(client, &ev, &self.status)
        {
            for (p, t) in self.tracks.keys().filter(|(p, _)| *p == sender) {
                ask_key(client, *p, *t);
            }
        }
        match ev {
            ClientEvent::Media(m) => self.on_media(client, &m),
            ClientEvent::Room(S::TrackPublished(p)) => {
                if let Some(t) = p.track {
                    if p.participant_id != me && t.kind != TrackKind::Audio as i32 {
                        ask_key(client, p.participant_id, t.track_id);
                    }
                    let screen = t.kind == TrackKind::Screen as i32;
                    self.tracks.insert((p.participant_id, t.track_id), t);
                    // A shared screen takes the active-speaker stream.
                    if screen
                        && p.participant_id != me
                        && let Some(live) = self.live.as_mut()
                    {
                        live.screen_started(p.participant_id);
                    }
                }
            }
            ClientEvent::Room(S::TrackUnpublished(u)) => {
                self.tracks.remove(&(u.participant_id, u.track_id));
                if let Some(m) = self.mixer.as_mut() {
                    m.forget((u.participant_id, u.track_id));
                }
                if let Some(next) = self.close((u.participant_id, u.track_id)) {
                    ask_key(client, next.0, next.1);
                }
            }
            ClientEvent::Room(S::ParticipantJoined(j)) => {
                if let Some(p) = j.participant {
                    self.present.insert(p.participant_id);
                    self.names.insert(p.participant_id, p.display_name);
                }
            }
            ClientEvent::Room(S::ParticipantLeft(l)) => {
                self.present.remove(&l.participant_id);
                self.held.remove(&l.participant_id);
                self.cleared.remove(&l.participant_id);
                let keys: Vec<(u32, u32)> = self
                    .recordings
                    .keys()
                    .filter(|k| k.0 == l.participant_id)
                    .copied()
                    .collect();
                for key in keys {
                    if let Some(m) = self.mixer.as_mut() {
                        m.forget(key);
                    }
                    if let Some(next) = self.close(key) {
                        ask_key(client, next.0, next.1);
                    }
                }
                self.tracks.retain(|k, _| k.0 != l.participant_id);
            }
            ClientEvent::Room(S::ActiveSpeakers(a)) => {
                let dominant = a
                    .speakers
                    .iter()
                    .find(|s| s.dominant)
                    .map(|s| s.participant_id);
                if let (Some(live), Some(d)) = (self.live.as_mut(), dominant)
                    && d != me
                    && self
                        .tracks
                        .iter()
                        .any(|((p, _), t)| *p == d && t.kind == TrackKind::Video as i32)
                    && live.follow(d)
                    && let Some(k) = self.live_video()
                {
                    ask_key(client, k.0, k.1);
                }
            }
            ClientEvent::Room(S::E2ee(m))
                if self.e2ee.is_none() && self.encrypted.insert(m.from_participant_id) =>
            {
                let who = self
                    .names
                    .get(&m.from_participant_id)
                    .cloned()
                    .unwrap_or_default();
                self.held.remove(&m.from_participant_id);
                self.not_recorded.insert(if who.is_empty() {
                    m.from_participant_id.to_string()
                } else {
                    who.clone()
                });
                self.status.note(&format!(
                        "participant {} ({who}) encrypts end to end: not recorded (the recorder runs with --e2ee off)",
                        m.from_participant_id
                    ));
            }
            _ => {}
        }
    }

    /// A frame arrived. Without keys, a newcomer's frames are held for
    /// [`HOLD`] before anything of theirs is written: a member who
    /// encrypts announces it before their first frame, but the two can
    /// arrive in either order, and ciphertext must never be written as if
    /// it were sound or pictures.
    fn on_media(&mut self, client: &mut Client, m: &convene_protocol::MediaFrame) {
        let sender = m.header().sender;
        let arrival = unix_micros();
        if self.e2ee.is_none() && !self.cleared.contains(&sender) {
            let held = self.held.entry(sender).or_insert_with(|| Held {
                since: Instant::now(),
                frames: Vec::new(),
            });
            if held.since.elapsed() < HOLD {
                if held.frames.len() < MAX_HELD {
                    held.frames.push((arrival, m.clone()));
                }
                return;
            }
            let frames = self
                .held
                .remove(&sender)
                .map(|h| h.frames)
                .unwrap_or_default();
            self.cleared.insert(sender);
            for (at, f) in frames {
                self.record_frame(client, &f, at);
            }
        }
        self.record_frame(client, m, arrival);
    }

    /// Writes a frame that arrived at `arrival` (Unix µs).
    fn record_frame(
        &mut self,
        client: &mut Client,
        m: &convene_protocol::MediaFrame,
        arrival: u64,
    ) {
        let h = *m.header();
        let key = (h.sender, h.track_id);
        if !self.tracks.contains_key(&key) || self.encrypted.contains(&h.sender) {
            return;
        }
        let payload = match self.e2ee.as_mut() {
            None => m.payload(),
            Some(e) => match e.open(m) {
                Some(p) => p,
                None => return,
            },
        };
        let offset = *self
            .offsets
            .entry(h.sender)
            .or_insert(arrival as i64 - h.capture_timestamp_us as i64);
        let t_us = (h.capture_timestamp_us as i64 + offset - self.start_us as i64).max(0) as u64;
        if !self.recordings.contains_key(&key) {
            if self.recordings.len() >= MAX_TRACKS {
                return;
            }
            let Some(info) = self.tracks.get(&key).cloned() else {
                return;
            };
            let r = self.new_recording(key, &info);
            self.recordings.insert(key, r);
        }
        let Some(r) = self.recordings.get_mut(&key) else {
            return;
        };
        if r.failed {
            return;
        }
        let outcome = if r.kind == TrackKind::Audio {
            let mut broken = None;
            if let Some(m) = self.mixer.as_mut() {
                // The clock as it was when the frame arrived (held frames
                // are written later).
                let now = arrival.saturating_sub(self.start_us) * 48 / 1000;
                match m.add(key, &r.codec, &payload, t_us * 48 / 1000, now) {
                    Ok(fragments) => {
                        if let (Some(live), Some(file)) = (self.live.as_mut(), m.file()) {
                            for f in fragments {
                                live.mix_written(file, f);
                            }
                        }
                    }
                    Err(e) => broken = Some(e),
                }
            }
            if let Some(e) = broken {
                self.status.note(&format!(
                    "cannot write the meeting's sound: {e}; it is no longer mixed"
                ));
                self.mixer = None;
            }
            record_sound(r, &payload, t_us)
        } else {
            let gap = r
                .last_sequence
                .is_some_and(|s| h.sequence.wrapping_sub(s) != 1 && h.sequence != s);
            r.last_sequence = Some(h.sequence);
            if gap && !h.key && !r.waiting_key {
                r.waiting_key = true;
                ask_key(client, key.0, key.1);
            }
            record_picture(r, &payload, h.key, t_us)
        };
        match outcome {
            Ok(Some(fragment)) => {
                if let (Some(live), Some(file)) = (self.live.as_mut(), r.file.as_ref()) {
                    live.fragment_written(&self.names, key.0, r.kind, file, fragment);
                }
            }
            Ok(None) => {}
            Err(e) => {
                self.status.note(&format!(
                    "cannot write {}: {e}; that track is no longer recorded",
                    r.path.display()
                ));
                r.failed = true;
            }
        }
    }

    fn new_recording(&mut self, key: (u32, u32), info: &TrackInfo) -> Recording {
        let kind = TrackKind::try_from(info.kind).unwrap_or(TrackKind::Video);
        let name = self.names.get(&key.0).cloned().unwrap_or_default();
        let base = format!("p{}-{}-{}", key.0, file_safe(&name), kind_name(kind));
        let mut path = self.args.out.join(format!("{base}.mp4"));
        let mut n = 2;
        while self.taken.contains(&path) {
            path = self.args.out.join(format!("{base}-{n}.mp4"));
            n += 1;
        }
        self.taken.insert(path.clone());
        let transcode = match audio::Codec::from_name(&info.codec) {
            Some(audio::Codec::Pcmu) if kind == TrackKind::Audio => {
                match (
                    audio::Decoder::for_codec("PCMU"),
                    audio::Encoder::new(audio::Codec::Opus),
                ) {
                    (Ok(d), Ok(e)) => Some((d, e)),
                    _ => None,
                }
            }
            _ => None,
        };
        self.status.note(&format!(
            "recording {} of participant {} ({name}) into {}",
            kind_name(kind),
            key.0,
            path.display()
        ));
        Recording {
            participant_id: key.0,
            display_name: name,
            track_id: key.1,
            kind,
            codec: info.codec.clone(),
            frame_rate: info.frame_rate,
            channels: info.channels.clamp(1, 2) as u8,
            path,
            file: None,
            waiting_key: true,
            last_sequence: None,
            transcode,
            silence_frames: 0,
            frames_skipped: 0,
            failed: false,
        }
    }

    /// Finishes a track's file. Returns the video track the live stream
    /// moves to, when it showed this one (ask it for a key frame).
    fn close(&mut self, key: (u32, u32)) -> Option<(u32, u32)> {
        let mut r = self.recordings.remove(&key)?;
        let mut file = r.file.take()?;
        let report = r.report(Some(&file));
        self.status.note(&format!(
            "finished {}: {:.1} s, {:.1} MB",
            report.path,
            report.seconds,
            report.bytes as f64 / 1e6
        ));
        let kind = r.kind;
        let done = file.flush(r.last_duration()).and_then(|last| {
            if let (Some(live), Some(fragment)) = (self.live.as_mut(), last) {
                live.last_fragment(key.0, kind, &file, fragment);
            }
            file.finish(r.last_duration())
        });
        if let Err(e) = done {
            self.status
                .note(&format!("cannot finish {}: {e}", r.path.display()));
        }
        self.finished.push(report);
        // The active-speaker stream loses its pictures: a screen gives
        // way to the speaker's camera, a camera to someone else's.
        if kind == TrackKind::Audio {
            return None;
        }
        let other = self
            .recordings
            .iter()
            .filter(|(k, r)| k.0 != key.0 && r.kind == TrackKind::Video)
            .map(|(k, _)| k.0)
            .min();
        let live = self.live.as_mut()?;
        if live.pictures_ended((key.0, kind), other) {
            self.live_video()
        } else {
            None
        }
    }

    /// Writes the rest of the meeting's sound and closes its file.
    fn finish_mix(&mut self) {
        let Some(mut m) = self.mixer.take() else {
            return;
        };
        self.mix_counts = (m.mixed, m.left_out);
        match m.flush() {
            Ok(fragments) => {
                if let (Some(live), Some(file)) = (self.live.as_mut(), m.file()) {
                    for f in fragments {
                        live.mix_written(file, f);
                    }
                }
            }
            Err(e) => self
                .status
                .note(&format!("cannot write the meeting's sound: {e}")),
        }
        let path = m.path().display().to_string();
        match m.finish() {
            Ok(Some((samples, bytes, start_seconds, seconds))) => {
                self.status.note(&format!(
                    "finished {path}: {seconds:.1} s, {:.1} MB",
                    bytes as f64 / 1e6
                ));
                self.finished.push(FileReport {
                    path,
                    participant_id: 0,
                    display_name: "everyone".into(),
                    track_id: 0,
                    kind: "audio",
                    codec: "opus".into(),
                    samples,
                    bytes,
                    start_seconds,
                    seconds,
                    silence_frames: 0,
                    frames_skipped: 0,
                });
            }
            Ok(None) => {}
            Err(e) => self.status.note(&format!("cannot finish {path}: {e}")),
        }
    }

    /// The video track of the participant the live stream shows.
    fn live_video(&self) -> Option<(u32, u32)> {
        let live = self.live.as_ref()?;
        let (pid, kind) = live.pictures(&self.names)?;
        self.tracks
            .iter()
            .find(|((p, _), t)| *p == pid && t.kind == kind as i32)
            .map(|(k, _)| *k)
    }

    fn show(&self, started: Instant) {
        let bytes: u64 = self
            .recordings
            .values()
            .filter_map(|r| r.file.as_ref())
            .map(TrackFile::len)
            .sum::<u64>()
            + self.finished.iter().map(|f| f.bytes).sum::<u64>();
        let people: std::collections::BTreeSet<u32> = self.recordings.keys().map(|k| k.0).collect();
        let secs = started.elapsed().as_secs();
        self.status.show(&format!(
            "recording {:02}:{:02}:{:02}  {} participants  {} tracks  {:.1} MB",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            people.len(),
            self.recordings.len(),
            bytes as f64 / 1e6
        ));
    }

    fn summary(&self, started: Instant) -> Summary {
        let mut files = self.finished.clone();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Summary {
            meeting_id: self.args.meeting_id.clone(),
            out: self.args.out.display().to_string(),
            transport: self.transport.clone(),
            participant_id: self.me,
            seconds: started.elapsed().as_secs_f64(),
            files,
            not_recorded: self.not_recorded.iter().cloned().collect(),
            hls: self.live.as_ref().map(|l| l.playlist_path()),
            e2ee: self
                .e2ee
                .as_ref()
                .map(E2ee::summary)
                .or_else(|| self.e2ee_summary.clone()),
            mix_frames: self.mix_counts.0,
            mix_left_out: self.mix_counts.1,
        }
    }
}

/// Adds one frame of sound, its gap before it filled with silence.
fn record_sound(
    r: &mut Recording,
    payload: &[u8],
    t_us: u64,
) -> std::io::Result<Option<fmp4::Fragment>> {
    let packet = match r.transcode.as_mut() {
        None => payload.to_vec(),
        Some((dec, enc)) => {
            let Ok(pcm) = dec.decode(payload) else {
                r.frames_skipped += 1;
                return Ok(None);
            };
            let wide: Vec<i16> = pcm
                .iter()
                .flat_map(|&s| std::iter::repeat_n(s, 6))
                .collect();
            match enc.encode(&wide) {
                Ok(Some(p)) => p,
                Ok(None) => OPUS_SILENCE.to_vec(),
                Err(_) => {
                    r.frames_skipped += 1;
                    return Ok(None);
                }
            }
        }
    };
    let dts = t_us * u64::from(AUDIO_TIMESCALE) / 1_000_000;
    if r.file.is_none() {
        r.file = Some(TrackFile::create(
            &r.path,
            &Media::Opus {
                channels: r.channels,
            },
        )?);
    }
    let Some(file) = r.file.as_mut() else {
        return Ok(None);
    };
    let mut written = None;
    // DTX: the sender sent nothing while silent; the file gets silence.
    if let Some(last) = file.last_dts()
        && dts > last + OPUS_FRAME * 3 / 2
    {
        let missing = (dts - last) / OPUS_FRAME - 1;
        if missing <= MAX_SILENCE_FILL {
            for i in 1..=missing {
                let (_, f) = file.push(last + i * OPUS_FRAME, OPUS_SILENCE.to_vec(), true)?;
                written = written.or(f);
                r.silence_frames += 1;
            }
        }
    }
    let (taken, f) = file.push(dts, packet, true)?;
    if !taken {
        r.frames_skipped += 1;
    }
    Ok(f.or(written))
}

/// Adds one picture, from the first key frame on and not across a loss.
fn record_picture(
    r: &mut Recording,
    payload: &[u8],
    key: bool,
    t_us: u64,
) -> std::io::Result<Option<fmp4::Fragment>> {
    if r.waiting_key && !key {
        r.frames_skipped += 1;
        return Ok(None);
    }
    let (data, sps, pps) = fmp4::annexb_to_avcc(payload);
    if data.is_empty() {
        r.frames_skipped += 1;
        return Ok(None);
    }
    if r.file.is_none() {
        let (Some(sps), Some(pps)) = (sps, pps) else {
            r.frames_skipped += 1;
            return Ok(None);
        };
        let (width, height) = fmp4::sps_size(&sps).unwrap_or((0, 0));
        r.file = Some(TrackFile::create(
            &r.path,
            &Media::H264 {
                width,
                height,
                sps,
                pps,
            },
        )?);
    }
    r.waiting_key = false;
    let dts = t_us * u64::from(VIDEO_TIMESCALE) / 1_000_000;
    let Some(file) = r.file.as_mut() else {
        return Ok(None);
    };
    let (taken, f) = file.push(dts, data, key)?;
    if !taken {
        r.frames_skipped += 1;
    }
    Ok(f)
}
