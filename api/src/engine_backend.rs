//! The adapter from the real `ai_sandbox_engine::Engine` to the `Backend` trait. Kept tiny:
//! all HTTP-side logic lives elsewhere and is tested over the fake backend.

use std::sync::Arc;

use ai_sandbox_engine::{ChatMessage, Engine, EngineConfig, EngineError, GenEvent, GenerateRequest};
use tokio::sync::mpsc::Receiver;

use crate::Backend;

/// The real engine behind the `Backend` trait.
pub struct EngineBackend {
    engine: Engine,
    file_name: Option<String>,
}

impl EngineBackend {
    /// Load the model (blocking; seconds).
    pub fn load(cfg: EngineConfig) -> Result<Arc<dyn Backend>, EngineError> {
        let engine = Engine::load(cfg)?;
        // A GGUF's file name is accepted as an alias of the model id; a Hugging Face folder's
        // name (or an `hf:` snapshot's commit hash) is not.
        let path = &engine.info().path;
        let file_name = path
            .is_file()
            .then(|| path.file_name())
            .flatten()
            .map(|f| f.to_string_lossy().into_owned());
        Ok(Arc::new(EngineBackend {
            engine,
            file_name,
        }))
    }
}

impl Backend for EngineBackend {
    fn model_id(&self) -> &str {
        &self.engine.info().name
    }
    fn model_file(&self) -> Option<&str> {
        self.file_name.as_deref()
    }
    fn ctx_size(&self) -> usize {
        self.engine.info().ctx_size
    }
    fn vocab_size(&self) -> usize {
        self.engine.info().vocab_size
    }
    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, EngineError> {
        self.engine.chat_prompt(messages)
    }
    fn tokenize(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, EngineError> {
        self.engine.tokenize(text, add_bos)
    }
    fn add_bos_default(&self) -> bool {
        self.engine.add_bos_default()
    }
    fn detokenize(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.engine.detokenize(ids)
    }
    fn submit(&self, req: GenerateRequest) -> Result<Receiver<GenEvent>, EngineError> {
        self.engine.submit(req)
    }
}
