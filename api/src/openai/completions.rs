//! POST /v1/completions (legacy text completions): one choice per prompt (a string, an array of
//! strings, token ids or an array of token-id arrays, read by `prompts`), each prompt its own
//! generation run one after another, usage summed; `echo`; `max_tokens` defaulting to 16 as the
//! spec says; `logprobs` (0..5) in the legacy {tokens, token_logprobs, top_logprobs,
//! text_offset} format; sync and SSE. `suffix`, `best_of > 1` and `n > 1` are 400s.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ai_sandbox_engine::{
    EngineError, FinishReason, GenEvent, GenerateRequest, SamplingParams, Timings, TokenLogprob,
    Usage,
};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chat::{blocking, finite};
use super::common::{
    collect, new_id, resolve_max_tokens, sampling_params, stop_strings, unix_now, ApiJson,
    SamplingInput, StopField, StreamOptions, TimingsDto, UsageDto, SYSTEM_FINGERPRINT,
};
use super::prompts::{parse_prompts, PromptInput};
use crate::error::ApiError;
use crate::sse::{sse_response, ChunkMaker, NextGeneration};
use crate::{AppState, Backend};
use tokio::sync::mpsc::Receiver;

/// The spec's default for `max_tokens` on this endpoint.
pub const DEFAULT_MAX_TOKENS: usize = 16;

/// CreateCompletionRequest, as far as we read it; unknown fields are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Option<Value>,
    pub suffix: Option<String>,
    pub echo: Option<bool>,
    pub best_of: Option<i64>,
    pub n: Option<i64>,
    pub logprobs: Option<i64>,
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub logit_bias: Option<HashMap<String, f64>>,
    pub stop: Option<StopField>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

/// The legacy `logprobs` object.
#[derive(Debug, Clone, Serialize, Default)]
pub struct LegacyLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<HashMap<String, f32>>,
    pub text_offset: Vec<usize>,
}

/// Build legacy logprobs; `offset` is the char offset of the first token in the choice text
/// and is advanced past the tokens (offsets count the token texts' chars).
fn legacy_logprobs(lps: Vec<TokenLogprob>, offset: &mut usize) -> LegacyLogprobs {
    let mut out = LegacyLogprobs::default();
    for l in lps {
        out.text_offset.push(*offset);
        *offset += l.token.chars().count();
        out.token_logprobs.push(finite(l.logprob));
        out.top_logprobs.push(
            l.top
                .into_iter()
                .map(|t| (t.token, finite(t.logprob)))
                .collect(),
        );
        out.tokens.push(l.token);
    }
    out
}

#[derive(Debug, Serialize)]
struct CompletionChoice {
    text: String,
    index: u32,
    logprobs: Option<LegacyLogprobs>,
    finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: Vec<CompletionChoice>,
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageDto>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timings: Option<TimingsDto>,
}

/// One prompt, tokenized and checked against the context.
struct Prepared {
    tokens: Vec<u32>,
    /// The prompt's text, when `echo` asks for it back.
    echo: Option<String>,
    max_tokens: usize,
}

/// What the generations of every prompt of one request share.
struct Generation {
    backend: Arc<dyn Backend>,
    sampling: SamplingParams,
    stop: Vec<String>,
    logprobs: Option<usize>,
}

impl Generation {
    /// Start one prompt's generation: queued in the backend, or answered at once when there is
    /// nothing to generate (`max_tokens` 0, e.g. echo-only requests).
    fn start(
        &self,
        tokens: Vec<u32>,
        max_tokens: usize,
    ) -> Result<Receiver<GenEvent>, EngineError> {
        if max_tokens == 0 {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            let usage = Usage {
                prompt_tokens: tokens.len(),
                completion_tokens: 0,
                cached_tokens: 0,
            };
            let _ = tx.try_send(GenEvent::Done {
                finish_reason: FinishReason::Length,
                usage,
                timings: Timings::default(),
            });
            return Ok(rx);
        }
        self.backend.submit(GenerateRequest {
            prompt: tokens,
            sampling: self.sampling.clone(),
            stop: self.stop.clone(),
            max_tokens,
            logprobs: self.logprobs,
        })
    }
}

fn add_up(total: &mut (Usage, Timings), usage: Usage, timings: Timings) {
    total.0.prompt_tokens += usage.prompt_tokens;
    total.0.completion_tokens += usage.completion_tokens;
    total.0.cached_tokens += usage.cached_tokens;
    total.1.prompt_n += timings.prompt_n;
    total.1.prompt_ms += timings.prompt_ms;
    total.1.predicted_n += timings.predicted_n;
    total.1.predicted_ms += timings.predicted_ms;
}

/// The SSE chunks of a completions stream; the prompts run one after another, each prompt's
/// chunks carry its choice `index`, and the usage chunk (summed over prompts) comes last.
struct CompletionChunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    gen: Generation,
    /// Prompts whose generation has not started yet, in order.
    rest: VecDeque<Prepared>,
    /// The choice index of the running generation.
    index: u32,
    /// The running prompt's echo, sent by `start`.
    echo: Option<String>,
    /// Char offset of the next token in the running choice's text.
    offset: usize,
    total: (Usage, Timings),
}

impl CompletionChunks {
    fn chunk(
        &self,
        choices: Vec<CompletionChoice>,
        usage: Option<UsageDto>,
        timings: Option<TimingsDto>,
    ) -> Value {
        let c = Completion {
            id: &self.id,
            object: "text_completion",
            created: self.created,
            model: &self.model,
            system_fingerprint: SYSTEM_FINGERPRINT,
            choices,
            usage: self.include_usage.then_some(usage),
            timings,
        };
        serde_json::to_value(c).unwrap_or(Value::Null)
    }

    fn text_chunk(&self, text: String, logprobs: Option<LegacyLogprobs>) -> Value {
        let choice = CompletionChoice {
            text,
            index: self.index,
            logprobs,
            finish_reason: None,
        };
        self.chunk(vec![choice], None, None)
    }

    /// The running prompt's echo chunk, if it has one.
    fn echo_chunk(&mut self) -> Vec<Value> {
        match self.echo.take() {
            Some(text) if !text.is_empty() => {
                let lp = self.gen.logprobs.map(|_| LegacyLogprobs::default());
                vec![self.text_chunk(text, lp)]
            }
            _ => vec![],
        }
    }
}

impl ChunkMaker for CompletionChunks {
    fn start(&mut self) -> Vec<Value> {
        self.echo_chunk()
    }

    fn delta(&mut self, text: String, logprobs: Vec<TokenLogprob>) -> Vec<Value> {
        let with_lp = self.gen.logprobs.is_some();
        if text.is_empty() && (logprobs.is_empty() || !with_lp) {
            return vec![];
        }
        let lp = with_lp.then(|| legacy_logprobs(logprobs, &mut self.offset));
        vec![self.text_chunk(text, lp)]
    }

    fn done(&mut self, finish: FinishReason, usage: Usage, timings: Timings) -> Vec<Value> {
        add_up(&mut self.total, usage, timings);
        let fin = CompletionChoice {
            text: String::new(),
            index: self.index,
            logprobs: None,
            finish_reason: Some(finish.as_str()),
        };
        let mut out = vec![self.chunk(vec![fin], None, Some(timings.into()))];
        if self.include_usage && self.rest.is_empty() {
            let (u, t) = self.total;
            out.push(self.chunk(vec![], Some(u.into()), Some(t.into())));
        }
        out
    }

    fn next(&mut self) -> Option<NextGeneration> {
        let p = self.rest.pop_front()?;
        self.index += 1;
        self.offset = p.echo.as_deref().map_or(0, |t| t.chars().count());
        self.echo = p.echo;
        Some(
            self.gen
                .start(p.tokens, p.max_tokens)
                .map(|rx| (self.echo_chunk(), rx)),
        )
    }
}

fn check_unsupported(r: &CompletionRequest) -> Result<(), ApiError> {
    if r.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::unsupported(
            "suffix",
            "'suffix' (fill-in-the-middle)",
        ));
    }
    if r.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid(
            "Only best_of=1 is supported.",
            Some("best_of"),
        ));
    }
    if let Some(n) = r.n {
        if n != 1 {
            return Err(ApiError::invalid(
                format!("Only n=1 is supported; got n={n}."),
                Some("n"),
            ));
        }
    }
    if let Some(l) = r.logprobs {
        if !(0..=5).contains(&l) {
            return Err(ApiError::invalid(
                format!("'logprobs' must be between 0 and 5; got {l}."),
                Some("logprobs"),
            ));
        }
        if r.echo == Some(true) {
            return Err(ApiError::unsupported(
                "logprobs",
                "'logprobs' together with 'echo' (prompt logprobs)",
            ));
        }
    }
    if r.stream_options.is_some() && r.stream != Some(true) {
        return Err(ApiError::invalid(
            "'stream_options' is only allowed when 'stream' is true.",
            Some("stream_options"),
        ));
    }
    Ok(())
}

/// Tokenize each prompt (keeping its text when echoed) and check it against the context; with
/// several prompts an error says which one (`prompt[i]`), and always names `prompt`.
async fn prepare(
    backend: &Arc<dyn Backend>,
    inputs: Vec<PromptInput>,
    echo: bool,
    requested: Option<u64>,
) -> Result<Vec<Prepared>, ApiError> {
    let b = backend.clone();
    let tokenized = blocking(move || {
        inputs
            .into_iter()
            .map(|p| match p {
                PromptInput::Text(t) => {
                    Ok((b.tokenize(&t, b.add_bos_default())?, echo.then_some(t)))
                }
                PromptInput::Tokens(ids) => {
                    let text = if echo {
                        Some(b.detokenize(&ids)?)
                    } else {
                        None
                    };
                    Ok((ids, text))
                }
            })
            .collect::<Result<Vec<_>, EngineError>>()
    })
    .await?;
    let several = tokenized.len() > 1;
    let ctx = backend.ctx_size();
    tokenized
        .into_iter()
        .enumerate()
        .map(|(i, (tokens, echo))| {
            let checked = if tokens.is_empty() {
                Err(ApiError::invalid(
                    "'prompt' must not be empty.",
                    Some("prompt"),
                ))
            } else {
                resolve_max_tokens(
                    tokens.len(),
                    ctx,
                    requested,
                    Some(DEFAULT_MAX_TOKENS),
                    "prompt",
                )
            };
            match checked {
                Ok(max_tokens) => Ok(Prepared {
                    tokens,
                    echo,
                    max_tokens,
                }),
                Err(mut e) if several => {
                    e.object.message = format!("prompt[{i}]: {}", e.object.message);
                    Err(e)
                }
                Err(e) => Err(e),
            }
        })
        .collect()
}

/// POST /v1/completions: one choice per prompt, generated one after another.
pub async fn handle(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let backend: Arc<dyn Backend> = state.backend()?;
    let model = state.resolve_model(backend.as_ref(), req.model.as_deref())?;
    check_unsupported(&req)?;
    let vocab = backend.vocab_size();
    let inputs = parse_prompts(req.prompt.as_ref(), vocab)?;
    let sampling = sampling_params(
        &SamplingInput {
            temperature: req.temperature,
            top_p: req.top_p,
            top_k: req.top_k,
            min_p: req.min_p,
            repetition_penalty: req.repetition_penalty,
            seed: req.seed,
            frequency_penalty: req.frequency_penalty,
            presence_penalty: req.presence_penalty,
            logit_bias: req.logit_bias.clone(),
        },
        vocab,
    )?;
    let stop = stop_strings(req.stop.as_ref())?;
    let echo = req.echo.unwrap_or(false);
    let mut prompts: VecDeque<Prepared> = prepare(&backend, inputs, echo, req.max_tokens)
        .await?
        .into();
    let stream = req.stream.unwrap_or(false);
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    tracing::info!(
        prompts = prompts.len(),
        prompt_tokens = prompts.iter().map(|p| p.tokens.len()).sum::<usize>(),
        max_tokens = prompts.iter().map(|p| p.max_tokens).max().unwrap_or(0),
        stream,
        "text completion"
    );
    let gen = Generation {
        backend,
        sampling,
        stop,
        logprobs: req.logprobs.map(|l| l as usize),
    };
    let id = new_id("cmpl");
    let created = unix_now();
    if stream {
        let Some(first) = prompts.pop_front() else {
            return Err(ApiError::invalid(
                "'prompt' must not be empty.",
                Some("prompt"),
            ));
        };
        // The first generation is queued here, so a full queue is still a 429 status.
        let rx = gen.start(first.tokens, first.max_tokens)?;
        let maker = CompletionChunks {
            id,
            created,
            model,
            include_usage,
            gen,
            rest: prompts,
            index: 0,
            offset: first.echo.as_deref().map_or(0, |t| t.chars().count()),
            echo: first.echo,
            total: Default::default(),
        };
        return Ok(sse_response(rx, maker));
    }
    let mut choices = Vec::with_capacity(prompts.len());
    let mut total = (Usage::default(), Timings::default());
    for (index, p) in (0u32..).zip(prompts) {
        // Dropping this future (client gone) drops the running receiver: that cancels it.
        let c = collect(gen.start(p.tokens, p.max_tokens)?).await?;
        add_up(&mut total, c.usage, c.timings);
        let mut offset = p.echo.as_deref().map_or(0, |t| t.chars().count());
        choices.push(CompletionChoice {
            text: p.echo.unwrap_or_default() + &c.text,
            index,
            logprobs: gen
                .logprobs
                .map(|_| legacy_logprobs(c.logprobs, &mut offset)),
            finish_reason: Some(c.finish.as_str()),
        });
    }
    let body = Completion {
        id: &id,
        object: "text_completion",
        created,
        model: &model,
        system_fingerprint: SYSTEM_FINGERPRINT,
        choices,
        usage: Some(Some(total.0.into())),
        timings: Some(total.1.into()),
    };
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_offsets_advance() {
        let lp = |t: &str| TokenLogprob {
            token_id: 0,
            token: t.into(),
            bytes: t.as_bytes().to_vec(),
            logprob: f32::NEG_INFINITY,
            top: vec![],
        };
        let mut off = 3;
        let l = legacy_logprobs(vec![lp("ab"), lp("é")], &mut off);
        assert_eq!(l.text_offset, vec![3, 5]);
        assert_eq!(off, 6);
        assert_eq!(l.token_logprobs, vec![-9999.0, -9999.0]);
    }
}
