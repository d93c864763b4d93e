//! Q4_1 weight matrices multiplied by f32 activations the way GGML does it
//! (`ggml_vec_dot_q4_1_q8_1`): each activation row is quantized to Q8_1 blocks of 32
//! (`d = amax/127`, `q = round(x/d)`, `s = d*sum(q)`, `d` and `s` stored as f16), and
//! `dot = sum over blocks of d_w*d_x*sum(q_w*q_x) + m_w*s_x`. The weights stay exactly as the
//! GGUF stores them (20-byte blocks: f16 d, f16 m, 16 bytes of nibbles; low nibbles are
//! elements 0..16, high nibbles 16..32), borrowed from candle's `QTensor`, never requantized.
//!
//! `y[L, out] = x[L, in] @ W^T` runs in parallel over tiles of output rows on the current
//! rayon pool; within a tile each weight row is read once for all L tokens.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use half::f16;
use rayon::prelude::*;

use super::Isa;
use crate::EngineError;

/// Values per quantization block (Q4_1 and Q8_1).
pub(crate) const QK: usize = 32;
/// Bytes of one Q4_1 block: f16 d, f16 m, 16 bytes of nibbles.
pub(crate) const BLOCK_BYTES: usize = 20;

/// A `[rows, cols]` Q4_1 weight matrix (rows = output features), sharing candle's storage.
pub(crate) struct Q4_1Matrix {
    tensor: Arc<QTensor>,
    rows: usize,
    cols: usize,
}

impl std::fmt::Debug for Q4_1Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q4_1Matrix[{}, {}]", self.rows, self.cols)
    }
}

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
}

/// Quantizes `l` rows of `nb*32` floats to Q8_1 (`quantize_row_q8_1_ref` semantics).
pub(crate) fn quantize_q8_1(x: &[f32], l: usize, nb: usize) -> Q8_1Rows {
    let n = l * nb;
    let mut out = Q8_1Rows {
        l,
        nb,
        qs: vec![0; n * QK],
        d: vec![0.0; n],
        s: vec![0.0; n],
    };
    for (i, (xb, qb)) in x
        .chunks_exact(QK)
        .zip(out.qs.chunks_exact_mut(QK))
        .enumerate()
        .take(n)
    {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in qb.iter_mut().zip(xb) {
            // `as` saturates (and maps NaN to 0): |v*id| <= 127 for finite input anyway.
            *q = (v * id).round() as i8;
            sum += *q as i32;
        }
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

impl Q4_1Matrix {
    /// Wraps a Q4_1 `[rows, cols]` tensor on the CPU; `cols` must be a multiple of 32.
    pub(crate) fn new(tensor: Arc<QTensor>) -> Result<Q4_1Matrix, EngineError> {
        if tensor.dtype() != GgmlDType::Q4_1 {
            return Err(EngineError::Internal(format!(
                "Q4_1 kernel given a {:?} tensor",
                tensor.dtype()
            )));
        }
        let (rows, cols) = match tensor.shape().dims() {
            [r, c] => (*r, *c),
            d => {
                return Err(EngineError::Load(format!(
                    "Q4_1 matrix has shape {d:?}, expected 2-D"
                )))
            }
        };
        let bytes = tensor
            .data()
            .map_err(|e| EngineError::Load(format!("Q4_1 matrix data: {e}")))?
            .len();
        if cols % QK != 0 || bytes != rows * cols / QK * BLOCK_BYTES {
            return Err(EngineError::Load(format!(
                "Q4_1 matrix [{rows}, {cols}] has {bytes} bytes of blocks, expected {}",
                rows * (cols / QK) * BLOCK_BYTES
            )));
        }
        Ok(Q4_1Matrix { tensor, rows, cols })
    }

    /// Output features.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// `y[l, rows] = x[l, cols] @ W^T` with the instruction set chosen for this process.
    pub(crate) fn matmul(&self, x: &[f32], l: usize) -> candle_core::Result<Vec<f32>> {
        self.matmul_with(super::isa(), x, l)
    }

    /// [`Q4_1Matrix::matmul`] on a given instruction set (Scalar if `isa` is unavailable).
    pub(crate) fn matmul_with(
        &self,
        isa: Isa,
        x: &[f32],
        l: usize,
    ) -> candle_core::Result<Vec<f32>> {
        if x.len() != l * self.cols {
            candle_core::bail!(
                "Q4_1 matmul: input has {} values, expected {l} x {}",
                x.len(),
                self.cols
            );
        }
        let isa = if isa.available() { isa } else { Isa::Scalar };
        let nb = self.cols / QK;
        let row_bytes = nb * BLOCK_BYTES;
        let data = self.tensor.data()?;
        let acts = quantize_q8_1(x, l, nb);
        // Tiles of rows: about 4 per thread for balance, at least 16 rows each.
        let threads = rayon::current_num_threads().max(1);
        let tile = self.rows.div_ceil(threads * 4).max(16);
        // yt[rows, l]: each task owns a contiguous run of output rows.
        let mut yt = vec![0f32; self.rows * l];
        let run = |ys: &mut [f32], ws: &[u8]| {
            for (y, w) in ys.chunks_exact_mut(l).zip(ws.chunks_exact(row_bytes)) {
                row_dots(isa, w, &acts, y);
            }
        };
        if threads == 1 {
            // No hand-off to a pool thread (and back) when there is nothing to share.
            run(&mut yt, &data);
        } else {
            yt.par_chunks_mut(tile * l)
                .zip(data.as_ref().par_chunks(tile * row_bytes))
                .for_each(|(ys, ws)| run(ys, ws));
        }
        if l == 1 {
            return Ok(yt);
        }
        let mut y = vec![0f32; l * self.rows];
        for (r, yr) in yt.chunks_exact(l).enumerate() {
            for (t, v) in yr.iter().enumerate() {
                y[t * self.rows + r] = *v;
            }
        }
        Ok(y)
    }
}

#[cfg(test)]
#[path = "q4_1_tests.rs"]
mod tests;
