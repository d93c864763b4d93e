//! The engine's public request and event types: what a caller hands to `Engine::submit` and
//! what comes back on the generation channel. Plain data, no tensors, no JSON.

use std::collections::HashMap;

/// One chat turn, already flattened to text by the caller (text parts joined).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `developer` (rendered as `system`), `user` or `assistant`.
    pub role: String,
    pub content: String,
}

/// Sampling settings for one request. Defaults are OpenAI's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f32,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 0.0 disables.
    pub min_p: f32,
    /// Same seed, same prompt, same settings: same output.
    pub seed: Option<u64>,
    /// OpenAI semantics (-2..2): subtract `count * frequency_penalty` from a seen token's logit.
    pub frequency_penalty: f32,
    /// OpenAI semantics (-2..2): subtract `presence_penalty` once from a seen token's logit.
    pub presence_penalty: f32,
    /// llama.cpp/HF semantics: 1.0 disables; divides positive logits of seen tokens, multiplies negative ones.
    pub repetition_penalty: f32,
    /// token id -> bias added to its logit (-100..100; -100 bans, 100 forces in practice).
    pub logit_bias: HashMap<u32, f32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: HashMap::new(),
        }
    }
}

/// One generation job.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Prompt token ids (already templated and tokenized, BOS included where the model wants it).
    pub prompt: Vec<u32>,
    pub sampling: SamplingParams,
    /// Up to 4 stop strings; output stops before the first match and never contains it.
    pub stop: Vec<String>,
    /// Maximum number of generated tokens. The caller has checked prompt + max_tokens <= context.
    pub max_tokens: usize,
    /// `Some(n)`: report each sampled token's logprob and the `n` most likely alternatives (n may be 0).
    pub logprobs: Option<usize>,
}

/// A token's log-probability as reported to clients.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token_id: u32,
    /// The token's text (lossy UTF-8 of `bytes`).
    pub token: String,
    /// The token's raw bytes (a token may hold part of a multi-byte character).
    pub bytes: Vec<u8>,
    pub logprob: f32,
    /// Most likely alternatives at this position, best first (empty when 0 were asked for).
    pub top: Vec<TopLogprob>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    pub token_id: u32,
    pub token: String,
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS token or a stop string.
    Stop,
    /// `max_tokens` reached (or the context is full).
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// Token counts for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    /// Prompt tokens whose keys/values came from the prefix cache (not computed again).
    pub cached_tokens: usize,
}

/// llama.cpp-style timings.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Timings {
    pub prompt_n: usize,
    pub prompt_ms: f64,
    pub predicted_n: usize,
    pub predicted_ms: f64,
}

/// What a generation sends back, in order: zero or more `Delta`s, then exactly one `Done` or `Error`.
#[derive(Debug, Clone)]
pub enum GenEvent {
    /// New output text (may be empty when only logprobs advance: e.g. a partial UTF-8 character
    /// or text held back because it may start a stop string), with the logprobs of the tokens
    /// it came from.
    Delta { text: String, logprobs: Vec<TokenLogprob> },
    Done { finish_reason: FinishReason, usage: Usage, timings: Timings },
    Error(crate::EngineError),
}
