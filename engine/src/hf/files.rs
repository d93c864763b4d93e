//! The files of a Hugging Face model folder (local, or a snapshot in the HF cache): which are
//! required, which optional, and the safetensors shards named by `model.safetensors.index.json`.
//! Shard names from the index are checked to be plain file names inside the folder.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::config::HfConfig;
use super::weights::SafetensorsWeights;
use crate::chat_template::ChatTemplate;
use crate::model::ModelConfig;
use crate::tokenizer::Tokenizer;
use crate::EngineError;

pub(crate) const CONFIG: &str = "config.json";
pub(crate) const TOKENIZER: &str = "tokenizer.json";
pub(crate) const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
pub(crate) const GENERATION_CONFIG: &str = "generation_config.json";
/// transformers >= 4.43 may save the chat template next to tokenizer_config.json instead of in it.
pub(crate) const CHAT_TEMPLATE: &str = "chat_template.jinja";
pub(crate) const SINGLE_WEIGHTS: &str = "model.safetensors";
pub(crate) const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

/// The paths of one model folder's files. Built by [`HfModelFiles::from_dir`] (which checks that
/// the required ones exist) or by a Hub download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfModelFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub tokenizer_config: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
    /// `chat_template.jinja`, which wins over `tokenizer_config.json`'s `chat_template`.
    pub chat_template: Option<PathBuf>,
    /// `model.safetensors.index.json` for a sharded checkpoint.
    pub weights_index: Option<PathBuf>,
    /// The safetensors files: `model.safetensors`, or the index's shards in name order.
    pub weights: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct WeightsIndex {
    weight_map: std::collections::HashMap<String, String>,
}

impl HfModelFiles {
    /// Lists a folder's model files. `Load` names the first missing required file.
    pub fn from_dir(dir: &Path) -> Result<HfModelFiles, EngineError> {
        let required = |name: &str, why: &str| -> Result<PathBuf, EngineError> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(EngineError::Load(format!("{}: {name} is missing{why}", dir.display())))
            }
        };
        let optional = |name: &str| Some(dir.join(name)).filter(|p| p.is_file());
        let config = required(CONFIG, "")?;
        let tokenizer = required(
            TOKENIZER,
            " (a SentencePiece tokenizer.model alone is not supported; the engine reads tokenizer.json)",
        )?;
        let (weights_index, weights) = match optional(WEIGHTS_INDEX) {
            Some(index) => {
                let shards = shard_names(&index)?;
                let paths = shards.iter().map(|s| dir.join(s)).collect::<Vec<_>>();
                if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
                    return Err(EngineError::Load(format!(
                        "{}: {WEIGHTS_INDEX} names the shard {} which is missing",
                        dir.display(),
                        missing.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
                    )));
                }
                (Some(index), paths)
            }
            None => (None, vec![required(SINGLE_WEIGHTS, &format!(" (and there is no {WEIGHTS_INDEX})"))?]),
        };
        Ok(HfModelFiles {
            dir: dir.to_path_buf(),
            config,
            tokenizer,
            tokenizer_config: optional(TOKENIZER_CONFIG),
            generation_config: optional(GENERATION_CONFIG),
            chat_template: optional(CHAT_TEMPLATE),
            weights_index,
            weights,
        })
    }

    /// `config.json`, parsed (not yet validated: see [`HfConfig::model_config`]).
    pub fn config(&self) -> Result<HfConfig, EngineError> {
        HfConfig::from_file(&self.config)
    }

    /// The tokenizer from tokenizer.json, tokenizer_config.json and generation_config.json.
    pub fn tokenizer(&self) -> Result<Tokenizer, EngineError> {
        Tokenizer::from_hf_files(&self.tokenizer, self.tokenizer_config.as_deref(), self.generation_config.as_deref())
    }

    /// The chat template (chat_template.jinja, else tokenizer_config.json's, else ChatML).
    pub fn chat_template(&self, tok: &Tokenizer) -> Result<ChatTemplate, EngineError> {
        ChatTemplate::from_hf_files(self.tokenizer_config.as_deref(), self.chat_template.as_deref(), tok)
    }

    /// Opens the safetensors files (reads their headers only).
    pub fn open_weights(&self) -> Result<SafetensorsWeights, EngineError> {
        SafetensorsWeights::open(&self.weights)
    }

    /// What [`Model::load_safetensors`](crate::model::Model::load_safetensors) needs: config.json
    /// validated into a [`ModelConfig`] (its vocabulary checked against the embedding table) and
    /// the weights with config.json's `tie_word_embeddings` applied. `Load` when the files lack the
    /// embedding table or disagree with config.json about q/k/v biases (qwen2 has them, llama and
    /// mistral don't: a missing or extra bias would silently change the model).
    pub fn open_model(&self) -> Result<(ModelConfig, SafetensorsWeights), EngineError> {
        let hf = self.config()?;
        let weights = self.open_weights()?.with_tied_embeddings(hf.tie_word_embeddings());
        let vocab_rows = match weights.shape("token_embd.weight") {
            Some([rows, _]) => *rows,
            Some(other) => {
                return Err(EngineError::Load(format!(
                    "{}: model.embed_tokens.weight has shape {other:?}, expected 2-D",
                    self.dir.display()
                )))
            }
            None => {
                return Err(EngineError::Load(format!(
                    "{}: the safetensors files have no model.embed_tokens.weight",
                    self.dir.display()
                )))
            }
        };
        let config = hf.model_config(vocab_rows).map_err(|e| in_dir(&self.dir, e))?;
        for layer in 0..config.n_layers {
            for part in ["attn_q", "attn_k", "attn_v"] {
                let name = format!("blk.{layer}.{part}.bias");
                if weights.has(&name) != hf.qkv_bias() {
                    let hf_name = super::weights::hf_tensor_name(&name).unwrap_or_default();
                    let why = if hf.qkv_bias() { "is missing" } else { "is present, but the model has no q/k/v biases" };
                    return Err(EngineError::Load(format!(
                        "{}: {hf_name} {why} (model_type {})",
                        self.dir.display(),
                        hf.model_type
                    )));
                }
            }
        }
        Ok((config, weights))
    }
}

/// Prefixes a config error with the folder it came from.
fn in_dir(dir: &Path, e: EngineError) -> EngineError {
    match e {
        EngineError::Load(m) => EngineError::Load(format!("{}: {m}", dir.display())),
        EngineError::Unsupported(m) => EngineError::Unsupported(format!("{}: {m}", dir.display())),
        other => other,
    }
}

/// The distinct shard file names of an index, sorted. Each must be a plain `*.safetensors` file
/// name: the index may come from the network and must not point outside the folder.
pub(crate) fn shard_names(index: &Path) -> Result<Vec<String>, EngineError> {
    let text = std::fs::read_to_string(index)
        .map_err(|e| EngineError::Load(format!("{}: {e}", index.display())))?;
    shard_names_from_json(&text).map_err(|e| EngineError::Load(format!("{}: {e}", index.display())))
}

pub(crate) fn shard_names_from_json(text: &str) -> Result<Vec<String>, String> {
    let parsed: WeightsIndex = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let names: BTreeSet<String> = parsed.weight_map.into_values().collect();
    if names.is_empty() {
        return Err("weight_map is empty".into());
    }
    for n in &names {
        let plain = !n.is_empty()
            && !n.starts_with('.')
            && !n.contains(['/', '\\'])
            && n.ends_with(".safetensors");
        if !plain {
            return Err(format!("weight_map names the shard {n:?}, which is not a plain *.safetensors file name"));
        }
    }
    Ok(names.into_iter().collect())
}
