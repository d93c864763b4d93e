//! The generation worker: one dedicated OS thread that takes requests from a bounded queue and
//! runs them with continuous batching: each step it plans (`batch.rs`) which sequences advance,
//! runs them together in one forward pass over the paged KV cache, and hands each finished
//! prompt or decode step's logits to its sequence (`sequence.rs`) to sample and stream. Owns the
//! queue, cancellation and the isolation of failures (an error or a panic in a forward pass ends
//! the requests of that step, never the worker).
//!
//! It is generic over two small traits so its logic is tested with a fake model; `engine.rs`
//! plugs in the real model and tokenizer.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::batch::{BatchLimits, Batcher, Planned};
use crate::kv::BlockPool;
use crate::model::SeqInput;
use crate::sampler::Sampler;
use crate::sequence::{Abort, Job, Seq};
use crate::{EngineError, GenEvent, GenerateRequest};

/// Events buffered per request; a client that lets this many pile up is paused (its sequence
/// sits steps out) until it reads.
const CHANNEL_CAPACITY: usize = 64;

/// What the worker needs from a model.
pub(crate) trait LanguageModel: Send + 'static {
    /// Runs a packed batch (see `Model::forward_batch`); returns the last-token logits of each
    /// sequence that asks for them, in order.
    fn forward_batch(&mut self, seqs: &[SeqInput]) -> Result<Vec<Vec<f32>>, EngineError>;

    /// Whether [`LanguageModel::forward_batch_greedy`] saves work (a device picks the tokens and
    /// copies back only their ids); the worker then uses it for steps where no sequence
    /// [needs its logits](crate::sequence::Seq::needs_logits).
    fn samples_on_device(&self) -> bool {
        false
    }

    /// [`LanguageModel::forward_batch`], returning the argmax token of each sequence instead.
    fn forward_batch_greedy(&mut self, seqs: &[SeqInput]) -> Result<Vec<u32>, EngineError> {
        Ok(self.forward_batch(seqs)?.iter().map(|l| crate::sampler::argmax(l)).collect())
    }
}

/// What one step gives each sequence that asked: logits to sample from, or the token the
/// device already chose.
enum StepOutputs {
    Logits(std::vec::IntoIter<Vec<f32>>),
    Tokens(std::vec::IntoIter<u32>),
}

/// What the worker needs from a tokenizer.
pub(crate) trait TokenText: Send + Sync + 'static {
    /// The token's bytes (None or empty: nothing).
    fn token_bytes(&self, id: u32) -> Option<&[u8]>;
    /// Control tokens (`<|im_start|>`...) add nothing to the output text (llama.cpp's default),
    /// though their logprobs still show their text.
    fn is_control(&self, id: u32) -> bool;
    /// Tokens that end generation (never shown).
    fn eos_ids(&self) -> &[u32];
}

/// Fixed facts about the model and the server's limits that requests are checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Length of the logits vector (token ids must be below it).
    pub vocab_size: usize,
    /// Longest sequence in tokens.
    pub ctx_size: usize,
    /// Requests allowed to wait for a place in the batch; more are refused (`QueueFull`).
    pub max_queue: usize,
    /// Positions per KV block.
    pub block_size: usize,
    /// KV blocks the model has (at least one full context).
    pub kv_blocks: usize,
    /// Most sequences in one batch.
    pub max_seqs: usize,
    /// Most tokens in one forward pass.
    pub max_batch_tokens: usize,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// Places in the batch the worker has free.
    free_slots: usize,
    shutdown: bool,
    next_arrival: u64,
}

struct Shared {
    state: Mutex<QueueState>,
    wake: Condvar,
}

impl Shared {
    /// The queue lock; a poisoned lock is still usable (no code panics while holding it).
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle to the worker thread and its queue. Dropping it stops the worker once the sequences
/// it is running have finished; queued ones are answered `Unavailable`.
pub(crate) struct Scheduler {
    shared: Arc<Shared>,
    limits: Limits,
}

impl Scheduler {
    /// Starts the worker thread. `pool`, when given, runs every forward pass.
    pub fn spawn<M: LanguageModel, T: TokenText>(
        model: M,
        text: Arc<T>,
        pool: Option<rayon::ThreadPool>,
        limits: Limits,
    ) -> Result<Scheduler, EngineError> {
        if limits.block_size == 0 || limits.max_seqs == 0 || limits.max_batch_tokens == 0 {
            return Err(EngineError::Load(
                "the KV block size, --max-seqs and --max-batch-tokens must be at least 1".into(),
            ));
        }
        if limits.kv_blocks * limits.block_size < limits.ctx_size {
            return Err(EngineError::Load(format!(
                "a KV cache of {} tokens cannot hold one full context of {} tokens",
                limits.kv_blocks * limits.block_size,
                limits.ctx_size
            )));
        }
        let state = QueueState { free_slots: limits.max_seqs, ..QueueState::default() };
        let shared = Arc::new(Shared { state: Mutex::new(state), wake: Condvar::new() });
        let batcher = Batcher::new(
            BlockPool::new(limits.kv_blocks, limits.block_size),
            BatchLimits { max_seqs: limits.max_seqs, max_tokens: limits.max_batch_tokens },
        );
        let worker = Worker { model, text, pool, limits, batcher };
        let for_thread = shared.clone();
        std::thread::Builder::new()
            .name("engine-worker".into())
            .spawn(move || worker.run(&for_thread))
            .map_err(|e| EngineError::Load(format!("cannot start the generation thread: {e}")))?;
        Ok(Scheduler { shared, limits })
    }

    /// Checks and queues a request (see `Engine::submit`).
    pub fn submit(&self, req: GenerateRequest) -> Result<mpsc::Receiver<GenEvent>, EngineError> {
        let l = self.limits;
        if req.prompt.is_empty() {
            return Err(EngineError::invalid("the prompt must contain at least one token", Some("prompt")));
        }
        if let Some(bad) = req.prompt.iter().find(|&&id| id as usize >= l.vocab_size) {
            return Err(EngineError::invalid(
                format!("token id {bad} is out of range (vocabulary size {})", l.vocab_size),
                Some("prompt"),
            ));
        }
        if req.prompt.len() > l.ctx_size {
            return Err(EngineError::ContextLength {
                message: format!(
                    "the prompt has {} tokens, more than the model's context of {} tokens",
                    req.prompt.len(),
                    l.ctx_size
                ),
            });
        }
        let sampler = Sampler::new(req.sampling.clone(), l.vocab_size)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let mut st = self.shared.lock();
        if st.shutdown {
            return Err(EngineError::Unavailable);
        }
        st.jobs.retain(|j| !j.tx.is_closed());
        // Free places in the batch take requests at once, so they don't count as waiting.
        let capacity = l.max_queue + st.free_slots;
        if st.jobs.len() >= capacity {
            return Err(EngineError::QueueFull(st.jobs.len()));
        }
        let arrival = st.next_arrival;
        st.next_arrival += 1;
        st.jobs.push_back(Job { req, sampler, tx, arrival });
        drop(st);
        self.shared.wake.notify_one();
        Ok(rx)
    }

    /// Requests waiting for a place in the batch; cancelled ones are not counted.
    pub fn queue_len(&self) -> usize {
        let mut st = self.shared.lock();
        st.jobs.retain(|j| !j.tx.is_closed());
        st.jobs.len()
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
    }
}

struct Worker<M, T> {
    model: M,
    text: Arc<T>,
    pool: Option<rayon::ThreadPool>,
    limits: Limits,
    batcher: Batcher,
}

impl<M: LanguageModel, T: TokenText> Worker<M, T> {
    fn run(mut self, shared: &Shared) {
        loop {
            self.batcher.drop_cancelled();
            let (mut plan, mut budget) = self.batcher.plan_running();
            // Preempted sequences first, then the queue, in order, while they fit.
            while let Some(seq) = self.batcher.preempted.pop_front() {
                if let Err(seq) = self.batcher.admit(seq, &mut budget, &mut plan) {
                    self.batcher.preempted.push_front(seq);
                    break;
                }
            }
            let shutdown = {
                let mut st = shared.lock();
                if self.batcher.preempted.is_empty() && !st.shutdown {
                    self.take_jobs(&mut st, &mut budget, &mut plan);
                }
                st.free_slots = self.batcher.free_slots();
                st.shutdown
            };
            if plan.is_empty() {
                let mut st = shared.lock();
                if st.shutdown && self.batcher.is_idle() {
                    // Waiting requests get an answer instead of a silently closed channel.
                    for job in st.jobs.drain(..) {
                        let _ = job.tx.try_send(GenEvent::Error(EngineError::Unavailable));
                    }
                    return;
                }
                if self.batcher.is_idle() && st.jobs.is_empty() && !shutdown {
                    drop(shared.wake.wait(st).unwrap_or_else(|e| e.into_inner()));
                } else {
                    // Sequences whose clients aren't reading, or no blocks for the queue yet.
                    let timeout = Duration::from_millis(2);
                    drop(shared.wake.wait_timeout(st, timeout).unwrap_or_else(|e| e.into_inner()));
                }
                continue;
            }
            self.step(&plan);
        }
    }

    /// Admits queued jobs while they fit (FIFO: the first that doesn't fit stops the rest).
    fn take_jobs(&mut self, st: &mut QueueState, budget: &mut usize, plan: &mut Vec<Planned>) {
        while let Some(job) = st.jobs.pop_front() {
            if job.tx.is_closed() {
                continue;
            }
            let seq = Seq::new(job);
            if seq.job.req.max_tokens == 0 {
                let _ = seq.finish_empty();
                continue;
            }
            if let Err(seq) = self.batcher.admit(seq, budget, plan) {
                st.jobs.push_front(seq.job);
                break;
            }
        }
    }

    /// Runs one planned forward pass and hands out its logits.
    fn step(&mut self, plan: &[Planned]) {
        let running = &self.batcher.running;
        let inputs: Vec<SeqInput> = plan
            .iter()
            .map(|p| {
                let s = &running[p.index];
                SeqInput {
                    tokens: &s.tokens[s.computed..s.computed + p.n],
                    pos: s.computed,
                    blocks: &s.blocks,
                    logits: s.computed + p.n == s.tokens.len(),
                }
            })
            .collect();
        let model = &mut self.model;
        let on_device = model.samples_on_device()
            && plan.iter().zip(&inputs).all(|(p, i)| !i.logits || !running[p.index].needs_logits());
        let run = |model: &mut M| -> Result<StepOutputs, EngineError> {
            Ok(match on_device {
                true => StepOutputs::Tokens(model.forward_batch_greedy(&inputs)?.into_iter()),
                false => StepOutputs::Logits(model.forward_batch(&inputs)?.into_iter()),
            })
        };
        let outcome = catch_unwind(AssertUnwindSafe(|| match &self.pool {
            Some(pool) => pool.install(|| crate::pool::team(|| run(model))),
            None => run(model),
        }));
        let result = match outcome {
            Ok(Ok(out)) => Ok(out),
            Ok(Err(e)) => Err(e),
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(EngineError::Internal(format!("the generation worker panicked: {msg}")))
            }
        };
        let mut outputs = match result {
            Ok(out) => out,
            Err(e) => {
                // Every sequence of the failed step ends with the error (its keys/values are
                // unknown); sequences not in the step are untouched.
                tracing::warn!(error = %e, "generation failed");
                let mut failed: Vec<usize> = plan.iter().map(|p| p.index).collect();
                failed.sort_unstable();
                for &i in failed.iter().rev() {
                    let seq = self.batcher.remove(i);
                    seq.fail(e.clone());
                }
                return;
            }
        };
        let mut finished = Vec::new();
        for p in plan {
            self.batcher.advance(p.index, p.n);
            let seq = &mut self.batcher.running[p.index];
            if seq.computed < seq.tokens.len() {
                continue; // a prefill chunk: no logits yet
            }
            let outcome = match &mut outputs {
                StepOutputs::Logits(l) => l.next().map(|l| seq.on_logits(l, &*self.text, self.limits.ctx_size)),
                StepOutputs::Tokens(t) => t.next().map(|t| seq.on_token(t, &*self.text, self.limits.ctx_size)),
            };
            let Some(outcome) = outcome else {
                seq.fail(EngineError::Internal("the model returned too few logits".into()));
                finished.push(p.index);
                continue;
            };
            match outcome {
                Ok(None) => {}
                Ok(Some(_)) | Err(Abort::Cancelled) => finished.push(p.index),
                Err(Abort::Failed(e)) => {
                    tracing::warn!(error = %e, "generation failed");
                    seq.fail(e);
                    finished.push(p.index);
                }
            }
        }
        finished.sort_unstable();
        for &i in finished.iter().rev() {
            self.batcher.remove(i);
        }
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
