//! Tests of the Q4_0 kernels (shared checks in `test_util.rs`): scalar against candle's own
//! Q4_0 x Q8_0 matmul, SIMD against scalar, batch independence.

use candle_core::quantized::GgmlDType;

use super::super::q8_0::block_scale;
use super::super::test_util::{self, randoms};
use super::*;

#[test]
fn scalar_matches_candle_qmatmul() {
    // Same activation quantization and integer sums as candle: only the float summation order
    // differs.
    test_util::check_scalar_against_candle::<Q4_0>(1e-5);
}

#[test]
fn simd_paths_match_scalar() {
    test_util::check_simd_against_scalar::<Q4_0>();
}

#[test]
fn rows_are_bit_identical_alone_or_batched() {
    test_util::check_rows_independent_of_batch::<Q4_0>();
}

#[test]
fn bad_inputs_are_errors() {
    test_util::check_bad_inputs::<Q4_0>(GgmlDType::Q8_0);
}

#[test]
fn scalar_dot_matches_dequantized_f64() {
    // Independent of candle's kernels: dequantize both operands (nibble order: low nibbles are
    // elements 0..16, high 16..32) and sum in f64.
    let (rows, cols) = (6, 128);
    let nb = cols / QK;
    let q = test_util::random_matrix(GgmlDType::Q4_0, rows, cols, 3);
    let x = randoms(cols, 4);
    let y = Q4_0Matrix::new(q.clone())
        .unwrap()
        .matmul_with(Isa::Scalar, &x, 1)
        .unwrap();
    let data = q.data().unwrap();
    let a = quantize_q8_0(&x, 1, nb);
    for (r, yr) in y.iter().enumerate() {
        let mut want = 0f64;
        for (b, wb) in data[r * nb * BLOCK_BYTES..]
            .chunks_exact(BLOCK_BYTES)
            .take(nb)
            .enumerate()
        {
            let d = block_scale(wb) as f64;
            for j in 0..QK {
                let byte = wb[2 + j % 16];
                let nib = if j < 16 { byte & 0x0F } else { byte >> 4 };
                let w = (nib as f64 - 8.0) * d;
                want += w * (a.qs[b * QK + j] as f64 * a.d[b] as f64);
            }
        }
        assert!(
            (*yr as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
            "row {r}: {yr} vs {want}"
        );
    }
}

/// Timing, not correctness:
/// `CANDLE_NUM_THREADS=1 cargo test --release -p ai-sandbox-engine --lib bench_q4_0 -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_q4_0_matmul() {
    test_util::bench::<Q4_0>(1536, 576, &[1, 8], 200);
}
