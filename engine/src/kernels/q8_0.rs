//! Q8_0 activations, and Q8_0 weight matrices multiplied by them the way GGML does it
//! (`ggml_vec_dot_q8_0_q8_0`). Each activation row is quantized to Q8_0 blocks of 32
//! (`quantize_row_q8_0_ref`: `d = amax/127`, `q = round(x/d)`, `d` stored as f16), and
//! `dot = sum over blocks of (d_w*d_x) * sum(q_w*q_x)`. Weight blocks are 34 bytes: f16 `d`,
//! then 32 signed quants. Q4_0 weights (`q4_0.rs`) use the same activations.
//!
//! This file holds the scalar reference; the SIMD paths are in `avx2_lanes.rs` (and the
//! previous ones, `AI_SANDBOX_KERNEL=avx2-v1`, in `avx2_q8.rs`).

use half::f16;

use super::matrix::{Format, QuantMatrix, QK};
use super::Isa;

/// Bytes of one Q8_0 block: f16 d, 32 i8 quants.
pub(crate) const BLOCK_BYTES: usize = 34;

/// A `[rows, cols]` Q8_0 weight matrix on our kernels.
pub(crate) type Q8_0Matrix = QuantMatrix<Q8_0>;

/// The Q8_0 weight format (see the module docs).
pub(crate) enum Q8_0 {}

/// Activations quantized to Q8_0: `l` rows of `nb` blocks. `d` holds the f16-rounded scales
/// (as GGML stores them) widened to f32 so the kernels need no conversion.
pub(crate) struct Q8_0Rows {
    pub l: usize,
    pub nb: usize,
    /// `l * nb * 32` quants, row-major.
    pub qs: Vec<i8>,
    /// `l * nb` block scales.
    pub d: Vec<f32>,
    /// The same activations laid out for `avx2_lanes.rs`, built on first use.
    pub lanes: std::sync::OnceLock<super::interleave::Interleaved>,
    /// `sum(q)` of each block (`l * nb`), for the panel kernels; built on first use.
    pub sums: std::sync::OnceLock<Vec<i32>>,
}

impl Q8_0Rows {
    /// Each block's quant sum, `[token][block]`.
    pub(crate) fn block_sums(&self) -> &[i32] {
        self.sums.get_or_init(|| {
            self.qs.chunks_exact(QK).take(self.l * self.nb).map(|b| b.iter().map(|&q| i32::from(q)).sum()).collect()
        })
    }
}

/// Quantizes `l` rows of `nb*32` floats to Q8_0 (`quantize_row_q8_0_ref` semantics: the
/// reciprocal of the f32 scale quantizes, its f16 rounding is what the dot products use).
pub(crate) fn quantize_q8_0(x: &[f32], l: usize, nb: usize) -> Q8_0Rows {
    let n = l * nb;
    let mut out = Q8_0Rows {
        l,
        nb,
        qs: vec![0; n * QK],
        lanes: std::sync::OnceLock::new(),
        sums: std::sync::OnceLock::new(),
        d: vec![0.0; n],
    };
    #[cfg(target_arch = "x86_64")]
    if avx2_quantizer() {
        super::avx2_quant::quantize_rows(&x[..n * QK], &mut out.qs, &mut out.d, &mut []);
        return out;
    }
    for ((xb, qb), d_out) in x
        .chunks_exact(QK)
        .zip(out.qs.chunks_exact_mut(QK))
        .zip(out.d.iter_mut())
    {
        let (d, _) = quantize_block(xb, qb);
        *d_out = f16::from_f32(d).to_f32();
    }
    out
}

/// One block of 32 activations: `qb[j] = round(xb[j] / d)` with `d = amax / 127` (f32, before
/// the f16 rounding); returns `(d, sum of qb)`. Runs the AVX2 copy (`avx2_quant.rs`, the same
/// bits) unless `AI_SANDBOX_KERNEL` is `scalar` or `avx2-v1` (the previous AVX2 path entirely,
/// for A/B runs) or the CPU lacks AVX2.
pub(crate) fn quantize_block(xb: &[f32], qb: &mut [i8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if avx2_quantizer() {
        return super::avx2_quant::quantize_block(xb, qb);
    }
    quantize_block_scalar(xb, qb)
}

/// Whether activations are quantized by `avx2_quant.rs` (see [`quantize_block`]). Decided once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_quantizer() -> bool {
    static AVX2: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVX2.get_or_init(|| super::isa() != Isa::Scalar && !super::avx2_v1() && Isa::Avx2.available())
}

/// The scalar reference of [`quantize_block`].
pub(crate) fn quantize_block_scalar(xb: &[f32], qb: &mut [i8]) -> (f32, i32) {
    let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut sum = 0i32;
    for (q, v) in qb.iter_mut().zip(xb) {
        // `as` saturates (and maps NaN to 0): |v*id| <= 127 for finite input anyway.
        *q = (v * id).round() as i8;
        sum += *q as i32;
    }
    (d, sum)
}

/// The f16 scale at the start of a block, as f32.
pub(crate) fn block_scale(block: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([block[0], block[1]])).to_f32()
}

/// Scalar reference: `yt[i*l + t]` = dot of weight row `i` (Q8_0 blocks in `w`) with token `t`.
pub(crate) fn dots_scalar(w: &[u8], a: &Q8_0Rows, yt: &mut [f32]) {
    scalar_dots(w, BLOCK_BYTES, a, yt, |wb, xq| {
        wb[2..2 + QK]
            .iter()
            .zip(xq)
            .map(|(&q, &x)| q as i8 as i32 * x as i32)
            .sum()
    })
}

/// The scalar driver of every Q8_0-activation format: `block_dot(weight block, 32 activation
/// quants)` gives a block's integer sum, scaled by `d_w*d_x` and summed over blocks in order.
pub(crate) fn scalar_dots(
    w: &[u8],
    block_bytes: usize,
    a: &Q8_0Rows,
    yt: &mut [f32],
    block_dot: impl Fn(&[u8], &[i8]) -> i32,
) {
    let (nb, l) = (a.nb, a.l);
    if l == 0 {
        return;
    }
    for (wr, ys) in w.chunks_exact(nb * block_bytes).zip(yt.chunks_exact_mut(l)) {
        for (t, y) in ys.iter_mut().enumerate() {
            let mut sumf = 0f32;
            for (b, wb) in wr.chunks_exact(block_bytes).enumerate() {
                let k = t * nb + b;
                let sumi = block_dot(wb, &a.qs[k * QK..(k + 1) * QK]);
                sumf += sumi as f32 * (block_scale(wb) * a.d[k]);
            }
            *y = sumf;
        }
    }
}

impl Format for Q8_0 {
    const DTYPE: candle_core::quantized::GgmlDType = candle_core::quantized::GgmlDType::Q8_0;
    const BLOCK_BYTES: usize = BLOCK_BYTES;
    type Acts = Q8_0Rows;

    fn quantize(x: &[f32], l: usize, nb: usize) -> Q8_0Rows {
        quantize_q8_0(x, l, nb)
    }

    fn prepare(isa: Isa, panels: bool, a: &Q8_0Rows) {
        if panels {
            let _ = a.block_sums();
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if matches!(isa, Isa::Avx2 | Isa::Avx512) && !super::avx2_v1() {
            let _ = super::avx2_lanes::prepare_q8_0(a);
        }
        let _ = (isa, a);
    }

    #[cfg(target_arch = "x86_64")]
    const PANEL: Option<super::panel::Spec> = Some(super::panel::Q8_0_SPEC);

    #[cfg(target_arch = "x86_64")]
    fn panel_dots(w: &[u8], a: &Q8_0Rows, y: &mut [&mut [f32]]) {
        super::avx512_panel::dots_q8_0(w, a, y)
    }

    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        // candle's `BlockQ8_0::to_float`: `q * d`.
        let d = block_scale(b);
        for (o, &q) in out.iter_mut().zip(&b[2..2 + QK]) {
            *o = f32::from(q as i8) * d;
        }
    }

    fn dots(isa: Isa, w: &[u8], a: &Q8_0Rows, yt: &mut [f32]) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 if super::avx2_v1() => super::avx2_q8::dots_q8_0(w, a, yt),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 => super::avx2_lanes::dots_q8_0(super::vnni(), w, a, yt),
            _ => dots_scalar(w, a, yt),
        }
    }
}

#[cfg(test)]
#[path = "q8_0_tests.rs"]
mod tests;
