//! The shape every one of our quantized matmuls shares: a GGUF weight matrix borrowed from
//! candle's `QTensor` (never requantized), checked once for its block layout, and
//! `y[L, out] = x[L, in] @ W^T` run in parallel over tiles of output rows
//! (`crate::pool::for_each`). What differs per weight type (how activations are quantized, the
//! per-ISA dot products) is a [`Format`].
//!
//! Where the AVX-512 VNNI panel kernels run (`super::panels()`) and the format has them, the
//! matrix keeps its blocks in the panel layout instead (`panel.rs`: the same bytes reordered at
//! load, candle's copy dropped); another instruction set asked for explicitly (the tests) gets
//! the GGUF blocks back per task.
//!
//! **Invariant** (the batching scheduler relies on it): `y[t, r]` depends only on activation
//! row `t`, weight row `r` and the instruction set, never on `L`, on the other rows of the
//! batch, on the tiling or on the thread count. Activations are quantized row by row, and every
//! format's kernels run the same arithmetic for a (weight row, token) pair whatever tile it is
//! part of.

use std::marker::PhantomData;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};

use super::{panel, Isa};
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
    /// Work on the activations that every task of a matmul would otherwise do on first use
    /// (the AVX2 kernels' interleaved layout, or what the panel kernels need when `panels`),
    /// done once before the parallel region so that no task waits for another to build it.
    fn prepare(_isa: Isa, _panels: bool, _acts: &Self::Acts) {}
    /// Dots of `n` consecutive weight rows (`w`, `n * nb` blocks) with every activation row:
    /// `yt[i * l + t] = dot(row i, token t)`, `yt.len() == n * l`. `isa` is available.
    fn dots(isa: Isa, w: &[u8], a: &Self::Acts, yt: &mut [f32]);
    /// The format's panel layout, when it has panel kernels.
    const PANEL: Option<panel::Spec> = None;
    /// The dots of whole panels `w` with every token, into `y[t]` (one slice per token, each
    /// as long as the rows wanted) with the panel kernels; called only where `super::panels()`
    /// holds and `PANEL` is set.
    fn panel_dots(_w: &[u8], _a: &Self::Acts, _y: &mut [&mut [f32]]) {
        unreachable!("panel_dots of a format without panels")
    }
    /// One GGUF block's values as candle dequantizes them (formats with `PANEL` only: a tied
    /// embedding table is looked up from the packed output matrix).
    fn dequantize_block(_b: &[u8], _out: &mut [f32]) {
        unreachable!("dequantize_block of a format without panels")
    }
}

/// Where a matrix's blocks are.
enum Storage {
    /// As the GGUF stores them, in candle's tensor.
    Gguf(Arc<QTensor>),
    /// Reordered into panels (`panel.rs`) of `F::PANEL`.
    Panels(Vec<u8>),
}

/// A `[rows, cols]` weight matrix (rows = output features) of format `F`, sharing candle's
/// storage, or holding its own copy in panels (see the module docs).
pub(crate) struct QuantMatrix<F: Format> {
    storage: Storage,
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
        let storage = match F::PANEL {
            Some(spec) if super::panels() && rows > 0 && cols > 0 => {
                let data = tensor.data().map_err(|e| EngineError::Load(format!("{name:?} matrix data: {e}")))?;
                Storage::Panels(panel::pack(spec, &data, rows, cols / qk))
            }
            _ => Storage::Gguf(tensor),
        };
        Ok(QuantMatrix {
            storage,
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
        match &self.storage {
            Storage::Gguf(t) => t.storage_size_in_bytes(),
            Storage::Panels(p) => p.len(),
        }
    }

    /// Rows `ids` dequantized (`[ids, cols]`, candle's values) when the matrix is stored in
    /// panels (a tied embedding table then lives only here); `None` for GGUF storage.
    pub(crate) fn packed_rows(&self, ids: &[u32]) -> Option<candle_core::Result<Vec<f32>>> {
        let (Storage::Panels(p), Some(spec)) = (&self.storage, F::PANEL) else {
            return None;
        };
        let nb = self.cols / F::BLOCK_VALUES;
        let mut blocks = vec![0u8; nb * spec.block_bytes()];
        let mut out = vec![0f32; ids.len() * self.cols];
        for (&id, row) in ids.iter().zip(out.chunks_exact_mut(self.cols)) {
            if id as usize >= self.rows {
                return Some(Err(candle_core::Error::Msg(format!("token id {id} outside the {} rows", self.rows))));
            }
            panel::unpack_row(spec, p, nb, id as usize, &mut blocks);
            for (b, o) in blocks.chunks_exact(spec.block_bytes()).zip(row.chunks_exact_mut(F::BLOCK_VALUES)) {
                F::dequantize_block(b, o);
            }
        }
        Some(Ok(out))
    }

    /// The stored bytes and, for panels, their layout.
    fn data(&self) -> candle_core::Result<(std::borrow::Cow<'_, [u8]>, Option<panel::Spec>)> {
        match &self.storage {
            Storage::Gguf(t) => Ok((t.data()?, None)),
            Storage::Panels(p) => Ok((std::borrow::Cow::Borrowed(p.as_slice()), F::PANEL)),
        }
    }

    /// Input features.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// `y[l, rows] = x[l, cols] @ W^T` with the instruction set chosen for this process (the
    /// model calls [`QuantMatrix::matmul_many`]; the kernel tests call this).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn matmul(&self, x: &[f32], l: usize) -> candle_core::Result<Vec<f32>> {
        self.matmul_with(super::isa(), x, l)
    }

    /// [`QuantMatrix::matmul`] on a given instruction set (Scalar if `isa` is unavailable).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn matmul_with(
        &self,
        isa: Isa,
        x: &[f32],
        l: usize,
    ) -> candle_core::Result<Vec<f32>> {
        let mut ys = Self::matmul_many_with(isa, &[self], x, l)?;
        Ok(ys.pop().unwrap_or_default())
    }

    /// [`QuantMatrix::matmul`] of several matrices of the same width by the same input (a
    /// layer's q/k/v, or gate/up): the activations are quantized once and every matrix's tiles
    /// share one parallel region. Each result is the one `matmul` gives, bit for bit.
    pub(crate) fn matmul_many(mats: &[&Self], x: &[f32], l: usize) -> candle_core::Result<Vec<Vec<f32>>> {
        Self::matmul_many_with(super::isa(), mats, x, l)
    }

    /// [`QuantMatrix::matmul_many`] into the caller's buffers (the host forward reuses them
    /// from layer to layer): `ys[i]` is resized to `l * mats[i].rows` and every value of it
    /// written, so its old contents never matter and a buffer of the right size is not zeroed.
    pub(crate) fn matmul_many_into(mats: &[&Self], x: &[f32], l: usize, ys: &mut [&mut Vec<f32>]) -> candle_core::Result<()> {
        Self::matmul_into_with(super::isa(), mats, x, l, ys)
    }

    fn matmul_many_with(
        isa: Isa,
        mats: &[&Self],
        x: &[f32],
        l: usize,
    ) -> candle_core::Result<Vec<Vec<f32>>> {
        let mut ys: Vec<Vec<f32>> = mats.iter().map(|_| Vec::new()).collect();
        Self::matmul_into_with(isa, mats, x, l, &mut ys.iter_mut().collect::<Vec<_>>())?;
        Ok(ys)
    }

    fn matmul_into_with(
        isa: Isa,
        mats: &[&Self],
        x: &[f32],
        l: usize,
        ys: &mut [&mut Vec<f32>],
    ) -> candle_core::Result<()> {
        if ys.len() != mats.len() {
            candle_core::bail!("{:?} matmul: {} matrices but {} outputs", F::DTYPE, mats.len(), ys.len());
        }
        for (y, m) in ys.iter_mut().zip(mats) {
            y.resize(l * m.rows, 0.0);
        }
        let Some(cols) = mats.first().map(|m| m.cols) else {
            return Ok(());
        };
        if let Some(m) = mats.iter().find(|m| m.cols != cols) {
            candle_core::bail!("{:?} matmul: matrices of {cols} and {} columns share an input", F::DTYPE, m.cols);
        }
        if x.len() != l * cols {
            candle_core::bail!(
                "{:?} matmul: input has {} values, expected {l} x {cols}",
                F::DTYPE,
                x.len(),
            );
        }
        if cols == 0 {
            // Empty dot products (and no blocks to tile).
            ys.iter_mut().for_each(|y| y.fill(0.0));
            return Ok(());
        }
        if l == 0 {
            return Ok(());
        }
        let isa = if isa.available() { isa } else { Isa::Scalar };
        let nb = cols / F::BLOCK_VALUES;
        let row_bytes = nb * F::BLOCK_BYTES;
        let data = mats.iter().map(|m| m.data()).collect::<candle_core::Result<Vec<_>>>()?;
        // Panels run on their kernels with the process's own instruction set; any other gets
        // the GGUF blocks back.
        let on_panels = isa == super::isa() && super::panels();
        let acts = F::quantize(x, l, nb);
        F::prepare(isa, on_panels && F::PANEL.is_some(), &acts);
        // Each task computes a run of one matrix's output rows (`[rows, l]`, what the kernels
        // write) and scatters it into its part of `y[l, rows]`, so that the transposition runs in
        // parallel too. One task per matrix on one thread; else about 4 per thread over all the
        // matrices, at least 16 rows each.
        let threads = crate::pool::threads();
        let total: usize = mats.iter().map(|m| m.rows).sum();
        // Whole panels per task (a multiple of 16 rows).
        let tile = if threads == 1 { usize::MAX } else { total.div_ceil(threads * 4).max(16).next_multiple_of(16) };
        let mut tasks = Vec::new();
        for ((y, (w, spec)), m) in ys.iter_mut().zip(&data).zip(mats).filter(|(_, m)| m.rows > 0) {
            let tile = tile.min(m.rows);
            let first = tasks.len();
            // Panel storage: a task's rows are whole panels, the last one padded.
            let chunk = match spec {
                Some(s) => tile.div_ceil(panel::ROWS) * nb * s.panel_block_bytes(),
                None => tile * row_bytes,
            };
            for ws in w.as_ref().chunks(chunk) {
                tasks.push(std::sync::Mutex::new((ws, *spec, Vec::with_capacity(l))));
            }
            for y_t in y.chunks_mut(m.rows) {
                for (k, part) in y_t.chunks_mut(tile).enumerate() {
                    tasks[first + k].get_mut().unwrap_or_else(|e| e.into_inner()).2.push(part);
                }
            }
        }
        crate::pool::for_each(tasks.len(), |i| {
            let mut task = tasks[i].lock().unwrap_or_else(|e| e.into_inner());
            let (ws, spec, parts) = &mut *task;
            let n = parts.first().map_or(0, |p| p.len());
            let mut gguf = Vec::new();
            let ws: &[u8] = match spec {
                // The panel kernels write each token's part directly.
                Some(_) if on_panels => return F::panel_dots(ws, &acts, parts),
                Some(s) => {
                    panel::unpack_rows(*s, ws, nb, n, &mut gguf);
                    &gguf
                }
                None => ws,
            };
            if let [y] = parts.as_mut_slice() {
                // One token: the kernels' `[rows, 1]` is the output itself.
                return F::dots(isa, ws, &acts, y);
            }
            let mut yt = vec![0f32; n * l];
            F::dots(isa, ws, &acts, &mut yt);
            for (t, part) in parts.iter_mut().enumerate() {
                for (r, o) in part.iter_mut().enumerate() {
                    *o = yt[r * l + t];
                }
            }
        });
        drop(tasks);
        Ok(())
    }
}
