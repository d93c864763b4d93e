//! End to end against an in-process axum stub that streams a known number of chunks with a
//! known delay: token counts, rates in a sane range, error envelopes, an unreachable server.

use std::convert::Infallible;
use std::time::Duration;

use ai_sandbox_bench::client::{first_model, run_level, stream_one, BenchConfig, BenchError};
use axum::body::{Body, Bytes};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

const DELAY: Duration = Duration::from_millis(10);

/// Streams `max_tokens` one-token chunks when EOS (id 2) is banned, else stops after 3 tokens
/// (as a model would at EOS); model "broken" gets a 400 error envelope, "midstream" an error event.
async fn chat(Json(req): Json<Value>) -> Response {
    let model = req["model"].as_str().unwrap_or_default().to_string();
    if model == "broken" {
        let body = json!({"error": {"message": "model 'broken' does not exist", "type": "invalid_request_error"}});
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    let banned = req.pointer("/logit_bias/2").and_then(Value::as_f64) == Some(-100.0);
    let max = req["max_tokens"].as_u64().unwrap_or(16);
    let n = if banned { max } else { max.min(3) };
    let mut events: Vec<(Duration, String)> = Vec::new();
    events.push((
        Duration::ZERO,
        json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            .to_string(),
    ));
    for i in 0..n {
        if model == "midstream" && i == 2 {
            events.push((
                DELAY,
                json!({"error": {"message": "engine fell over"}}).to_string(),
            ));
            break;
        }
        let delta = json!({"choices": [{"index": 0, "delta": {"content": format!("t{i} ")}}]});
        events.push((DELAY, delta.to_string()));
    }
    events.push((
        Duration::ZERO,
        json!({"choices": [], "usage": {"completion_tokens": n}}).to_string(),
    ));
    events.push((Duration::ZERO, "[DONE]".to_string()));
    let stream = futures::stream::unfold(events.into_iter(), |mut it| async move {
        let (delay, data) = it.next()?;
        tokio::time::sleep(delay).await;
        let text = format!("data: {data}\n\n");
        Some((Ok::<_, Infallible>(Bytes::from(text)), it))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .expect("static response")
}

async fn models() -> Json<Value> {
    Json(json!({"object": "list", "data": [{"id": "stub-model", "object": "model"}]}))
}

async fn start_stub() -> String {
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    format!("http://{addr}/v1")
}

fn config(base_url: String, model: &str, max_tokens: u32) -> BenchConfig {
    BenchConfig {
        base_url,
        model: model.into(),
        max_tokens,
        ban_token_ids: vec![0, 2],
        timeout: Duration::from_secs(10),
        prompts: vec!["a".into(), "b".into(), "c".into()],
    }
}

#[tokio::test]
async fn counts_tokens_and_rates_against_stub() {
    let base = start_stub().await;
    let client = reqwest::Client::new();
    let model = first_model(&client, &base).await.expect("models");
    assert_eq!(model, "stub-model");
    let cfg = config(base, &model, 20);

    let one = stream_one(&client, &cfg, "hi").await.expect("one request");
    assert_eq!(one.tokens, 20);
    assert_eq!(one.content_chunks, 20);
    assert_eq!(one.itl_s.len(), 19);
    // 10 ms between tokens: ~100 tok/s (timer rounding and a late first chunk push it a little
    // above; a slow, shared machine pulls it below). Counting a token twice would give ~200.
    let rate = one.decode_tok_s.expect("rate");
    assert!((20.0..=150.0).contains(&rate), "decode {rate} tok/s");
    assert!(
        one.ttft_s >= 0.009 && one.ttft_s < 2.0,
        "ttft {}",
        one.ttft_s
    );

    let level = run_level(&client, &cfg, 4, 8, Some(std::process::id()))
        .await
        .expect("level");
    assert_eq!(level.concurrency, 4);
    assert_eq!(level.requests, 8);
    assert_eq!(level.output_tokens, 160);
    assert_eq!(level.itl_ms.n, 8 * 19);
    let itl = level.itl_ms.p50.expect("itl");
    assert!((9.0..100.0).contains(&itl), "itl p50 {itl} ms");
    // 4 streams in parallel against a server that only sleeps: well above one stream's ~100 tok/s.
    assert!(
        level.aggregate_tok_s > 120.0 && level.aggregate_tok_s <= 420.0,
        "{}",
        level.aggregate_tok_s
    );
    assert!(level.server_rss_peak_kib.is_some_and(|k| k > 0));
}

#[tokio::test]
async fn without_logit_bias_the_stub_stops_early() {
    let base = start_stub().await;
    let client = reqwest::Client::new();
    let mut cfg = config(base, "stub-model", 20);
    cfg.ban_token_ids.clear();
    let one = stream_one(&client, &cfg, "hi").await.expect("request");
    assert_eq!(one.tokens, 3);
}

#[tokio::test]
async fn error_envelope_and_stream_error_are_reported() {
    let base = start_stub().await;
    let client = reqwest::Client::new();
    let err = stream_one(&client, &config(base.clone(), "broken", 5), "x")
        .await
        .unwrap_err();
    match &err {
        BenchError::Http {
            status, message, ..
        } => {
            assert_eq!(*status, 400);
            assert!(message.contains("does not exist"), "{message}");
        }
        other => panic!("expected Http, got {other:?}"),
    }
    let err = run_level(&client, &config(base, "midstream", 5), 2, 4, None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, BenchError::StreamError(m) if m == "engine fell over"),
        "{err:?}"
    );
}

#[tokio::test]
async fn unreachable_server_and_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let client = reqwest::Client::new();
    let err = first_model(&client, &format!("http://127.0.0.1:{port}/v1"))
        .await
        .unwrap_err();
    assert!(matches!(err, BenchError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("cannot reach"), "{err}");

    let base = start_stub().await;
    let mut cfg = config(base, "stub-model", 50);
    cfg.timeout = Duration::from_millis(100);
    let err = stream_one(&client, &cfg, "x").await.unwrap_err();
    assert!(matches!(err, BenchError::Timeout(_)), "{err:?}");
}
