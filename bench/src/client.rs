//! The streaming client: one `/chat/completions` request timed chunk by chunk, and a
//! concurrency level (N workers sharing a request budget) summarized into a `LevelReport`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use crate::rss::read_rss_kib;
use crate::sse::{SseEvent, SseParser};
use crate::stats::Summary;

/// Everything a run needs to build requests.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Base URL including `/v1`, without a trailing slash.
    pub base_url: String,
    /// Model id sent in each request.
    pub model: String,
    /// `max_tokens` of every request.
    pub max_tokens: u32,
    /// Token ids given a logit bias of -100 (the model's EOS ids), so every request runs to
    /// `max_tokens` when the server honours `logit_bias`.
    pub ban_token_ids: Vec<u32>,
    /// Limit for one whole request, first byte to `[DONE]`.
    pub timeout: Duration,
    /// User prompts, used round-robin.
    pub prompts: Vec<String>,
}

/// Why a request or a level failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Connection refused, DNS, TLS, or the body broke off.
    #[error("cannot reach the server at {url}")]
    Unreachable {
        /// The URL requested.
        url: String,
        /// The client's error.
        #[source]
        source: reqwest::Error,
    },
    /// A non-2xx answer (the message is the error envelope's `error.message` when there is one).
    #[error("server answered HTTP {status} for {url}: {message}")]
    Http {
        /// HTTP status.
        status: u16,
        /// The URL requested.
        url: String,
        /// Error message or body.
        message: String,
    },
    /// An `{"error": ...}` event inside the stream.
    #[error("error event in the stream: {0}")]
    StreamError(String),
    /// The request did not finish within the configured timeout.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// Something the server sent that is not what the OpenAI API describes.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// The benchmark was asked for something it cannot run (no prompts, no clients, no pairs).
    #[error("invalid benchmark setup: {0}")]
    InvalidSetup(String),
}

/// Timings of one streamed request.
#[derive(Debug, Clone, Serialize)]
pub struct RequestSample {
    /// Seconds from sending the request to the first chunk with content.
    pub ttft_s: f64,
    /// Gaps between consecutive content chunks, seconds.
    pub itl_s: Vec<f64>,
    /// Chunks that carried content.
    pub content_chunks: u64,
    /// Output tokens: `usage.completion_tokens` if the server sent usage, else `content_chunks`.
    pub tokens: u64,
    /// Seconds from sending the request to the end of the stream.
    pub total_s: f64,
    /// (tokens - 1) / (last content chunk - first content chunk); `None` below 2 chunks.
    pub decode_tok_s: Option<f64>,
    /// `usage.prompt_tokens`, when the server sent usage.
    pub prompt_tokens: Option<u64>,
    /// `usage.prompt_tokens_details.cached_tokens`, when the server reports it.
    pub cached_tokens: Option<u64>,
    /// The server's own prefill time, `timings.prompt_ms` (llama.cpp-style), when it sends one.
    pub server_prompt_ms: Option<f64>,
}

/// One concurrency level's results. Times in milliseconds, rates in tokens per second.
#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    /// Concurrent clients.
    pub concurrency: usize,
    /// Requests completed.
    pub requests: usize,
    /// Seconds from the first request sent to the last stream ended.
    pub wall_s: f64,
    /// Output tokens summed over all requests.
    pub output_tokens: u64,
    /// `output_tokens / wall_s`.
    pub aggregate_tok_s: f64,
    /// Time to first token, ms.
    pub ttft_ms: Summary,
    /// Inter-token latency over all gaps of all requests, ms.
    pub itl_ms: Summary,
    /// Per-request decode rate.
    pub decode_tok_s: Summary,
    /// Peak server `VmRSS` sampled during the level, KiB (with `--server-pid`).
    pub server_rss_peak_kib: Option<u64>,
}

fn unreachable(url: &str, source: reqwest::Error) -> BenchError {
    BenchError::Unreachable {
        url: url.to_string(),
        source,
    }
}

async fn check_status(url: &str, resp: reqwest::Response) -> Result<reqwest::Response, BenchError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.chars().take(500).collect());
    Err(BenchError::Http {
        status: status.as_u16(),
        url: url.to_string(),
        message,
    })
}

/// The id of the first model `GET {base_url}/models` lists.
pub async fn first_model(client: &reqwest::Client, base_url: &str) -> Result<String, BenchError> {
    let url = format!("{base_url}/models");
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| unreachable(&url, e))?;
    let v: Value = check_status(&url, resp)
        .await?
        .json()
        .await
        .map_err(|e| unreachable(&url, e))?;
    v.pointer("/data/0/id")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| BenchError::Protocol(format!("{url} lists no model: {v}")))
}

/// The JSON body of one benchmark request: `prompt` as the only (user) message.
pub fn request_body(cfg: &BenchConfig, prompt: &str) -> Value {
    chat_body(cfg, json!([{"role": "user", "content": prompt}]))
}

/// The JSON body of a streaming chat request with the given `messages` array and `cfg`'s
/// model, `max_tokens` and banned token ids; temperature 0, usage requested.
pub fn chat_body(cfg: &BenchConfig, messages: Value) -> Value {
    let mut body = json!({
        "model": cfg.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
        "temperature": 0,
        "max_tokens": cfg.max_tokens,
    });
    if !cfg.ban_token_ids.is_empty() {
        let bias: serde_json::Map<String, Value> = cfg
            .ban_token_ids
            .iter()
            .map(|id| (id.to_string(), json!(-100)))
            .collect();
        body["logit_bias"] = Value::Object(bias);
    }
    body
}

/// Sends one streaming chat completion with `prompt` as the user message and times its chunks.
pub async fn stream_one(
    client: &reqwest::Client,
    cfg: &BenchConfig,
    prompt: &str,
) -> Result<RequestSample, BenchError> {
    stream_body(client, cfg, &request_body(cfg, prompt)).await
}

/// Sends one streaming chat completion of `body` (see [`chat_body`]) and times its chunks,
/// within `cfg.timeout`.
pub async fn stream_body(
    client: &reqwest::Client,
    cfg: &BenchConfig,
    body: &Value,
) -> Result<RequestSample, BenchError> {
    match tokio::time::timeout(cfg.timeout, stream_inner(client, cfg, body)).await {
        Ok(r) => r,
        Err(_) => Err(BenchError::Timeout(cfg.timeout)),
    }
}

async fn stream_inner(
    client: &reqwest::Client,
    cfg: &BenchConfig,
    body: &Value,
) -> Result<RequestSample, BenchError> {
    let url = format!("{}/chat/completions", cfg.base_url);
    let start = Instant::now();
    let resp = client
        .post(&url)
        .json(body)
        .send()
        .await
        .map_err(|e| unreachable(&url, e))?;
    let mut resp = check_status(&url, resp).await?;
    let mut parser = SseParser::new();
    let mut stamps: Vec<Instant> = Vec::new();
    let mut usage_tokens: Option<u64> = None;
    let mut prompt_tokens: Option<u64> = None;
    let mut cached_tokens: Option<u64> = None;
    let mut server_prompt_ms: Option<f64> = None;
    // The first chunk with a finish_reason: the first token's arrival when no text was sent
    // (e.g. max_tokens 1 and a token the server held back as a partial character).
    let mut finished_at: Option<Instant> = None;
    let mut done = false;
    loop {
        let chunk = resp.chunk().await.map_err(|e| unreachable(&url, e))?;
        let (events, now) = match &chunk {
            Some(bytes) => (parser.feed(bytes), Instant::now()),
            None => (parser.finish(), Instant::now()),
        };
        for ev in events {
            match ev {
                SseEvent::Done => done = true,
                SseEvent::Data(data) => {
                    let v: Value = serde_json::from_str(&data)
                        .map_err(|e| BenchError::Protocol(format!("bad chunk {data:?}: {e}")))?;
                    if let Some(err) = v.get("error") {
                        let msg = err
                            .get("message")
                            .and_then(Value::as_str)
                            .map(str::to_string);
                        return Err(BenchError::StreamError(
                            msg.unwrap_or_else(|| err.to_string()),
                        ));
                    }
                    if let Some(n) = v
                        .pointer("/usage/completion_tokens")
                        .and_then(Value::as_u64)
                    {
                        usage_tokens = Some(n);
                    }
                    let u64_at = |p: &str| v.pointer(p).and_then(Value::as_u64);
                    prompt_tokens = u64_at("/usage/prompt_tokens").or(prompt_tokens);
                    cached_tokens =
                        u64_at("/usage/prompt_tokens_details/cached_tokens").or(cached_tokens);
                    server_prompt_ms = v
                        .pointer("/timings/prompt_ms")
                        .and_then(Value::as_f64)
                        .or(server_prompt_ms);
                    let finishes = v
                        .get("choices")
                        .and_then(Value::as_array)
                        .is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c.get("finish_reason").is_some_and(|f| !f.is_null()))
                        });
                    if finishes && finished_at.is_none() {
                        finished_at = Some(now);
                    }
                    let has_content =
                        v.get("choices")
                            .and_then(Value::as_array)
                            .is_some_and(|cs| {
                                cs.iter().any(|c| {
                                    c.pointer("/delta/content")
                                        .or_else(|| c.get("text"))
                                        .and_then(Value::as_str)
                                        .is_some_and(|s| !s.is_empty())
                                })
                            });
                    if has_content {
                        stamps.push(now);
                    }
                }
            }
        }
        if chunk.is_none() || done {
            break;
        }
    }
    if !done {
        return Err(BenchError::Protocol(format!(
            "stream from {url} ended without [DONE]"
        )));
    }
    let total_s = start.elapsed().as_secs_f64();
    let Some(first) = stamps.first().copied().or(finished_at) else {
        return Err(BenchError::Protocol(
            "stream carried neither content nor a finish_reason".into(),
        ));
    };
    let ttft_s = first.duration_since(start).as_secs_f64();
    let itl_s: Vec<f64> = stamps
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64())
        .collect();
    let content_chunks = stamps.len() as u64;
    let tokens = usage_tokens.unwrap_or(content_chunks);
    let span = stamps
        .last()
        .map(|l| l.duration_since(first).as_secs_f64())
        .unwrap_or(0.0);
    let decode_tok_s =
        (content_chunks >= 2 && span > 0.0).then(|| tokens.saturating_sub(1) as f64 / span);
    Ok(RequestSample {
        ttft_s,
        itl_s,
        content_chunks,
        tokens,
        total_s,
        decode_tok_s,
        prompt_tokens,
        cached_tokens,
        server_prompt_ms,
    })
}

/// Runs `requests` streamed requests over `concurrency` workers (prompt `i % prompts.len()`
/// for request `i`), sampling the server's RSS every 50 ms when `server_pid` is given.
/// Fails on the first failed request.
pub async fn run_level(
    client: &reqwest::Client,
    cfg: &BenchConfig,
    concurrency: usize,
    requests: usize,
    server_pid: Option<u32>,
) -> Result<LevelReport, BenchError> {
    if cfg.prompts.is_empty() || concurrency == 0 {
        return Err(BenchError::InvalidSetup(
            "need at least one prompt and one client".into(),
        ));
    }
    let cfg = Arc::new(cfg.clone());
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = server_pid.map(|pid| {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut peak = read_rss_kib(pid).map(|(rss, _)| rss);
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if let Some((rss, _)) = read_rss_kib(pid) {
                    peak = Some(peak.map_or(rss, |p| p.max(rss)));
                }
            }
            peak
        })
    });
    let start = Instant::now();
    let mut workers = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let (client, cfg, next) = (client.clone(), cfg.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    return Ok::<_, BenchError>(out);
                }
                let prompt = &cfg.prompts[i % cfg.prompts.len()];
                out.push(stream_one(&client, &cfg, prompt).await?);
            }
        }));
    }
    let mut samples = Vec::with_capacity(requests);
    let mut first_err = None;
    for w in workers {
        match w.await {
            Ok(Ok(s)) => samples.extend(s),
            Ok(Err(e)) => {
                next.store(requests, Ordering::Relaxed);
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(BenchError::Protocol(format!("worker failed: {e}")));
            }
        }
    }
    let wall_s = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let server_rss_peak_kib = match sampler {
        Some(h) => h.await.ok().flatten(),
        None => None,
    };
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(summarize(
        concurrency,
        wall_s,
        &samples,
        server_rss_peak_kib,
    ))
}

/// Folds per-request samples into a level report.
pub fn summarize(
    concurrency: usize,
    wall_s: f64,
    samples: &[RequestSample],
    server_rss_peak_kib: Option<u64>,
) -> LevelReport {
    let output_tokens: u64 = samples.iter().map(|s| s.tokens).sum();
    let ttft: Vec<f64> = samples.iter().map(|s| s.ttft_s * 1e3).collect();
    let itl: Vec<f64> = samples
        .iter()
        .flat_map(|s| s.itl_s.iter().map(|x| x * 1e3))
        .collect();
    let decode: Vec<f64> = samples.iter().filter_map(|s| s.decode_tok_s).collect();
    LevelReport {
        concurrency,
        requests: samples.len(),
        wall_s,
        output_tokens,
        aggregate_tok_s: if wall_s > 0.0 {
            output_tokens as f64 / wall_s
        } else {
            0.0
        },
        ttft_ms: Summary::of(&ttft),
        itl_ms: Summary::of(&itl),
        decode_tok_s: Summary::of(&decode),
        server_rss_peak_kib,
    }
}
