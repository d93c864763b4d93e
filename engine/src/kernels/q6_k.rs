//! Q6_K weight matrices multiplied by Q8_K activations (`q8_k.rs`), llama.cpp's layout
//! (`ggml_vec_dot_q6_K_q8_K`). Blocks hold 256 values in 16 sub-blocks of 16, each with a
//! signed 8-bit scale.
//!
//! Weight block, 210 bytes: `ql` (128 bytes, low 4 bits), `qh` (64 bytes, high 2 bits),
//! `scales` (16 i8), f16 `d`. Each half `n` (values `128n..128n+128`) uses `ql[64n..64n+64]`,
//! `qh[32n..32n+32]` and `scales[8n..8n+8]`; for `l` in 0..32, with `a = ql[64n+l]`,
//! `b = ql[64n+32+l]`, `h = qh[32n+l]`, the 6-bit values are
//! `u(128n+l) = a&15 | (h&3)<<4`, `u(+32) = b&15 | (h>>2&3)<<4`, `u(+64) = a>>4 | (h>>4&3)<<4`,
//! `u(+96) = b>>4 | (h>>6&3)<<4`, and value `i` is `d * scales[i/16] * (u(i) - 32)`.
//!
//! `dot = (d_w*d_x) * sum_j scales[j] * (sum_i u_i*q_x - 32*sum_i q_x)` over the 16-value runs
//! `j`, exact in i32, so the scalar and SIMD paths agree bit for bit.
//!
//! candle's own Q6_K CPU matmul gives a row different bits depending on how many rows are
//! batched with it; this kernel exists for the batching invariant of `matrix.rs`.

use half::f16;

use super::matrix::{Format, QuantMatrix};
use super::q8_k::{quantize_q8_k, Q8KRows, QK_K};
use super::Isa;

/// Bytes of one Q6_K block: 128 of `ql`, 64 of `qh`, 16 scales, f16 d.
pub(crate) const BLOCK_BYTES: usize = 210;

/// A `[rows, cols]` Q6_K weight matrix on our kernels.
pub(crate) type Q6KMatrix = QuantMatrix<Q6K>;

/// The Q6_K weight format (see the module docs).
pub(crate) enum Q6K {}

/// A block's `d` (the f16 in its last two bytes).
pub(crate) fn block_d(b: &[u8]) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[208], b[209]])).to_f32()
}

/// The float step shared by every path: one expression, so the paths round identically.
#[inline(always)]
pub(crate) fn block_value(dw: f32, dx: f32, sumi: i32) -> f32 {
    (dw * dx) * sumi as f32
}

/// `sum_j scales[j] * 32 * (sum of run j's activation quants)` for block `k` of `a`.
#[inline(always)]
pub(crate) fn offset_sum(scales: &[u8], a: &Q8KRows, k: usize) -> i32 {
    scales
        .iter()
        .zip(&a.sums[k * 16..k * 16 + 16])
        .map(|(&s, &x)| s as i8 as i32 * x)
        .sum::<i32>()
        * 32
}

/// The unsigned 6-bit value `i` (0..256) of a block.
fn value(b: &[u8], i: usize) -> i32 {
    let (n, r) = (i / 128, i % 128);
    let (quarter, l) = (r / 32, r % 32);
    let a = b[64 * n + l + if quarter % 2 == 1 { 32 } else { 0 }];
    let low = if quarter < 2 { a & 0x0F } else { a >> 4 };
    let high = (b[128 + 32 * n + l] >> (2 * quarter)) & 3;
    (low | high << 4) as i32
}

/// Scalar reference: `yt[i*l + t]` = dot of weight row `i` (Q6_K blocks in `w`) with token `t`.
pub(crate) fn dots_scalar(w: &[u8], a: &Q8KRows, yt: &mut [f32]) {
    let (nb, l) = (a.nb, a.l);
    if l == 0 {
        return;
    }
    for (wr, ys) in w.chunks_exact(nb * BLOCK_BYTES).zip(yt.chunks_exact_mut(l)) {
        for (t, y) in ys.iter_mut().enumerate() {
            let mut sumf = 0f32;
            for (b, wb) in wr.chunks_exact(BLOCK_BYTES).enumerate() {
                let k = t * nb + b;
                let xq = &a.qs[k * QK_K..(k + 1) * QK_K];
                let scales = &wb[192..208];
                let mut sumi = 0i32;
                for (j, &sc) in scales.iter().enumerate() {
                    let run: i32 = (16 * j..16 * j + 16)
                        .map(|i| value(wb, i) * xq[i] as i32)
                        .sum();
                    sumi += sc as i8 as i32 * run;
                }
                sumi -= offset_sum(scales, a, k);
                sumf += block_value(block_d(wb), a.d[k], sumi);
            }
            *y = sumf;
        }
    }
}

impl Format for Q6K {
    const DTYPE: candle_core::quantized::GgmlDType = candle_core::quantized::GgmlDType::Q6K;
    const BLOCK_VALUES: usize = QK_K;
    const BLOCK_BYTES: usize = BLOCK_BYTES;
    type Acts = Q8KRows;

    fn quantize(x: &[f32], l: usize, nb: usize) -> Q8KRows {
        quantize_q8_k(x, l, nb)
    }

    fn dots(isa: Isa, w: &[u8], a: &Q8KRows, yt: &mut [f32]) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 => super::avx2_q6k::dots(w, a, yt),
            _ => dots_scalar(w, a, yt),
        }
    }

    fn prepare(_isa: Isa, panels: bool, a: &Q8KRows) {
        if panels && a.l > 0 {
            let _ = a.sums_i16();
        }
    }

    const PANEL: Option<super::panel::Spec> = Some(super::panel::Q6_K_SPEC);

    #[cfg(target_arch = "x86_64")]
    fn panel_dots(w: &[u8], a: &Q8KRows, y: &mut [&mut [f32]]) {
        super::avx512_panel_k::dots_q6_k(w, a, y)
    }

    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        // candle's `BlockQ6K::to_float`: `d * sc * (u - 32)`.
        let d = block_d(b);
        for (i, o) in out.iter_mut().enumerate().take(QK_K) {
            let sc = b[192 + i / 16] as i8;
            *o = d * sc as f32 * (value(b, i) - 32) as f32;
        }
    }
}

#[cfg(test)]
#[path = "q6_k_tests.rs"]
mod tests;
