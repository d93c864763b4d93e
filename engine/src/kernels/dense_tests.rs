//! Tests of the dense f32 kernels (shared checks in `test_util.rs`): scalar against an f64 dot
//! product and candle's f32 matmul, SIMD bit-identical to scalar (the module's definition of
//! the dot product), batch independence, bad inputs.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

use super::super::test_util::{self, bits, randoms};
use super::*;

fn matrix(rows: usize, cols: usize, seed: u64) -> (Vec<f32>, F32Matrix) {
    let w = randoms(rows * cols, seed);
    let t = Tensor::from_vec(w.clone(), (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, GgmlDType::F32).unwrap();
    (w, F32Matrix::new(Arc::new(q)).unwrap())
}

/// Column counts with and without a tail of fewer than 8 values, odd and even chunk counts.
const SHAPES: [(usize, usize, usize); 8] = [
    (5, 1, 1),
    (9, 7, 3),
    (17, 8, 2),
    (13, 16, 5),
    (31, 37, 4),
    (40, 100, 7),
    (64, 576, 1),
    (23, 1536, 6),
];

#[test]
fn scalar_matches_an_f64_dot_product() {
    for &(rows, cols, l) in &SHAPES {
        let (w, m) = matrix(rows, cols, rows as u64 * 7 + cols as u64);
        let x = randoms(l * cols, 3 + l as u64);
        let y = m.matmul_with(Isa::Scalar, &x, l).unwrap();
        for t in 0..l {
            for r in 0..rows {
                let (wr, xt) = (&w[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols]);
                let want: f64 = wr.iter().zip(xt).map(|(a, b)| *a as f64 * *b as f64).sum();
                let abs: f64 = wr
                    .iter()
                    .zip(xt)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                let got = y[t * rows + r] as f64;
                // f32 summation of `cols` products: error below cols * eps * sum |products|.
                let tol = cols as f64 * f32::EPSILON as f64 * abs.max(1e-30);
                assert!(
                    (got - want).abs() <= tol,
                    "[{rows}x{cols}] t={t} r={r}: {got} vs {want} (tol {tol})"
                );
            }
        }
    }
}

#[test]
fn scalar_matches_candle_qmatmul() {
    test_util::check_scalar_against_candle::<F32>(1e-5);
}

#[test]
fn simd_paths_are_bit_identical_to_scalar() {
    // The shared check (tolerance) and, stronger, equal bits: both paths compute the same
    // defined sequence of roundings.
    test_util::check_simd_against_scalar::<F32>();
    for isa in [Isa::Avx2, Isa::Avx512] {
        if !isa.available() {
            continue;
        }
        for &(rows, cols, l) in &SHAPES {
            let (_, m) = matrix(rows, cols, cols as u64);
            let x = randoms(l * cols, 40 + cols as u64);
            let want = m.matmul_with(Isa::Scalar, &x, l).unwrap();
            let got = m.matmul_with(isa, &x, l).unwrap();
            assert_eq!(bits(&got), bits(&want), "{isa:?} [{rows}x{cols}] L={l}");
        }
    }
}

#[test]
fn rows_are_bit_identical_alone_or_batched() {
    test_util::check_rows_independent_of_batch::<F32>();
}

#[test]
fn bad_inputs_are_errors() {
    test_util::check_bad_inputs::<F32>(GgmlDType::F16);
}

#[test]
fn the_f32_embedding_lookup_is_a_bit_exact_row_copy() {
    // What the model does with an HF embedding table: an F32 QTensor, rows looked up by id.
    let (rows, cols) = (11, 24);
    let mut w = randoms(rows * cols, 9);
    w[5 * cols] = f32::from_bits(1); // a subnormal survives too
    let t = Tensor::from_vec(w.clone(), (rows, cols), &Device::Cpu).unwrap();
    let q = QTensor::quantize(&t, GgmlDType::F32).unwrap();
    let ids = [5u32, 0, 10, 5];
    let got: Vec<Vec<f32>> = q
        .embedding(&Tensor::new(&ids[..], &Device::Cpu).unwrap())
        .unwrap()
        .to_vec2()
        .unwrap();
    for (row, &id) in got.iter().zip(&ids) {
        let want = &w[id as usize * cols..(id as usize + 1) * cols];
        assert_eq!(bits(row), bits(want), "row {id}");
    }
}

#[test]
fn reduce8_follows_the_documented_order() {
    // Values whose sum depends on the order: 1e8 + 1 - 1e8 in f32.
    let s = [1e8, 1.0, -1e8, 0.0, 0.0, 0.0, 0.0, 0.0];
    // ((s0+s4)+(s2+s6)) = 0, ((s1+s5)+(s3+s7)) = 1.
    assert_eq!(reduce8(&s), 1.0);
    let seq: f32 = s.iter().sum();
    assert_eq!(seq, 0.0, "a plain left-to-right sum loses the 1");
}

/// Ours vs candle's `QMatMul` (f32 gemm) on a 576 x 1536 matrix (timing, not correctness):
/// `cargo test --release -p ai-sandbox-engine --lib bench_f32 -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_f32_matmul() {
    test_util::bench::<F32>(1536, 576, &[1, 8], 50);
}
