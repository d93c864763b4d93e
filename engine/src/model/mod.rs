//! The forward pass of Llama-family models (llama, mistral, qwen2) loaded from GGUF: weights as
//! stored (Q4_1 matmuls on our own SIMD kernels in `crate::kernels`, other types through
//! candle's `QMatMul`), RoPE tables and a preallocated KV cache
//! of `ctx_size` positions. One sequence at a time; the generation loop owns the positions.
//!
//! Invariants: cache entries `0..n_filled` hold the keys/values of the tokens last run at those
//! positions; `forward` only reads entries below its own positions and overwrites from `pos` on.
//!
//! Memory: weights stay in their GGUF type (the embedding table is dequantized one row per token
//! looked up); the KV cache is f32, `2 * n_layers * n_kv_heads * ctx_size * head_dim * 4` bytes
//! (SmolLM2-135M at 8192 positions: 377 MB; pass a smaller `ctx_size` to shrink it).
//!
//! Threads: Q4_1 matmuls run on our kernels (`crate::kernels`) on the current rayon pool (the
//! caller's thread alone when that pool has one thread). candle 0.11's quantized matmuls
//! (every other weight type, e.g. SmolLM2's Q8_0 tied output) run on candle's own global
//! "barrier pool", sized once from `CANDLE_NUM_THREADS` (else `RAYON_NUM_THREADS`, else the
//! physical core count) on first use, NOT on the caller's rayon pool; the f32 matmuls (attention) use gemm with
//! `RAYON_NUM_THREADS` tasks on the current rayon pool, and candle-nn's norm/rope/softmax kernels
//! use the current rayon pool. So a `--threads N` setting must export `CANDLE_NUM_THREADS=N` and
//! `RAYON_NUM_THREADS=N` before the first tensor op, in addition to any `ThreadPool::install`.
//! The barrier pool's workers spin (`CANDLE_BARRIER_POOL_SPIN_LIMIT`, default 25000) between
//! ops: on a loaded 2-core box 2 threads fell to 2-5 tok/s with the default and ran at 12 tok/s
//! with a limit of 200.

mod config;
mod layer;
mod rope;
mod weights;

use std::sync::Arc;

use candle_core::{Device, Tensor};

pub use config::{ModelConfig, RopeScaling, RopeStyle};
use layer::{Layer, Step};
use weights::Linear;

use crate::gguf::GgufFile;
use crate::EngineError;

/// Longest run of tokens pushed through the layers at once. Longer prompts are processed in
/// chunks so the attention scores (`heads * chunk * keys` floats) stay bounded (<= 150 MB for a
/// 9-head model at 8192 keys).
const PREFILL_CHUNK: usize = 512;

/// Choices made at load time that trade memory for speed.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Convert Q4_1/Q5_0/Q5_1 weight matrices to Q8_0 at load. candle 0.11's CPU kernels for
    /// those types are scalar while Q8_0's use SIMD, so decode gets several times faster; the
    /// weights take ~1.7x the memory (Q8_0 is 8.5 bits per weight, Q4_1 5) and pick up Q8_0's
    /// rounding (well below the Q4 rounding already in them).
    pub requantize_to_q8_0: bool,
}

/// A loaded model with its KV cache.
pub struct Model {
    config: ModelConfig,
    device: Device,
    ctx_size: usize,
    /// Cache entries `0..n_filled` are valid.
    n_filled: usize,
    /// `token_embd.weight`, `[vocab, hidden]`, kept in its stored type.
    embeddings: Arc<candle_core::quantized::QTensor>,
    layers: Vec<Layer>,
    output_norm: Tensor,
    /// `output.weight`, or the embedding table when the model ties them.
    output: Linear,
    rope_cos: Tensor,
    rope_sin: Tensor,
}

impl Model {
    /// Loads weights from an open GGUF. `ctx_size`: KV-cache length, default (None) = the model's
    /// context_length; larger than context_length is an error naming --ctx-size.
    pub fn load(gguf: &mut GgufFile, ctx_size: Option<usize>) -> Result<Model, EngineError> {
        Self::load_with(gguf, ctx_size, &LoadOptions::default())
    }

    /// [`Model::load`] with explicit [`LoadOptions`].
    pub fn load_with(
        gguf: &mut GgufFile,
        ctx_size: Option<usize>,
        options: &LoadOptions,
    ) -> Result<Model, EngineError> {
        let requantize = options.requantize_to_q8_0;
        let device = Device::Cpu;
        let embd_info = gguf.tensor_info("token_embd.weight")?;
        let vocab_rows = match embd_info.shape.dims() {
            [rows, _] => *rows,
            other => {
                return Err(EngineError::Load(format!(
                    "token_embd.weight has shape {other:?}, expected 2-D"
                )))
            }
        };
        let config = ModelConfig::from_gguf(gguf, vocab_rows)?;
        let ctx_size = match ctx_size {
            None => config.context_length,
            Some(0) => return Err(EngineError::Load("--ctx-size must be at least 1".into())),
            Some(n) if n > config.context_length => {
                return Err(EngineError::Load(format!(
                "--ctx-size {n} is larger than the model's context length {} (`{}.context_length`)",
                config.context_length, config.arch
            )))
            }
            Some(n) => n,
        };
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        let embeddings = Arc::new(weights::qtensor(
            gguf,
            "token_embd.weight",
            vocab,
            hidden,
            &device,
        )?);
        let output = if gguf.has_tensor("output.weight") {
            weights::matrix(gguf, requantize, "output.weight", vocab, hidden, &device)?
        } else {
            Linear::new(embeddings.clone()).map_err(|e| {
                EngineError::Load(format!("tied output from token_embd.weight: {e}"))
            })?
        };
        let output_norm = weights::vector(gguf, "output_norm.weight", hidden, &device)?;
        let freq_factors = if gguf.has_tensor("rope_freqs.weight") {
            let t = weights::vector(gguf, "rope_freqs.weight", config.rope_dim / 2, &device)?;
            Some(t.to_vec1::<f32>()?)
        } else {
            None
        };
        let tables = rope::build(&config, ctx_size, freq_factors.as_deref(), &device)?;
        let layers = (0..config.n_layers)
            .map(|i| Layer::load(gguf, &config, i, ctx_size, requantize, &device))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Model {
            config,
            device,
            ctx_size,
            n_filled: 0,
            embeddings,
            layers,
            output_norm,
            output,
            rope_cos: tables.cos,
            rope_sin: tables.sin,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The KV-cache length: positions `0..ctx_size` can be used.
    pub fn ctx_size(&self) -> usize {
        self.ctx_size
    }

    /// Runs `tokens` at positions pos..pos+tokens.len() (causal attention over the cache entries
    /// 0..pos, which must have been filled by earlier calls; entries at positions >= pos are
    /// overwritten). Returns the logits (vocab_size f32) of the LAST token. Err (not panic) if
    /// pos+len > ctx_size or a token id >= vocab.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, EngineError> {
        if tokens.is_empty() {
            return Err(EngineError::invalid("no tokens to run", None));
        }
        let end = pos.saturating_add(tokens.len());
        if end > self.ctx_size {
            return Err(EngineError::ContextLength {
                message: format!(
                    "{} tokens at position {pos} need {end} positions, but the context holds {}",
                    tokens.len(),
                    self.ctx_size
                ),
            });
        }
        if let Some(bad) = tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(EngineError::invalid(
                format!(
                    "token id {bad} is out of range (the vocabulary has {} tokens)",
                    self.config.vocab_size
                ),
                None,
            ));
        }
        if pos > self.n_filled {
            return Err(EngineError::Internal(format!(
                "forward at position {pos}, but only cache entries 0..{} are filled",
                self.n_filled
            )));
        }
        // From here on entries >= pos are being overwritten: they stop being valid until done.
        self.n_filled = pos;
        let mut hidden = None;
        for (i, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
            let chunk_pos = pos + i * PREFILL_CHUNK;
            hidden = Some(self.run_chunk(chunk, chunk_pos)?);
            self.n_filled = chunk_pos + chunk.len();
        }
        let hidden = hidden.ok_or_else(|| EngineError::Internal("no chunk ran".into()))?;
        let last = hidden.narrow(0, hidden.dim(0)? - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.output_norm, self.config.rms_eps)?;
        let logits = self.output.forward(&last)?.squeeze(0)?;
        Ok(logits.to_vec1::<f32>()?)
    }

    /// Runs one chunk through every layer; returns the final residual stream `[len, hidden]`.
    fn run_chunk(&mut self, tokens: &[u32], pos: usize) -> Result<Tensor, EngineError> {
        let len = tokens.len();
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embeddings.embedding(&ids)?;
        let key_start = match self.config.sliding_window {
            Some(w) => (pos + 1).saturating_sub(w),
            None => 0,
        };
        let mask = if len > 1 {
            Some(self.mask(pos, len, key_start)?)
        } else {
            None
        };
        let cos = self.rope_cos.narrow(0, pos, len)?;
        let sin = self.rope_sin.narrow(0, pos, len)?;
        let step = Step {
            pos,
            len,
            key_start,
            mask: mask.as_ref(),
            cos: &cos,
            sin: &sin,
        };
        for layer in &mut self.layers {
            x = layer.forward(&self.config, &x, &step)?;
        }
        Ok(x)
    }

    /// `[len, pos+len-key_start]` additive mask: query `i` (position `pos+i`) sees key position
    /// `j` iff `j <= pos+i` and, with a sliding window `w`, `pos+i - j < w`.
    fn mask(&self, pos: usize, len: usize, key_start: usize) -> Result<Tensor, EngineError> {
        let n_keys = pos + len - key_start;
        let window = self.config.sliding_window.unwrap_or(usize::MAX);
        let mut m = Vec::with_capacity(len * n_keys);
        for i in 0..len {
            let p = pos + i;
            m.extend((key_start..pos + len).map(|j| {
                if j <= p && p - j < window {
                    0.0f32
                } else {
                    f32::NEG_INFINITY
                }
            }));
        }
        Ok(Tensor::from_vec(m, (len, n_keys), &self.device)?)
    }
}
