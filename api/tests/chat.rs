//! /v1/chat/completions over the fake backend: shapes, parameter mapping, every 400, streaming.

mod common;

use std::time::Duration;

use ai_sandbox_api::backend::testing::FakeConfig;
use ai_sandbox_engine::EngineError;
use common::*;
use serde_json::{json, Value};

const CHAT: &str = "/v1/chat/completions";

#[tokio::test]
async fn sync_response_shape() {
    let (_fake, app) = fake_app(FakeConfig::default());
    let r = post_json(&app, CHAT, chat_body(json!({}))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.headers["x-request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "fake-model");
    let c = &v["choices"][0];
    assert_eq!(c["index"], 0);
    assert_eq!(
        c["message"],
        json!({"role": "assistant", "content": "Hello, world!", "refusal": null})
    );
    assert!(c.as_object().unwrap().contains_key("logprobs") && c["logprobs"].is_null());
    assert_eq!(c["finish_reason"], "stop");
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(v["usage"]["total_tokens"], prompt_tokens + 4);
    for k in [
        "prompt_n",
        "prompt_ms",
        "prompt_per_token_ms",
        "prompt_per_second",
        "predicted_n",
        "predicted_ms",
        "predicted_per_token_ms",
        "predicted_per_second",
    ] {
        assert!(v["timings"][k].is_number(), "timings.{k} missing: {v}");
    }
    assert_eq!(v["timings"]["predicted_n"], 4);
    assert_eq!(v["timings"]["predicted_per_second"], 500.0);
}

#[tokio::test]
async fn every_parameter_maps_into_the_generate_request() {
    let (fake, app) = fake_app(FakeConfig::default());
    let body = chat_body(json!({
        "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1,
        "seed": 42, "frequency_penalty": 0.5, "presence_penalty": -0.5, "logit_bias": {"7": -100, "8": 25},
        "stop": ["\n\n", "END"], "max_tokens": 20, "logprobs": true, "top_logprobs": 3,
        "user": "u1", "metadata": {"a": "b"}, "store": false, "service_tier": "auto",
        "parallel_tool_calls": true, "safety_identifier": "s", "prompt_cache_key": "k",
        "tools": [], "tool_choice": "none", "response_format": {"type": "text"}, "n": 1, "modalities": ["text"]
    }));
    let r = post_json(&app, CHAT, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let g = fake.last_request().unwrap();
    let s = &g.sampling;
    assert_eq!(
        (s.temperature, s.top_p, s.top_k, s.min_p),
        (0.5, 0.9, 40, 0.05)
    );
    assert_eq!(s.repetition_penalty, 1.1);
    assert_eq!(s.seed, Some(42));
    assert_eq!((s.frequency_penalty, s.presence_penalty), (0.5, -0.5));
    assert_eq!(s.logit_bias.len(), 2);
    assert_eq!(s.logit_bias[&7], -100.0);
    assert_eq!(s.logit_bias[&8], 25.0);
    assert_eq!(g.stop, vec!["\n\n".to_string(), "END".to_string()]);
    assert_eq!(g.max_tokens, 20);
    assert_eq!(g.logprobs, Some(3));
    // The fake's prompt: BOS + bytes of "user: Hi\nassistant:".
    assert_eq!(g.prompt.len(), 1 + "user: Hi\nassistant:".len());
}

#[tokio::test]
async fn defaults_and_max_tokens_precedence() {
    let (fake, app) = fake_app(FakeConfig::default());
    post_json(&app, CHAT, chat_body(json!({"stop": "x"}))).await;
    let g = fake.last_request().unwrap();
    assert_eq!(g.sampling, ai_sandbox_engine::SamplingParams::default());
    assert_eq!(g.stop, vec!["x".to_string()]);
    assert_eq!(g.logprobs, None);
    // Absent max_tokens: the rest of the context (ctx 64).
    assert_eq!(g.max_tokens, 64 - g.prompt.len());
    post_json(
        &app,
        CHAT,
        chat_body(json!({"max_tokens": 5, "max_completion_tokens": 2})),
    )
    .await;
    assert_eq!(fake.last_request().unwrap().max_tokens, 2);
    post_json(&app, CHAT, chat_body(json!({"max_completion_tokens": 3}))).await;
    assert_eq!(fake.last_request().unwrap().max_tokens, 3);
    let r = post_json(&app, CHAT, chat_body(json!({"max_tokens": 2}))).await;
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello,");
}

#[tokio::test]
async fn messages_are_flattened() {
    let (fake, app) = fake_app(FakeConfig {
        ctx_size: 1000,
        ..Default::default()
    });
    let body = json!({"model": "fake-model", "messages": [
        {"role": "developer", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "A"}, {"type": "text", "text": "B"}]},
        {"role": "user", "content": "Hi", "name": "bob"},
        {"role": "assistant", "content": null},
        {"role": "user", "content": [{"type": "text", "text": "again"}]}
    ]});
    let r = post_json(&app, CHAT, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = fake.last_messages().unwrap();
    let got: Vec<(&str, &str)> = m
        .iter()
        .map(|m| (m.role.as_str(), m.content.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("system", "Be brief."),
            ("system", "A\nB"),
            ("user", "Hi"),
            ("assistant", ""),
            ("user", "again")
        ]
    );
}

#[tokio::test]
async fn invalid_and_unsupported_requests_are_400_naming_the_param() {
    let (fake, app) = fake_app(FakeConfig::default());
    let img = json!([{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]);
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}),
            "messages[1].content[0]",
        ),
        (
            json!({"messages": [{"role": "user", "content": img}]}),
            "messages[0].content[1]",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]}),
            "messages[0].content[0]",
        ),
        (
            json!({"messages": [{"role": "tool", "content": "r", "tool_call_id": "c"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "function", "content": "r", "name": "f"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "wizard", "content": "r"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "user"}]}),
            "messages[0].content",
        ),
        (
            json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "1"}]}]}),
            "messages[0].tool_calls",
        ),
        (json!({"messages": []}), "messages"),
        (json!({"messages": null}), "messages"),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
        ),
        (json!({"tool_choice": "auto"}), "tool_choice"),
        (json!({"functions": [{"name": "f"}]}), "functions"),
        (json!({"function_call": "auto"}), "function_call"),
        (json!({"n": 2}), "n"),
        (
            json!({"response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
            "response_format",
        ),
        (
            json!({"audio": {"voice": "alloy", "format": "mp3"}}),
            "audio",
        ),
        (json!({"modalities": ["text", "audio"]}), "modalities"),
        (
            json!({"prediction": {"type": "content", "content": "x"}}),
            "prediction",
        ),
        (json!({"web_search_options": {}}), "web_search_options"),
        (
            json!({"stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (
            json!({"stream": false, "stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (json!({"top_logprobs": 2}), "top_logprobs"),
        (
            json!({"logprobs": false, "top_logprobs": 2}),
            "top_logprobs",
        ),
        (
            json!({"logprobs": true, "top_logprobs": 21}),
            "top_logprobs",
        ),
        (json!({"temperature": 2.5}), "temperature"),
        (json!({"temperature": "hot"}), "temperature"),
        (json!({"top_p": 1.5}), "top_p"),
        (json!({"top_k": -5}), "top_k"),
        (json!({"min_p": 2}), "min_p"),
        (json!({"repetition_penalty": 0}), "repetition_penalty"),
        (json!({"frequency_penalty": 2.5}), "frequency_penalty"),
        (json!({"presence_penalty": -3}), "presence_penalty"),
        (json!({"logit_bias": {"300": 1}}), "logit_bias"),
        (json!({"logit_bias": {"abc": 1}}), "logit_bias"),
        (json!({"logit_bias": {"5": 101}}), "logit_bias"),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (json!({"stop": 5}), "stop"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_tokens": -1}), "max_tokens"),
        (json!({"max_completion_tokens": 0}), "max_completion_tokens"),
        (json!({"seed": 1.5}), "seed"),
        (json!({"stream": "yes"}), "stream"),
    ];
    for (extra, param) in cases {
        let r = post_json(&app, CHAT, chat_body(extra.clone())).await;
        assert_eq!(r.status, 400, "{extra} -> {}", r.text());
        assert_error(
            &r,
            400,
            "invalid_request_error",
            Some(param),
            r.json()["error"]["code"].as_str(),
        );
    }
    let r = post_json(
        &app,
        CHAT,
        json!({"messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_error(&r, 400, "invalid_request_error", Some("model"), None);
    assert!(
        fake.last_request().is_none(),
        "nothing may reach the engine"
    );
}

#[tokio::test]
async fn bad_bodies_get_json_errors() {
    let (_fake, app) = fake_app(FakeConfig::default());
    for body in [
        "{not json",
        "",
        "[1,2]",
        "\"s\"",
        "{\"model\": \"fake-model\", \"messages\": [}",
    ] {
        let r = send(&app, post(CHAT, body)).await;
        let v = assert_error(&r, 400, "invalid_request_error", None, None);
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    // No content-type at all still parses (curl -d without -H).
    let req = axum::http::Request::post(CHAT)
        .body(axum::body::Body::from(chat_body(json!({})).to_string()))
        .unwrap();
    assert_eq!(send(&app, req).await.status, 200);
}

#[tokio::test]
async fn model_ids() {
    let (_fake, app) = fake_app(FakeConfig::default());
    let r = post_json(&app, CHAT, chat_body(json!({"model": "gpt-4o"}))).await;
    assert_error(
        &r,
        404,
        "invalid_request_error",
        Some("model"),
        Some("model_not_found"),
    );
    for ok in ["fake-model.Q4_1.gguf", "fake-model.Q4_1"] {
        let r = post_json(&app, CHAT, chat_body(json!({"model": ok}))).await;
        assert_eq!(r.status, 200, "{ok}");
        assert_eq!(r.json()["model"], "fake-model");
    }
    let (_f, app) = fake_app_with(
        FakeConfig::default(),
        ai_sandbox_api::ServerOptions {
            served_model_name: Some("org/name".into()),
            api_key: None,
        },
    );
    let r = post_json(&app, CHAT, chat_body(json!({"model": "org/name"}))).await;
    assert_eq!(r.json()["model"], "org/name");
}

#[tokio::test]
async fn context_length_errors() {
    let (fake, app) = fake_app(FakeConfig::default());
    let long = "x".repeat(100);
    let r = post_json(
        &app,
        CHAT,
        chat_body(json!({"messages": [{"role": "user", "content": long}]})),
    )
    .await;
    let v = assert_error(
        &r,
        400,
        "invalid_request_error",
        Some("messages"),
        Some("context_length_exceeded"),
    );
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum context length is 64 tokens"));
    // Prompt is 1 + 19 = 20 tokens; 20 + 50 > 64.
    let r = post_json(&app, CHAT, chat_body(json!({"max_tokens": 50}))).await;
    let v = assert_error(
        &r,
        400,
        "invalid_request_error",
        Some("messages"),
        Some("context_length_exceeded"),
    );
    let m = v["error"]["message"].as_str().unwrap();
    assert!(
        m.contains("However, you requested 70 tokens (20 in the messages, 50 in the completion)"),
        "{m}"
    );
    assert!(fake.last_request().is_none());
    let r = post_json(&app, CHAT, chat_body(json!({"max_tokens": 44}))).await;
    assert_eq!(r.status, 200);
    let r = post_json(&app, CHAT, chat_body(json!({"max_tokens": 45}))).await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn logprobs_shapes() {
    let (_fake, app) = fake_app(FakeConfig::default());
    let v = post_json(&app, CHAT, chat_body(json!({"logprobs": true})))
        .await
        .json();
    let lp = &v["choices"][0]["logprobs"];
    assert!(lp["refusal"].is_null());
    let content = lp["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    assert_eq!(
        content[0],
        json!({"token": "Hello", "logprob": -0.5, "bytes": [72, 101, 108, 108, 111], "top_logprobs": []})
    );
    let v = post_json(
        &app,
        CHAT,
        chat_body(json!({"logprobs": true, "top_logprobs": 2})),
    )
    .await
    .json();
    let top = &v["choices"][0]["logprobs"]["content"][1]["top_logprobs"];
    assert_eq!(
        top,
        &json!([{"token": "t0", "logprob": -0.25, "bytes": [116, 48]}, {"token": "t1", "logprob": -1.25, "bytes": [116, 49]}])
    );
    let v = post_json(&app, CHAT, chat_body(json!({"logprobs": false})))
        .await
        .json();
    assert!(v["choices"][0]["logprobs"].is_null());
}

fn parse_chunks(events: &[String]) -> Vec<Value> {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

#[tokio::test]
async fn stream_framing_and_order() {
    let (_fake, app) = fake_app(FakeConfig::default());
    let r = post_json(&app, CHAT, chat_body(json!({"stream": true}))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    assert!(r.headers.get("x-request-id").is_some());
    let chunks = parse_chunks(&r.sse());
    assert_eq!(chunks.len(), 6, "{chunks:?}"); // role, 4 deltas, finish
    let (id, created) = (chunks[0]["id"].clone(), chunks[0]["created"].clone());
    let mut text = String::new();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["id"], id);
        assert_eq!(c["created"], created);
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["model"], "fake-model");
        assert!(
            c.get("usage").is_none(),
            "no usage key without include_usage"
        );
        let ch = &c["choices"][0];
        assert_eq!(ch["index"], 0);
        assert_eq!(
            ch["delta"].get("role").is_some(),
            i == 0,
            "role only in the first delta"
        );
        let last = i == chunks.len() - 1;
        assert_eq!(ch["finish_reason"].is_null(), !last);
        assert!(ch.as_object().unwrap().contains_key("finish_reason"));
        text.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
    }
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[5]["choices"][0]["delta"], json!({}));
    assert!(chunks[5]["timings"]["predicted_n"].is_number());
    assert_eq!(text, "Hello, world!");
}

#[tokio::test]
async fn stream_include_usage() {
    let (_fake, app) = fake_app(FakeConfig::default());
    let body = chat_body(
        json!({"stream": true, "stream_options": {"include_usage": true}, "logprobs": true}),
    );
    let chunks = parse_chunks(&post_json(&app, CHAT, body).await.sse());
    assert_eq!(chunks.len(), 7);
    for c in &chunks[..6] {
        assert!(c["usage"].is_null() && c.as_object().unwrap().contains_key("usage"));
        assert_eq!(c["choices"].as_array().unwrap().len(), 1);
    }
    let last = &chunks[6];
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 4);
    assert_eq!(
        last["usage"]["total_tokens"],
        last["usage"]["prompt_tokens"].as_u64().unwrap() + 4
    );
    assert!(last["timings"]["prompt_per_second"].is_number());
    // Logprobs ride on the content chunks.
    assert_eq!(
        chunks[1]["choices"][0]["logprobs"]["content"][0]["token"],
        "Hello"
    );
    assert!(chunks[0]["choices"][0]["logprobs"].is_null());
}

#[tokio::test]
async fn stream_error_after_start_is_an_sse_error_event() {
    let cfg = FakeConfig {
        error_after: Some((2, EngineError::Internal("boom".into()))),
        ..Default::default()
    };
    let (_fake, app) = fake_app(cfg);
    let r = post_json(&app, CHAT, chat_body(json!({"stream": true}))).await;
    assert_eq!(r.status, 200);
    let ev = r.sse();
    assert_ne!(ev.last().unwrap(), "[DONE]");
    let err: Value = serde_json::from_str(ev.last().unwrap()).unwrap();
    assert_eq!(err["error"]["type"], "server_error");
    assert!(err["error"]["message"].as_str().unwrap().contains("boom"));
    assert!(err["error"].as_object().unwrap().contains_key("param"));
    assert!(err["error"].as_object().unwrap().contains_key("code"));
    assert_eq!(ev.len(), 4); // role, 2 deltas, error
}

#[tokio::test]
async fn sync_generation_error_is_500_without_retry() {
    let cfg = FakeConfig {
        error_after: Some((1, EngineError::Internal("nan".into()))),
        ..Default::default()
    };
    let (_fake, app) = fake_app(cfg);
    let r = post_json(&app, CHAT, chat_body(json!({}))).await;
    assert_error(&r, 500, "server_error", None, None);
    assert_eq!(r.headers["x-should-retry"], "false");
}

#[tokio::test]
async fn queue_full_is_429_with_retry_after() {
    let (_fake, app) = fake_app(FakeConfig {
        submit_error: Some(EngineError::QueueFull(64)),
        ..Default::default()
    });
    for stream in [false, true] {
        let r = post_json(&app, CHAT, chat_body(json!({"stream": stream}))).await;
        assert_error(
            &r,
            429,
            "rate_limit_error",
            None,
            Some("rate_limit_exceeded"),
        );
        assert_eq!(r.headers["retry-after"], "1");
    }
}

#[tokio::test]
async fn engine_invalid_input_is_400() {
    let err = EngineError::invalid("template refused the messages", Some("messages"));
    let (_fake, app) = fake_app(FakeConfig {
        submit_error: Some(err),
        ..Default::default()
    });
    let r = post_json(&app, CHAT, chat_body(json!({}))).await;
    assert_error(&r, 400, "invalid_request_error", Some("messages"), None);
}

fn slow() -> FakeConfig {
    FakeConfig {
        delay: Duration::from_millis(30),
        script: vec!["tok".into(); 200],
        ctx_size: 1000,
        ..Default::default()
    }
}

#[tokio::test]
async fn dropping_a_stream_cancels_the_generation() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let (fake, app) = fake_app(slow());
    let resp = app
        .oneshot(post(CHAT, chat_body(json!({"stream": true})).to_string()))
        .await
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("\"role\":\"assistant\""));
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(String::from_utf8_lossy(&second).contains("tok"));
    drop(body);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(fake.cancelled(), 1);
    assert_eq!(fake.completed(), 0);
}

#[tokio::test]
async fn dropping_a_sync_request_cancels_the_generation() {
    use tower::ServiceExt;
    let (fake, app) = fake_app(slow());
    let fut = app.oneshot(post(CHAT, chat_body(json!({})).to_string()));
    assert!(tokio::time::timeout(Duration::from_millis(100), fut)
        .await
        .is_err());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(fake.last_request().is_some());
    assert_eq!(fake.cancelled(), 1);
    assert_eq!(fake.completed(), 0);
}
