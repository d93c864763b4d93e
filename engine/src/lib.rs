//! AI Sandbox's inference engine: GGUF models of the Llama family on candle-core tensors,
//! a tokenizer and chat template built from the GGUF metadata, sampling, and a generation
//! worker that batches requests continuously over a paged KV cache with prefix caching.
//! Knows tensors, not HTTP.
//! Hugging Face model folders (`hf`: config.json, tokenizer.json, safetensors, `hf:` downloads)
//! are read into the same `ModelConfig`, `Tokenizer` and `ChatTemplate` types.

mod affinity;
pub mod chat_template;
mod engine;
mod error;
pub(crate) mod kv;
pub mod kv_budget;
pub mod gguf;
pub mod hf;
pub(crate) mod kernels;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub mod model;
mod pool;
mod sampler;
mod stop;
pub mod tokenizer;
mod types;
mod worker;
mod batch;
mod sequence;

pub use chat_template::ChatTemplate;
pub use engine::{
    Engine, EngineConfig, ModelInfo, DEFAULT_GPU_MAX_BATCH_TOKENS, DEFAULT_GPU_MAX_SEQS, DEFAULT_MAX_BATCH_TOKENS,
    DEFAULT_MAX_SEQS,
};
pub use error::EngineError;
pub use tokenizer::Tokenizer;
pub use types::*;
