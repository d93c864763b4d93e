//! /v1/completions over the fake backend: prompt forms, echo, defaults, legacy logprobs, streaming.

mod common;

use ai_sandbox_api::backend::testing::FakeConfig;
use common::*;
use serde_json::{json, Value};

const COMP: &str = "/v1/completions";

#[tokio::test]
async fn sync_shape_and_default_max_tokens() {
    let (fake, app) = fake_app(FakeConfig::default());
    let r = post_json(&app, COMP, completion_body(json!({}))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "fake-model");
    let c = &v["choices"][0];
    assert_eq!(c["text"], "Hello, world!");
    assert_eq!(c["index"], 0);
    assert_eq!(c["finish_reason"], "stop");
    assert!(c.as_object().unwrap().contains_key("logprobs") && c["logprobs"].is_null());
    assert_eq!(v["usage"]["prompt_tokens"], 4); // BOS + "Say"
    assert_eq!(v["usage"]["total_tokens"], 8);
    assert!(v["timings"]["predicted_per_token_ms"].is_number());
    let g = fake.last_request().unwrap();
    assert_eq!(g.max_tokens, 16, "the spec's default");
    assert_eq!(
        g.prompt,
        vec![1, b'S' as u32 + 3, b'a' as u32 + 3, b'y' as u32 + 3]
    );
    // Default clamped to the room left in the context (ctx 64).
    post_json(
        &app,
        COMP,
        completion_body(json!({"prompt": "y".repeat(55)})),
    )
    .await;
    assert_eq!(fake.last_request().unwrap().max_tokens, 64 - 56);
}

#[tokio::test]
async fn prompt_forms_and_echo() {
    let (fake, app) = fake_app(FakeConfig::default());
    let r = post_json(
        &app,
        COMP,
        completion_body(json!({"prompt": ["One"], "echo": true})),
    )
    .await;
    assert_eq!(r.json()["choices"][0]["text"], "OneHello, world!");
    let ids = json!([1, 75, 107]); // BOS "H" "h"
    let r = post_json(
        &app,
        COMP,
        completion_body(json!({"prompt": ids, "echo": true, "max_tokens": 1})),
    )
    .await;
    assert_eq!(r.json()["choices"][0]["text"], "HhHello");
    assert_eq!(r.json()["choices"][0]["finish_reason"], "length");
    assert_eq!(fake.last_request().unwrap().prompt, vec![1, 75, 107]);
    post_json(&app, COMP, completion_body(json!({"prompt": [[5, 6]]}))).await;
    assert_eq!(fake.last_request().unwrap().prompt, vec![5, 6]);
    // max_tokens 0 with echo: the prompt back, nothing generated, nothing queued.
    let before = fake.log.lock().unwrap().requests.len();
    let r = post_json(
        &app,
        COMP,
        completion_body(json!({"prompt": "Hi", "echo": true, "max_tokens": 0})),
    )
    .await;
    let v = r.json();
    assert_eq!(v["choices"][0]["text"], "Hi");
    assert_eq!(v["usage"]["completion_tokens"], 0);
    assert_eq!(fake.log.lock().unwrap().requests.len(), before);
}

#[tokio::test]
async fn parameters_map_into_the_request() {
    let (fake, app) = fake_app(FakeConfig::default());
    let body = completion_body(json!({
        "max_tokens": 7, "temperature": 0, "top_p": 0.5, "seed": 3, "stop": "\n", "logit_bias": {"9": 5},
        "frequency_penalty": 1, "presence_penalty": 1, "logprobs": 2, "user": "x", "best_of": 1, "n": 1, "suffix": ""
    }));
    let r = post_json(&app, COMP, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let g = fake.last_request().unwrap();
    assert_eq!(g.max_tokens, 7);
    assert_eq!(g.sampling.temperature, 0.0);
    assert_eq!(g.sampling.top_p, 0.5);
    assert_eq!(g.sampling.seed, Some(3));
    assert_eq!(g.stop, vec!["\n".to_string()]);
    assert_eq!(g.sampling.logit_bias[&9], 5.0);
    assert_eq!(
        (g.sampling.frequency_penalty, g.sampling.presence_penalty),
        (1.0, 1.0)
    );
    assert_eq!(g.logprobs, Some(2));
}

#[tokio::test]
async fn rejected_requests() {
    let (fake, app) = fake_app(FakeConfig::default());
    let cases: Vec<(Value, &str)> = vec![
        (json!({"suffix": "end"}), "suffix"),
        (json!({"best_of": 2}), "best_of"),
        (json!({"n": 3}), "n"),
        (json!({"logprobs": 6}), "logprobs"),
        (json!({"logprobs": -1}), "logprobs"),
        (json!({"logprobs": 1, "echo": true}), "logprobs"),
        (json!({"prompt": ["a", "b"]}), "prompt"),
        (json!({"prompt": [[1], [2]]}), "prompt"),
        (json!({"prompt": [300]}), "prompt"),
        (json!({"prompt": []}), "prompt"),
        (json!({"prompt": null}), "prompt"),
        (json!({"prompt": {"text": "x"}}), "prompt"),
        (
            json!({"stream_options": {"include_usage": true}}),
            "stream_options",
        ),
        (json!({"temperature": -1}), "temperature"),
        (json!({"max_tokens": -3}), "max_tokens"),
    ];
    for (extra, param) in cases {
        let r = post_json(&app, COMP, completion_body(extra.clone())).await;
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
        COMP,
        completion_body(json!({"prompt": "x".repeat(70)})),
    )
    .await;
    assert_error(
        &r,
        400,
        "invalid_request_error",
        Some("prompt"),
        Some("context_length_exceeded"),
    );
    let r = post_json(&app, COMP, completion_body(json!({"max_tokens": 61}))).await;
    let v = assert_error(
        &r,
        400,
        "invalid_request_error",
        Some("prompt"),
        Some("context_length_exceeded"),
    );
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("(4 in the prompt, 61 in the completion)"));
    assert!(fake.last_request().is_none());
}

#[tokio::test]
async fn legacy_logprobs_shape() {
    let (_fake, app) = fake_app(FakeConfig::default());
    let v = post_json(&app, COMP, completion_body(json!({"logprobs": 2})))
        .await
        .json();
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"], json!(["Hello", ",", " world", "!"]));
    assert_eq!(lp["token_logprobs"], json!([-0.5, -0.5, -0.5, -0.5]));
    assert_eq!(lp["text_offset"], json!([0, 5, 6, 12]));
    assert_eq!(lp["top_logprobs"][0], json!({"t0": -0.25, "t1": -1.25}));
    let v = post_json(&app, COMP, completion_body(json!({"logprobs": 0})))
        .await
        .json();
    assert_eq!(
        v["choices"][0]["logprobs"]["top_logprobs"],
        json!([{}, {}, {}, {}])
    );
}

#[tokio::test]
async fn stream_with_usage_and_echo() {
    let (_fake, app) = fake_app(FakeConfig::default());
    let body = completion_body(
        json!({"stream": true, "echo": true, "stream_options": {"include_usage": true}}),
    );
    let r = post_json(&app, COMP, body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers["content-type"], "text/event-stream");
    let ev = r.sse();
    assert_eq!(ev.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    // echo, 4 deltas, finish, usage
    assert_eq!(chunks.len(), 7);
    let id = &chunks[0]["id"];
    let mut text = String::new();
    for c in &chunks[..6] {
        assert_eq!(&c["id"], id);
        assert_eq!(c["object"], "text_completion");
        assert!(c["usage"].is_null() && c.as_object().unwrap().contains_key("usage"));
        text.push_str(c["choices"][0]["text"].as_str().unwrap());
    }
    assert_eq!(text, "SayHello, world!");
    let finishes: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .map(|ch| &ch["finish_reason"])
        .collect();
    assert_eq!(finishes.iter().filter(|f| !f.is_null()).count(), 1);
    assert_eq!(chunks[5]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[6]["choices"], json!([]));
    assert_eq!(chunks[6]["usage"]["completion_tokens"], 4);
}
