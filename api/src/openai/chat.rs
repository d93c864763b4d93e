//! POST /v1/chat/completions: the request DTO, its validation into a `GenerateRequest`
//! (messages flattened to text, unsupported features rejected by name), and the sync and
//! streaming response shapes (CreateChatCompletionResponse / ...StreamResponse).

use std::collections::HashMap;
use std::sync::Arc;

use ai_sandbox_engine::{ChatMessage, FinishReason, GenerateRequest, Timings, TokenLogprob, Usage};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{
    collect, new_id, resolve_max_tokens, sampling_params, stop_strings, unix_now, ApiJson,
    SamplingInput, StopField, StreamOptions, TimingsDto, UsageDto, SYSTEM_FINGERPRINT,
};
use crate::error::ApiError;
use crate::sse::{sse_response, ChunkMaker};
use crate::{AppState, Backend};

/// CreateChatCompletionRequest, as far as we read it. Unknown and hosted-only fields (`user`,
/// `metadata`, `store`, `service_tier`, `parallel_tool_calls`, `safety_identifier`,
/// `prompt_cache_key`, `reasoning_effort`, `verbosity`, ...) are accepted and ignored;
/// features we can't honour are kept as `Value`s so they can be rejected by name.
#[derive(Debug, Default, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Option<Vec<Value>>,
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
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub n: Option<i64>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub functions: Option<Value>,
    pub function_call: Option<Value>,
    pub response_format: Option<Value>,
    pub audio: Option<Value>,
    pub modalities: Option<Value>,
    pub prediction: Option<Value>,
    pub web_search_options: Option<Value>,
}

/// A validated chat request, ready for the backend (prompt not yet tokenized).
#[derive(Debug, Clone)]
pub struct ChatPlan {
    pub messages: Vec<ChatMessage>,
    pub sampling: ai_sandbox_engine::SamplingParams,
    pub stop: Vec<String>,
    pub max_tokens: Option<u64>,
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

fn is_empty_array(v: &Value) -> bool {
    v.as_array().is_some_and(Vec::is_empty)
}

/// Reject features we don't implement, by parameter name.
fn reject_unsupported(r: &ChatRequest) -> Result<(), ApiError> {
    if let Some(n) = r.n {
        if n != 1 {
            return Err(ApiError::invalid(
                format!("Only n=1 is supported; got n={n}."),
                Some("n"),
            ));
        }
    }
    if r.tools.as_ref().is_some_and(|v| !is_empty_array(v)) {
        return Err(ApiError::unsupported("tools", "Tool calling"));
    }
    if r.tool_choice.as_ref().is_some_and(|v| v != "none") {
        return Err(ApiError::unsupported("tool_choice", "Tool calling"));
    }
    if r.functions.as_ref().is_some_and(|v| !is_empty_array(v)) {
        return Err(ApiError::unsupported("functions", "Function calling"));
    }
    if r.function_call.as_ref().is_some_and(|v| v != "none") {
        return Err(ApiError::unsupported("function_call", "Function calling"));
    }
    if let Some(rf) = &r.response_format {
        if rf.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::unsupported(
                "response_format",
                "Structured output (json_object / json_schema)",
            ));
        }
    }
    if r.audio.is_some() {
        return Err(ApiError::unsupported("audio", "Audio output"));
    }
    if let Some(m) = &r.modalities {
        let text_only = m.as_array().is_some_and(|a| a.iter().all(|x| x == "text"));
        if !text_only {
            return Err(ApiError::unsupported(
                "modalities",
                "Output modalities other than text",
            ));
        }
    }
    if r.prediction.is_some() {
        return Err(ApiError::unsupported("prediction", "Predicted outputs"));
    }
    if r.web_search_options.is_some() {
        return Err(ApiError::unsupported("web_search_options", "Web search"));
    }
    Ok(())
}

/// Flatten one message to a `ChatMessage`; `i` is its index for error params.
fn parse_message(i: usize, m: &Value) -> Result<ChatMessage, ApiError> {
    let p = |s: &str| format!("messages[{i}]{s}");
    let obj = m
        .as_object()
        .ok_or_else(|| ApiError::invalid("Each message must be an object.", Some(&p(""))))?;
    let role = obj.get("role").and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid("Each message needs a string 'role'.", Some(&p(".role")))
    })?;
    let role = match role {
        "system" | "user" | "assistant" => role,
        // Our templates know no developer role; it means the same as system.
        "developer" => "system",
        "tool" | "function" => {
            return Err(ApiError::unsupported(
                &p(".role"),
                &format!("The '{role}' role (tool calling)"),
            ));
        }
        other => {
            return Err(ApiError::invalid(
                format!("Invalid role '{other}'; expected system, developer, user or assistant."),
                Some(&p(".role")),
            ))
        }
    };
    if obj
        .get("tool_calls")
        .is_some_and(|v| !v.is_null() && !is_empty_array(v))
    {
        return Err(ApiError::unsupported(&p(".tool_calls"), "Tool calling"));
    }
    if obj.get("function_call").is_some_and(|v| !v.is_null()) {
        return Err(ApiError::unsupported(
            &p(".function_call"),
            "Function calling",
        ));
    }
    let content = match obj.get("content") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) if role == "assistant" => String::new(),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let pp = p(&format!(".content[{j}]"));
                let ty = part.get("type").and_then(Value::as_str).unwrap_or("");
                match ty {
                    "text" => {
                        let t = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                            ApiError::invalid("A text content part needs a string 'text'.", Some(&format!("{pp}.text")))
                        })?;
                        texts.push(t);
                    }
                    "image_url" | "input_audio" | "file" | "refusal" => {
                        return Err(ApiError::invalid(
                            format!("Content parts of type '{ty}' are not supported: this model takes text only."),
                            Some(&pp),
                        ))
                    }
                    other => {
                        return Err(ApiError::invalid(
                            format!("Unknown content part type '{other}'; expected 'text'."),
                            Some(&format!("{pp}.type")),
                        ))
                    }
                }
            }
            texts.join("\n")
        }
        _ => {
            return Err(ApiError::invalid(
                "'content' must be a string or an array of text parts.",
                Some(&p(".content")),
            ))
        }
    };
    Ok(ChatMessage {
        role: role.to_string(),
        content,
    })
}

/// Validate a chat request (everything that needs no tokenizer).
pub fn plan(r: &ChatRequest, vocab_size: usize) -> Result<ChatPlan, ApiError> {
    reject_unsupported(r)?;
    let raw = r
        .messages
        .as_ref()
        .ok_or_else(|| ApiError::invalid("'messages' is required.", Some("messages")))?;
    if raw.is_empty() {
        return Err(ApiError::invalid(
            "'messages' must contain at least one message.",
            Some("messages"),
        ));
    }
    let messages = raw
        .iter()
        .enumerate()
        .map(|(i, m)| parse_message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let sampling = sampling_params(
        &SamplingInput {
            temperature: r.temperature,
            top_p: r.top_p,
            top_k: r.top_k,
            min_p: r.min_p,
            repetition_penalty: r.repetition_penalty,
            seed: r.seed,
            frequency_penalty: r.frequency_penalty,
            presence_penalty: r.presence_penalty,
            logit_bias: r.logit_bias.clone(),
        },
        vocab_size,
    )?;
    let stop = stop_strings(r.stop.as_ref())?;
    // OpenAI: max_completion_tokens supersedes the deprecated max_tokens.
    let max_tokens = r.max_completion_tokens.or(r.max_tokens);
    if max_tokens == Some(0) {
        let param = if r.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        return Err(ApiError::invalid(
            format!("'{param}' must be at least 1."),
            Some(param),
        ));
    }
    let logprobs = match (r.logprobs, r.top_logprobs) {
        (_, Some(k)) if !(0..=20).contains(&k) => {
            return Err(ApiError::invalid(
                format!("'top_logprobs' must be between 0 and 20; got {k}."),
                Some("top_logprobs"),
            ))
        }
        (Some(true), k) => Some(k.unwrap_or(0) as usize),
        (_, Some(_)) => {
            return Err(ApiError::invalid(
                "'top_logprobs' requires 'logprobs' to be true.",
                Some("top_logprobs"),
            ))
        }
        _ => None,
    };
    let stream = r.stream.unwrap_or(false);
    if r.stream_options.is_some() && !stream {
        return Err(ApiError::invalid(
            "'stream_options' is only allowed when 'stream' is true.",
            Some("stream_options"),
        ));
    }
    let include_usage = r
        .stream_options
        .as_ref()
        .and_then(|o| o.include_usage)
        .unwrap_or(false);
    Ok(ChatPlan {
        messages,
        sampling,
        stop,
        max_tokens,
        logprobs,
        stream,
        include_usage,
    })
}

/// ChatCompletionTokenLogprob's `top_logprobs` item.
#[derive(Debug, Clone, Serialize)]
pub struct TopLogprobDto {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

/// ChatCompletionTokenLogprob.
#[derive(Debug, Clone, Serialize)]
pub struct LogprobDto {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprobDto>,
}

/// `choices[].logprobs`.
#[derive(Debug, Clone, Serialize)]
pub struct ChoiceLogprobs {
    pub content: Vec<LogprobDto>,
    pub refusal: Option<Vec<LogprobDto>>,
}

/// JSON can't hold -inf; OpenAI reports very unlikely tokens as -9999.
pub fn finite(lp: f32) -> f32 {
    if lp.is_finite() {
        lp
    } else {
        -9999.0
    }
}

fn logprobs_dto(lps: Vec<TokenLogprob>) -> ChoiceLogprobs {
    let content = lps
        .into_iter()
        .map(|l| LogprobDto {
            token: l.token,
            logprob: finite(l.logprob),
            bytes: l.bytes,
            top_logprobs: l
                .top
                .into_iter()
                .map(|t| TopLogprobDto {
                    token: t.token,
                    logprob: finite(t.logprob),
                    bytes: t.bytes,
                })
                .collect(),
        })
        .collect();
    ChoiceLogprobs {
        content,
        refusal: None,
    }
}

#[derive(Debug, Serialize)]
struct AssistantMessage {
    role: &'static str,
    content: String,
    refusal: Option<String>,
}

#[derive(Debug, Serialize)]
struct Choice {
    index: u32,
    message: AssistantMessage,
    logprobs: Option<ChoiceLogprobs>,
    finish_reason: &'static str,
}

#[derive(Debug, Serialize)]
struct ChatCompletion {
    id: String,
    object: &'static str,
    created: u64,
    model: String,
    system_fingerprint: &'static str,
    choices: Vec<Choice>,
    usage: UsageDto,
    timings: TimingsDto,
}

#[derive(Debug, Serialize, Default)]
struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<String>,
}

#[derive(Debug, Serialize)]
struct ChunkChoice {
    index: u32,
    delta: Delta,
    logprobs: Option<ChoiceLogprobs>,
    finish_reason: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct ChatChunk<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    model: &'a str,
    system_fingerprint: &'static str,
    choices: Vec<ChunkChoice>,
    /// Absent without include_usage; `null` on every chunk but the last with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    usage: Option<Option<UsageDto>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timings: Option<TimingsDto>,
}

struct ChatChunks {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    logprobs: bool,
}

impl ChatChunks {
    fn chunk(
        &self,
        choices: Vec<ChunkChoice>,
        usage: Option<UsageDto>,
        timings: Option<TimingsDto>,
    ) -> Value {
        let c = ChatChunk {
            id: &self.id,
            object: "chat.completion.chunk",
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

impl ChunkMaker for ChatChunks {
    fn start(&mut self) -> Vec<Value> {
        let d = Delta {
            role: Some("assistant"),
            content: Some(String::new()),
        };
        vec![self.chunk(
            vec![ChunkChoice {
                index: 0,
                delta: d,
                logprobs: None,
                finish_reason: None,
            }],
            None,
            None,
        )]
    }

    fn delta(&mut self, text: String, logprobs: Vec<TokenLogprob>) -> Vec<Value> {
        if text.is_empty() && (logprobs.is_empty() || !self.logprobs) {
            return vec![];
        }
        let lp = self.logprobs.then(|| logprobs_dto(logprobs));
        let d = Delta {
            role: None,
            content: Some(text),
        };
        vec![self.chunk(
            vec![ChunkChoice {
                index: 0,
                delta: d,
                logprobs: lp,
                finish_reason: None,
            }],
            None,
            None,
        )]
    }

    fn done(&mut self, finish: FinishReason, usage: Usage, timings: Timings) -> Vec<Value> {
        let t = Some(TimingsDto::from(timings));
        let fin = ChunkChoice {
            index: 0,
            delta: Delta::default(),
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

/// Tokenizing can take a while on long inputs: keep it off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ai_sandbox_engine::EngineError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ai_sandbox_engine::EngineError::Internal(format!(
            "tokenizer task failed: {e}"
        ))
        .into()),
    }
}

/// POST /v1/chat/completions.
pub async fn handle(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let backend: Arc<dyn Backend> = state.backend()?;
    let model = state.resolve_model(backend.as_ref(), req.model.as_deref())?;
    let plan = plan(&req, backend.vocab_size())?;
    let b = backend.clone();
    let messages = plan.messages.clone();
    let prompt = blocking(move || b.chat_prompt(&messages)).await?;
    let max_tokens = resolve_max_tokens(
        prompt.len(),
        backend.ctx_size(),
        plan.max_tokens,
        None,
        "messages",
    )?;
    tracing::info!(
        prompt_tokens = prompt.len(),
        max_tokens,
        stream = plan.stream,
        "chat completion"
    );
    let gen = GenerateRequest {
        prompt,
        sampling: plan.sampling,
        stop: plan.stop,
        max_tokens,
        logprobs: plan.logprobs,
    };
    let rx = backend.submit(gen)?;
    let id = new_id("chatcmpl");
    let created = unix_now();
    if plan.stream {
        let maker = ChatChunks {
            id,
            created,
            model,
            include_usage: plan.include_usage,
            logprobs: plan.logprobs.is_some(),
        };
        return Ok(sse_response(rx, maker));
    }
    let c = collect(rx).await?;
    let body = ChatCompletion {
        id,
        object: "chat.completion",
        created,
        model,
        system_fingerprint: SYSTEM_FINGERPRINT,
        choices: vec![Choice {
            index: 0,
            message: AssistantMessage {
                role: "assistant",
                content: c.text,
                refusal: None,
            },
            logprobs: plan.logprobs.map(|_| logprobs_dto(c.logprobs)),
            finish_reason: c.finish.as_str(),
        }],
        usage: c.usage.into(),
        timings: c.timings.into(),
    };
    Ok(Json(body).into_response())
}
