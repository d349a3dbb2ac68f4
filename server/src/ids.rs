//! Participant ids: unique among the live sessions of a cluster, never
//! reissued while their holder is alive, and drawn at random so that the
//! next one cannot be predicted from the last.
//!
//! A participant id is the node's id in the top bits and a node-local part
//! in the low [`PARTICIPANT_BITS`](crate::bus::PARTICIPANT_BITS) bits, so
//! nodes never collide without talking to each other (two nodes with the
//! same node id are detected on the bus, see `nats.rs`). Within a node this
//! allocator keeps the set of low parts in use: an id returns to the pool
//! only when its session ends, however many sessions come and go meanwhile.
//! (A counter wrapping at 2^20 once handed a live participant's id to an
//! attacker who had opened a million sessions.)

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Draws before falling back to a scan; with the pool at most half full a
/// draw misses with probability ≤ 1/2, so 64 misses in a row are ~2^-64.
const DRAWS: usize = 64;

/// Hands out participant ids for one node.
#[derive(Debug)]
pub struct IdAllocator {
    /// The node's part, already shifted into the top bits.
    prefix: u32,
    /// Bits of the node-local part.
    bits: u32,
    /// Node-local parts in use.
    live: HashSet<u32>,
    /// Most ids live at once: half the space, so random draws stay cheap.
    capacity: usize,
    rng: StdRng,
}

impl IdAllocator {
    /// An allocator for node `node`, whose ids have `bits` low bits of their own.
    pub fn new(node: u32, bits: u32) -> Self {
        let mut seed = [0u8; 32];
        // Without the OS's randomness ids are still unique, only guessable.
        let _ = getrandom::fill(&mut seed);
        Self::with_rng(node, bits, StdRng::from_seed(seed))
    }

    /// [`IdAllocator::new`] with a fixed seed, for tests that want the same draws.
    pub fn seeded(node: u32, bits: u32, seed: u64) -> Self {
        Self::with_rng(node, bits, StdRng::seed_from_u64(seed))
    }

    fn with_rng(node: u32, bits: u32, rng: StdRng) -> Self {
        assert!(
            (1..32).contains(&bits),
            "ids need 1 to 31 bits of their own"
        );
        IdAllocator {
            prefix: node << bits,
            bits,
            live: HashSet::new(),
            capacity: 1usize << (bits - 1),
            rng,
        }
    }

    /// A fresh id, never 0 and never one in use; `None` when half the
    /// node's id space is in use (the caller refuses the session as busy).
    pub fn allocate(&mut self) -> Option<u32> {
        if self.live.len() >= self.capacity {
            return None;
        }
        let max = (1u32 << self.bits) - 1;
        let mut low = 0;
        for _ in 0..DRAWS {
            let draw = self.rng.random_range(1..=max);
            if !self.live.contains(&draw) {
                low = draw;
                break;
            }
        }
        if low == 0 {
            // Astronomically unlikely; a scan keeps the answer certain.
            low = (1..=max).find(|l| !self.live.contains(l))?;
        }
        self.live.insert(low);
        Some(self.prefix | low)
    }

    /// Returns `id` to the pool once its session has ended. Ids of other
    /// nodes, or not handed out, are ignored.
    pub fn release(&mut self, id: u32) {
        if id >> self.bits == self.prefix >> self.bits {
            self.live.remove(&(id & ((1u32 << self.bits) - 1)));
        }
    }

    /// Ids in use.
    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// True if `id` is in use.
    pub fn is_live(&self, id: u32) -> bool {
        id >> self.bits == self.prefix >> self.bits
            && self.live.contains(&(id & ((1u32 << self.bits) - 1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attack: keep some sessions alive, then open and close sessions
    /// far past the id space's size. No id handed out may be one in use.
    #[test]
    fn ids_in_use_are_never_reissued_past_the_wrap() {
        let bits = 20;
        let mut ids = IdAllocator::seeded(3, bits, 7);
        let held: Vec<u32> = (0..1000).map(|_| ids.allocate().unwrap()).collect();
        let unique: HashSet<u32> = held.iter().copied().collect();
        assert_eq!(unique.len(), held.len(), "two live sessions got one id");
        // Once and a quarter round the 2^20 space, one session at a time
        // (the attack opened and closed sessions in a loop).
        for _ in 0..(5usize << bits) / 4 {
            let id = ids.allocate().unwrap();
            assert!(
                !unique.contains(&id),
                "id {id:#x} was reissued while in use"
            );
            assert_eq!(id >> bits, 3, "the node's prefix is kept");
            assert_ne!(id & ((1 << bits) - 1), 0, "the low part is never 0");
            ids.release(id);
        }
        assert_eq!(ids.live(), 1000);
        assert!(held.iter().all(|&id| ids.is_live(id)));
    }

    #[test]
    fn a_full_space_refuses_instead_of_reusing() {
        // 4 bits: 15 usable ids, at most 8 live.
        let mut ids = IdAllocator::seeded(1, 4, 1);
        let mut held: Vec<u32> = (0..8).map(|_| ids.allocate().unwrap()).collect();
        assert_eq!(held.iter().collect::<HashSet<_>>().len(), 8);
        assert_eq!(ids.allocate(), None, "a ninth id would crowd the space");
        // Churn in a nearly full small space: each new id differs from the
        // seven still held.
        for round in 0..10_000 {
            let gone = held.swap_remove(round % held.len());
            ids.release(gone);
            let id = ids.allocate().unwrap();
            assert!(!held.contains(&id), "round {round}: {id} is in use");
            held.push(id);
            assert_eq!(ids.allocate(), None);
        }
    }

    #[test]
    fn consecutive_ids_are_not_predictable() {
        let mut ids = IdAllocator::seeded(0, 20, 42);
        let a: Vec<u32> = (0..100).map(|_| ids.allocate().unwrap()).collect();
        let steps_of_one = a.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(steps_of_one < 5, "ids look sequential: {a:?}");
    }

    #[test]
    fn releasing_another_nodes_id_changes_nothing() {
        let mut ids = IdAllocator::seeded(2, 20, 5);
        let id = ids.allocate().unwrap();
        let other_node = (5 << 20) | (id & 0xfffff);
        ids.release(other_node);
        assert!(ids.is_live(id));
        ids.release(id);
        assert!(!ids.is_live(id));
    }
}
