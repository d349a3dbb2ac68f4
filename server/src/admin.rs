//! The admin API (`spec/v1/admin.proto`, PROTOCOL.md §13): the calls, every
//! one authorised by the operator's bearer token. [`crate::admin_http`]
//! serves them, over gRPC and JSON.
//! Moderation from here goes through the rooms like a moderator's request
//! (participant id [`crate::room::OPERATOR`]), so it reaches the other nodes the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use convene_admin::admin_server::Admin;
use convene_admin::{
    AttendanceRecord, CreateMeetingRequest, DeleteMeetingRequest, DeleteMeetingResponse,
    EndMeetingRequest, EndMeetingResponse, GetMeetingRequest, GetStatsRequest,
    ListAttendanceRequest, ListAttendanceResponse, ListMeetingSettingsRequest,
    ListMeetingSettingsResponse, ListMeetingsRequest, ListMeetingsResponse, ManagedMeeting,
    Meeting, MintTokenRequest, MintTokenResponse, Participant, RemoveParticipantRequest,
    RemoveParticipantResponse, StartRecordingRequest, StartRecordingResponse, Stats,
    StopRecordingRequest, StopRecordingResponse, UpdateMeetingRequest,
};
use convene_protocol::ErrorCode;
use convene_protocol::auth::{Claims, Grant};
use convene_protocol::v1::{self, Role};
use convene_protocol::{RoomRequest, limits};
use tokio::net::TcpListener;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::meetings::{self, MeetingsError};
use crate::room::MeetingSummary;
use crate::state::AppState;

/// Longest lifetime of a minted token, in seconds.
pub const MAX_TOKEN_TTL_S: u32 = 86_400;

/// Largest request message the admin API reads, in bytes (gRPC message or JSON body).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The admin service of one node.
#[derive(Debug)]
pub struct AdminService {
    state: Arc<AppState>,
    /// The HS256 secret tokens are minted with, when the node has one.
    secret: Option<Vec<u8>>,
    started: SystemTime,
}

impl AdminService {
    /// The service of the node with `state`, minting tokens with `secret`.
    pub(crate) fn new(state: Arc<AppState>, secret: Option<Vec<u8>>) -> Self {
        AdminService {
            state,
            secret,
            started: SystemTime::now(),
        }
    }
}

/// Checks the bearer token in constant time; gRPC and JSON calls alike.
pub(crate) fn authorise(metadata: &MetadataMap, expected: &str) -> Result<(), Status> {
    let Some(given) = metadata.get(convene_admin::AUTHORIZATION) else {
        return Err(Status::unauthenticated(
            "the admin API needs `authorization: Bearer <admin token>` (the server's --admin-token)",
        ));
    };
    let given = given.as_bytes();
    let expected = expected.as_bytes();
    let same = given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same {
        Ok(())
    } else {
        Err(Status::permission_denied("wrong admin token"))
    }
}

fn meeting(m: MeetingSummary) -> Meeting {
    Meeting {
        meeting_id: m.meeting_id,
        locked: m.locked,
        waiting: m.waiting as u32,
        participants: m
            .members
            .into_iter()
            .map(|(p, node)| Participant {
                participant_id: p.participant_id,
                display_name: p.display_name,
                user_id: p.user_id,
                moderator: p.role == Role::Moderator as i32,
                tracks: p.tracks.len() as u32,
                node_id: u32::from(node),
                recording: p.recording,
            })
            .collect(),
    }
}

fn no_meeting(id: &str) -> Status {
    Status::not_found(format!("no meeting {id:?} on this node"))
}

impl AdminService {
    /// Carries out a moderator action in `meeting` as the operator.
    fn moderate(&self, meeting: &str, req: RoomRequest) -> Result<MeetingSummary, Status> {
        let now = self.state.now();
        match self.state.router.moderate(now, meeting, req, 0) {
            None => Err(no_meeting(meeting)),
            Some(Ok(before)) => Ok(before),
            Some(Err(e)) if e.code == ErrorCode::UnknownParticipant => {
                Err(Status::not_found(e.text))
            }
            Some(Err(e)) => Err(Status::failed_precondition(e.text)),
        }
    }
}

/// The gRPC status of a refused StartRecording or StopRecording.
fn recording_status(e: convene_protocol::ProtocolError) -> Status {
    match e.code {
        ErrorCode::RecordingUnavailable => Status::failed_precondition(e.text),
        ErrorCode::AlreadyRecording => Status::already_exists(e.text),
        ErrorCode::NotRecording => Status::not_found(e.text),
        ErrorCode::TooManyRecorders | ErrorCode::RateLimited => Status::resource_exhausted(e.text),
        ErrorCode::InvalidMeetingId => Status::invalid_argument(e.text),
        _ => Status::internal(e.text),
    }
}

/// The gRPC status of a refused change to managed meetings.
fn meetings_status(e: MeetingsError) -> Status {
    match &e {
        MeetingsError::Invalid(_) => Status::invalid_argument(e.to_string()),
        MeetingsError::NotFound(_) => Status::not_found(e.to_string()),
        MeetingsError::AlreadyExists(_) => Status::already_exists(e.to_string()),
        MeetingsError::TooMany => Status::resource_exhausted(e.to_string()),
        MeetingsError::Store(_) | MeetingsError::Task(_) => Status::unavailable(e.to_string()),
    }
}

/// The page size a list call asked for: 0 means the default, more than the
/// maximum is refused.
fn page_size(asked: u32) -> Result<usize, Status> {
    match asked as usize {
        0 => Ok(meetings::DEFAULT_PAGE_SIZE),
        n if n > meetings::MAX_PAGE_SIZE => Err(Status::invalid_argument(format!(
            "page_size {n}: at most {}; follow next_page_token for more",
            meetings::MAX_PAGE_SIZE
        ))),
        n => Ok(n),
    }
}

/// An attendance row as the API carries it.
fn attendance_out(a: meetings::journal::Attendance) -> AttendanceRecord {
    AttendanceRecord {
        meeting_id: a.meeting_id,
        participant_id: a.participant_id,
        user_id: a.user_id,
        display_name: a.display_name,
        node_id: a.node_id,
        joined_at_ms: a.joined_at_ms,
        left_at_ms: a.left_at_ms,
        reason: a.reason.unwrap_or_default(),
    }
}

/// Settings as the API carries them, into the server's type.
fn settings_in(s: Option<convene_admin::MeetingSettings>) -> meetings::MeetingSettings {
    let s = s.unwrap_or_default();
    meetings::MeetingSettings {
        waiting_room: s.waiting_room,
        locked: s.locked,
        max_participants: s.max_participants,
        e2ee_required: s.e2ee_required,
        recording_allowed: s.recording_allowed,
        empty_timeout_s: s.empty_timeout_seconds,
        expires_at: s.expires_at,
        metadata: s.metadata,
        guest_publish: match s.guests_may_publish {
            None => meetings::GuestPublish::ALL,
            Some(k) => meetings::GuestPublish::from_bits(
                (u8::from(k.audio) * meetings::GuestPublish::AUDIO)
                    | (u8::from(k.video) * meetings::GuestPublish::VIDEO)
                    | (u8::from(k.screen) * meetings::GuestPublish::SCREEN),
            ),
        },
    }
}

/// A managed meeting as the API carries it.
fn managed_out(m: meetings::ManagedMeeting) -> ManagedMeeting {
    let s = m.settings;
    ManagedMeeting {
        meeting_id: m.meeting_id,
        settings: Some(convene_admin::MeetingSettings {
            waiting_room: s.waiting_room,
            locked: s.locked,
            max_participants: s.max_participants,
            e2ee_required: s.e2ee_required,
            recording_allowed: s.recording_allowed,
            empty_timeout_seconds: s.empty_timeout_s,
            expires_at: s.expires_at,
            metadata: s.metadata,
            // Everything allowed is what an absent field means.
            guests_may_publish: (s.guest_publish != meetings::GuestPublish::ALL).then(|| {
                let b = s.guest_publish.bits();
                convene_admin::PublishKinds {
                    audio: b & meetings::GuestPublish::AUDIO != 0,
                    video: b & meetings::GuestPublish::VIDEO != 0,
                    screen: b & meetings::GuestPublish::SCREEN != 0,
                }
            }),
        }),
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_meeting(
        &self,
        req: Request<CreateMeetingRequest>,
    ) -> Result<Response<ManagedMeeting>, Status> {
        let r = req.into_inner();
        let m = self
            .state
            .meetings
            .create(&r.meeting_id, settings_in(r.settings))
            .await
            .map_err(meetings_status)?;
        // A room opened ad hoc before the meeting was created follows it from now on.
        self.state.router.apply_settings(&m.meeting_id);
        info!(meeting = %m.meeting_id, "admin API: meeting created");
        Ok(Response::new(managed_out(m)))
    }

    async fn get_meeting(
        &self,
        req: Request<GetMeetingRequest>,
    ) -> Result<Response<ManagedMeeting>, Status> {
        let r = req.into_inner();
        let m = self
            .state
            .meetings
            .read(&r.meeting_id)
            .await
            .map_err(meetings_status)?;
        Ok(Response::new(managed_out(m)))
    }

    async fn update_meeting(
        &self,
        req: Request<UpdateMeetingRequest>,
    ) -> Result<Response<ManagedMeeting>, Status> {
        let r = req.into_inner();
        let m = self
            .state
            .meetings
            .update(&r.meeting_id, settings_in(r.settings))
            .await
            .map_err(meetings_status)?;
        self.state.router.apply_settings(&m.meeting_id);
        info!(meeting = %m.meeting_id, "admin API: meeting updated");
        Ok(Response::new(managed_out(m)))
    }

    async fn delete_meeting(
        &self,
        req: Request<DeleteMeetingRequest>,
    ) -> Result<Response<DeleteMeetingResponse>, Status> {
        let r = req.into_inner();
        self.state
            .meetings
            .delete(&r.meeting_id)
            .await
            .map_err(meetings_status)?;
        info!(meeting = %r.meeting_id, "admin API: meeting deleted");
        Ok(Response::new(DeleteMeetingResponse {}))
    }

    async fn list_meeting_settings(
        &self,
        req: Request<ListMeetingSettingsRequest>,
    ) -> Result<Response<ListMeetingSettingsResponse>, Status> {
        let r = req.into_inner();
        let size = page_size(r.page_size)?;
        let (page, more) = self
            .state
            .meetings
            .read_page(&r.page_token, size)
            .await
            .map_err(meetings_status)?;
        // The token is the last id of the page: pages stay right while
        // meetings are created and deleted between calls.
        let next_page_token = match (more, page.last()) {
            (true, Some(last)) => last.meeting_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(ListMeetingSettingsResponse {
            meetings: page.into_iter().map(managed_out).collect(),
            next_page_token,
        }))
    }

    async fn list_attendance(
        &self,
        req: Request<ListAttendanceRequest>,
    ) -> Result<Response<ListAttendanceResponse>, Status> {
        use meetings::journal::AttendanceCursor;
        let r = req.into_inner();
        convene_protocol::validate::meeting_id(&r.meeting_id).map_err(|_| {
            Status::invalid_argument(format!(
                "meeting id {:?}: 1 to 64 characters of A-Z a-z 0-9 . _ -",
                r.meeting_id
            ))
        })?;
        let size = page_size(r.page_size)?;
        let shared = self.state.meetings.shared();
        let after = if r.page_token.is_empty() {
            None
        } else {
            // A token from the other kind of listing (before or after a
            // change of --database-url) is refused, not misread.
            Some(
                AttendanceCursor::parse(&r.page_token)
                    .filter(|c| c.node_id.is_some() == shared)
                    .ok_or_else(|| {
                        Status::invalid_argument(
                            "page_token: give back a next_page_token, unchanged",
                        )
                    })?,
            )
        };
        // What happened before this call is in the answer: the writer is
        // asked to catch up first (briefly; a stuck disk answers what is
        // there), and with PostgreSQL this node's rows are shipped too.
        let wait = std::time::Duration::from_secs(2);
        let _ = tokio::time::timeout(wait, self.state.events.flush()).await;
        let (rows, more) = self
            .state
            .meetings
            .attendance_page(&r.meeting_id, after, size, wait)
            .await
            .map_err(|e| Status::unavailable(format!("attendance: {e}")))?;
        // The token is the last record's place: pages stay right while
        // people join between calls.
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => AttendanceCursor {
                joined_at_ms: last.joined_at_ms,
                node_id: shared.then_some(last.node_id),
                id: last.id,
            }
            .token(),
            _ => String::new(),
        };
        Ok(Response::new(ListAttendanceResponse {
            records: rows.into_iter().map(attendance_out).collect(),
            next_page_token,
        }))
    }

    async fn start_recording(
        &self,
        req: Request<StartRecordingRequest>,
    ) -> Result<Response<StartRecordingResponse>, Status> {
        let r = req.into_inner();
        if self.state.router.meeting(&r.meeting_id).is_none() {
            return Err(no_meeting(&r.meeting_id));
        }
        let started =
            crate::recording::start_in(&self.state, &r.meeting_id).map_err(recording_status)?;
        info!(meeting = %r.meeting_id, name = %started.name, "admin API: recording started");
        Ok(Response::new(StartRecordingResponse {
            name: started.name,
            out_dir: started.out_dir.display().to_string(),
        }))
    }

    async fn stop_recording(
        &self,
        req: Request<StopRecordingRequest>,
    ) -> Result<Response<StopRecordingResponse>, Status> {
        let r = req.into_inner();
        crate::recording::stop_in(&self.state, &r.meeting_id).map_err(recording_status)?;
        info!(meeting = %r.meeting_id, "admin API: recording stopped");
        Ok(Response::new(StopRecordingResponse {}))
    }

    async fn list_meetings(
        &self,
        _: Request<ListMeetingsRequest>,
    ) -> Result<Response<ListMeetingsResponse>, Status> {
        let meetings = self
            .state
            .router
            .meetings()
            .into_iter()
            .map(meeting)
            .collect();
        Ok(Response::new(ListMeetingsResponse { meetings }))
    }

    async fn remove_participant(
        &self,
        req: Request<RemoveParticipantRequest>,
    ) -> Result<Response<RemoveParticipantResponse>, Status> {
        let r = req.into_inner();
        if r.reason.len() > limits::max::MAX_TEXT_BYTES as usize {
            return Err(Status::invalid_argument(format!(
                "reason: at most {} bytes",
                limits::max::MAX_TEXT_BYTES
            )));
        }
        self.moderate(
            &r.meeting_id,
            RoomRequest::RemoveParticipant(v1::RemoveParticipant {
                participant_id: r.participant_id,
                reason: r.reason,
            }),
        )?;
        info!(meeting = %r.meeting_id, participant = r.participant_id, "admin API: participant removed");
        Ok(Response::new(RemoveParticipantResponse {}))
    }

    async fn end_meeting(
        &self,
        req: Request<EndMeetingRequest>,
    ) -> Result<Response<EndMeetingResponse>, Status> {
        let r = req.into_inner();
        let before = self.moderate(&r.meeting_id, RoomRequest::EndMeeting(v1::EndMeeting {}))?;
        info!(meeting = %r.meeting_id, participants = before.members.len(), "admin API: meeting ended");
        Ok(Response::new(EndMeetingResponse {
            participants: before.members.len() as u32,
        }))
    }

    async fn mint_token(
        &self,
        req: Request<MintTokenRequest>,
    ) -> Result<Response<MintTokenResponse>, Status> {
        let Some(secret) = &self.secret else {
            return Err(Status::failed_precondition(
                "this node has no HS256 secret (--auth-secret-file): tokens come from your identity provider",
            ));
        };
        let r = req.into_inner();
        if r.meeting.is_empty() || r.user_id.is_empty() {
            return Err(Status::invalid_argument("meeting and user_id are required"));
        }
        if r.ttl_seconds > MAX_TOKEN_TTL_S {
            return Err(Status::invalid_argument(format!(
                "ttl_seconds: at most {MAX_TOKEN_TTL_S}"
            )));
        }
        let grants: Vec<String> = if r.grants.is_empty() {
            Grant::ALL
                .iter()
                .filter(|g| !matches!(g, Grant::Moderate | Grant::Record))
                .map(|g| g.name().to_string())
                .collect()
        } else {
            r.grants
                .iter()
                .map(|g| {
                    Grant::from_name(g)
                        .map(|g| g.name().to_string())
                        .ok_or_else(|| {
                            let names: Vec<&str> = Grant::ALL.iter().map(|g| g.name()).collect();
                            Status::invalid_argument(format!(
                                "`{g}` is not a grant; one of {}",
                                names.join(", ")
                            ))
                        })
                })
                .collect::<Result<_, _>>()?
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Status::internal("the clock is before 1970"))?
            .as_secs();
        let ttl = if r.ttl_seconds == 0 {
            3600
        } else {
            r.ttl_seconds
        };
        let claims = Claims {
            name: if r.display_name.is_empty() {
                r.user_id.clone()
            } else {
                r.display_name
            },
            sub: r.user_id,
            meeting: r.meeting,
            grants,
            exp: now + u64::from(ttl),
            nbf: None,
            iat: Some(now),
            iss: self.state.config.auth_issuer.clone(),
            aud: self.state.config.auth_audience.as_deref().map(Into::into),
        };
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .map_err(|e| Status::internal(format!("cannot sign: {e}")))?;
        Ok(Response::new(MintTokenResponse {
            token,
            expires_at: claims.exp,
        }))
    }

    async fn get_stats(&self, _: Request<GetStatsRequest>) -> Result<Response<Stats>, Status> {
        let s = &self.state;
        let (meetings, participants) = s.router.counts();
        let sample = s.load.sample();
        let busy = s.load.busy();
        Ok(Response::new(Stats {
            version: env!("CARGO_PKG_VERSION").to_string(),
            node_id: u32::from(s.router.bus().node()),
            uptime_seconds: self.started.elapsed().map(|d| d.as_secs()).unwrap_or(0),
            meetings: meetings as u32,
            participants: participants as u32,
            connections: s.open_connections() as u32,
            frames_in: s.metrics.frames_in.get(),
            frames_out: s.metrics.frames_out.get(),
            bytes_out: s.metrics.bytes_out.get(),
            cpu_percent: sample.cpu_percent,
            egress_mbps: sample.egress_mbps,
            queue_delay_ms: sample.queue_delay_ms,
            accepting: busy.is_none() && !s.is_shutting_down(),
            busy_reason: busy.unwrap_or_default(),
        }))
    }
}

/// Binds the admin listener; fails with a clear message when the port is taken.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, crate::StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| crate::StartError::Bind { addr, source })
}
