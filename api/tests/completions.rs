//! /v1/completions over the fake backend: prompt forms, echo, defaults, legacy logprobs, streaming,
//! several prompts in one request.

mod common;

use ai_sandbox_api::backend::testing::{FakeBackend, FakeConfig};
use ai_sandbox_engine::GenerateRequest;
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
    let before = requests(&fake).len();
    let r = post_json(
        &app,
        COMP,
        completion_body(json!({"prompt": "Hi", "echo": true, "max_tokens": 0})),
    )
    .await;
    let v = r.json();
    assert_eq!(v["choices"][0]["text"], "Hi");
    assert_eq!(v["usage"]["completion_tokens"], 0);
    assert_eq!(requests(&fake).len(), before);
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
        (json!({"prompt": ["a", 7]}), "prompt"),
        (json!({"prompt": [[1], []]}), "prompt"),
        (json!({"prompt": [[1], [300]]}), "prompt"),
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

/// The chunks of an SSE body, without the closing `[DONE]` (asserted).
fn stream_chunks(r: &Resp) -> Vec<Value> {
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = r.sse();
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(ev.iter().filter(|e| *e == "[DONE]").count(), 1);
    ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}

/// The generations the fake was asked for, in order.
fn requests(fake: &FakeBackend) -> Vec<GenerateRequest> {
    fake.log.lock().unwrap().requests.clone()
}

fn fake_ids(text: &str) -> Vec<u32> {
    std::iter::once(1)
        .chain(text.bytes().map(|b| b as u32 + 3))
        .collect()
}

#[tokio::test]
async fn several_prompts_sync() {
    let (fake, app) = fake_app(FakeConfig::default());
    let body = completion_body(json!({"prompt": ["One", "Two two", "3"], "echo": true}));
    let r = post_json(&app, COMP, body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let choices = v["choices"].as_array().unwrap();
    let got: Vec<(u64, &str, &str)> = choices
        .iter()
        .map(|c| {
            (
                c["index"].as_u64().unwrap(),
                c["text"].as_str().unwrap(),
                c["finish_reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (0, "OneHello, world!", "stop"),
            (1, "Two twoHello, world!", "stop"),
            (2, "3Hello, world!", "stop"),
        ]
    );
    // BOS + bytes per prompt: 4 + 8 + 2 prompt tokens; 4 generated tokens each.
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 14, "completion_tokens": 12, "total_tokens": 26, "prompt_tokens_details": {"cached_tokens": 0}})
    );
    assert_eq!(v["timings"]["prompt_n"], 14);
    assert_eq!(v["timings"]["predicted_n"], 12);
    assert_eq!(v["timings"]["predicted_ms"], 24.0);
    // Each prompt was its own generation, in order, with the request's parameters.
    let reqs = requests(&fake);
    let prompts: Vec<&Vec<u32>> = reqs.iter().map(|g| &g.prompt).collect();
    assert_eq!(
        prompts,
        [&fake_ids("One"), &fake_ids("Two two"), &fake_ids("3")]
    );
    assert!(reqs.iter().all(|g| g.max_tokens == 16));
    assert_eq!(fake.completed(), 3);

    // Token-id lists, each with its own budget: the default 16 clamped to the context (64).
    let long: Vec<u32> = vec![70; 60];
    let body = completion_body(json!({"prompt": [[5, 6], long]}));
    let v = post_json(&app, COMP, body).await.json();
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["text"], "Hello, world!");
    assert_eq!(v["choices"][1]["index"], 1);
    assert_eq!(v["choices"][1]["text"], "Hello, world!");
    assert_eq!(v["choices"][1]["finish_reason"], "stop");
    let log = fake.log.lock().unwrap();
    let n = log.requests.len();
    assert_eq!(log.requests[n - 2].prompt, vec![5, 6]);
    assert_eq!(log.requests[n - 2].max_tokens, 16);
    assert_eq!(log.requests[n - 1].prompt, long);
    assert_eq!(log.requests[n - 1].max_tokens, 4);
}

#[tokio::test]
async fn several_prompts_logprobs_restart_offsets_per_choice() {
    let (_fake, app) = fake_app(FakeConfig::default());
    let body = completion_body(json!({"prompt": ["A", "B"], "logprobs": 1, "max_tokens": 2}));
    let v = post_json(&app, COMP, body).await.json();
    for (i, c) in v["choices"].as_array().unwrap().iter().enumerate() {
        assert_eq!(c["index"], i);
        assert_eq!(c["text"], "Hello,");
        assert_eq!(c["finish_reason"], "length");
        assert_eq!(c["logprobs"]["tokens"], json!(["Hello", ","]));
        assert_eq!(c["logprobs"]["text_offset"], json!([0, 5]));
    }
    assert_eq!(v["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn several_prompts_stream() {
    let (fake, app) = fake_app(FakeConfig::default());
    let body = completion_body(json!({
        "prompt": ["One", "Two", "Six"], "stream": true, "echo": true, "max_tokens": 3,
        "stream_options": {"include_usage": true}
    }));
    let chunks = stream_chunks(&post_json(&app, COMP, body).await);
    let id = &chunks[0]["id"];
    assert!(chunks.iter().all(|c| &c["id"] == id));
    // Per prompt: echo, 3 deltas, finish; then one usage chunk.
    assert_eq!(chunks.len(), 3 * 5 + 1);
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"],
        json!({"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21, "prompt_tokens_details": {"cached_tokens": 0}})
    );
    assert_eq!(usage_chunk["timings"]["predicted_n"], 9);
    let mut texts = vec![String::new(); 3];
    let mut finishes: Vec<(u64, String)> = vec![];
    let mut order = vec![];
    for c in rest {
        assert!(c["usage"].is_null(), "usage before the end: {c}");
        let ch = c["choices"].as_array().unwrap();
        assert_eq!(ch.len(), 1, "{c}");
        let i = ch[0]["index"].as_u64().unwrap();
        order.push(i);
        texts[i as usize].push_str(ch[0]["text"].as_str().unwrap());
        if let Some(f) = ch[0]["finish_reason"].as_str() {
            finishes.push((i, f.to_string()));
        }
    }
    // The prompts run one after another: indices never go back.
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
    assert_eq!(
        texts,
        ["OneHello, world", "TwoHello, world", "SixHello, world"]
    );
    assert_eq!(
        finishes,
        [
            (0, "length".to_string()),
            (1, "length".to_string()),
            (2, "length".to_string())
        ]
    );
    let reqs = requests(&fake);
    let prompts: Vec<&Vec<u32>> = reqs.iter().map(|g| &g.prompt).collect();
    assert_eq!(
        prompts,
        [&fake_ids("One"), &fake_ids("Two"), &fake_ids("Six")]
    );

    // Without include_usage: no usage chunk, and the finish chunks' usage is null.
    let body = completion_body(json!({"prompt": [[5], [6]], "stream": true, "max_tokens": 1}));
    let chunks = stream_chunks(&post_json(&app, COMP, body).await);
    let shape: Vec<(u64, Option<&str>)> = chunks
        .iter()
        .map(|c| {
            assert!(!c.as_object().unwrap().contains_key("usage"), "{c}");
            let ch = &c["choices"][0];
            (ch["index"].as_u64().unwrap(), ch["finish_reason"].as_str())
        })
        .collect();
    assert_eq!(
        shape,
        [
            (0, None),
            (0, Some("length")),
            (1, None),
            (1, Some("length"))
        ]
    );
}

#[tokio::test]
async fn too_many_or_too_long_prompts_are_400s() {
    let (fake, app) = fake_app(FakeConfig::default());
    let seventeen: Vec<String> = (0..17).map(|i| format!("p{i}")).collect();
    for prompt in [json!(seventeen), json!(vec![vec![5u32]; 17])] {
        for stream in [false, true] {
            let body = completion_body(json!({"prompt": prompt, "stream": stream}));
            let r = post_json(&app, COMP, body).await;
            let v = assert_error(&r, 400, "invalid_request_error", Some("prompt"), None);
            assert!(
                v["error"]["message"].as_str().unwrap().contains("16"),
                "{v}"
            );
        }
    }
    // 16 is fine.
    let sixteen: Vec<&str> = vec!["x"; 16];
    let r = post_json(
        &app,
        COMP,
        completion_body(json!({"prompt": sixteen, "max_tokens": 1})),
    )
    .await;
    assert_eq!(r.json()["choices"].as_array().unwrap().len(), 16);
    assert_eq!(requests(&fake).len(), 16);
    // The context is checked for each prompt before any generation starts.
    for stream in [false, true] {
        let body = completion_body(json!({"prompt": ["short", "y".repeat(70)], "stream": stream}));
        let r = post_json(&app, COMP, body).await;
        let v = assert_error(
            &r,
            400,
            "invalid_request_error",
            Some("prompt"),
            Some("context_length_exceeded"),
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("prompt[1]: "),
            "{v}"
        );
    }
    assert_eq!(requests(&fake).len(), 16);
    let r = post_json(
        &app,
        COMP,
        completion_body(json!({"prompt": ["a", "b"], "n": 2})),
    )
    .await;
    assert_error(&r, 400, "invalid_request_error", Some("n"), None);
}

fn slow() -> FakeConfig {
    FakeConfig {
        delay: std::time::Duration::from_millis(30),
        script: vec!["tok".into(); 200],
        ctx_size: 1000,
        ..Default::default()
    }
}

#[tokio::test]
async fn dropping_a_several_prompt_stream_cancels_and_starts_nothing_more() {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let (fake, app) = fake_app(slow());
    let body = completion_body(json!({"prompt": ["a", "b", "c"], "stream": true}));
    let resp = app.oneshot(post(COMP, body.to_string())).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("tok"));
    drop(body);
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    assert_eq!(fake.cancelled(), 1);
    assert_eq!(fake.completed(), 0);
    assert_eq!(requests(&fake).len(), 1);
}

#[tokio::test]
async fn dropping_a_several_prompt_sync_request_cancels() {
    use std::time::Duration;
    use tower::ServiceExt;
    let cfg = FakeConfig {
        script: vec!["tok".into(); 8],
        ..slow()
    };
    let (fake, app) = fake_app(cfg);
    let body = completion_body(json!({"prompt": ["a", "b", "c"]}));
    let task = tokio::spawn(app.oneshot(post(COMP, body.to_string())));
    // Wait until the first prompt (8 x 30 ms) has finished and the second one runs, then
    // drop the request as a disconnecting client would.
    let mut waited = 0;
    while fake.completed() < 1 || requests(&fake).len() < 2 {
        assert!(waited < 5000, "the second prompt never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
        waited += 5;
    }
    task.abort();
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(fake.completed(), 1);
    assert_eq!(fake.cancelled(), 1);
    assert_eq!(requests(&fake).len(), 2);
}
