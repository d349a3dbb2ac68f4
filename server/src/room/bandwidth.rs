//! Each subscriber's bandwidth shared among its subscriptions (PROTOCOL.md
//! §6.6.3): for every member connected here with a budget (its transport's
//! estimate, bounded by its `max_receive_kbps`), the room lists what each
//! of its subscriptions costs and where it stands, and gives each
//! subscription's selector the cap [`Budget::allocate`] chose.
//!
//! Run from [`Room::route`] when something it depends on changed or every
//! [`ALLOCATE_EVERY`], so a frame pays one comparison for it; the walk
//! itself is over every subscription of the room.
//!
//! [`Budget::allocate`]: super::forward::budget::Budget::allocate

use std::collections::BTreeMap;

use convene_protocol::Timestamp;

use super::Room;
use super::forward::budget::{ALLOCATE_EVERY, DEFAULT_AUDIO_KBPS, Item, Priority};
use super::media::{Publication, Subscription};

impl Room {
    /// True when the budgets are to be shared out again: something they
    /// depend on changed, or [`ALLOCATE_EVERY`] passed (estimates move).
    pub(super) fn budget_due(&self, now: Timestamp) -> bool {
        self.budget_dirty
            || self
                .budget_at
                .is_none_or(|t| now.saturating_since(t) >= ALLOCATE_EVERY)
    }

    /// Shares out every budgeted subscriber's bandwidth among its
    /// subscriptions as of `now`.
    pub(super) fn allocate_budgets(&mut self, now: Timestamp) {
        self.budget_dirty = false;
        self.budget_at = Some(now);
        let mut budgets: BTreeMap<u32, Option<u32>> = BTreeMap::new();
        for (pid, m) in &self.members {
            let Some(l) = &m.local else {
                continue;
            };
            let asked =
                (l.sfu && m.settings.max_receive_kbps > 0).then_some(m.settings.max_receive_kbps);
            let kbps = match (l.outbox.path_kbps(), asked) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            // A member that lost its budget is visited once more, to lift its caps.
            if kbps.is_some() || m.budget.active() {
                budgets.insert(*pid, kbps);
            }
        }
        if budgets.is_empty() {
            return;
        }
        let recent: BTreeMap<u32, u32> = self
            .board
            .recent()
            .iter()
            .enumerate()
            .map(|(i, p)| (*p, i as u32))
            .collect();
        let mut items: BTreeMap<u32, Vec<Item>> =
            budgets.keys().map(|p| (*p, Vec::new())).collect();
        // Audio tracks counted per subscriber, for its loudest-N.
        let mut audio_seen: BTreeMap<u32, u8> = BTreeMap::new();
        for (publisher, m) in &self.members {
            for p in m.tracks.values() {
                let priority = priority(p, *publisher, &recent);
                for s in &p.subscribers {
                    let Some(list) = items.get_mut(&s.pid) else {
                        continue;
                    };
                    let mut it = item(p, s, priority);
                    if p.audio && s.audio_n > 0 {
                        let seen = audio_seen.entry(s.pid).or_default();
                        if *seen >= s.audio_n {
                            it.wanted = None;
                        }
                        *seen = seen.saturating_add(1);
                    }
                    list.push(it);
                }
            }
        }
        let mut caps: BTreeMap<u32, std::vec::IntoIter<u8>> = BTreeMap::new();
        for (pid, list) in &items {
            if let Some(m) = self.members.get_mut(pid) {
                let c = m.budget.allocate(now, budgets[pid], list);
                caps.insert(*pid, c.into_iter());
            }
        }
        // The same walk in the same order: each subscription takes its cap.
        for m in self.members.values_mut() {
            for p in m.tracks.values_mut() {
                for s in p.subscribers.iter_mut() {
                    if let Some(c) = caps.get_mut(&s.pid).and_then(Iterator::next) {
                        s.sel.budget_cap = c;
                    }
                }
            }
        }
    }
}

/// Where a track stands in its subscribers' budgets: audio, screen shares,
/// cameras of recent speakers (most recent first), other cameras.
fn priority(p: &Publication, publisher: u32, recent: &BTreeMap<u32, u32>) -> Priority {
    if p.audio {
        Priority::Audio
    } else if !p.camera {
        Priority::Screen
    } else if let Some(&r) = recent.get(&publisher) {
        Priority::Speaker(r)
    } else {
        Priority::Other(publisher)
    }
}

/// One subscription as the budget sees it.
fn item(p: &Publication, s: &Subscription, priority: Priority) -> Item {
    if p.audio {
        let kbps = match p.info.target_bitrate_kbps {
            0 => DEFAULT_AUDIO_KBPS,
            k => k,
        };
        return Item {
            priority,
            kbps: [kbps, 0, 0],
            count: 1,
            wanted: (!p.info.muted).then_some(0),
            cap: s.sel.budget_cap,
        };
    }
    Item {
        priority,
        kbps: p.layers.kbps,
        count: p.layers.count,
        // Muted, paused or left out by last-N: nothing is sent.
        wanted: if p.info.muted {
            None
        } else {
            s.sel.preferred(&p.layers)
        },
        cap: s.sel.budget_cap,
    }
}
