//! The prefix-cache scenario against an in-process axum stub that records every request and
//! behaves like a server with a prefix cache: a system text it has seen before gets its first
//! token after `WARM`, an unseen one after `COLD`. Checks what the scenario sends (system
//! message, the same text twice per pair, a distinct leading nonce per pair, max_tokens 1) and
//! what it parses (TTFT medians and ratio, usage, timings), through the library and the binary.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ai_sandbox_bench::client::{BenchConfig, BenchError};
use ai_sandbox_bench::prefix::{
    run_prefix_cache, PrefixCacheConfig, DEFAULT_PAIRS, DEFAULT_SYSTEM_PROMPT,
};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

const COLD: Duration = Duration::from_millis(150);
const WARM: Duration = Duration::from_millis(5);
const DECODE: Duration = Duration::from_millis(2);

#[derive(Default)]
struct Stub {
    requests: Vec<Value>,
    seen_systems: HashSet<String>,
}

type Shared = Arc<Mutex<Stub>>;

fn words(req: &Value) -> u64 {
    req["messages"]
        .as_array()
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m["content"].as_str())
                .map(|c| c.split_whitespace().count() as u64)
                .sum()
        })
        .unwrap_or(0)
}

/// One streamed answer: the role chunk at once, then the first token after COLD or WARM (for a
/// request with a system message) or DECODE, then `max_tokens - 1` more, a finish chunk with
/// llama.cpp-style timings, the usage chunk and `[DONE]`. Prompt tokens are the words of all
/// messages; a seen system text counts as cached. Model "held-back" sends no text at all.
async fn chat(State(stub): State<Shared>, Json(req): Json<Value>) -> Response {
    let system = req
        .pointer("/messages/0")
        .filter(|m| m["role"] == "system")
        .and_then(|m| m["content"].as_str())
        .map(str::to_string);
    let (first_delay, cached) = {
        let mut st = stub.lock().expect("stub lock");
        st.requests.push(req.clone());
        match &system {
            Some(s) if !st.seen_systems.insert(s.clone()) => {
                (WARM, s.split_whitespace().count() as u64)
            }
            Some(_) => (COLD, 0),
            None => (DECODE, 0),
        }
    };
    let held_back = req["model"] == "held-back";
    let n = req["max_tokens"].as_u64().unwrap_or(16);
    let chunk = |choices: Value| json!({"choices": choices}).to_string();
    let mut events = vec![(
        Duration::ZERO,
        chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}}])),
    )];
    // The first event after the prefill carries `first_delay`: a token, or with "held-back"
    // (a token the server kept back, e.g. half a character) the finish chunk itself.
    let mut delay = first_delay;
    if !held_back {
        for i in 0..n {
            events.push((
                delay,
                chunk(json!([{"index": 0, "delta": {"content": format!("t{i}")}}])),
            ));
            delay = DECODE;
        }
        delay = Duration::ZERO;
    }
    let prompt_tokens = words(&req);
    let timings = json!({"prompt_n": prompt_tokens - cached,
        "prompt_ms": first_delay.as_secs_f64() * 1e3});
    events.push((
        delay,
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}],
            "timings": timings})
        .to_string(),
    ));
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": n,
        "prompt_tokens_details": {"cached_tokens": cached}});
    events.push((
        Duration::ZERO,
        json!({"choices": [], "usage": usage}).to_string(),
    ));
    events.push((Duration::ZERO, "[DONE]".to_string()));
    let stream = futures::stream::unfold(events.into_iter(), |mut it| async move {
        let (delay, data) = it.next()?;
        tokio::time::sleep(delay).await;
        Some((
            Ok::<_, Infallible>(Bytes::from(format!("data: {data}\n\n"))),
            it,
        ))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("static response")
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": "stub-model", "object": "model"}]}))
}

async fn start_stub() -> (String, Shared) {
    let stub: Shared = Arc::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    (format!("http://{addr}/v1"), stub)
}

fn config(base_url: String, model: &str) -> BenchConfig {
    BenchConfig {
        base_url,
        model: model.into(),
        max_tokens: 64,
        ban_token_ids: vec![0, 2],
        timeout: Duration::from_secs(10),
        prompts: vec!["a".into()],
    }
}

fn requests(stub: &Shared) -> Vec<Value> {
    stub.lock().expect("stub lock").requests.clone()
}

/// The scenario's requests (those with a system message), checked pair by pair against `text`
/// and `run_id`; returns them.
fn check_scenario_requests(all: &[Value], text: &str, run_id: Option<&str>) -> Vec<Value> {
    let reqs: Vec<Value> = all
        .iter()
        .filter(|r| r.pointer("/messages/0/role") == Some(&json!("system")))
        .cloned()
        .collect();
    assert_eq!(reqs.len(), 2 * DEFAULT_PAIRS, "{reqs:#?}");
    let mut nonces = HashSet::new();
    for (pair, two) in reqs.chunks(2).enumerate() {
        let (cold, warm) = (&two[0], &two[1]);
        for r in two {
            assert_eq!(r["stream"], true);
            assert_eq!(r["max_tokens"], 1);
            assert_eq!(r["temperature"], 0);
            assert_eq!(r["stream_options"]["include_usage"], true);
            assert_eq!(r["logit_bias"]["2"], -100);
            assert_eq!(r["messages"].as_array().map(Vec::len), Some(2));
            assert_eq!(r["messages"][1]["role"], "user");
        }
        let sys = cold["messages"][0]["content"]
            .as_str()
            .expect("system text");
        assert_eq!(
            warm["messages"][0]["content"], sys,
            "pair {pair}: the warm request must repeat the cold system text exactly"
        );
        assert_ne!(
            cold["messages"][1]["content"], warm["messages"][1]["content"],
            "pair {pair}: same question twice"
        );
        let (nonce, rest) = sys.split_once('\n').expect("a nonce line");
        assert_eq!(
            rest, text,
            "pair {pair}: the system text after the nonce line"
        );
        assert!(nonce.starts_with("Session "), "{nonce}");
        if let Some(id) = run_id {
            assert_eq!(nonce, format!("Session {id}-{pair}:"));
        }
        assert!(nonces.insert(nonce.to_string()), "nonce {nonce} reused");
    }
    reqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairs_share_the_system_text_and_nonces_keep_cold_requests_cold() {
    let (base, stub) = start_stub().await;
    let client = reqwest::Client::new();
    let text = "You are a terse assistant.\nAnswer in one word.".to_string();
    let pc = PrefixCacheConfig {
        system_prompt: text.clone(),
        pairs: DEFAULT_PAIRS,
        run_id: "cafe01".into(),
    };
    let report = run_prefix_cache(&client, &config(base.clone(), "stub-model"), &pc)
        .await
        .expect("scenario");
    let reqs = check_scenario_requests(&requests(&stub), &text, Some("cafe01"));

    assert_eq!(report.pairs, DEFAULT_PAIRS);
    assert_eq!(report.system_prompt_chars, text.chars().count());
    for (s, two) in report.samples.iter().zip(reqs.chunks(2)) {
        assert_eq!(s.nonce, format!("Session cafe01-{}:", s.pair));
        // usage.prompt_tokens as the stub computed it from each request.
        assert_eq!(s.cold_prompt_tokens, Some(words(&two[0])));
        assert_eq!(s.warm_prompt_tokens, Some(words(&two[1])));
        let sys_words = two[0]["messages"][0]["content"]
            .as_str()
            .map(|c| c.split_whitespace().count() as u64);
        assert_eq!(s.warm_cached_tokens, sys_words);
        assert_eq!(s.cold_server_prompt_ms, Some(150.0));
        assert_eq!(s.warm_server_prompt_ms, Some(5.0));
        assert!(s.cold_ttft_ms >= 149.0, "cold {} ms", s.cold_ttft_ms);
        assert!(s.warm_ttft_ms < s.cold_ttft_ms, "{s:?}");
    }
    let cold = report.cold_ttft_ms.p50.expect("cold p50");
    let warm = report.warm_ttft_ms.p50.expect("warm p50");
    assert_eq!(report.cold_ttft_ms.n, DEFAULT_PAIRS);
    // 150 ms against 5 ms in the stub: ~30x; a loaded machine slows the warm side, not to 2x.
    let speedup = report.speedup.expect("speedup");
    assert!((speedup - cold / warm).abs() < 1e-9);
    assert!(speedup > 2.0 && speedup < 40.0, "speedup {speedup}");
    let n = report.prompt_tokens.expect("prompt tokens");
    assert!(
        report
            .samples
            .iter()
            .any(|s| s.cold_prompt_tokens == Some(n)),
        "median of the cold prompt_tokens"
    );
    let line = report.line();
    assert!(
        line.starts_with(&format!(
            "prefix cache: system prompt {n} tokens, TTFT cold "
        )),
        "{line}"
    );
    assert!(line.ends_with(&format!("speedup {speedup:.2}x")), "{line}");

    // A second run (new run id) is cold again even though the stub remembers the first.
    let pc2 = PrefixCacheConfig {
        run_id: "cafe02".into(),
        ..pc
    };
    let again = run_prefix_cache(&client, &config(base, "stub-model"), &pc2)
        .await
        .expect("second run");
    assert!(
        again.samples.iter().all(|s| s.cold_ttft_ms >= 149.0),
        "{again:?}"
    );
}

#[tokio::test]
async fn first_token_without_text_counts_at_the_finish_chunk() {
    let (base, _stub) = start_stub().await;
    let client = reqwest::Client::new();
    let pc = PrefixCacheConfig {
        system_prompt: "Be brief.".into(),
        pairs: 1,
        run_id: "held".into(),
    };
    let r = run_prefix_cache(&client, &config(base, "held-back"), &pc)
        .await
        .expect("scenario without visible text");
    assert_eq!(r.pairs, 1);
    assert!(r.samples[0].cold_ttft_ms >= 149.0, "{r:?}");
    // 5 ms against 150 ms in the stub: a warm request that missed the cache would be ~150 ms.
    assert!(r.speedup.is_some_and(|x| x > 2.0), "{r:?}");
}

#[tokio::test]
async fn no_pairs_or_empty_text_is_refused_before_sending() {
    let (base, stub) = start_stub().await;
    let client = reqwest::Client::new();
    let cfg = config(base, "stub-model");
    let mut pc = PrefixCacheConfig::new("text".into());
    pc.pairs = 0;
    let err = run_prefix_cache(&client, &cfg, &pc).await.unwrap_err();
    assert!(matches!(err, BenchError::InvalidSetup(_)), "{err:?}");
    let pc = PrefixCacheConfig::new(" \n".into());
    let err = run_prefix_cache(&client, &cfg, &pc).await.unwrap_err();
    assert!(matches!(err, BenchError::InvalidSetup(_)), "{err:?}");
    assert!(requests(&stub).is_empty());
}

/// Runs the built binary against `base` with `args` and `envs`; returns (status ok, stdout, stderr).
async fn run_bin(base: &str, args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ai-sandbox-bench"));
    cmd.args([
        "--base-url",
        base,
        "--concurrency",
        "1",
        "--requests-per-level",
        "1",
    ])
    .args(["--max-tokens", "3"])
    .args(args);
    for k in [
        "AI_SANDBOX_BENCH_PREFIX_CACHE",
        "AI_SANDBOX_BENCH_SYSTEM_PROMPT",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(envs.iter().copied());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run ai-sandbox-bench");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_reports_the_scenario_in_json_and_table() {
    let (base, stub) = start_stub().await;

    // --json, flag from the env, the committed system prompt.
    let (ok, out, err) = run_bin(
        &base,
        &["--json"],
        &[("AI_SANDBOX_BENCH_PREFIX_CACHE", "1")],
    )
    .await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).expect("one JSON object");
    let pc = &v["prefix_cache"];
    assert_eq!(pc["pairs"], DEFAULT_PAIRS);
    assert_eq!(pc["samples"].as_array().map(Vec::len), Some(DEFAULT_PAIRS));
    assert_eq!(
        pc["system_prompt_chars"],
        DEFAULT_SYSTEM_PROMPT.chars().count()
    );
    assert!(pc["speedup"].as_f64().is_some_and(|s| s > 2.0), "{pc}");
    assert!(
        pc["cold_ttft_ms"]["p50"]
            .as_f64()
            .is_some_and(|c| c >= 149.0),
        "{pc}"
    );
    let tokens = pc["prompt_tokens"].as_u64().expect("prompt_tokens");
    let words = DEFAULT_SYSTEM_PROMPT.split_whitespace().count() as u64;
    assert!(
        tokens > words && tokens < words + 20,
        "{tokens} vs {words} words"
    );
    check_scenario_requests(&requests(&stub), DEFAULT_SYSTEM_PROMPT, None);
    assert_eq!(v["levels"].as_array().map(Vec::len), Some(1));

    // Table, --flag and --system-prompt FILE.
    stub.lock().expect("stub lock").requests.clear();
    let path = std::env::temp_dir().join(format!(
        "ai-sandbox-bench-system-{}.txt",
        std::process::id()
    ));
    let text = "You answer questions about the stub.\nNothing else.";
    std::fs::write(&path, text).expect("write system prompt");
    let path_s = path.to_string_lossy().into_owned();
    let (ok, out, err) = run_bin(&base, &["--prefix-cache", "--system-prompt", &path_s], &[]).await;
    let _ = std::fs::remove_file(&path);
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("prefix cache: "))
        .unwrap_or_else(|| panic!("no prefix cache line in:\n{out}"));
    let rest = line
        .strip_prefix("prefix cache: system prompt ")
        .expect("line shape");
    let (n, rest) = rest.split_once(" tokens, TTFT cold ").expect("line shape");
    assert!(n.parse::<u64>().is_ok(), "{line}");
    let (cold, rest) = rest.split_once(" ms, warm ").expect("line shape");
    let (warm, rest) = rest.split_once(" ms, speedup ").expect("line shape");
    let speedup = rest.strip_suffix('x').expect("line shape");
    let (cold, warm, speedup): (f64, f64, f64) = (
        cold.parse().expect("cold"),
        warm.parse().expect("warm"),
        speedup.parse().expect("speedup"),
    );
    assert!(cold >= 149.0 && warm < cold && speedup > 2.0, "{line}");
    check_scenario_requests(&requests(&stub), text, None);

    // Off: no system messages sent, and `prefix_cache` is null.
    stub.lock().expect("stub lock").requests.clear();
    let (ok, out, err) = run_bin(
        &base,
        &["--json"],
        &[("AI_SANDBOX_BENCH_PREFIX_CACHE", "false")],
    )
    .await;
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).expect("one JSON object");
    assert!(v["prefix_cache"].is_null(), "{v}");
    assert!(requests(&stub)
        .iter()
        .all(|r| r.pointer("/messages/0/role") == Some(&json!("user"))));

    // A missing file fails before any request is sent.
    stub.lock().expect("stub lock").requests.clear();
    let (ok, _, err) = run_bin(
        &base,
        &[
            "--prefix-cache",
            "--system-prompt",
            "/nonexistent/system.txt",
        ],
        &[],
    )
    .await;
    assert!(!ok);
    assert!(err.contains("--system-prompt"), "{err}");
    assert!(requests(&stub).is_empty());
}
