//! Meetings as managed resources: settings created, read, updated and
//! deleted through the admin API, kept in an embedded store
//! ([`store::Store`]), copied into a cache joins read ([`cache::MeetingCache`]).

pub mod cache;
pub mod settings;
pub mod store;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub use cache::{MeetingCache, Policy};
pub use settings::{
    DEFAULT_PAGE_SIZE, MAX_MANAGED_MEETINGS, MAX_PAGE_SIZE, ManagedMeeting, MeetingSettings,
    SettingsError,
};
pub use store::{Store, StoreError};

/// Why a change to managed meetings was refused.
#[derive(Debug, thiserror::Error)]
pub enum MeetingsError {
    /// The settings break a rule.
    #[error(transparent)]
    Invalid(#[from] SettingsError),
    /// No meeting with this id was created.
    #[error(
        "no meeting {0:?} was created: create it with CreateMeeting (convene admin meeting create)"
    )]
    NotFound(String),
    /// A meeting with this id exists already.
    #[error("meeting {0:?} exists already: change it with UpdateMeeting, or delete it first")]
    AlreadyExists(String),
    /// [`MAX_MANAGED_MEETINGS`] are managed already.
    #[error("the server manages its maximum of {MAX_MANAGED_MEETINGS} meetings: delete some first")]
    TooMany,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking task that writes the store did not finish.
    #[error("meeting store task failed: {0}")]
    Task(String),
}

/// The managed meetings of one server: the store and the cache in front of it.
#[derive(Debug)]
pub struct Meetings {
    /// What joins read.
    cache: Arc<MeetingCache>,
    /// The store, used only from blocking threads.
    store: Arc<Mutex<Store>>,
    /// Every meeting as stored, for the admin API's reads.
    rows: Mutex<std::collections::BTreeMap<String, ManagedMeeting>>,
    /// One change at a time, so the store, the rows and the cache change in
    /// the same order.
    writes: tokio::sync::Mutex<()>,
}

/// Seconds since the Unix epoch, by the system clock.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Meetings {
    /// Opens the store in `data_dir` (memory without one) and fills `cache`
    /// from it. Blocking: call it before serving, or from a blocking thread.
    pub fn open(data_dir: Option<&Path>, cache: Arc<MeetingCache>) -> Result<Meetings, StoreError> {
        let store = match data_dir {
            Some(d) => {
                std::fs::create_dir_all(d).map_err(|source| StoreError::DataDir {
                    dir: d.to_path_buf(),
                    source,
                })?;
                Store::open_dir(d)?
            }
            None => Store::in_memory()?,
        };
        let mut rows = std::collections::BTreeMap::new();
        for m in store.list()? {
            cache.put(&m.meeting_id, m.settings.clone());
            rows.insert(m.meeting_id.clone(), m);
        }
        Ok(Meetings {
            cache,
            store: Arc::new(Mutex::new(store)),
            rows: Mutex::new(rows),
            writes: tokio::sync::Mutex::new(()),
        })
    }

    /// The cache joins read.
    pub fn cache(&self) -> &Arc<MeetingCache> {
        &self.cache
    }

    /// One managed meeting.
    pub fn get(&self, meeting_id: &str) -> Result<ManagedMeeting, MeetingsError> {
        self.rows()
            .get(meeting_id)
            .cloned()
            .ok_or_else(|| MeetingsError::NotFound(meeting_id.to_string()))
    }

    /// Every managed meeting, sorted by id.
    pub fn list(&self) -> Vec<ManagedMeeting> {
        self.rows().values().cloned().collect()
    }

    /// At most `size` managed meetings with ids after `after` (all when
    /// empty), sorted by id, and whether more follow.
    pub fn page(&self, after: &str, size: usize) -> (Vec<ManagedMeeting>, bool) {
        use std::ops::Bound;
        let rows = self.rows();
        let start = if after.is_empty() {
            Bound::Unbounded
        } else {
            Bound::Excluded(after.to_string())
        };
        let mut it = rows
            .range((start, Bound::Unbounded))
            .map(|(_, m)| m.clone());
        let page: Vec<ManagedMeeting> = it.by_ref().take(size).collect();
        (page, it.next().is_some())
    }

    /// Creates a meeting; it is stored before this returns.
    pub async fn create(
        &self,
        meeting_id: &str,
        settings: MeetingSettings,
    ) -> Result<ManagedMeeting, MeetingsError> {
        let now = unix_now();
        settings.validate(meeting_id, now)?;
        let _w = self.writes.lock().await;
        {
            let rows = self.rows();
            if rows.contains_key(meeting_id) {
                return Err(MeetingsError::AlreadyExists(meeting_id.to_string()));
            }
            if rows.len() >= MAX_MANAGED_MEETINGS {
                return Err(MeetingsError::TooMany);
            }
        }
        let m = ManagedMeeting {
            meeting_id: meeting_id.to_string(),
            settings,
            created_at: now,
            updated_at: now,
        };
        self.write(m).await
    }

    /// Replaces a meeting's settings; they are stored before this returns.
    pub async fn update(
        &self,
        meeting_id: &str,
        settings: MeetingSettings,
    ) -> Result<ManagedMeeting, MeetingsError> {
        let now = unix_now();
        let _w = self.writes.lock().await;
        let before = self.get(meeting_id)?;
        settings.validate(meeting_id, now)?;
        let m = ManagedMeeting {
            settings,
            updated_at: now,
            ..before
        };
        self.write(m).await
    }

    /// Ends a meeting whose room stayed empty for its empty-room timeout:
    /// its expiry becomes now, stored like any update, so later joins get
    /// MEETING_EXPIRED and GetMeeting shows when it ended. Nothing happens
    /// when the meeting was deleted, or its timeout removed, meanwhile.
    pub async fn end_idle(&self, meeting_id: &str) -> Result<(), MeetingsError> {
        let now = unix_now();
        let _w = self.writes.lock().await;
        let Ok(before) = self.get(meeting_id) else {
            return Ok(());
        };
        if before.settings.empty_timeout_s == 0 || before.settings.expired(now) {
            return Ok(());
        }
        let m = ManagedMeeting {
            settings: MeetingSettings {
                expires_at: now,
                ..before.settings.clone()
            },
            updated_at: now,
            ..before
        };
        self.write(m).await.map(|_| ())
    }

    /// Deletes a meeting; a live room keeps the settings it has until it empties.
    pub async fn delete(&self, meeting_id: &str) -> Result<(), MeetingsError> {
        let _w = self.writes.lock().await;
        self.get(meeting_id)?;
        let store = self.store.clone();
        let id = meeting_id.to_string();
        tokio::task::spawn_blocking(move || lock(&store).delete(&id))
            .await
            .map_err(|e| MeetingsError::Task(e.to_string()))??;
        self.rows().remove(meeting_id);
        self.cache.remove(meeting_id);
        Ok(())
    }

    /// Stores `m`, then shows it to the admin API and to joins.
    async fn write(&self, m: ManagedMeeting) -> Result<ManagedMeeting, MeetingsError> {
        let store = self.store.clone();
        let row = m.clone();
        tokio::task::spawn_blocking(move || lock(&store).put(&row))
            .await
            .map_err(|e| MeetingsError::Task(e.to_string()))??;
        self.rows().insert(m.meeting_id.clone(), m.clone());
        self.cache.put(&m.meeting_id, m.settings.clone());
        Ok(m)
    }

    fn rows(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, ManagedMeeting>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn lock(store: &Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pages_cover_every_meeting_once_in_order() {
        let m = Meetings::open(None, Arc::new(MeetingCache::ad_hoc(Vec::new()))).unwrap();
        for id in ["c", "a", "e", "b", "d"] {
            m.create(id, MeetingSettings::default()).await.unwrap();
        }
        let ids = |p: Vec<ManagedMeeting>| p.into_iter().map(|m| m.meeting_id).collect::<Vec<_>>();
        let (p, more) = m.page("", 2);
        assert_eq!((ids(p), more), (vec!["a".to_string(), "b".into()], true));
        let (p, more) = m.page("b", 2);
        assert_eq!((ids(p), more), (vec!["c".to_string(), "d".into()], true));
        let (p, more) = m.page("d", 2);
        assert_eq!((ids(p), more), (vec!["e".to_string()], false));
        let (p, more) = m.page("e", 2);
        assert_eq!((ids(p), more), (Vec::<String>::new(), false));
    }
}
