//! One request inside the batching worker: its tokens (prompt, then what was sampled), how many
//! of them have keys/values in the KV cache and in which blocks, and its output state (sampling,
//! EOS, stop strings, incremental UTF-8, max_tokens / context limits, logprobs, usage and
//! timings), turning each step's logits into events on the request's channel.

use std::time::Instant;

use tokio::sync::mpsc;

use crate::kv::BlockId;
use crate::sampler::{log_softmax, top_n, Sampler};
use crate::stop::{StopMatcher, Utf8Stream};
use crate::worker::TokenText;
use crate::{EngineError, FinishReason, GenEvent, GenerateRequest, Timings, TokenLogprob, TopLogprob, Usage};

/// A queued request, as `submit` checked it.
pub(crate) struct Job {
    pub req: GenerateRequest,
    pub sampler: Sampler,
    pub tx: mpsc::Sender<GenEvent>,
    /// When it was submitted (queue time counts in no timing; kept for ordering only).
    pub arrival: u64,
}

/// Why a sequence ended early.
pub(crate) enum Abort {
    /// The receiver was dropped.
    Cancelled,
    Failed(EngineError),
}

impl From<EngineError> for Abort {
    fn from(e: EngineError) -> Self {
        Abort::Failed(e)
    }
}

/// A request being generated.
pub(crate) struct Seq {
    pub job: Job,
    /// Prompt tokens, then the sampled ones.
    pub tokens: Vec<u32>,
    pub n_prompt: usize,
    /// `tokens[..computed]` have keys/values in `blocks`.
    pub computed: usize,
    /// Block table: block `i` holds positions `i*block_size..`.
    pub blocks: Vec<BlockId>,
    /// Leading blocks registered in (or adopted from) the prefix cache.
    pub hashed: usize,
    /// Chain hash of block `hashed - 1`.
    pub last_hash: Option<u64>,
    utf8: Utf8Stream,
    stops: StopMatcher,
    timings: Timings,
    /// Set when the sequence was first admitted.
    started: Option<Instant>,
    /// Set when its first token was sampled.
    decoding: Option<Instant>,
}

impl Seq {
    pub(crate) fn new(job: Job) -> Seq {
        let tokens = job.req.prompt.clone();
        let stops = StopMatcher::new(&job.req.stop);
        Seq {
            n_prompt: tokens.len(),
            tokens,
            job,
            computed: 0,
            blocks: Vec::new(),
            hashed: 0,
            last_hash: None,
            utf8: Utf8Stream::new(),
            stops,
            timings: Timings::default(),
            started: None,
            decoding: None,
        }
    }

    pub(crate) fn generated(&self) -> usize {
        self.tokens.len() - self.n_prompt
    }

    /// Called when the sequence enters the running set with `cached` tokens from the prefix
    /// cache. The first admission starts the prompt timer; a re-admission after preemption
    /// counts nothing again.
    pub(crate) fn admitted(&mut self, cached: usize) {
        if self.started.is_none() {
            self.started = Some(Instant::now());
            self.timings.prompt_n = self.n_prompt - cached;
        }
    }

    /// Forgets its KV state (preemption: it will be recomputed from its tokens).
    pub(crate) fn reset_kv(&mut self) -> Vec<BlockId> {
        self.computed = 0;
        self.hashed = 0;
        self.last_hash = None;
        std::mem::take(&mut self.blocks)
    }

    /// Whether the consumer has room for what one step can send (a delta and Done).
    pub(crate) fn can_send(&self) -> bool {
        self.job.tx.capacity() >= 2
    }

    pub(crate) fn is_cancelled(&self) -> bool {
        self.job.tx.is_closed()
    }

    fn send(&self, ev: GenEvent) -> Result<(), Abort> {
        match self.job.tx.try_send(ev) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Abort::Cancelled),
            // The scheduler only runs a sequence whose channel has room for a step's events;
            // should that ever be wrong, wait rather than lose an event.
            Err(mpsc::error::TrySendError::Full(ev)) => {
                self.job.tx.blocking_send(ev).map_err(|_| Abort::Cancelled)
            }
        }
    }

    /// Ends a request that asked for no tokens.
    pub(crate) fn finish_empty(&self) -> Result<(), Abort> {
        let usage = Usage { prompt_tokens: self.n_prompt, completion_tokens: 0, cached_tokens: 0 };
        self.send(GenEvent::Done { finish_reason: FinishReason::Length, usage, timings: self.timings })
    }

    /// Whether the next token needs the full logits on the host; if not (plain greedy, no
    /// logprobs), a device's own argmax ([`Seq::on_token`]) gives the same token.
    pub(crate) fn needs_logits(&self) -> bool {
        !self.job.sampler.is_plain_greedy() || self.job.req.logprobs.is_some()
    }

    /// Takes the logits of the last token: samples the next one and sends what it adds.
    /// Ok(Some(reason)) when the request is complete (Done has been sent).
    pub(crate) fn on_logits<T: TokenText + ?Sized>(
        &mut self,
        mut logits: Vec<f32>,
        text: &T,
        ctx_size: usize,
    ) -> Result<Option<FinishReason>, Abort> {
        let now = self.start_decoding();
        let job = &mut self.job;
        job.sampler.apply_bias(&mut logits);
        let logprobs = job.req.logprobs.map(|n| (log_softmax(&logits), n));
        let (prompt, generated) = self.tokens.split_at(self.n_prompt);
        let token = job.sampler.sample(&mut logits, prompt, generated)?;
        self.accept(token, logprobs, now, text, ctx_size)
    }

    /// [`Seq::on_logits`] for a sequence that doesn't [`Seq::needs_logits`]: the token the
    /// device chose (the argmax of the logits).
    pub(crate) fn on_token<T: TokenText + ?Sized>(
        &mut self,
        token: u32,
        text: &T,
        ctx_size: usize,
    ) -> Result<Option<FinishReason>, Abort> {
        let now = self.start_decoding();
        self.accept(token, None, now, text, ctx_size)
    }

    /// Notes the end of the prompt at the first token; returns now.
    fn start_decoding(&mut self) -> Instant {
        let now = Instant::now();
        if self.decoding.is_none() {
            self.timings.prompt_ms = ms(self.started.unwrap_or(now), now);
            self.decoding = Some(now);
        }
        now
    }

    /// Appends the chosen token and sends what it adds (text, logprobs from `logprobs` =
    /// the log-softmax and how many alternatives), or Done.
    fn accept<T: TokenText + ?Sized>(
        &mut self,
        token: u32,
        logprobs: Option<(Vec<f32>, usize)>,
        now: Instant,
        text: &T,
        ctx_size: usize,
    ) -> Result<Option<FinishReason>, Abort> {
        self.tokens.push(token);
        self.timings.predicted_n = self.generated();
        let decoding = self.decoding.unwrap_or(now);
        self.timings.predicted_ms = ms(decoding, Instant::now());
        let reason = if text.eos_ids().contains(&token) {
            self.finish(String::new(), Vec::new(), FinishReason::Stop)?
        } else {
            let mut lps = Vec::new();
            if let Some((lp, n)) = &logprobs {
                lps.push(token_logprob(text, lp, token, *n));
            }
            let bytes = if text.is_control(token) { None } else { text.token_bytes(token) };
            let piece = self.utf8.push(bytes.unwrap_or(&[]));
            let out = self.stops.push(&piece);
            if out.stopped {
                self.send_delta(out.text, lps)?;
                FinishReason::Stop
            } else if self.generated() >= self.job.req.max_tokens || self.computed >= ctx_size {
                self.finish(out.text, lps, FinishReason::Length)?
            } else {
                self.send_delta(out.text, lps)?;
                return Ok(None);
            }
        };
        let usage = Usage {
            prompt_tokens: self.n_prompt,
            completion_tokens: self.generated(),
            cached_tokens: self.n_prompt - self.timings.prompt_n,
        };
        self.send(GenEvent::Done { finish_reason: reason, usage, timings: self.timings })?;
        Ok(Some(reason))
    }

    /// Sends a delta unless it carries nothing.
    fn send_delta(&self, text: String, logprobs: Vec<TokenLogprob>) -> Result<(), Abort> {
        if text.is_empty() && logprobs.is_empty() {
            return Ok(());
        }
        self.send(GenEvent::Delta { text, logprobs })
    }

    /// Sends the last delta: the last token's released text and logprobs plus the flushed rest:
    /// an unfinished character becomes U+FFFD and text held for a possible stop string is
    /// released, unless the flush completes a stop string (then the reason is Stop).
    fn finish(
        &mut self,
        mut text: String,
        logprobs: Vec<TokenLogprob>,
        reason: FinishReason,
    ) -> Result<FinishReason, Abort> {
        let out = self.stops.push(&self.utf8.finish());
        text.push_str(&out.text);
        let reason = if out.stopped {
            FinishReason::Stop
        } else {
            text.push_str(&self.stops.finish());
            reason
        };
        self.send_delta(text, logprobs)?;
        Ok(reason)
    }

    /// Reports a failure to the client (best effort: it may be gone).
    pub(crate) fn fail(&self, e: EngineError) {
        let _ = self.send(GenEvent::Error(e));
    }
}

fn ms(from: Instant, to: Instant) -> f64 {
    to.duration_since(from).as_secs_f64() * 1000.0
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
