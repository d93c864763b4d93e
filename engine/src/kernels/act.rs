//! The MLP's element-wise activation, SwiGLU (`silu(gate) * up`), on the host: a portable
//! reference (`v / (1 + exp(-v)) * u`, candle's formula, libm's `expf`) and, where the process
//! runs AVX2 ([`super::isa`]), `avx2_act.rs`'s 8-lane version with its own `exp` (a degree-7
//! polynomial after a Cody-Waite reduction, within 2 ulp of the exact value, 1.34 at worst over -100..100; tests).
//!
//! Invariant: an element's result depends only on its own gate and up values, never on where it
//! sits in the slice (the AVX2 path runs a ragged end through the same vector code), so a row's
//! values do not depend on the batch or on how the work is split.

use super::Isa;

/// `g[i] = silu(g[i]) * u[i]` for every `i`; `g.len() == u.len()`.
pub(crate) fn swiglu(g: &mut [f32], u: &[f32]) {
    swiglu_with(super::isa(), g, u)
}

fn swiglu_with(isa: Isa, g: &mut [f32], u: &[f32]) {
    assert_eq!(g.len(), u.len(), "swiglu: gate and up differ in length");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 if isa.available() => super::avx2_act::swiglu(g, u),
        _ => swiglu_scalar(g, u),
    }
}

/// The reference: candle's `gate.silu()? * up`, value for value.
fn swiglu_scalar(g: &mut [f32], u: &[f32]) {
    for (g, &u) in g.iter_mut().zip(u) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// silu(g) * u in f64.
    fn exact(g: f32, u: f32) -> f64 {
        let g = g as f64;
        g / (1.0 + (-g).exp()) * u as f64
    }

    /// Gate values over the whole useful range and past it, ends included.
    fn gates() -> Vec<f32> {
        let mut v: Vec<f32> = (-20_000..=20_000).map(|i| i as f32 * 0.005).collect(); // -100..100
        v.extend([0.0, -0.0, 1e-30, -1e-30, 86.9, -86.9, 87.5, -87.5, 88.7, -88.7, 1e6, -1e6, f32::MAX, f32::MIN]);
        v
    }

    #[test]
    fn scalar_is_candles_formula() {
        use candle_core::{Device, Tensor};
        let g = gates();
        let u: Vec<f32> = (0..g.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
        let tg = Tensor::new(g.as_slice(), &Device::Cpu).unwrap();
        let tu = Tensor::new(u.as_slice(), &Device::Cpu).unwrap();
        let want = (tg.silu().unwrap() * tu).unwrap().to_vec1::<f32>().unwrap();
        let mut got = g.clone();
        swiglu_with(Isa::Scalar, &mut got, &u);
        assert_eq!(got, want);
    }

    #[test]
    fn simd_is_within_a_few_ulp_of_exact() {
        if !Isa::Avx2.available() {
            return;
        }
        let g = gates();
        let u: Vec<f32> = (0..g.len()).map(|i| if i % 3 == 0 { -1.5 } else { 1.0 }).collect();
        let mut got = g.clone();
        swiglu_with(Isa::Avx2, &mut got, &u);
        let mut worst = 0f64;
        for ((&gi, &ui), &y) in g.iter().zip(&u).zip(&got) {
            let want = exact(gi, ui);
            if !want.is_finite() {
                assert_eq!(y as f64, want, "g={gi}");
                continue;
            }
            // Relative error in units of f32's epsilon; results under 1e-30 in size (gates
            // below about -70, whose exp the clamp bounds) only need to be tiny.
            if want.abs() < 1e-30 {
                assert!((y as f64).abs() < 1e-30, "g={gi}: {y} vs {want}");
                continue;
            }
            let err = ((y as f64 - want) / want).abs() / f32::EPSILON as f64;
            worst = worst.max(err);
            assert!(err <= 2.0, "g={gi} u={ui}: {y} vs {want} ({err:.2} eps)");
        }
        assert!(worst > 0.0, "no rounding at all: the check compared nothing");
    }

    #[test]
    fn simd_keeps_nan_and_does_not_depend_on_position() {
        if !Isa::Avx2.available() {
            return;
        }
        let mut g = vec![f32::NAN, 1.0, -3.0, f32::INFINITY];
        swiglu_with(Isa::Avx2, &mut g, &[1.0; 4]);
        assert!(g[0].is_nan());
        assert_eq!(g[3], f32::INFINITY);
        // The same values at every offset of a 37-long slice (vector body and ragged end).
        let base: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 0.731).collect();
        let mut whole = base.clone();
        swiglu_with(Isa::Avx2, &mut whole, &[0.5; 37]);
        for start in 0..37 {
            for end in start + 1..=37 {
                let mut part = base[start..end].to_vec();
                swiglu_with(Isa::Avx2, &mut part, &vec![0.5; end - start]);
                assert_eq!(part, whole[start..end], "{start}..{end}");
            }
        }
    }
}
