//! `ai-sandbox-bench` CLI: warm-up, then one run per concurrency level, then (with
//! `--prefix-cache`) the cold/warm system-prompt pairs; a table or `--json`. The in-process
//! modes `--random-weights SHAPE` and `--kernel-check` run the engine itself, no server.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use ai_sandbox_bench::client::{first_model, run_level, stream_one, BenchConfig, LevelReport};
use ai_sandbox_bench::kernel_check::{render, run_kernel_checks};
use ai_sandbox_bench::prefix::{run_prefix_cache, PrefixCacheConfig, DEFAULT_SYSTEM_PROMPT};
use ai_sandbox_bench::{run_random_weights, RandomWeightsOptions};
use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;

/// Benchmarks a running OpenAI-compatible server (e.g. `scripts/serve`) with concurrent
/// streaming chat completions; or, in process with no server, the engine on random weights
/// (`--random-weights SHAPE`) or its kernels against references (`--kernel-check`).
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

    /// In process, no server: build SHAPE (mistral-7b, llama-8b, qwen2-7b, tiny) with random
    /// weights on --device, measure the device-to-device copy bandwidth, single-stream decode
    /// (tok/s and the fraction of the copy roofline: weight + KV bytes read per step / step
    /// time) and aggregate decode tok/s at each of --streams.
    #[arg(
        long,
        env = "AI_SANDBOX_BENCH_RANDOM_WEIGHTS",
        value_name = "SHAPE",
        conflicts_with = "kernel_check",
        help_heading = "In process"
    )]
    random_weights: Option<String>,
    /// In process: run the engine's kernel reference checks on --device for --dtype (default:
    /// bf16, f16 and f32), one line each; exit status 1 if any failed.
    #[arg(
        long,
        env = "AI_SANDBOX_BENCH_KERNEL_CHECK",
        value_parser = clap::builder::BoolishValueParser::new(),
        help_heading = "In process"
    )]
    kernel_check: bool,
    /// Device of the in-process modes: cuda, cuda:N, cpu (host kernels) or cpu-tensor (the
    /// device code on the CPU).
    #[arg(
        long,
        env = "AI_SANDBOX_BENCH_DEVICE",
        default_value = "cuda",
        help_heading = "In process"
    )]
    device: String,
    /// bf16, f16 or f32 (default: bf16 on CUDA, f32 on the CPU).
    #[arg(long, env = "AI_SANDBOX_BENCH_DTYPE", help_heading = "In process")]
    dtype: Option<String>,
    /// Concurrent streams of --random-weights, comma-separated.
    #[arg(
        long,
        env = "AI_SANDBOX_BENCH_STREAMS",
        value_delimiter = ',',
        default_value = "1,8,32,64,128",
        help_heading = "In process"
    )]
    streams: Vec<usize>,
    /// Prompt tokens per stream (random ids) before decoding.
    #[arg(
        long,
        env = "AI_SANDBOX_BENCH_PROMPT_LEN",
        default_value_t = 128,
        help_heading = "In process"
    )]
    prompt_len: usize,
    /// Timed decode steps per level.
    #[arg(
        long,
        env = "AI_SANDBOX_BENCH_DECODE_STEPS",
        default_value_t = 64,
        help_heading = "In process"
    )]
    decode_steps: usize,
    /// Untimed decode steps before the timed ones.
    #[arg(
        long,
        env = "AI_SANDBOX_BENCH_WARMUP_STEPS",
        default_value_t = 4,
        help_heading = "In process"
    )]
    warmup_steps: usize,
    /// Positions per sequence (default: prompt + warm-up + decode steps).
    #[arg(long, env = "AI_SANDBOX_BENCH_CTX_SIZE", help_heading = "In process")]
    ctx_size: Option<usize>,
    /// KV cache size limit in MiB (default: enough for the largest --streams, within the
    /// device's free memory); levels that don't fit are skipped.
    #[arg(
        long,
        env = "AI_SANDBOX_BENCH_KV_CACHE_MB",
        help_heading = "In process"
    )]
    kv_cache_mb: Option<usize>,
    /// Buffer of the copy-bandwidth measurement in MiB (default: 1024 on CUDA, 64 on the CPU).
    #[arg(long, env = "AI_SANDBOX_BENCH_COPY_MB", help_heading = "In process")]
    copy_mb: Option<usize>,
    /// Seed of the random weights and prompts.
    #[arg(
        long,
        env = "AI_SANDBOX_BENCH_SEED",
        default_value_t = 0,
        help_heading = "In process"
    )]
    seed: u64,
}

const DEFAULT_PROMPTS: &str = include_str!("../prompts.json");

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.digits$}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.kernel_check {
        kernel_check(&args)
    } else if let Some(shape) = &args.random_weights {
        random_weights(&args, shape).map(|()| ExitCode::SUCCESS)
    } else {
        tokio::runtime::Runtime::new()
            .context("starting the tokio runtime")
            .and_then(|rt| rt.block_on(run(args)))
            .map(|()| ExitCode::SUCCESS)
    };
    result.unwrap_or_else(|e| {
        // One line of context chain, no backtrace (RUST_BACKTRACE may be set).
        eprintln!("ai-sandbox-bench: error: {e:#}");
        ExitCode::FAILURE
    })
}

/// Progress lines of the in-process modes, on stderr (stdout carries the table or JSON).
fn progress(line: &str) {
    eprintln!("ai-sandbox-bench: {line}");
}

fn random_weights(args: &Args, shape: &str) -> Result<()> {
    let opts = RandomWeightsOptions {
        shape: shape.to_string(),
        device: args.device.clone(),
        dtype: args.dtype.clone(),
        streams: args.streams.clone(),
        prompt_len: args.prompt_len,
        decode_steps: args.decode_steps,
        warmup_steps: args.warmup_steps,
        ctx_size: args.ctx_size,
        kv_cache_mb: args.kv_cache_mb,
        copy_bytes: args.copy_mb.map(|mb| mb << 20),
        seed: args.seed,
    };
    let report = run_random_weights(&opts, &mut progress)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
    }
    let failed: Vec<String> = report
        .streams
        .iter()
        .filter(|l| l.error.is_some())
        .map(|l| l.streams.to_string())
        .collect();
    if !failed.is_empty() {
        bail!(
            "the levels of {} streams failed (see the report)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Exit status 1 when a check failed.
fn kernel_check(args: &Args) -> Result<ExitCode> {
    let dtypes: Vec<String> = args.dtype.iter().cloned().collect();
    let lines = run_kernel_checks(&args.device, &dtypes, &mut progress)?;
    let failed = lines.iter().filter(|l| !l.passed).count();
    if args.json {
        let out = json!({
            "device": args.device,
            "passed": lines.len() - failed,
            "failed": failed,
            "checks": lines,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", render(&lines));
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn run(args: Args) -> Result<()> {
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
