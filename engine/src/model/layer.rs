//! One transformer block (RMSNorm, grouped-query attention with RoPE over a preallocated
//! KV cache, SwiGLU MLP) and the loading of its weights from `blk.N.*` tensors.
//!
//! Shapes inside a block, for a chunk of `L` tokens at positions `pos..pos+L`:
//! activations are `[L, hidden]`; per-head tensors are `[heads, L, head_dim]`; each KV cache is
//! `[kv_heads, ctx_size, head_dim]` and is written in place (`slice_set`), never regrown.
//! Query heads are grouped by the KV head they share (`head h` uses `kv head h / group`, as in
//! llama.cpp and HF's `repeat_kv`), so attention is one batched matmul per KV head with no copy
//! of K/V per query head.

use candle_core::{DType, Device, Tensor};

use super::config::{ModelConfig, RopeStyle};
use super::weights::{self, Linear};
use crate::gguf::GgufFile;
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
    k_cache: Tensor,
    v_cache: Tensor,
}

/// Per-forward inputs shared by every layer.
pub(crate) struct Step<'a> {
    pub pos: usize,
    pub len: usize,
    /// First cache position any query of this chunk may attend to (sliding window), else 0.
    pub key_start: usize,
    /// `[len, pos+len-key_start]` additive mask (0 or -inf); None when every key is visible.
    pub mask: Option<&'a Tensor>,
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
}

impl Layer {
    pub(crate) fn load(
        gguf: &mut GgufFile,
        cfg: &ModelConfig,
        i: usize,
        ctx_size: usize,
        requantize: bool,
        device: &Device,
    ) -> Result<Layer, EngineError> {
        let p = |s: &str| format!("blk.{i}.{s}");
        let (h, hd) = (cfg.hidden_size, cfg.head_dim);
        let q_out = cfg.n_heads * hd;
        let kv_out = cfg.n_kv_heads * hd;
        let bias =
            |gguf: &mut GgufFile, name: String, n: usize| -> Result<Option<Tensor>, EngineError> {
                if gguf.has_tensor(&name) {
                    weights::vector(gguf, &name, n, device).map(Some)
                } else {
                    Ok(None)
                }
            };
        let cache = || Tensor::zeros((cfg.n_kv_heads, ctx_size, hd), DType::F32, device);
        Ok(Layer {
            attn_norm: weights::vector(gguf, &p("attn_norm.weight"), h, device)?,
            wq: weights::matrix(gguf, requantize, &p("attn_q.weight"), q_out, h, device)?,
            wk: weights::matrix(gguf, requantize, &p("attn_k.weight"), kv_out, h, device)?,
            wv: weights::matrix(gguf, requantize, &p("attn_v.weight"), kv_out, h, device)?,
            bq: bias(gguf, p("attn_q.bias"), q_out)?,
            bk: bias(gguf, p("attn_k.bias"), kv_out)?,
            bv: bias(gguf, p("attn_v.bias"), kv_out)?,
            wo: weights::matrix(gguf, requantize, &p("attn_output.weight"), h, q_out, device)?,
            ffn_norm: weights::vector(gguf, &p("ffn_norm.weight"), h, device)?,
            w_gate: weights::matrix(
                gguf,
                requantize,
                &p("ffn_gate.weight"),
                cfg.ffn_size,
                h,
                device,
            )?,
            w_up: weights::matrix(
                gguf,
                requantize,
                &p("ffn_up.weight"),
                cfg.ffn_size,
                h,
                device,
            )?,
            w_down: weights::matrix(
                gguf,
                requantize,
                &p("ffn_down.weight"),
                h,
                cfg.ffn_size,
                device,
            )?,
            k_cache: cache()?,
            v_cache: cache()?,
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

    /// Self-attention of the chunk over the cache; returns `[L, heads*head_dim]`.
    fn attention(
        &mut self,
        cfg: &ModelConfig,
        h: &Tensor,
        s: &Step,
    ) -> candle_core::Result<Tensor> {
        let (l, hd) = (s.len, cfg.head_dim);
        let (nh, nkv) = (cfg.n_heads, cfg.n_kv_heads);
        let group = nh / nkv;
        let proj = |w: &Linear, b: &Option<Tensor>| -> candle_core::Result<Tensor> {
            let y = w.forward(h)?;
            match b {
                Some(b) => y.broadcast_add(b),
                None => Ok(y),
            }
        };
        // [L, n*hd] -> [1, n, L, hd] (contiguous, as the rope kernels require).
        let heads = |t: Tensor, n: usize| {
            t.reshape((l, n, hd))?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((1, n, l, hd))
        };
        let q = heads(proj(&self.wq, &self.bq)?, nh)?;
        let k = heads(proj(&self.wk, &self.bk)?, nkv)?;
        let v = heads(proj(&self.wv, &self.bv)?, nkv)?;
        let (q, k) = match cfg.rope_style {
            RopeStyle::Interleaved => (
                candle_nn::rotary_emb::rope_i(&q, s.cos, s.sin)?,
                candle_nn::rotary_emb::rope_i(&k, s.cos, s.sin)?,
            ),
            RopeStyle::Neox => (
                candle_nn::rotary_emb::rope(&q, s.cos, s.sin)?,
                candle_nn::rotary_emb::rope(&k, s.cos, s.sin)?,
            ),
        };
        self.k_cache
            .slice_set(&k.reshape((nkv, l, hd))?, 1, s.pos)?;
        self.v_cache
            .slice_set(&v.reshape((nkv, l, hd))?, 1, s.pos)?;
        let n_keys = s.pos + l - s.key_start;
        let keys = self.k_cache.narrow(1, s.key_start, n_keys)?;
        let values = self.v_cache.narrow(1, s.key_start, n_keys)?;
        // Queries of one KV group side by side: [nkv, group*L, hd]; scaled before the matmul.
        let q = q
            .reshape((nkv, group * l, hd))?
            .affine(1.0 / (hd as f64).sqrt(), 0.0)?;
        let mut scores = q.matmul(&keys.t()?)?;
        if let Some(mask) = s.mask {
            scores = scores
                .reshape((nkv, group, l, n_keys))?
                .broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.reshape((nkv, group * l, n_keys))?;
        let out = probs.matmul(&values)?; // [nkv, group*L, hd] == [nh, L, hd]
        out.reshape((nh, l, hd))?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((l, nh * hd))
    }
}
