//! The embedded store of managed meetings: one SQLite file under
//! `--data-dir`, or memory without it. Blocking calls: the server runs them
//! on a blocking thread ([`super::Meetings`]), never on a worker that moves media.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use super::settings::{ManagedMeeting, MeetingSettings};

/// The file the store keeps in `--data-dir`.
pub const FILE_NAME: &str = "convene.sqlite3";

/// The schema, one step per version: step `i` takes version `i` to `i + 1`.
/// Steps are only ever appended, and each keeps every row (add columns with
/// defaults, copy tables before changing them).
const MIGRATIONS: &[&str] = &[
    // 1: managed meetings.
    "CREATE TABLE meetings (
        meeting_id TEXT PRIMARY KEY NOT NULL,
        waiting_room INTEGER NOT NULL,
        locked INTEGER NOT NULL,
        max_participants INTEGER NOT NULL,
        e2ee_required INTEGER NOT NULL,
        recording_allowed INTEGER NOT NULL,
        empty_timeout_s INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        metadata TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );",
    // 2: attendance, one row per join (PROTOCOL.md §13, ListAttendance).
    "CREATE TABLE attendance (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        meeting_id TEXT NOT NULL,
        participant_id INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        display_name TEXT NOT NULL,
        node_id INTEGER NOT NULL,
        joined_at_ms INTEGER NOT NULL,
        left_at_ms INTEGER,
        reason TEXT
    );
    CREATE INDEX attendance_by_meeting ON attendance (meeting_id, joined_at_ms, id);
    CREATE INDEX attendance_open ON attendance (meeting_id, participant_id) WHERE left_at_ms IS NULL;
    CREATE INDEX attendance_by_left ON attendance (left_at_ms);",
    // 3: events waiting for delivery to webhook URLs, one row per event and URL.
    "CREATE TABLE webhook_outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        target TEXT NOT NULL,
        event_id TEXT NOT NULL,
        meeting_id TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE INDEX webhook_outbox_by_target ON webhook_outbox (target, seq);",
    // 4: what guests may publish (bits: 1 audio, 2 video, 4 screen), all until set.
    "ALTER TABLE meetings ADD COLUMN guest_publish INTEGER NOT NULL DEFAULT 7;",
    // 5: attendance shipped to a shared PostgreSQL: `version` grows with each
    // change of a row (a leave), `shipped_version` is the version PostgreSQL has.
    "ALTER TABLE attendance ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE attendance ADD COLUMN shipped_version INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX attendance_unshipped ON attendance (id) WHERE shipped_version <> version;",
];

/// The schema version this server writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("meeting store: {0} (check that --data-dir is writable and its disk not full)")]
    Sqlite(#[from] rusqlite::Error),
    /// `--data-dir` cannot be made.
    #[error("cannot create --data-dir {}: {source} (choose a directory the server may write)", dir.display())]
    DataDir {
        /// The directory.
        dir: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The blocking thread that opened the store failed.
    #[error("meeting store: the thread that opened it failed: {0}")]
    Task(String),
    /// PostgreSQL refused, or cannot be reached.
    #[error("meeting store (PostgreSQL): {0}")]
    Postgres(String),
    /// The file was written by a newer server.
    #[error(
        "meeting store at schema version {found}, newer than this server's {SCHEMA_VERSION}: run a newer convene-server, or restore a backup"
    )]
    TooNew {
        /// The file's version.
        found: u32,
    },
}

/// One SQLite database of managed meetings.
#[derive(Debug)]
pub struct Store {
    /// The database; the journal ([`super::journal`]) writes it too.
    pub(super) conn: Connection,
}

impl Store {
    /// Opens (or creates) the store in `dir`, applying pending migrations.
    pub fn open_dir(dir: &Path) -> Result<Store, StoreError> {
        Store::from_connection(Connection::open(dir.join(FILE_NAME))?)
    }

    /// A store in memory, gone when dropped.
    pub fn in_memory() -> Result<Store, StoreError> {
        Store::from_connection(Connection::open_in_memory()?)
    }

    fn from_connection(mut conn: Connection) -> Result<Store, StoreError> {
        // WAL: readers (a backup) never block the server's writes; NORMAL
        // sync is durable across a process crash, which is what matters here.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut conn)?;
        raise_attendance_ids(&conn, crate::events::unix_ms())?;
        Ok(Store { conn })
    }

    /// The schema version of the open file.
    pub fn version(&self) -> Result<u32, StoreError> {
        Ok(version(&self.conn)?)
    }

    /// Every managed meeting, sorted by id.
    pub fn list(&self) -> Result<Vec<ManagedMeeting>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT meeting_id, waiting_room, locked, max_participants, e2ee_required,
                    recording_allowed, empty_timeout_s, expires_at, metadata, created_at, updated_at,
                    guest_publish
             FROM meetings ORDER BY meeting_id",
        )?;
        let rows = stmt.query_map([], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// One meeting, if it exists.
    pub fn get(&self, meeting_id: &str) -> Result<Option<ManagedMeeting>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT meeting_id, waiting_room, locked, max_participants, e2ee_required,
                        recording_allowed, empty_timeout_s, expires_at, metadata, created_at, updated_at,
                    guest_publish
                 FROM meetings WHERE meeting_id = ?1",
                [meeting_id],
                row,
            )
            .optional()?)
    }

    /// Writes a meeting, replacing one with the same id.
    pub fn put(&self, m: &ManagedMeeting) -> Result<(), StoreError> {
        let s = &m.settings;
        self.conn.execute(
            "INSERT OR REPLACE INTO meetings VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                m.meeting_id,
                s.waiting_room,
                s.locked,
                s.max_participants,
                s.e2ee_required,
                s.recording_allowed,
                s.empty_timeout_s,
                // SQLite integers are signed 64-bit; a time past 2^63 s is not a time.
                i64::try_from(s.expires_at).unwrap_or(i64::MAX),
                s.metadata,
                i64::try_from(m.created_at).unwrap_or(i64::MAX),
                i64::try_from(m.updated_at).unwrap_or(i64::MAX),
                s.guest_publish.bits(),
            ],
        )?;
        Ok(())
    }

    /// Deletes a meeting; false when there was none.
    pub fn delete(&self, meeting_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM meetings WHERE meeting_id = ?1", [meeting_id])?
            > 0)
    }
}

/// Makes the next attendance id at least `now_ms * 1000`: a row's id is
/// its key in a shared PostgreSQL (with its node), so ids must not start
/// again at 1 when the store does (in memory, or a data directory wiped).
/// Ids stay unique while a node records fewer than 1000 joins a millisecond.
fn raise_attendance_ids(conn: &Connection, now_ms: u64) -> rusqlite::Result<()> {
    let floor = i64::try_from(now_ms.saturating_mul(1_000)).unwrap_or(i64::MAX / 2);
    let raised = conn.execute(
        "UPDATE sqlite_sequence SET seq = MAX(seq, ?1) WHERE name = 'attendance'",
        [floor],
    )?;
    if raised == 0 {
        conn.execute(
            "INSERT INTO sqlite_sequence (name, seq) VALUES ('attendance', ?1)",
            [floor],
        )?;
    }
    Ok(())
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ManagedMeeting> {
    Ok(ManagedMeeting {
        meeting_id: r.get(0)?,
        settings: MeetingSettings {
            waiting_room: r.get(1)?,
            locked: r.get(2)?,
            max_participants: r.get(3)?,
            e2ee_required: r.get(4)?,
            recording_allowed: r.get(5)?,
            empty_timeout_s: r.get(6)?,
            expires_at: r.get::<_, i64>(7)?.max(0) as u64,
            metadata: r.get(8)?,
            guest_publish: super::settings::GuestPublish::from_bits(r.get(11)?),
        },
        created_at: r.get::<_, i64>(9)?.max(0) as u64,
        updated_at: r.get::<_, i64>(10)?.max(0) as u64,
    })
}

fn version(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row(
        "SELECT COALESCE(MAX(version), 0) FROM schema_version",
        [],
        |r| r.get(0),
    )
}

/// Brings the file to [`SCHEMA_VERSION`], each step in its own transaction
/// with the version row that records it, so a crash leaves a known version.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY NOT NULL, applied_at INTEGER NOT NULL)",
        [],
    )?;
    let found = version(conn)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew { found });
    }
    for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(step)?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, strftime('%s','now'))",
            [i as u32 + 1],
        )?;
        tx.commit()?;
        tracing::info!(version = i + 1, "meeting store migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meeting(id: &str, metadata: &str) -> ManagedMeeting {
        ManagedMeeting {
            meeting_id: id.into(),
            settings: MeetingSettings {
                waiting_room: true,
                locked: false,
                max_participants: 2,
                e2ee_required: true,
                recording_allowed: false,
                empty_timeout_s: 300,
                expires_at: 1_900_000_000,
                metadata: metadata.into(),
                guest_publish: crate::meetings::GuestPublish::from_bits(
                    crate::meetings::GuestPublish::AUDIO,
                ),
            },
            created_at: 1_800_000_000,
            updated_at: 1_800_000_001,
        }
    }

    /// A directory of its own under the system's temporary directory.
    fn temp_dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("convene-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_empty_file_is_migrated_to_the_current_version() {
        let dir = temp_dir("empty");
        let s = Store::open_dir(&dir).unwrap();
        assert_eq!(s.version().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.list().unwrap(), vec![]);
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reopening_keeps_every_row_and_applies_nothing_twice() {
        let dir = temp_dir("reopen");
        {
            let s = Store::open_dir(&dir).unwrap();
            s.put(&meeting("a", "{\"room\":1}")).unwrap();
            s.put(&meeting("b", "")).unwrap();
        }
        let s = Store::open_dir(&dir).unwrap();
        assert_eq!(s.version().unwrap(), SCHEMA_VERSION);
        let n: u32 = s
            .conn
            .query_row("SELECT COUNT(*) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, SCHEMA_VERSION, "each migration recorded once");
        assert_eq!(
            s.list().unwrap(),
            vec![meeting("a", "{\"room\":1}"), meeting("b", "")]
        );
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn put_replaces_get_reads_delete_removes() {
        let s = Store::in_memory().unwrap();
        assert_eq!(s.get("a").unwrap(), None);
        s.put(&meeting("a", "one")).unwrap();
        s.put(&meeting("a", "two")).unwrap();
        assert_eq!(s.get("a").unwrap().unwrap().settings.metadata, "two");
        assert!(s.delete("a").unwrap());
        assert!(!s.delete("a").unwrap());
        assert_eq!(s.get("a").unwrap(), None);
    }

    #[test]
    fn a_file_from_a_newer_server_is_refused_not_rewritten() {
        let dir = temp_dir("newer");
        {
            let s = Store::open_dir(&dir).unwrap();
            s.conn
                .execute(
                    "INSERT INTO schema_version VALUES (?1, 0)",
                    [SCHEMA_VERSION + 1],
                )
                .unwrap();
        }
        let e = Store::open_dir(&dir).unwrap_err();
        assert!(
            matches!(e, StoreError::TooNew { found } if found == SCHEMA_VERSION + 1),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
