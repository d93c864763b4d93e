//! AI Sandbox's inference engine: GGUF models of the Llama family on candle-core tensors,
//! a tokenizer and chat template built from the GGUF metadata, sampling, and a generation
//! worker that serves requests from a bounded FIFO queue. Knows tensors, not HTTP.

pub mod chat_template;
mod engine;
mod error;
pub mod gguf;
pub(crate) mod kernels;
pub mod model;
mod sampler;
mod stop;
pub mod tokenizer;
mod types;
mod worker;

pub use chat_template::ChatTemplate;
pub use engine::{Engine, EngineConfig, ModelInfo};
pub use error::EngineError;
pub use tokenizer::Tokenizer;
pub use types::*;
