//! Tests of the lane-per-pair AVX2 kernels: bit-equal to the scalar references for every tile
//! shape and remainder (odd token counts, row counts off the tiles), and a kernel-only
//! benchmark against the previous AVX2 tiles (`avx2.rs`, `avx2_q8.rs`).

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

use super::super::test_util::{bits, random_matrix, randoms};
use super::super::{avx2, avx2_q8, q4_0, q4_1, q8_0, Isa, Vnni};
use super::*;

/// Token counts covering every tile (8, 4, 1) and their mixes; row counts below, at and off
/// the 8-row blocks.
const TOKENS: [usize; 14] = [1, 2, 3, 4, 5, 7, 8, 9, 12, 13, 15, 16, 17, 24];
const ROWS: [usize; 7] = [1, 2, 3, 7, 8, 13, 45];

/// The integer-dot variants this CPU runs (plain AVX2 always; each VNNI one it has).
fn variants() -> Vec<Vnni> {
    let all = [Vnni::None, Vnni::Avx, Vnni::Avx512];
    let have: Vec<Vnni> = all.into_iter().filter(|v| v.available()).collect();
    eprintln!("integer-dot variants tested on this CPU: {have:?}");
    have
}

#[test]
fn q4_1_lanes_equal_scalar_bitwise() {
    if !Isa::Avx2.available() {
        eprintln!("AVX2 not available on this CPU: skipped");
        return;
    }
    for (rows, cols) in ROWS.iter().map(|&r| (r, 576)).chain([(9, 32), (10, 1536)]) {
        let nb = cols / QK;
        let q = random_matrix(GgmlDType::Q4_1, rows, cols, rows as u64 * 7 + cols as u64);
        let w = q.data().unwrap();
        for l in TOKENS {
            let a = q4_1::quantize_q8_1(&randoms(l * cols, 40 + l as u64), l, nb);
            let mut want = vec![0f32; rows * l];
            for (wr, y) in w
                .chunks_exact(nb * q4_1::BLOCK_BYTES)
                .zip(want.chunks_exact_mut(l))
            {
                q4_1::row_dots_scalar(wr, &a, y);
            }
            for v in variants() {
                let mut got = vec![f32::NAN; rows * l];
                dots_q4_1(v, &w, &a, &mut got);
                assert_eq!(bits(&got), bits(&want), "Q4_1 {v:?} [{rows}x{cols}] L={l}");
            }
        }
    }
}

#[test]
fn q8_0_and_q4_0_lanes_equal_scalar_bitwise() {
    if !Isa::Avx2.available() {
        eprintln!("AVX2 not available on this CPU: skipped");
        return;
    }
    for (rows, cols) in ROWS.iter().map(|&r| (r, 576)).chain([(9, 32), (10, 1536)]) {
        let nb = cols / QK;
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
            let q = random_matrix(dtype, rows, cols, rows as u64 * 5 + cols as u64);
            let w = q.data().unwrap();
            for l in TOKENS {
                let a = q8_0::quantize_q8_0(&randoms(l * cols, 60 + l as u64), l, nb);
                let mut want = vec![0f32; rows * l];
                if dtype == GgmlDType::Q8_0 {
                    q8_0::dots_scalar(&w, &a, &mut want);
                } else {
                    q4_0::dots_scalar(&w, &a, &mut want);
                }
                for v in variants() {
                    let mut got = vec![f32::NAN; rows * l];
                    if dtype == GgmlDType::Q8_0 {
                        dots_q8_0(v, &w, &a, &mut got);
                    } else {
                        dots_q4_0(v, &w, &a, &mut got);
                    }
                    assert_eq!(bits(&got), bits(&want), "{dtype:?} {v:?} [{rows}x{cols}] L={l}");
                }
            }
        }
    }
}

/// The lane kernels (plain AVX2 and the best VNNI variant of this CPU) against the previous
/// AVX2 tiles, kernel only (activations quantized once), the matmul's row chunking on 1 and 2
/// threads, the three interleaved:
/// `cargo test --release -p ai-sandbox-engine --lib bench_lanes -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_lanes() {
    if !Isa::Avx2.available() {
        return;
    }
    let best = [Vnni::Avx, Vnni::Avx512].into_iter().find(|v| v.available()).unwrap_or(Vnni::None);
    let shapes: [(&str, GgmlDType, usize, usize); 6] = [
        ("q", GgmlDType::Q4_1, 576, 576),
        ("k/v", GgmlDType::Q4_1, 192, 576),
        ("gate/up", GgmlDType::Q4_1, 1536, 576),
        ("down", GgmlDType::Q4_1, 576, 1536),
        ("output", GgmlDType::Q8_0, 49152, 576),
        ("down q8", GgmlDType::Q8_0, 576, 1536),
    ];
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        for (name, dtype, rows, cols) in shapes {
            let nb = cols / QK;
            let q = random_matrix(dtype, rows, cols, 1);
            let w = q.data().unwrap();
            let row_bytes = w.len() / rows;
            for l in [1, 4, 8, 16] {
                let x = randoms(l * cols, 2);
                let (a41, a80) = (
                    q4_1::quantize_q8_1(&x, l, nb),
                    q8_0::quantize_q8_0(&x, l, nb),
                );
                // 0: the previous tiles; 1: lanes on AVX2; 2: lanes on `best`.
                let run = |which: usize, ws: &[u8], ys: &mut [f32]| {
                    let v = [Vnni::None, Vnni::None, best][which];
                    match (dtype, which) {
                        (GgmlDType::Q4_1, 0) => avx2::dots(ws, &a41, ys),
                        (GgmlDType::Q4_1, _) => dots_q4_1(v, ws, &a41, ys),
                        (_, 0) => avx2_q8::dots_q8_0(ws, &a80, ys),
                        (_, _) => dots_q8_0(v, ws, &a80, ys),
                    }
                };
                let tile = rows.div_ceil(threads * 4).max(16);
                let mut yt = vec![0f32; rows * l];
                let reps = (200 * 1536 * 576 / (rows * cols * l.max(4) / 4)).max(5);
                let mut time = |which: usize| {
                    let t0 = std::time::Instant::now();
                    for _ in 0..reps {
                        pool.install(|| {
                            yt.par_chunks_mut(tile * l)
                                .zip(w.par_chunks(tile * row_bytes))
                                .for_each(|(ys, ws)| run(which, ws, ys))
                        });
                        std::hint::black_box(&yt);
                    }
                    t0.elapsed().as_secs_f64() / reps as f64 * 1e6
                };
                let mut us = [f64::MAX; 3];
                for _ in 0..3 {
                    for (which, b) in us.iter_mut().enumerate() {
                        *b = b.min(time(which));
                    }
                }
                eprintln!(
                    "{threads} thr {dtype:?} {name} [{rows}x{cols}] L={l}: v1 {:.1} us, lanes {:.1} us \
                     ({:.2}x v1), lanes {best:?} {:.1} us ({:.2}x lanes, {:.1} GMAC/s)",
                    us[0],
                    us[1],
                    us[0] / us[1],
                    us[2],
                    us[1] / us[2],
                    (rows * cols * l) as f64 / us[2] / 1e3
                );
            }
        }
    }
}
