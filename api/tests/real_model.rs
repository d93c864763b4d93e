//! The HTTP layer over the real engine with SmolLM2 (skipped when models/ has no model file:
//! run scripts/fetch-model). Checks that stream and sync agree at temperature 0, that a seed
//! reproduces its text, and that the served id is the model's own name.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use ai_sandbox_api::engine_backend::EngineBackend;
use ai_sandbox_api::{app, AppState, ServerOptions};
use ai_sandbox_engine::EngineConfig;
use common::*;
use serde_json::{json, Value};

fn model_path() -> Option<PathBuf> {
    let p =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    p.exists().then_some(p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_engine_end_to_end() {
    let Some(model) = model_path() else {
        eprintln!("skipping: model file missing (run scripts/fetch-model)");
        return;
    };
    let cfg = EngineConfig { threads: Some(2), ctx_size: Some(2048), max_queue: 4, ..EngineConfig::new(model) };
    let backend = tokio::task::spawn_blocking(move || EngineBackend::load(cfg))
        .await
        .unwrap()
        .unwrap();
    let router = app(AppState::ready(
        Arc::clone(&backend),
        ServerOptions::default(),
    ));

    let models = get(&router, "/v1/models").await.json();
    let id = models["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(id, backend.model_id());
    assert_eq!(backend.ctx_size(), 2048);

    let body = |extra: Value| {
        let mut v = json!({"model": id, "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    };
    let sync = post_json(
        &router,
        "/v1/chat/completions",
        body(json!({"temperature": 0})),
    )
    .await;
    assert_eq!(sync.status, 200, "{}", sync.text());
    let sync = sync.json();
    let text = sync["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!text.is_empty());
    assert!(sync["usage"]["completion_tokens"].as_u64().unwrap() <= 8);

    let stream = post_json(
        &router,
        "/v1/chat/completions",
        body(json!({"temperature": 0, "stream": true})),
    )
    .await;
    let events = stream.sse();
    assert_eq!(events.last().unwrap(), "[DONE]");
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(streamed, text, "temperature 0: streamed == non-streamed");

    let seeded = |s| {
        post_json(
            &router,
            "/v1/chat/completions",
            body(json!({"seed": s, "temperature": 1.0})),
        )
    };
    let a = seeded(7).await.json();
    let b = seeded(7).await.json();
    assert_eq!(
        a["choices"][0]["message"]["content"], b["choices"][0]["message"]["content"],
        "same seed, same text"
    );

    let c = post_json(&router, "/v1/completions", json!({"model": id, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "echo": true})).await;
    assert_eq!(c.status, 200, "{}", c.text());
    assert!(c.json()["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("The capital of France is"));
}
