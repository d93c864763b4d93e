//! `config.json` of a llama / mistral / qwen2 checkpoint, and its translation into the engine's
//! [`ModelConfig`]. Anything the forward pass doesn't implement (other activations, MLP or output
//! biases, non-linear RoPE scaling, per-layer sliding windows) is refused by name.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::model::{ModelConfig, RopeScaling, RopeStyle};
use crate::EngineError;

/// The fields of `config.json` the engine reads (transformers' `LlamaConfig`, `MistralConfig`,
/// `Qwen2Config`). Missing optional fields take transformers' defaults for these classes.
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    pub model_type: String,
    #[serde(rename = "_name_or_path", default)]
    pub name_or_path: Option<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    pub rms_norm_eps: f64,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// `null`, or `{"type" | "rope_type": "linear", "factor": F}`.
    #[serde(default)]
    pub rope_scaling: Option<Value>,
    /// transformers v5 moves rope_theta / rope_type here.
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// qwen2: the window applies only when this is true (and only from `max_window_layers` on).
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    /// Newer configs spell the per-layer attention kind out.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    /// `false` by default for all three classes.
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    /// llama/mistral: bias on q, k, v AND o projections (refused: no o bias in the forward pass).
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    /// The checkpoint's storage dtype (`torch_dtype`, or `dtype` in transformers v5), informational.
    #[serde(default, alias = "dtype")]
    pub torch_dtype: Option<String>,
}

impl HfConfig {
    /// Reads and parses `config.json`; `Load` names the file and the bad or missing field.
    pub fn from_file(path: &Path) -> Result<HfConfig, EngineError> {
        let text = std::fs::read_to_string(path).map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
        Self::from_json(&text).map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))
    }

    /// Parses config.json text (no validation beyond the field types).
    pub fn from_json(text: &str) -> Result<HfConfig, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    /// Whether the output projection is the embedding table (then `lm_head.weight` is not read).
    pub fn tie_word_embeddings(&self) -> bool {
        self.tie_word_embeddings.unwrap_or(false)
    }

    /// Whether q/k/v projections carry biases: always for qwen2, never for what we accept of
    /// llama/mistral (see [`HfConfig::model_config`]).
    pub fn qkv_bias(&self) -> bool {
        self.model_type == "qwen2"
    }

    /// Validates and converts. `vocab_rows` is the row count of `model.embed_tokens.weight`,
    /// which must equal `vocab_size`.
    pub fn model_config(&self, vocab_rows: usize) -> Result<ModelConfig, EngineError> {
        let arch = self.model_type.as_str();
        if !matches!(arch, "llama" | "mistral" | "qwen2") {
            return Err(unsupported(format!("model_type `{arch}` (supported: llama, mistral, qwen2)")));
        }
        if let Some(act) = self.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(unsupported(format!("hidden_act `{act}` (supported: silu)")));
        }
        if self.mlp_bias == Some(true) {
            return Err(unsupported("mlp_bias = true (MLP biases)".into()));
        }
        if arch != "qwen2" && self.attention_bias == Some(true) {
            return Err(unsupported("attention_bias = true (biases on the attention output projection)".into()));
        }
        let bad = |what: String| Err(EngineError::Load(format!("config.json: {what}")));
        let (hidden, n_heads) = (self.hidden_size, self.num_attention_heads);
        let n_kv_heads = self.num_key_value_heads.unwrap_or(n_heads);
        if hidden == 0 || n_heads == 0 || n_kv_heads == 0 || self.intermediate_size == 0 || self.num_hidden_layers == 0 {
            return bad("a zero-sized dimension (hidden_size, heads, intermediate_size or layers)".into());
        }
        if n_heads % n_kv_heads != 0 {
            return bad(format!("num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv_heads}"));
        }
        let head_dim = match self.head_dim {
            Some(d) => d,
            None if hidden % n_heads == 0 => hidden / n_heads,
            None => return bad(format!("hidden_size {hidden} is not a multiple of num_attention_heads {n_heads}")),
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return bad(format!("head_dim {head_dim} must be even and > 0"));
        }
        if self.max_position_embeddings == 0 {
            return bad("max_position_embeddings is 0".into());
        }
        if vocab_rows != self.vocab_size {
            return bad(format!(
                "vocab_size {} but model.embed_tokens.weight has {vocab_rows} rows",
                self.vocab_size
            ));
        }
        let rms_eps = self.rms_norm_eps as f32;
        let rope_theta = self.rope_theta()? as f32;
        let positive = |x: f32| x.is_finite() && x > 0.0;
        if !positive(rms_eps) || !positive(rope_theta) {
            return bad(format!("rms_norm_eps {rms_eps} and rope_theta {rope_theta} must be > 0"));
        }
        Ok(ModelConfig {
            arch: arch.to_string(),
            name: self.name_or_path.clone().filter(|n| !n.is_empty()),
            vocab_size: vocab_rows,
            hidden_size: hidden,
            n_layers: self.num_hidden_layers,
            n_heads,
            n_kv_heads,
            head_dim,
            ffn_size: self.intermediate_size,
            context_length: self.max_position_embeddings,
            rope_theta,
            rms_eps,
            rope_dim: head_dim,
            // HF checkpoints keep q/k in the order of transformers' `rotate_half`, which pairs
            // dimension i with i + head_dim/2: NEOX style. (llama.cpp's converter permutes llama and
            // mistral q/k rows so that GGUF files use the interleaved style instead; safetensors
            // files are not permuted, so all three architectures are NEOX here.)
            rope_style: RopeStyle::Neox,
            rope_scaling: self.rope_scaling()?,
            sliding_window: self.sliding_window()?,
        })
    }

    fn rope_theta(&self) -> Result<f64, EngineError> {
        if let Some(t) = self.rope_theta {
            return Ok(t);
        }
        match self.rope_parameters.as_ref().and_then(|p| p.get("rope_theta")) {
            Some(v) => v.as_f64().ok_or_else(|| EngineError::Load("config.json: rope_parameters.rope_theta is not a number".into())),
            None => Ok(10_000.0),
        }
    }

    fn rope_scaling(&self) -> Result<RopeScaling, EngineError> {
        let Some(s) = self.rope_scaling.as_ref().or(self.rope_parameters.as_ref()).filter(|v| !v.is_null()) else {
            return Ok(RopeScaling::None);
        };
        let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
        match kind {
            "default" => Ok(RopeScaling::None),
            "linear" => {
                let f = s.get("factor").and_then(Value::as_f64).ok_or_else(|| {
                    EngineError::Load("config.json: rope_scaling of type linear has no numeric factor".into())
                })?;
                if !(f.is_finite() && f > 0.0) {
                    return Err(EngineError::Load(format!("config.json: rope_scaling factor {f} must be > 0")));
                }
                Ok(if f == 1.0 { RopeScaling::None } else { RopeScaling::Linear { factor: f as f32 } })
            }
            other => Err(unsupported(format!("rope_scaling type `{other}` (supported: default, linear)"))),
        }
    }

    /// mistral: `sliding_window` when set. qwen2: only with `use_sliding_window`, and only when
    /// it covers every layer (`max_window_layers` 0) or none. llama: never. `layer_types`, when
    /// present, must be uniform.
    fn sliding_window(&self) -> Result<Option<usize>, EngineError> {
        let n = self.num_hidden_layers;
        let window = match self.model_type.as_str() {
            "mistral" => self.sliding_window,
            "qwen2" if self.use_sliding_window == Some(true) => match self.max_window_layers.unwrap_or(n) {
                0 => self.sliding_window,
                m if m >= n => None,
                m => {
                    return Err(unsupported(format!(
                        "qwen2 sliding window on layers {m}..{n} only (max_window_layers {m}); \
                         the engine applies one attention span to every layer"
                    )))
                }
            },
            _ => None,
        };
        if let Some(types) = &self.layer_types {
            let sliding = types.iter().filter(|t| t.as_str() == "sliding_attention").count();
            if sliding != 0 && sliding != types.len() {
                return Err(unsupported("layer_types mixes sliding and full attention layers".into()));
            }
            if sliding == 0 && !types.is_empty() {
                return Ok(None);
            }
        }
        if window == Some(0) {
            return Err(EngineError::Load("config.json: sliding_window is 0".into()));
        }
        Ok(window)
    }
}

fn unsupported(what: String) -> EngineError {
    EngineError::Unsupported(format!("config.json: {what}"))
}
