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
//! The same code runs both placements; only the KV storage and attention differ
//! ([`Kv::Host`]: `attention.rs` over f32 rows on the CPU; [`Kv::Device`]: `device_attention.rs`,
//! RoPE by candle's kernels on the device).

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
        Ok(Layer {
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
        })
    }

    /// `x`: `[L, hidden]` residual stream in; returns the residual stream out.
    pub(crate) fn forward(
        &mut self,
        cfg: &ModelConfig,
        x: &Tensor,
        s: &Step,
    ) -> candle_core::Result<Tensor> {
        let h = candle_nn::ops::rms_norm(x, &self.attn_norm, cfg.rms_eps)?;
        let attn = self.attention(cfg, &h, s)?;
        let x = (x + self.wo.forward(&attn)?)?;
        let h = candle_nn::ops::rms_norm(&x, &self.ffn_norm, cfg.rms_eps)?;
        let [gate, up]: [Tensor; 2] = Linear::forward_many(&[&self.w_gate, &self.w_up], &h)?
            .try_into()
            .map_err(|_| candle_core::Error::Msg("gate/up matmul gave the wrong count".into()))?;
        let mlp = self.w_down.forward(&swiglu(&gate, &up)?)?;
        x + mlp
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

/// Parallel items per thread of [`swiglu`] (at least 256 values each).
const SWIGLU_ITEMS_PER_THREAD: usize = 2;

/// `silu(gate) * up` on the host with `kernels::swiglu` (candle's formula; its `exp` on AVX2 is
/// the kernel's own, within a few ulp), in parallel chunks (`crate::pool::for_each`); any other
/// device or dtype goes through candle.
fn swiglu(gate: &Tensor, up: &Tensor) -> candle_core::Result<Tensor> {
    let host = |t: &Tensor| t.device().is_cpu() && t.dtype() == candle_core::DType::F32;
    if !(host(gate) && host(up)) || gate.dims() != up.dims() {
        return gate.silu()? * up;
    }
    let mut g = gate.flatten_all()?.to_vec1::<f32>()?;
    let u = up.flatten_all()?.to_vec1::<f32>()?;
    let chunk = g.len().div_ceil(crate::pool::threads() * SWIGLU_ITEMS_PER_THREAD).max(256);
    let chunks: Vec<_> = g.chunks_mut(chunk).zip(u.chunks(chunk)).map(std::sync::Mutex::new).collect();
    crate::pool::for_each(chunks.len(), |i| {
        let mut chunk = chunks[i].lock().unwrap_or_else(|e| e.into_inner());
        let (g, u) = &mut *chunk;
        crate::kernels::swiglu(g, u);
    });
    drop(chunks);
    Tensor::from_vec(g, gate.dims(), gate.device())
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

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
