//! Recorders this node runs (PROTOCOL.md §5.10). A moderator's
//! `StartRecording`, or the admin API's, makes the node that received it
//! start `convene record` as a child process: it joins the meeting over
//! loopback as a recorder, subscribes to everything and writes files under
//! `<recordings dir>/<meeting id>/<UTC start time>/`, with the token it
//! needs (when the node requires tokens) in its environment as
//! `CONVENE_TOKEN`, which `convene record --token` reads. `StopRecording`
//! sends it SIGTERM (it finishes its files and exits), and SIGKILL after
//! [`STOP_GRACE`]. Children are reaped here, their output goes to the log,
//! and they die with the server.
//!
//! What a moderator can make the node spawn is bounded: one recorder per
//! meeting, counted until its process is reaped (so Start, Stop, Start
//! cannot pile up stopping processes), at most `max_recorders` on the node,
//! and at most `recorder_starts_per_minute` starts, all meetings together.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use convene_protocol::auth::{Claims, Grant};
use convene_protocol::v1;
use convene_protocol::{ErrorCode, ProtocolError, RoomRequest, Timestamp, TokenBucket};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tracing::{info, warn};

use crate::state::AppState;

/// How long a recorder has to finish its files after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// Environment variables of the server that its recorders do not inherit.
pub const INHERITED_SECRETS: [&str; 5] = [
    "CONVENE_AUTH_SECRET",
    "CONVENE_ADMIN_TOKEN",
    "CONVENE_BUS_TOKEN",
    "CONVENE_BUS_PASSWORD",
    "CONVENE_BUS_USER",
];

/// Lifetime of the token a recorder is given, in seconds: a day of recording.
pub const RECORDER_TOKEN_TTL_S: u64 = 86_400;

/// What a recorder needs to reach this node, known once it listens.
#[derive(Clone)]
pub struct Target {
    /// The URL the recorder connects to (`--server`).
    pub url: String,
    /// The development certificate's hash, when the URL is https with `--dev-tls`.
    pub cert_sha256: Option<String>,
    /// The HS256 secret recorder tokens are signed with, when the node has one.
    pub secret: Option<Vec<u8>>,
    /// The node requires tokens.
    pub auth: bool,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("Target")
            .field("url", &self.url)
            .field("cert_sha256", &self.cert_sha256)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// The recorders of one node.
#[derive(Debug)]
pub struct Recorders {
    /// The `convene` program, when recording is configured.
    command: Option<PathBuf>,
    /// Where recordings go, when recording is configured.
    dir: Option<PathBuf>,
    /// Most recorder processes at once.
    max: usize,
    /// Time given after SIGTERM.
    grace: Duration,
    inner: Mutex<Inner>,
    /// How many recorder processes are alive; changes when one is reaped.
    alive: watch::Sender<usize>,
}

#[derive(Debug)]
struct Inner {
    /// How to reach this node; `None` until it listens.
    target: Option<Target>,
    /// Recorder processes by meeting, from spawn until reaped.
    running: HashMap<String, Running>,
    /// Starts a minute, all meetings together.
    starts: TokenBucket,
    /// Tells one process from the next of the same meeting.
    next_id: u64,
}

#[derive(Debug)]
struct Running {
    id: u64,
    /// Fires SIGTERM; taken once sent.
    stop: Option<oneshot::Sender<()>>,
}

/// A recorder that was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The recording's name: its UTC start time, YYYYmmddTHHMMSSZ (with a
    /// `-N` suffix when that directory already exists).
    pub name: String,
    /// Where its files go.
    pub out_dir: PathBuf,
}

impl Recorders {
    /// Recorders for a node: `command` and `dir` both set or recording is
    /// unavailable; at most `max` processes, `per_minute` starts a minute.
    pub fn new(
        now: Timestamp,
        command: Option<PathBuf>,
        dir: Option<PathBuf>,
        max: u32,
        per_minute: u32,
    ) -> Self {
        let per_minute = f64::from(per_minute.max(1));
        Recorders {
            command,
            dir,
            max: max.max(1) as usize,
            grace: STOP_GRACE,
            inner: Mutex::new(Inner {
                target: None,
                running: HashMap::new(),
                starts: TokenBucket::new(now, per_minute / 60.0, per_minute),
                next_id: 0,
            }),
            alive: watch::channel(0).0,
        }
    }

    /// The same, with `grace` between SIGTERM and SIGKILL.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Says how recorders reach this node, once it listens.
    pub fn set_target(&self, target: Target) {
        self.lock().target = Some(target);
    }

    /// True when this node can start recorders.
    pub fn available(&self) -> bool {
        self.command.is_some() && self.dir.is_some()
    }

    /// How many recorder processes are alive (stopping ones included).
    pub fn running(&self) -> usize {
        self.lock().running.len()
    }

    /// True while this node has a recorder process for `meeting`.
    pub fn is_recording(&self, meeting: &str) -> bool {
        self.lock().running.contains_key(meeting)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts a recorder for `meeting`, unless a limit says no (each with
    /// its error code). `elsewhere` is true when the meeting already has a
    /// recorder this node did not start (on another node, or run by hand).
    /// Must run inside a tokio runtime.
    pub fn start(
        self: &Arc<Self>,
        now: Timestamp,
        meeting: &str,
        elsewhere: bool,
    ) -> Result<Started, ProtocolError> {
        // A meeting that is being recorded says so first, whatever this node
        // could do itself.
        if elsewhere {
            return Err(already());
        }
        let (Some(command), Some(dir)) = (&self.command, &self.dir) else {
            return Err(unavailable(
                "this server has no recorder configured (--recorder-command and --recordings-dir)",
            ));
        };
        if meeting.starts_with('.') || meeting.is_empty() {
            // `.` and `..` are valid meeting ids, and not directory names.
            return Err(ProtocolError::new(
                ErrorCode::InvalidMeetingId,
                "a meeting whose id begins with a dot cannot be recorded",
            ));
        }
        let mut inner = self.lock();
        let Some(target) = inner.target.clone() else {
            return Err(unavailable("this server is not listening yet"));
        };
        if target.auth && target.secret.is_none() {
            return Err(unavailable(
                "this server checks tokens with the issuer's keys only and cannot give a recorder a token (it needs --auth-secret)",
            ));
        }
        if inner.running.contains_key(meeting) {
            return Err(already());
        }
        if inner.running.len() >= self.max {
            return Err(ProtocolError::new(
                ErrorCode::TooManyRecorders,
                format!(
                    "this server already runs its maximum of {} recorders",
                    self.max
                ),
            ));
        }
        if !inner.starts.try_take(now, 1.0) {
            return Err(ProtocolError::new(
                ErrorCode::RateLimited,
                "this server starts no more recorders this minute",
            ));
        }
        let started = out_dir(dir, meeting, SystemTime::now())
            .map_err(|e| unavailable(&format!("cannot make the recording's directory: {e}")))?;
        let mut cmd = Command::new(command);
        cmd.arg("record")
            .arg("--server")
            .arg(&target.url)
            .arg("--meeting-id")
            .arg(meeting)
            .arg("--out")
            .arg(&started.out_dir);
        // The server's own secrets are not the recorder's business.
        for secret in INHERITED_SECRETS {
            cmd.env_remove(secret);
        }
        cmd.env_remove("CONVENE_TOKEN");
        if let Some(secret) = &target.secret
            && target.auth
        {
            let token = recorder_token(secret, meeting)
                .map_err(|e| unavailable(&format!("cannot sign the recorder's token: {e}")))?;
            // `convene record --token` reads it from here: the environment,
            // unlike the command line, is not shown to other users by `ps`.
            cmd.env("CONVENE_TOKEN", token);
        }
        if let Some(h) = &target.cert_sha256 {
            cmd.arg("--cert-sha256").arg(h);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| {
            unavailable(&format!(
                "cannot start the recorder {}: {e}",
                command.display()
            ))
        })?;
        let id = inner.next_id;
        inner.next_id += 1;
        let (stop, stopped) = oneshot::channel();
        inner.running.insert(
            meeting.to_string(),
            Running {
                id,
                stop: Some(stop),
            },
        );
        self.alive.send_replace(inner.running.len());
        drop(inner);
        let pid = child.id();
        info!(meeting, pid, out = %started.out_dir.display(), "recorder started");
        if let Some(out) = child.stdout.take() {
            tokio::spawn(log_lines(out, meeting.to_string(), pid));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(log_lines(err, meeting.to_string(), pid));
        }
        tokio::spawn(supervise(
            self.clone(),
            child,
            meeting.to_string(),
            id,
            stopped,
        ));
        Ok(started)
    }

    /// Tells this node's recorder of `meeting` to stop (SIGTERM, then
    /// SIGKILL after the grace period). False when this node runs none, or
    /// it was already told.
    pub fn stop(&self, meeting: &str) -> bool {
        let mut inner = self.lock();
        match inner.running.get_mut(meeting).and_then(|r| r.stop.take()) {
            Some(stop) => stop.send(()).is_ok(),
            None => false,
        }
    }

    /// Stops every recorder and waits until they are reaped or `deadline`.
    pub async fn stop_all(&self, deadline: tokio::time::Instant) {
        {
            let mut inner = self.lock();
            for r in inner.running.values_mut() {
                if let Some(stop) = r.stop.take() {
                    let _ = stop.send(());
                }
            }
        }
        let mut alive = self.alive.subscribe();
        let _ = tokio::time::timeout_at(deadline, alive.wait_for(|n| *n == 0)).await;
    }

    /// Resolves once no recorder process is alive.
    pub async fn idle(&self) {
        let mut alive = self.alive.subscribe();
        let _ = alive.wait_for(|n| *n == 0).await;
    }

    fn reaped(&self, meeting: &str, id: u64) {
        let mut inner = self.lock();
        if inner.running.get(meeting).is_some_and(|r| r.id == id) {
            inner.running.remove(meeting);
        }
        self.alive.send_replace(inner.running.len());
    }
}

/// Starts a recorder in `meeting` for a moderator or the operator: refused
/// when the meeting already has a recorder, on any node.
pub fn start_in(state: &AppState, meeting: &str) -> Result<Started, ProtocolError> {
    if let crate::meetings::Policy::Managed(s) = state.meetings.cache().policy(meeting)
        && !s.recording_allowed
    {
        return Err(ProtocolError::new(
            ErrorCode::RecordingUnavailable,
            "this meeting's settings do not allow recording (recording_allowed is false)",
        ));
    }
    let elsewhere = state
        .router
        .meeting(meeting)
        .is_some_and(|m| m.members.iter().any(|(p, _)| p.recording));
    let started = state.recorders.start(state.now(), meeting, elsewhere)?;
    Ok(started)
}

/// Stops the recorder of `meeting`: SIGTERM to this node's, and removal of
/// recorders connected elsewhere (another node's, or one run by hand).
/// Returns true when this node's process was told to stop.
pub fn stop_in(state: &AppState, meeting: &str) -> Result<bool, ProtocolError> {
    if state.recorders.stop(meeting) {
        return Ok(true);
    }
    let others: Vec<u32> = state
        .router
        .meeting(meeting)
        .map(|m| {
            m.members
                .iter()
                .filter(|(p, _)| p.recording)
                .map(|(p, _)| p.participant_id)
                .collect()
        })
        .unwrap_or_default();
    if others.is_empty() {
        return Err(ProtocolError::new(
            ErrorCode::NotRecording,
            "this meeting has no recorder",
        ));
    }
    for pid in others {
        let req = RoomRequest::RemoveParticipant(v1::RemoveParticipant {
            participant_id: pid,
            reason: "recording stopped".into(),
        });
        if let Some(Err(e)) = state.router.moderate(state.now(), meeting, req, 0) {
            warn!(meeting, pid, "cannot remove the recorder: {}", e.text);
        }
    }
    Ok(false)
}

fn already() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::AlreadyRecording,
        "this meeting already has a recorder (running, or still stopping)",
    )
}

fn unavailable(text: &str) -> ProtocolError {
    ProtocolError::new(ErrorCode::RecordingUnavailable, text.to_string())
}

/// Waits for the child to exit, or for a stop: SIGTERM, then SIGKILL after
/// the grace period. Reaps it either way and forgets it.
async fn supervise(
    recorders: Arc<Recorders>,
    mut child: Child,
    meeting: String,
    id: u64,
    stopped: oneshot::Receiver<()>,
) {
    let pid = child.id();
    let status = tokio::select! {
        s = child.wait() => s,
        _ = stopped => {
            if let Some(pid) = pid {
                sigterm(pid);
            }
            match tokio::time::timeout(recorders.grace, child.wait()).await {
                Ok(s) => s,
                Err(_) => {
                    warn!(meeting, pid, "the recorder did not stop in time; killed");
                    let _ = child.kill().await;
                    child.wait().await
                }
            }
        }
    };
    match status {
        Ok(s) if s.success() => info!(meeting, pid, "recorder finished"),
        Ok(s) => warn!(meeting, pid, status = %s, "recorder exited with a failure"),
        Err(e) => warn!(meeting, pid, "cannot wait for the recorder: {e}"),
    }
    recorders.reaped(&meeting, id);
}

/// Copies a recorder's output to the server's log, line by line.
async fn log_lines(out: impl AsyncRead + Unpin, meeting: String, pid: Option<u32>) {
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        info!(target: "convene_server::recorder", meeting, pid, "{line}");
    }
}

/// Sends SIGTERM to a child this module has not reaped yet (so the pid is
/// still its own).
#[allow(unsafe_code)]
fn sigterm(pid: u32) {
    // SAFETY: kill(2) has no memory effects; the pid is our unreaped child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
}

/// On Linux, the child gets SIGTERM if the server dies without reaping it
/// (a crash or SIGKILL, where `kill_on_drop` never runs). The signal comes
/// when the spawning *thread* ends: recorders are spawned from the
/// runtime's worker threads (a connection's task or an admin call), which
/// live as long as the server.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// A token for a recorder of `meeting`: `record` and `subscribe`, signed
/// with the node's secret, valid a day.
pub fn recorder_token(secret: &[u8], meeting: &str) -> Result<String, jsonwebtoken::errors::Error> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let claims = Claims {
        sub: "recorder".into(),
        name: "Recorder".into(),
        meeting: meeting.into(),
        grants: vec![
            Grant::Record.name().to_string(),
            Grant::Subscribe.name().to_string(),
        ],
        exp: now + RECORDER_TOKEN_TTL_S,
        iat: Some(now),
        ..Claims::default()
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
}

/// Makes `dir/<meeting>/<UTC time>` (or `<time>-2`, `-3`… when taken) and
/// returns it.
fn out_dir(dir: &Path, meeting: &str, at: SystemTime) -> std::io::Result<Started> {
    let stamp = utc_stamp(at);
    let parent = dir.join(meeting);
    std::fs::create_dir_all(&parent)?;
    for n in 1..100u32 {
        let name = if n == 1 {
            stamp.clone()
        } else {
            format!("{stamp}-{n}")
        };
        let out_dir = parent.join(&name);
        match std::fs::create_dir(&out_dir) {
            Ok(()) => return Ok(Started { name, out_dir }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(
        "too many recordings started this second",
    ))
}

/// `at` as YYYYmmddTHHMMSSZ, in UTC.
pub fn utc_stamp(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let t = convene_protocol::time::UtcTime::from_unix(secs);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_basic_format() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        // 2026-12-06 04:05:06 UTC.
        let t = UNIX_EPOCH + Duration::from_secs(1_796_529_906);
        assert_eq!(utc_stamp(t), "20261206T040506Z");
        // A leap day.
        let t = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_stamp(t), "20000229T000000Z");
    }

    /// A directory of its own, removed at the end of the test.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "convene-recording-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A stand-in for `convene record`, for these unit tests only: it writes
    /// its arguments to `<out>/args`, and exits 0 on SIGTERM, or never
    /// (`stubborn`) so that only SIGKILL ends it.
    fn double(dir: &Path, stubborn: bool) -> PathBuf {
        let path = dir.join(if stubborn { "stubborn.sh" } else { "record.sh" });
        let on_term = if stubborn { "''" } else { "'exit 0'" };
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\ntrap {on_term} TERM\nall=\"$*\"\nout=\n\
                 while [ $# -gt 0 ]; do [ \"$1\" = --out ] && out=$2; shift; done\n\
                 printf 'args=%s\\ntoken=%s\\n' \"$all\" \"$CONVENE_TOKEN\" > \"$out/args.tmp\" && mv \"$out/args.tmp\" \"$out/args\"\n\
                 echo recorder says hello\nwhile :; do sleep 0.05; done\n"
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn recorders(dir: &Path, command: PathBuf, max: u32, per_minute: u32) -> Arc<Recorders> {
        recorders_with_grace(dir, command, max, per_minute)
    }

    fn recorders_with_grace(
        dir: &Path,
        command: PathBuf,
        max: u32,
        per_minute: u32,
    ) -> Arc<Recorders> {
        let r = Recorders::new(
            Timestamp(0),
            Some(command),
            Some(dir.join("recordings")),
            max,
            per_minute,
        )
        .with_grace(Duration::from_millis(300));
        r.set_target(Target {
            url: "http://127.0.0.1:1".into(),
            cert_sha256: None,
            secret: None,
            auth: false,
        });
        Arc::new(r)
    }

    /// Waits (up to a generous deadline) for a file the double writes.
    async fn appears(path: &Path) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !path.exists() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never appeared",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn code(r: Result<Started, ProtocolError>) -> ErrorCode {
        r.unwrap_err().code
    }

    #[test]
    fn without_a_command_recording_is_unavailable() {
        let r = Arc::new(Recorders::new(Timestamp(0), None, None, 4, 12));
        assert!(!r.available());
        assert_eq!(
            code(r.start(Timestamp(0), "m", false)),
            ErrorCode::RecordingUnavailable
        );
    }

    #[tokio::test]
    async fn one_recorder_per_meeting_until_it_is_reaped() {
        let tmp = TempDir::new();
        let r = recorders(tmp.path(), double(tmp.path(), false), 4, 600);
        let now = Timestamp(0);
        let s = r.start(now, "m", false).unwrap();
        assert!(
            s.out_dir
                .starts_with(tmp.path().join("recordings").join("m"))
        );
        appears(&s.out_dir.join("args")).await;
        assert_eq!(code(r.start(now, "m", false)), ErrorCode::AlreadyRecording);
        // A recorder this node did not start counts too.
        assert_eq!(code(r.start(now, "n", true)), ErrorCode::AlreadyRecording);
        assert!(r.stop("m"));
        // Told once; still counted while it stops.
        assert!(!r.stop("m"));
        r.idle().await;
        assert_eq!(r.running(), 0);
        let again = r.start(now, "m", false).unwrap();
        assert_ne!(again.out_dir, s.out_dir);
        r.stop_all(tokio::time::Instant::now() + Duration::from_secs(30))
            .await;
        assert_eq!(r.running(), 0);
    }

    /// A moderator spamming Start and Stop across meetings: never more
    /// processes than the node's maximum, a stopping one included, and never
    /// more starts than the rate allows.
    #[tokio::test]
    async fn spamming_start_and_stop_is_bounded() {
        let tmp = TempDir::new();
        let r = recorders(tmp.path(), double(tmp.path(), true), 2, 3);
        let now = Timestamp(0);
        r.start(now, "a", false).unwrap();
        r.start(now, "b", false).unwrap();
        assert_eq!(code(r.start(now, "c", false)), ErrorCode::TooManyRecorders);
        // Stopping does not free a place until the process is gone (this
        // double ignores SIGTERM, so only the kill after the grace ends it).
        assert!(r.stop("a"));
        assert_eq!(code(r.start(now, "c", false)), ErrorCode::TooManyRecorders);
        assert_eq!(r.running(), 2);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while r.is_recording("a") {
            assert!(tokio::time::Instant::now() < deadline, "never reaped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The third start of the minute is the last the rate allows.
        r.start(now, "c", false).unwrap();
        assert!(r.stop("c"));
        assert!(r.stop("b"));
        r.idle().await;
        assert_eq!(code(r.start(now, "d", false)), ErrorCode::RateLimited);
        // A minute later there is room again.
        let later = Timestamp(now.0 + 60_000_000);
        r.start(later, "d", false).unwrap();
        r.stop_all(tokio::time::Instant::now() + Duration::from_secs(30))
            .await;
        assert_eq!(r.running(), 0);
    }

    #[tokio::test]
    async fn a_dotted_meeting_id_is_not_a_directory() {
        let tmp = TempDir::new();
        let r = recorders(tmp.path(), double(tmp.path(), false), 4, 600);
        assert_eq!(
            code(r.start(Timestamp(0), "..", false)),
            ErrorCode::InvalidMeetingId
        );
        assert_eq!(r.running(), 0);
    }

    #[tokio::test]
    async fn with_tokens_the_recorder_gets_one_granting_record() {
        let tmp = TempDir::new();
        let secret = b"0123456789abcdef0123456789abcdef".to_vec();
        let token = recorder_token(&secret, "m").unwrap();
        let v = crate::auth::Verifier::hs256(&secret, None, None);
        let c = v.verify(&token).unwrap();
        assert!(c.grants(Grant::Record) && c.grants(Grant::Subscribe));
        assert!(!c.grants(Grant::Moderate) && !c.grants(Grant::PublishAudio));
        assert!(c.admits("m") && !c.admits("other"));
        // Tokens on: the recorder gets its token in the environment, not
        // on the command line.
        let r = recorders(tmp.path(), double(tmp.path(), false), 4, 600);
        r.set_target(Target {
            url: "http://127.0.0.1:1".into(),
            cert_sha256: Some("ab".repeat(32)),
            secret: Some(secret.clone()),
            auth: true,
        });
        let s = r.start(Timestamp(0), "m", false).unwrap();
        appears(&s.out_dir.join("args")).await;
        let seen = std::fs::read_to_string(s.out_dir.join("args")).unwrap();
        let line = |k: &str| {
            seen.lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or_default()
                .to_string()
        };
        let given = line("token=");
        assert!(!given.is_empty(), "{seen}");
        assert!(v.verify(&given).unwrap().grants(Grant::Record));
        let argv = line("args=");
        assert!(
            !argv.contains(&given),
            "the token is not on the command line: {argv}"
        );
        assert!(
            argv.starts_with("record --server http://127.0.0.1:1 --meeting-id m --out "),
            "{argv}"
        );
        assert!(
            argv.ends_with(&format!("--cert-sha256 {}", "ab".repeat(32))),
            "{argv}"
        );
        r.stop_all(tokio::time::Instant::now() + Duration::from_secs(30))
            .await;
        // Tokens on, but no secret to sign with: unavailable, nothing spawned.
        let r = Arc::new(Recorders::new(
            Timestamp(0),
            Some(double(tmp.path(), false)),
            Some(tmp.path().join("rec")),
            4,
            12,
        ));
        r.set_target(Target {
            url: "http://127.0.0.1:1".into(),
            cert_sha256: None,
            secret: None,
            auth: true,
        });
        assert_eq!(
            code(r.start(Timestamp(0), "m", false)),
            ErrorCode::RecordingUnavailable
        );
        assert_eq!(r.running(), 0);
    }
}
