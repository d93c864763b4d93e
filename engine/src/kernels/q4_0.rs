//! Q4_0 weight matrices multiplied by Q8_0 activations (`q8_0.rs`) the way GGML does it
//! (`ggml_vec_dot_q4_0_q8_0`): weight blocks are 18 bytes, f16 `d` then 16 bytes of nibbles
//! (low nibbles are elements 0..16, high nibbles 16..32), each value `(q - 8) * d`, and
//! `dot = sum over blocks of (d_w*d_x) * sum((q_w - 8)*q_x)`.
//!
//! This file holds the scalar reference; the SIMD paths are in `avx2_lanes.rs` and, where the
//! CPU has AVX-512 VNNI, `avx512_panel.rs` (and the previous ones, `AI_SANDBOX_KERNEL=avx2-v1`,
//! in `avx2_q8.rs`).

use super::matrix::{Format, QuantMatrix, QK};
use super::q8_0::{quantize_q8_0, scalar_dots, Q8_0Rows};
use super::Isa;

/// Bytes of one Q4_0 block: f16 d, 16 bytes of nibbles.
pub(crate) const BLOCK_BYTES: usize = 18;

/// A `[rows, cols]` Q4_0 weight matrix on our kernels.
pub(crate) type Q4_0Matrix = QuantMatrix<Q4_0>;

/// The Q4_0 weight format (see the module docs).
pub(crate) enum Q4_0 {}

/// Scalar reference: `yt[i*l + t]` = dot of weight row `i` (Q4_0 blocks in `w`) with token `t`.
pub(crate) fn dots_scalar(w: &[u8], a: &Q8_0Rows, yt: &mut [f32]) {
    scalar_dots(w, BLOCK_BYTES, a, yt, |wb, xq| {
        let (lo, hi) = xq.split_at(QK / 2);
        wb[2..2 + QK / 2]
            .iter()
            .zip(lo.iter().zip(hi))
            .map(|(&q, (&x0, &x1))| {
                ((q & 0x0F) as i32 - 8) * x0 as i32 + ((q >> 4) as i32 - 8) * x1 as i32
            })
            .sum()
    })
}

impl Format for Q4_0 {
    const DTYPE: candle_core::quantized::GgmlDType = candle_core::quantized::GgmlDType::Q4_0;
    const BLOCK_BYTES: usize = BLOCK_BYTES;
    type Acts = Q8_0Rows;

    fn quantize(x: &[f32], l: usize, nb: usize) -> Q8_0Rows {
        quantize_q8_0(x, l, nb)
    }

    fn prepare(isa: Isa, panels: bool, a: &Q8_0Rows) {
        // The same activations as Q8_0 weights take, prepared the same way.
        <super::q8_0::Q8_0 as Format>::prepare(isa, panels, a)
    }

    fn dots(isa: Isa, w: &[u8], a: &Q8_0Rows, yt: &mut [f32]) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 if super::avx2_v1() => super::avx2_q8::dots_q4_0(w, a, yt),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 => super::avx2_lanes::dots_q4_0(super::vnni(), w, a, yt),
            _ => dots_scalar(w, a, yt),
        }
    }

    #[cfg(target_arch = "x86_64")]
    const PANEL: Option<super::panel::Spec> = Some(super::panel::Q4_0_SPEC);

    #[cfg(target_arch = "x86_64")]
    fn panel_dots(w: &[u8], a: &Q8_0Rows, y: &mut [&mut [f32]]) {
        super::avx512_panel::dots_q4_0(w, a, y)
    }

    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        // candle's `BlockQ4_0::to_float`: `(q - 8) * d`.
        let d = super::q8_0::block_scale(b);
        for (j, &q) in b[2..2 + QK / 2].iter().enumerate() {
            out[j] = f32::from(i16::from(q & 0x0F) - 8) * d;
            out[j + QK / 2] = f32::from(i16::from(q >> 4) - 8) * d;
        }
    }
}

#[cfg(test)]
#[path = "q4_0_tests.rs"]
mod tests;
