//! The shape every one of our quantized matmuls shares: a GGUF weight matrix borrowed from
//! candle's `QTensor` (never requantized), checked once for its block layout, and
//! `y[L, out] = x[L, in] @ W^T` run in parallel over tiles of output rows on the current rayon
//! pool. What differs per weight type (how activations are quantized, the per-ISA dot
//! products) is a [`Format`].
//!
//! **Invariant** (the batching scheduler relies on it): `y[t, r]` depends only on activation
//! row `t`, weight row `r` and the instruction set, never on `L`, on the other rows of the
//! batch, on the tiling or on the thread count. Activations are quantized row by row, and every
//! format's kernels run the same arithmetic for a (weight row, token) pair whatever tile it is
//! part of.

use std::marker::PhantomData;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use rayon::prelude::*;

use super::Isa;
use crate::EngineError;

/// Values per quantization block of every format here (Q4_0, Q4_1, Q8_0 and their activations).
pub(crate) const QK: usize = 32;

/// A weight storage type our kernels run: its GGUF block layout and its dot products.
pub(crate) trait Format {
    /// The GGUF type of the weights.
    const DTYPE: GgmlDType;
    /// Values per weight block (and per activation block).
    const BLOCK_VALUES: usize = QK;
    /// Bytes of one weight block of `BLOCK_VALUES` values.
    const BLOCK_BYTES: usize;
    /// The activations as the kernels consume them (one quantized row per token).
    type Acts: Sync;
    /// Quantizes `l` rows of `nb` blocks (`x.len() == l * nb * BLOCK_VALUES`).
    fn quantize(x: &[f32], l: usize, nb: usize) -> Self::Acts;
    /// Dots of `n` consecutive weight rows (`w`, `n * nb` blocks) with every activation row:
    /// `yt[i * l + t] = dot(row i, token t)`, `yt.len() == n * l`. `isa` is available.
    fn dots(isa: Isa, w: &[u8], a: &Self::Acts, yt: &mut [f32]);
}

/// A `[rows, cols]` weight matrix (rows = output features) of format `F`, sharing candle's
/// storage.
pub(crate) struct QuantMatrix<F: Format> {
    tensor: Arc<QTensor>,
    rows: usize,
    cols: usize,
    // `fn() -> F`: the matrix holds no `F` (a marker type), so it is Send + Sync whatever `F`.
    format: PhantomData<fn() -> F>,
}

impl<F: Format> std::fmt::Debug for QuantMatrix<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}Matrix[{}, {}]", F::DTYPE, self.rows, self.cols)
    }
}

impl<F: Format> QuantMatrix<F> {
    /// Wraps a `[rows, cols]` tensor of type `F::DTYPE`; `cols` must be a multiple of the block
    /// size and the data exactly `rows * cols / F::BLOCK_VALUES` blocks.
    pub(crate) fn new(tensor: Arc<QTensor>) -> Result<QuantMatrix<F>, EngineError> {
        let name = F::DTYPE;
        if tensor.dtype() != name {
            return Err(EngineError::Internal(format!(
                "{name:?} kernel given a {:?} tensor",
                tensor.dtype()
            )));
        }
        let (rows, cols) = match tensor.shape().dims() {
            [r, c] => (*r, *c),
            d => {
                return Err(EngineError::Load(format!(
                    "{name:?} matrix has shape {d:?}, expected 2-D"
                )))
            }
        };
        let bytes = tensor
            .data()
            .map_err(|e| EngineError::Load(format!("{name:?} matrix data: {e}")))?
            .len();
        let qk = F::BLOCK_VALUES;
        let want = rows * (cols / qk) * F::BLOCK_BYTES;
        if cols % qk != 0 || bytes != want {
            return Err(EngineError::Load(format!(
                "{name:?} matrix [{rows}, {cols}] has {bytes} bytes of blocks, expected {want} \
                 (and a multiple of {qk} columns)"
            )));
        }
        Ok(QuantMatrix {
            tensor,
            rows,
            cols,
            format: PhantomData,
        })
    }

    /// Output features.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Bytes of the stored weights.
    pub(crate) fn bytes(&self) -> usize {
        self.tensor.storage_size_in_bytes()
    }

    /// Input features.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// `y[l, rows] = x[l, cols] @ W^T` with the instruction set chosen for this process.
    pub(crate) fn matmul(&self, x: &[f32], l: usize) -> candle_core::Result<Vec<f32>> {
        self.matmul_with(super::isa(), x, l)
    }

    /// [`QuantMatrix::matmul`] on a given instruction set (Scalar if `isa` is unavailable).
    pub(crate) fn matmul_with(
        &self,
        isa: Isa,
        x: &[f32],
        l: usize,
    ) -> candle_core::Result<Vec<f32>> {
        if x.len() != l * self.cols {
            candle_core::bail!(
                "{:?} matmul: input has {} values, expected {l} x {}",
                F::DTYPE,
                x.len(),
                self.cols
            );
        }
        if self.cols == 0 {
            // Empty dot products (and no blocks to tile).
            return Ok(vec![0f32; l * self.rows]);
        }
        if l == 0 || self.rows == 0 {
            return Ok(Vec::new());
        }
        let isa = if isa.available() { isa } else { Isa::Scalar };
        let nb = self.cols / F::BLOCK_VALUES;
        let row_bytes = nb * F::BLOCK_BYTES;
        let data = self.tensor.data()?;
        let acts = F::quantize(x, l, nb);
        // Tiles of rows: about 4 per thread for balance, at least 16 rows each.
        let threads = rayon::current_num_threads().max(1);
        let tile = self.rows.div_ceil(threads * 4).max(16);
        // yt[rows, l]: each task owns a contiguous run of output rows.
        let mut yt = vec![0f32; self.rows * l];
        if threads == 1 {
            // No hand-off to a pool thread (and back) when there is nothing to share.
            F::dots(isa, &data, &acts, &mut yt);
        } else {
            yt.par_chunks_mut(tile * l)
                .zip(data.as_ref().par_chunks(tile * row_bytes))
                .for_each(|(ys, ws)| F::dots(isa, ws, &acts, ys));
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
