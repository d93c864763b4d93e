//! The SmolLM2 reference checks of tests/model_reference.rs with the KV cache in f16 (the
//! server's default `--kv-cache-dtype`): keys and values rounded to 11 significant bits must stay
//! within the tolerances the 8-bit activations already need.

mod model_common;

use model_common::*;

/// tests/model_reference.rs's tolerances, unchanged.
const TOL: Tol = Tol {
    max: 2.5,
    mean: 0.6,
    tie: 0.25,
};

fn f16_kv() {
    KV_F16.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[test]
fn smollm2_f16_kv_whole_prompt_matches_reference() {
    f16_kv();
    smollm2_whole_prompt(TOL);
}

#[test]
fn smollm2_f16_kv_split_prompt_reuses_cache() {
    f16_kv();
    smollm2_split_prompt(TOL);
}

#[test]
fn smollm2_f16_kv_one_token_at_a_time() {
    f16_kv();
    smollm2_decode(TOL);
}
