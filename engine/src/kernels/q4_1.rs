//! Q4_1 weight matrices multiplied by f32 activations the way GGML does it
//! (`ggml_vec_dot_q4_1_q8_1`): each activation row is quantized to Q8_1 blocks of 32
//! (`d = amax/127`, `q = round(x/d)`, `s = d*sum(q)`, `d` and `s` stored as f16), and
//! `dot = sum over blocks of d_w*d_x*sum(q_w*q_x) + m_w*s_x`. The weights stay exactly as the
//! GGUF stores them (20-byte blocks: f16 d, f16 m, 16 bytes of nibbles; low nibbles are
//! elements 0..16, high nibbles 16..32), borrowed from candle's `QTensor`, never requantized.
//!
//! The matmul itself (tiles of output rows on the rayon pool) is `matrix.rs`'s; within a tile
//! each weight row is read once for all L tokens. The AVX2 path is `avx2_lanes.rs` (the previous
//! one, `AI_SANDBOX_KERNEL=avx2-v1`, is `avx2.rs`); activations quantize with `avx2_quant.rs`.

use candle_core::quantized::GgmlDType;
use half::f16;

use super::matrix::{Format, QuantMatrix};
use super::Isa;

pub(crate) use super::matrix::QK;
/// Bytes of one Q4_1 block: f16 d, f16 m, 16 bytes of nibbles.
pub(crate) const BLOCK_BYTES: usize = 20;

/// A `[rows, cols]` Q4_1 weight matrix on our kernels.
pub(crate) type Q4_1Matrix = QuantMatrix<Q4_1>;

/// The Q4_1 weight format (see the module docs).
pub(crate) enum Q4_1 {}

/// Activations quantized to Q8_1: `l` rows of `nb` blocks. `d` and `s` hold the f16-rounded
/// values (as GGML stores them) widened to f32 so the kernels need no conversion.
pub(crate) struct Q8_1Rows {
    pub l: usize,
    pub nb: usize,
    /// `l * nb * 32` quants, row-major.
    pub qs: Vec<i8>,
    /// `l * nb` block scales.
    pub d: Vec<f32>,
    /// `l * nb` values of `d * sum(q)`.
    pub s: Vec<f32>,
    /// The same activations laid out for `avx2_lanes.rs`, built on first use.
    pub lanes: std::sync::OnceLock<super::interleave::Interleaved>,
}

/// Quantizes `l` rows of `nb*32` floats to Q8_1 (`quantize_row_q8_1_ref` semantics).
pub(crate) fn quantize_q8_1(x: &[f32], l: usize, nb: usize) -> Q8_1Rows {
    let n = l * nb;
    let mut out = Q8_1Rows {
        l,
        nb,
        qs: vec![0; n * QK],
        lanes: std::sync::OnceLock::new(),
        d: vec![0.0; n],
        s: vec![0.0; n],
    };
    #[cfg(target_arch = "x86_64")]
    if super::q8_0::avx2_quantizer() {
        super::avx2_quant::quantize_rows(&x[..n * QK], &mut out.qs, &mut out.d, &mut out.s);
        return out;
    }
    for (i, (xb, qb)) in x
        .chunks_exact(QK)
        .zip(out.qs.chunks_exact_mut(QK))
        .enumerate()
        .take(n)
    {
        let (d, sum) = super::q8_0::quantize_block(xb, qb);
        out.d[i] = f16::from_f32(d).to_f32();
        out.s[i] = f16::from_f32(sum as f32 * d).to_f32();
    }
    out
}

/// Scalar reference: dots of one weight row (`nb` Q4_1 blocks) with every activation row.
pub(crate) fn row_dots_scalar(w: &[u8], a: &Q8_1Rows, out: &mut [f32]) {
    let nb = a.nb;
    for (t, o) in out.iter_mut().enumerate().take(a.l) {
        let mut sumf = 0f32;
        for (b, wb) in w.chunks_exact(BLOCK_BYTES).enumerate().take(nb) {
            let dw = f16::from_bits(u16::from_le_bytes([wb[0], wb[1]])).to_f32();
            let mw = f16::from_bits(u16::from_le_bytes([wb[2], wb[3]])).to_f32();
            let k = t * nb + b;
            let xq = &a.qs[k * QK..(k + 1) * QK];
            let mut sumi = 0i32;
            for j in 0..QK / 2 {
                let v0 = (wb[4 + j] & 0x0F) as i32;
                let v1 = (wb[4 + j] >> 4) as i32;
                sumi += v0 * xq[j] as i32 + v1 * xq[j + QK / 2] as i32;
            }
            sumf += sumi as f32 * (dw * a.d[k]) + mw * a.s[k];
        }
        *o = sumf;
    }
}

/// Dots of one weight row with every activation row, on `isa` (which must be available).
fn row_dots(isa: Isa, w: &[u8], a: &Q8_1Rows, out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => super::avx2::row_dots(w, a, out),
        #[cfg(all(target_arch = "x86_64", feature = "avx512"))]
        Isa::Avx512 => super::avx512::row_dots(w, a, out),
        _ => row_dots_scalar(w, a, out),
    }
}

impl Format for Q4_1 {
    const DTYPE: GgmlDType = GgmlDType::Q4_1;
    const BLOCK_BYTES: usize = BLOCK_BYTES;
    type Acts = Q8_1Rows;

    fn quantize(x: &[f32], l: usize, nb: usize) -> Q8_1Rows {
        quantize_q8_1(x, l, nb)
    }

    fn prepare(isa: Isa, panels: bool, a: &Q8_1Rows) {
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx2 && !super::avx2_v1() && !panels && a.l > 0 {
            let _ = super::avx2_lanes::prepare_q4_1(a);
        }
        let _ = (isa, panels, a);
    }

    #[cfg(target_arch = "x86_64")]
    const PANEL: Option<super::panel::Spec> = Some(super::panel::Q4_1_SPEC);

    #[cfg(target_arch = "x86_64")]
    fn panel_dots(w: &[u8], a: &Q8_1Rows, y: &mut [&mut [f32]]) {
        super::avx512_panel::dots_q4_1(w, a, y)
    }

    fn dequantize_block(b: &[u8], out: &mut [f32]) {
        // candle's `BlockQ4_1::to_float`: `q * d + m`.
        let d = f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        let m = f16::from_bits(u16::from_le_bytes([b[2], b[3]])).to_f32();
        for (j, &q) in b[4..4 + QK / 2].iter().enumerate() {
            out[j] = f32::from(q & 0x0F) * d + m;
            out[j + QK / 2] = f32::from(q >> 4) * d + m;
        }
    }

    fn dots(isa: Isa, w: &[u8], a: &Q8_1Rows, yt: &mut [f32]) {
        if a.l == 0 {
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if isa == Isa::Avx2 {
            if super::avx2_v1() {
                return super::avx2::dots(w, a, yt);
            }
            return super::avx2_lanes::dots_q4_1(super::vnni(), w, a, yt);
        }
        for (y, wr) in yt
            .chunks_exact_mut(a.l)
            .zip(w.chunks_exact(a.nb * BLOCK_BYTES))
        {
            row_dots(isa, wr, a, y);
        }
    }
}

#[cfg(test)]
#[path = "q4_1_tests.rs"]
mod tests;
