//! Managed meetings in PostgreSQL, for clusters: every node reads and writes
//! the same table, and each change is announced with `NOTIFY` in the same
//! statement that makes it, so every node's cache (and the live rooms)
//! follow within a round trip. A node whose connection drops reconnects with
//! backoff and reloads everything, since it may have missed notifications.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{RwLock, mpsc};
use tokio_postgres::{AsyncMessage, Client, Row};

use super::pg_tls::{PgTls, PgTlsStream};

use super::journal::{Attendance, AttendanceCursor, Unshipped};
use super::settings::{GuestPublish, ManagedMeeting, MeetingSettings};
use super::store::StoreError;

/// The channel every node listens on; the payload is a meeting id.
pub const CHANNEL: &str = "convene_meetings";

/// Key of the advisory lock that lets one node at a time migrate.
const MIGRATION_LOCK: i64 = 0x636f_6e76_656e_6501;

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The schema, one step per version, appended only (as in the SQLite store).
const MIGRATIONS: &[&str] = &[
    // 1: managed meetings.
    "CREATE TABLE meetings (
        meeting_id TEXT PRIMARY KEY NOT NULL,
        waiting_room BOOLEAN NOT NULL,
        locked BOOLEAN NOT NULL,
        max_participants BIGINT NOT NULL,
        e2ee_required BOOLEAN NOT NULL,
        recording_allowed BOOLEAN NOT NULL,
        empty_timeout_s BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        metadata TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );",
    // 2: what guests may publish (bits: 1 audio, 2 video, 4 screen), all until set.
    "ALTER TABLE meetings ADD COLUMN guest_publish BIGINT NOT NULL DEFAULT 7;",
    // 3: attendance of every node, shipped from each node's own store;
    // `local_id` is the row's id there, `version` its change count there.
    "CREATE TABLE attendance (
        node_id BIGINT NOT NULL,
        local_id BIGINT NOT NULL,
        version BIGINT NOT NULL,
        meeting_id TEXT NOT NULL,
        participant_id BIGINT NOT NULL,
        user_id TEXT NOT NULL,
        display_name TEXT NOT NULL,
        joined_at_ms BIGINT NOT NULL,
        left_at_ms BIGINT,
        reason TEXT,
        PRIMARY KEY (node_id, local_id)
    );
    CREATE INDEX attendance_by_meeting ON attendance (meeting_id, joined_at_ms, node_id, local_id);
    CREATE INDEX attendance_by_left ON attendance (left_at_ms);",
];

/// The schema version this server writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

const COLUMNS: &str = "meeting_id, waiting_room, locked, max_participants, e2ee_required, \
     recording_allowed, empty_timeout_s, expires_at, metadata, created_at, updated_at, guest_publish";

/// What the listening connection tells the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// One meeting was created, changed or deleted, on some node.
    Meeting(String),
    /// The connection came back after a loss: anything may have changed.
    Everything,
}

/// Managed meetings in one PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    /// The connection, `None` while it is being re-established.
    client: Arc<RwLock<Option<Arc<Client>>>>,
}

impl PgStore {
    /// Connects to `url`, brings the schema to [`SCHEMA_VERSION`], and keeps
    /// the connection (reconnecting when it drops). Changes by any node
    /// arrive on the returned channel.
    pub async fn connect(url: &str) -> Result<(PgStore, mpsc::Receiver<Change>), StoreError> {
        PgStore::connect_trusting(url, Vec::new()).await
    }

    /// [`PgStore::connect`], trusting `ca` besides the system's roots when
    /// the URL asks for TLS (`sslmode=require`).
    pub async fn connect_trusting(
        url: &str,
        ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    ) -> Result<(PgStore, mpsc::Receiver<Change>), StoreError> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            StoreError::Postgres(format!(
                "--database-url is not a PostgreSQL connection string: {e} (e.g. postgres://convene@db.internal/convene)"
            ))
        })?;
        let tls = PgTls::for_config(&mut config, ca)
            .map_err(|e| StoreError::Postgres(format!("TLS to PostgreSQL: {e}")))?;
        let (tx, rx) = mpsc::channel(1024);
        let (client, first) = session(&config, &tls, &tx).await.map_err(connect_error)?;
        let client = Arc::new(client);
        let store = PgStore {
            client: Arc::new(RwLock::new(Some(client.clone()))),
        };
        migrate(&client).await?;
        tokio::spawn(supervise(config, tls, store.client.clone(), first, tx));
        Ok((store, rx))
    }

    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        self.client.read().await.clone().ok_or_else(|| {
            StoreError::Postgres(
                "the connection to PostgreSQL is down; the server is reconnecting".into(),
            )
        })
    }

    /// The schema version of the database.
    pub async fn version(&self) -> Result<u32, StoreError> {
        version(&*self.client().await?).await
    }

    /// Every managed meeting, sorted by id.
    pub async fn list(&self) -> Result<Vec<ManagedMeeting>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {COLUMNS} FROM meetings ORDER BY meeting_id"),
                &[],
            )
            .await
            .map_err(pg)?;
        Ok(rows.iter().map(meeting).collect())
    }

    /// One meeting, if it exists.
    pub async fn get(&self, meeting_id: &str) -> Result<Option<ManagedMeeting>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {COLUMNS} FROM meetings WHERE meeting_id = $1"),
                &[&meeting_id],
            )
            .await
            .map_err(pg)?;
        Ok(row.as_ref().map(meeting))
    }

    /// Writes a new meeting; false (and nothing written) when one with its
    /// id exists, whichever node created it.
    pub async fn insert(&self, m: &ManagedMeeting) -> Result<bool, StoreError> {
        self.write(
            &format!(
                "WITH w AS (INSERT INTO meetings ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (meeting_id) DO NOTHING RETURNING meeting_id)
                 SELECT pg_notify('{CHANNEL}', meeting_id) FROM w"
            ),
            m,
        )
        .await
    }

    /// Replaces an existing meeting; false when there is none.
    pub async fn update(&self, m: &ManagedMeeting) -> Result<bool, StoreError> {
        self.write(
            &format!(
                "WITH w AS (UPDATE meetings SET waiting_room = $2, locked = $3, max_participants = $4,
                   e2ee_required = $5, recording_allowed = $6, empty_timeout_s = $7, expires_at = $8,
                   metadata = $9, created_at = $10, updated_at = $11, guest_publish = $12
                 WHERE meeting_id = $1 RETURNING meeting_id)
                 SELECT pg_notify('{CHANNEL}', meeting_id) FROM w"
            ),
            m,
        )
        .await
    }

    /// Deletes a meeting; false when there was none.
    pub async fn delete(&self, meeting_id: &str) -> Result<bool, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!(
                    "WITH d AS (DELETE FROM meetings WHERE meeting_id = $1 RETURNING meeting_id)
                     SELECT pg_notify('{CHANNEL}', meeting_id) FROM d"
                ),
                &[&meeting_id],
            )
            .await
            .map_err(pg)?;
        Ok(!rows.is_empty())
    }

    async fn write(&self, sql: &str, m: &ManagedMeeting) -> Result<bool, StoreError> {
        let s = &m.settings;
        let rows = self
            .client()
            .await?
            .query(
                sql,
                &[
                    &m.meeting_id,
                    &s.waiting_room,
                    &s.locked,
                    &i64::from(s.max_participants),
                    &s.e2ee_required,
                    &s.recording_allowed,
                    &i64::from(s.empty_timeout_s),
                    &signed(s.expires_at),
                    &s.metadata,
                    &signed(m.created_at),
                    &signed(m.updated_at),
                    &i64::from(s.guest_publish.bits()),
                ],
            )
            .await
            .map_err(pg)?;
        Ok(!rows.is_empty())
    }
}

impl PgStore {
    /// Writes rows of this node's attendance, in one statement: new rows
    /// are added, known ones replaced unless PostgreSQL already has a later
    /// version of them (two shippers racing cannot undo a leave).
    pub async fn upsert_attendance(&self, rows: &[Unshipped]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut node = Vec::with_capacity(rows.len());
        let mut local = Vec::with_capacity(rows.len());
        let mut version = Vec::with_capacity(rows.len());
        let mut meeting_id = Vec::with_capacity(rows.len());
        let mut participant = Vec::with_capacity(rows.len());
        let mut user = Vec::with_capacity(rows.len());
        let mut name = Vec::with_capacity(rows.len());
        let mut joined = Vec::with_capacity(rows.len());
        let mut left: Vec<Option<i64>> = Vec::with_capacity(rows.len());
        let mut reason: Vec<Option<&str>> = Vec::with_capacity(rows.len());
        for u in rows {
            let a = &u.row;
            node.push(i64::from(a.node_id));
            local.push(a.id);
            version.push(u.version);
            meeting_id.push(a.meeting_id.as_str());
            participant.push(i64::from(a.participant_id));
            user.push(a.user_id.as_str());
            name.push(a.display_name.as_str());
            joined.push(signed(a.joined_at_ms));
            left.push(a.left_at_ms.map(signed));
            reason.push(a.reason.as_deref());
        }
        self.client()
            .await?
            .execute(
                "INSERT INTO attendance (node_id, local_id, version, meeting_id, participant_id,
                    user_id, display_name, joined_at_ms, left_at_ms, reason)
                 SELECT * FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::BIGINT[], $4::TEXT[],
                    $5::BIGINT[], $6::TEXT[], $7::TEXT[], $8::BIGINT[], $9::BIGINT[], $10::TEXT[])
                 ON CONFLICT (node_id, local_id) DO UPDATE SET version = EXCLUDED.version,
                    meeting_id = EXCLUDED.meeting_id, participant_id = EXCLUDED.participant_id,
                    user_id = EXCLUDED.user_id, display_name = EXCLUDED.display_name,
                    joined_at_ms = EXCLUDED.joined_at_ms, left_at_ms = EXCLUDED.left_at_ms,
                    reason = EXCLUDED.reason
                 WHERE attendance.version <= EXCLUDED.version",
                &[
                    &node,
                    &local,
                    &version,
                    &meeting_id,
                    &participant,
                    &user,
                    &name,
                    &joined,
                    &left,
                    &reason,
                ],
            )
            .await
            .map_err(pg)?;
        Ok(())
    }

    /// At most `size` attendance rows of `meeting_id`, of every node, after
    /// `after` (from the start when `None`), by join time then node and
    /// id, and whether more follow.
    pub async fn attendance_page(
        &self,
        meeting_id: &str,
        after: Option<AttendanceCursor>,
        size: usize,
    ) -> Result<(Vec<Attendance>, bool), StoreError> {
        let (t, n, id) = match after {
            Some(c) => (
                signed(c.joined_at_ms),
                i64::from(c.node_id.unwrap_or(0)),
                c.id,
            ),
            None => (-1, -1, i64::MIN),
        };
        let limit = i64::try_from(size.saturating_add(1)).unwrap_or(i64::MAX);
        let rows = self
            .client()
            .await?
            .query(
                "SELECT local_id, meeting_id, participant_id, user_id, display_name, node_id,
                        joined_at_ms, left_at_ms, reason
                 FROM attendance
                 WHERE meeting_id = $1 AND (joined_at_ms, node_id, local_id) > ($2, $3, $4)
                 ORDER BY joined_at_ms, node_id, local_id LIMIT $5",
                &[&meeting_id, &t, &n, &id, &limit],
            )
            .await
            .map_err(pg)?;
        let mut rows: Vec<Attendance> = rows
            .iter()
            .map(|r| Attendance {
                id: r.get(0),
                meeting_id: r.get(1),
                participant_id: u32::try_from(r.get::<_, i64>(2)).unwrap_or(u32::MAX),
                user_id: r.get(3),
                display_name: r.get(4),
                node_id: u32::try_from(r.get::<_, i64>(5)).unwrap_or(u32::MAX),
                joined_at_ms: unsigned(r.get(6)),
                left_at_ms: r.get::<_, Option<i64>>(7).map(unsigned),
                reason: r.get(8),
            })
            .collect();
        let more = rows.len() > size;
        rows.truncate(size);
        Ok((rows, more))
    }

    /// Closes the rows of node `node_id` still open in PostgreSQL with
    /// ids below `first_id` (the first id of this run) as `reason` at
    /// `at_ms`: a previous run of the node stopped without shipping their
    /// leaves, and its store (in memory, or lost) cannot ship them any more.
    /// How many.
    pub async fn attendance_close_stale(
        &self,
        node_id: u32,
        first_id: i64,
        at_ms: u64,
        reason: &str,
    ) -> Result<u64, StoreError> {
        self.client()
            .await?
            .execute(
                "UPDATE attendance SET left_at_ms = GREATEST(joined_at_ms, $3), reason = $4,
                        version = version + 1
                 WHERE node_id = $1 AND local_id < $2 AND left_at_ms IS NULL",
                &[&i64::from(node_id), &first_id, &signed(at_ms), &reason],
            )
            .await
            .map_err(pg)
    }

    /// Deletes the attendance of those who left before `before_ms`, every
    /// node's; rows of participants still in a meeting stay. How many went.
    pub async fn attendance_delete_before(&self, before_ms: u64) -> Result<u64, StoreError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM attendance WHERE left_at_ms IS NOT NULL AND left_at_ms < $1",
                &[&signed(before_ms)],
            )
            .await
            .map_err(pg)
    }
}

/// PostgreSQL's BIGINT is signed; a time past 2^63 s is not a time.
fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64) -> u64 {
    v.max(0) as u64
}

fn meeting(r: &Row) -> ManagedMeeting {
    ManagedMeeting {
        meeting_id: r.get(0),
        settings: MeetingSettings {
            waiting_room: r.get(1),
            locked: r.get(2),
            max_participants: u32::try_from(r.get::<_, i64>(3)).unwrap_or(u32::MAX),
            e2ee_required: r.get(4),
            recording_allowed: r.get(5),
            empty_timeout_s: u32::try_from(r.get::<_, i64>(6)).unwrap_or(u32::MAX),
            expires_at: unsigned(r.get(7)),
            metadata: r.get(8),
            guest_publish: GuestPublish::from_bits(r.get::<_, i64>(11) as u8),
        },
        created_at: unsigned(r.get(9)),
        updated_at: unsigned(r.get(10)),
    }
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(e.to_string())
}

fn connect_error(e: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(format!(
        "cannot connect to PostgreSQL: {e} (check --database-url, that the server runs and accepts this user)"
    ))
}

async fn version(client: &Client) -> Result<u32, StoreError> {
    let v: i32 = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0)::INT FROM schema_version",
            &[],
        )
        .await
        .map_err(pg)?
        .get(0);
    Ok(u32::try_from(v).unwrap_or(0))
}

/// Brings the database to [`SCHEMA_VERSION`], each step in a transaction
/// holding an advisory lock, so nodes starting together migrate once.
async fn migrate(client: &Client) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .await
        // Two nodes creating the table at once: one of them loses, and the table is there.
        .or_else(|e| match e.code() {
            Some(c) if *c == tokio_postgres::error::SqlState::UNIQUE_VIOLATION => Ok(()),
            _ => Err(e),
        })
        .map_err(pg)?;
    client.batch_execute("BEGIN").await.map_err(pg)?;
    let done = async {
        client
            .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg)?;
        let found = version(client).await?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew { found });
        }
        for (i, step) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            client.batch_execute(step).await.map_err(pg)?;
            client
                .execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES ($1, EXTRACT(EPOCH FROM now())::BIGINT)",
                    &[&(i as i32 + 1)],
                )
                .await
                .map_err(pg)?;
            tracing::info!(version = i + 1, "PostgreSQL meeting store migrated");
        }
        Ok(())
    }
    .await;
    let end = if done.is_ok() { "COMMIT" } else { "ROLLBACK" };
    client.batch_execute(end).await.map_err(pg)?;
    done
}

/// Drives one connection, passing on its notifications, until it ends.
async fn listen(
    mut connection: tokio_postgres::Connection<
        tokio_postgres::Socket,
        PgTlsStream<tokio_postgres::Socket>,
    >,
    tx: mpsc::Sender<Change>,
) {
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    // Set when a change could not be queued (the receiver is far behind):
    // everything is read again as soon as there is room, so none is lost.
    let mut missed = false;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    loop {
        let m = tokio::select! {
            m = messages.next() => match m {
                Some(m) => m,
                None => return,
            },
            _ = check.tick() => {
                if missed {
                    missed = tx.try_send(Change::Everything).is_err();
                }
                continue;
            }
        };
        match m {
            Ok(AsyncMessage::Notification(n)) if n.channel() == CHANNEL => {
                if !missed
                    && tx
                        .try_send(Change::Meeting(n.payload().to_string()))
                        .is_err()
                {
                    missed = true;
                }
            }
            Ok(AsyncMessage::Notice(n)) => tracing::debug!(notice = %n, "PostgreSQL notice"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL connection lost");
                return;
            }
        }
    }
}

/// A connection that listens for changes, passed on to `tx` by a task
/// that drives it until it ends.
async fn session(
    config: &tokio_postgres::Config,
    tls: &PgTls,
    tx: &mpsc::Sender<Change>,
) -> Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error> {
    let (client, connection) = config.connect(tls.clone()).await?;
    let task = tokio::spawn(listen(connection, tx.clone()));
    if let Err(e) = client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
        task.abort();
        return Err(e);
    }
    Ok((client, task))
}

/// Reconnects whenever the connection ends, with backoff, and asks for a
/// full reload each time it is back.
async fn supervise(
    config: tokio_postgres::Config,
    tls: PgTls,
    slot: Arc<RwLock<Option<Arc<Client>>>>,
    mut running: tokio::task::JoinHandle<()>,
    tx: mpsc::Sender<Change>,
) {
    loop {
        let _ = (&mut running).await;
        if tx.is_closed() {
            return;
        }
        *slot.write().await = None;
        let mut wait = Duration::from_millis(250);
        running = loop {
            tokio::time::sleep(wait).await;
            if tx.is_closed() {
                return;
            }
            match session(&config, &tls, &tx).await {
                Ok((client, task)) => {
                    *slot.write().await = Some(Arc::new(client));
                    tracing::info!("PostgreSQL connection back");
                    let _ = tx.send(Change::Everything).await;
                    break task;
                }
                Err(e) => tracing::warn!(error = %e, ?wait, "PostgreSQL: reconnecting"),
            }
            wait = (wait * 2).min(MAX_BACKOFF);
        };
    }
}
