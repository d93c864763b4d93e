//! Helpers shared by the HTTP tests: build `app()` over the fake backend and drive it with `oneshot`.
#![allow(dead_code)]

use std::sync::Arc;

use ai_sandbox_api::backend::testing::{FakeBackend, FakeConfig};
use ai_sandbox_api::{app, AppState, ServerOptions};
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

pub fn fake_app(cfg: FakeConfig) -> (FakeBackend, Router) {
    fake_app_with(cfg, ServerOptions::default())
}

pub fn fake_app_with(cfg: FakeConfig, opts: ServerOptions) -> (FakeBackend, Router) {
    let fake = FakeBackend::new(cfg);
    let state = AppState::ready(Arc::new(fake.clone()), opts);
    (fake, app(state))
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// The `data:` payloads of an SSE body, in order; asserts the framing.
    pub fn sse(&self) -> Vec<String> {
        let t = self.text();
        assert!(
            t.ends_with("\n\n"),
            "SSE body must end with a blank line: {t:?}"
        );
        t.trim_end_matches("\n\n")
            .split("\n\n")
            .map(|ev| {
                ev.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("event without 'data: ': {ev:?}"))
                    .to_string()
            })
            .collect()
    }
}

pub async fn send(app: &Router, req: Request<Body>) -> Resp {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Resp {
        status,
        headers,
        body,
    }
}

pub fn post(path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

pub async fn post_json(app: &Router, path: &str, v: Value) -> Resp {
    send(app, post(path, v.to_string())).await
}

pub async fn get(app: &Router, path: &str) -> Resp {
    send(app, Request::get(path).body(Body::empty()).unwrap()).await
}

/// Assert an OpenAI error envelope with all four keys, and the request id header.
pub fn assert_error(
    r: &Resp,
    status: u16,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Value {
    assert_eq!(r.status.as_u16(), status, "body: {}", r.text());
    assert!(
        r.headers.get("x-request-id").is_some(),
        "x-request-id missing on error"
    );
    let v = r.json();
    let e = v["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object: {v}"));
    let mut keys: Vec<_> = e.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["code", "message", "param", "type"], "{v}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(e["type"], kind, "{v}");
    assert_eq!(e["param"].as_str(), param, "{v}");
    assert_eq!(e["code"].as_str(), code, "{v}");
    assert!(e["code"].is_string() || e["code"].is_null());
    v
}

pub fn chat_body(extra: Value) -> Value {
    let mut v =
        serde_json::json!({"model": "fake-model", "messages": [{"role": "user", "content": "Hi"}]});
    if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in x {
            o.insert(k.clone(), val.clone());
        }
    }
    v
}

pub fn completion_body(extra: Value) -> Value {
    let mut v = serde_json::json!({"model": "fake-model", "prompt": "Say"});
    if let (Some(o), Some(x)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in x {
            o.insert(k.clone(), val.clone());
        }
    }
    v
}
