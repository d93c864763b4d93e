//! Continuous batching on the real model (SmolLM2): requests generated together give exactly
//! the tokens each gives alone, for mixed prompt lengths and arrival times, and a KV cache too
//! small for all of them at once preempts and recomputes without changing a token.

mod generate_common;

use std::time::Duration;

use ai_sandbox_engine::{Engine, EngineConfig, GenEvent};
use generate_common::*;

const QUESTIONS: &[&str] = &[
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three prime numbers and explain briefly why each of them is prime, in a friendly tone \
     suitable for a child who is just learning about numbers.",
    "Hi",
    "Translate 'good morning' into Spanish, Italian and German.",
];

/// Every question alone on an idle engine: (text, completion token ids via logprobs).
fn alone(e: &Engine, max_tokens: usize) -> Vec<(String, Vec<u32>)> {
    QUESTIONS
        .iter()
        .map(|q| {
            let mut r = request(chat(e, q), greedy(), max_tokens);
            r.logprobs = Some(0);
            let o = run(e, r);
            (o.text(), o.logprobs.iter().map(|l| l.token_id).collect())
        })
        .collect()
}

/// All questions submitted `gap` apart, collected concurrently.
fn together(e: &Engine, max_tokens: usize, gap: Duration) -> Vec<(String, Vec<u32>)> {
    let rxs: Vec<_> = QUESTIONS
        .iter()
        .map(|q| {
            let mut r = request(chat(e, q), greedy(), max_tokens);
            r.logprobs = Some(0);
            let rx = e.submit(r).expect("submit");
            std::thread::sleep(gap);
            rx
        })
        .collect();
    let handles: Vec<_> = rxs
        .into_iter()
        .map(|rx| {
            std::thread::spawn(move || {
                let o = collect(rx).expect("generation");
                (o.text(), o.logprobs.iter().map(|l| l.token_id).collect::<Vec<u32>>())
            })
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

#[test]
fn batched_greedy_tokens_equal_unbatched_for_mixed_lengths_and_arrivals() {
    let e = load(8);
    let want = alone(&e, 24);
    for gap_ms in [0, 40] {
        let got = together(&e, 24, Duration::from_millis(gap_ms));
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.1, w.1, "question {i} (gap {gap_ms} ms): {:?} vs {:?}", g.0, w.0);
        }
    }
}

#[test]
fn a_kv_cache_that_fits_one_context_preempts_and_gives_the_same_tokens() {
    // ctx 256 in 256 tokens of KV (the minimum): five requests can't all hold their blocks.
    let per_token_kb = 46; // SmolLM2: 30 layers * 2 * 3 kv heads * 64 * 4 bytes = 46,080
    let cfg = EngineConfig {
        threads: Some(2),
        ctx_size: Some(256),
        kv_cache_mb: Some((256 * per_token_kb * 1000usize).div_ceil(1 << 20)),
        max_queue: 8,
        ..EngineConfig::new(smollm2_path())
    };
    let e = Engine::load(cfg).expect("load");
    let want = alone(&e, 40);
    let got = together(&e, 40, Duration::ZERO);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.1, w.1, "question {i}: {:?} vs {:?}", g.0, w.0);
    }
    // And the engine keeps serving.
    let mut rx = e.submit(request(chat(&e, "Hi"), greedy(), 2)).unwrap();
    assert!(matches!(rx.blocking_recv(), Some(GenEvent::Delta { .. })));
}
