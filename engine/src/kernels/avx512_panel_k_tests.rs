//! Tests of the K-quant panel kernels: bit-equal to the scalar references for every token tile
//! (1 to 8 and their mixes), row counts off the panels and extreme activations, on CPUs that
//! have AVX-512 VNNI; and a kernel-only benchmark against the AVX2 kernels and candle's.

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{Device, Module, Tensor};
use rayon::prelude::*;

use super::super::panel::{self, Spec};
use super::super::q8_k::quantize_q8_k;
use super::super::test_util::{bits, panel_parts, panel_run, random_matrix, randoms};
use super::super::{avx2_q4k, avx2_q6k, q4_k, q6_k};
use super::*;

type Dots = fn(&[u8], &Q8KRows, &mut [&mut [f32]]);
type Scalar = fn(&[u8], &Q8KRows, &mut [f32]);

fn formats() -> [(GgmlDType, Spec, Dots, Scalar); 2] {
    [
        (GgmlDType::Q4K, Q4_K_SPEC, dots_q4_k, q4_k::dots_scalar),
        (GgmlDType::Q6K, Q6_K_SPEC, dots_q6_k, q6_k::dots_scalar),
    ]
}

#[test]
fn k_quant_panels_equal_scalar_bitwise() {
    if !available() {
        eprintln!("AVX-512 VNNI not available on this CPU: skipped");
        return;
    }
    for (dtype, spec, dots, scalar) in formats() {
        for (rows, cols) in [(1, 256), (5, 768), (16, 512), (17, 256), (40, 1536), (48, 768)] {
            let nb = cols / QK_K;
            let q = random_matrix(dtype, rows, cols, rows as u64 * 3 + cols as u64);
            let w = q.data().unwrap();
            let packed = panel::pack(spec, &w, rows, nb);
            for l in [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 16, 17] {
                // Extreme activations too (-128 quants, large run sums): a wrong offset or
                // minimum correction would show.
                let mut x = randoms(l * cols, 70 + l as u64);
                x.iter_mut().step_by(5).for_each(|v| *v *= 50.0);
                x.iter_mut().skip(3).step_by(97).for_each(|v| *v = -1e3);
                let a = quantize_q8_k(&x, l, nb);
                let mut want = vec![0f32; rows * l];
                scalar(&w, &a, &mut want);
                assert_eq!(bits(&panel_run(rows, l, |y| dots(&packed, &a, y))), bits(&want), "{dtype:?} [{rows}x{cols}] L={l}");
            }
        }
    }
}

#[test]
fn k_quant_panels_take_extreme_weights() {
    // Every Q4_K scale and min at 63, nibbles at 15; every Q6_K value at 0 or 63 with scales
    // of -128 and 127: the largest integer sums the formats allow, with activations of -127 (the
    // most negative quant Q8_K gives).
    if !available() {
        return;
    }
    let (rows, nb, l) = (16, 2, 3);
    let mut w4 = Vec::new();
    let mut w6 = Vec::new();
    for r in 0..rows {
        for _ in 0..nb {
            w4.extend_from_slice(&half::f16::from_f32(0.5 + r as f32).to_bits().to_le_bytes());
            w4.extend_from_slice(&half::f16::from_f32(0.25).to_bits().to_le_bytes());
            w4.extend([0xFF; 12]);
            w4.extend([if r % 2 == 0 { 0xFF } else { 0x0F }; 128]);
            w6.extend([if r % 3 == 0 { 0xFF } else { 0x00 }; 128]);
            w6.extend([if r % 3 == 0 { 0xFF } else { 0x00 }; 64]);
            w6.extend((0..16).map(|j| if (j + r) % 2 == 0 { 0x80 } else { 0x7F }));
            w6.extend_from_slice(&half::f16::from_f32(1.0 + r as f32).to_bits().to_le_bytes());
        }
    }
    let mut x = vec![-1.0f32; l * nb * QK_K];
    x.iter_mut().skip(1).step_by(2).for_each(|v| *v = -0.5);
    let a = quantize_q8_k(&x, l, nb);
    assert!(a.qs.iter().all(|&q| q == -127 || q == -64), "{:?}", &a.qs[..4]);
    for (w, (dtype, spec, dots, scalar)) in [w4, w6].iter().zip(formats()) {
        let packed = panel::pack(spec, w, rows, nb);
        let mut want = vec![0f32; rows * l];
        scalar(w, &a, &mut want);
        assert_eq!(bits(&panel_run(rows, l, |y| dots(&packed, &a, y))), bits(&want), "{dtype:?}");
    }
}

/// The K-quant panel kernels against our AVX2 kernels and candle's `QMatMul` (the path Q4_K
/// took before), kernel only, on 1 and 2 threads (tasks of whole panels):
/// `cargo test --release -p ai-sandbox-engine --lib bench_panels_k -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_panels_k() {
    if !available() {
        return;
    }
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for (dtype, spec, dots, _) in formats() {
            for (rows, cols) in [(1536, 768), (768, 1536), (32768, 768)] {
                let nb = cols / QK_K;
                let q = random_matrix(dtype, rows, cols, 1);
                let w = q.data().unwrap();
                let packed = panel::pack(spec, &w, rows, nb);
                let candle = QMatMul::from_arc(q.clone()).unwrap();
                for l in [1, 4, 8, 16] {
                    let x = randoms(l * cols, 2);
                    let xt = Tensor::from_vec(x.clone(), (l, cols), &Device::Cpu).unwrap();
                    let a = quantize_q8_k(&x, l, nb);
                    let _ = a.sums_i16();
                    let tile = rows.div_ceil(threads * 4).max(16).next_multiple_of(16);
                    let mut yt = vec![0f32; rows * l];
                    let mut yl = vec![0f32; rows * l];
                    let reps = (100 * 1536 * 768 / (rows * cols * l.max(4) / 4)).max(5);
                    let mut time = |path: usize| {
                        let t0 = std::time::Instant::now();
                        for _ in 0..reps {
                            pool.install(|| match path {
                                0 => {
                                    let chunk = tile * w.len() / rows;
                                    yt.par_chunks_mut(tile * l).zip(w.par_chunks(chunk)).for_each(|(ys, ws)| {
                                        if dtype == GgmlDType::Q4K {
                                            avx2_q4k::dots(ws, &a, ys)
                                        } else {
                                            avx2_q6k::dots(ws, &a, ys)
                                        }
                                    })
                                }
                                1 => {
                                    let chunk = tile / 16 * nb * spec.panel_block_bytes();
                                    let mut parts = panel_parts(&mut yl, rows, tile);
                                    parts.par_iter_mut().zip(packed.par_chunks(chunk)).for_each(|(ys, ws)| dots(ws, &a, ys))
                                }
                                _ => {
                                    std::hint::black_box(candle.forward(&xt).unwrap());
                                }
                            });
                            std::hint::black_box((&yt, &yl));
                        }
                        t0.elapsed().as_secs_f64() / reps as f64 * 1e6
                    };
                    let mut us = [f64::MAX; 3];
                    for _ in 0..3 {
                        for (p, u) in us.iter_mut().enumerate() {
                            *u = u.min(time(p));
                        }
                    }
                    let gmac = (rows * cols * l) as f64 / us[1] / 1e3;
                    eprintln!(
                        "{threads} thr {dtype:?} [{rows}x{cols}] L={l}: avx2 {:.1} us, candle {:.1} us, panels {:.1} us \
                         ({:.2}x avx2, {:.2}x candle, {gmac:.1} GMAC/s)",
                        us[0], us[2], us[1], us[0] / us[1], us[2] / us[1]
                    );
                }
            }
        }
    }
}
