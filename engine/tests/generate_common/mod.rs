//! Shared helpers for the generation tests on the real SmolLM2 model: loading an engine and
//! collecting one request's events.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use ai_sandbox_engine::{
    ChatMessage, Engine, EngineConfig, EngineError, FinishReason, GenEvent, GenerateRequest, SamplingParams,
    Timings, TokenLogprob, Usage,
};
use tokio::sync::mpsc::Receiver;

/// SmolLM2's GGUF; the tests fail (not skip) without it, since scripts/test fetches it.
pub fn smollm2_path() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/fetch-model first", p.display());
    p
}

/// A SmolLM2 engine with a small context (keeps the KV cache small) and 2 threads.
pub fn load(max_queue: usize) -> Engine {
    load_with(max_queue, ai_sandbox_engine::DEFAULT_MAX_SEQS)
}

/// [`load`] with at most `max_seqs` sequences in a batch.
pub fn load_with(max_queue: usize, max_seqs: usize) -> Engine {
    let cfg = EngineConfig {
        threads: Some(2),
        ctx_size: Some(1024),
        max_queue,
        max_seqs,
        ..EngineConfig::new(smollm2_path())
    };
    Engine::load(cfg).expect("load SmolLM2")
}

/// Serialises tests of one binary that share an engine, so each sees a predictable KV cache.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn chat(engine: &Engine, user: &str) -> Vec<u32> {
    let msgs = [ChatMessage { role: "user".into(), content: user.into() }];
    engine.chat_prompt(&msgs).expect("chat prompt")
}

pub fn greedy() -> SamplingParams {
    SamplingParams { temperature: 0.0, ..SamplingParams::default() }
}

pub fn request(prompt: Vec<u32>, sampling: SamplingParams, max_tokens: usize) -> GenerateRequest {
    GenerateRequest { prompt, sampling, stop: Vec::new(), max_tokens, logprobs: None }
}

/// Bans EOS so the model runs to max_tokens.
pub fn no_eos(engine: &Engine, mut p: SamplingParams) -> SamplingParams {
    let eos = engine.tokenize("<|im_end|>", false).expect("tokenize");
    let bias: HashMap<u32, f32> = eos.into_iter().chain([0, 2]).map(|id| (id, -100.0)).collect();
    p.logit_bias.extend(bias);
    p
}

/// Everything one request produced.
#[derive(Debug)]
pub struct Outcome {
    pub deltas: Vec<String>,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: FinishReason,
    pub usage: Usage,
    pub timings: Timings,
}

impl Outcome {
    pub fn text(&self) -> String {
        self.deltas.concat()
    }
}

pub fn collect(mut rx: Receiver<GenEvent>) -> Result<Outcome, EngineError> {
    let (mut deltas, mut logprobs) = (Vec::new(), Vec::new());
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            GenEvent::Delta { text, logprobs: lp } => {
                deltas.push(text);
                logprobs.extend(lp);
            }
            GenEvent::Done { finish_reason, usage, timings } => {
                return Ok(Outcome { deltas, logprobs, finish: finish_reason, usage, timings })
            }
            GenEvent::Error(e) => return Err(e),
        }
    }
    panic!("the event channel closed without Done or Error");
}

pub fn run(engine: &Engine, req: GenerateRequest) -> Outcome {
    collect(engine.submit(req).expect("submit")).expect("generation")
}
