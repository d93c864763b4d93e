//! One transformer block (RMSNorm, grouped-query attention with RoPE over the paged KV cache,
//! SwiGLU MLP), its KV storage, and the loading of its weights from `blk.N.*` tensors (of a
//! GGUF or of safetensors, through `WeightSource`).
//!
//! A forward runs a packed batch of `T` tokens from any number of sequences: activations are
//! `[T, hidden]`, each row at its own position; the matmuls see all `T` rows at once (each
//! weight block read once per batch), attention (`attention.rs`) keeps each row to its own
//! sequence. Query head `h` uses KV head `h / (heads / kv_heads)`, as llama.cpp and HF's
//! `repeat_kv` do.
//!
//! Two paths, the same values: [`Layer::forward`] on candle tensors (the device placement's, and
//! the reference), whose KV storage and attention differ by placement ([`Kv::Host`]:
//! `attention.rs` on the CPU; [`Kv::Device`]: `device_attention.rs`, RoPE by candle's kernels on
//! the device); and [`Layer::forward_host`], the host placement's, on slices and a
//! [`HostScratch`] reused from layer to layer, with no tensor built between the layers (serial
//! work the compute team's other threads would wait through). RMSNorm and SwiGLU are the same
//! functions in both on the host, so both give the same bits (test).

use candle_core::Tensor;

use super::attention::{self, Geometry, LayerKv, Span};
use super::config::{ModelConfig, RopeStyle};
use super::device_attention::{DeviceBatch, DeviceKv};
use super::placement::Placement;
use super::weights::{Linear, WeightSource};
use crate::EngineError;

/// One layer's KV storage, by placement.
pub(crate) enum Kv {
    Host(LayerKv),
    Device(DeviceKv),
}

/// The weights and KV cache of one block.
pub(crate) struct Layer {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    bq: Option<Tensor>,
    bk: Option<Tensor>,
    bv: Option<Tensor>,
    wo: Linear,
    ffn_norm: Tensor,
    w_gate: Linear,
    w_up: Linear,
    w_down: Linear,
    kv: Kv,
    /// The norm weights and biases as host slices (host placement only), for
    /// [`Layer::forward_host`].
    host: Option<HostVectors>,
}

/// A host layer's vectors, read by [`Layer::forward_host`] without a tensor's lock.
struct HostVectors {
    attn_norm: Vec<f32>,
    ffn_norm: Vec<f32>,
    bq: Option<Vec<f32>>,
    bk: Option<Vec<f32>>,
    bv: Option<Vec<f32>>,
}

/// The buffers of [`Layer::forward_host`], reused by every layer and step (none allocated once
/// they have grown to the largest batch, and then kept: SmolLM2 at a 512-token prefill chunk
/// holds ~10.5 MB here, what the tensor path allocated and freed again in every layer).
#[derive(Default)]
pub(crate) struct HostScratch {
    /// The normed residual stream, `[rows, hidden]`.
    h: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    /// A projection back to the residual stream (attention's, then the MLP's), `[rows, hidden]`.
    o: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    /// The last forward's logits, `[asking sequences, vocab]` (owned by `Model::run`).
    pub logits: Vec<f32>,
}

/// Per-forward inputs shared by every layer: the batch's sequences, each row's position, and
/// the RoPE tables (`[positions, head_dim/2]`).
pub(crate) struct Step<'a> {
    pub spans: &'a [Span<'a>],
    pub positions: &'a [usize],
    pub geometry: Geometry,
    pub cos: &'a [f32],
    pub sin: &'a [f32],
    /// With a device placement: the batch's metadata and each row's cos/sin, `[rows, 1,
    /// head_dim/2]` in the model's dtype.
    pub device: Option<DeviceStep>,
}

/// The per-forward device inputs of [`Step`].
pub(crate) struct DeviceStep {
    pub batch: DeviceBatch,
    pub cos: Tensor,
    pub sin: Tensor,
}

impl Layer {
    /// Reads block `i`'s `blk.{i}.*` tensors (q/k/v biases when present) from `src` and
    /// allocates its KV storage of `n_blocks` blocks.
    pub(crate) fn load(
        src: &mut WeightSource,
        cfg: &ModelConfig,
        i: usize,
        geometry: &Geometry,
        n_blocks: usize,
        at: &Placement,
    ) -> Result<Layer, EngineError> {
        let p = |s: &str| format!("blk.{i}.{s}");
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let q_out = cfg.n_heads * hd;
        let kv_out = cfg.n_kv_heads * hd;
        // In the order the tensors were always read (the first bad one is the error reported).
        let attn_norm = src.vector(&p("attn_norm.weight"), h, at)?;
        let wq = src.matrix(&p("attn_q.weight"), q_out, h, at)?;
        let wk = src.matrix(&p("attn_k.weight"), kv_out, h, at)?;
        let wv = src.matrix(&p("attn_v.weight"), kv_out, h, at)?;
        // Optional: qwen2 has q/k/v biases, llama and mistral don't.
        let mut bias = |name: String, n: usize| -> Result<Option<Tensor>, EngineError> {
            match src.has(&name) {
                true => src.vector(&name, n, at).map(Some),
                false => Ok(None),
            }
        };
        let bq = bias(p("attn_q.bias"), q_out)?;
        let bk = bias(p("attn_k.bias"), kv_out)?;
        let bv = bias(p("attn_v.bias"), kv_out)?;
        let mut layer = Layer {
            attn_norm,
            wq,
            wk,
            wv,
            bq,
            bk,
            bv,
            wo: src.matrix(&p("attn_output.weight"), h, q_out, at)?,
            ffn_norm: src.vector(&p("ffn_norm.weight"), h, at)?,
            w_gate: src.matrix(&p("ffn_gate.weight"), cfg.ffn_size, h, at)?,
            w_up: src.matrix(&p("ffn_up.weight"), cfg.ffn_size, h, at)?,
            w_down: src.matrix(&p("ffn_down.weight"), h, cfg.ffn_size, at)?,
            kv: match at {
                Placement::Host { kv } => Kv::Host(LayerKv::new(geometry, n_blocks, *kv)),
                Placement::Device { device, dtype } => Kv::Device(
                    DeviceKv::new(geometry, n_blocks, *dtype, device)
                        .map_err(|e| EngineError::Load(format!("KV cache of {n_blocks} blocks: {e}")))?,
                ),
            },
            host: None,
        };
        if let Placement::Host { .. } = at {
            let v = |t: &Tensor| t.to_vec1::<f32>().map_err(|e| EngineError::Load(format!("block {i} vector: {e}")));
            let o = |t: &Option<Tensor>| t.as_ref().map(v).transpose();
            let l = &layer;
            let host = HostVectors { attn_norm: v(&l.attn_norm)?, ffn_norm: v(&l.ffn_norm)?, bq: o(&l.bq)?, bk: o(&l.bk)?, bv: o(&l.bv)? };
            layer.host = Some(host);
        }
        Ok(layer)
    }

    /// `x`: `[L, hidden]` residual stream in; returns the residual stream out.
    pub(crate) fn forward(
        &mut self,
        cfg: &ModelConfig,
        x: &Tensor,
        s: &Step,
    ) -> candle_core::Result<Tensor> {
        let h = rms_norm(x, &self.attn_norm, cfg.rms_eps)?;
        let attn = self.attention(cfg, &h, s)?;
        let x = (x + self.wo.forward(&attn)?)?;
        let h = rms_norm(&x, &self.ffn_norm, cfg.rms_eps)?;
        let [gate, up]: [Tensor; 2] = Linear::forward_many(&[&self.w_gate, &self.w_up], &h)?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("gate/up matmul gave the wrong count".into()))?;
        let mlp = self.w_down.forward(&swiglu(&gate, &up)?)?;
        x + mlp
    }

    /// [`Layer::forward`] on the host without tensors: `x` (`[rows, hidden]`) is updated in
    /// place, the intermediate values live in `sc`. The same values as `forward`, bit for bit
    /// (test), in fewer copies and allocations: the serial work between the parallel loops,
    /// which the team's other threads wait through.
    pub(crate) fn forward_host(
        &mut self,
        cfg: &ModelConfig,
        x: &mut [f32],
        s: &Step,
        sc: &mut HostScratch,
    ) -> candle_core::Result<()> {
        let (Kv::Host(kv), Some(hv)) = (&mut self.kv, &self.host) else {
            candle_core::bail!("host forward of a layer placed on a device");
        };
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let rows = s.positions.len();
        rms_norm_rows(x, &hv.attn_norm, cfg.rms_eps, &mut sc.h);
        Linear::host_many(&[&self.wq, &self.wk, &self.wv], &sc.h, rows, &mut [&mut sc.q, &mut sc.k, &mut sc.v])?;
        // The KV write's lines on their way while the biases and RoPE run.
        kv.prefetch_writes(&s.geometry, s.spans);
        for (y, b) in [(&mut sc.q, &hv.bq), (&mut sc.k, &hv.bk), (&mut sc.v, &hv.bv)] {
            if let Some(b) = b {
                add_rows(y, b);
            }
        }
        attention::rope(&mut sc.q, nh, hd, s.positions, s.cos, s.sin, cfg.rope_style);
        attention::rope(&mut sc.k, nkv, hd, s.positions, s.cos, s.sin, cfg.rope_style);
        kv.write(&s.geometry, s.spans, &sc.k, &sc.v);
        let attn = attention::attend(kv, &s.geometry, s.spans, &sc.q);
        Linear::host_many(&[&self.wo], &attn, rows, &mut [&mut sc.o])?;
        add_rows(x, &sc.o);
        rms_norm_rows(x, &hv.ffn_norm, cfg.rms_eps, &mut sc.h);
        Linear::host_many(&[&self.w_gate, &self.w_up], &sc.h, rows, &mut [&mut sc.gate, &mut sc.up])?;
        swiglu_host(&mut sc.gate, &sc.up);
        Linear::host_many(&[&self.w_down], &sc.gate, rows, &mut [&mut sc.o])?;
        add_rows(x, &sc.o);
        Ok(())
    }

    /// Self-attention of the batch over its sequences' KV blocks; returns `[T, heads*head_dim]`.
    fn attention(&mut self, cfg: &ModelConfig, h: &Tensor, s: &Step) -> candle_core::Result<Tensor> {
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let rows = s.positions.len();
        let [q, k, v]: [Tensor; 3] = Linear::forward_many(&[&self.wq, &self.wk, &self.wv], h)?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("q/k/v matmul gave the wrong count".into()))?;
        let bias = |y: Tensor, b: &Option<Tensor>| match b {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        };
        let (q, k, v) = (bias(q, &self.bq)?, bias(k, &self.bk)?, bias(v, &self.bv)?);
        match (&mut self.kv, &s.device) {
            (Kv::Host(kv), _) => {
                let flat = |t: Tensor| t.flatten_all()?.to_vec1::<f32>();
                let (mut q, mut k, v) = (flat(q)?, flat(k)?, flat(v)?);
                attention::rope(&mut q, nh, hd, s.positions, s.cos, s.sin, cfg.rope_style);
                attention::rope(&mut k, nkv, hd, s.positions, s.cos, s.sin, cfg.rope_style);
                kv.write(&s.geometry, s.spans, &k, &v);
                let out = attention::attend(kv, &s.geometry, s.spans, &q);
                Tensor::from_vec(out, (rows, nh * hd), h.device())
            }
            (Kv::Device(kv), Some(d)) => {
                // Each row its own "batch" of one position: [rows, heads, 1, hd] against
                // cos/sin [rows, 1, hd/2], so every row rotates at its own position.
                let rope = |x: Tensor, heads: usize| -> candle_core::Result<Tensor> {
                    let x = x.reshape((rows, heads, 1, hd))?;
                    let y = match cfg.rope_style {
                        RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, &d.cos, &d.sin)?,
                        RopeStyle::Neox => candle_nn::rotary_emb::rope(&x, &d.cos, &d.sin)?,
                    };
                    y.reshape((rows, heads, hd))
                };
                let q = rope(q, nh)?;
                let k = rope(k, nkv)?;
                kv.write(&d.batch, &k, &v.reshape((rows, nkv, hd))?)?;
                kv.attend(&s.geometry, &d.batch, &q)?.reshape((rows, nh * hd))
            }
            (Kv::Device(_), None) => candle_core::bail!("device KV cache without the batch's device inputs"),
        }
    }

    /// Bytes of the layer's weights as stored.
    pub(crate) fn weight_bytes(&self) -> usize {
        let v = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let mats = [&self.wq, &self.wk, &self.wv, &self.wo, &self.w_gate, &self.w_up, &self.w_down];
        let biases = [&self.bq, &self.bk, &self.bv].into_iter().flatten().map(v).sum::<usize>();
        mats.iter().map(|m| m.bytes()).sum::<usize>() + v(&self.attn_norm) + v(&self.ffn_norm) + biases
    }
}

/// RMSNorm of every row of `x` (`[rows, n]`) times `w` (`n` values) into `out` (resized):
/// candle's formula (`v / sqrt(mean(v^2) + eps) * w`) with the squares summed in 8 lanes (value
/// `i` into lane `i % 8`, the lanes added pairwise) instead of one chain: a vector loop, not 576
/// dependent adds per row.
pub(crate) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32, out: &mut Vec<f32>) {
    out.resize(x.len(), 0.0);
    let n = w.len();
    for (xr, yr) in x.chunks_exact(n).zip(out.chunks_exact_mut(n)) {
        let mut lanes = [0f32; 8];
        let mut chunks = xr.chunks_exact(8);
        for c in &mut chunks {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += v * v;
            }
        }
        for (l, &v) in lanes.iter_mut().zip(chunks.remainder()) {
            *l += v * v;
        }
        let [a, b, c, d, e, f, g, h] = lanes;
        let sum2 = ((a + b) + (c + d)) + ((e + f) + (g + h));
        let m = (sum2 / n as f32 + eps).sqrt();
        for ((y, &v), &w) in yr.iter_mut().zip(xr).zip(w) {
            *y = v / m * w;
        }
    }
}

/// RMSNorm of a `[.., n]` tensor by `w` (`[n]`): [`rms_norm_rows`] on host f32 tensors (so the
/// host and tensor paths agree bit for bit), candle's kernel elsewhere.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    let host = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if !(host(x) && host(w)) || w.rank() != 1 || x.dims().last() != Some(&w.elem_count()) {
        return candle_nn::ops::rms_norm(x, w, eps);
    }
    let mut y = Vec::new();
    rms_norm_rows(&x.flatten_all()?.to_vec1::<f32>()?, &w.to_vec1::<f32>()?, eps, &mut y);
    Tensor::from_vec(y, x.dims(), x.device())
}

/// `y[r] += b` for every row `r` of `y` (`[rows, b.len()]`): a broadcast add, or a residual add
/// when `b` is as long as `y`.
fn add_rows(y: &mut [f32], b: &[f32]) {
    for row in y.chunks_exact_mut(b.len()) {
        for (a, &b) in row.iter_mut().zip(b) {
            *a += b;
        }
    }
}

/// Parallel items per thread of [`swiglu_host`] (at least 256 values each).
const SWIGLU_ITEMS_PER_THREAD: usize = 2;

/// `g = silu(g) * u` with `kernels::swiglu` (candle's formula; its `exp` on AVX2 is the
/// kernel's own, within 2 ulp) in parallel chunks (`crate::pool::for_each`).
fn swiglu_host(g: &mut [f32], u: &[f32]) {
    let chunk = g.len().div_ceil(crate::pool::threads() * SWIGLU_ITEMS_PER_THREAD).max(256);
    let chunks: Vec<_> = g.chunks_mut(chunk).zip(u.chunks(chunk)).map(std::sync::Mutex::new).collect();
    crate::pool::for_each(chunks.len(), |i| {
        let mut chunk = chunks[i].lock().unwrap_or_else(|e| e.into_inner());
        let (g, u) = &mut *chunk;
        crate::kernels::swiglu(g, u);
    });
}

/// `silu(gate) * up`: [`swiglu_host`] on host f32 tensors, candle's ops elsewhere.
fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    let host = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if !(host(gate) && host(up)) || gate.dims() != up.dims() {
        return gate.silu()? * up;
    }
    let mut g = gate.flatten_all()?.to_vec1::<f32>()?;
    swiglu_host(&mut g, &up.flatten_all()?.to_vec1::<f32>()?);
    Tensor::from_vec(g, gate.dims(), gate.device())
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    #[test]
    fn rms_norm_is_close_to_candles_and_per_row() {
        // 576 (SmolLM2) and a width with a ragged end; candle sums the squares in one chain,
        // we in 8 lanes: the sums differ by rounding (a few units of 1e-7 relative).
        for n in [576, 77] {
            let x = Tensor::randn(0f32, 2.0, (5, n), &Device::Cpu).unwrap();
            let w = Tensor::randn(1f32, 0.1, n, &Device::Cpu).unwrap();
            let want = candle_nn::ops::rms_norm(&x, &w, 1e-5).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let got = super::rms_norm(&x, &w, 1e-5).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-5 * w.abs(), "{n}: {g} vs {w}");
            }
            // A row alone gives the same bits as in the batch.
            let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut row = Vec::new();
            super::rms_norm_rows(&xs[3 * n..4 * n], &w.to_vec1::<f32>().unwrap(), 1e-5, &mut row);
            assert_eq!(row, got[3 * n..4 * n]);
        }
    }

    #[test]
    fn host_swiglu_is_the_kernels_in_any_split() {
        // One chunk, several chunks and a ragged last one, on 1 and 2 threads: the same values
        // as the kernel over the whole input (and close to candle's, `kernels::act`'s tests).
        for (rows, cols) in [(1, 1536), (3, 4000), (2, 64)] {
            let gate = Tensor::randn(0f32, 3.0, (rows, cols), &Device::Cpu).unwrap();
            let up = Tensor::randn(0f32, 1.0, (rows, cols), &Device::Cpu).unwrap();
            let mut want = gate.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            crate::kernels::swiglu(&mut want, &up.flatten_all().unwrap().to_vec1::<f32>().unwrap());
            for threads in [1, 2] {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let got = pool.install(|| super::swiglu(&gate, &up)).unwrap();
                assert_eq!(got.dims(), &[rows, cols]);
                assert_eq!(got.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want, "{rows}x{cols}, {threads} threads");
            }
        }
    }
}
