//! Q4_K weight matrices multiplied by Q8_K activations, llama.cpp's K-quant layout
//! (`ggml_vec_dot_q4_K_q8_K`). Blocks hold 256 values in 8 sub-blocks of 32.
//!
//! Weight block, 144 bytes: f16 `d`, f16 `dmin`, 12 bytes of 6-bit sub-block scales `sc[j]`
//! and mins `m[j]`, then 128 bytes of nibbles: bytes `32g..32g+32` hold sub-block `2g` in their
//! low nibbles and `2g+1` in their high nibbles. Value `i` of sub-block `j` is
//! `d*sc[j]*q - dmin*m[j]`.
//!
//! With Q8_K activations (`q8_k.rs`), per block
//! `dot = (d_w*d_x) * sum_j sc[j]*sum_i(q_w*q_x) - (dmin*d_x) * sum_j m[j]*sum_i(q_x)`, both
//! sums exact in i32, so the scalar and SIMD paths agree bit for bit: they differ only in how
//! they add integers.
//!
//! The model runs Q4_K on our kernels only where the AVX-512 VNNI panel kernels run
//! (`avx512_panel_k.rs`); elsewhere `model/weights.rs` keeps candle's repacked x86 Q4_K kernel,
//! which measured 2-4x faster than our AVX2 one (`avx2_q4k.rs`) and keeps a row's bits whatever
//! the batch.

use half::f16;

use super::matrix::{Format, QuantMatrix, QK};
use super::q8_k::{quantize_q8_k, Q8KRows, QK_K};
use super::Isa;

/// Bytes of one Q4_K block: f16 d, f16 dmin, 12 bytes of scales, 128 bytes of nibbles.
pub(crate) const BLOCK_BYTES: usize = 144;
/// Sub-blocks of 32 per block.
const SUBS: usize = QK_K / QK;

/// A `[rows, cols]` Q4_K weight matrix on our kernels.
pub(crate) type Q4KMatrix = QuantMatrix<Q4K>;

/// The Q4_K weight format (see the module docs).
pub(crate) enum Q4K {}

/// The 8 sub-block scales and 8 mins of a block from its 12 packed bytes: entries 0..4 are the
/// low 6 bits of bytes 0..4 (scales) and 4..8 (mins); entries 4..8 take their low 4 bits from
/// the nibbles of bytes 8..12 (scale low, min high) and their top 2 bits from the top bits of
/// bytes 0..4 (scales) and 4..8 (mins).
#[inline(always)]
pub(crate) fn scales_mins(s: &[u8; 12]) -> ([u8; SUBS], [u8; SUBS]) {
    let mut sc = [0u8; SUBS];
    let mut m = [0u8; SUBS];
    for j in 0..4 {
        sc[j] = s[j] & 63;
        m[j] = s[j + 4] & 63;
        sc[j + 4] = (s[j + 8] & 0x0F) | ((s[j] >> 6) << 4);
        m[j + 4] = (s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4);
    }
    (sc, m)
}

/// A weight block's header: (`d`, `dmin`, scales, mins).
pub(crate) fn block_header(b: &[u8]) -> (f32, f32, [u8; SUBS], [u8; SUBS]) {
    let h = |i: usize| f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32();
    let mut packed = [0u8; 12];
    packed.copy_from_slice(&b[4..16]);
    let (sc, m) = scales_mins(&packed);
    (h(0), h(2), sc, m)
}

/// The sum of the activation quants of sub-block `j` (32 values) of block `k`.
#[inline(always)]
pub(crate) fn sub_sum(a: &Q8KRows, k: usize, j: usize) -> i32 {
    a.sums[k * 16 + 2 * j] + a.sums[k * 16 + 2 * j + 1]
}

/// The float part shared by every path: a block's contribution from its two exact integer
/// sums. One expression, so the paths round identically.
#[inline(always)]
pub(crate) fn block_value(dw: f32, dmin: f32, dx: f32, sumi: i32, summ: i32) -> f32 {
    (dw * dx) * sumi as f32 - (dmin * dx) * summ as f32
}

/// Scalar reference: `yt[i*l + t]` = dot of weight row `i` (Q4_K blocks in `w`) with token `t`.
pub(crate) fn dots_scalar(w: &[u8], a: &Q8KRows, yt: &mut [f32]) {
    let (nb, l) = (a.nb, a.l);
    if l == 0 {
        return;
    }
    for (wr, ys) in w.chunks_exact(nb * BLOCK_BYTES).zip(yt.chunks_exact_mut(l)) {
        for (t, y) in ys.iter_mut().enumerate() {
            let mut sumf = 0f32;
            for (b, wb) in wr.chunks_exact(BLOCK_BYTES).enumerate() {
                let (dw, dmin, sc, m) = block_header(wb);
                let k = t * nb + b;
                let xq = &a.qs[k * QK_K..(k + 1) * QK_K];
                let (mut sumi, mut summ) = (0i32, 0i32);
                for j in 0..SUBS {
                    let (g, high) = (j / 2, j % 2 == 1);
                    let nibs = &wb[16 + 32 * g..16 + 32 * g + 32];
                    let isum: i32 = nibs
                        .iter()
                        .zip(&xq[j * QK..(j + 1) * QK])
                        .map(|(&q, &x)| if high { q >> 4 } else { q & 0x0F } as i32 * x as i32)
                        .sum();
                    sumi += sc[j] as i32 * isum;
                    summ += m[j] as i32 * sub_sum(a, k, j);
                }
                sumf += block_value(dw, dmin, a.d[k], sumi, summ);
            }
            *y = sumf;
        }
    }
}

impl Format for Q4K {
    const DTYPE: candle_core::quantized::GgmlDType = candle_core::quantized::GgmlDType::Q4K;
    const BLOCK_VALUES: usize = QK_K;
    const BLOCK_BYTES: usize = BLOCK_BYTES;
    type Acts = Q8KRows;

    fn quantize(x: &[f32], l: usize, nb: usize) -> Q8KRows {
        quantize_q8_k(x, l, nb)
    }

    fn dots(isa: Isa, w: &[u8], a: &Q8KRows, yt: &mut [f32]) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 => super::avx2_q4k::dots(w, a, yt),
            _ => dots_scalar(w, a, yt),
        }
    }

    fn prepare(_isa: Isa, panels: bool, a: &Q8KRows) {
        if panels && a.l > 0 {
            let _ = a.sums_i16();
        }
    }

    const PANEL: Option<super::panel::Spec> = Some(super::panel::Q4_K_SPEC);

    #[cfg(target_arch = "x86_64")]
    fn panel_dots(w: &[u8], a: &Q8KRows, y: &mut [&mut [f32]]) {
        super::avx512_panel_k::dots_q4_k(w, a, y)
    }

    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        // candle's `BlockQ4K::to_float`: `d * sc * q - dmin * m`, sub-block by sub-block.
        let (d, dmin, sc, m) = block_header(b);
        for (j, o) in out.chunks_exact_mut(QK).enumerate().take(SUBS) {
            let (d1, m1) = (d * sc[j] as f32, dmin * m[j] as f32);
            let nibs = &b[16 + 32 * (j / 2)..][..32];
            for (o, &q) in o.iter_mut().zip(nibs) {
                let q = if j % 2 == 0 { q & 0x0F } else { q >> 4 };
                *o = d1 * q as f32 - m1;
            }
        }
    }
}

#[cfg(test)]
#[path = "q4_k_tests.rs"]
mod tests;
