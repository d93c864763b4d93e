//! The generation worker: one dedicated OS thread that takes requests from a bounded FIFO
//! queue and runs them one at a time over the model's KV cache. Owns the queue, prefix reuse
//! (which token ids are in the KV cache and which of them may be reused), the decode loop
//! (sampling, EOS, stop strings,
//! incremental UTF-8, max_tokens / context limits), usage and timings, cancellation and
//! isolation of failures (an error or a panic ends one request, never the worker).
//!
//! It is generic over two small traits so its logic is tested with a fake model; `engine.rs`
//! plugs in the real model and tokenizer.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::sampler::{log_softmax, top_n, Sampler};
use crate::stop::{StopMatcher, Utf8Stream};
use crate::{EngineError, FinishReason, GenEvent, GenerateRequest, Timings, TokenLogprob, TopLogprob, Usage};

/// Prefill runs in chunks of this many tokens at positions aligned to multiples of it, and only
/// whole chunks computed that way are reused by later requests.
///
/// Why: the model's logits depend slightly on how positions were batched (a 38-token prefill and
/// 37 + 1 tokens give logprobs ~0.1 apart on SmolLM2 Q4_1), enough to change a greedy or seeded
/// choice. With aligned chunks a prompt's computation is the same whether or not its prefix was
/// cached, so the same request always gives the same text (temperature 0 or same seed).
/// Prompts shorter than one chunk are always recomputed in full (cheap).
pub(crate) const REUSE_BLOCK: usize = 64;

/// Events buffered per request before the worker waits for the consumer.
const CHANNEL_CAPACITY: usize = 64;

/// What the worker needs from a model.
pub(crate) trait LanguageModel: Send + 'static {
    /// Runs `tokens` at positions `pos..pos + tokens.len()` over the KV cache (entries at and
    /// after `pos` are overwritten) and returns the logits of the last token.
    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, EngineError>;
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

/// Fixed facts about the model that requests are checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Length of the logits vector (token ids must be below it).
    pub vocab_size: usize,
    /// KV cache capacity in tokens.
    pub ctx_size: usize,
    /// Requests allowed to wait while one runs.
    pub max_queue: usize,
    /// Prefill chunk and prefix-reuse granularity ([`REUSE_BLOCK`]; smaller in tests).
    pub block: usize,
}

struct Job {
    req: GenerateRequest,
    sampler: Sampler,
    tx: mpsc::Sender<GenEvent>,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// A request is running on the worker.
    busy: bool,
    shutdown: bool,
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

/// Handle to the worker thread and its queue. Dropping it stops the worker after the
/// request it is running.
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
        let shared = Arc::new(Shared { state: Mutex::default(), wake: Condvar::new() });
        if limits.block == 0 {
            return Err(EngineError::Internal("prefill block size must be at least 1".into()));
        }
        let worker = Worker { model, text, pool, limits, cache: Vec::new(), reusable: 0 };
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
        // An idle worker takes the next job at once, so it does not count as waiting.
        let capacity = l.max_queue + usize::from(!st.busy);
        if st.jobs.len() >= capacity {
            return Err(EngineError::QueueFull(st.jobs.len()));
        }
        st.jobs.push_back(Job { req, sampler, tx });
        drop(st);
        self.shared.wake.notify_one();
        Ok(rx)
    }

    /// Requests waiting (not the running one); cancelled ones are not counted.
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

/// Why a request ended early.
enum Abort {
    /// The receiver was dropped.
    Cancelled,
    Failed(EngineError),
}

impl From<EngineError> for Abort {
    fn from(e: EngineError) -> Self {
        Abort::Failed(e)
    }
}

struct Worker<M, T> {
    model: M,
    text: Arc<T>,
    pool: Option<rayon::ThreadPool>,
    limits: Limits,
    /// Token ids whose keys/values are in the model's KV cache, by position.
    cache: Vec<u32>,
    /// `cache[..reusable]` was computed by whole aligned prefill chunks (see [`REUSE_BLOCK`]).
    reusable: usize,
}

impl<M: LanguageModel, T: TokenText> Worker<M, T> {
    fn run(mut self, shared: &Shared) {
        loop {
            let mut job = {
                let mut st = shared.lock();
                st.busy = false;
                loop {
                    if st.shutdown {
                        // Waiting requests get an answer instead of a silently closed channel.
                        for job in st.jobs.drain(..) {
                            let _ = job.tx.try_send(GenEvent::Error(EngineError::Unavailable));
                        }
                        return;
                    }
                    match st.jobs.pop_front() {
                        Some(job) if job.tx.is_closed() => continue,
                        Some(job) => {
                            st.busy = true;
                            break job;
                        }
                        None => st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner()),
                    }
                }
            };
            let outcome = catch_unwind(AssertUnwindSafe(|| self.generate(&mut job)));
            let err = match outcome {
                Ok(Ok(())) | Ok(Err(Abort::Cancelled)) => None,
                Ok(Err(Abort::Failed(e))) => Some(e),
                Err(panic) => {
                    // The model's state is unknown after a panic: forget the cache.
                    self.cache.clear();
                    self.reusable = 0;
                    let msg = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    Some(EngineError::Internal(format!("the generation worker panicked: {msg}")))
                }
            };
            if let Some(e) = err {
                tracing::warn!(error = %e, "generation failed");
                let _ = job.tx.blocking_send(GenEvent::Error(e));
            }
        }
    }

    fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, EngineError> {
        let model = &mut self.model;
        let res = match &self.pool {
            Some(pool) => pool.install(|| model.forward(tokens, pos)),
            None => model.forward(tokens, pos),
        };
        // Entries before `pos` are untouched by a forward pass; later ones are only valid on success.
        self.cache.truncate(pos);
        self.reusable = self.reusable.min(pos);
        if res.is_ok() {
            self.cache.extend_from_slice(tokens);
        }
        res
    }

    fn send(job: &Job, ev: GenEvent) -> Result<(), Abort> {
        job.tx.blocking_send(ev).map_err(|_| Abort::Cancelled)
    }

    fn generate(&mut self, job: &mut Job) -> Result<(), Abort> {
        let t_start = Instant::now();
        let prompt = job.req.prompt.clone();
        let n_prompt = prompt.len();
        let max_tokens = job.req.max_tokens;
        let mut usage = Usage { prompt_tokens: n_prompt, completion_tokens: 0 };
        let mut timings = Timings::default();
        if max_tokens == 0 {
            let done = GenEvent::Done { finish_reason: FinishReason::Length, usage, timings };
            return Self::send(job, done);
        }

        // Prefix reuse: whole aligned chunks shared with the cache, never the last prompt token
        // (its logits are needed). Prefill goes on in aligned chunks.
        let block = self.limits.block;
        let common = self.cache.iter().zip(&prompt).take_while(|(a, b)| a == b).count();
        let start = common.min(self.reusable).min(n_prompt - 1) / block * block;
        let mut logits = Vec::new();
        for (i, chunk) in prompt[start..].chunks(block).enumerate() {
            if job.tx.is_closed() {
                return Err(Abort::Cancelled);
            }
            logits = self.forward(chunk, start + i * block)?;
        }
        self.reusable = n_prompt / block * block;
        timings.prompt_n = n_prompt - start;
        timings.prompt_ms = ms(t_start);

        let t_decode = Instant::now();
        let mut generated: Vec<u32> = Vec::new();
        let mut utf8 = Utf8Stream::new();
        let mut stops = StopMatcher::new(&job.req.stop);
        let text = self.text.clone();
        let finish_reason = loop {
            job.sampler.apply_bias(&mut logits);
            let logprobs = job.req.logprobs.map(|n| (log_softmax(&logits), n));
            let token = job.sampler.sample(&mut logits, &prompt, &generated)?;
            generated.push(token);
            usage.completion_tokens = generated.len();
            timings.predicted_n = generated.len();
            timings.predicted_ms = ms(t_decode);
            if text.eos_ids().contains(&token) {
                let end = (String::new(), Vec::new());
                break Self::finish(job, &mut utf8, &mut stops, end, FinishReason::Stop)?;
            }
            let mut lps = Vec::new();
            if let Some((lp, n)) = &logprobs {
                lps.push(token_logprob(&*text, lp, token, *n));
            }
            let bytes = if text.is_control(token) { None } else { text.token_bytes(token) };
            let piece = utf8.push(bytes.unwrap_or(&[]));
            let out = stops.push(&piece);
            if out.stopped {
                Self::send_delta(job, out.text, lps)?;
                break FinishReason::Stop;
            }
            if generated.len() >= max_tokens || self.cache.len() >= self.limits.ctx_size {
                let end = (out.text, lps);
                break Self::finish(job, &mut utf8, &mut stops, end, FinishReason::Length)?;
            }
            Self::send_delta(job, out.text, lps)?;
            if job.tx.is_closed() {
                return Err(Abort::Cancelled);
            }
            let pos = self.cache.len();
            logits = self.forward(&[token], pos)?;
        };
        timings.predicted_ms = ms(t_decode);
        Self::send(job, GenEvent::Done { finish_reason, usage, timings })
    }

    /// Sends a delta unless it carries nothing.
    fn send_delta(job: &Job, text: String, logprobs: Vec<TokenLogprob>) -> Result<(), Abort> {
        if text.is_empty() && logprobs.is_empty() {
            return Ok(());
        }
        Self::send(job, GenEvent::Delta { text, logprobs })
    }

    /// Sends the last delta: `end` (the last token's released text and logprobs) plus the
    /// flushed rest: an unfinished character becomes U+FFFD and text held for a possible stop
    /// string is released, unless the flush completes a stop string (then the reason is Stop).
    fn finish(
        job: &Job,
        utf8: &mut Utf8Stream,
        stops: &mut StopMatcher,
        end: (String, Vec<TokenLogprob>),
        reason: FinishReason,
    ) -> Result<FinishReason, Abort> {
        let (mut text, logprobs) = end;
        let out = stops.push(&utf8.finish());
        text.push_str(&out.text);
        let reason = if out.stopped {
            FinishReason::Stop
        } else {
            text.push_str(&stops.finish());
            reason
        };
        Self::send_delta(job, text, logprobs)?;
        Ok(reason)
    }
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

fn token_logprob<T: TokenText + ?Sized>(text: &T, lp: &[f32], token: u32, n: usize) -> TokenLogprob {
    let bytes_of = |id: u32| text.token_bytes(id).unwrap_or(&[]).to_vec();
    let bytes = bytes_of(token);
    TokenLogprob {
        token_id: token,
        token: String::from_utf8_lossy(&bytes).into_owned(),
        logprob: lp.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY),
        top: top_n(lp, n)
            .into_iter()
            .map(|(id, logprob)| {
                let bytes = bytes_of(id);
                TopLogprob {
                    token_id: id,
                    token: String::from_utf8_lossy(&bytes).into_owned(),
                    bytes,
                    logprob,
                }
            })
            .collect(),
        bytes,
    }
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
