//! Our own CPU matmul kernels for quantized weights: Q4_1 (candle runs it with scalar code),
//! Q8_0 and Q4_0 (candle's SIMD kernels read every weight block once per activation row; ours
//! once per batch), Q6_K (candle's gives a row different bits depending on the batch) and Q4_K
//! (wired only where the panel kernels run: elsewhere candle's is faster than our AVX2 one);
//! and dense f32 weights of Hugging Face checkpoints
//! (candle's f32 gemm does not promise batch-independent rows). `matrix.rs` owns the shared
//! matmul driver and its batch-independence invariant; each format has a scalar reference
//! (`q4_1.rs`, `q8_0.rs`, `q4_0.rs`, `q6_k.rs`, `q4_k.rs`, `dense.rs`; activations in `q8_0.rs`,
//! `q8_k.rs`).
//!
//! Owns the choice of instruction set (AVX-512 VNNI, AVX2+FMA+F16C or scalar), made once at
//! run time with `is_x86_feature_detected!` and overridable with the `AI_SANDBOX_KERNEL`
//! environment variable (`scalar`, `avx2` (no VNNI), `lanes` (no panels), `avx512`; `candle` keeps candle's kernels for every
//! type, see `model/weights.rs`; `avx2-v1` the previous AVX2 tiles for Q4_1/Q8_0/Q4_0 and the
//! scalar activation quantizer, for A/B runs) for tests and benchmarks. All `unsafe` code of
//! the crate's kernels lives in the per-ISA modules (`avx2*.rs`, `avx512*.rs`).
//!
//! Q4_1, Q8_0 and Q4_0 run on AVX2 in `avx2_lanes.rs` (one (row, token) pair per vector lane,
//! bit-identical to the scalar references; their integer dots on VNNI where the CPU has it,
//! [`vnni`]; activations re-laid out by `interleave.rs`,
//! quantized by `avx2_quant.rs`); `avx2.rs` and `avx2_q8.rs` hold the previous tiles
//! (`avx2-v1`).
//!
//! Where the CPU has AVX-512 F/BW/VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later), Q4_1, Q8_0,
//! Q4_0, Q4_K and Q6_K matrices are stored in panels of 16 rows at load (`panel.rs`) and run on
//! the 512-bit kernels of `avx512_panel.rs` and `avx512_panel_k.rs` ([`panels`]);
//! `AI_SANDBOX_KERNEL=lanes` keeps the AVX2 kernels (lanes with VNNI for the 32-value formats,
//! candle's for Q4_K) for A/B runs.
//!
//! Only Q4_1 has an AVX-512 `Isa` path (`avx512.rs`, one row at a time; older than the panels and
//! unrelated to them): `Avx512` runs the other formats' AVX2 kernels.
//!
//! The AVX-512 path is behind the off-by-default cargo feature `avx512`: on this project's
//! 2-core EPYC it decodes no faster than AVX2 (the matmuls are no longer the bottleneck), and
//! its summation order brings the SmolLM2 reference test close to its tolerance.

mod act;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_act;
#[cfg(target_arch = "x86_64")]
mod avx2_block;
#[cfg(target_arch = "x86_64")]
mod avx2_dense;
#[cfg(target_arch = "x86_64")]
mod avx2_k;
#[cfg(target_arch = "x86_64")]
mod avx2_lanes;
#[cfg(target_arch = "x86_64")]
mod avx2_q4k;
#[cfg(target_arch = "x86_64")]
mod avx2_q6k;
#[cfg(target_arch = "x86_64")]
mod avx2_q8;
#[cfg(target_arch = "x86_64")]
mod avx2_quant;
#[cfg(target_arch = "x86_64")]
mod avx2_reduce;
#[cfg(all(target_arch = "x86_64", feature = "avx512"))]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_panel;
#[cfg(target_arch = "x86_64")]
mod avx512_panel_k;
mod dense;
// Read only by the x86-64 kernels.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod interleave;
mod matrix;
// Packed only where the x86-64 panel kernels run.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
mod panel;
mod q4_0;
mod q4_1;
mod q4_k;
mod q6_k;
mod q8_0;
mod q8_k;
#[cfg(test)]
mod test_util;

use std::sync::OnceLock;

pub(crate) use act::swiglu;
pub(crate) use dense::F32Matrix;
pub(crate) use matrix::{Format, QuantMatrix};
pub(crate) use q4_0::Q4_0Matrix;
pub(crate) use q4_1::Q4_1Matrix;
pub(crate) use q4_k::Q4KMatrix;
pub(crate) use q6_k::Q6KMatrix;
pub(crate) use q8_0::Q8_0Matrix;

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

/// Which `vpdpbusd` the AVX2 lane kernels (`avx2_lanes.rs`) use for their integer dots: the
/// same sums, so the same bits, as AVX2's `maddubs` + `madd` in fewer instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Vnni {
    /// AVX2 only.
    None,
    /// AVX-VNNI (VEX, 256-bit: Alder Lake, Sapphire Rapids and later, Zen 5).
    Avx,
    /// AVX512-VNNI + AVX512-VL on 256-bit vectors (Cascade Lake, Ice Lake, Zen 4).
    Avx512,
}

impl Vnni {
    /// Whether this CPU can run `self` (on top of `Isa::Avx2`, which the caller checks).
    #[allow(unreachable_code)]
    pub(crate) fn available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        return match self {
            Vnni::None => true,
            Vnni::Avx => is_x86_feature_detected!("avxvnni"),
            Vnni::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
        };
        self == Vnni::None
    }
}

/// The `Vnni` variant of the lane kernels: the best this CPU has, unless `AI_SANDBOX_KERNEL`
/// names a plain AVX2 path (`avx2`, `avx2-v1`) or `scalar`. Decided once.
pub(crate) fn vnni() -> Vnni {
    static VNNI: OnceLock<Vnni> = OnceLock::new();
    *VNNI.get_or_init(|| match std::env::var("AI_SANDBOX_KERNEL").as_deref() {
        Ok("avx2" | "avx2-v1" | "scalar") => Vnni::None,
        _ => [Vnni::Avx, Vnni::Avx512]
            .into_iter()
            .find(|v| v.available())
            .unwrap_or(Vnni::None),
    })
}

/// Whether Q4_1, Q8_0, Q4_0, Q4_K and Q6_K matrices go into panels for the AVX-512 VNNI kernels
/// (`avx512_panel.rs`): the process runs `Isa::Avx2` with VNNI (so not `AI_SANDBOX_KERNEL=avx2`,
/// `avx2-v1` or `scalar`), the CPU has AVX-512 F/BW/VNNI, and `AI_SANDBOX_KERNEL` is not
/// `lanes`. Decided once.
pub(crate) fn panels() -> bool {
    static PANELS: OnceLock<bool> = OnceLock::new();
    *PANELS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        return isa() == Isa::Avx2
            && vnni() != Vnni::None
            && std::env::var("AI_SANDBOX_KERNEL").map_or(true, |v| v != "lanes")
            && avx512_panel::available();
        #[allow(unreachable_code)]
        false
    })
}

/// The matmul path this process runs for Q4_1/Q8_0/Q4_0 (and, with panels, the K-quants), in
/// words (for the startup log).
pub(crate) fn describe() -> &'static str {
    match (isa(), vnni()) {
        (Isa::Scalar, _) => "scalar",
        (Isa::Avx512, _) => "avx512 (q4_1), avx2 lanes",
        _ if avx2_v1() => "avx2-v1",
        _ if panels() => "avx512-vnni panels",
        (_, Vnni::Avx) => "avx2 lanes + avx-vnni",
        (_, Vnni::Avx512) => "avx2 lanes + avx512-vnni",
        (_, Vnni::None) => "avx2 lanes",
    }
}

/// Whether `AI_SANDBOX_KERNEL=avx2-v1` asks for the previous AVX2 tiles of Q4_1, Q8_0 and Q4_0
/// (one float accumulator per (row, token) pair: `avx2.rs`, `avx2_q8.rs`) instead of
/// `avx2_lanes.rs`, for A/B benchmarks. Their results differ in the last bits. Decided once.
pub(crate) fn avx2_v1() -> bool {
    static V1: OnceLock<bool> = OnceLock::new();
    *V1.get_or_init(|| std::env::var("AI_SANDBOX_KERNEL").is_ok_and(|v| v == "avx2-v1"))
}

/// The instruction set the model's kernels use: `AI_SANDBOX_KERNEL` (`scalar`, `avx2`,
/// `avx512`) when set and available on this CPU, else the best one available. Decided once.
pub(crate) fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        let wanted = match std::env::var("AI_SANDBOX_KERNEL").as_deref() {
            Ok("scalar") => Some(Isa::Scalar),
            Ok("avx2" | "avx2-v1") => Some(Isa::Avx2),
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
