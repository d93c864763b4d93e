//! `ai-sandbox-bench` CLI: warm-up, then one run per concurrency level, then (with
//! `--prefix-cache`) the cold/warm system-prompt pairs; a table or `--json`.

use std::path::PathBuf;
use std::time::Duration;

use ai_sandbox_bench::client::{first_model, run_level, stream_one, BenchConfig, LevelReport};
use ai_sandbox_bench::prefix::{run_prefix_cache, PrefixCacheConfig, DEFAULT_SYSTEM_PROMPT};
use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;

/// Benchmarks a running OpenAI-compatible server (e.g. `scripts/serve`) with concurrent
/// streaming chat completions.
#[derive(Debug, Parser)]
#[command(name = "ai-sandbox-bench", version)]
struct Args {
    /// Base URL of the API, including /v1.
    #[arg(
        long,
        env = "AI_SANDBOX_BENCH_BASE_URL",
        default_value = "http://127.0.0.1:8000/v1"
    )]
    base_url: String,
    /// Model id (default: the first of GET /v1/models).
    #[arg(long, env = "AI_SANDBOX_BENCH_MODEL")]
    model: Option<String>,
    /// Concurrency levels, comma-separated.
    #[arg(
        long,
        env = "AI_SANDBOX_BENCH_CONCURRENCY",
        value_delimiter = ',',
        default_value = "1,4,8,16"
    )]
    concurrency: Vec<usize>,
    /// Requests per level (default: 2 x concurrency).
    #[arg(long, env = "AI_SANDBOX_BENCH_REQUESTS_PER_LEVEL")]
    requests_per_level: Option<usize>,
    /// max_tokens of every request.
    #[arg(long, env = "AI_SANDBOX_BENCH_MAX_TOKENS", default_value_t = 128)]
    max_tokens: u32,
    /// Token ids banned with logit_bias -100 (EOS; default: SmolLM2's ids 0 and 2). Empty to send none.
    #[arg(
        long,
        env = "AI_SANDBOX_BENCH_BAN_TOKEN_IDS",
        value_delimiter = ',',
        default_value = "0,2"
    )]
    ban_token_ids: Vec<u32>,
    /// Per-request timeout, seconds.
    #[arg(long, env = "AI_SANDBOX_BENCH_TIMEOUT", default_value_t = 300.0)]
    timeout: f64,
    /// Prompt set: a JSON array of strings (default: the committed bench/prompts.json).
    #[arg(long, env = "AI_SANDBOX_BENCH_PROMPTS")]
    prompts: Option<PathBuf>,
    /// After the levels, time the first token of requests sharing a long system prompt: cold
    /// (a unique first line, nothing cached) versus warm (the same system text again), 3 pairs.
    #[arg(
        long,
        env = "AI_SANDBOX_BENCH_PREFIX_CACHE",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    prefix_cache: bool,
    /// System prompt text file for --prefix-cache (default: the committed
    /// bench/system-prompt.txt, about 1,000 tokens).
    #[arg(long, env = "AI_SANDBOX_BENCH_SYSTEM_PROMPT", value_name = "FILE")]
    system_prompt: Option<PathBuf>,
    /// Server process id: report its peak VmRSS per level (Linux /proc).
    #[arg(long, env = "AI_SANDBOX_BENCH_SERVER_PID")]
    server_pid: Option<u32>,
    /// Bearer token, if the server requires one.
    #[arg(long, env = "AI_SANDBOX_BENCH_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

const DEFAULT_PROMPTS: &str = include_str!("../prompts.json");

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.digits$}"))
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line of context chain, no backtrace (RUST_BACKTRACE may be set).
            eprintln!("ai-sandbox-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<()> {
    let args = Args::parse();
    let prompts_text = match &args.prompts {
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?
        }
        None => DEFAULT_PROMPTS.to_string(),
    };
    let prompts: Vec<String> = serde_json::from_str(&prompts_text)
        .context("the prompt set must be a JSON array of strings")?;
    if prompts.is_empty() {
        bail!("the prompt set is empty");
    }
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        bail!("--concurrency needs positive levels");
    }
    if !(args.timeout > 0.0 && args.timeout.is_finite()) {
        bail!("--timeout must be a positive number of seconds");
    }
    // Read before the levels run, so a bad path fails in seconds, not after the whole run.
    let prefix_cfg = if args.prefix_cache {
        let text = match &args.system_prompt {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("reading --system-prompt {}", p.display()))?,
            None => DEFAULT_SYSTEM_PROMPT.to_string(),
        };
        if text.trim().is_empty() {
            bail!("--system-prompt: the file is empty");
        }
        Some(PrefixCacheConfig::new(text))
    } else {
        None
    };
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(key) = &args.api_key {
        let v = reqwest::header::HeaderValue::from_str(&format!("Bearer {key}"))
            .context("--api-key")?;
        headers.insert(reqwest::header::AUTHORIZATION, v);
    }
    let client = reqwest::Client::builder()
        .default_headers(headers)
        .connect_timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let base_url = args.base_url.trim_end_matches('/').to_string();
    let model = match args.model.clone() {
        Some(m) => m,
        None => first_model(&client, &base_url).await?,
    };
    let cfg = BenchConfig {
        base_url,
        model,
        max_tokens: args.max_tokens,
        ban_token_ids: args.ban_token_ids.clone(),
        timeout: Duration::from_secs_f64(args.timeout),
        prompts,
    };
    if !args.json {
        eprintln!(
            "warm-up: 1 request to {} (model {})",
            cfg.base_url, cfg.model
        );
    }
    let warm = stream_one(&client, &cfg, &cfg.prompts[0])
        .await
        .context("warm-up request")?;
    if warm.tokens != u64::from(cfg.max_tokens) {
        eprintln!(
            "note: warm-up produced {} tokens, not max_tokens={} (the server may ignore logit_bias, or these are not the model's EOS ids)",
            warm.tokens, cfg.max_tokens
        );
    }
    let mut levels: Vec<LevelReport> = Vec::new();
    for &c in &args.concurrency {
        let n = args.requests_per_level.unwrap_or(2 * c).max(1);
        if !args.json {
            eprintln!("concurrency {c}: {n} requests");
        }
        let r = run_level(&client, &cfg, c, n, args.server_pid)
            .await
            .with_context(|| format!("concurrency {c}"))?;
        levels.push(r);
    }
    let prefix = match &prefix_cfg {
        Some(pc) => {
            if !args.json {
                eprintln!(
                    "prefix cache: {} cold/warm pairs, system prompt {} chars",
                    pc.pairs,
                    pc.system_prompt.chars().count()
                );
            }
            let r = run_prefix_cache(&client, &cfg, pc)
                .await
                .context("prefix-cache scenario")?;
            Some(r)
        }
        None => None,
    };
    let single = levels.iter().find(|l| l.concurrency == 1);
    let single_decode = single.and_then(|l| l.decode_tok_s.p50);
    let rss_now = args
        .server_pid
        .and_then(ai_sandbox_bench::rss::read_rss_kib);
    if args.json {
        let out = json!({
            "base_url": cfg.base_url,
            "model": cfg.model,
            "max_tokens": cfg.max_tokens,
            "prompts": cfg.prompts.len(),
            "single_stream_decode_tok_s": single_decode,
            "levels": levels,
            "prefix_cache": prefix,
            "server_rss_kib": rss_now.map(|(rss, _)| rss),
            "server_rss_hwm_kib": rss_now.map(|(_, hwm)| hwm),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "model {} at {}, max_tokens {}, {} prompts",
        cfg.model,
        cfg.base_url,
        cfg.max_tokens,
        cfg.prompts.len()
    );
    println!(
        "single-stream decode: {} tok/s (median over the concurrency-1 requests)",
        fmt(single_decode, 1)
    );
    println!(
        "{:>5} {:>5} {:>8} {:>10} {:>9} {:>9} {:>8} {:>8} {:>11} {:>9}",
        "conc",
        "reqs",
        "tokens",
        "agg tok/s",
        "ttft p50",
        "ttft p99",
        "itl p50",
        "itl p99",
        "decode p50",
        "rss MiB"
    );
    for l in &levels {
        println!(
            "{:>5} {:>5} {:>8} {:>10.1} {:>9} {:>9} {:>8} {:>8} {:>11} {:>9}",
            l.concurrency,
            l.requests,
            l.output_tokens,
            l.aggregate_tok_s,
            fmt(l.ttft_ms.p50, 1),
            fmt(l.ttft_ms.p99, 1),
            fmt(l.itl_ms.p50, 2),
            fmt(l.itl_ms.p99, 2),
            fmt(l.decode_tok_s.p50, 1),
            fmt(l.server_rss_peak_kib.map(|k| k as f64 / 1024.0), 1),
        );
    }
    println!("(times in ms; rss = peak VmRSS sampled during the level)");
    if let Some(p) = &prefix {
        println!("{}", p.line());
    }
    if let Some((rss, hwm)) = rss_now {
        println!(
            "server RSS now {:.1} MiB, peak {:.1} MiB",
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
    Ok(())
}
