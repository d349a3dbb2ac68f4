//! Meetings as managed resources: settings created, read, updated and
//! deleted through the admin API, kept in an embedded store
//! ([`store::Store`]), copied into a cache joins read ([`cache::MeetingCache`]).

pub mod cache;
pub mod journal;
pub mod pg_tls;
pub mod postgres;
pub mod settings;
pub mod ship;
pub mod store;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

pub use cache::{MeetingCache, Policy};
pub use postgres::{Change, PgStore};
pub use settings::{
    DEFAULT_PAGE_SIZE, GuestPublish, MAX_MANAGED_MEETINGS, MAX_PAGE_SIZE, ManagedMeeting,
    MeetingSettings, SettingsError,
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
    /// Where the meetings are kept.
    backend: Backend,
    /// This node's embedded store: its meetings without PostgreSQL, and
    /// always its event journal (attendance, the webhook outbox).
    local: Arc<Mutex<Store>>,
    /// Every meeting as stored, for the admin API's reads.
    rows: Mutex<std::collections::BTreeMap<String, ManagedMeeting>>,
    /// One change at a time, so the store, the rows and the cache change in
    /// the same order.
    writes: tokio::sync::Mutex<()>,
    /// With PostgreSQL: what ships this node's attendance there, once started.
    shipper: std::sync::OnceLock<Arc<ship::Shipper>>,
}

/// Where managed meetings are kept.
#[derive(Debug)]
enum Backend {
    /// The embedded store of one node, used only from blocking threads.
    Sqlite(Arc<Mutex<Store>>),
    /// The database every node of a cluster shares.
    Postgres(PgStore),
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
        let store = open_local(data_dir)?;
        let all = store.list()?;
        let local = Arc::new(Mutex::new(store));
        let meetings = Meetings {
            cache,
            backend: Backend::Sqlite(local.clone()),
            local,
            rows: Mutex::new(Default::default()),
            writes: tokio::sync::Mutex::new(()),
            shipper: std::sync::OnceLock::new(),
        };
        meetings.replace_all(all);
        Ok(meetings)
    }

    /// Opens the meetings in the PostgreSQL database at `url` (migrating
    /// it) and fills `cache` from it. Changes made by any node arrive on the
    /// returned channel: give each to [`Meetings::refresh`].
    /// The node's event journal stays in its embedded store (`data_dir`, or memory).
    /// With `sslmode=require` in `url`, the connection is TLS, trusting the
    /// system's roots and `ca`.
    pub async fn open_postgres(
        url: &str,
        ca: Vec<rustls::pki_types::CertificateDer<'static>>,
        data_dir: Option<&Path>,
        cache: Arc<MeetingCache>,
    ) -> Result<(Meetings, tokio::sync::mpsc::Receiver<Change>), StoreError> {
        let dir = data_dir.map(Path::to_path_buf);
        let local = tokio::task::spawn_blocking(move || open_local(dir.as_deref()))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        let (pg, changes) = PgStore::connect_trusting(url, ca).await?;
        let all = pg.list().await?;
        let meetings = Meetings {
            cache,
            backend: Backend::Postgres(pg),
            local: Arc::new(Mutex::new(local)),
            rows: Mutex::new(Default::default()),
            writes: tokio::sync::Mutex::new(()),
            shipper: std::sync::OnceLock::new(),
        };
        meetings.replace_all(all);
        Ok((meetings, changes))
    }

    /// True when the meetings live in a database shared by a cluster.
    pub fn shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Reads again what another node changed: one meeting, or all of them.
    /// Returns the meetings whose settings the live rooms should apply now.
    pub async fn refresh(&self, change: Change) -> Result<Vec<String>, MeetingsError> {
        let Backend::Postgres(pg) = &self.backend else {
            return Ok(Vec::new());
        };
        let _w = self.writes.lock().await;
        match change {
            Change::Meeting(id) => {
                match pg.get(&id).await? {
                    Some(m) => {
                        self.cache.put(&id, m.settings.clone());
                        self.rows().insert(id.clone(), m);
                    }
                    None => {
                        self.rows().remove(&id);
                        self.cache.remove(&id);
                    }
                }
                Ok(vec![id])
            }
            Change::Everything => {
                let all = pg.list().await?;
                let ids = all.iter().map(|m| m.meeting_id.clone()).collect();
                self.replace_all(all);
                Ok(ids)
            }
        }
    }

    /// Makes `all` the managed meetings, in the rows and the cache.
    fn replace_all(&self, all: Vec<ManagedMeeting>) {
        let mut rows = self.rows();
        let keep: std::collections::BTreeSet<&str> =
            all.iter().map(|m| m.meeting_id.as_str()).collect();
        for gone in rows.keys().filter(|id| !keep.contains(id.as_str())) {
            self.cache.remove(gone);
        }
        rows.clear();
        for m in all {
            self.cache.put(&m.meeting_id, m.settings.clone());
            rows.insert(m.meeting_id.clone(), m);
        }
    }

    /// The store, for the event journal ([`crate::events`]): lock it only
    /// on a blocking thread.
    pub fn store(&self) -> &Arc<Mutex<Store>> {
        &self.local
    }

    /// With PostgreSQL, the shipper of this node's attendance (made on the
    /// first call, counting into `metrics`); `None` without PostgreSQL.
    pub fn shipper(&self, metrics: ship::ShipMetrics) -> Option<Arc<ship::Shipper>> {
        let Backend::Postgres(pg) = &self.backend else {
            return None;
        };
        Some(
            self.shipper
                .get_or_init(|| {
                    Arc::new(ship::Shipper::new(self.local.clone(), pg.clone(), metrics))
                })
                .clone(),
        )
    }

    /// The shared database, if the meetings live in one.
    pub fn postgres(&self) -> Option<&PgStore> {
        match &self.backend {
            Backend::Postgres(pg) => Some(pg),
            Backend::Sqlite(_) => None,
        }
    }

    /// At most `size` attendance rows of `meeting_id` after `after`, and
    /// whether more follow: with PostgreSQL every node's (this node's
    /// pending rows shipped first, waiting at most `wait`), else this
    /// node's. Call after the event writer caught up.
    pub async fn attendance_page(
        &self,
        meeting_id: &str,
        after: Option<journal::AttendanceCursor>,
        size: usize,
        wait: std::time::Duration,
    ) -> Result<(Vec<journal::Attendance>, bool), MeetingsError> {
        if let Backend::Postgres(pg) = &self.backend {
            if let Some(s) = self.shipper.get() {
                match tokio::time::timeout(wait, s.ship()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "attendance listed before this node's latest rows reached PostgreSQL")
                    }
                    Err(_) => tracing::debug!(
                        "attendance listed while this node's rows are still on their way to PostgreSQL"
                    ),
                }
            }
            return Ok(pg.attendance_page(meeting_id, after, size).await?);
        }
        let store = self.local.clone();
        let meeting = meeting_id.to_string();
        Ok(
            tokio::task::spawn_blocking(move || {
                lock(&store).attendance_page(&meeting, after, size)
            })
            .await
            .map_err(|e| MeetingsError::Task(e.to_string()))??,
        )
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

    /// One managed meeting as the store has it now: in a cluster, another
    /// node may have changed it a moment ago (the cache follows too).
    pub async fn read(&self, meeting_id: &str) -> Result<ManagedMeeting, MeetingsError> {
        if let Backend::Postgres(pg) = &self.backend {
            match pg.get(meeting_id).await? {
                Some(m) => return Ok(self.show(m)),
                None => {
                    self.rows().remove(meeting_id);
                    self.cache.remove(meeting_id);
                }
            }
        }
        self.get(meeting_id)
    }

    /// Like [`Meetings::page`], from the store as it is now.
    pub async fn read_page(
        &self,
        after: &str,
        size: usize,
    ) -> Result<(Vec<ManagedMeeting>, bool), MeetingsError> {
        if let Backend::Postgres(pg) = &self.backend {
            let all = pg.list().await?;
            let _w = self.writes.lock().await;
            self.replace_all(all);
        }
        Ok(self.page(after, size))
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
        if let Backend::Postgres(pg) = &self.backend {
            // Another node may have created it: the database decides.
            if !pg.insert(&m).await? {
                return Err(MeetingsError::AlreadyExists(meeting_id.to_string()));
            }
            return Ok(self.show(m));
        }
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
        let before = self.read(meeting_id).await?;
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
        let Ok(before) = self.read(meeting_id).await else {
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
        match &self.backend {
            Backend::Sqlite(store) => {
                self.get(meeting_id)?;
                let store = store.clone();
                let id = meeting_id.to_string();
                tokio::task::spawn_blocking(move || lock(&store).delete(&id))
                    .await
                    .map_err(|e| MeetingsError::Task(e.to_string()))??;
            }
            Backend::Postgres(pg) => {
                if !pg.delete(meeting_id).await? {
                    return Err(MeetingsError::NotFound(meeting_id.to_string()));
                }
            }
        }
        self.rows().remove(meeting_id);
        self.cache.remove(meeting_id);
        Ok(())
    }

    /// Stores `m` over the meeting it replaces, then shows it to the admin
    /// API and to joins.
    async fn write(&self, m: ManagedMeeting) -> Result<ManagedMeeting, MeetingsError> {
        match &self.backend {
            Backend::Sqlite(store) => {
                let store = store.clone();
                let row = m.clone();
                tokio::task::spawn_blocking(move || lock(&store).put(&row))
                    .await
                    .map_err(|e| MeetingsError::Task(e.to_string()))??;
            }
            Backend::Postgres(pg) => {
                // Deleted on another node meanwhile: nothing to replace.
                if !pg.update(&m).await? {
                    self.rows().remove(&m.meeting_id);
                    self.cache.remove(&m.meeting_id);
                    return Err(MeetingsError::NotFound(m.meeting_id));
                }
            }
        }
        Ok(self.show(m))
    }

    /// Shows a stored meeting to the admin API and to joins.
    fn show(&self, m: ManagedMeeting) -> ManagedMeeting {
        self.rows().insert(m.meeting_id.clone(), m.clone());
        self.cache.put(&m.meeting_id, m.settings.clone());
        m
    }

    fn rows(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::BTreeMap<String, ManagedMeeting>> {
        self.rows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// This node's embedded store: in `data_dir` (created if missing), or in memory.
fn open_local(data_dir: Option<&Path>) -> Result<Store, StoreError> {
    match data_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|source| StoreError::DataDir {
                dir: d.to_path_buf(),
                source,
            })?;
            Store::open_dir(d)
        }
        None => Store::in_memory(),
    }
}

/// Locks the store, recovering from a panic elsewhere rather than spreading it.
pub fn lock(store: &Mutex<Store>) -> std::sync::MutexGuard<'_, Store> {
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
