//! Single-stream decode speed on SmolLM2 (ignored by default: timing, not correctness).
//! Run with the thread count fixed for every candle pool, e.g.
//! `CANDLE_NUM_THREADS=2 RAYON_NUM_THREADS=2 cargo test -p ai-sandbox-engine --test model_speed -- --ignored --nocapture`
//! (`REQUANTIZE=1` loads with `requantize_to_q8_0`).

mod model_common;

use std::time::Instant;

use ai_sandbox_engine::gguf::GgufFile;
use ai_sandbox_engine::model::{LoadOptions, Model};
use model_common::*;

#[test]
#[ignore]
fn smollm2_decode_speed() {
    let requantize = std::env::var("REQUANTIZE").is_ok_and(|v| v == "1");
    let options = LoadOptions {
        requantize_to_q8_0: requantize,
        ..Default::default()
    };
    let mut m = Model::load_with(
        &mut GgufFile::open(&smollm2_path()).unwrap(),
        Some(1024),
        &options,
    )
    .unwrap();
    let t0 = Instant::now();
    let mut logits = m.forward(&PROMPT, 0).unwrap();
    let prompt_ms = t0.elapsed().as_secs_f64() * 1e3;
    let n = 128;
    let t0 = Instant::now();
    for i in 0..n {
        let tok = argmax(&logits) as u32;
        logits = m.forward(&[tok], PROMPT.len() + i).unwrap();
    }
    let s = t0.elapsed().as_secs_f64();
    eprintln!(
        "threads {:?}, requantize {requantize}: prompt {} tokens in {prompt_ms:.1} ms; decode {n} tokens in {:.2} s = {:.1} tok/s",
        std::env::var("CANDLE_NUM_THREADS").ok(),
        PROMPT.len(),
        s,
        n as f64 / s
    );
    assert!(logits.iter().all(|x| x.is_finite()));
}
