//! Test helpers shared by every format's tests: deterministic random data, candle's `QMatMul`
//! as the independent reference, and the checks each format must pass (scalar against candle,
//! SIMD against scalar, bit-identical rows whatever the batch and thread count).

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

use super::matrix::{Format, QuantMatrix};
use super::Isa;

/// Every instruction set, available here or not (callers skip the unavailable ones).
pub(super) const ISAS: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512];

/// The bits of each float, for comparisons that must be exact (and print readably).
pub(super) fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

/// Deterministic pseudo-random floats in [-1, 1) (xorshift), so failures reproduce.
pub(super) fn randoms(n: usize, seed: u64) -> Vec<f32> {
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

pub(super) fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |a, x| a.max(x.abs()))
}

/// A random `[rows, cols]` matrix of `dtype`, quantized by candle as a GGUF writer would. Rows
/// get different offsets and magnitudes so block scales (and Q4_1's minimum) vary.
pub(super) fn random_matrix(dtype: GgmlDType, rows: usize, cols: usize, seed: u64) -> Arc<QTensor> {
    let mut w = randoms(rows * cols, seed);
    for (r, row) in w.chunks_mut(cols).enumerate() {
        let off = (r % 5) as f32 * 0.3 - 0.6;
        let scale = 1.0 + (r % 3) as f32;
        row.iter_mut().for_each(|v| *v = *v * scale + off);
    }
    let t = Tensor::from_vec(w, (rows, cols), &Device::Cpu).unwrap();
    Arc::new(QTensor::quantize(&t, dtype).unwrap())
}

/// candle's `QMatMul` on the same tensor: `y[l, rows]`.
pub(super) fn candle_matmul(q: Arc<QTensor>, x: &[f32], l: usize, cols: usize) -> Vec<f32> {
    let xt = Tensor::from_vec(x.to_vec(), (l, cols), &Device::Cpu).unwrap();
    QMatMul::from_arc(q)
        .unwrap()
        .forward(&xt)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// `cols` rounded up to a whole number of `F`'s blocks (576 -> 768 for the 256-value K-quants).
pub(super) fn cols_for<F: Format>(cols: usize) -> usize {
    cols.next_multiple_of(F::BLOCK_VALUES)
}

/// Our scalar reference against candle on a few shapes: `rel_tol` times the largest output.
pub(super) fn check_scalar_against_candle<F: Format>(rel_tol: f32) {
    for &(rows, cols, l) in &[(40, 576, 1), (40, 576, 7), (23, 1536, 3), (64, 64, 2)] {
        let cols = cols_for::<F>(cols);
        let q = random_matrix(F::DTYPE, rows, cols, rows as u64 * 31 + cols as u64);
        let x = randoms(l * cols, 7 + l as u64);
        let ours = QuantMatrix::<F>::new(q.clone())
            .unwrap()
            .matmul_with(Isa::Scalar, &x, l)
            .unwrap();
        let theirs = candle_matmul(q, &x, l, cols);
        assert_eq!(ours.len(), theirs.len());
        let tol = rel_tol * max_abs(&theirs);
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert!(
                (a - b).abs() <= tol,
                "{:?} [{rows}x{cols}, L={l}] y[{i}]: ours {a} vs candle {b} (tol {tol})",
                F::DTYPE
            );
        }
    }
}

/// Every available SIMD path against the scalar reference (same integer sums, only the float
/// summation order differs). Returns how many SIMD paths ran.
pub(super) fn check_simd_against_scalar<F: Format>() -> usize {
    let shapes = [
        (37, 576, 1),
        (37, 576, 7),
        (100, 1536, 1),
        (100, 1536, 7),
        (577, 576, 4),
        (19, 64, 5),
        (5, 96, 3),
        (3, 32, 2),
    ];
    let mut ran = 0;
    for isa in [Isa::Avx2, Isa::Avx512] {
        if !isa.available() {
            eprintln!("{isa:?} not available on this CPU: skipped");
            continue;
        }
        ran += 1;
        for &(rows, cols, l) in &shapes {
            let cols = cols_for::<F>(cols);
            let q = random_matrix(F::DTYPE, rows, cols, rows as u64 + l as u64);
            let m = QuantMatrix::<F>::new(q).unwrap();
            let x = randoms(l * cols, cols as u64 + l as u64);
            let want = m.matmul_with(Isa::Scalar, &x, l).unwrap();
            let got = m.matmul_with(isa, &x, l).unwrap();
            assert_eq!(got.len(), want.len());
            let tol = 1e-5 * max_abs(&want).max(1.0);
            for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!(
                    (a - b).abs() <= tol,
                    "{:?} {isa:?} [{rows}x{cols}, L={l}] y[{i}]: {a} vs scalar {b}",
                    F::DTYPE
                );
            }
        }
    }
    if cfg!(target_arch = "x86_64") && std::is_x86_feature_detected!("avx2") {
        assert!(ran > 0, "an x86 CPU with AVX2 must have run a SIMD path");
    }
    ran
}

/// The batching invariant, on every available instruction set: each activation row's outputs
/// are bit-identical computed alone (one thread) and at every position of a batch of 7 rows
/// (three threads, so the row tiles differ too), and last in batches of 2 to 9 rows.
pub(super) fn check_rows_independent_of_batch<F: Format>() {
    // 45 rows: several 4-row groups plus a remainder; 576 columns as in SmolLM2.
    let (rows, cols) = (45, cols_for::<F>(576));
    let m = QuantMatrix::<F>::new(random_matrix(F::DTYPE, rows, cols, 11)).unwrap();
    let batch = randoms(7 * cols, 12);
    let pool = |n: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    let (one, three) = (pool(1), pool(3));
    // Into stale buffers (one of the right size, one longer): every value written, the same
    // bits as a fresh result.
    let want = three.install(|| m.matmul(&batch, 7).unwrap());
    let (mut stale, mut longer) = (vec![f32::NAN; 7 * rows], vec![f32::NAN; 9 * rows + 3]);
    three.install(|| QuantMatrix::matmul_many_into(&[&m, &m], &batch, 7, &mut [&mut stale, &mut longer]).unwrap());
    assert_eq!(bits(&stale), bits(&want), "{:?}: into a stale buffer", F::DTYPE);
    assert_eq!(bits(&longer), bits(&want), "{:?}: into a longer buffer", F::DTYPE);
    for isa in ISAS {
        if !isa.available() {
            continue;
        }
        let all = three.install(|| m.matmul_with(isa, &batch, 7).unwrap());
        for t in 0..7 {
            let row = &batch[t * cols..(t + 1) * cols];
            let alone = one.install(|| m.matmul_with(isa, row, 1).unwrap());
            assert_eq!(
                bits(&all[t * rows..(t + 1) * rows]),
                bits(&alone),
                "{:?} {isa:?}: token {t} alone vs in a batch of 7",
                F::DTYPE
            );
            // The same row at the end of other batches (other tile shapes around it: from 4
            // tokens on, rows are paired; 9 leaves the row alone in a 1-token tile).
            for l in [2, 3, 4, 5, 8, 9] {
                let mut x = randoms((l - 1) * cols, 100 + l as u64);
                x.extend_from_slice(row);
                let y = one.install(|| m.matmul_with(isa, &x, l).unwrap());
                assert_eq!(
                    bits(&y[(l - 1) * rows..]),
                    bits(&alone),
                    "{:?} {isa:?}: token {t} alone vs last of a batch of {l}",
                    F::DTYPE
                );
            }
        }
    }
}

/// Shape and type errors are errors, not panics.
pub(super) fn check_bad_inputs<F: Format>(other: GgmlDType) {
    let cols = 2 * F::BLOCK_VALUES;
    let m = QuantMatrix::<F>::new(random_matrix(F::DTYPE, 8, cols, 1)).unwrap();
    assert_eq!((m.rows(), m.cols()), (8, cols));
    assert!(m.matmul(&vec![0.0; cols - 1], 1).is_err());
    assert!(m.matmul(&vec![0.0; cols], 2).is_err());
    assert!(QuantMatrix::<F>::new(random_matrix(other, 8, cols, 1)).is_err());
    let v = Tensor::zeros(cols, candle_core::DType::F32, &Device::Cpu).unwrap();
    let q1 = QTensor::quantize(&v, F::DTYPE).unwrap();
    assert!(QuantMatrix::<F>::new(Arc::new(q1)).is_err(), "1-D tensor");
}

/// Times ours (every available ISA) and candle's `QMatMul` on one matrix, single-threaded,
/// and prints microseconds per call.
pub(super) fn bench<F: Format>(rows: usize, cols: usize, ls: &[usize], reps: usize) {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let q = random_matrix(F::DTYPE, rows, cols, 1);
    let m = QuantMatrix::<F>::new(q.clone()).unwrap();
    let candle = QMatMul::from_arc(q).unwrap();
    let time = |f: &dyn Fn()| {
        f(); // warm-up
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            f();
        }
        t0.elapsed().as_secs_f64() / reps as f64
    };
    for &l in ls {
        let x = randoms(l * cols, 2);
        let xt = Tensor::from_vec(x.clone(), (l, cols), &Device::Cpu).unwrap();
        let report = |name: &str, s: f64| {
            eprintln!(
                "{:?} [{rows}x{cols}] L={l} {name}: {:.1} us, {:.2} GMAC/s",
                F::DTYPE,
                s * 1e6,
                (rows * cols * l) as f64 / s / 1e9
            )
        };
        for isa in ISAS {
            if isa.available() {
                let s = pool.install(|| {
                    time(&|| {
                        std::hint::black_box(m.matmul_with(isa, &x, l).unwrap());
                    })
                });
                report(&format!("ours {isa:?}"), s);
            }
        }
        let s = pool.install(|| {
            time(&|| {
                std::hint::black_box(candle.forward(&xt).unwrap());
            })
        });
        report("candle QMatMul", s);
    }
}

/// `f(y)` with one NaN-filled slice of `rows` per token (a word past each end, which must stay
/// NaN: the masked stores of a panel kernel's last panel), as `[row][token]` like the scalar
/// references.
pub(super) fn panel_run(rows: usize, l: usize, f: impl FnOnce(&mut [&mut [f32]])) -> Vec<f32> {
    let mut buf = vec![f32::NAN; l * (rows + 1)];
    let mut y: Vec<&mut [f32]> = buf.chunks_mut(rows + 1).map(|c| &mut c[..rows]).collect();
    f(&mut y);
    assert!(buf.chunks(rows + 1).all(|c| c[rows].is_nan()), "a store past a row's end");
    (0..rows * l).map(|i| buf[(i % l) * (rows + 1) + i / l]).collect()
}

/// A token-major output `y` (`[l][rows]`) cut as `matrix.rs` hands it to the panel kernels:
/// per task of `tile` rows, one slice per token.
pub(super) fn panel_parts(y: &mut [f32], rows: usize, tile: usize) -> Vec<Vec<&mut [f32]>> {
    let mut parts: Vec<Vec<&mut [f32]>> = (0..rows.div_ceil(tile)).map(|_| Vec::new()).collect();
    for yr in y.chunks_mut(rows) {
        for (k, c) in yr.chunks_mut(tile).enumerate() {
            parts[k].push(c);
        }
    }
    parts
}
