//! How the forward pass spreads a parallel loop (matmul row tiles, attention work items,
//! element-wise chunks): [`for_each`], over a *team* while one is open ([`team`]), else over
//! the current rayon pool (the engine's, installed by the worker for each forward pass), in a
//! plain loop when that pool has one thread.
//!
//! A team is the forward pass's way around rayon's sleep/wake cost. A step of a small model
//! runs ~150 parallel loops of 20-100 us each with short serial parts between them; rayon's
//! idle workers yield, then sleep on a futex within tens of microseconds, so nearly every loop
//! paid a futex wake of a halted vCPU (profile of 8 streams, 2 vCPUs: ~14% of the main thread
//! in the wake, ~23% of the machine idle). [`team`] borrows the pool's other threads for one
//! forward pass (one rayon job each, one wake per step) and keeps them spinning between loops;
//! a loop is then an atomic store and a few cache-line transfers.
//!
//! Protocol of a loop (`Team::run`): the opener publishes the job pointer, then one 64-bit
//! `ctr` = epoch (24 bits) | item count (20) | next item (20). Anyone claims an item by a CAS
//! of `ctr` from a value with next < count, so a claim can only succeed while that epoch's
//! loop is open (the opener waits until every item is done before it publishes the next loop
//! or returns), and the job pointer read before a successful claim is that loop's. Helpers
//! never block: they spin (`spin_loop`, then `yield_now` once idle for a while, so a loaded
//! core is given up) until the opener closes the team.
//!
//! Measured (docs/performance.md, 2026-12-05): on an AMD EPYC VM whose 2 vCPUs shared a core,
//! an earlier pool that spun between loops cost single-stream decode 5-10% (the spinning
//! sibling slowed the working one); `AI_SANDBOX_TEAM=0` turns teams off.

use std::cell::Cell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;

/// Threads a parallel loop started here gets.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// `f(i)` for every `i` in `0..n`, spread over the open team (see the module docs) or the
/// current rayon pool; returns when all are done. Items are claimed one at a time in order
/// by whichever thread is free (a team), or neighbouring items go to the same thread (rayon
/// splits the range in halves).
pub(crate) fn for_each(n: usize, f: impl Fn(usize) + Sync + Send) {
    if n > 1 && threads() > 1 {
        if let Some(team) = OPEN.with(|t| t.get()) {
            // SAFETY: `OPEN` points at the team of an enclosing `team` call on this thread,
            // which outlives this call; it is cleared while a loop's items run (no nesting).
            return unsafe { &*team }.run(n, &f);
        }
        (0..n).into_par_iter().for_each(f);
    } else {
        (0..n).for_each(f);
    }
}

/// Runs `f` (a forward pass) with the current rayon pool's other threads as a spinning team
/// for [`for_each`]; just `f()` when the pool has one thread, inside a team already, or with
/// `AI_SANDBOX_TEAM=0`.
pub(crate) fn team<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    let helpers = threads() - 1;
    if helpers == 0 || !enabled() || OPEN.with(|t| t.get()).is_some() {
        return f();
    }
    let team = Team::default();
    rayon::scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| team.help());
        }
        /// Clears `OPEN` and closes the team even if `f` panics (the scope then waits for
        /// the helpers, which must therefore stop).
        struct Close<'a>(&'a Team);
        impl Drop for Close<'_> {
            fn drop(&mut self) {
                OPEN.with(|t| t.set(None));
                self.0.closed.store(true, Ordering::Release);
            }
        }
        let _close = Close(&team);
        OPEN.with(|t| t.set(Some(&team as *const Team)));
        f()
    })
}

/// Whether teams are on: `AI_SANDBOX_TEAM` unset or anything but `0`. Decided once.
fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("AI_SANDBOX_TEAM").map_or(true, |v| v != "0"))
}

thread_local! {
    /// The team this thread opened and may start loops on.
    static OPEN: Cell<Option<*const Team>> = const { Cell::new(None) };
}

const IDX_BITS: u32 = 20;
const IDX_MASK: u64 = (1 << IDX_BITS) - 1;
/// Spins without work after which an idle helper yields its core on each further check.
const SPINS_BEFORE_YIELD: u32 = 1 << 14;

/// A loop's items as the helpers call them: the opener's `&dyn Fn`, lifetime erased.
type Job = dyn Fn(usize) + Sync;

#[derive(Default)]
struct Team {
    /// epoch << 40 | count << 20 | next (see the module docs).
    ctr: AtomicU64,
    /// Points at the current loop's `&Job` (a thin pointer to the fat one, on the opener's
    /// stack); valid while that loop is open.
    job: AtomicPtr<&'static Job>,
    /// Items of the current loop finished.
    done: AtomicUsize,
    /// The first panic of a helper's item, re-raised by the opener.
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    closed: AtomicBool,
}

impl Team {
    /// The opener's side of one loop: publish, work, wait for every item.
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if n as u64 > IDX_MASK {
            return (0..n).for_each(f);
        }
        // SAFETY: only the lifetime is erased; helpers call the job only through a claim that
        // succeeds while this loop is open, and this function returns after the loop closes.
        let job: &'static Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static Job>(f) };
        let job_ref: &&'static Job = &job;
        self.done.store(0, Ordering::Relaxed);
        self.job.store(job_ref as *const _ as *mut _, Ordering::Relaxed);
        let epoch = (self.ctr.load(Ordering::Relaxed) >> (2 * IDX_BITS)) + 1;
        let start = (epoch << (2 * IDX_BITS)) | ((n as u64) << IDX_BITS);
        self.ctr.store(start, Ordering::Release);
        OPEN.with(|t| t.set(None));
        while let Some(i) = self.claim(start) {
            // A panic must not unwind past the wait below: helpers may still run `f`.
            self.call(f, i);
        }
        OPEN.with(|t| t.set(Some(self as *const Team)));
        while self.done.load(Ordering::Acquire) < n {
            std::hint::spin_loop();
        }
        if let Some(p) = self.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            resume_unwind(p);
        }
    }

    /// Claims the next item of the loop `ctr` was published as `start` (any epoch/count with
    /// next = 0 for `start`'s epoch); `None` once it has none left or a later loop opened.
    fn claim(&self, start: u64) -> Option<usize> {
        let head = start >> IDX_BITS;
        let mut v = self.ctr.load(Ordering::Acquire);
        loop {
            let (i, n) = ((v & IDX_MASK) as usize, ((v >> IDX_BITS) & IDX_MASK) as usize);
            if v >> IDX_BITS != head || i >= n {
                return None;
            }
            match self.ctr.compare_exchange_weak(v, v + 1, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(i),
                Err(now) => v = now,
            }
        }
    }

    /// A helper's side: run items of whatever loop is open until the team closes.
    fn help(&self) {
        let mut idle = 0u32;
        while !self.closed.load(Ordering::Acquire) {
            let v = self.ctr.load(Ordering::Acquire);
            // Read before the claim: if the claim succeeds, this is the claimed loop's job.
            let job = self.job.load(Ordering::Relaxed);
            let Some(i) = self.claim(v & !IDX_MASK) else {
                idle = idle.saturating_add(1);
                if idle < SPINS_BEFORE_YIELD {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                continue;
            };
            idle = 0;
            // SAFETY: the claim succeeded, so the loop `job` belongs to is still open (see the
            // module docs) and the opener's `&Job` it points at is alive.
            self.call(unsafe { *job }, i);
        }
    }

    /// `f(i)`, a panic kept for the opener; then counts the item done.
    fn call(&self, f: &(dyn Fn(usize) + Sync), i: usize) {
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i))) {
            self.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
        }
        self.done.fetch_add(1, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap()
    }

    /// Every item of every loop runs exactly once, loops in a row (each closing before the next
    /// opens: a late helper never runs an item of a closed loop), with a helper doing part of
    /// the work, and results written through the items land.
    #[test]
    fn team_runs_every_item_once_over_many_loops() {
        for threads in [1, 2, 3] {
            let helped = AtomicUsize::new(0);
            pool(threads).install(|| {
                team(|| {
                    let main = std::thread::current().id();
                    for round in 0..2000usize {
                        let n = 1 + round % 37;
                        let hits: Vec<AtomicU32> = (0..n).map(|_| AtomicU32::new(0)).collect();
                        for_each(n, |i| {
                            hits[i].fetch_add(1, Ordering::Relaxed);
                            if std::thread::current().id() != main {
                                helped.fetch_add(1, Ordering::Relaxed);
                            }
                            // Long enough for a helper to claim some items even on a busy
                            // machine (the first rounds sleep), then short ones.
                            if round < 100 {
                                std::thread::sleep(std::time::Duration::from_micros(50));
                            }
                            std::hint::black_box((0..200).sum::<u64>());
                        });
                        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "round {round}");
                    }
                })
            });
            let helped = helped.into_inner();
            assert_eq!(helped > 0, threads > 1, "{threads} threads: {helped} items run by helpers");
        }
    }

    /// A panic in an item (on either side) reaches the opener after the loop has finished, and
    /// the team still closes (the call returns instead of hanging).
    #[test]
    fn team_item_panic_reaches_the_caller() {
        for bad in [0, 7] {
            let got = std::panic::catch_unwind(|| {
                pool(2).install(|| {
                    team(|| {
                        for_each(8, |i| {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                            assert!(i != bad, "item {i} failed");
                        })
                    })
                })
            });
            let msg = got.expect_err("the panic was lost");
            let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
            assert!(msg.contains(&format!("item {bad} failed")), "{msg}");
        }
    }

    /// A loop started inside an item runs (on rayon, not the team) and so do teams opened
    /// inside a team (as a plain call).
    #[test]
    fn nested_loops_and_teams_run() {
        let total = AtomicUsize::new(0);
        pool(2).install(|| {
            team(|| {
                for_each(4, |_| {
                    for_each(5, |_| {
                        total.fetch_add(1, Ordering::Relaxed);
                    })
                });
                team(|| for_each(3, |_| _ = total.fetch_add(100, Ordering::Relaxed)));
            })
        });
        assert_eq!(total.into_inner(), 20 + 300);
    }
}
