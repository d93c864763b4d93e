//! How the forward pass spreads a parallel loop (matmul row tiles, attention work items,
//! element-wise chunks): [`for_each`] over the current rayon pool (the engine's, installed by
//! the worker for each forward pass), in a plain loop when that pool has one thread.
//!
//! Measured and kept on rayon (docs/performance.md, 2026-12-05): a pool of our own whose idle
//! threads spin between loops instead of sleeping gained ~5% at 8 streams on the 2-vCPU VM but
//! lost 5-10% of single-stream decode, because the spinning vCPU slowed the working one (the
//! kernels themselves took ~20% more samples per token).

use rayon::prelude::*;

/// Threads a parallel loop started here gets.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// `f(i)` for every `i` in `0..n`, spread over the current rayon pool; returns when all are
/// done. Neighbouring items tend to go to the same thread (rayon splits the range in halves).
pub(crate) fn for_each(n: usize, f: impl Fn(usize) + Sync + Send) {
    if n > 1 && threads() > 1 {
        (0..n).into_par_iter().for_each(f);
    } else {
        (0..n).for_each(f);
    }
}
