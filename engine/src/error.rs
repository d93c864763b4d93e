//! The engine's typed error. The HTTP layer maps it to a status and an OpenAI error body in one place.

use thiserror::Error;

#[derive(Debug, Clone, Error)]
pub enum EngineError {
    /// The model file can't be opened or isn't a GGUF we understand.
    #[error("cannot load model: {0}")]
    Load(String),
    /// The model declares something we don't support (architecture, tensor type, tokenizer).
    #[error("unsupported model: {0}")]
    Unsupported(String),
    /// The caller's input is invalid (bad role, template failure caused by the messages, unknown token id...).
    /// `param` names the request field when one is to blame.
    #[error("{message}")]
    InvalidInput { message: String, param: Option<String> },
    /// Prompt (plus requested completion) longer than the context.
    #[error("{message}")]
    ContextLength { message: String },
    /// The request queue is full.
    #[error("the server is busy: {0} requests already waiting")]
    QueueFull(usize),
    /// The engine is shutting down or its worker died.
    #[error("the engine is not running")]
    Unavailable,
    /// A bug or a numeric failure while generating.
    #[error("generation failed: {0}")]
    Internal(String),
}

impl EngineError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        EngineError::InvalidInput { message: message.into(), param: param.map(str::to_string) }
    }
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> Self {
        EngineError::Internal(e.to_string())
    }
}
