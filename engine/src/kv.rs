//! The paged KV cache's bookkeeping (no tensors): fixed-size blocks handed out to sequences,
//! reference counts, and the prefix cache that lets a new sequence adopt the full blocks an
//! earlier one computed for the same leading tokens.
//!
//! A block holds the keys/values of `block_size` consecutive positions of one sequence; a
//! sequence's block table lists its blocks in position order (the model reads and writes the
//! storage through that table). Invariants:
//! - a block is either in use (`refs > 0`), free and unregistered (`fresh`), or free and
//!   registered (`evictable`, ordered by last use); never two of these.
//! - only FULL blocks whose keys/values are final are registered (`register`), under a chained
//!   hash of (parent block's hash, this block's tokens); the tokens are kept too, so a hash
//!   collision can't hand out wrong keys. Registered blocks are never written again: a sequence
//!   only writes positions past the blocks it adopted.
//! - eviction takes fresh blocks first, then the least recently used registered free block.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// Index of a block in the model's KV storage.
pub(crate) type BlockId = u32;

#[derive(Debug, Clone, Default)]
struct Meta {
    refs: u32,
    /// Set while registered in the prefix cache.
    key: Option<u64>,
    tokens: Vec<u32>,
    /// Tick of the last release (the LRU order of evictable blocks).
    last_used: u64,
}

/// Allocator and prefix cache of the KV blocks.
#[derive(Debug)]
pub(crate) struct BlockPool {
    block_size: usize,
    meta: Vec<Meta>,
    /// Free, never registered (or unregistered): handed out first. A stack, so the blocks
    /// touched most recently are reused first (fewer pages made resident).
    fresh: Vec<BlockId>,
    /// Free and registered, by (last use tick, id): evicted oldest first.
    evictable: BTreeMap<(u64, BlockId), ()>,
    /// Chained hash -> registered block.
    cached: HashMap<u64, BlockId>,
    tick: u64,
}

/// The chained hash of a full block: its parent's hash (None for the first block) and its tokens.
pub(crate) fn chain_hash(parent: Option<u64>, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: stable within a process, which is all the cache needs.
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl BlockPool {
    pub(crate) fn new(n_blocks: usize, block_size: usize) -> BlockPool {
        BlockPool {
            block_size,
            meta: vec![Meta::default(); n_blocks],
            // Reversed so that `pop` hands out block 0 first.
            fresh: (0..n_blocks as BlockId).rev().collect(),
            evictable: BTreeMap::new(),
            cached: HashMap::new(),
            tick: 0,
        }
    }

    pub(crate) fn block_size(&self) -> usize {
        self.block_size
    }

    pub(crate) fn total(&self) -> usize {
        self.meta.len()
    }

    /// Blocks that `alloc` can still hand out (fresh plus evictable).
    pub(crate) fn available(&self) -> usize {
        self.fresh.len() + self.evictable.len()
    }

    /// Registered blocks (in use or not).
    #[cfg(test)]
    pub(crate) fn cached_blocks(&self) -> usize {
        self.cached.len()
    }

    /// A block for new keys/values (refs = 1), evicting the least recently used cached block
    /// when no fresh one is left. None when every block is in use.
    pub(crate) fn alloc(&mut self) -> Option<BlockId> {
        let id = match self.fresh.pop() {
            Some(id) => id,
            None => {
                let (&(tick, id), _) = self.evictable.iter().next()?;
                self.evictable.remove(&(tick, id));
                self.unregister(id);
                id
            }
        };
        self.meta[id as usize].refs = 1;
        Some(id)
    }

    /// Drops one reference; a block nobody uses becomes evictable (registered) or fresh.
    pub(crate) fn release(&mut self, id: BlockId) {
        self.tick += 1;
        let tick = self.tick;
        let m = &mut self.meta[id as usize];
        debug_assert!(m.refs > 0, "release of free block {id}");
        m.refs = m.refs.saturating_sub(1);
        if m.refs == 0 {
            m.last_used = tick;
            if m.key.is_some() {
                self.evictable.insert((tick, id), ());
            } else {
                self.fresh.push(id);
            }
        }
    }

    /// Releases every block of a table.
    pub(crate) fn release_all(&mut self, table: &mut Vec<BlockId>) {
        for id in table.drain(..) {
            self.release(id);
        }
    }

    /// The registered block for (`key`, `tokens`), with a new reference to it.
    pub(crate) fn lookup(&mut self, key: u64, tokens: &[u32]) -> Option<BlockId> {
        let id = *self.cached.get(&key)?;
        let m = &mut self.meta[id as usize];
        if m.tokens != tokens {
            return None; // a 64-bit hash collision: treat as a miss
        }
        if m.refs == 0 {
            self.evictable.remove(&(m.last_used, id));
        }
        m.refs += 1;
        Some(id)
    }

    /// Registers an in-use full block under `key` so later sequences can adopt it. A key that
    /// is already registered (another block computed the same tokens) is left as is.
    pub(crate) fn register(&mut self, id: BlockId, key: u64, tokens: &[u32]) {
        debug_assert_eq!(tokens.len(), self.block_size);
        if self.cached.contains_key(&key) || self.meta[id as usize].key.is_some() {
            return;
        }
        self.cached.insert(key, id);
        let m = &mut self.meta[id as usize];
        m.key = Some(key);
        m.tokens = tokens.to_vec();
    }

    fn unregister(&mut self, id: BlockId) {
        let m = &mut self.meta[id as usize];
        if let Some(key) = m.key.take() {
            self.cached.remove(&key);
            m.tokens.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_until_empty_then_release_makes_room() {
        let mut p = BlockPool::new(3, 4);
        let ids: Vec<_> = (0..3).map(|_| p.alloc().unwrap()).collect();
        assert_eq!(ids, vec![0, 1, 2]);
        assert_eq!(p.available(), 0);
        assert!(p.alloc().is_none());
        p.release(1);
        assert_eq!(p.alloc(), Some(1));
    }

    #[test]
    fn registered_blocks_are_adopted_and_evicted_least_recently_used_first() {
        let mut p = BlockPool::new(3, 2);
        let (a, b) = (p.alloc().unwrap(), p.alloc().unwrap());
        let ka = chain_hash(None, &[1, 2]);
        let kb = chain_hash(Some(ka), &[3, 4]);
        p.register(a, ka, &[1, 2]);
        p.register(b, kb, &[3, 4]);
        assert_eq!(p.cached_blocks(), 2);
        p.release(b); // released first: least recently used
        p.release(a);
        assert_eq!(p.available(), 3);
        // Adopting `a` takes it off the evictable list.
        assert_eq!(p.lookup(ka, &[1, 2]), Some(a));
        assert_eq!(p.available(), 2);
        // The fresh block goes first, then the LRU registered one (b), never the adopted one.
        let c = p.alloc().unwrap();
        assert!(c != a && c != b);
        assert_eq!(p.alloc(), Some(b));
        assert_eq!(p.lookup(kb, &[3, 4]), None, "evicted blocks are no longer cached");
        assert!(p.alloc().is_none());
        // A shared block stays until its last user releases it.
        assert_eq!(p.lookup(ka, &[1, 2]), Some(a));
        p.release(a);
        assert_eq!(p.available(), 0);
        p.release(a);
        assert_eq!(p.available(), 1);
    }

    #[test]
    fn chained_keys_differ_by_parent_and_collisions_are_misses() {
        assert_ne!(chain_hash(None, &[3, 4]), chain_hash(Some(chain_hash(None, &[1, 2])), &[3, 4]));
        assert_eq!(chain_hash(Some(7), &[3, 4]), chain_hash(Some(7), &[3, 4]));
        let mut p = BlockPool::new(2, 2);
        let a = p.alloc().unwrap();
        p.register(a, 42, &[1, 2]);
        assert_eq!(p.lookup(42, &[9, 9]), None, "same key, other tokens: not a hit");
        // A second block with an already registered key stays unregistered.
        let b = p.alloc().unwrap();
        p.register(b, 42, &[1, 2]);
        p.release(b);
        assert_eq!(p.lookup(42, &[1, 2]), Some(a));
    }
}
