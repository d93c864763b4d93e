//! Hugging Face model folders: what `--model` names (`source`), the files of a local or downloaded
//! folder (`files`), `hf:ORG/NAME[@REV]` downloads into the HF cache (`hub`), `config.json` ->
//! [`ModelConfig`](crate::model::ModelConfig) (`config`), `tokenizer_config.json` /
//! `generation_config.json` (`tokenizer_config`), and the safetensors weights under the GGUF
//! tensor names the model loader uses (`weights`).
//!
//! The tokenizer itself is the engine's one [`Tokenizer`](crate::Tokenizer) type, built by
//! `Tokenizer::from_hf_files`; the chat template by `ChatTemplate::from_hf_files`.
//! Nothing here runs a model: the loader asks [`SafetensorsWeights`] for tensors by GGUF name.

mod config;
mod files;
mod hub;
mod source;
mod tokenizer_config;
mod weights;

pub use config::HfConfig;
pub use files::HfModelFiles;
pub use hub::HubOptions;
pub use source::{HubRepo, ModelSource};
pub use tokenizer_config::{GenerationConfig, TokenizerConfig};
pub use weights::{hf_tensor_name, SafetensorsWeights};

#[cfg(test)]
mod tests;
