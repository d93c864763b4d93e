//! The `Backend` trait: everything the HTTP handlers need from an inference engine. The real
//! engine is adapted in `engine_backend`; `testing::FakeBackend` is a scripted stand-in for tests.

use ai_sandbox_engine::{ChatMessage, EngineError, GenEvent, GenerateRequest};
use tokio::sync::mpsc::Receiver;

/// What the handlers need from an engine. Object-safe; shared as `Arc<dyn Backend>`.
pub trait Backend: Send + Sync + 'static {
    /// The model's own name (default served id).
    fn model_id(&self) -> &str;
    /// The GGUF file name (e.g. `SmolLM2-135M-Instruct.Q4_1.gguf`), also accepted as a model id.
    fn model_file(&self) -> Option<&str>;
    /// Context length in tokens.
    fn ctx_size(&self) -> usize;
    /// Vocabulary size (token ids are `0..vocab_size`).
    fn vocab_size(&self) -> usize;
    /// Apply the chat template and tokenize.
    fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, EngineError>;
    /// Tokenize plain text.
    fn tokenize(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, EngineError>;
    /// Whether the model wants a BOS token in front of a raw prompt (its GGUF rule).
    fn add_bos_default(&self) -> bool;
    /// Token ids back to text.
    fn detokenize(&self, ids: &[u32]) -> Result<String, EngineError>;
    /// Queue a generation. `Err(QueueFull)` when the queue is full; dropping the receiver cancels it.
    fn submit(&self, req: GenerateRequest) -> Result<Receiver<GenEvent>, EngineError>;
}

/// A deterministic fake backend for tests.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::*;
    use ai_sandbox_engine::{FinishReason, Timings, TokenLogprob, TopLogprob, Usage};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// How the fake behaves.
    #[derive(Debug, Clone)]
    pub struct FakeConfig {
        pub model_id: String,
        pub model_file: Option<String>,
        pub ctx_size: usize,
        pub vocab_size: usize,
        /// Text pieces generated, one token each.
        pub script: Vec<String>,
        /// Finish reason when the whole script was sent.
        pub finish: FinishReason,
        /// Pause before each event.
        pub delay: Duration,
        /// `submit` fails with this error.
        pub submit_error: Option<EngineError>,
        /// After this many deltas, send this error instead of continuing.
        pub error_after: Option<(usize, EngineError)>,
    }

    impl Default for FakeConfig {
        fn default() -> Self {
            Self {
                model_id: "fake-model".into(),
                model_file: Some("fake-model.Q4_1.gguf".into()),
                ctx_size: 64,
                vocab_size: 300,
                script: vec!["Hello".into(), ",".into(), " world".into(), "!".into()],
                finish: FinishReason::Stop,
                delay: Duration::ZERO,
                submit_error: None,
                error_after: None,
            }
        }
    }

    /// What the fake saw.
    #[derive(Debug, Default)]
    pub struct FakeLog {
        pub requests: Vec<GenerateRequest>,
        pub messages: Vec<Vec<ChatMessage>>,
        /// Set when a generation found its receiver dropped before it finished.
        pub cancelled: usize,
        /// Generations that ran to their end.
        pub completed: usize,
    }

    /// Tokens are bytes (id = byte + 3), BOS = 1; the chat prompt is `role: content\n` lines plus `assistant:`.
    #[derive(Clone)]
    pub struct FakeBackend {
        pub cfg: FakeConfig,
        pub log: Arc<Mutex<FakeLog>>,
    }

    impl FakeBackend {
        pub fn new(cfg: FakeConfig) -> Self {
            Self {
                cfg,
                log: Arc::default(),
            }
        }
        /// The last request submitted.
        pub fn last_request(&self) -> Option<GenerateRequest> {
            self.log.lock().ok()?.requests.last().cloned()
        }
        /// Messages given to the last `chat_prompt` call.
        pub fn last_messages(&self) -> Option<Vec<ChatMessage>> {
            self.log.lock().ok()?.messages.last().cloned()
        }
        pub fn cancelled(&self) -> usize {
            self.log.lock().map(|l| l.cancelled).unwrap_or(0)
        }
        pub fn completed(&self) -> usize {
            self.log.lock().map(|l| l.completed).unwrap_or(0)
        }
    }

    fn logprob_for(id: u32, text: &str, n_top: usize) -> TokenLogprob {
        TokenLogprob {
            token_id: id,
            token: text.to_string(),
            bytes: text.as_bytes().to_vec(),
            logprob: -0.5,
            top: (0..n_top)
                .map(|i| TopLogprob {
                    token_id: i as u32 + 10,
                    token: format!("t{i}"),
                    bytes: format!("t{i}").into_bytes(),
                    logprob: -(i as f32) - 0.25,
                })
                .collect(),
        }
    }

    impl Backend for FakeBackend {
        fn model_id(&self) -> &str {
            &self.cfg.model_id
        }
        fn model_file(&self) -> Option<&str> {
            self.cfg.model_file.as_deref()
        }
        fn ctx_size(&self) -> usize {
            self.cfg.ctx_size
        }
        fn vocab_size(&self) -> usize {
            self.cfg.vocab_size
        }
        fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, EngineError> {
            if let Ok(mut l) = self.log.lock() {
                l.messages.push(messages.to_vec());
            }
            let mut s = String::new();
            for m in messages {
                s.push_str(&format!("{}: {}\n", m.role, m.content));
            }
            s.push_str("assistant:");
            self.tokenize(&s, true)
        }
        fn tokenize(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, EngineError> {
            let mut v: Vec<u32> = if add_bos { vec![1] } else { vec![] };
            v.extend(text.bytes().map(|b| b as u32 + 3));
            Ok(v)
        }
        fn add_bos_default(&self) -> bool {
            true
        }
        fn detokenize(&self, ids: &[u32]) -> Result<String, EngineError> {
            let bytes: Vec<u8> = ids
                .iter()
                .filter(|&&i| (3..259).contains(&i))
                .map(|&i| (i - 3) as u8)
                .collect();
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
        fn submit(&self, req: GenerateRequest) -> Result<Receiver<GenEvent>, EngineError> {
            if let Some(e) = &self.cfg.submit_error {
                return Err(e.clone());
            }
            if let Ok(mut l) = self.log.lock() {
                l.requests.push(req.clone());
            }
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let cfg = self.cfg.clone();
            let log = self.log.clone();
            tokio::spawn(async move {
                let n = cfg.script.len().min(req.max_tokens);
                let mut sent = 0;
                for (i, piece) in cfg.script.iter().take(n).enumerate() {
                    if let Some((after, err)) = &cfg.error_after {
                        if i == *after {
                            let _ = tx.send(GenEvent::Error(err.clone())).await;
                            return;
                        }
                    }
                    if !cfg.delay.is_zero() {
                        tokio::select! {
                            _ = tokio::time::sleep(cfg.delay) => {}
                            _ = tx.closed() => {
                                if let Ok(mut l) = log.lock() { l.cancelled += 1; }
                                return;
                            }
                        }
                    }
                    let logprobs = match req.logprobs {
                        Some(k) => vec![logprob_for(100 + i as u32, piece, k)],
                        None => vec![],
                    };
                    if tx
                        .send(GenEvent::Delta {
                            text: piece.clone(),
                            logprobs,
                        })
                        .await
                        .is_err()
                    {
                        if let Ok(mut l) = log.lock() {
                            l.cancelled += 1;
                        }
                        return;
                    }
                    sent += 1;
                }
                let finish = if n < cfg.script.len() {
                    FinishReason::Length
                } else {
                    cfg.finish
                };
                let usage = Usage {
                    prompt_tokens: req.prompt.len(),
                    completion_tokens: sent,
                    cached_tokens: 0,
                };
                let timings = Timings {
                    prompt_n: req.prompt.len(),
                    prompt_ms: 2.0,
                    predicted_n: sent,
                    predicted_ms: 8.0,
                };
                if tx
                    .send(GenEvent::Done {
                        finish_reason: finish,
                        usage,
                        timings,
                    })
                    .await
                    .is_ok()
                {
                    if let Ok(mut l) = log.lock() {
                        l.completed += 1;
                    }
                }
            });
            Ok(rx)
        }
    }
}
