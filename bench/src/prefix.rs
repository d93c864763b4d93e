//! The prefix-cache scenario: pairs of sequential streaming chat requests that share a long
//! system prompt. The first request of a pair ("cold") starts its system text with a nonce line
//! unique to this run and pair, so no cached KV block of an earlier request can match it; the
//! second ("warm") sends exactly the same system text with another question, so a server with a
//! prefix cache skips the shared part of the prefill. Reports the median time to first token of
//! each kind and their ratio.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{json, Value};

use crate::client::{chat_body, stream_body, BenchConfig, BenchError, RequestSample};
use crate::stats::{percentile, Summary};

/// Cold/warm pairs run when nothing else is asked for.
pub const DEFAULT_PAIRS: usize = 3;

/// The committed system prompt (`bench/system-prompt.txt`, about 1,000 tokens for a Llama or
/// SmolLM tokenizer).
pub const DEFAULT_SYSTEM_PROMPT: &str = include_str!("../system-prompt.txt");

/// User questions, used in turn: request `k` of the scenario (cold and warm alternating) asks
/// `QUESTIONS[k % len]`, so the two requests of a pair never ask the same thing.
pub const QUESTIONS: [&str; 8] = [
    "When does the repair cafe meet, and do I need to book?",
    "Can I borrow the pressure washer this weekend?",
    "How much does a household membership cost?",
    "What should I do if a borrowed drill stops working?",
    "Which seeds grow true to type if I save them?",
    "How long can I keep a ladder?",
    "Is the main hall open on Mondays?",
    "Can my neighbour use my membership card?",
];

/// What the scenario sends.
#[derive(Debug, Clone)]
pub struct PrefixCacheConfig {
    /// The shared system text (without the nonce line).
    pub system_prompt: String,
    /// Cold/warm pairs (at least 1).
    pub pairs: usize,
    /// Identifies this run in every nonce, so a later run is cold too on a server that kept
    /// its cache (see [`random_run_id`]).
    pub run_id: String,
}

impl PrefixCacheConfig {
    /// The committed system prompt, [`DEFAULT_PAIRS`] pairs and a fresh random run id.
    pub fn new(system_prompt: String) -> Self {
        Self {
            system_prompt,
            pairs: DEFAULT_PAIRS,
            run_id: random_run_id(),
        }
    }
}

/// 16 hex digits that differ between runs: std's randomly keyed hasher over the clock and pid.
pub fn random_run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let h = RandomState::new().hash_one((nanos, std::process::id()));
    format!("{h:016x}")
}

/// The first line of pair `pair`'s system text.
pub fn nonce_line(run_id: &str, pair: usize) -> String {
    format!("Session {run_id}-{pair}:")
}

/// Pair `pair`'s system message: the nonce line, a newline, then the shared text. The nonce
/// comes first so that the very first KV block already differs from every other pair's.
pub fn system_text(pc: &PrefixCacheConfig, pair: usize) -> String {
    format!("{}\n{}", nonce_line(&pc.run_id, pair), pc.system_prompt)
}

/// The `messages` array of one scenario request.
pub fn messages(system: &str, question: &str) -> Value {
    json!([
        {"role": "system", "content": system},
        {"role": "user", "content": question},
    ])
}

/// One cold/warm pair's measurements. Times in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PairSample {
    /// Pair index, from 0.
    pub pair: usize,
    /// The nonce line both requests of the pair started their system text with.
    pub nonce: String,
    /// Time to first token of the cold request.
    pub cold_ttft_ms: f64,
    /// Time to first token of the warm request.
    pub warm_ttft_ms: f64,
    /// `usage.prompt_tokens` of the cold request.
    pub cold_prompt_tokens: Option<u64>,
    /// `usage.prompt_tokens` of the warm request.
    pub warm_prompt_tokens: Option<u64>,
    /// `usage.prompt_tokens_details.cached_tokens` of the warm request, if reported.
    pub warm_cached_tokens: Option<u64>,
    /// Server-side prefill time (`timings.prompt_ms`) of the cold request, if reported.
    pub cold_server_prompt_ms: Option<f64>,
    /// Server-side prefill time of the warm request, if reported.
    pub warm_server_prompt_ms: Option<f64>,
}

impl PairSample {
    /// Combines the two requests of pair `pair`.
    pub fn new(pair: usize, nonce: String, cold: &RequestSample, warm: &RequestSample) -> Self {
        Self {
            pair,
            nonce,
            cold_ttft_ms: cold.ttft_s * 1e3,
            warm_ttft_ms: warm.ttft_s * 1e3,
            cold_prompt_tokens: cold.prompt_tokens,
            warm_prompt_tokens: warm.prompt_tokens,
            warm_cached_tokens: warm.cached_tokens,
            cold_server_prompt_ms: cold.server_prompt_ms,
            warm_server_prompt_ms: warm.server_prompt_ms,
        }
    }
}

/// The scenario's result (the `prefix_cache` object of `--json`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PrefixCacheReport {
    /// Pairs run.
    pub pairs: usize,
    /// Characters of the shared system text (without the nonce line).
    pub system_prompt_chars: usize,
    /// Median `usage.prompt_tokens` of the cold requests (whole prompt: template, nonce line,
    /// system text and question); `None` when the server sent no usage.
    pub prompt_tokens: Option<u64>,
    /// TTFT of the cold requests, ms.
    pub cold_ttft_ms: Summary,
    /// TTFT of the warm requests, ms.
    pub warm_ttft_ms: Summary,
    /// Median cold TTFT / median warm TTFT; `None` when the warm median is not positive.
    pub speedup: Option<f64>,
    /// Every pair, in order.
    pub samples: Vec<PairSample>,
}

impl PrefixCacheReport {
    /// Folds pair samples into the report.
    pub fn from_samples(system_prompt_chars: usize, samples: Vec<PairSample>) -> Self {
        let cold: Vec<f64> = samples.iter().map(|s| s.cold_ttft_ms).collect();
        let warm: Vec<f64> = samples.iter().map(|s| s.warm_ttft_ms).collect();
        let tokens: Vec<f64> = samples
            .iter()
            .filter_map(|s| s.cold_prompt_tokens.map(|t| t as f64))
            .collect();
        let cold_ttft_ms = Summary::of(&cold);
        let warm_ttft_ms = Summary::of(&warm);
        let speedup = match (cold_ttft_ms.p50, warm_ttft_ms.p50) {
            (Some(c), Some(w)) if w > 0.0 => Some(c / w),
            _ => None,
        };
        Self {
            pairs: samples.len(),
            system_prompt_chars,
            prompt_tokens: percentile(&tokens, 50.0).map(|t| t.round() as u64),
            cold_ttft_ms,
            warm_ttft_ms,
            speedup,
            samples,
        }
    }

    /// The one-line summary the table output prints.
    pub fn line(&self) -> String {
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |x| format!("{x:.1}"));
        format!(
            "prefix cache: system prompt {} tokens, TTFT cold {} ms, warm {} ms, speedup {}x",
            self.prompt_tokens
                .map_or_else(|| "-".to_string(), |t| t.to_string()),
            ms(self.cold_ttft_ms.p50),
            ms(self.warm_ttft_ms.p50),
            self.speedup
                .map_or_else(|| "-".to_string(), |s| format!("{s:.2}")),
        )
    }
}

/// Runs `pc.pairs` cold/warm pairs one request at a time, each with `max_tokens` 1 (only the
/// first token's arrival matters) and `cfg`'s model, banned ids and timeout. Fails on the first
/// failed request.
pub async fn run_prefix_cache(
    client: &reqwest::Client,
    cfg: &BenchConfig,
    pc: &PrefixCacheConfig,
) -> Result<PrefixCacheReport, BenchError> {
    if pc.pairs == 0 {
        return Err(BenchError::InvalidSetup(
            "the prefix-cache scenario needs at least one pair".into(),
        ));
    }
    if pc.system_prompt.trim().is_empty() {
        return Err(BenchError::InvalidSetup(
            "the system prompt is empty".into(),
        ));
    }
    let cfg = BenchConfig {
        max_tokens: 1,
        ..cfg.clone()
    };
    let mut samples = Vec::with_capacity(pc.pairs);
    for pair in 0..pc.pairs {
        let system = system_text(pc, pair);
        let q_cold = QUESTIONS[(2 * pair) % QUESTIONS.len()];
        let q_warm = QUESTIONS[(2 * pair + 1) % QUESTIONS.len()];
        let cold = stream_body(client, &cfg, &chat_body(&cfg, messages(&system, q_cold))).await?;
        let warm = stream_body(client, &cfg, &chat_body(&cfg, messages(&system, q_warm))).await?;
        samples.push(PairSample::new(
            pair,
            nonce_line(&pc.run_id, pair),
            &cold,
            &warm,
        ));
    }
    Ok(PrefixCacheReport::from_samples(
        pc.system_prompt.chars().count(),
        samples,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(i: usize, cold: f64, warm: f64, tokens: Option<u64>) -> PairSample {
        PairSample {
            pair: i,
            nonce: format!("n{i}"),
            cold_ttft_ms: cold,
            warm_ttft_ms: warm,
            cold_prompt_tokens: tokens,
            warm_prompt_tokens: tokens,
            warm_cached_tokens: None,
            cold_server_prompt_ms: None,
            warm_server_prompt_ms: None,
        }
    }

    #[test]
    fn report_takes_medians_and_their_ratio() {
        let r = PrefixCacheReport::from_samples(
            4000,
            vec![
                pair(0, 900.0, 100.0, Some(1010)),
                pair(1, 1200.0, 50.0, Some(1012)),
                pair(2, 1000.0, 400.0, Some(1011)),
            ],
        );
        assert_eq!(r.pairs, 3);
        assert_eq!(r.cold_ttft_ms.p50, Some(1000.0));
        assert_eq!(r.warm_ttft_ms.p50, Some(100.0));
        // The ratio of the medians (10), not the median of per-pair ratios (9, 24, 2.5 -> 9).
        assert_eq!(r.speedup, Some(10.0));
        assert_eq!(r.prompt_tokens, Some(1011));
        assert_eq!(
            r.line(),
            "prefix cache: system prompt 1011 tokens, TTFT cold 1000.0 ms, warm 100.0 ms, speedup 10.00x"
        );
    }

    #[test]
    fn report_without_usage_or_with_a_zero_warm_time() {
        let r = PrefixCacheReport::from_samples(10, vec![pair(0, 5.0, 0.0, None)]);
        assert_eq!(r.prompt_tokens, None);
        assert_eq!(r.speedup, None);
        assert_eq!(
            r.line(),
            "prefix cache: system prompt - tokens, TTFT cold 5.0 ms, warm 0.0 ms, speedup -x"
        );
    }

    #[test]
    fn nonces_lead_the_system_text_and_differ() {
        let pc = PrefixCacheConfig {
            system_prompt: "Policy.".into(),
            pairs: 2,
            run_id: "00ff".into(),
        };
        assert_eq!(system_text(&pc, 0), "Session 00ff-0:\nPolicy.");
        assert_ne!(system_text(&pc, 0), system_text(&pc, 1));
        assert_ne!(random_run_id(), random_run_id());
        assert_eq!(random_run_id().len(), 16);
    }

    #[test]
    fn committed_system_prompt_is_about_a_thousand_tokens() {
        // ~975 SmolLM2 tokens for ~820 words (counted with tests/reference/tok_ref.py); guard
        // against the file being emptied or truncated.
        let words = DEFAULT_SYSTEM_PROMPT.split_whitespace().count();
        assert!((700..=900).contains(&words), "{words} words");
        assert!(DEFAULT_SYSTEM_PROMPT.is_ascii());
    }
}
