//! Dense f32 weight matrices (Hugging Face safetensors checkpoints, widened to f32 at load) on
//! our own matmul driver, so that they keep the batch-independence invariant of `matrix.rs`
//! (candle's f32 gemm, which `QMatMul` runs for float weights, picks its blocking from the
//! batch shape and does not promise a row the same bits alone and in a batch).
//!
//! Activations are used as they are (no quantization). A dot product of a weight row `w` with
//! a token `x` is defined as: 16 partial sums, chunk `c` of 8 values (`c < cols/8`) adding
//! `w*x` (a rounded product, then a rounded sum: no fused multiply-add) into lanes
//! `8*(c%2)..8*(c%2)+8`; then the two halves added lane-wise, the 8 lanes reduced as
//! `((s0+s4)+(s2+s6)) + ((s1+s5)+(s3+s7))`, and the last `cols%8` products added one by one.
//! The scalar code here and the AVX2 code (`avx2_dense.rs`) both compute exactly that, so the
//! two paths give bit-identical results and the choice of instruction set never changes a
//! token. Weights are the little-endian f32 bytes of candle's F32 `QTensor` (block size 1).

use super::matrix::{Format, QuantMatrix};
use super::Isa;

/// A `[rows, cols]` f32 weight matrix on our kernels.
pub(crate) type F32Matrix = QuantMatrix<F32>;

/// The dense f32 weight format (see the module docs).
pub(crate) enum F32 {}

/// Bytes of one weight value.
pub(crate) const VALUE_BYTES: usize = 4;
/// Values per chunk (one AVX2 register).
pub(crate) const CHUNK: usize = 8;

/// The activations: `l` rows of `cols` floats, row-major (a copy of the input).
pub(crate) struct F32Rows {
    pub l: usize,
    pub cols: usize,
    pub x: Vec<f32>,
}

/// Weight value `i` of a row's bytes.
fn value(w: &[u8], i: usize) -> f32 {
    let b = &w[i * VALUE_BYTES..(i + 1) * VALUE_BYTES];
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// The reduction of 8 lanes shared by both paths: `((s0+s4)+(s2+s6)) + ((s1+s5)+(s3+s7))`,
/// the order of the AVX2 horizontal sum.
pub(crate) fn reduce8(s: &[f32; CHUNK]) -> f32 {
    let h = [s[0] + s[4], s[1] + s[5], s[2] + s[6], s[3] + s[7]];
    (h[0] + h[2]) + (h[1] + h[3])
}

/// Scalar reference: the dot of one weight row (`cols * 4` bytes) with one activation row.
pub(crate) fn dot_scalar(w: &[u8], x: &[f32]) -> f32 {
    let cols = x.len();
    let chunks = cols / CHUNK;
    let mut acc = [[0f32; CHUNK]; 2];
    for c in 0..chunks {
        let lanes = &mut acc[c % 2];
        for (j, lane) in lanes.iter_mut().enumerate() {
            let i = c * CHUNK + j;
            *lane += value(w, i) * x[i];
        }
    }
    let mut s = [0f32; CHUNK];
    for (j, v) in s.iter_mut().enumerate() {
        *v = acc[0][j] + acc[1][j];
    }
    let mut sum = reduce8(&s);
    for (i, xi) in x.iter().enumerate().skip(chunks * CHUNK) {
        sum += value(w, i) * xi;
    }
    sum
}

/// Scalar reference: `yt[i*l + t]` = dot of weight row `i` of `w` with token `t`.
pub(crate) fn dots_scalar(w: &[u8], a: &F32Rows, yt: &mut [f32]) {
    let (l, cols) = (a.l, a.cols);
    if l == 0 {
        return;
    }
    for (wr, ys) in w
        .chunks_exact(cols * VALUE_BYTES)
        .zip(yt.chunks_exact_mut(l))
    {
        for (t, y) in ys.iter_mut().enumerate() {
            *y = dot_scalar(wr, &a.x[t * cols..(t + 1) * cols]);
        }
    }
}

impl Format for F32 {
    const DTYPE: candle_core::quantized::GgmlDType = candle_core::quantized::GgmlDType::F32;
    const BLOCK_VALUES: usize = 1;
    const BLOCK_BYTES: usize = VALUE_BYTES;
    type Acts = F32Rows;

    fn quantize(x: &[f32], l: usize, nb: usize) -> F32Rows {
        F32Rows {
            l,
            cols: nb,
            x: x.to_vec(),
        }
    }

    fn dots(isa: Isa, w: &[u8], a: &F32Rows, yt: &mut [f32]) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 | Isa::Avx512 => super::avx2_dense::dots_f32(w, a, yt),
            _ => dots_scalar(w, a, yt),
        }
    }
}

#[cfg(test)]
#[path = "dense_tests.rs"]
mod tests;
