//! Routing, health and loading states, auth, request ids, models, and router-level errors.

mod common;

use std::sync::Arc;

use ai_sandbox_api::backend::testing::{FakeBackend, FakeConfig};
use ai_sandbox_api::{app, AppState, ServerOptions};
use axum::body::Body;
use axum::http::Request;
use common::*;
use serde_json::json;

#[tokio::test]
async fn health_follows_the_load_state() {
    let state = AppState::loading(ServerOptions::default());
    let router = app(state.clone());
    let r = get(&router, "/health").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "loading");
    assert!(r.headers.get("retry-after").is_some());
    assert!(r.headers.get("x-request-id").is_some());
    // /v1 answers 503 + Retry-After while loading.
    for path in ["/v1/models", "/v1/models/x"] {
        let r = get(&router, path).await;
        assert_error(&r, 503, "server_error", None, Some("model_loading"));
        assert_eq!(r.headers["retry-after"], "5");
    }
    let r = post_json(&router, "/v1/chat/completions", chat_body(json!({}))).await;
    assert_error(&r, 503, "server_error", None, Some("model_loading"));

    state.set_ready(Arc::new(FakeBackend::new(FakeConfig::default())));
    let r = get(&router, "/health").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status": "ok"}));

    state.set_failed("cannot load model: no such file");
    let r = get(&router, "/health").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "error");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no such file"));
    let r = get(&router, "/v1/models").await;
    assert_error(&r, 503, "server_error", None, Some("model_load_failed"));
    assert_eq!(r.headers["x-should-retry"], "false");
}

#[tokio::test]
async fn models_list_and_retrieve() {
    let opts = ServerOptions {
        served_model_name: Some("HuggingFaceTB/SmolLM2-135M-Instruct".into()),
        api_key: None,
    };
    let (_fake, router) = fake_app_with(FakeConfig::default(), opts);
    let v = get(&router, "/v1/models").await.json();
    assert_eq!(v["object"], "list");
    let m = &v["data"][0];
    assert_eq!(m["id"], "HuggingFaceTB/SmolLM2-135M-Instruct");
    assert_eq!(m["object"], "model");
    assert!(m["created"].as_u64().unwrap() > 1_600_000_000);
    assert!(m["owned_by"].is_string());
    for path in [
        "/v1/models/HuggingFaceTB%2FSmolLM2-135M-Instruct",
        "/v1/models/HuggingFaceTB/SmolLM2-135M-Instruct",
    ] {
        let r = get(&router, path).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.json()["id"], "HuggingFaceTB/SmolLM2-135M-Instruct");
        assert_eq!(r.json()["created"], m["created"]);
    }
    let r = get(&router, "/v1/models/nope%2Fmodel").await;
    assert_error(
        &r,
        404,
        "invalid_request_error",
        Some("model"),
        Some("model_not_found"),
    );
}

#[tokio::test]
async fn router_errors_use_the_envelope() {
    let (_fake, router) = fake_app(FakeConfig::default());
    let r = get(&router, "/v1/nothing").await;
    assert_error(&r, 404, "not_found_error", None, Some("unknown_url"));
    let r = get(&router, "/").await;
    assert_error(&r, 404, "not_found_error", None, Some("unknown_url"));
    let r = get(&router, "/v1/chat/completions").await;
    assert_error(
        &r,
        405,
        "invalid_request_error",
        None,
        Some("method_not_allowed"),
    );
    let r = send(
        &router,
        Request::delete("/v1/models").body(Body::empty()).unwrap(),
    )
    .await;
    assert_error(
        &r,
        405,
        "invalid_request_error",
        None,
        Some("method_not_allowed"),
    );
    // Over the 16 MiB limit.
    let big = format!(
        "{{\"model\":\"fake-model\",\"prompt\":\"{}\"}}",
        "a".repeat(ai_sandbox_api::BODY_LIMIT_BYTES + 10)
    );
    let r = send(&router, post("/v1/completions", big)).await;
    assert_error(&r, 413, "invalid_request_error", None, None);
}

#[tokio::test]
async fn request_ids() {
    let (_fake, router) = fake_app(FakeConfig::default());
    let req = Request::get("/v1/models")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&router, req).await.headers["x-request-id"], "abc-123");
    let req = Request::get("/nope")
        .header("x-request-id", "bad id with spaces")
        .body(Body::empty())
        .unwrap();
    let r = send(&router, req).await;
    let id = r.headers["x-request-id"].to_str().unwrap();
    assert!(id.starts_with("req_") && id.len() > 20, "{id}");
    let a = get(&router, "/health").await.headers["x-request-id"].clone();
    let b = get(&router, "/health").await.headers["x-request-id"].clone();
    assert_ne!(a, b);
}

#[tokio::test]
async fn any_key_accepted_without_api_key() {
    let (_fake, router) = fake_app(FakeConfig::default());
    let req = Request::get("/v1/models")
        .header("authorization", "Bearer sk-whatever")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&router, req).await.status, 200);
    assert_eq!(get(&router, "/v1/models").await.status, 200);
}

#[tokio::test]
async fn api_key_is_checked_on_v1_only() {
    let opts = ServerOptions {
        served_model_name: None,
        api_key: Some("s3cret".into()),
    };
    let (_fake, router) = fake_app_with(FakeConfig::default(), opts);
    let with = |v: &str| {
        Request::get("/v1/models")
            .header("authorization", v)
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(send(&router, with("Bearer s3cret")).await.status, 200);
    for bad in [
        "Bearer s3cre",
        "Bearer s3cret2",
        "s3cret",
        "Basic s3cret",
        "Bearer ",
    ] {
        let r = send(&router, with(bad)).await;
        assert_error(
            &r,
            401,
            "authentication_error",
            None,
            Some("invalid_api_key"),
        );
    }
    let r = get(&router, "/v1/models").await;
    assert_error(
        &r,
        401,
        "authentication_error",
        None,
        Some("invalid_api_key"),
    );
    let r = post_json(&router, "/v1/chat/completions", chat_body(json!({}))).await;
    assert_error(
        &r,
        401,
        "authentication_error",
        None,
        Some("invalid_api_key"),
    );
    assert_eq!(get(&router, "/health").await.status, 200);
}

#[tokio::test]
async fn real_socket_round_trip() {
    let (_fake, router) = fake_app(FakeConfig::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let out = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("x-request-id: req_"));
    assert!(out.ends_with("{\"status\":\"ok\"}"));
}
