//! AI Sandbox's inference engine: GGUF models of the Llama family on candle-core tensors,
//! a tokenizer and chat template built from the GGUF metadata, sampling, and a generation
//! worker that serves requests from a bounded FIFO queue. Knows tensors, not HTTP.

mod error;
pub mod gguf;
mod types;

pub use error::EngineError;
pub use types::*;
