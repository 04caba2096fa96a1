//! Which sequence owns which block of the paged key–value cache, and the prefix cache.
//!
//! Blocks are counted by reference: a sequence holds each block of its table once, and a block
//! that holds a full block of prompt shared by several sequences is held by each of them. A full
//! block is registered under its content — the tokens it holds and the block before it (or, for
//! the first block, the tenant) — so a later sequence whose prompt starts the same way takes the
//! cached blocks instead of computing them again. Keys are exact (no hashes that could collide),
//! and the chain of every cached prefix starts at its tenant, so two tenants never share an entry.
//!
//! A block whose last holder lets go keeps its content while it is free: free blocks without
//! content are handed out first, then cached ones, least recently released first (LRU eviction).
//! Reusing a block bumps its generation, so keys that named it as their parent go stale instead
//! of pointing at new content.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// What a block's content follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Parent {
    /// The start of a sequence of this tenant.
    Root(Arc<str>),
    /// A block (id, generation).
    Block(u32, u32),
}

/// The exact content of a full block.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    parent: Parent,
    tokens: Box<[u32]>,
}

/// The block allocator and prefix cache of one pool.
#[derive(Debug)]
pub struct BlockManager {
    block_size: usize,
    refs: Vec<u32>,
    generation: Vec<u32>,
    key: Vec<Option<Key>>,
    cached: HashMap<Key, u32>,
    /// Free blocks without content.
    empty: Vec<u32>,
    /// Free blocks with content, by release order; `released[b]` is `b`'s place in it.
    evictable: BTreeMap<u64, u32>,
    released: Vec<u64>,
    clock: u64,
}

impl BlockManager {
    /// Manages `n_blocks` blocks of `block_size` positions, all free.
    pub fn new(n_blocks: usize, block_size: usize) -> Self {
        Self {
            block_size,
            refs: vec![0; n_blocks],
            generation: vec![0; n_blocks],
            key: vec![None; n_blocks],
            cached: HashMap::new(),
            empty: (0..n_blocks as u32).rev().collect(),
            evictable: BTreeMap::new(),
            released: vec![0; n_blocks],
            clock: 0,
        }
    }

    /// Positions per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks in the pool.
    pub fn total(&self) -> usize {
        self.refs.len()
    }

    /// Blocks that can be handed out now (free, with or without cached content).
    pub fn available(&self) -> usize {
        self.empty.len() + self.evictable.len()
    }

    /// Blocks held by sequences.
    pub fn used(&self) -> usize {
        self.total() - self.available()
    }

    /// A free block for one holder, evicting the least recently released cached one when no empty
    /// block is left; `None` when every block is held.
    pub fn allocate(&mut self) -> Option<u32> {
        let b = match self.empty.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.evictable.pop_first()?;
                if let Some(key) = self.key[b as usize].take() {
                    self.cached.remove(&key);
                }
                b
            }
        };
        self.generation[b as usize] = self.generation[b as usize].wrapping_add(1);
        self.refs[b as usize] = 1;
        Some(b)
    }

    /// Lets go of one hold on `block`; a block nobody holds becomes free, keeping its content.
    pub fn release(&mut self, block: u32) {
        let b = block as usize;
        debug_assert!(self.refs[b] > 0, "block {block} released more often than held");
        self.refs[b] -= 1;
        if self.refs[b] == 0 {
            if self.key[b].is_some() {
                self.clock += 1;
                self.released[b] = self.clock;
                self.evictable.insert(self.clock, block);
            } else {
                self.empty.push(block);
            }
        }
    }

    /// Lets go of every block of `blocks` and empties it.
    pub fn release_all(&mut self, blocks: &mut Vec<u32>) {
        for b in blocks.drain(..) {
            self.release(b);
        }
    }

    fn parent(&self, tenant: &Arc<str>, blocks: &[u32]) -> Parent {
        match blocks.last() {
            None => Parent::Root(Arc::clone(tenant)),
            Some(&b) => Parent::Block(b, self.generation[b as usize]),
        }
    }

    /// The cached blocks holding the longest run of full blocks of `tokens` from its start for
    /// `tenant`, each now held once more by the caller.
    pub fn take_prefix(&mut self, tenant: &Arc<str>, tokens: &[u32]) -> Vec<u32> {
        let mut found = Vec::new();
        for block in tokens.chunks_exact(self.block_size) {
            let key = Key { parent: self.parent(tenant, &found), tokens: block.into() };
            let Some(&b) = self.cached.get(&key) else { break };
            if self.refs[b as usize] == 0 {
                self.evictable.remove(&self.released[b as usize]);
            }
            self.refs[b as usize] += 1;
            found.push(b);
        }
        found
    }

    /// Registers the full block `blocks[i]`, holding `tokens` (its `block_size` positions), so later
    /// sequences of `tenant` can take it. A block with the same content already cached wins; this
    /// one then stays private.
    pub fn register(&mut self, tenant: &Arc<str>, blocks: &[u32], i: usize, tokens: &[u32]) {
        debug_assert_eq!(tokens.len(), self.block_size);
        let b = blocks[i];
        if self.key[b as usize].is_some() {
            return;
        }
        let key = Key { parent: self.parent(tenant, &blocks[..i]), tokens: tokens.into() };
        if let std::collections::hash_map::Entry::Vacant(slot) = self.cached.entry(key.clone()) {
            slot.insert(b);
            self.key[b as usize] = Some(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> Arc<str> {
        Arc::from(name)
    }

    #[test]
    fn prefixes_are_shared_within_a_tenant_and_never_across() {
        let mut m = BlockManager::new(8, 2);
        let (a, b) = (tenant("a"), tenant("b"));
        let prompt = [1, 2, 3, 4, 5];
        let mut first = vec![m.allocate().unwrap(), m.allocate().unwrap(), m.allocate().unwrap()];
        m.register(&a, &first, 0, &prompt[0..2]);
        m.register(&a, &first, 1, &prompt[2..4]);
        assert_eq!(m.take_prefix(&a, &prompt), first[..2].to_vec());
        assert!(m.take_prefix(&b, &prompt).is_empty(), "another tenant must not see the blocks");
        assert_eq!(m.take_prefix(&a, &[1, 2, 9, 9]), vec![first[0]], "only the matching start");
        assert!(m.take_prefix(&a, &[9, 9, 3, 4]).is_empty(), "same block after a different start");
        // Held: 3 by the first sequence, plus 2 + 1 taken; all free again once released.
        m.release_all(&mut first);
        for blk in [0, 1, 0] {
            m.release(blk);
        }
        assert_eq!(m.available(), 8);
        // Cached content survives release until the space is needed, least recently used first.
        assert_eq!(m.take_prefix(&a, &prompt).len(), 2);
    }

    #[test]
    fn eviction_takes_empty_blocks_first_then_the_oldest_cached() {
        let mut m = BlockManager::new(3, 1);
        let t = tenant("");
        let mut x = vec![m.allocate().unwrap()];
        m.register(&t, &x, 0, &[7]);
        let mut y = vec![m.allocate().unwrap()];
        m.register(&t, &y, 0, &[8]);
        m.release_all(&mut x);
        m.release_all(&mut y);
        let fresh = m.allocate().unwrap();
        let seven = m.take_prefix(&t, &[7]);
        assert_eq!(seven.len(), 1, "the empty block went first");
        m.release(fresh);
        m.release(seven[0]);
        // [8] was released before [7] was last used: it is evicted first.
        let _ = (m.allocate().unwrap(), m.allocate().unwrap());
        assert!(m.take_prefix(&t, &[8]).is_empty());
        assert_eq!(m.take_prefix(&t, &[7]).len(), 1);
        assert_eq!(m.allocate(), None, "every block is held");
    }

    #[test]
    fn a_reused_parent_does_not_revive_its_old_children() {
        let mut m = BlockManager::new(2, 1);
        let t = tenant("");
        let mut s = vec![m.allocate().unwrap(), m.allocate().unwrap()];
        m.register(&t, &s, 0, &[1]);
        m.register(&t, &s, 1, &[2]);
        let s_first = s[0];
        m.release_all(&mut s);
        // The parent block (released first) is evicted and rewritten with other content, [5]; its
        // old child stays cached.
        let p = m.allocate().unwrap();
        assert_eq!(p, s_first);
        m.register(&t, &[p], 0, &[5]);
        assert_eq!(m.take_prefix(&t, &[5, 2]), vec![p], "the old child [1][2] must not follow [5]");
    }
}
