//! Our own CPU matmul kernels for quantized weights that candle only runs with scalar code
//! (today: Q4_1). Owns the choice of instruction set (AVX-512 VNNI, AVX2+FMA+F16C or scalar),
//! made once at run time with `is_x86_feature_detected!` and overridable with the
//! `AI_SANDBOX_KERNEL` environment variable (`scalar`, `avx2`, `avx512`) for tests and
//! benchmarks. All `unsafe` code of the crate's kernels lives in the per-ISA modules.
//!
//! The AVX-512 path is behind the off-by-default cargo feature `avx512`: on this project's
//! 2-core EPYC it decodes no faster than AVX2 (the matmuls are no longer the bottleneck), and
//! its summation order brings the SmolLM2 reference test close to its tolerance.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(all(target_arch = "x86_64", feature = "avx512"))]
mod avx512;
mod q4_1;

use std::sync::OnceLock;

pub(crate) use q4_1::Q4_1Matrix;

/// An instruction set a kernel can run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    /// Portable Rust; the reference the SIMD paths are tested against.
    Scalar,
    /// AVX2 + FMA + F16C (x86-64 only).
    Avx2,
    /// AVX-512 F/BW/VL + VNNI (x86-64 with the `avx512` cargo feature only).
    Avx512,
}

impl Isa {
    /// Whether this CPU can run `self` (Scalar always can).
    pub(crate) fn available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
            Isa::Avx512 => {
                Isa::Avx2.available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The best instruction set this CPU has.
    fn best() -> Isa {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|i| i.available())
            .unwrap_or(Isa::Scalar)
    }
}

/// The instruction set the model's kernels use: `AI_SANDBOX_KERNEL` (`scalar`, `avx2`,
/// `avx512`) when set and available on this CPU, else the best one available. Decided once.
pub(crate) fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let wanted = match std::env::var("AI_SANDBOX_KERNEL").as_deref() {
            Ok("scalar") => Some(Isa::Scalar),
            Ok("avx2") => Some(Isa::Avx2),
            Ok("avx512") => Some(Isa::Avx512),
            _ => None,
        };
        match wanted {
            Some(i) if i.available() => i,
            Some(i) => {
                tracing::warn!(
                    "AI_SANDBOX_KERNEL asks for {i:?}, which this CPU lacks; using the best available"
                );
                Isa::best()
            }
            None => Isa::best(),
        }
    })
}
