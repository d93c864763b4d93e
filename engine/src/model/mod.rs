//! The forward pass of Llama-family models (llama, mistral, qwen2) loaded from GGUF (weights as
//! stored: Q4_1, Q8_0, Q4_0 and Q6_K matmuls on our own SIMD kernels in `crate::kernels`, other
//! types through candle's `QMatMul`) or from Hugging Face safetensors ([`Model::load_safetensors`]:
//! f32 weights on our dense kernel, the same GGUF tensor names through `weights::WeightSource`),
//! RoPE tables, and a paged KV cache of fixed-size blocks
//! (`attention.rs`). [`Model::forward_batch`] runs a packed batch of several sequences (each
//! with its tokens, start position and block table) in one pass; [`Model::forward`] is the
//! one-sequence convenience over an identity block table.
//!
//! Invariants: a forward only reads the KV entries of positions below its tokens' own (in the
//! blocks the caller names) and writes those of its tokens; which blocks hold what is the
//! caller's business (`crate::kv` in the server). Each row's result depends only on its own
//! sequence's tokens (see `attention.rs`; the matmuls are per row too), so batching and
//! chunking never change a value.
//!
//! Memory: GGUF weights stay in their stored type (the embedding table is dequantized one row
//! per token looked up); safetensors weights take 4 bytes each (twice a bf16 checkpoint); the host
//! KV cache is f16 (`--kv-cache-dtype`, or f32), `2 * n_layers * n_kv_heads * head_dim * 2` (4)
//! bytes per token (SmolLM2-135M: 23 KB, 189 MB for its 8192 positions; f32 twice that),
//! allocated zeroed so only the blocks written cost resident memory.
//!
//! Threads: our matmuls, attention and SwiGLU are spread by `crate::pool` over the current
//! rayon pool's threads (during the worker's forward passes, as a spinning team of them; the
//! caller's thread alone when that pool has one thread). candle 0.11's quantized matmuls
//! (the weight types our kernels don't run) run on candle's own global "barrier pool", sized
//! once from
//! `CANDLE_NUM_THREADS` (else `RAYON_NUM_THREADS`, else the physical core count) on first use,
//! NOT on the caller's rayon pool; candle-nn's norm kernels use the current rayon pool. So a
//! `--threads N` setting must export `CANDLE_NUM_THREADS=N` and `RAYON_NUM_THREADS=N` before the
//! first tensor op, in addition to any `ThreadPool::install`. The barrier pool's workers spin
//! (`CANDLE_BARRIER_POOL_SPIN_LIMIT`, default 25000) between ops: on a loaded 2-core box 2
//! threads fell to 2-5 tok/s with the default and ran at 12 tok/s with a limit of 200.

pub(crate) mod attention;
pub mod checks;
mod config;
pub(crate) mod device_attention;
mod layer;
mod placement;
mod presets;
mod rope;
mod weights;

use candle_core::{DType, Device, Tensor};

use attention::{Geometry, Span};
pub use config::{ModelConfig, RopeScaling, RopeStyle};
use device_attention::DeviceBatch;
use layer::{DeviceStep, HostScratch, Layer, Step};
pub use placement::{KvDtype, Placement};
use weights::{Embeddings, Linear, WeightSource};

use crate::gguf::GgufFile;
use crate::hf::SafetensorsWeights;
use crate::EngineError;

/// Positions per KV block.
pub const KV_BLOCK_SIZE: usize = 16;

/// Longest run of tokens [`Model::forward`] pushes through the layers at once (bounds the
/// activations; the server's scheduler bounds its batches itself).
const PREFILL_CHUNK: usize = 512;

/// Choices made at load time that trade memory for speed.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Convert Q4_1/Q5_0/Q5_1 weight matrices to Q8_0 at load. candle 0.11's CPU kernels for
    /// those types are scalar while Q8_0's use SIMD, so decode gets several times faster; the
    /// weights take ~1.7x the memory (Q8_0 is 8.5 bits per weight, Q4_1 5) and pick up Q8_0's
    /// rounding (well below the Q4 rounding already in them).
    pub requantize_to_q8_0: bool,
    /// KV blocks of [`KV_BLOCK_SIZE`] positions to allocate (None: one full context). Fewer
    /// than one full context is an error.
    pub kv_blocks: Option<usize>,
    /// Host kernels (default) or a candle device and dtype.
    pub placement: Placement,
}

/// One sequence's part of a [`Model::forward_batch`]: `tokens` at positions
/// `pos..pos+tokens.len()`, keys/values through the block table `blocks` (block `i` holds
/// positions `i*KV_BLOCK_SIZE..`); `logits`: return the logits of its last token.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    pub tokens: &'a [u32],
    pub pos: usize,
    pub blocks: &'a [u32],
    pub logits: bool,
}

/// The attention shape of a model of this config over blocks of [`KV_BLOCK_SIZE`].
fn geometry(cfg: &ModelConfig) -> Geometry {
    Geometry {
        n_heads: cfg.n_heads,
        n_kv_heads: cfg.n_kv_heads,
        head_dim: cfg.head_dim,
        block_size: KV_BLOCK_SIZE,
        sliding_window: cfg.sliding_window,
    }
}

/// Bytes of KV cache one block takes for a model of this shape at this placement.
pub fn kv_bytes_per_block(cfg: &ModelConfig, placement: &Placement) -> usize {
    2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * KV_BLOCK_SIZE * placement.kv_elem_bytes()
}

/// Where [`Model::run`] left the logits of the sequences that asked for them.
enum Logits {
    /// `[n, vocab]` at the front of the scratch's logits buffer (reused from step to step).
    Host(usize),
    /// `[n, vocab]` on the device, in the model's dtype.
    Device(Tensor),
    /// No sequence asked.
    None,
}

/// A loaded model with its KV storage.
pub struct Model {
    config: ModelConfig,
    placement: Placement,
    device: Device,
    ctx_size: usize,
    n_blocks: usize,
    /// For [`Model::forward`]: positions `0..n_filled` of the identity block table are valid.
    n_filled: usize,
    identity: Vec<u32>,
    /// `token_embd.weight`, `[vocab, hidden]`, kept in its stored type (host) or dense.
    embeddings: Embeddings,
    layers: Vec<Layer>,
    output_norm: Tensor,
    /// `output.weight`, or the embedding table when the model ties them.
    output: Linear,
    /// Whether `output` is the embedding table.
    tied_output: bool,
    /// The RoPE tables `[ctx, head_dim/2]` flattened (host placement only; empty otherwise).
    rope_cos: Vec<f32>,
    rope_sin: Vec<f32>,
    /// The RoPE tables `[ctx, head_dim/2]` f32 on the device (device placement only).
    device_rope: Option<(Tensor, Tensor)>,
    /// The host forward's buffers ([`Layer::forward_host`]).
    scratch: HostScratch,
    /// Run the host placement through the layers' tensor path (tests compare the two).
    tensor_path: bool,
}

impl Model {
    /// Loads weights from an open GGUF. `ctx_size`: longest sequence, default (None) = the
    /// model's context_length; larger than context_length is an error naming --ctx-size.
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
        let context_key = format!("`{}.context_length`", config.arch);
        let src = WeightSource::Gguf {
            file: gguf,
            requantize,
        };
        Self::build(src, config, &context_key, ctx_size, options)
    }

    /// Loads a Hugging Face checkpoint: `config` from its config.json
    /// ([`HfConfig::model_config`](crate::hf::HfConfig::model_config)), tensors from `weights`
    /// (asked for by GGUF name, see [`SafetensorsWeights`]; tied embeddings already decided
    /// there). Every tensor is widened to f32 (exact from F32, F16 and BF16); matrices run on our
    /// dense f32 kernel, whose rows never depend on the batch. `ctx_size` and
    /// `options.kv_blocks` as for [`Model::load_with`]; `requantize_to_q8_0` does not apply.
    pub fn load_safetensors(
        weights: &SafetensorsWeights,
        config: ModelConfig,
        ctx_size: Option<usize>,
        options: &LoadOptions,
    ) -> Result<Model, EngineError> {
        let src = WeightSource::Safetensors(weights);
        Self::build(
            src,
            config,
            "config.json's `max_position_embeddings`",
            ctx_size,
            options,
        )
    }

    /// A model of `config`'s shape with random weights (normal, std 0.02; norms 1), created on
    /// the placement's device: benchmarks of a real shape where nothing can be downloaded.
    /// Different placements draw different values (the device's own generator; `seed` seeds
    /// a GPU's, the CPU's can't be seeded).
    pub fn random(
        config: ModelConfig,
        ctx_size: Option<usize>,
        seed: u64,
        options: &LoadOptions,
    ) -> Result<Model, EngineError> {
        let device = options.placement.device();
        // candle's CPU generator can't be seeded: CPU draws differ from run to run.
        if !device.is_cpu() {
            device.set_seed(seed)?;
        }
        let src = WeightSource::Random { qwen2: config.arch == "qwen2" };
        Self::build(src, config, "the preset's context length", ctx_size, options)
    }

    /// The load path shared by every source; `context_key` names where `context_length` came
    /// from (for the --ctx-size message).
    fn build(
        mut src: WeightSource,
        config: ModelConfig,
        context_key: &str,
        ctx_size: Option<usize>,
        options: &LoadOptions,
    ) -> Result<Model, EngineError> {
        let at = &options.placement;
        let device = at.device();
        let ctx_size = match ctx_size {
            None => config.context_length,
            Some(0) => return Err(EngineError::Load("--ctx-size must be at least 1".into())),
            Some(n) if n > config.context_length => {
                return Err(EngineError::Load(format!(
                    "--ctx-size {n} is larger than the model's context length {} ({context_key})",
                    config.context_length
                )))
            }
            Some(n) => n,
        };
        let full = ctx_size.div_ceil(KV_BLOCK_SIZE);
        let n_blocks = options.kv_blocks.unwrap_or(full);
        if n_blocks < full {
            return Err(EngineError::Load(format!(
                "a KV cache of {n_blocks} blocks ({} tokens) cannot hold one full context of \
                 {ctx_size} tokens: raise --kv-cache-mb or lower --ctx-size",
                n_blocks * KV_BLOCK_SIZE
            )));
        }
        let geometry = geometry(&config);
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        if matches!(at, Placement::Device { .. }) && config.rope_dim != config.head_dim {
            return Err(EngineError::Unsupported("partial rotary embeddings on a device placement".into()));
        }
        let mut embeddings = src.embeddings("token_embd.weight", vocab, hidden, at)?;
        let tied_output = !src.has("output.weight");
        let output = if !tied_output {
            src.matrix("output.weight", vocab, hidden, at)?
        } else {
            src.tied_output(&embeddings).map_err(|e| {
                EngineError::Load(format!("tied output from token_embd.weight: {e}"))
            })?
        };
        if tied_output && output.packed_rows(&[]).is_some() {
            // The output matrix repacked its copy of the table: look tokens up there and drop
            // the GGUF copy (the table once in memory, not twice).
            embeddings = Embeddings::Tied;
        }
        let output_norm = src.vector("output_norm.weight", hidden, at)?;
        let freq_factors = if src.has("rope_freqs.weight") {
            let t = src.vector("rope_freqs.weight", config.rope_dim / 2, &Placement::default())?;
            Some(t.to_vec1::<f32>()?)
        } else {
            None
        };
        let tables = rope::build(&config, ctx_size, freq_factors.as_deref(), &Device::Cpu)?;
        // Each placement keeps the tables where its RoPE reads them.
        let (rope_cos, rope_sin, device_rope) = match at {
            Placement::Host { .. } => (tables.cos.flatten_all()?.to_vec1::<f32>()?, tables.sin.flatten_all()?.to_vec1::<f32>()?, None),
            Placement::Device { device, .. } => {
                (Vec::new(), Vec::new(), Some((tables.cos.to_device(device)?, tables.sin.to_device(device)?)))
            }
        };
        let layers = (0..config.n_layers)
            .map(|i| Layer::load(&mut src, &config, i, &geometry, n_blocks, at))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Model {
            config,
            placement: options.placement.clone(),
            device,
            ctx_size,
            n_blocks,
            n_filled: 0,
            identity: (0..full as u32).collect(),
            embeddings,
            layers,
            output_norm,
            output,
            tied_output,
            rope_cos,
            rope_sin,
            device_rope,
            scratch: HostScratch::default(),
            tensor_path: false,
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The longest sequence: positions `0..ctx_size` can be used.
    pub fn ctx_size(&self) -> usize {
        self.ctx_size
    }

    /// KV blocks allocated (each [`KV_BLOCK_SIZE`] positions of one sequence).
    pub fn kv_blocks(&self) -> usize {
        self.n_blocks
    }

    fn geometry(&self) -> Geometry {
        geometry(&self.config)
    }

    /// Runs one sequence's `tokens` at positions pos..pos+tokens.len() over blocks
    /// `0, 1, 2...` (causal attention over the entries 0..pos, which must have been filled by
    /// earlier calls; entries at positions >= pos are overwritten). Returns the logits
    /// (vocab_size f32) of the LAST token. Err (not panic) if pos+len > ctx_size or a token id
    /// >= vocab.
    pub fn forward(&mut self, tokens: &[u32], pos: usize) -> Result<Vec<f32>, EngineError> {
        // Checked before anything changes: a refused call leaves the cache as it was.
        let whole = SeqInput { tokens, pos, blocks: &self.identity, logits: true };
        self.check(&whole)?;
        if pos > self.n_filled {
            return Err(EngineError::Internal(format!(
                "forward at position {pos}, but only cache entries 0..{} are filled",
                self.n_filled
            )));
        }
        // From here on entries >= pos are being overwritten: they stop being valid until done.
        self.n_filled = pos;
        let identity = std::mem::take(&mut self.identity);
        let mut logits = Vec::new();
        let mut res = Ok(());
        for (i, chunk) in tokens.chunks(PREFILL_CHUNK).enumerate() {
            let chunk_pos = pos + i * PREFILL_CHUNK;
            let last = chunk_pos + chunk.len() == pos + tokens.len();
            let seq = SeqInput { tokens: chunk, pos: chunk_pos, blocks: &identity, logits: last };
            match self.forward_batch(&[seq]) {
                Ok(mut l) => {
                    self.n_filled = chunk_pos + chunk.len();
                    logits = l.pop().unwrap_or_default();
                }
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        self.identity = identity;
        res.map(|()| logits)
    }

    /// Runs a packed batch: every sequence's tokens at their positions over their block tables,
    /// in one pass through the layers. Returns the last-token logits of each sequence that asks
    /// for them, in order. Err (not panic) for an empty sequence, positions past ctx_size, a
    /// block table too short or naming a block that doesn't exist, or a token id >= vocab.
    pub fn forward_batch(&mut self, seqs: &[SeqInput]) -> Result<Vec<Vec<f32>>, EngineError> {
        match self.run(seqs)? {
            Logits::Host(n) => Ok(self.scratch.logits.chunks_exact(self.config.vocab_size).take(n).map(<[f32]>::to_vec).collect()),
            Logits::Device(logits) => Ok(logits.to_dtype(DType::F32)?.to_vec2::<f32>()?),
            Logits::None => Ok(Vec::new()),
        }
    }

    /// [`Model::forward_batch`] with greedy sampling where the logits are: the argmax token of
    /// each sequence that asks for logits, chosen on the device, so that only the ids are
    /// copied back (ties: the lowest id on the host; the device's argmax on a device).
    pub fn forward_batch_greedy(&mut self, seqs: &[SeqInput]) -> Result<Vec<u32>, EngineError> {
        match self.run(seqs)? {
            Logits::Host(n) => {
                Ok(self.scratch.logits.chunks_exact(self.config.vocab_size).take(n).map(crate::sampler::argmax).collect())
            }
            Logits::Device(logits) => Ok(logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?),
            Logits::None => Ok(Vec::new()),
        }
    }

    /// The forward of [`Model::forward_batch`]; the logits `[asking seqs, vocab]` stay where
    /// they were computed, in the model's dtype.
    fn run(&mut self, seqs: &[SeqInput]) -> Result<Logits, EngineError> {
        let mut spans = Vec::with_capacity(seqs.len());
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for s in seqs {
            self.check(s)?;
            spans.push(Span { row: ids.len(), len: s.tokens.len(), pos: s.pos, blocks: s.blocks });
            ids.extend_from_slice(s.tokens);
            positions.extend(s.pos..s.pos + s.tokens.len());
        }
        if ids.is_empty() {
            return Err(EngineError::invalid("no tokens to run", None));
        }
        let n_ids = ids.len();
        let mut x = self.embeddings.lookup(&Tensor::from_vec(ids, n_ids, &self.device)?, &self.output)?;
        let geometry = self.geometry();
        let device = match &self.device_rope {
            None => None,
            Some((cos, sin)) => {
                // Each row's cos/sin, gathered by the positions the batch uploads anyway.
                let batch = DeviceBatch::new(&geometry, &spans, &self.device)?;
                let half = self.config.head_dim / 2;
                let gather =
                    |t: &Tensor| t.index_select(&batch.positions, 0)?.to_dtype(x.dtype())?.reshape((n_ids, 1, half));
                let (cos, sin) = (gather(cos)?, gather(sin)?);
                Some(DeviceStep { batch, cos, sin })
            }
        };
        let step = Step {
            spans: &spans,
            positions: &positions,
            geometry,
            cos: &self.rope_cos,
            sin: &self.rope_sin,
            device,
        };
        let last_rows: Vec<usize> =
            spans.iter().zip(seqs).filter(|(_, s)| s.logits).map(|(sp, _)| sp.row + sp.len - 1).collect();
        let n = last_rows.len();
        if matches!(self.placement, Placement::Host { .. }) && !self.tensor_path {
            // The host forward: slices and reused buffers, no tensors until the logits.
            let (cfg, h) = (&self.config, self.config.hidden_size);
            let mut xs = x.flatten_all()?.to_vec1::<f32>()?;
            for layer in &mut self.layers {
                layer.forward_host(cfg, &mut xs, &step, &mut self.scratch)?;
            }
            if n == 0 {
                return Ok(Logits::None);
            }
            let last: Vec<f32> = last_rows.iter().flat_map(|&r| &xs[r * h..(r + 1) * h]).copied().collect();
            let mut normed = Vec::new();
            layer::rms_norm_rows(&last, &self.output_norm.to_vec1::<f32>()?, cfg.rms_eps, &mut normed);
            Linear::host_many(&[&self.output], &normed, n, &mut [&mut self.scratch.logits])?;
            return Ok(Logits::Host(n));
        }
        for layer in &mut self.layers {
            x = layer.forward(&self.config, &x, &step)?;
        }
        if n == 0 {
            return Ok(Logits::None);
        }
        let rows = Tensor::from_vec(last_rows.iter().map(|&r| r as u32).collect::<Vec<_>>(), n, &self.device)?;
        let last = x.index_select(&rows, 0)?;
        let last = layer::rms_norm(&last, &self.output_norm, self.config.rms_eps)?;
        let logits = self.output.forward(&last)?;
        match self.placement {
            Placement::Host { .. } => {
                self.scratch.logits = logits.flatten_all()?.to_vec1::<f32>()?;
                Ok(Logits::Host(n))
            }
            Placement::Device { .. } => Ok(Logits::Device(logits)),
        }
    }

    /// Waits until the device has finished the work queued so far (timing; a no-op on the CPU).
    pub fn synchronize(&self) -> Result<(), EngineError> {
        Ok(self.device.synchronize()?)
    }

    /// The device the model lives on (`Device::Cpu` for the host placement).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Where the model lives.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// Bytes of all weights as stored (the tied output counted once; a decode step reads all of
    /// them but the embedding table, of which it reads one row per token).
    pub fn weight_bytes(&self) -> usize {
        let output = if self.tied_output { 0 } else { self.output.bytes() };
        let v = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.embeddings.bytes() + output + v(&self.output_norm) + self.layers.iter().map(Layer::weight_bytes).sum::<usize>()
    }

    /// KV-cache bytes of one position, all layers, keys and values.
    pub fn kv_bytes_per_token(&self) -> usize {
        kv_bytes_per_block(&self.config, &self.placement) / KV_BLOCK_SIZE
    }

    fn check(&self, s: &SeqInput) -> Result<(), EngineError> {
        if s.tokens.is_empty() {
            return Err(EngineError::invalid("no tokens to run", None));
        }
        let end = s.pos.saturating_add(s.tokens.len());
        if end > self.ctx_size {
            return Err(EngineError::ContextLength {
                message: format!(
                    "{} tokens at position {} need {end} positions, but the context holds {}",
                    s.tokens.len(),
                    s.pos,
                    self.ctx_size
                ),
            });
        }
        let needed = end.div_ceil(KV_BLOCK_SIZE);
        if s.blocks.len() < needed {
            return Err(EngineError::Internal(format!(
                "a block table of {} blocks for {end} positions",
                s.blocks.len()
            )));
        }
        if let Some(b) = s.blocks[..needed].iter().find(|&&b| b as usize >= self.n_blocks) {
            return Err(EngineError::Internal(format!(
                "block {b} named, but the KV cache has {} blocks",
                self.n_blocks
            )));
        }
        if let Some(bad) = s.tokens.iter().find(|&&t| t as usize >= self.config.vocab_size) {
            return Err(EngineError::invalid(
                format!(
                    "token id {bad} is out of range (the vocabulary has {} tokens)",
                    self.config.vocab_size
                ),
                None,
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "host_forward_tests.rs"]
mod host_forward_tests;
