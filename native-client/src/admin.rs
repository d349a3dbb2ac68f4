//! `convene admin`: the operator's side of a server node's admin API (gRPC,
//! `spec/v1/admin.proto`, plain on loopback or over TLS, mutual or not): list meetings, remove a participant, end a
//! meeting, mint a token, show the node's stats, start and stop a recorder,
//! create, show, change and delete managed meetings, and list who attended one.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use convene_admin::admin_client::AdminClient;
use convene_admin::connect::ClientTls;
use convene_admin::{
    AttendanceRecord, CreateMeetingRequest, DeleteMeetingRequest, EndMeetingRequest,
    GetMeetingRequest, GetStatsRequest, ListAttendanceRequest, ListMeetingSettingsRequest,
    ListMeetingsRequest, ManagedMeeting, MeetingSettings, MintTokenRequest,
    RemoveParticipantRequest, StartRecordingRequest, StopRecordingRequest, UpdateMeetingRequest,
};
use tonic::metadata::MetadataValue;

/// `convene admin` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct AdminArgs {
    /// The node's admin API (its --admin-listen): http:// for a plain
    /// listener on loopback, https:// for one with --admin-tls-cert.
    #[arg(
        long,
        alias = "server",
        env = "CONVENE_ADMIN_URL",
        default_value = "http://127.0.0.1:9444"
    )]
    url: String,
    /// Trust the CA certificates in this PEM file for an https:// URL
    /// (default: the system's roots).
    #[arg(long, env = "CONVENE_ADMIN_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Show this client certificate chain (PEM) to a server with
    /// --admin-client-ca (mutual TLS).
    #[arg(long, env = "CONVENE_ADMIN_CLIENT_CERT", requires = "client_key")]
    client_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "CONVENE_ADMIN_CLIENT_KEY", requires = "client_cert")]
    client_key: Option<PathBuf>,
    /// The admin token the server was given; prefer the environment.
    #[arg(long, env = "CONVENE_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// The meetings on this node, with their participants.
    Meetings,
    /// Remove a participant from a meeting (they see Goodbye REMOVED).
    Remove {
        /// The meeting id.
        meeting: String,
        /// The participant id (from `convene admin meetings`).
        participant: u32,
        /// Shown to the removed participant.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// End a meeting for everyone in it.
    End {
        /// The meeting id.
        meeting: String,
    },
    /// Mint a token with the node's HS256 secret.
    MintToken {
        /// The meeting: an id, or a prefix ending in `*`.
        #[arg(long)]
        meeting: String,
        /// The user id (`sub`).
        #[arg(long)]
        user: String,
        /// The display name others see (default: the user id).
        #[arg(long, default_value = "")]
        name: String,
        /// Grants, comma-separated (default: all but moderate).
        #[arg(long, value_delimiter = ',')]
        grants: Vec<String>,
        /// Lifetime in seconds, at most 86400.
        #[arg(long, default_value_t = 3600)]
        ttl: u32,
    },
    /// The node's counters and load.
    Stats,
    /// Start or stop a recorder in a meeting (PROTOCOL.md §5.10); the node
    /// runs it with its --recorder-command.
    Record {
        #[command(subcommand)]
        action: RecordAction,
    },
    /// Managed meetings: created with their settings before anyone joins,
    /// kept by the server (across restarts with its --data-dir), and obeyed
    /// by their rooms. A meeting nobody created works with the server's
    /// defaults, unless it runs with --ad-hoc-meetings=false.
    Meeting {
        #[command(subcommand)]
        action: MeetingAction,
    },
}

#[derive(Debug, clap::Subcommand)]
enum MeetingAction {
    /// Create a meeting with its settings (the ones not given are off, or
    /// the server's defaults).
    Create {
        /// The meeting id: 1 to 64 characters of A-Z a-z 0-9 . _ -
        meeting_id: String,
        #[command(flatten)]
        settings: SettingsFlags,
    },
    /// Show a meeting's settings.
    Get {
        /// The meeting id.
        meeting_id: String,
    },
    /// Change the settings given, keep the others; the live room follows at
    /// once (a lock refuses the next join; nobody in the room is removed).
    Update {
        /// The meeting id.
        meeting_id: String,
        #[command(flatten)]
        settings: SettingsFlags,
    },
    /// Delete a meeting; its live room keeps its settings until it empties.
    Delete {
        /// The meeting id.
        meeting_id: String,
    },
    /// Every managed meeting with its settings.
    List,
    /// Who was in a meeting (managed or ad hoc) on this node: one line per
    /// join, by join time, with when they left and why; those still in have
    /// no left time.
    Attendance {
        /// The meeting id.
        meeting_id: String,
    },
}

/// Settings of a managed meeting, each optional: what is not given is left
/// as it is (update) or off (create). Switches take `true` or `false`, and
/// alone mean `true`.
#[derive(Debug, clap::Args)]
struct SettingsFlags {
    /// Joins wait until a moderator admits them.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    waiting_room: Option<bool>,
    /// Refuse every join (ROOM_LOCKED); participants in the room hear it.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    locked: Option<bool>,
    /// Most participants; 0 for the server's --max-participants-per-room,
    /// which also caps it. A join over it gets ROOM_FULL.
    #[arg(long)]
    max_participants: Option<u32>,
    /// Participants must encrypt end to end: clients are told to, and the
    /// server forwards only encrypted media (E2EE_REQUIRED otherwise).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    e2ee_required: Option<bool>,
    /// Recording may be started; without it StartRecording is refused.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    recording_allowed: Option<bool>,
    /// Seconds the meeting may stay empty, at most 604800; then it ends
    /// (later joins get MEETING_EXPIRED). 0 or absent: never for that.
    #[arg(long)]
    empty_timeout: Option<u32>,
    /// When the meeting expires, seconds since the Unix epoch; 0 for never.
    /// Joins are refused after it (MEETING_EXPIRED); those in the room stay.
    #[arg(long)]
    expires_at: Option<u64>,
    /// Text for your application, at most 4096 bytes; the server never reads it.
    #[arg(long)]
    metadata: Option<String>,
    /// What participants who are not moderators may publish, comma-separated:
    /// audio, video, screen, or none (e.g. a webinar: --guests-may-publish none);
    /// their tokens' grants still apply. Default: everything.
    #[arg(long, value_delimiter = ',', value_parser = ["audio", "video", "screen", "none", "all"])]
    guests_may_publish: Option<Vec<String>>,
}

impl SettingsFlags {
    /// `s` with the flags given applied.
    fn apply(self, mut s: MeetingSettings) -> MeetingSettings {
        if let Some(v) = self.waiting_room {
            s.waiting_room = v;
        }
        if let Some(v) = self.locked {
            s.locked = v;
        }
        if let Some(v) = self.max_participants {
            s.max_participants = v;
        }
        if let Some(v) = self.e2ee_required {
            s.e2ee_required = v;
        }
        if let Some(v) = self.recording_allowed {
            s.recording_allowed = v;
        }
        if let Some(v) = self.empty_timeout {
            s.empty_timeout_seconds = v;
        }
        if let Some(v) = self.expires_at {
            s.expires_at = v;
        }
        if let Some(v) = self.metadata {
            s.metadata = v;
        }
        if let Some(kinds) = self.guests_may_publish {
            let has = |k: &str| kinds.iter().any(|x| x == k || x == "all");
            s.guests_may_publish = Some(convene_admin::PublishKinds {
                audio: has("audio"),
                video: has("video"),
                screen: has("screen"),
            });
        }
        s
    }
}

/// A managed meeting as JSON.
/// What guests may publish, as words: "audio,video,screen" when absent (everything).
fn guest_kinds(s: &MeetingSettings) -> String {
    let k = s.guests_may_publish.unwrap_or(convene_admin::PublishKinds {
        audio: true,
        video: true,
        screen: true,
    });
    let names: Vec<&str> = [(k.audio, "audio"), (k.video, "video"), (k.screen, "screen")]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

fn meeting_json(m: &ManagedMeeting) -> serde_json::Value {
    let s = m.settings.clone().unwrap_or_default();
    serde_json::json!({
        "meeting_id": m.meeting_id,
        "waiting_room": s.waiting_room,
        "locked": s.locked,
        "max_participants": s.max_participants,
        "e2ee_required": s.e2ee_required,
        "recording_allowed": s.recording_allowed,
        "empty_timeout_seconds": s.empty_timeout_seconds,
        "expires_at": s.expires_at,
        "metadata": s.metadata,
        "guests_may_publish": guest_kinds(&s),
        "created_at": m.created_at,
        "updated_at": m.updated_at,
    })
}

/// Prints a managed meeting, as JSON or as one `key value` line per field.
/// A meeting's attendance: JSON, or a table with times in UTC.
fn print_attendance(meeting_id: &str, records: &[AttendanceRecord], json: bool) {
    if json {
        let v: Vec<serde_json::Value> = records
            .iter()
            .map(|r| {
                serde_json::json!({
                    "meeting_id": r.meeting_id,
                    "participant_id": r.participant_id,
                    "user_id": r.user_id,
                    "display_name": r.display_name,
                    "node_id": r.node_id,
                    "joined_at_ms": r.joined_at_ms,
                    "left_at_ms": r.left_at_ms,
                    "reason": if r.left_at_ms.is_some() { Some(&r.reason) } else { None },
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return;
    }
    if records.is_empty() {
        println!("no attendance recorded for {meeting_id}");
        return;
    }
    println!(
        "{:>11}  {:<20}  {:<20}  {:>4}  {:<20}  {:<20}  REASON",
        "PARTICIPANT", "USER", "NAME", "NODE", "JOINED (UTC)", "LEFT (UTC)"
    );
    for r in records {
        println!(
            "{:>11}  {:<20}  {:<20}  {:>4}  {:<20}  {:<20}  {}",
            r.participant_id,
            r.user_id,
            r.display_name,
            r.node_id,
            utc_time(r.joined_at_ms),
            r.left_at_ms.map_or_else(|| "-".to_string(), utc_time),
            if r.left_at_ms.is_some() {
                r.reason.as_str()
            } else {
                "(in the meeting)"
            },
        );
    }
}

/// Milliseconds since the Unix epoch as `YYYY-mm-dd HH:MM:SS`, in UTC.
fn utc_time(ms: u64) -> String {
    let t = convene_protocol::time::UtcTime::from_unix(ms / 1_000);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

fn print_meeting(m: &ManagedMeeting, json: bool) {
    let v = meeting_json(m);
    if json {
        println!("{v}");
    } else if let serde_json::Value::Object(map) = v {
        for (k, val) in map {
            println!("{k:>22}  {val}");
        }
    }
}

#[derive(Debug, clap::Subcommand)]
enum RecordAction {
    /// Start a recorder in a meeting this node serves.
    Start {
        /// The meeting id.
        #[arg(long)]
        meeting_id: String,
    },
    /// Stop the meeting's recorder (it finishes its files and leaves).
    Stop {
        /// The meeting id.
        #[arg(long)]
        meeting_id: String,
    },
}

pub(crate) async fn run(args: AdminArgs) -> anyhow::Result<std::process::ExitCode> {
    let https = args.url.starts_with("https://");
    let tls_files = args.ca_cert.is_some() || args.client_cert.is_some();
    if tls_files && !https {
        anyhow::bail!(
            "--ca-cert and --client-cert are for TLS: give an https:// --url (the server runs with --admin-tls-cert)"
        );
    }
    let tls = if https {
        let client = args.client_cert.as_deref().zip(args.client_key.as_deref());
        Some(ClientTls::new(args.ca_cert.as_deref(), client, &[b"h2"])?)
    } else {
        None
    };
    let channel = convene_admin::connect::channel(&args.url, tls, Duration::from_secs(30))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "{e} (is the server running with --admin-token-file? over https://, does --ca-cert name the CA of its certificate?)"
            )
        })?;
    let bearer: MetadataValue<_> = format!("Bearer {}", args.token)
        .parse()
        .context("the admin token has characters a header cannot carry")?;
    let mut client = AdminClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut()
            .insert(convene_admin::AUTHORIZATION, bearer.clone());
        Ok(req)
    });
    let url = args.url.clone();
    let url = url.as_str();
    let status = move |e: tonic::Status| {
        // A Status with a source is a connection that failed, not an answer:
        // over TLS its causes (an unknown CA, a missing client certificate)
        // are in the chain.
        let mut chain = String::new();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            // Layers often repeat their cause's text: keep it once.
            if !chain.contains(&text) && !e.message().contains(&text) {
                chain = format!("{chain}: {text}");
            }
            source = s.source();
        }
        if chain.is_empty() {
            anyhow::anyhow!("{:?}: {}", e.code(), e.message())
        } else {
            let hint = if https {
                " (a server with --admin-client-ca wants --client-cert and --client-key)"
            } else {
                ""
            };
            anyhow::anyhow!(
                "cannot reach the admin API at {url}: {}{chain}{hint}",
                e.message()
            )
        }
    };
    match args.action {
        Action::Meetings => {
            let r = client
                .list_meetings(ListMeetingsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if args.json {
                let v: Vec<serde_json::Value> = r
                    .meetings
                    .iter()
                    .map(|m| {
                        serde_json::json!({
                            "meeting_id": m.meeting_id,
                            "locked": m.locked,
                            "waiting": m.waiting,
                            "participants": m.participants.iter().map(|p| serde_json::json!({
                                "participant_id": p.participant_id,
                                "display_name": p.display_name,
                                "user_id": p.user_id,
                                "moderator": p.moderator,
                                "tracks": p.tracks,
                                "node_id": p.node_id,
                                "recording": p.recording,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else if r.meetings.is_empty() {
                println!("no meetings");
            } else {
                for m in &r.meetings {
                    println!(
                        "{}  {} participant(s){}{}",
                        m.meeting_id,
                        m.participants.len(),
                        if m.locked { ", locked" } else { "" },
                        if m.waiting > 0 {
                            format!(", {} waiting", m.waiting)
                        } else {
                            String::new()
                        }
                    );
                    for p in &m.participants {
                        println!(
                            "  {:>10}  {}{}  {} track(s)  node {}{}{}",
                            p.participant_id,
                            p.display_name,
                            if p.user_id.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", p.user_id)
                            },
                            p.tracks,
                            p.node_id,
                            if p.moderator { "  moderator" } else { "" },
                            if p.recording { "  recording" } else { "" }
                        );
                    }
                }
            }
        }
        Action::Remove {
            meeting,
            participant,
            reason,
        } => {
            client
                .remove_participant(RemoveParticipantRequest {
                    meeting_id: meeting.clone(),
                    participant_id: participant,
                    reason,
                })
                .await
                .map_err(status)?;
            println!("removed participant {participant} from {meeting}");
        }
        Action::End { meeting } => {
            let r = client
                .end_meeting(EndMeetingRequest {
                    meeting_id: meeting.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("ended {meeting} for {} participant(s)", r.participants);
        }
        Action::MintToken {
            meeting,
            user,
            name,
            grants,
            ttl,
        } => {
            let r = client
                .mint_token(MintTokenRequest {
                    meeting,
                    user_id: user,
                    display_name: name,
                    grants,
                    ttl_seconds: ttl,
                })
                .await
                .map_err(status)?
                .into_inner();
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"token": r.token, "expires_at": r.expires_at})
                );
            } else {
                println!("{}", r.token);
            }
        }
        Action::Record {
            action: RecordAction::Start { meeting_id },
        } => {
            let r = client
                .start_recording(StartRecordingRequest {
                    meeting_id: meeting_id.clone(),
                })
                .await
                .map_err(status)?
                .into_inner();
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({"meeting_id": meeting_id, "name": r.name, "out_dir": r.out_dir})
                );
            } else {
                println!(
                    "recording {meeting_id} as {} into {} (on the server's machine)",
                    r.name, r.out_dir
                );
            }
        }
        Action::Record {
            action: RecordAction::Stop { meeting_id },
        } => {
            client
                .stop_recording(StopRecordingRequest {
                    meeting_id: meeting_id.clone(),
                })
                .await
                .map_err(status)?;
            println!("the recorder of {meeting_id} was told to stop");
        }
        Action::Meeting { action } => match action {
            MeetingAction::Create {
                meeting_id,
                settings,
            } => {
                let m = client
                    .create_meeting(CreateMeetingRequest {
                        meeting_id,
                        settings: Some(settings.apply(MeetingSettings::default())),
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                print_meeting(&m, args.json);
            }
            MeetingAction::Get { meeting_id } => {
                let m = client
                    .get_meeting(GetMeetingRequest { meeting_id })
                    .await
                    .map_err(status)?
                    .into_inner();
                print_meeting(&m, args.json);
            }
            MeetingAction::Update {
                meeting_id,
                settings,
            } => {
                // The API replaces all settings: start from the stored ones.
                let now = client
                    .get_meeting(GetMeetingRequest {
                        meeting_id: meeting_id.clone(),
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                let m = client
                    .update_meeting(UpdateMeetingRequest {
                        meeting_id,
                        settings: Some(settings.apply(now.settings.unwrap_or_default())),
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                print_meeting(&m, args.json);
            }
            MeetingAction::Delete { meeting_id } => {
                client
                    .delete_meeting(DeleteMeetingRequest {
                        meeting_id: meeting_id.clone(),
                    })
                    .await
                    .map_err(status)?;
                println!("deleted meeting {meeting_id}");
            }
            MeetingAction::List => {
                let mut all = Vec::new();
                let mut page_token = String::new();
                loop {
                    let r = client
                        .list_meeting_settings(ListMeetingSettingsRequest {
                            page_size: 0,
                            page_token,
                        })
                        .await
                        .map_err(status)?
                        .into_inner();
                    all.extend(r.meetings);
                    if r.next_page_token.is_empty() {
                        break;
                    }
                    page_token = r.next_page_token;
                }
                if args.json {
                    let v: Vec<_> = all.iter().map(meeting_json).collect();
                    println!("{}", serde_json::Value::Array(v));
                } else if all.is_empty() {
                    println!("no managed meetings");
                } else {
                    for m in &all {
                        println!("{}", meeting_json(m));
                    }
                }
            }
            MeetingAction::Attendance { meeting_id } => {
                let mut all = Vec::new();
                let mut page_token = String::new();
                loop {
                    let r = client
                        .list_attendance(ListAttendanceRequest {
                            meeting_id: meeting_id.clone(),
                            page_size: 0,
                            page_token,
                        })
                        .await
                        .map_err(status)?
                        .into_inner();
                    all.extend(r.records);
                    if r.next_page_token.is_empty() {
                        break;
                    }
                    page_token = r.next_page_token;
                }
                print_attendance(&meeting_id, &all, args.json);
            }
        },
        Action::Stats => {
            let s = client
                .get_stats(GetStatsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            let v = serde_json::json!({
                "version": s.version,
                "node_id": s.node_id,
                "uptime_seconds": s.uptime_seconds,
                "meetings": s.meetings,
                "participants": s.participants,
                "connections": s.connections,
                "frames_in": s.frames_in,
                "frames_out": s.frames_out,
                "bytes_out": s.bytes_out,
                "cpu_percent": s.cpu_percent,
                "egress_mbps": s.egress_mbps,
                "queue_delay_ms": s.queue_delay_ms,
                "accepting": s.accepting,
                "busy_reason": s.busy_reason,
            });
            if args.json {
                println!("{v}");
            } else if let serde_json::Value::Object(map) = v {
                for (k, val) in map {
                    println!("{k:>16}  {val}");
                }
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::utc_time;

    #[test]
    fn times_are_shown_in_utc() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00");
        assert_eq!(utc_time(1_767_225_599_999), "2025-12-31 23:59:59");
        assert_eq!(utc_time(1_709_210_096_000), "2024-02-29 12:34:56");
    }
}
