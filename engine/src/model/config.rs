//! Reading a model's hyper-parameters from GGUF metadata (`{arch}.*` keys) into a
//! [`ModelConfig`], and refusing architectures and RoPE variants we don't implement.

use crate::gguf::GgufFile;
use crate::EngineError;

/// How RoPE pairs up the dimensions of a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum RopeStyle {
    /// Adjacent pairs `(x[2i], x[2i+1])`: llama.cpp's "normal" mode. llama.cpp's converter
    /// permutes the Q/K weights of llama/mistral checkpoints so that this equals HF's
    /// rotate-half on the original weights.
    Interleaved,
    /// Halves `(x[i], x[i + d/2])`: llama.cpp's NEOX mode (qwen2; weights not permuted).
    Neox,
}

/// Position scaling applied to the RoPE angles.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (`rope.scaling.type = linear`).
    Linear {
        factor: f32,
    },
}

/// The hyper-parameters of a Llama-family model, as its GGUF metadata declares them.
/// Serializable so that reports (`ai-sandbox-bench --random-weights --json`) carry the shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ModelConfig {
    /// `general.architecture`: `llama`, `mistral` or `qwen2`.
    pub arch: String,
    /// `general.name`, if present.
    pub name: Option<String>,
    /// Rows of the output projection, i.e. the length of the logits vector.
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_size: usize,
    /// The context length the model was trained for (`{arch}.context_length`).
    pub context_length: usize,
    pub rope_theta: f32,
    pub rms_eps: f32,
    /// How many dimensions of each head RoPE rotates (always `head_dim` for what we accept).
    pub rope_dim: usize,
    pub rope_style: RopeStyle,
    pub rope_scaling: RopeScaling,
    /// Sliding-window attention span (mistral), if the metadata declares one.
    pub sliding_window: Option<usize>,
}

impl ModelConfig {
    /// Reads and validates the config. `vocab_rows` is the row count of `token_embd.weight`.
    pub(crate) fn from_gguf(gguf: &GgufFile, vocab_rows: usize) -> Result<Self, EngineError> {
        let arch = gguf.get_str("general.architecture")?.to_string();
        let rope_style = match arch.as_str() {
            "llama" | "mistral" => RopeStyle::Interleaved,
            "qwen2" => RopeStyle::Neox,
            other => {
                return Err(EngineError::Unsupported(format!(
                    "architecture `{other}` (supported: llama, mistral, qwen2)"
                )))
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let usize_key = |k: &str| -> Result<usize, EngineError> {
            let v = gguf.get_u64(&key(k))?;
            usize::try_from(v)
                .map_err(|_| EngineError::Load(format!("`{}` = {v} is too large", key(k))))
        };
        let name = gguf.opt_str("general.name")?.map(str::to_string);
        let hidden_size = usize_key("embedding_length")?;
        let n_layers = usize_key("block_count")?;
        let ffn_size = usize_key("feed_forward_length")?;
        let n_heads = usize_key("attention.head_count")?;
        let n_kv_heads = match gguf.opt_u64(&key("attention.head_count_kv"))? {
            Some(n) => n as usize,
            None => n_heads,
        };
        let context_length = usize_key("context_length")?;
        let rms_eps = gguf.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32;
        let rope_theta = gguf.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0) as f32;
        let bad = |what: String| Err(EngineError::Load(what));
        if hidden_size == 0 || n_layers == 0 || n_heads == 0 || n_kv_heads == 0 || ffn_size == 0 {
            return bad(format!("{arch}: zero-sized dimension in the metadata"));
        }
        if n_heads % n_kv_heads != 0 {
            return bad(format!(
                "{arch}: {n_heads} attention heads is not a multiple of {n_kv_heads} KV heads"
            ));
        }
        let head_dim = match gguf.opt_u64(&key("attention.key_length"))? {
            Some(n) => n as usize,
            None if hidden_size % n_heads == 0 => hidden_size / n_heads,
            None => {
                return bad(format!(
                    "{arch}: hidden size {hidden_size} is not a multiple of {n_heads} heads"
                ))
            }
        };
        if let Some(v) = gguf.opt_u64(&key("attention.value_length"))? {
            if v as usize != head_dim {
                return Err(EngineError::Unsupported(format!(
                    "{arch}: value head size {v} differs from key head size {head_dim}"
                )));
            }
        }
        if head_dim % 2 != 0 {
            return bad(format!("{arch}: head size {head_dim} is odd"));
        }
        let rope_dim = gguf
            .opt_u64(&key("rope.dimension_count"))?
            .map_or(head_dim, |n| n as usize);
        if rope_dim != head_dim {
            return Err(EngineError::Unsupported(format!(
                "{arch}: partial rotary embeddings (rope.dimension_count {rope_dim} < head size {head_dim})"
            )));
        }
        if context_length == 0 {
            return bad(format!("`{}` is 0", key("context_length")));
        }
        let positive = |x: f32| x.is_finite() && x > 0.0;
        if !positive(rms_eps) || !positive(rope_theta) {
            return bad(format!(
                "{arch}: rms epsilon {rms_eps} and rope freq_base {rope_theta} must be > 0"
            ));
        }
        let rope_scaling = rope_scaling(gguf, &arch)?;
        let sliding_window = gguf
            .opt_u64(&key("attention.sliding_window"))?
            .map(|n| n as usize);
        if sliding_window == Some(0) {
            return bad(format!("`{}` is 0", key("attention.sliding_window")));
        }
        // The vocabulary is the embedding table's rows; metadata may declare fewer (padded tables)
        // but never more, or token ids the tokenizer emits would have no embedding.
        let declared = match gguf.opt_u64(&key("vocab_size"))? {
            Some(n) => Some(n as usize),
            None if gguf.has("tokenizer.ggml.tokens") => {
                Some(gguf.get_array("tokenizer.ggml.tokens")?.len())
            }
            None => None,
        };
        if let Some(n) = declared {
            if n > vocab_rows {
                return bad(format!(
                    "{arch}: vocabulary of {n} tokens but token_embd.weight has {vocab_rows} rows"
                ));
            }
        }
        Ok(ModelConfig {
            arch,
            name,
            vocab_size: vocab_rows,
            hidden_size,
            n_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_size,
            context_length,
            rope_theta,
            rms_eps,
            rope_dim,
            rope_style,
            rope_scaling,
            sliding_window,
        })
    }
}

fn rope_scaling(gguf: &GgufFile, arch: &str) -> Result<RopeScaling, EngineError> {
    let factor_key = format!("{arch}.rope.scaling.factor");
    let factor = gguf.opt_f64(&factor_key)?;
    // Older converters wrote `rope.scale_linear` instead of the type/factor pair.
    let legacy = gguf.opt_f64(&format!("{arch}.rope.scale_linear"))?;
    let kind = gguf.opt_str(&format!("{arch}.rope.scaling.type"))?;
    let linear = |f: f64| {
        if f > 0.0 && f.is_finite() {
            Ok(if f == 1.0 {
                RopeScaling::None
            } else {
                RopeScaling::Linear { factor: f as f32 }
            })
        } else {
            Err(EngineError::Load(format!(
                "rope scaling factor {f} must be > 0"
            )))
        }
    };
    match (kind, factor, legacy) {
        (None | Some("none"), _, None) => Ok(RopeScaling::None),
        (None, _, Some(f)) => linear(f),
        (Some("none"), _, Some(_)) => Ok(RopeScaling::None),
        (Some("linear"), Some(f), _) | (Some("linear"), None, Some(f)) => linear(f),
        (Some("linear"), None, None) => Err(EngineError::Load(format!("`{factor_key}` is missing"))),
        (Some(other), _, _) => Err(EngineError::Unsupported(format!(
            "rope scaling type `{other}` (supported: none, linear; llama3-style scaling via rope_freqs.weight)"
        ))),
    }
}
