//! Tests of the Q6_K kernels (shared checks in `test_util.rs`): scalar against candle's own
//! Q6_K x Q8_K matmul and against an f64 dot of dequantized values, SIMD against scalar (bit
//! for bit), batch independence (which candle's own Q6_K matmul does not have).

use candle_core::quantized::GgmlDType;
use candle_core::Device;

use super::super::q8_k::quantize_q8_k;
use super::super::test_util::{self, bits, randoms};
use super::*;

#[test]
fn scalar_matches_candle_qmatmul() {
    // Same activation quantization and integer sums as candle: only the float summation order
    // differs.
    test_util::check_scalar_against_candle::<Q6K>(1e-5);
}

#[test]
fn simd_paths_match_scalar() {
    test_util::check_simd_against_scalar::<Q6K>();
}

#[test]
fn simd_paths_equal_scalar_bit_for_bit() {
    let m = Q6KMatrix::new(test_util::random_matrix(GgmlDType::Q6K, 37, 1536, 5)).unwrap();
    let x = randoms(5 * 1536, 6);
    let want = m.matmul_with(Isa::Scalar, &x, 5).unwrap();
    for isa in [Isa::Avx2, Isa::Avx512] {
        if isa.available() {
            let got = m.matmul_with(isa, &x, 5).unwrap();
            assert_eq!(bits(&got), bits(&want), "{isa:?}");
        }
    }
}

#[test]
fn rows_are_bit_identical_alone_or_batched() {
    test_util::check_rows_independent_of_batch::<Q6K>();
}

#[test]
fn bad_inputs_are_errors() {
    test_util::check_bad_inputs::<Q6K>(GgmlDType::Q4K);
}

#[test]
fn scalar_dot_matches_dequantized_f64() {
    // Independent of candle's kernels and of our bit unpacking: candle dequantizes the weights,
    // we dequantize the activations, f64 sum.
    let (rows, cols) = (6, 512);
    let q = test_util::random_matrix(GgmlDType::Q6K, rows, cols, 3);
    let wf: Vec<f32> = q
        .dequantize(&Device::Cpu)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let x = randoms(cols, 4);
    let y = Q6KMatrix::new(q)
        .unwrap()
        .matmul_with(Isa::Scalar, &x, 1)
        .unwrap();
    let a = quantize_q8_k(&x, 1, cols / QK_K);
    for (r, yr) in y.iter().enumerate() {
        let want: f64 = (0..cols)
            .map(|i| wf[r * cols + i] as f64 * (a.qs[i] as f64 * a.d[i / QK_K] as f64))
            .sum();
        assert!(
            (*yr as f64 - want).abs() <= 1e-4 * want.abs().max(1.0),
            "row {r}: {yr} vs {want}"
        );
    }
}

/// Timing, not correctness:
/// `CANDLE_NUM_THREADS=1 cargo test -p ai-sandbox-engine --lib bench_q6_k -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_q6_k_matmul() {
    test_util::bench::<Q6K>(1536, 1536, &[1, 8], 100);
}
