//! Attendance made cluster-wide: each node ships the rows of its own store
//! (its journal, written by the event writer) to the shared PostgreSQL,
//! off the media path. A row is marked shipped at the version read, so a
//! leave written while it was on its way is shipped in the next round.
//! While PostgreSQL is down the rows wait in the node's store (bounded by
//! its retention) and the attempts are counted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Notify, watch};
use tracing::{debug, warn};

use super::lock;
use super::postgres::PgStore;
use super::store::{Store, StoreError};

/// Rows read from the store and written to PostgreSQL at a time.
pub const SHIP_BATCH: usize = 500;

/// How often the shipper looks for rows without being woken (and retries
/// after a failure).
pub const SHIP_INTERVAL: Duration = Duration::from_secs(2);

/// Most batches one round ships: a round ends, and lets a caller waiting
/// for it go on, even while joins keep coming.
const MAX_BATCHES: usize = 20;

/// The shipping metrics, shared with `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct ShipMetrics {
    /// Rows of this node not yet in PostgreSQL (as of the last round).
    pub unshipped: Gauge,
    /// Rounds that failed (PostgreSQL unreachable or refusing).
    pub failed: Counter,
    /// Row versions written to PostgreSQL.
    pub shipped: Counter,
}

/// Ships one node's attendance to PostgreSQL.
#[derive(Debug)]
pub struct Shipper {
    /// The node's store.
    local: Arc<Mutex<Store>>,
    /// The shared database.
    pg: PgStore,
    /// One round at a time, so rows are not read and written twice at once.
    round: tokio::sync::Mutex<()>,
    /// Rung by the event writer after each batch.
    more: Notify,
    /// Counters.
    metrics: ShipMetrics,
}

/// Why a round stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    /// The store or PostgreSQL failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blocking thread reading the store failed.
    #[error("attendance shipping thread failed: {0}")]
    Task(String),
}

impl Shipper {
    /// A shipper of `local`'s attendance to `pg`.
    pub fn new(local: Arc<Mutex<Store>>, pg: PgStore, metrics: ShipMetrics) -> Self {
        Shipper {
            local,
            pg,
            round: tokio::sync::Mutex::new(()),
            more: Notify::new(),
            metrics,
        }
    }

    /// Tells the shipper there are new rows (never blocks).
    pub fn wake(&self) {
        self.more.notify_one();
    }

    /// Ships what waits (up to [`MAX_BATCHES`] batches); how many row
    /// versions went. Rows not shipped stay for the next round.
    pub async fn ship(&self) -> Result<usize, ShipError> {
        let _one = self.round.lock().await;
        let mut total = 0;
        let result = async {
            for _ in 0..MAX_BATCHES {
                let store = self.local.clone();
                let batch = tokio::task::spawn_blocking(move || {
                    lock(&store).attendance_unshipped(SHIP_BATCH)
                })
                .await
                .map_err(|e| ShipError::Task(e.to_string()))??;
                if batch.is_empty() {
                    break;
                }
                let full = batch.len() == SHIP_BATCH;
                self.pg.upsert_attendance(&batch).await?;
                let marks: Vec<(i64, i64)> = batch.iter().map(|u| (u.row.id, u.version)).collect();
                let store = self.local.clone();
                tokio::task::spawn_blocking(move || lock(&store).attendance_mark_shipped(&marks))
                    .await
                    .map_err(|e| ShipError::Task(e.to_string()))??;
                total += batch.len();
                self.metrics.shipped.inc_by(batch.len() as u64);
                if !full {
                    break;
                }
            }
            Ok::<(), ShipError>(())
        }
        .await;
        let store = self.local.clone();
        if let Ok(Ok(n)) =
            tokio::task::spawn_blocking(move || lock(&store).attendance_unshipped_count()).await
        {
            self.metrics
                .unshipped
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        result.map(|()| total)
    }
}

/// Ships at start, whenever woken, and every [`SHIP_INTERVAL`], until
/// `stop` turns true. Failures are logged (the first of a run of them,
/// then one in ten) and counted.
pub async fn run_shipper(shipper: Arc<Shipper>, mut stop: watch::Receiver<bool>) {
    let mut failures = 0u64;
    loop {
        if *stop.borrow() {
            return;
        }
        let failed = match shipper.ship().await {
            Ok(n) => {
                if failures > 0 {
                    warn!(failures, "attendance reaches PostgreSQL again");
                }
                failures = 0;
                if n > 0 {
                    debug!(rows = n, "attendance shipped to PostgreSQL");
                }
                false
            }
            Err(e) => {
                shipper.metrics.failed.inc();
                failures += 1;
                if failures == 1 || failures.is_multiple_of(10) {
                    warn!(error = %e, failures, "attendance not shipped to PostgreSQL; it waits in this node's store and is retried");
                }
                true
            }
        };
        if failed {
            // Retried after the interval, not at each new row: a database
            // that is down is not asked again many times a second.
            tokio::select! {
                _ = tokio::time::sleep(SHIP_INTERVAL) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            continue;
        }
        tokio::select! {
            _ = shipper.more.notified() => {}
            _ = tokio::time::sleep(SHIP_INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
