//! One transformer block (RMSNorm, grouped-query attention with RoPE over the paged KV cache,
//! SwiGLU MLP), its KV storage, and the loading of its weights from `blk.N.*` tensors (of a
//! GGUF or of safetensors, through `WeightSource`).
//!
//! A forward runs a packed batch of `T` tokens from any number of sequences: activations are
//! `[T, hidden]`, each row at its own position; the matmuls see all `T` rows at once (each
//! weight block read once per batch), attention (`attention.rs`) keeps each row to its own
//! sequence. Query head `h` uses KV head `h / (heads / kv_heads)`, as llama.cpp and HF's
//! `repeat_kv` do.

use candle_core::{Device, Tensor};

use super::attention::{self, Geometry, LayerKv, Span};
use super::config::ModelConfig;
use super::weights::{Linear, WeightSource};
use crate::EngineError;

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
    kv: LayerKv,
}

/// Per-forward inputs shared by every layer: the batch's sequences, each row's position, and
/// the RoPE tables (`[positions, head_dim/2]`).
pub(crate) struct Step<'a> {
    pub spans: &'a [Span<'a>],
    pub positions: &'a [usize],
    pub geometry: Geometry,
    pub cos: &'a [f32],
    pub sin: &'a [f32],
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
        device: &Device,
    ) -> Result<Layer, EngineError> {
        let p = |s: &str| format!("blk.{i}.{s}");
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let q_out = cfg.n_heads * hd;
        let kv_out = cfg.n_kv_heads * hd;
        // In the order the tensors were always read (the first bad one is the error reported).
        let attn_norm = src.vector(&p("attn_norm.weight"), h, device)?;
        let wq = src.matrix(&p("attn_q.weight"), q_out, h, device)?;
        let wk = src.matrix(&p("attn_k.weight"), kv_out, h, device)?;
        let wv = src.matrix(&p("attn_v.weight"), kv_out, h, device)?;
        // Optional: qwen2 has q/k/v biases, llama and mistral don't.
        let mut bias = |name: String, n: usize| -> Result<Option<Tensor>, EngineError> {
            match src.has(&name) {
                true => src.vector(&name, n, device).map(Some),
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
            wo: src.matrix(&p("attn_output.weight"), h, q_out, device)?,
            ffn_norm: src.vector(&p("ffn_norm.weight"), h, device)?,
            w_gate: src.matrix(&p("ffn_gate.weight"), cfg.ffn_size, h, device)?,
            w_up: src.matrix(&p("ffn_up.weight"), cfg.ffn_size, h, device)?,
            w_down: src.matrix(&p("ffn_down.weight"), h, cfg.ffn_size, device)?,
            kv: LayerKv::new(geometry, n_blocks),
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
        let gate = self.w_gate.forward(&h)?.silu()?;
        let up = self.w_up.forward(&h)?;
        let mlp = self.w_down.forward(&(gate * up)?)?;
        x + mlp
    }

    /// Self-attention of the batch over its sequences' KV blocks; returns `[T, heads*head_dim]`.
    fn attention(&mut self, cfg: &ModelConfig, h: &Tensor, s: &Step) -> candle_core::Result<Tensor> {
        let (nh, nkv, hd) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
        let rows = s.positions.len();
        let proj = |w: &Linear, b: &Option<Tensor>| -> candle_core::Result<Vec<f32>> {
            let y = w.forward(h)?;
            let y = match b {
                Some(b) => y.broadcast_add(b)?,
                None => y,
            };
            y.flatten_all()?.to_vec1::<f32>()
        };
        let mut q = proj(&self.wq, &self.bq)?;
        let mut k = proj(&self.wk, &self.bk)?;
        let v = proj(&self.wv, &self.bv)?;
        attention::rope(&mut q, nh, hd, s.positions, s.cos, s.sin, cfg.rope_style);
        attention::rope(&mut k, nkv, hd, s.positions, s.cos, s.sin, cfg.rope_style);
        self.kv.write(&s.geometry, s.spans, &k, &v);
        let out = attention::attend(&self.kv, &s.geometry, s.spans, &q);
        Tensor::from_vec(out, (rows, nh * hd), h.device())
    }
}
