//! The one task that writes events to the store, and the one that forgets
//! old attendance. Both do their SQLite work on blocking threads.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::webhook::Webhooks;
use super::{Event, MAX_BATCH, Queued};
use crate::meetings::ship::Shipper;
use crate::meetings::{PgStore, Store, lock};

/// How often old attendance is deleted (and once at start).
pub const RETENTION_INTERVAL: Duration = Duration::from_secs(3_600);

/// A day in ms.
const DAY_MS: u64 = 86_400_000;

/// Writes what arrives on `rx` to `store`, a batch per transaction, in
/// order, until every sender is gone. A batch the store refuses is logged
/// and dropped: waiting for the disk here would fill the queue, and the
/// queue's drops are counted anyway. Each event also goes into the outbox
/// of every URL of `hooks`, in the same transaction; their deliverers are
/// woken after each batch, and so is `shipper` (attendance to PostgreSQL).
pub async fn run_writer(
    mut rx: mpsc::Receiver<Queued>,
    store: Arc<Mutex<Store>>,
    hooks: Arc<Webhooks>,
    shipper: Option<Arc<Shipper>>,
) {
    let urls = Arc::new(hooks.urls());
    let mut batch: Vec<Event> = Vec::with_capacity(MAX_BATCH);
    let mut flushes = Vec::new();
    loop {
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut next = Some(first);
        while let Some(q) = next.take() {
            match q {
                Queued::Event(e) => batch.push(e),
                Queued::Flush(done) => flushes.push(done),
            }
            if batch.len() >= MAX_BATCH {
                break;
            }
            next = rx.try_recv().ok();
        }
        if !batch.is_empty() {
            let events = std::mem::take(&mut batch);
            let store = store.clone();
            let n = events.len();
            let (hooks2, urls) = (hooks.clone(), urls.clone());
            let result = tokio::task::spawn_blocking(move || {
                let mut s = lock(&store);
                let r = s.apply_events(&events, &urls, |e| hooks2.body(e));
                if r.is_ok() && !urls.is_empty() {
                    hooks2.stored(&s, events.len() as u64);
                }
                (r, events)
            })
            .await;
            match result {
                Ok((Ok(()), mut events)) => {
                    // The allocation is kept for the next batch.
                    events.clear();
                    batch = events;
                    hooks.wake();
                    if let Some(s) = &shipper {
                        s.wake();
                    }
                }
                Ok((Err(e), _)) => {
                    warn!(events = n, error = %e, "events not recorded: the store refused them")
                }
                Err(e) => {
                    warn!(events = n, error = %e, "events not recorded: the writer's thread failed")
                }
            }
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Deletes attendance of those who left more than `days` days ago, at
/// start and every [`RETENTION_INTERVAL`], until `stop` turns true: in the
/// node's store, and in the shared PostgreSQL `pg` when there is one (every
/// node does it there too; deleting twice deletes nothing more). With
/// `days` 0 nothing is ever deleted.
pub async fn run_retention(
    store: Arc<Mutex<Store>>,
    pg: Option<PgStore>,
    days: u32,
    mut stop: watch::Receiver<bool>,
) {
    if days == 0 {
        return;
    }
    let mut tick = tokio::time::interval(RETENTION_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let cut = super::unix_ms().saturating_sub(u64::from(days) * DAY_MS);
        let store = store.clone();
        match tokio::task::spawn_blocking(move || lock(&store).attendance_delete_before(cut)).await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => info!(rows = n, days, "old attendance deleted"),
            Ok(Err(e)) => warn!(error = %e, "old attendance not deleted"),
            Err(e) => warn!(error = %e, "old attendance not deleted: the thread failed"),
        }
        if let Some(pg) = &pg {
            match pg.attendance_delete_before(cut).await {
                Ok(0) => {}
                Ok(n) => info!(rows = n, days, "old attendance deleted from PostgreSQL"),
                Err(e) => {
                    warn!(error = %e, "old attendance not deleted from PostgreSQL; tried again in an hour")
                }
            }
        }
    }
}
