//! Planning one engine step (continuous batching, vLLM v1 style): which running sequences
//! advance and by how many tokens (every decode one token, prefills in chunks, all within a
//! token budget), which waiting ones join, and which get preempted when KV blocks run out.
//! Owns the running set and the KV block pool; does no model work and no IO.
//!
//! Rules, in order, each step:
//! 1. Running sequences, oldest first, each get what they need (1 token to decode; the rest of
//!    their prompt, cut to the remaining budget, to prefill). A sequence whose client isn't
//!    reading (channel full) sits the step out.
//! 2. Out of blocks: the newest running sequence not yet planned this step is preempted (its
//!    blocks released, the full ones staying in the prefix cache) and goes back to the front
//!    of the waiting line, to be recomputed later; if the one asking is the newest, a prefill
//!    shrinks to fit or the sequence itself is preempted.
//! 3. Waiting sequences (preempted ones first, then the queue in FIFO order) join while there
//!    is budget, a free slot and blocks: first adopting the cached blocks of their longest
//!    cached prefix (never the block of the last prompt token, whose logits are needed).

use std::collections::VecDeque;

use crate::kv::{chain_hash, BlockPool};
use crate::sequence::Seq;

/// Knobs of the planner.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    /// Most sequences running at once.
    pub max_seqs: usize,
    /// Most tokens in one forward pass.
    pub max_tokens: usize,
}

/// One planned piece of work: running sequence `index` advances by `n` tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Planned {
    pub index: usize,
    pub n: usize,
}

pub(crate) struct Batcher {
    pub pool: BlockPool,
    pub running: Vec<Seq>,
    /// Preempted sequences, oldest first; they go before the queue.
    pub preempted: VecDeque<Seq>,
    limits: BatchLimits,
}

impl Batcher {
    pub(crate) fn new(pool: BlockPool, limits: BatchLimits) -> Batcher {
        Batcher { pool, running: Vec::new(), preempted: VecDeque::new(), limits }
    }

    pub(crate) fn free_slots(&self) -> usize {
        self.limits.max_seqs.saturating_sub(self.running.len())
    }

    /// Nothing running or preempted.
    pub(crate) fn is_idle(&self) -> bool {
        self.running.is_empty() && self.preempted.is_empty()
    }

    /// Removes running sequence `i`, releasing its blocks.
    pub(crate) fn remove(&mut self, i: usize) -> Seq {
        let mut seq = self.running.remove(i);
        let mut blocks = seq.reset_kv();
        self.pool.release_all(&mut blocks);
        seq
    }

    /// Drops cancelled sequences (running or preempted), releasing their blocks.
    pub(crate) fn drop_cancelled(&mut self) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].is_cancelled() {
                self.remove(i);
            } else {
                i += 1;
            }
        }
        self.preempted.retain(|s| !s.is_cancelled());
    }

    fn preempt(&mut self, i: usize) {
        let mut seq = self.running.remove(i);
        tracing::debug!(tokens = seq.tokens.len(), "KV cache full: preempting the newest sequence");
        let mut blocks = seq.reset_kv();
        self.pool.release_all(&mut blocks);
        // Keep the preempted line in arrival order.
        let at = self.preempted.iter().position(|s| s.job.arrival > seq.job.arrival);
        self.preempted.insert(at.unwrap_or(self.preempted.len()), seq);
    }

    /// Gives running sequence `i` blocks for positions up to `end`; false if there aren't enough.
    fn grow(&mut self, i: usize, end: usize) -> bool {
        let bs = self.pool.block_size();
        let need = end.div_ceil(bs).saturating_sub(self.running[i].blocks.len());
        if need > self.pool.available() {
            return false;
        }
        for _ in 0..need {
            match self.pool.alloc() {
                Some(b) => self.running[i].blocks.push(b),
                None => return false,
            }
        }
        true
    }

    /// Plans the running sequences (rules 1 and 2). Returns the work and the budget left.
    pub(crate) fn plan_running(&mut self) -> (Vec<Planned>, usize) {
        let mut budget = self.limits.max_tokens;
        let mut plan = Vec::new();
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            if !self.running[i].can_send() {
                i += 1;
                continue;
            }
            let (computed, len) = (self.running[i].computed, self.running[i].tokens.len());
            let mut n = (len - computed).min(budget);
            loop {
                if self.grow(i, computed + n) {
                    break;
                }
                if i + 1 < self.running.len() {
                    let last = self.running.len() - 1;
                    self.preempt(last);
                    continue;
                }
                // The newest asks: a prefill takes what fits, else it waits its turn.
                let bs = self.pool.block_size();
                let fits = (self.running[i].blocks.len() + self.pool.available()) * bs;
                n = fits.saturating_sub(computed).min(n);
                if n == 0 || !self.grow(i, computed + n) {
                    n = 0;
                }
                break;
            }
            if n == 0 {
                self.preempt(i);
                break;
            }
            plan.push(Planned { index: i, n });
            budget -= n;
            i += 1;
        }
        (plan, budget)
    }

    /// Admits waiting sequence `seq` if a slot, budget and blocks allow (rule 3): adopts its
    /// cached prefix, allocates blocks for the first chunk and plans it. Gives the sequence
    /// back when it can't join now.
    // The sequence goes back to the head of its line when it can't join; a move, not worth a Box.
    #[allow(clippy::result_large_err)]
    pub(crate) fn admit(&mut self, mut seq: Seq, budget: &mut usize, plan: &mut Vec<Planned>) -> Result<(), Seq> {
        if self.free_slots() == 0 || *budget == 0 || !seq.can_send() {
            return Err(seq);
        }
        let bs = self.pool.block_size();
        let len = seq.tokens.len();
        // Adopt cached full blocks, never the one holding the last token.
        let mut parent = None;
        for b in 0..(len - 1) / bs {
            let toks = &seq.tokens[b * bs..(b + 1) * bs];
            let key = chain_hash(parent, toks);
            match self.pool.lookup(key, toks) {
                Some(id) => {
                    seq.blocks.push(id);
                    parent = Some(key);
                }
                None => break,
            }
        }
        seq.hashed = seq.blocks.len();
        seq.last_hash = parent;
        seq.computed = seq.blocks.len() * bs;
        // Leave a block per running sequence free so admissions don't force preemptions at once.
        let reserve = self.running.len().min(self.pool.total() / 16);
        let usable = self.pool.available().saturating_sub(reserve);
        let fits = (seq.blocks.len() + usable) * bs;
        let n = (len - seq.computed).min(*budget).min(fits.saturating_sub(seq.computed));
        if n == 0 {
            let mut blocks = seq.reset_kv();
            self.pool.release_all(&mut blocks);
            return Err(seq);
        }
        for _ in 0..(seq.computed + n).div_ceil(bs) - seq.blocks.len() {
            match self.pool.alloc() {
                Some(b) => seq.blocks.push(b),
                None => {
                    let mut blocks = seq.reset_kv();
                    self.pool.release_all(&mut blocks);
                    return Err(seq);
                }
            }
        }
        seq.admitted(seq.computed);
        *budget -= n;
        plan.push(Planned { index: self.running.len(), n });
        self.running.push(seq);
        Ok(())
    }

    /// After a successful forward: running sequence `i` has `n` more tokens computed; its newly
    /// full blocks enter the prefix cache.
    pub(crate) fn advance(&mut self, i: usize, n: usize) {
        let bs = self.pool.block_size();
        let seq = &mut self.running[i];
        seq.computed += n;
        while (seq.hashed + 1) * bs <= seq.computed {
            let toks = &seq.tokens[seq.hashed * bs..(seq.hashed + 1) * bs];
            let key = chain_hash(seq.last_hash, toks);
            self.pool.register(seq.blocks[seq.hashed], key, toks);
            seq.last_hash = Some(key);
            seq.hashed += 1;
        }
    }
}
