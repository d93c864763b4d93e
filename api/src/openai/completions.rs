//! POST /v1/completions (legacy text completions): prompt as a string, one-element string
//! array, token ids or one-element array of token-id arrays; `echo`; `max_tokens` defaulting to
//! 16 as the spec says; `logprobs` (0..5) in the legacy {tokens, token_logprobs, top_logprobs,
//! text_offset} format; sync and SSE. `suffix`, `best_of > 1` and `n > 1` are 400s.

use std::collections::HashMap;
use std::sync::Arc;

use ai_sandbox_engine::{FinishReason, GenEvent, GenerateRequest, Timings, TokenLogprob, Usage};
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
use crate::error::ApiError;
use crate::sse::{sse_response, ChunkMaker};
use crate::{AppState, Backend};

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

/// The prompt, as text or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptInput {
    Text(String),
    Tokens(Vec<u32>),
}

fn token_ids(v: &[Value], vocab: usize, param: &str) -> Result<Vec<u32>, ApiError> {
    v.iter()
        .map(|x| {
            x.as_u64()
                .filter(|&id| (id as usize) < vocab)
                .map(|id| id as u32)
                .ok_or_else(|| {
                    ApiError::invalid(
                        format!("Token ids in '{param}' must be integers in 0..{vocab}; got {x}."),
                        Some(param),
                    )
                })
        })
        .collect()
}

/// Read `prompt` (string, [string], int[] or [int[]]); more than one prompt is a 400.
pub fn parse_prompt(p: Option<&Value>, vocab: usize) -> Result<PromptInput, ApiError> {
    let many = || {
        ApiError::invalid(
            "Only one prompt per request is supported (it would need n > 1 choices); send the prompts as separate requests.",
            Some("prompt"),
        )
    };
    let bad = || {
        ApiError::invalid(
            "'prompt' must be a string, an array of strings, or token ids.",
            Some("prompt"),
        )
    };
    match p {
        None | Some(Value::Null) => Err(ApiError::invalid("'prompt' is required.", Some("prompt"))),
        Some(Value::String(s)) => Ok(PromptInput::Text(s.clone())),
        Some(Value::Array(a)) if a.is_empty() => Err(ApiError::invalid(
            "'prompt' must not be empty.",
            Some("prompt"),
        )),
        Some(Value::Array(a)) => match &a[0] {
            Value::String(_) if a.len() > 1 => Err(many()),
            Value::String(s) => Ok(PromptInput::Text(s.clone())),
            Value::Number(_) => Ok(PromptInput::Tokens(token_ids(a, vocab, "prompt")?)),
            Value::Array(_) if a.len() > 1 => Err(many()),
            Value::Array(inner) if inner.is_empty() => Err(ApiError::invalid(
                "'prompt' must not be empty.",
                Some("prompt"),
            )),
            Value::Array(inner) => Ok(PromptInput::Tokens(token_ids(inner, vocab, "prompt")?)),
            _ => Err(bad()),
        },
        Some(_) => Err(bad()),
    }
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

struct CompletionChunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    logprobs: bool,
    echo: Option<String>,
    offset: usize,
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
}

impl ChunkMaker for CompletionChunks {
    fn start(&mut self) -> Vec<Value> {
        match self.echo.take() {
            Some(text) if !text.is_empty() => {
                let lp = self.logprobs.then(LegacyLogprobs::default);
                vec![self.chunk(
                    vec![CompletionChoice {
                        text,
                        index: 0,
                        logprobs: lp,
                        finish_reason: None,
                    }],
                    None,
                    None,
                )]
            }
            _ => vec![],
        }
    }

    fn delta(&mut self, text: String, logprobs: Vec<TokenLogprob>) -> Vec<Value> {
        if text.is_empty() && (logprobs.is_empty() || !self.logprobs) {
            return vec![];
        }
        let lp = if self.logprobs {
            Some(legacy_logprobs(logprobs, &mut self.offset))
        } else {
            None
        };
        vec![self.chunk(
            vec![CompletionChoice {
                text,
                index: 0,
                logprobs: lp,
                finish_reason: None,
            }],
            None,
            None,
        )]
    }

    fn done(&mut self, finish: FinishReason, usage: Usage, timings: Timings) -> Vec<Value> {
        let t = Some(TimingsDto::from(timings));
        let fin = CompletionChoice {
            text: String::new(),
            index: 0,
            logprobs: None,
            finish_reason: Some(finish.as_str()),
        };
        let mut out = vec![self.chunk(vec![fin], None, t)];
        if self.include_usage {
            out.push(self.chunk(vec![], Some(usage.into()), t));
        }
        out
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

/// POST /v1/completions.
pub async fn handle(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    let backend: Arc<dyn Backend> = state.backend()?;
    let model = state.resolve_model(backend.as_ref(), req.model.as_deref())?;
    check_unsupported(&req)?;
    let vocab = backend.vocab_size();
    let prompt_in = parse_prompt(req.prompt.as_ref(), vocab)?;
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
    let b = backend.clone();
    let (prompt, prompt_text) = blocking(move || match prompt_in {
        PromptInput::Text(t) => Ok((
            b.tokenize(&t, b.add_bos_default())?,
            if echo { Some(t) } else { None },
        )),
        PromptInput::Tokens(ids) => {
            let text = if echo {
                Some(b.detokenize(&ids)?)
            } else {
                None
            };
            Ok((ids, text))
        }
    })
    .await?;
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            "'prompt' must not be empty.",
            Some("prompt"),
        ));
    }
    let max_tokens = resolve_max_tokens(
        prompt.len(),
        backend.ctx_size(),
        req.max_tokens,
        Some(DEFAULT_MAX_TOKENS),
        "prompt",
    )?;
    let logprobs = req.logprobs.map(|l| l as usize);
    let stream = req.stream.unwrap_or(false);
    let include_usage = req
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    tracing::info!(
        prompt_tokens = prompt.len(),
        max_tokens,
        stream,
        "text completion"
    );
    let prompt_len = prompt.len();
    let rx = if max_tokens == 0 {
        // Nothing to generate (echo-only requests): answer without queueing.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let usage = Usage {
            prompt_tokens: prompt_len,
            completion_tokens: 0,
        };
        let _ = tx.try_send(GenEvent::Done {
            finish_reason: FinishReason::Length,
            usage,
            timings: Timings::default(),
        });
        rx
    } else {
        backend.submit(GenerateRequest {
            prompt,
            sampling,
            stop,
            max_tokens,
            logprobs,
        })?
    };
    let id = new_id("cmpl");
    let created = unix_now();
    let echo_chars = prompt_text.as_deref().map_or(0, |t| t.chars().count());
    if stream {
        let maker = CompletionChunks {
            id,
            created,
            model,
            include_usage,
            logprobs: logprobs.is_some(),
            echo: prompt_text,
            offset: echo_chars,
        };
        return Ok(sse_response(rx, maker));
    }
    let c = collect(rx).await?;
    let mut offset = echo_chars;
    let text = match prompt_text {
        Some(p) => p + &c.text,
        None => c.text,
    };
    let body = Completion {
        id: &id,
        object: "text_completion",
        created,
        model: &model,
        system_fingerprint: SYSTEM_FINGERPRINT,
        choices: vec![CompletionChoice {
            text,
            index: 0,
            logprobs: logprobs.map(|_| legacy_logprobs(c.logprobs, &mut offset)),
            finish_reason: Some(c.finish.as_str()),
        }],
        usage: Some(Some(c.usage.into())),
        timings: Some(c.timings.into()),
    };
    Ok(Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prompt_forms() {
        assert_eq!(
            parse_prompt(Some(&json!("hi")), 10).unwrap(),
            PromptInput::Text("hi".into())
        );
        assert_eq!(
            parse_prompt(Some(&json!(["hi"])), 10).unwrap(),
            PromptInput::Text("hi".into())
        );
        assert_eq!(
            parse_prompt(Some(&json!([1, 2])), 10).unwrap(),
            PromptInput::Tokens(vec![1, 2])
        );
        assert_eq!(
            parse_prompt(Some(&json!([[3]])), 10).unwrap(),
            PromptInput::Tokens(vec![3])
        );
        for bad in [
            json!(["a", "b"]),
            json!([[1], [2]]),
            json!([10]),
            json!([-1]),
            json!([]),
            json!(5),
            json!({}),
        ] {
            let e = parse_prompt(Some(&bad), 10).unwrap_err();
            assert_eq!(e.object.param.as_deref(), Some("prompt"), "{bad}");
        }
        assert!(parse_prompt(None, 10).is_err());
    }

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
