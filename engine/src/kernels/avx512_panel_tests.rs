//! Tests of the AVX-512 VNNI panel kernels: bit-equal to the scalar references for every token
//! tile (1 to 8 and their mixes) and row counts off the panels, on CPUs that have them; and a
//! kernel-only benchmark against the AVX2 lane kernels.

use candle_core::quantized::GgmlDType;
use rayon::prelude::*;

use super::super::test_util::{bits, panel_parts, panel_run, random_matrix, randoms};
use super::super::{avx2_lanes, q4_0, q4_1, q8_0, Vnni};
use super::*;

const TOKENS: [usize; 13] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 17, 24];
const ROWS_: [usize; 6] = [1, 5, 16, 17, 40, 48];

#[test]
fn q4_1_panels_equal_scalar_bitwise() {
    if !available() {
        eprintln!("AVX-512 VNNI not available on this CPU: skipped");
        return;
    }
    for (rows, cols) in ROWS_.iter().map(|&r| (r, 576)).chain([(9, 32), (20, 1536)]) {
        let nb = cols / QK;
        let q = random_matrix(GgmlDType::Q4_1, rows, cols, rows as u64 * 7 + cols as u64);
        let w = q.data().unwrap();
        let packed = panel::pack(Q4_1_SPEC, &w, rows, nb);
        for l in TOKENS {
            let a = q4_1::quantize_q8_1(&randoms(l * cols, 40 + l as u64), l, nb);
            let mut want = vec![0f32; rows * l];
            for (wr, y) in w.chunks_exact(nb * q4_1::BLOCK_BYTES).zip(want.chunks_exact_mut(l)) {
                q4_1::row_dots_scalar(wr, &a, y);
            }
            assert_eq!(bits(&panel_run(rows, l, |y| dots_q4_1(&packed, &a, y))), bits(&want), "Q4_1 [{rows}x{cols}] L={l}");
        }
    }
}

#[test]
fn q8_0_and_q4_0_panels_equal_scalar_bitwise() {
    if !available() {
        eprintln!("AVX-512 VNNI not available on this CPU: skipped");
        return;
    }
    for (rows, cols) in ROWS_.iter().map(|&r| (r, 576)).chain([(9, 32), (20, 1536)]) {
        let nb = cols / QK;
        for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
            let q = random_matrix(dtype, rows, cols, rows as u64 * 5 + cols as u64);
            let w = q.data().unwrap();
            let spec = if dtype == GgmlDType::Q8_0 { Q8_0_SPEC } else { Q4_0_SPEC };
            let packed = panel::pack(spec, &w, rows, nb);
            for l in TOKENS {
                // Extreme activations too: -128 quants would expose a wrong offset correction.
                let mut x = randoms(l * cols, 60 + l as u64);
                x.iter_mut().step_by(7).for_each(|v| *v *= 40.0);
                let a = q8_0::quantize_q8_0(&x, l, nb);
                let mut want = vec![0f32; rows * l];
                let got = if dtype == GgmlDType::Q8_0 {
                    q8_0::dots_scalar(&w, &a, &mut want);
                    panel_run(rows, l, |y| dots_q8_0(&packed, &a, y))
                } else {
                    q4_0::dots_scalar(&w, &a, &mut want);
                    panel_run(rows, l, |y| dots_q4_0(&packed, &a, y))
                };
                assert_eq!(bits(&got), bits(&want), "{dtype:?} [{rows}x{cols}] L={l}");
            }
        }
    }
}

/// The panel kernels against the AVX2 lane kernels with the best VNNI of this CPU, kernel only,
/// on 1 and 2 threads (tasks of whole panels, as `matrix.rs` splits them):
/// `cargo test --release -p ai-sandbox-engine --lib bench_panels -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_panels() {
    if !available() {
        return;
    }
    let best = [Vnni::Avx, Vnni::Avx512].into_iter().find(|v| v.available()).unwrap_or(Vnni::None);
    let shapes: [(&str, GgmlDType, usize, usize); 5] = [
        ("q", GgmlDType::Q4_1, 576, 576),
        ("k/v", GgmlDType::Q4_1, 192, 576),
        ("gate/up", GgmlDType::Q4_1, 1536, 576),
        ("down", GgmlDType::Q4_1, 576, 1536),
        ("output", GgmlDType::Q8_0, 49152, 576),
    ];
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for (name, dtype, rows, cols) in shapes {
            let nb = cols / QK;
            let q = random_matrix(dtype, rows, cols, 1);
            let w = q.data().unwrap();
            let spec = if dtype == GgmlDType::Q4_1 { Q4_1_SPEC } else { Q8_0_SPEC };
            let packed = panel::pack(spec, &w, rows, nb);
            for l in [1, 4, 8, 16] {
                let x = randoms(l * cols, 2);
                let (a41, a80) = (q4_1::quantize_q8_1(&x, l, nb), q8_0::quantize_q8_0(&x, l, nb));
                let _ = (avx2_lanes::prepare_q4_1(&a41), avx2_lanes::prepare_q8_0(&a80), a80.block_sums());
                let tile = rows.div_ceil(threads * 4).max(16).next_multiple_of(16);
                let mut yt = vec![0f32; rows * l];
                let mut yl = vec![0f32; rows * l];
                let reps = (200 * 1536 * 576 / (rows * cols * l.max(4) / 4)).max(5);
                let mut time = |panels: bool| {
                    let t0 = std::time::Instant::now();
                    for _ in 0..reps {
                        pool.install(|| {
                            if panels {
                                // Token-major output, as `matrix.rs` hands it: one slice per token.
                                let chunk = tile / 16 * nb * spec.panel_block_bytes();
                                let mut parts = panel_parts(&mut yl, rows, tile);
                                parts.par_iter_mut().zip(packed.par_chunks(chunk)).for_each(|(ys, ws)| {
                                    if dtype == GgmlDType::Q4_1 {
                                        dots_q4_1(ws, &a41, ys)
                                    } else {
                                        dots_q8_0(ws, &a80, ys)
                                    }
                                })
                            } else {
                                let chunk = tile * w.len() / rows;
                                yt.par_chunks_mut(tile * l).zip(w.par_chunks(chunk)).for_each(|(ys, ws)| {
                                    if dtype == GgmlDType::Q4_1 {
                                        avx2_lanes::dots_q4_1(best, ws, &a41, ys)
                                    } else {
                                        avx2_lanes::dots_q8_0(best, ws, &a80, ys)
                                    }
                                })
                            }
                        });
                        std::hint::black_box((&yt, &yl));
                    }
                    t0.elapsed().as_secs_f64() / reps as f64 * 1e6
                };
                let mut us = [f64::MAX; 2];
                for _ in 0..3 {
                    us[0] = us[0].min(time(false));
                    us[1] = us[1].min(time(true));
                }
                let gmac = (rows * cols * l) as f64 / us[1] / 1e3;
                eprintln!(
                    "{threads} thr {dtype:?} {name} [{rows}x{cols}] L={l}: lanes {best:?} {:.1} us, panels {:.1} us ({:.2}x, {gmac:.1} GMAC/s)",
                    us[0], us[1], us[0] / us[1]
                );
            }
        }
    }
}
