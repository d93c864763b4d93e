//! Pieces shared by the chat and completions endpoints: the JSON body extractor (OpenAI-shaped
//! rejections), sampling-parameter validation into `SamplingParams`, stop strings, the context
//! check, usage/timings DTOs, and collecting a generation for a non-streaming answer.

use std::collections::HashMap;

use ai_sandbox_engine::{FinishReason, GenEvent, SamplingParams, Timings, TokenLogprob, Usage};
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::Receiver;

use crate::error::ApiError;

/// A JSON request body whose every rejection (bad JSON, wrong types, too large) is an OpenAI error.
/// The `Content-Type` header is not checked: curl users often omit it.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rej| {
            let status = rej.status();
            let message = if status == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                format!(
                    "The request body is larger than the {} MiB limit.",
                    crate::BODY_LIMIT_BYTES / (1024 * 1024)
                )
            } else {
                format!("Could not read the request body: {}", rej.body_text())
            };
            ApiError::new(
                status,
                crate::error::kind::INVALID_REQUEST,
                message,
                None,
                None,
            )
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parse a JSON body, naming the offending field (`param`) on a type error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "The request body is empty; expected a JSON object.",
            None,
        ));
    }
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid(
            "The request body must be a JSON object.",
            None,
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid(
                format!("We could not parse the JSON body of your request ({inner}). Expected a valid JSON object."),
                None,
            )
        } else {
            let param = if path == "." || path.is_empty() { None } else { Some(path.as_str()) };
            let message = match param {
                Some(p) => format!("Invalid type or value for '{p}': {inner}"),
                None => format!("Invalid request body: {inner}"),
            };
            ApiError::invalid(message, param)
        }
    })
}

/// `stop`: a string or an array of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
    /// OpenAI-only; accepted and ignored.
    #[allow(dead_code)]
    pub include_obfuscation: Option<bool>,
}

/// The sampling fields shared by chat and completions, as sent.
#[derive(Debug, Clone, Default)]
pub struct SamplingInput {
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub seed: Option<i64>,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub logit_bias: Option<HashMap<String, f64>>,
}

fn check_range(v: Option<f64>, lo: f64, hi: f64, name: &str) -> Result<Option<f32>, ApiError> {
    match v {
        None => Ok(None),
        Some(x) if x.is_finite() && x >= lo && x <= hi => Ok(Some(x as f32)),
        Some(x) => Err(ApiError::invalid(
            format!("'{name}' must be between {lo} and {hi}; got {x}."),
            Some(name),
        )),
    }
}

/// Validate sampling fields into engine `SamplingParams`.
pub fn sampling_params(s: &SamplingInput, vocab_size: usize) -> Result<SamplingParams, ApiError> {
    let d = SamplingParams::default();
    let top_k = match s.top_k {
        None | Some(-1) | Some(0) => 0,
        Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX),
        Some(k) => {
            return Err(ApiError::invalid(
                format!("'top_k' must be >= 0 (or -1 to disable); got {k}."),
                Some("top_k"),
            ))
        }
    };
    let repetition_penalty = match s.repetition_penalty {
        None => d.repetition_penalty,
        Some(x) if x.is_finite() && x > 0.0 && x <= 10.0 => x as f32,
        Some(x) => {
            return Err(ApiError::invalid(
                format!("'repetition_penalty' must be > 0 and <= 10; got {x}."),
                Some("repetition_penalty"),
            ))
        }
    };
    let mut logit_bias = HashMap::new();
    for (k, v) in s.logit_bias.iter().flatten() {
        let id: u32 = k.trim().parse().map_err(|_| {
            ApiError::invalid(
                format!("'logit_bias' keys must be token ids given as strings; got {k:?}."),
                Some("logit_bias"),
            )
        })?;
        if id as usize >= vocab_size {
            return Err(ApiError::invalid(
                format!("'logit_bias' token id {id} is outside the vocabulary (0..{vocab_size})."),
                Some("logit_bias"),
            ));
        }
        if !v.is_finite() || !(-100.0..=100.0).contains(v) {
            return Err(ApiError::invalid(
                format!(
                    "'logit_bias' values must be between -100 and 100; got {v} for token {id}."
                ),
                Some("logit_bias"),
            ));
        }
        logit_bias.insert(id, *v as f32);
    }
    Ok(SamplingParams {
        temperature: check_range(s.temperature, 0.0, 2.0, "temperature")?.unwrap_or(d.temperature),
        top_p: check_range(s.top_p, 0.0, 1.0, "top_p")?.unwrap_or(d.top_p),
        top_k,
        min_p: check_range(s.min_p, 0.0, 1.0, "min_p")?.unwrap_or(d.min_p),
        // Negative seeds are valid int64s: reinterpret the bits.
        seed: s.seed.map(|x| x as u64),
        frequency_penalty: check_range(s.frequency_penalty, -2.0, 2.0, "frequency_penalty")?
            .unwrap_or(0.0),
        presence_penalty: check_range(s.presence_penalty, -2.0, 2.0, "presence_penalty")?
            .unwrap_or(0.0),
        repetition_penalty,
        logit_bias,
    })
}

/// Validate `stop` (a string or up to 4 strings; empty strings are dropped).
pub fn stop_strings(stop: Option<&StopField>) -> Result<Vec<String>, ApiError> {
    let v = match stop {
        None => vec![],
        Some(StopField::One(s)) => vec![s.clone()],
        Some(StopField::Many(v)) => v.clone(),
    };
    if v.len() > 4 {
        return Err(ApiError::invalid(
            format!("'stop' accepts at most 4 sequences; got {}.", v.len()),
            Some("stop"),
        ));
    }
    Ok(v.into_iter().filter(|s| !s.is_empty()).collect())
}

/// Check the prompt against the context and resolve the completion budget.
/// `noun` is `messages` (chat) or `prompt` (completions) and is also the error's `param`.
pub fn resolve_max_tokens(
    prompt_len: usize,
    ctx: usize,
    requested: Option<u64>,
    default: Option<usize>,
    noun: &str,
) -> Result<usize, ApiError> {
    if prompt_len >= ctx {
        return Err(ApiError::context_length(
            format!(
                "This model's maximum context length is {ctx} tokens. However, your {noun} resulted in {prompt_len} tokens. Please reduce the length of the {noun}."
            ),
            Some(noun),
        ));
    }
    let room = ctx - prompt_len;
    match requested {
        Some(m) => {
            let m_usize = usize::try_from(m).unwrap_or(usize::MAX);
            if m_usize > room {
                let total = (prompt_len as u128) + (m as u128);
                return Err(ApiError::context_length(
                    format!(
                        "This model's maximum context length is {ctx} tokens. However, you requested {total} tokens ({prompt_len} in the {noun}, {m} in the completion). Please reduce the length of the {noun} or completion."
                    ),
                    Some(noun),
                ));
            }
            Ok(m_usize)
        }
        None => Ok(default.map_or(room, |d| d.min(room))),
    }
}

/// `usage` (CompletionUsage).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct UsageDto {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
}

/// `usage.prompt_tokens_details`: how much of the prompt the prefix cache served.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct PromptTokensDetails {
    pub cached_tokens: usize,
}

impl From<Usage> for UsageDto {
    fn from(u: Usage) -> Self {
        Self {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptTokensDetails { cached_tokens: u.cached_tokens },
        }
    }
}

/// llama.cpp-style `timings` (not in the OpenAI spec; extra fields are allowed by it).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct TimingsDto {
    pub prompt_n: usize,
    pub prompt_ms: f64,
    pub prompt_per_token_ms: f64,
    pub prompt_per_second: f64,
    pub predicted_n: usize,
    pub predicted_ms: f64,
    pub predicted_per_token_ms: f64,
    pub predicted_per_second: f64,
}

fn per(n: usize, ms: f64) -> (f64, f64) {
    if n == 0 || ms <= 0.0 {
        (0.0, 0.0)
    } else {
        (ms / n as f64, n as f64 * 1000.0 / ms)
    }
}

impl From<Timings> for TimingsDto {
    fn from(t: Timings) -> Self {
        let (ppt, pps) = per(t.prompt_n, t.prompt_ms);
        let (gpt, gps) = per(t.predicted_n, t.predicted_ms);
        Self {
            prompt_n: t.prompt_n,
            prompt_ms: t.prompt_ms,
            prompt_per_token_ms: ppt,
            prompt_per_second: pps,
            predicted_n: t.predicted_n,
            predicted_ms: t.predicted_ms,
            predicted_per_token_ms: gpt,
            predicted_per_second: gps,
        }
    }
}

/// A whole generation, collected for a non-streaming answer.
#[derive(Debug, Clone)]
pub struct Collected {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}

/// Drain a generation. If the client goes away, this future is dropped with the receiver,
/// which cancels the generation.
pub async fn collect(mut rx: Receiver<GenEvent>) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            GenEvent::Delta {
                text: t,
                logprobs: l,
            } => {
                text.push_str(&t);
                logprobs.extend(l);
            }
            GenEvent::Done {
                finish_reason,
                usage,
                timings,
            } => {
                return Ok(Collected {
                    text,
                    logprobs,
                    finish: finish_reason,
                    usage,
                    timings,
                })
            }
            GenEvent::Error(e) => return Err(e.into()),
        }
    }
    Err(ai_sandbox_engine::EngineError::Unavailable.into())
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh response id with the given prefix (`chatcmpl`, `cmpl`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Shared `system_fingerprint`.
pub const SYSTEM_FINGERPRINT: &str = concat!("fp_ai-sandbox-", env!("CARGO_PKG_VERSION"));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_tokens_resolution() {
        assert_eq!(
            resolve_max_tokens(10, 64, None, None, "messages").unwrap(),
            54
        );
        assert_eq!(
            resolve_max_tokens(10, 64, None, Some(16), "prompt").unwrap(),
            16
        );
        assert_eq!(
            resolve_max_tokens(60, 64, None, Some(16), "prompt").unwrap(),
            4
        );
        assert_eq!(
            resolve_max_tokens(10, 64, Some(54), None, "messages").unwrap(),
            54
        );
        let e = resolve_max_tokens(10, 64, Some(55), None, "messages").unwrap_err();
        assert_eq!(e.object.code.as_deref(), Some("context_length_exceeded"));
        assert!(
            e.object
                .message
                .contains("you requested 65 tokens (10 in the messages, 55 in the completion)"),
            "{}",
            e.object.message
        );
        let e = resolve_max_tokens(64, 64, None, None, "messages").unwrap_err();
        assert!(e
            .object
            .message
            .contains("maximum context length is 64 tokens"));
    }

    #[test]
    fn sampling_validation() {
        let s = SamplingInput {
            temperature: Some(2.5),
            ..Default::default()
        };
        assert_eq!(
            sampling_params(&s, 10).unwrap_err().object.param.as_deref(),
            Some("temperature")
        );
        let s = SamplingInput {
            logit_bias: Some([("12".to_string(), 5.0)].into()),
            ..Default::default()
        };
        assert_eq!(
            sampling_params(&s, 10).unwrap_err().object.param.as_deref(),
            Some("logit_bias")
        );
        let s = SamplingInput {
            logit_bias: Some([("abc".to_string(), 5.0)].into()),
            ..Default::default()
        };
        assert!(sampling_params(&s, 10).is_err());
        let s = SamplingInput {
            seed: Some(-1),
            top_k: Some(-1),
            ..Default::default()
        };
        let p = sampling_params(&s, 10).unwrap();
        assert_eq!(p.seed, Some(u64::MAX));
        assert_eq!(p.top_k, 0);
    }

    #[test]
    fn timings_rates() {
        let t = TimingsDto::from(Timings {
            prompt_n: 10,
            prompt_ms: 20.0,
            predicted_n: 4,
            predicted_ms: 100.0,
        });
        assert_eq!(t.prompt_per_token_ms, 2.0);
        assert_eq!(t.prompt_per_second, 500.0);
        assert_eq!(t.predicted_per_second, 40.0);
        let z = TimingsDto::from(Timings::default());
        assert_eq!(z.predicted_per_second, 0.0);
    }
}
