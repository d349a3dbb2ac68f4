//! What a join asks of managed meetings: an in-memory copy of their
//! settings, read under a lock held for a hash lookup, so the store never
//! sits on the join path.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::settings::MeetingSettings;

/// How the server treats a meeting a participant joins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Created through the admin API: its settings rule the room. Shared,
    /// so a join copies a pointer rather than up to 4 KiB of metadata.
    Managed(Arc<MeetingSettings>),
    /// Nobody created it, and ad-hoc meetings are allowed: the server's
    /// defaults, with a waiting room when `--waiting-room` names it.
    AdHoc {
        /// `--waiting-room` names the meeting.
        waiting_room: bool,
    },
    /// Nobody created it and `--ad-hoc-meetings=false`: refused.
    Refused,
}

/// The settings of every managed meeting, as joins read them.
#[derive(Debug, Default)]
pub struct MeetingCache {
    /// Settings by meeting id.
    settings: RwLock<HashMap<String, Arc<MeetingSettings>>>,
    /// Meetings nobody created may be joined.
    ad_hoc: bool,
    /// Ad-hoc meetings with a waiting room: ids, or prefixes ending in `*`.
    waiting_rooms: Vec<String>,
}

impl MeetingCache {
    /// An empty cache: ad-hoc meetings allowed or not, and which of them get a waiting room.
    pub fn new(ad_hoc: bool, waiting_rooms: Vec<String>) -> Self {
        MeetingCache {
            settings: RwLock::new(HashMap::new()),
            ad_hoc,
            waiting_rooms,
        }
    }

    /// Every meeting ad hoc, with waiting rooms where `waiting_rooms` names them (as before meetings could be managed).
    pub fn ad_hoc(waiting_rooms: Vec<String>) -> Self {
        MeetingCache::new(true, waiting_rooms)
    }

    /// What a join of `meeting` is held to.
    pub fn policy(&self, meeting: &str) -> Policy {
        if let Some(s) = self.read().get(meeting) {
            return Policy::Managed(s.clone());
        }
        if !self.ad_hoc {
            return Policy::Refused;
        }
        Policy::AdHoc {
            waiting_room: self
                .waiting_rooms
                .iter()
                .any(|p| match p.strip_suffix('*') {
                    Some(prefix) => meeting.starts_with(prefix),
                    None => p == meeting,
                }),
        }
    }

    /// Records (or replaces) a meeting's settings.
    pub fn put(&self, meeting: &str, settings: MeetingSettings) {
        self.write().insert(meeting.to_string(), Arc::new(settings));
    }

    /// Forgets a meeting's settings.
    pub fn remove(&self, meeting: &str) {
        self.write().remove(meeting);
    }

    /// How many meetings are managed.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// True when no meeting is managed.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<MeetingSettings>>> {
        self.settings.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<MeetingSettings>>> {
        self.settings.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_settings_win_over_ad_hoc_defaults() {
        let c = MeetingCache::ad_hoc(vec!["vip-*".into(), "lobby".into()]);
        assert_eq!(c.policy("vip-1"), Policy::AdHoc { waiting_room: true });
        assert_eq!(c.policy("lobby"), Policy::AdHoc { waiting_room: true });
        assert_eq!(
            c.policy("lobby2"),
            Policy::AdHoc {
                waiting_room: false
            }
        );
        let s = MeetingSettings {
            max_participants: 2,
            ..Default::default()
        };
        c.put("vip-1", s.clone());
        assert_eq!(c.policy("vip-1"), Policy::Managed(Arc::new(s)));
        c.remove("vip-1");
        assert_eq!(c.policy("vip-1"), Policy::AdHoc { waiting_room: true });
    }

    #[test]
    fn without_ad_hoc_meetings_only_created_ones_are_joined() {
        let c = MeetingCache::new(false, vec!["*".into()]);
        assert_eq!(c.policy("x"), Policy::Refused);
        c.put("x", MeetingSettings::default());
        assert_eq!(
            c.policy("x"),
            Policy::Managed(Arc::new(MeetingSettings::default()))
        );
    }
}
