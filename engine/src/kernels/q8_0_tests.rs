//! Tests of the Q8_0 kernels (shared checks in `test_util.rs`): scalar against candle's own
//! Q8_0 x Q8_0 matmul, SIMD against scalar, batch independence, the activation quantizer.

use candle_core::quantized::GgmlDType;

use super::super::test_util::{self, randoms};
use super::*;

#[test]
fn scalar_matches_candle_qmatmul() {
    // Same activation quantization and integer sums as candle: only the float summation order
    // differs.
    test_util::check_scalar_against_candle::<Q8_0>(1e-5);
}

#[test]
fn simd_paths_match_scalar() {
    test_util::check_simd_against_scalar::<Q8_0>();
}

#[test]
fn rows_are_bit_identical_alone_or_batched() {
    test_util::check_rows_independent_of_batch::<Q8_0>();
}

#[test]
fn bad_inputs_are_errors() {
    test_util::check_bad_inputs::<Q8_0>(GgmlDType::Q4_0);
}

#[test]
fn quantize_q8_0_follows_ggml() {
    let mut x = randoms(96, 5);
    x[3] = -2.54; // the block's amax: d = 0.02, that element quantizes to -127
    x[32..64].iter_mut().for_each(|v| *v = 0.0); // an all-zero block: d = 0, q = 0
    let a = quantize_q8_0(&x, 1, 3);
    assert_eq!((a.l, a.nb, a.qs.len(), a.d.len()), (1, 3, 96, 3));
    assert_eq!(a.qs[3], -127);
    // d is stored f16-rounded; the quants use the reciprocal of the f32 d.
    let d = 2.54f32 / 127.0;
    assert_eq!(a.d[0], half::f16::from_f32(d).to_f32());
    assert_ne!(a.d[0], d, "the stored scale is the f16-rounded one");
    for (j, (q, v)) in a.qs.iter().zip(&x).take(32).enumerate() {
        assert_eq!(*q as f32, (v * (1.0 / d)).round(), "element {j}");
    }
    assert_eq!(a.d[1], 0.0);
    assert!(a.qs[32..64].iter().all(|&q| q == 0));
    // The third block's largest magnitude maps to +-127.
    let amax = crate::kernels::test_util::max_abs(&x[64..]);
    let i = x[64..].iter().position(|v| v.abs() == amax).unwrap();
    assert_eq!(a.qs[64 + i].unsigned_abs(), 127);
}

#[test]
fn scalar_dot_matches_dequantized_f64() {
    // Independent of candle's kernels: dequantize both operands and sum in f64.
    let (rows, cols) = (6, 128);
    let q = test_util::random_matrix(GgmlDType::Q8_0, rows, cols, 3);
    let x = randoms(cols, 4);
    let y = Q8_0Matrix::new(q.clone())
        .unwrap()
        .matmul_with(Isa::Scalar, &x, 1)
        .unwrap();
    let data = q.data().unwrap();
    let a = quantize_q8_0(&x, 1, cols / QK);
    for (r, yr) in y.iter().enumerate() {
        let mut want = 0f64;
        for (b, wb) in data[r * (cols / QK) * BLOCK_BYTES..]
            .chunks_exact(BLOCK_BYTES)
            .take(cols / QK)
            .enumerate()
        {
            for j in 0..QK {
                let w = wb[2 + j] as i8 as f64 * block_scale(wb) as f64;
                want += w * (a.qs[b * QK + j] as f64 * a.d[b] as f64);
            }
        }
        assert!(
            (*yr as f64 - want).abs() <= 1e-5 * want.abs().max(1.0),
            "row {r}: {yr} vs {want}"
        );
    }
}

/// Ours vs candle's `QMatMul` on SmolLM2's MLP and tied output matrix shapes (timing, not
/// correctness):
/// `CANDLE_NUM_THREADS=1 cargo test --release -p ai-sandbox-engine --lib bench_q8_0 -- --ignored --nocapture`.
/// Single-threaded, so the numbers are the kernels' own.
#[test]
#[ignore]
fn bench_q8_0_matmul() {
    test_util::bench::<Q8_0>(1536, 576, &[1, 4, 8, 16], 200);
    test_util::bench::<Q8_0>(576, 1536, &[1, 4, 8, 16], 200);
    test_util::bench::<Q8_0>(49152, 576, &[1, 4, 8, 16], 20);
}
