//! What happened in meetings, as the store keeps it: attendance (who was in
//! a meeting, from when to when, and why they left) and the webhook outbox
//! (events stored before they are sent). Blocking calls, made only by the
//! event writer and the webhook deliverers ([`crate::events`]) and the
//! admin API's reads, all on blocking threads.

use rusqlite::{OptionalExtension, params};

use super::store::{Store, StoreError};
use crate::events::{Event, EventKind};

/// One participant's stay in a meeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attendance {
    /// The row's id: with `joined_at_ms`, the order of the list.
    pub id: i64,
    /// The meeting.
    pub meeting_id: String,
    /// The participant id the meeting knew them by.
    pub participant_id: u32,
    /// The token's subject, empty without tokens.
    pub user_id: String,
    /// The name others saw.
    pub display_name: String,
    /// The node they were connected to.
    pub node_id: u32,
    /// When they joined, ms since the Unix epoch.
    pub joined_at_ms: u64,
    /// When they left; `None` while they are in the meeting.
    pub left_at_ms: Option<u64>,
    /// Why they left (`left`, `removed`, ...); `None` while they are in.
    pub reason: Option<String>,
}

/// Where a page of attendance starts: after this (joined_at_ms, id) in
/// one node's store, or after this (joined_at_ms, node_id, id) in a
/// shared PostgreSQL, where ids are unique per node only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttendanceCursor {
    /// The last row's join time.
    pub joined_at_ms: u64,
    /// The last row's node, in a shared PostgreSQL.
    pub node_id: Option<u32>,
    /// The last row's id (in its node's store).
    pub id: i64,
}

impl AttendanceCursor {
    /// The cursor as a page token: `<joined_at_ms>.<id>`, or
    /// `<joined_at_ms>.<node_id>.<id>` with a node.
    pub fn token(&self) -> String {
        match self.node_id {
            None => format!("{}.{}", self.joined_at_ms, self.id),
            Some(n) => format!("{}.{n}.{}", self.joined_at_ms, self.id),
        }
    }

    /// A page token back into a cursor; `None` when it is not one.
    pub fn parse(token: &str) -> Option<AttendanceCursor> {
        let parts: Vec<&str> = token.splitn(4, '.').collect();
        let (t, node, id) = match parts[..] {
            [t, id] => (t, None, id),
            [t, node, id] => (t, Some(node.parse().ok()?), id),
            _ => return None,
        };
        Some(AttendanceCursor {
            joined_at_ms: t.parse().ok()?,
            node_id: node,
            id: id.parse().ok()?,
        })
    }
}

/// An attendance row not yet in PostgreSQL, at the version read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unshipped {
    /// The row.
    pub row: Attendance,
    /// Its version when read: marked shipped only if still this.
    pub version: i64,
}

/// A time as SQLite keeps it: signed, so a time past 2^63 ms is not a time.
fn ms(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

impl Store {
    /// Writes a batch of events in one transaction: joins and leaves into
    /// attendance, and every event into the outbox of each webhook URL in
    /// `targets` (with its body made by `body`).
    pub fn apply_events(
        &mut self,
        events: &[Event],
        targets: &[String],
        body: impl Fn(&Event) -> String,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        for e in events {
            if !targets.is_empty() {
                let b = body(e);
                let mut insert = tx.prepare_cached(
                    "INSERT INTO webhook_outbox (target, event_id, meeting_id, created_at_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5)",
                )?;
                for t in targets {
                    insert.execute(params![t, e.id, e.meeting_id, ms(e.at_ms), b])?;
                }
            }
            match &e.kind {
                EventKind::ParticipantJoined(w) => {
                    tx.prepare_cached(
                        "INSERT INTO attendance (meeting_id, participant_id, user_id, display_name, node_id, joined_at_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )?
                    .execute(params![
                        e.meeting_id,
                        w.participant_id,
                        w.user_id,
                        w.display_name,
                        w.node_id,
                        ms(e.at_ms)
                    ])?;
                }
                EventKind::ParticipantLeft(w, reason) => {
                    tx.prepare_cached(
                        "UPDATE attendance SET left_at_ms = ?3, reason = ?4, version = version + 1
                         WHERE meeting_id = ?1 AND participant_id = ?2 AND left_at_ms IS NULL",
                    )?
                    .execute(params![
                        e.meeting_id,
                        w.participant_id,
                        ms(e.at_ms),
                        reason.as_str()
                    ])?;
                }
                _ => {}
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Records a join.
    pub fn attendance_joined(&self, a: &Attendance) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO attendance (meeting_id, participant_id, user_id, display_name, node_id, joined_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                a.meeting_id,
                a.participant_id,
                a.user_id,
                a.display_name,
                a.node_id,
                ms(a.joined_at_ms)
            ],
        )?;
        Ok(())
    }

    /// Records a leave: closes the participant's open row in the meeting
    /// (participant ids are reused, but never while one is open). False
    /// when there was no open row.
    pub fn attendance_left(
        &self,
        meeting_id: &str,
        participant_id: u32,
        left_at_ms: u64,
        reason: &str,
    ) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "UPDATE attendance SET left_at_ms = ?3, reason = ?4, version = version + 1
             WHERE meeting_id = ?1 AND participant_id = ?2 AND left_at_ms IS NULL",
            params![meeting_id, participant_id, ms(left_at_ms), reason],
        )? > 0)
    }

    /// Closes every open row of `node_id` with `reason` at `at_ms`: at
    /// start, nobody is connected, so a row still open was left open by a
    /// server that stopped without recording its leaves. How many.
    pub fn attendance_close_open(
        &self,
        node_id: u32,
        at_ms: u64,
        reason: &str,
    ) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "UPDATE attendance SET left_at_ms = MAX(joined_at_ms, ?2), reason = ?3,
                    version = version + 1
             WHERE node_id = ?1 AND left_at_ms IS NULL",
            params![node_id, ms(at_ms), reason],
        )?)
    }

    /// At most `size` rows of `meeting_id` after `after` (from the start
    /// when `None`), by join time, and whether more follow.
    pub fn attendance_page(
        &self,
        meeting_id: &str,
        after: Option<AttendanceCursor>,
        size: usize,
    ) -> Result<(Vec<Attendance>, bool), StoreError> {
        let c = after.unwrap_or(AttendanceCursor {
            joined_at_ms: 0,
            node_id: None,
            id: i64::MIN,
        });
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, meeting_id, participant_id, user_id, display_name, node_id,
                    joined_at_ms, left_at_ms, reason
             FROM attendance
             WHERE meeting_id = ?1 AND (joined_at_ms, id) > (?2, ?3)
             ORDER BY joined_at_ms, id LIMIT ?4",
        )?;
        let limit = i64::try_from(size.saturating_add(1)).unwrap_or(i64::MAX);
        let mut rows: Vec<Attendance> = stmt
            .query_map(
                params![meeting_id, ms(c.joined_at_ms), c.id, limit],
                attendance_row,
            )?
            .collect::<Result<_, _>>()?;
        let more = rows.len() > size;
        rows.truncate(size);
        Ok((rows, more))
    }

    /// Deletes the rows of those who left before `before_ms`; rows of
    /// participants still in a meeting stay. How many went.
    pub fn attendance_delete_before(&self, before_ms: u64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM attendance WHERE left_at_ms IS NOT NULL AND left_at_ms < ?1",
            [ms(before_ms)],
        )?)
    }

    /// At most `limit` rows whose latest version is not in PostgreSQL yet,
    /// oldest first.
    pub fn attendance_unshipped(&self, limit: usize) -> Result<Vec<Unshipped>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, meeting_id, participant_id, user_id, display_name, node_id,
                    joined_at_ms, left_at_ms, reason, version
             FROM attendance WHERE shipped_version <> version ORDER BY id LIMIT ?1",
        )?;
        let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
            Ok(Unshipped {
                row: attendance_row(r)?,
                version: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks rows shipped at the versions given; a row changed since it was
    /// read (a leave written meanwhile) stays unshipped, for the next round.
    /// How many were marked.
    pub fn attendance_mark_shipped(&mut self, shipped: &[(i64, i64)]) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let mut n = 0;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE attendance SET shipped_version = ?2 WHERE id = ?1 AND version = ?2",
            )?;
            for (id, version) in shipped {
                n += stmt.execute(params![id, version])?;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// The id the next attendance row gets, at least (ids only grow).
    pub fn attendance_next_id(&self) -> Result<i64, StoreError> {
        let seq: Option<i64> = self
            .conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'attendance'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(seq.unwrap_or(0).saturating_add(1))
    }

    /// Rows whose latest version is not in PostgreSQL yet.
    pub fn attendance_unshipped_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM attendance WHERE shipped_version <> version",
            [],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    /// The open row of a participant, if any (for tests and checks).
    pub fn attendance_open(
        &self,
        meeting_id: &str,
        participant_id: u32,
    ) -> Result<Option<Attendance>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, meeting_id, participant_id, user_id, display_name, node_id,
                        joined_at_ms, left_at_ms, reason
                 FROM attendance
                 WHERE meeting_id = ?1 AND participant_id = ?2 AND left_at_ms IS NULL",
                params![meeting_id, participant_id],
                attendance_row,
            )
            .optional()?)
    }
}

/// One event waiting for delivery to one URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Its place in the URL's queue.
    pub seq: i64,
    /// The event's id.
    pub event_id: String,
    /// The JSON body to POST.
    pub body: String,
}

impl Store {
    /// The oldest `limit` events waiting for `target`, oldest first.
    pub fn outbox_next(&self, target: &str, limit: usize) -> Result<Vec<Pending>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, event_id, body FROM webhook_outbox WHERE target = ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![target, i64::try_from(limit).unwrap_or(i64::MAX)],
            |r| {
                Ok(Pending {
                    seq: r.get(0)?,
                    event_id: r.get(1)?,
                    body: r.get(2)?,
                })
            },
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets delivered events; how many were still there (the bound may
    /// have dropped some meanwhile).
    pub fn outbox_delete(&mut self, target: &str, seqs: &[i64]) -> Result<usize, StoreError> {
        let tx = self.conn.transaction()?;
        let mut n = 0;
        {
            let mut stmt =
                tx.prepare_cached("DELETE FROM webhook_outbox WHERE target = ?1 AND seq = ?2")?;
            for s in seqs {
                n += stmt.execute(params![target, s])?;
            }
        }
        tx.commit()?;
        Ok(n)
    }

    /// Events waiting for `target`.
    pub fn outbox_count(&self, target: &str) -> Result<u64, StoreError> {
        let n: i64 = self.conn.query_row(
            "SELECT COUNT(*) FROM webhook_outbox WHERE target = ?1",
            [target],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }

    /// Drops the oldest events of `target` until at most `keep` wait; how many went.
    pub fn outbox_trim(&self, target: &str, keep: u64) -> Result<usize, StoreError> {
        let over = self.outbox_count(target)?.saturating_sub(keep);
        if over == 0 {
            return Ok(0);
        }
        Ok(self.conn.execute(
            "DELETE FROM webhook_outbox WHERE seq IN
                (SELECT seq FROM webhook_outbox WHERE target = ?1 ORDER BY seq LIMIT ?2)",
            params![target, i64::try_from(over).unwrap_or(i64::MAX)],
        )?)
    }

    /// Drops the events of URLs no longer configured; how many went.
    pub fn outbox_forget_others(&self, targets: &[String]) -> Result<usize, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT target FROM webhook_outbox")?;
        let found: Vec<String> = stmt
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let mut n = 0;
        for t in found.iter().filter(|t| !targets.contains(t)) {
            n += self
                .conn
                .execute("DELETE FROM webhook_outbox WHERE target = ?1", [t])?;
        }
        Ok(n)
    }
}

fn attendance_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Attendance> {
    Ok(Attendance {
        id: r.get(0)?,
        meeting_id: r.get(1)?,
        participant_id: r.get(2)?,
        user_id: r.get(3)?,
        display_name: r.get(4)?,
        node_id: r.get(5)?,
        joined_at_ms: r.get::<_, i64>(6)?.max(0) as u64,
        left_at_ms: r.get::<_, Option<i64>>(7)?.map(|t| t.max(0) as u64),
        reason: r.get(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed clock: 2026-01-01T00:00:00Z in ms.
    const T0: u64 = 1_767_225_600_000;
    const DAY_MS: u64 = 86_400_000;

    fn joined(meeting: &str, pid: u32, at: u64) -> Attendance {
        Attendance {
            id: 0,
            meeting_id: meeting.into(),
            participant_id: pid,
            user_id: format!("user-{pid}"),
            display_name: format!("Name {pid}"),
            node_id: 0,
            joined_at_ms: at,
            left_at_ms: None,
            reason: None,
        }
    }

    fn pids(rows: &[Attendance]) -> Vec<u32> {
        rows.iter().map(|a| a.participant_id).collect()
    }

    #[test]
    fn a_leave_closes_the_open_row_and_reused_ids_get_rows_of_their_own() {
        let s = Store::in_memory().unwrap();
        s.attendance_joined(&joined("m", 7, T0)).unwrap();
        assert!(s.attendance_left("m", 7, T0 + 1_000, "left").unwrap());
        assert!(
            !s.attendance_left("m", 7, T0 + 2_000, "removed").unwrap(),
            "a closed row stays as it was"
        );
        s.attendance_joined(&joined("m", 7, T0 + 3_000)).unwrap();
        let (rows, more) = s.attendance_page("m", None, 10).unwrap();
        assert!(!more);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].left_at_ms, Some(T0 + 1_000));
        assert_eq!(rows[0].reason.as_deref(), Some("left"));
        assert_eq!(rows[0].user_id, "user-7");
        assert_eq!(rows[0].display_name, "Name 7");
        assert_eq!(
            (rows[1].left_at_ms, rows[1].reason.as_deref()),
            (None, None)
        );
        assert_eq!(
            s.attendance_open("m", 7).unwrap().map(|a| a.joined_at_ms),
            Some(T0 + 3_000)
        );
    }

    #[test]
    fn pages_follow_join_time_and_cover_every_row_once() {
        let s = Store::in_memory().unwrap();
        // Out of order, two at the same time, and another meeting between.
        for (pid, at) in [(3, T0 + 30), (1, T0 + 10), (2, T0 + 20), (4, T0 + 20)] {
            s.attendance_joined(&joined("m", pid, at)).unwrap();
            s.attendance_joined(&joined("other", pid, at)).unwrap();
        }
        let (p1, more) = s.attendance_page("m", None, 2).unwrap();
        assert_eq!((pids(&p1), more), (vec![1, 2], true));
        let c = AttendanceCursor {
            joined_at_ms: p1[1].joined_at_ms,
            node_id: None,
            id: p1[1].id,
        };
        let c = AttendanceCursor::parse(&c.token()).expect("a token parses back");
        let (p2, more) = s.attendance_page("m", Some(c), 2).unwrap();
        assert_eq!((pids(&p2), more), (vec![4, 3], false));
        assert_eq!(s.attendance_page("none", None, 2).unwrap(), (vec![], false));
        for bad in ["", "1", "x.1", "1.y", "1.2.3.4", "1.x.3", "1.-1.3"] {
            assert_eq!(AttendanceCursor::parse(bad), None, "{bad:?}");
        }
        let with_node = AttendanceCursor {
            joined_at_ms: 5,
            node_id: Some(2),
            id: 7,
        };
        assert_eq!(AttendanceCursor::parse(&with_node.token()), Some(with_node));
    }

    #[test]
    fn retention_deletes_only_rows_that_ended_before_the_cut() {
        let s = Store::in_memory().unwrap();
        s.attendance_joined(&joined("m", 1, T0)).unwrap();
        s.attendance_left("m", 1, T0 + DAY_MS, "left").unwrap();
        s.attendance_joined(&joined("m", 2, T0)).unwrap();
        s.attendance_left("m", 2, T0 + 40 * DAY_MS, "removed")
            .unwrap();
        // Still in the meeting, however long ago they joined.
        s.attendance_joined(&joined("m", 3, T0)).unwrap();
        let now = T0 + 45 * DAY_MS;
        assert_eq!(s.attendance_delete_before(now - 30 * DAY_MS).unwrap(), 1);
        let (rows, _) = s.attendance_page("m", None, 10).unwrap();
        assert_eq!(pids(&rows), vec![2, 3]);
        assert_eq!(s.attendance_delete_before(now - 30 * DAY_MS).unwrap(), 0);
    }

    fn event(n: u64, kind: EventKind) -> Event {
        Event {
            id: format!("0-1-{n}"),
            meeting_id: "m".into(),
            at_ms: T0 + n,
            kind,
        }
    }

    #[test]
    fn events_go_to_every_url_in_order_and_the_bound_drops_the_oldest() {
        let mut s = Store::in_memory().unwrap();
        let targets = vec!["http://a/".to_string(), "http://b/".to_string()];
        let events: Vec<Event> = (1..=5)
            .map(|n| event(n, EventKind::MeetingStarted))
            .collect();
        s.apply_events(&events, &targets, |e| format!("body {}", e.id))
            .unwrap();
        let ids = |p: Vec<Pending>| p.into_iter().map(|p| p.event_id).collect::<Vec<_>>();
        let a = s.outbox_next("http://a/", 10).unwrap();
        assert_eq!(a[0].body, "body 0-1-1");
        assert_eq!(
            ids(a.clone()),
            ["0-1-1", "0-1-2", "0-1-3", "0-1-4", "0-1-5"]
        );
        // Delivered to a: gone from a only.
        assert_eq!(
            s.outbox_delete("http://a/", &[a[0].seq, a[1].seq]).unwrap(),
            2
        );
        assert_eq!(s.outbox_delete("http://a/", &[a[0].seq]).unwrap(), 0);
        assert_eq!(s.outbox_count("http://a/").unwrap(), 3);
        assert_eq!(s.outbox_count("http://b/").unwrap(), 5);
        // b may keep 2: the 3 oldest go.
        assert_eq!(s.outbox_trim("http://b/", 2).unwrap(), 3);
        assert_eq!(
            ids(s.outbox_next("http://b/", 10).unwrap()),
            ["0-1-4", "0-1-5"]
        );
        assert_eq!(s.outbox_trim("http://b/", 2).unwrap(), 0);
        // b is no longer configured.
        assert_eq!(s.outbox_forget_others(&targets[..1]).unwrap(), 2);
        assert_eq!(s.outbox_count("http://a/").unwrap(), 3);
        // Without URLs, nothing is queued.
        s.apply_events(&events, &[], |_| unreachable!()).unwrap();
        assert_eq!(s.outbox_count("http://a/").unwrap(), 3);
    }

    #[test]
    fn a_row_changed_after_it_was_read_for_shipping_is_shipped_again() {
        let mut s = Store::in_memory().unwrap();
        s.attendance_joined(&joined("m", 1, T0)).unwrap();
        s.attendance_joined(&joined("m", 2, T0 + 1)).unwrap();
        let read = s.attendance_unshipped(500).unwrap();
        assert_eq!(
            pids(&read.iter().map(|u| u.row.clone()).collect::<Vec<_>>()),
            [1, 2]
        );
        assert!(
            read[0].row.id >= 1_000,
            "ids start high: {}",
            read[0].row.id
        );
        // 1 leaves while the rows are on their way to PostgreSQL.
        s.attendance_left("m", 1, T0 + 5, "left").unwrap();
        let marks: Vec<(i64, i64)> = read.iter().map(|u| (u.row.id, u.version)).collect();
        assert_eq!(
            s.attendance_mark_shipped(&marks).unwrap(),
            1,
            "only 2 is as read"
        );
        let again = s.attendance_unshipped(500).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].row.participant_id, 1);
        assert_eq!(again[0].row.reason.as_deref(), Some("left"));
        assert!(again[0].version > read[0].version);
        assert_eq!(s.attendance_unshipped_count().unwrap(), 1);
        s.attendance_mark_shipped(&[(again[0].row.id, again[0].version)])
            .unwrap();
        assert_eq!(s.attendance_unshipped(500).unwrap(), vec![]);
        assert_eq!(s.attendance_unshipped_count().unwrap(), 0);
        // Closed at a restart: a change like a leave, for 2 (shipped open)
        // and 3 (never shipped).
        s.attendance_joined(&joined("m", 3, T0 + 9)).unwrap();
        s.attendance_close_open(0, T0 + 10, "server_stopped")
            .unwrap();
        let closed = s.attendance_unshipped(500).unwrap();
        assert_eq!(
            pids(&closed.iter().map(|u| u.row.clone()).collect::<Vec<_>>()),
            [2, 3]
        );
        assert!(closed.iter().all(|u| u.row.left_at_ms == Some(T0 + 10)));
        // A bounded read.
        for pid in 10..20 {
            s.attendance_joined(&joined("m", pid, T0 + 20)).unwrap();
        }
        assert_eq!(s.attendance_unshipped(4).unwrap().len(), 4);
    }

    #[test]
    fn ids_never_start_again_when_the_store_does() {
        let first = Store::in_memory().unwrap();
        first.attendance_joined(&joined("m", 1, T0)).unwrap();
        let (a, _) = first.attendance_page("m", None, 1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = Store::in_memory().unwrap();
        second.attendance_joined(&joined("m", 1, T0)).unwrap();
        let (b, _) = second.attendance_page("m", None, 1).unwrap();
        assert!(b[0].id > a[0].id, "{} then {}", a[0].id, b[0].id);
        assert_eq!(second.attendance_next_id().unwrap(), b[0].id + 1);
    }

    #[test]
    fn rows_left_open_by_a_stopped_server_are_closed_at_start() {
        let s = Store::in_memory().unwrap();
        s.attendance_joined(&joined("m", 1, T0)).unwrap();
        s.attendance_joined(&joined("m", 2, T0)).unwrap();
        s.attendance_left("m", 2, T0 + 5, "left").unwrap();
        assert_eq!(
            s.attendance_close_open(0, T0 + 100, "server_stopped")
                .unwrap(),
            1
        );
        let (rows, _) = s.attendance_page("m", None, 10).unwrap();
        assert_eq!(rows[0].left_at_ms, Some(T0 + 100));
        assert_eq!(rows[0].reason.as_deref(), Some("server_stopped"));
        assert_eq!(rows[1].reason.as_deref(), Some("left"));
    }
}
