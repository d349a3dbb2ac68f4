//! The settings of a managed meeting and their validation: pure data, no
//! I/O, so the admin API, the store and the rooms agree on one set of rules.

use convene_protocol::limits::max;

/// Largest application metadata of one meeting, in bytes of UTF-8.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Longest empty-room timeout, in seconds (one week).
pub const MAX_EMPTY_TIMEOUT_S: u32 = 7 * 24 * 3600;
/// Most meetings the admin API may create on one server; beyond it,
/// CreateMeeting fails with RESOURCE_EXHAUSTED, so an application with a bug
/// (or a stolen admin token) cannot fill the disk.
pub const MAX_MANAGED_MEETINGS: usize = 10_000;

/// Most meetings in one page of ListMeetingSettings: 500 with full metadata
/// is about 2.2 MB, under gRPC's usual 4 MiB message limit.
pub const MAX_PAGE_SIZE: usize = 500;
/// Meetings in a page of ListMeetingSettings when the request names no size.
pub const DEFAULT_PAGE_SIZE: usize = 100;

/// What participants who are not moderators may publish in a meeting, on
/// top of what their tokens grant: a set of track kinds, all by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestPublish(u8);

impl GuestPublish {
    /// Audio tracks.
    pub const AUDIO: u8 = 1;
    /// Camera (video) tracks.
    pub const VIDEO: u8 = 2;
    /// Shared screens.
    pub const SCREEN: u8 = 4;
    /// Every kind: what a meeting allows unless told otherwise.
    pub const ALL: GuestPublish = GuestPublish(7);

    /// The kinds named by `bits` (other bits ignored).
    pub fn from_bits(bits: u8) -> Self {
        GuestPublish(bits & 7)
    }

    /// The kinds as bits, as the stores keep them.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Whether a track of `kind` (a `TrackKind` number) may be published.
    pub fn allows(self, kind: i32) -> bool {
        use convene_protocol::v1::TrackKind;
        let bit = match TrackKind::try_from(kind) {
            Ok(TrackKind::Audio) => Self::AUDIO,
            Ok(TrackKind::Screen) => Self::SCREEN,
            _ => Self::VIDEO,
        };
        self.0 & bit != 0
    }

    /// The kinds' names, for messages: "audio, video", or "nothing".
    pub fn names(self) -> String {
        let names: Vec<&str> = [
            (Self::AUDIO, "audio"),
            (Self::VIDEO, "video"),
            (Self::SCREEN, "screen"),
        ]
        .iter()
        .filter(|(b, _)| self.0 & b != 0)
        .map(|(_, n)| *n)
        .collect();
        if names.is_empty() {
            "nothing".into()
        } else {
            names.join(", ")
        }
    }
}

impl Default for GuestPublish {
    fn default() -> Self {
        Self::ALL
    }
}

/// What a meeting created through the admin API asks of its room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeetingSettings {
    /// Joins wait for a moderator (PROTOCOL.md §5.8).
    pub waiting_room: bool,
    /// A locked meeting refuses joins (ROOM_LOCKED).
    pub locked: bool,
    /// Most participants in the room, on every node; 0 means the server's
    /// `--max-participants-per-room`, and a larger number is capped by it.
    pub max_participants: u32,
    /// Participants must encrypt end to end: the room forwards only sealed
    /// media, and Joined tells clients so (PROTOCOL.md §14.7).
    pub e2ee_required: bool,
    /// Recording may be started in this meeting; when false, StartRecording
    /// is refused with RECORDING_UNAVAILABLE.
    pub recording_allowed: bool,
    /// Seconds the room may stay empty before the meeting ends (its expiry
    /// set to that moment); 0: the room closes at once and the meeting never
    /// ends for being empty.
    pub empty_timeout_s: u32,
    /// When the meeting expires, seconds since the Unix epoch; 0 never.
    /// From then on joins are refused (MEETING_EXPIRED).
    pub expires_at: u64,
    /// Free text for the application (often JSON), at most
    /// [`MAX_METADATA_BYTES`]; the server never reads it.
    pub metadata: String,
    /// What participants who are not moderators may publish (their
    /// tokens' grants still apply); a Publish of another kind is refused
    /// with PERMISSION_DENIED. Moderators publish what their tokens grant.
    pub guest_publish: GuestPublish,
}

/// Why settings were refused; each names the limit and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The meeting id breaks the protocol's rule (§5.3).
    #[error("meeting id must be 1 to 64 characters of A-Z a-z 0-9 . _ -")]
    MeetingId,
    /// The metadata is over [`MAX_METADATA_BYTES`].
    #[error(
        "metadata is {len} bytes; at most {MAX_METADATA_BYTES} are kept: store a reference to larger data instead"
    )]
    MetadataTooLarge {
        /// Its size.
        len: usize,
    },
    /// The participant limit is over the protocol's maximum.
    #[error(
        "max_participants is {given}; at most {} (or 0 for the server's default)",
        max::MAX_PARTICIPANTS_PER_ROOM
    )]
    TooManyParticipants {
        /// What was asked.
        given: u32,
    },
    /// The empty-room timeout is over [`MAX_EMPTY_TIMEOUT_S`].
    #[error("empty_timeout_seconds is {given}; at most {MAX_EMPTY_TIMEOUT_S} (one week)")]
    EmptyTimeoutTooLong {
        /// What was asked.
        given: u32,
    },
    /// The expiry is already past.
    #[error("expires_at {given} is in the past (now {now}); give a later time, or 0 for never")]
    ExpiryInPast {
        /// What was asked.
        given: u64,
        /// The server's clock.
        now: u64,
    },
}

impl SettingsError {
    /// A stable name for logs and tests, one per limit.
    pub fn code(&self) -> &'static str {
        match self {
            SettingsError::MeetingId => "INVALID_MEETING_ID",
            SettingsError::MetadataTooLarge { .. } => "METADATA_TOO_LARGE",
            SettingsError::TooManyParticipants { .. } => "MAX_PARTICIPANTS_TOO_HIGH",
            SettingsError::EmptyTimeoutTooLong { .. } => "EMPTY_TIMEOUT_TOO_LONG",
            SettingsError::ExpiryInPast { .. } => "EXPIRY_IN_PAST",
        }
    }
}

impl MeetingSettings {
    /// Checks the settings of `meeting_id` at wall-clock time `now_unix_s`.
    pub fn validate(&self, meeting_id: &str, now_unix_s: u64) -> Result<(), SettingsError> {
        convene_protocol::validate::meeting_id(meeting_id).map_err(|_| SettingsError::MeetingId)?;
        if self.metadata.len() > MAX_METADATA_BYTES {
            return Err(SettingsError::MetadataTooLarge {
                len: self.metadata.len(),
            });
        }
        if self.max_participants > max::MAX_PARTICIPANTS_PER_ROOM {
            return Err(SettingsError::TooManyParticipants {
                given: self.max_participants,
            });
        }
        if self.empty_timeout_s > MAX_EMPTY_TIMEOUT_S {
            return Err(SettingsError::EmptyTimeoutTooLong {
                given: self.empty_timeout_s,
            });
        }
        if self.expires_at != 0 && self.expires_at <= now_unix_s {
            return Err(SettingsError::ExpiryInPast {
                given: self.expires_at,
                now: now_unix_s,
            });
        }
        Ok(())
    }

    /// True once the expiry has passed at wall-clock time `now_unix_s`.
    pub fn expired(&self, now_unix_s: u64) -> bool {
        self.expires_at != 0 && self.expires_at <= now_unix_s
    }

    /// The participant limit of the room, given the server's own.
    pub fn room_limit(&self, server_max: u32) -> u32 {
        match self.max_participants {
            0 => server_max,
            n => n.min(server_max),
        }
    }
}

/// A managed meeting: its id, settings and when they were written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedMeeting {
    /// The meeting id.
    pub meeting_id: String,
    /// Its settings.
    pub settings: MeetingSettings,
    /// When it was created, seconds since the Unix epoch.
    pub created_at: u64,
    /// When its settings last changed, seconds since the Unix epoch.
    pub updated_at: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(MeetingSettings::default().validate("standup", NOW), Ok(()));
    }

    #[test]
    fn metadata_up_to_the_limit_is_kept_and_one_byte_more_is_refused() {
        let mut s = MeetingSettings {
            metadata: "x".repeat(MAX_METADATA_BYTES),
            ..Default::default()
        };
        assert_eq!(s.validate("m", NOW), Ok(()));
        s.metadata.push('x');
        let e = s.validate("m", NOW).unwrap_err();
        assert_eq!(
            e,
            SettingsError::MetadataTooLarge {
                len: MAX_METADATA_BYTES + 1
            }
        );
        assert_eq!(e.code(), "METADATA_TOO_LARGE");
        assert!(e.to_string().contains("4096"), "{e}");
    }

    #[test]
    fn each_bad_field_has_its_own_error() {
        let bad = |f: fn(&mut MeetingSettings)| {
            let mut s = MeetingSettings::default();
            f(&mut s);
            s.validate("m", NOW).unwrap_err().code()
        };
        assert_eq!(
            bad(|s| s.max_participants = max::MAX_PARTICIPANTS_PER_ROOM + 1),
            "MAX_PARTICIPANTS_TOO_HIGH"
        );
        assert_eq!(
            bad(|s| s.empty_timeout_s = MAX_EMPTY_TIMEOUT_S + 1),
            "EMPTY_TIMEOUT_TOO_LONG"
        );
        assert_eq!(bad(|s| s.expires_at = NOW), "EXPIRY_IN_PAST");
        let ok = MeetingSettings {
            expires_at: NOW + 1,
            ..Default::default()
        };
        assert_eq!(ok.validate("m", NOW), Ok(()));
    }

    #[test]
    fn meeting_ids_follow_the_protocol() {
        let s = MeetingSettings::default();
        assert_eq!(s.validate("", NOW), Err(SettingsError::MeetingId));
        assert_eq!(s.validate("a b", NOW), Err(SettingsError::MeetingId));
        assert_eq!(
            s.validate(&"a".repeat(65), NOW),
            Err(SettingsError::MeetingId)
        );
    }

    #[test]
    fn a_meeting_expires_at_its_second_and_never_without_one() {
        let s = MeetingSettings {
            expires_at: NOW,
            ..Default::default()
        };
        assert!(!s.expired(NOW - 1));
        assert!(s.expired(NOW));
        assert!(!MeetingSettings::default().expired(u64::MAX));
    }

    #[test]
    fn the_room_limit_never_exceeds_the_servers() {
        let s = |n| MeetingSettings {
            max_participants: n,
            ..Default::default()
        };
        assert_eq!(s(0).room_limit(100), 100);
        assert_eq!(s(2).room_limit(100), 2);
        assert_eq!(s(500).room_limit(100), 100);
    }
}
