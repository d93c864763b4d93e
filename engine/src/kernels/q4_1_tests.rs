//! Tests of the Q4_1 kernels: scalar against candle's own Q4_1 x Q8_1 matmul, every SIMD path
//! against scalar, and the matmul wrapper's shape handling and thread independence.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::super::test_util::bits;
use super::*;

/// Deterministic pseudo-random floats in [-1, 1) (xorshift), so failures reproduce.
fn randoms(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
        })
        .collect()
}

/// A random Q4_1 `[rows, cols]` matrix (quantized by candle, as a GGUF writer would).
fn random_q4_1(rows: usize, cols: usize, seed: u64) -> Arc<QTensor> {
    // Per-row offsets make the `m` (block minimum) term matter.
    let mut w = randoms(rows * cols, seed);
    for (r, row) in w.chunks_mut(cols).enumerate() {
        let off = (r % 5) as f32 * 0.3 - 0.6;
        row.iter_mut().for_each(|v| *v += off);
    }
    let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
    Arc::new(QTensor::quantize(&t, GgmlDType::Q4_1).unwrap())
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |a, x| a.max(x.abs()))
}

#[test]
fn scalar_matches_candle_qmatmul() {
    for &(rows, cols, l) in &[(40, 576, 1), (40, 576, 7), (23, 1536, 3), (64, 64, 2)] {
        let q = random_q4_1(rows, cols, rows as u64 * 31 + cols as u64);
        let x = randoms(l * cols, 7 + l as u64);
        let ours = Q4_1Matrix::new(q.clone())
            .unwrap()
            .matmul_with(Isa::Scalar, &x, l)
            .unwrap();
        let xt = Tensor::from_vec(x, (l, cols), &Device::Cpu).unwrap();
        let theirs: Vec<f32> = QMatMul::from_arc(q)
            .unwrap()
            .forward(&xt)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(ours.len(), theirs.len());
        // Same integer sums and scales; candle rounds `s = d*sum(q)` through an f16 product
        // where GGML rounds the f32 product once, so allow f16-level differences on `m*s`.
        let tol = 2e-3 * max_abs(&theirs);
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                (a - b).abs() <= tol,
                "[{rows}x{cols}, L={l}] y[{i}]: ours {a} vs candle {b} (tol {tol})"
            );
        }
    }
}

#[test]
fn simd_paths_match_scalar() {
    let shapes = [
        (37, 576, 1),
        (37, 576, 7),
        (100, 1536, 1),
        (100, 1536, 7),
        (577, 576, 4),
        (19, 64, 5),
        (5, 96, 3),
    ];
    let mut ran = 0;
    for isa in [Isa::Avx2, Isa::Avx512] {
        if !isa.available() {
            eprintln!("{isa:?} not available on this CPU: skipped");
            continue;
        }
        ran += 1;
        for &(rows, cols, l) in &shapes {
            let m = Q4_1Matrix::new(random_q4_1(rows, cols, rows as u64 + l as u64)).unwrap();
            let x = randoms(l * cols, cols as u64 + l as u64);
            let want = m.matmul_with(Isa::Scalar, &x, l).unwrap();
            let got = m.matmul_with(isa, &x, l).unwrap();
            let tol = 1e-5 * max_abs(&want).max(1.0);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= tol,
                    "{isa:?} [{rows}x{cols}, L={l}] y[{i}]: {a} vs scalar {b}"
                );
            }
        }
    }
    if cfg!(target_arch = "x86_64") && std::is_x86_feature_detected!("avx2") {
        assert!(ran > 0, "an x86 CPU with AVX2 must have run a SIMD path");
    }
}

#[test]
fn matmul_results_do_not_depend_on_thread_count() {
    let m = Q4_1Matrix::new(random_q4_1(300, 576, 3)).unwrap();
    let x = randoms(7 * 576, 4);
    let run = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| m.matmul(&x, 7).unwrap())
    };
    assert_eq!(run(1), run(3));
}

#[test]
fn multi_token_rows_equal_single_token_runs() {
    let m = Q4_1Matrix::new(random_q4_1(50, 576, 9)).unwrap();
    let x = randoms(6 * 576, 10);
    let all = m.matmul(&x, 6).unwrap();
    for t in 0..6 {
        let one = m.matmul(&x[t * 576..(t + 1) * 576], 1).unwrap();
        assert_eq!(&all[t * 50..(t + 1) * 50], &one[..], "token {t}");
    }
}

#[test]
fn quantize_q8_1_follows_ggml() {
    let mut x = randoms(64, 5);
    x[3] = -2.54; // the block's amax: d = 0.02, that element quantizes to -127
    x[32..].iter_mut().for_each(|v| *v = 0.0); // an all-zero block: d = 0, q = 0
    let a = quantize_q8_1(&x, 1, 2);
    assert_eq!(a.qs[3], -127);
    assert!((a.d[0] - 0.02).abs() < 1e-5);
    for (j, (q, v)) in a.qs.iter().zip(&x).take(32).enumerate() {
        assert_eq!(*q as f32, (v / 0.02).round(), "element {j}");
    }
    let sum: i32 = a.qs[..32].iter().map(|&q| q as i32).sum();
    assert!((a.s[0] - sum as f32 * 0.02).abs() <= 1e-3 * (sum.abs() as f32 * 0.02).max(1.0));
    assert_eq!((a.d[1], a.s[1]), (0.0, 0.0));
    assert!(a.qs[32..].iter().all(|&q| q == 0));
}

#[test]
fn bad_inputs_are_errors() {
    let m = Q4_1Matrix::new(random_q4_1(8, 64, 1)).unwrap();
    assert_eq!((m.rows(), m.cols()), (8, 64));
    assert!(m.matmul(&[0.0; 63], 1).is_err());
    let f = Tensor::zeros((8, 64), candle_core::DType::F32, &Device::Cpu).unwrap();
    let q8 = QTensor::quantize(&f, GgmlDType::Q8_0).unwrap();
    assert!(Q4_1Matrix::new(Arc::new(q8)).is_err());
}

/// Kernel throughput on SmolLM2-shaped matrices (timing, not correctness):
/// `cargo test -p ai-sandbox-engine --lib kernels::q4_1::tests::bench -- --ignored --nocapture`
/// (add `--features avx512` for the AVX-512 row). Single-threaded, so the numbers are the
/// kernel's own.
#[test]
#[ignore]
fn bench_q4_1_matmul() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let shapes = [(1536, 576), (576, 1536)];
    for (rows, cols, l) in shapes
        .into_iter()
        .flat_map(|(r, c)| [1, 4, 8, 16].map(|l| (r, c, l)))
    {
        let m = Q4_1Matrix::new(random_q4_1(rows, cols, 1)).unwrap();
        let x = randoms(l * cols, 2);
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
            if !isa.available() {
                continue;
            }
            let reps = if isa == Isa::Scalar { 20 } else { 200 };
            let t0 = std::time::Instant::now();
            pool.install(|| {
                for _ in 0..reps {
                    std::hint::black_box(m.matmul_with(isa, &x, l).unwrap());
                }
            });
            let s = t0.elapsed().as_secs_f64() / reps as f64;
            eprintln!(
                "[{rows}x{cols}] L={l} {isa:?}: {:.1} us, {:.2} GMAC/s",
                s * 1e6,
                (rows * cols * l) as f64 / s / 1e9
            );
        }
    }
}

#[test]
fn rows_are_bit_identical_alone_or_batched() {
    super::super::test_util::check_rows_independent_of_batch::<Q4_1>();
}

/// The AVX2 row-pair driver (`avx2::dots`) against the single-row one the matmul runs today:
/// bit-equal for every token count (pairs from 4 tokens, with 1-token remainders, an odd last
/// row), every token bit-equal to itself quantized and run alone, and close to scalar.
#[cfg(target_arch = "x86_64")]
#[test]
fn avx2_row_pairs_equal_single_rows_bitwise() {
    if !Isa::Avx2.available() {
        eprintln!("AVX2 not available on this CPU: skipped");
        return;
    }
    let (rows, cols) = (45, 576);
    let nb = cols / QK;
    let q = random_q4_1(rows, cols, 21);
    let w = q.data().unwrap();
    for l in [1, 2, 3, 4, 5, 7, 8, 9, 16] {
        let x = randoms(l * cols, 30 + l as u64);
        let a = quantize_q8_1(&x, l, nb);
        let mut paired = vec![0f32; rows * l];
        super::super::avx2::dots(&w, &a, &mut paired);
        let mut single = vec![0f32; rows * l];
        let mut scalar = vec![0f32; rows * l];
        for (r, wr) in w.chunks_exact(nb * BLOCK_BYTES).enumerate() {
            super::super::avx2::row_dots(wr, &a, &mut single[r * l..(r + 1) * l]);
            row_dots_scalar(wr, &a, &mut scalar[r * l..(r + 1) * l]);
        }
        assert_eq!(
            bits(&paired),
            bits(&single),
            "L={l}: paired vs single-row tiles"
        );
        let tol = 1e-5 * max_abs(&scalar).max(1.0);
        for (i, (p, s)) in paired.iter().zip(&scalar).enumerate() {
            assert!((p - s).abs() <= tol, "L={l} yt[{i}]: {p} vs scalar {s}");
        }
        for t in 0..l {
            let one = quantize_q8_1(&x[t * cols..(t + 1) * cols], 1, nb);
            let mut alone = vec![0f32; rows];
            super::super::avx2::dots(&w, &one, &mut alone);
            let in_batch: Vec<f32> = (0..rows).map(|r| paired[r * l + t]).collect();
            assert_eq!(
                bits(&in_batch),
                bits(&alone),
                "L={l}: token {t} alone vs in the batch"
            );
        }
    }
}

/// The AVX2 kernel alone (no quantization, one thread), single-row tiles vs row pairs:
/// `cargo test --release -p ai-sandbox-engine --lib bench_q4_1_row_pairs -- --ignored --nocapture`.
#[cfg(target_arch = "x86_64")]
#[test]
#[ignore]
fn bench_q4_1_row_pairs() {
    if !Isa::Avx2.available() {
        return;
    }
    for (rows, cols) in [(1536, 576), (576, 1536), (49152, 576)] {
        let nb = cols / QK;
        let q = random_q4_1(rows, cols, 1);
        let w = q.data().unwrap();
        for l in [1, 4, 8, 16] {
            let a = quantize_q8_1(&randoms(l * cols, 2), l, nb);
            let mut yt = vec![0f32; rows * l];
            let reps = (300 * 1536 * 576 / (rows * cols)).max(10);
            let mut time = |paired: bool| {
                let t0 = std::time::Instant::now();
                for _ in 0..reps {
                    if paired {
                        super::super::avx2::dots(&w, &a, &mut yt);
                    } else {
                        for (r, wr) in w.chunks_exact(nb * BLOCK_BYTES).enumerate() {
                            super::super::avx2::row_dots(wr, &a, &mut yt[r * l..(r + 1) * l]);
                        }
                    }
                    std::hint::black_box(&yt);
                }
                t0.elapsed().as_secs_f64() / reps as f64 * 1e6
            };
            let (single, paired) = (time(false), time(true));
            let (single2, paired2) = (time(false), time(true));
            eprintln!(
                "Q4_1 kernel [{rows}x{cols}] L={l}: single-row {:.1} us, row pairs {:.1} us",
                single.min(single2),
                paired.min(paired2)
            );
        }
    }
}

#[test]
fn matrices_sharing_an_input_give_each_its_own_matmul() {
    // A layer's q/k/v shapes (and an empty one), one parallel region for all of them.
    let mats: Vec<Q4_1Matrix> =
        [(576, 11), (192, 12), (192, 13), (0, 14)].iter().map(|&(r, s)| Q4_1Matrix::new(random_q4_1(r, 576, s)).unwrap()).collect();
    let refs: Vec<&Q4_1Matrix> = mats.iter().collect();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for l in [1, 3, 8, 19] {
            let x = randoms(l * 576, 20 + l as u64);
            let many = pool.install(|| Q4_1Matrix::matmul_many(&refs, &x, l).unwrap());
            assert_eq!(many.len(), 4);
            for (m, y) in mats.iter().zip(&many) {
                assert_eq!(y, &m.matmul(&x, l).unwrap(), "{threads} threads, {l} tokens, {} rows", m.rows());
            }
        }
    }
    let narrow = Q4_1Matrix::new(random_q4_1(8, 64, 15)).unwrap();
    let err = Q4_1Matrix::matmul_many(&[&mats[0], &narrow], &randoms(576, 1), 1).unwrap_err();
    assert!(err.to_string().contains("columns"), "{err}");
}
