//! Attention over the paged KV cache for models placed on a candle device (`Placement::Device`:
//! CUDA, or the CPU in tests): the cache as device tensors, a batch's per-token metadata
//! uploaded once per forward ([`DeviceBatch`]), and the two operations every layer runs —
//! storing the batch's keys/values in their slots, and causal (optionally sliding-window)
//! grouped-query attention of each query over its own sequence's slots.
//!
//! Each operation has a generic version made of candle ops (any device; the reference the CUDA
//! kernels are checked against, see `checks.rs`) and, with the `cuda` feature on a CUDA device,
//! our own kernels (`crate::cuda`): one launch per layer for the write and one for attention.
//!
//! Layout (both versions): keys and values each `[n_blocks * block_size, kv_heads, head_dim]` in
//! the model's dtype; the slot of position `p` of a sequence with block table `t` is
//! `t[p / block_size] * block_size + p % block_size`.

use candle_core::{DType, Device, Tensor, D};

use super::attention::{Geometry, Span};

/// One layer's keys and values on the device.
pub(crate) struct DeviceKv {
    pub k: Tensor,
    pub v: Tensor,
}

/// A batch's metadata on the device, shared by every layer of one forward. Row `t` of the batch
/// is at position `positions[t]` of the sequence whose block table starts at
/// `tables[table_offsets[t]]`; its key/value goes to cache row `slots[t]`. All u32.
/// (Read by the CUDA kernels, `positions` also by the RoPE gather; the generic attention uses
/// the host copy.)
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct DeviceBatch {
    pub slots: Tensor,
    pub positions: Tensor,
    pub table_offsets: Tensor,
    pub tables: Tensor,
    /// The host copy of the batch for the generic path: (first row, rows, start position, the
    /// slot of every position `0..pos+len`).
    spans: Vec<HostSpan>,
}

struct HostSpan {
    row: usize,
    len: usize,
    pos: usize,
    slots: Vec<u32>,
}

impl DeviceBatch {
    /// Builds and uploads the metadata of `spans` (rows in order, as `Model::forward_batch`
    /// packs them).
    pub(crate) fn new(g: &Geometry, spans: &[Span], device: &Device) -> candle_core::Result<Self> {
        let bs = g.block_size;
        let rows: usize = spans.iter().map(|s| s.len).sum();
        let (mut slots, mut positions, mut offsets, mut tables) =
            (Vec::with_capacity(rows), Vec::with_capacity(rows), Vec::with_capacity(rows), Vec::new());
        let mut host = Vec::with_capacity(spans.len());
        for s in spans {
            let end = s.pos + s.len;
            let table = &s.blocks[..end.div_ceil(bs)];
            let offset = tables.len() as u32;
            tables.extend_from_slice(table);
            let all: Vec<u32> = (0..end).map(|p| table[p / bs] * bs as u32 + (p % bs) as u32).collect();
            for (p, &slot) in all.iter().enumerate().skip(s.pos) {
                slots.push(slot);
                positions.push(p as u32);
                offsets.push(offset);
            }
            host.push(HostSpan { row: s.row, len: s.len, pos: s.pos, slots: all });
        }
        let up = |v: Vec<u32>| {
            let n = v.len();
            Tensor::from_vec(v, n, device)
        };
        Ok(DeviceBatch {
            slots: up(slots)?,
            positions: up(positions)?,
            table_offsets: up(offsets)?,
            tables: up(tables)?,
            spans: host,
        })
    }
}

impl DeviceKv {
    /// Zeroed storage for `n_blocks` blocks.
    pub(crate) fn new(g: &Geometry, n_blocks: usize, dtype: DType, device: &Device) -> candle_core::Result<Self> {
        let shape = (n_blocks * g.block_size, g.n_kv_heads, g.head_dim);
        Ok(DeviceKv { k: Tensor::zeros(shape, dtype, device)?, v: Tensor::zeros(shape, dtype, device)? })
    }

    /// Stores `k`, `v` (`[rows, kv_heads, head_dim]`, the cache's dtype) at the batch's slots.
    pub(crate) fn write(&self, b: &DeviceBatch, k: &Tensor, v: &Tensor) -> candle_core::Result<()> {
        #[cfg(feature = "cuda")]
        if self.k.device().is_cuda() && !crate::cuda::generic_only() {
            crate::cuda::write_kv(&self.k, k, &b.slots)?;
            return crate::cuda::write_kv(&self.v, v, &b.slots);
        }
        write_generic(self, b, k, v)
    }

    /// `q`: `[rows, heads, head_dim]`, rotated, not scaled. Returns `[rows, heads, head_dim]`
    /// in `q`'s dtype. The batch's keys/values must have been written.
    pub(crate) fn attend(&self, g: &Geometry, b: &DeviceBatch, q: &Tensor) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if self.k.device().is_cuda() && !crate::cuda::generic_only() {
            return crate::cuda::paged_attention(q, &self.k, &self.v, b, g);
        }
        attend_generic(self, g, b, q)
    }
}

/// [`DeviceKv::write`] with candle ops: one `slice_set` per run of consecutive slots.
pub(crate) fn write_generic(kv: &DeviceKv, b: &DeviceBatch, k: &Tensor, v: &Tensor) -> candle_core::Result<()> {
    let (k, v) = (k.contiguous()?, v.contiguous()?);
    for s in &b.spans {
        let mut i = 0;
        while i < s.len {
            let first = s.slots[s.pos + i];
            let mut n = 1;
            while i + n < s.len && s.slots[s.pos + i + n] == first + n as u32 {
                n += 1;
            }
            kv.k.slice_set(&k.narrow(0, s.row + i, n)?, 0, first as usize)?;
            kv.v.slice_set(&v.narrow(0, s.row + i, n)?, 0, first as usize)?;
            i += n;
        }
    }
    Ok(())
}

/// [`DeviceKv::attend`] with candle ops, one sequence at a time, in f32: gather the sequence's
/// keys/values, dense masked softmax attention, back to `q`'s dtype.
pub(crate) fn attend_generic(kv: &DeviceKv, g: &Geometry, b: &DeviceBatch, q: &Tensor) -> candle_core::Result<Tensor> {
    let (nh, nkv, hd) = (g.n_heads, g.n_kv_heads, g.head_dim);
    let group = nh / nkv;
    let device = q.device();
    let scale = 1.0 / (hd as f64).sqrt();
    let mut outs = Vec::with_capacity(b.spans.len());
    for s in &b.spans {
        let end = s.pos + s.len;
        let idx = Tensor::new(s.slots.as_slice(), device)?;
        let expand = |t: &Tensor| -> candle_core::Result<Tensor> {
            // [end, kv, hd] -> [heads, end, hd], query head h reading kv head h / group.
            t.index_select(&idx, 0)?
                .to_dtype(DType::F32)?
                .transpose(0, 1)?
                .unsqueeze(1)?
                .expand((nkv, group, end, hd))?
                .reshape((nh, end, hd))
        };
        let (k, v) = (expand(&kv.k)?, expand(&kv.v)?);
        let qs = q.narrow(0, s.row, s.len)?.to_dtype(DType::F32)?.transpose(0, 1)?.contiguous()?;
        let scores = (qs.matmul(&k.t()?.contiguous()?)? * scale)?; // [heads, len, end]
        let mut mask = vec![0f32; s.len * end];
        for (i, row) in mask.chunks_exact_mut(end).enumerate() {
            let p = s.pos + i;
            let first = g.sliding_window.map_or(0, |w| (p + 1).saturating_sub(w));
            for (j, m) in row.iter_mut().enumerate() {
                if j < first || j > p {
                    *m = f32::NEG_INFINITY;
                }
            }
        }
        let mask = Tensor::from_vec(mask, (1, s.len, end), device)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?;
        let out = probs.matmul(&v.contiguous()?)?; // [heads, len, hd]
        outs.push(out.transpose(0, 1)?.to_dtype(q.dtype())?);
    }
    let out = Tensor::cat(&outs, 0)?;
    debug_assert_eq!(out.dim(D::Minus1)?, hd);
    Ok(out)
}
