//! Connection slots: how many connections the server holds open, in which
//! stage, and for whom.
//!
//! Two pools (PROTOCOL.md §11.5):
//!
//! - **Handshaking**: every connection from its accept (TCP, or QUIC) until
//!   its `Hello` is accepted, which with tokens means a valid token. Small:
//!   at most `max_handshaking` in all and `max_handshaking_per_addr` from one
//!   address. When the pool is full, the oldest handshaking connection is
//!   closed to make room: an honest client gets through in a few round
//!   trips, so a flood must keep opening connections faster than that to
//!   shut anyone out, and cannot hold a slot for the handshake timeout.
//! - **Sessions**: established sessions, at most `max_sessions` in all and
//!   `max_sessions_per_addr` from one address; a `Hello` beyond either is
//!   answered `TOO_MANY_CONNECTIONS`. Connections that never authenticate
//!   never take one.
//!
//! Addresses are counted by IPv4 address or IPv6 /64 prefix (one host
//! usually holds a whole /64). This module has no IO: whoever owns a
//! connection passes an [`Evict`] that closes it.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use convene_protocol::{ErrorCode, ProtocolError};

/// Closes a handshaking connection that lost its slot to a newer one.
pub trait Evict: Send + Sync {
    /// Close the connection; its slot is already free.
    fn evict(&self);
}

/// The sizes of both pools.
#[derive(Debug, Clone, Copy)]
pub struct SlotLimits {
    /// Connections not yet past Hello, in all.
    pub max_handshaking: usize,
    /// Connections not yet past Hello, from one address.
    pub max_handshaking_per_addr: usize,
    /// Established sessions, in all.
    pub max_sessions: usize,
    /// Established sessions from one address.
    pub max_sessions_per_addr: usize,
}

/// An address as the limits count it: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddrKey(u128);

impl AddrKey {
    /// The key of `ip`: IPv4 (also when mapped into IPv6) as itself, IPv6 by its /64.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => AddrKey(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey(u128::from(u32::from(v4))),
                None => AddrKey(u128::from(v6) & !((1u128 << 64) - 1)),
            },
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    handshaking: usize,
    sessions: usize,
}

#[derive(Default)]
struct Inner {
    handshaking: usize,
    sessions: usize,
    per_addr: HashMap<AddrKey, Counts>,
    /// Handshaking connections, oldest first, with how to close each.
    queue: BTreeMap<u64, (AddrKey, Arc<dyn Evict>)>,
    next: u64,
    /// Connections closed to make room, since start.
    evicted: u64,
    /// Connections refused at accept, since start.
    refused: u64,
}

impl Inner {
    fn counts(&mut self, key: AddrKey) -> &mut Counts {
        self.per_addr.entry(key).or_default()
    }

    fn forget_if_empty(&mut self, key: AddrKey) {
        if let Some(c) = self.per_addr.get(&key)
            && c.handshaking == 0
            && c.sessions == 0
        {
            self.per_addr.remove(&key);
        }
    }

    /// Takes `seq` out of the handshaking pool; false if it was evicted already.
    fn leave_handshake(&mut self, seq: u64, key: AddrKey) -> bool {
        if self.queue.remove(&seq).is_none() {
            return false;
        }
        self.handshaking -= 1;
        self.counts(key).handshaking -= 1;
        self.forget_if_empty(key);
        true
    }
}

/// The slots of one server.
pub struct Slots {
    limits: SlotLimits,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (handshaking, sessions) = self.counts();
        f.debug_struct("Slots")
            .field("limits", &self.limits)
            .field("handshaking", &handshaking)
            .field("sessions", &sessions)
            .finish()
    }
}

/// What the pools hold now, for metrics and `/load`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotStats {
    /// Connections not yet past Hello.
    pub handshaking: usize,
    /// Established sessions.
    pub sessions: usize,
    /// Handshaking connections closed to make room, since start.
    pub evicted: u64,
    /// Connections refused at accept (an address over its handshaking limit), since start.
    pub refused: u64,
}

impl Slots {
    /// Empty pools of these sizes.
    pub fn new(limits: SlotLimits) -> Arc<Self> {
        Arc::new(Slots {
            limits,
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The pools' sizes.
    pub fn limits(&self) -> SlotLimits {
        self.limits
    }

    /// (handshaking, sessions) now.
    pub fn counts(&self) -> (usize, usize) {
        let q = self.lock();
        (q.handshaking, q.sessions)
    }

    /// Everything the metrics show.
    pub fn stats(&self) -> SlotStats {
        let q = self.lock();
        SlotStats {
            handshaking: q.handshaking,
            sessions: q.sessions,
            evicted: q.evicted,
            refused: q.refused,
        }
    }

    /// A slot for a new connection from `ip`, closed through `evict` if a
    /// newer one needs its place before it is past Hello. `None` when `ip`
    /// already has its most handshaking connections: refuse at once.
    pub fn handshake(self: &Arc<Self>, ip: IpAddr, evict: Arc<dyn Evict>) -> Option<Handshake> {
        let key = AddrKey::of(ip);
        let mut victims = Vec::new();
        let seq = {
            let mut q = self.lock();
            if q.counts(key).handshaking >= self.limits.max_handshaking_per_addr {
                q.forget_if_empty(key);
                q.refused += 1;
                return None;
            }
            while q.handshaking >= self.limits.max_handshaking.max(1) {
                let Some((seq, (old_key, who))) = q.queue.pop_first() else {
                    break;
                };
                q.handshaking -= 1;
                q.counts(old_key).handshaking -= 1;
                q.forget_if_empty(old_key);
                q.evicted += 1;
                tracing::debug!(
                    seq,
                    "closing the oldest handshaking connection to make room"
                );
                victims.push(who);
            }
            let seq = q.next;
            q.next += 1;
            q.handshaking += 1;
            q.counts(key).handshaking += 1;
            q.queue.insert(seq, (key, evict));
            seq
        };
        // Outside the lock: closing may take other locks.
        for v in victims {
            v.evict();
        }
        Some(Handshake {
            slots: self.clone(),
            key,
            seq,
            done: false,
        })
    }

    /// A session slot for a connection that had no handshaking slot (a
    /// transport embedded by another program): the session limits only.
    pub fn session(self: &Arc<Self>, ip: IpAddr) -> Result<SessionSlot, ProtocolError> {
        let key = AddrKey::of(ip);
        let mut q = self.lock();
        self.take_session(&mut q, key)?;
        Ok(SessionSlot {
            slots: self.clone(),
            key,
        })
    }

    /// Counts a session for `key`, or says which limit it is over.
    fn take_session(&self, q: &mut Inner, key: AddrKey) -> Result<(), ProtocolError> {
        let limits = self.limits;
        if q.counts(key).sessions >= limits.max_sessions_per_addr {
            q.forget_if_empty(key);
            return Err(ProtocolError::new(
                ErrorCode::TooManyConnections,
                format!(
                    "at most {} connections per address",
                    limits.max_sessions_per_addr
                ),
            ));
        }
        if q.sessions >= limits.max_sessions {
            q.forget_if_empty(key);
            return Err(ProtocolError::new(
                ErrorCode::TooManyConnections,
                format!(
                    "the server has its maximum of {} connections",
                    limits.max_sessions
                ),
            ));
        }
        q.counts(key).sessions += 1;
        q.sessions += 1;
        Ok(())
    }

    fn release_session(&self, key: AddrKey) {
        let mut q = self.lock();
        q.sessions -= 1;
        q.counts(key).sessions -= 1;
        q.forget_if_empty(key);
    }
}

/// A connection's place in the handshaking pool; freed on drop.
#[derive(Debug)]
pub struct Handshake {
    slots: Arc<Slots>,
    key: AddrKey,
    seq: u64,
    done: bool,
}

impl Handshake {
    /// The connection's Hello was accepted: it leaves the handshaking pool
    /// for a session slot, or is refused `TOO_MANY_CONNECTIONS`. Either way
    /// it is no longer handshaking, so it can no longer be evicted.
    pub fn establish(mut self) -> Result<SessionSlot, ProtocolError> {
        let slots = self.slots.clone();
        let mut q = slots.lock();
        q.leave_handshake(self.seq, self.key);
        self.done = true;
        slots.take_session(&mut q, self.key)?;
        drop(q);
        Ok(SessionSlot {
            slots: slots.clone(),
            key: self.key,
        })
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        if !self.done {
            self.slots.lock().leave_handshake(self.seq, self.key);
        }
    }
}

/// An established session's slot; freed on drop.
#[derive(Debug)]
pub struct SessionSlot {
    slots: Arc<Slots>,
    key: AddrKey,
}

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.slots.release_session(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Default)]
    struct Flag(AtomicBool);
    impl Evict for Flag {
        fn evict(&self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    fn limits() -> SlotLimits {
        SlotLimits {
            max_handshaking: 4,
            max_handshaking_per_addr: 2,
            max_sessions: 3,
            max_sessions_per_addr: 2,
        }
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    #[test]
    fn a_full_handshaking_pool_closes_its_oldest_connection() {
        let slots = Slots::new(limits());
        let flags: Vec<Arc<Flag>> = (0..5).map(|_| Arc::new(Flag::default())).collect();
        let held: Vec<Handshake> = (0..4)
            .map(|i| slots.handshake(ip(i as u8), flags[i].clone()).unwrap())
            .collect();
        assert_eq!(slots.counts(), (4, 0));
        let newest = slots.handshake(ip(9), flags[4].clone()).unwrap();
        assert!(
            flags[0].0.load(Ordering::SeqCst),
            "the oldest was not closed"
        );
        assert!(flags[1..].iter().all(|f| !f.0.load(Ordering::SeqCst)));
        assert_eq!(slots.counts(), (4, 0));
        // The evicted connection's guard going away later changes nothing.
        drop(held);
        assert_eq!(slots.counts(), (1, 0));
        drop(newest);
        assert_eq!(slots.counts(), (0, 0));
        assert_eq!(slots.stats().evicted, 1);
    }

    #[test]
    fn one_address_cannot_take_more_than_its_share_of_handshakes() {
        let slots = Slots::new(limits());
        let f = Arc::new(Flag::default());
        let _a = slots.handshake(ip(1), f.clone()).unwrap();
        let _b = slots.handshake(ip(1), f.clone()).unwrap();
        assert!(slots.handshake(ip(1), f.clone()).is_none());
        assert!(slots.handshake(ip(2), f.clone()).is_some());
        assert_eq!(slots.stats().refused, 1);
        assert!(!f.0.load(Ordering::SeqCst), "a refusal closes nobody");
    }

    #[test]
    fn ipv6_addresses_are_counted_by_their_64_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(AddrKey::of(a), AddrKey::of(b));
        assert_ne!(AddrKey::of(a), AddrKey::of(c));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(AddrKey::of(mapped), AddrKey::of(ip(1)));
        let slots = Slots::new(limits());
        let f = Arc::new(Flag::default());
        let _x = slots.handshake(a, f.clone()).unwrap();
        let _y = slots.handshake(b, f.clone()).unwrap();
        assert!(slots.handshake(c, f.clone()).is_some());
        assert!(
            slots
                .handshake("2001:db8:1:2::77".parse().unwrap(), f)
                .is_none(),
            "a third address of the same /64 is over its share"
        );
    }

    #[test]
    fn sessions_have_their_own_limits_and_leave_the_handshaking_pool() {
        let slots = Slots::new(limits());
        let f = Arc::new(Flag::default());
        let s1 = slots
            .handshake(ip(1), f.clone())
            .unwrap()
            .establish()
            .unwrap();
        let _s2 = slots
            .handshake(ip(1), f.clone())
            .unwrap()
            .establish()
            .unwrap();
        assert_eq!(slots.counts(), (0, 2));
        let e = slots
            .handshake(ip(1), f.clone())
            .unwrap()
            .establish()
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::TooManyConnections);
        let _s3 = slots
            .handshake(ip(2), f.clone())
            .unwrap()
            .establish()
            .unwrap();
        let e = slots
            .handshake(ip(3), f.clone())
            .unwrap()
            .establish()
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::TooManyConnections);
        assert_eq!(slots.counts(), (0, 3));
        drop(s1);
        let _s4 = slots
            .handshake(ip(3), f.clone())
            .unwrap()
            .establish()
            .unwrap();
        // Sessions are never evicted by handshakes, however many come.
        for n in 0..100 {
            let _h = slots.handshake(ip(n), f.clone());
        }
        assert_eq!(slots.counts().1, 3);
        assert!(!f.0.load(Ordering::SeqCst));
    }
}
