//! The SmolLM2 reference checks with `LoadOptions::requantize_to_q8_0` (Q4_1 matrices turned
//! into Q8_0 at load, ~4x faster decode on CPU).

mod model_common;

use model_common::*;

/// The second rounding (Q4_1 values onto Q8_0's grid) plus Q8_0 activations roughly doubles the
/// noise of tests/model_reference.rs: measured max |diff| 0.63-2.51 and mean 0.11-0.88 over the
/// prompt's positions (vs 0.35-1.14 / 0.06-0.32 as stored). Tolerances sit ~40% above that;
/// the greedy token must still match except for the reference's 0.08 near-tie at position 8.
const TOL: Tol = Tol {
    max: 3.5,
    mean: 1.2,
    tie: 0.25,
};

fn requantize() {
    REQUANTIZE.store(true, std::sync::atomic::Ordering::Relaxed);
}

#[test]
fn smollm2_q8_0_whole_prompt_matches_reference() {
    requantize();
    smollm2_whole_prompt(TOL);
}

#[test]
fn smollm2_q8_0_split_prompt_reuses_cache() {
    requantize();
    smollm2_split_prompt(TOL);
}

#[test]
fn smollm2_q8_0_one_token_at_a_time() {
    requantize();
    smollm2_decode(TOL);
}
