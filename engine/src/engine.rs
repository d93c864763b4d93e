//! The public [`Engine`] handle: loads a GGUF or a Hugging Face model (a folder, or `hf:` downloaded
//! into the HF cache): tokenizer, chat template, model; sizes the CPU thread pools, starts the
//! generation worker (`worker.rs`) and exposes prompt building, tokenization and request
//! submission to the HTTP layer. Cheap to clone.
//!
//! Threads: candle 0.11 runs quantized matmuls on its own process-wide "barrier pool", sized
//! ONCE, on first use, from `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else the physical
//! core count; its f32 gemm reads `RAYON_NUM_THREADS` on each call; the rest runs on the current
//! rayon pool. A rayon pool alone therefore does not bound candle. [`Engine::load`] decides the
//! count (`threads`, else `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else available
//! parallelism), exports both variables with it before any tensor exists, builds a rayon pool of
//! that size for the worker's forward passes, then checks the barrier pool's real size and warns
//! when an earlier engine in the same process already fixed it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::gguf::GgufFile;
use crate::hf::{HfModelFiles, HubOptions, ModelSource, SafetensorsWeights};
use crate::kv_budget::{self, DeviceMemory};
use crate::model::{kv_bytes_per_block, LoadOptions, Model, ModelConfig, Placement, SeqInput, KV_BLOCK_SIZE};
use crate::worker::{LanguageModel, Limits, Scheduler, TokenText};

const MIB: usize = 1 << 20;
use crate::{ChatMessage, ChatTemplate, EngineError, GenEvent, GenerateRequest, Tokenizer};

/// How to start an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// What `--model` names, as [`ModelSource::parse`] reads it: a GGUF file, a Hugging Face
    /// model folder, or `hf:ORG/NAME[@REV]` (a string, kept in a `PathBuf`).
    pub model: PathBuf,
    /// CPU threads for inference (None: see the module docs).
    pub threads: Option<usize>,
    /// Pin compute thread `i` to the `i`-th CPU this process may use (`affinity.rs`; Linux).
    pub pin_threads: bool,
    /// KV-cache length in tokens (None: the model's full context).
    pub ctx_size: Option<usize>,
    /// Requests allowed to wait for a place in the batch; more get `EngineError::QueueFull`.
    pub max_queue: usize,
    /// KV-cache budget in MiB (None: two full contexts on the host; on a GPU what
    /// `gpu_memory_utilization` leaves, see [`crate::kv_budget`]). Must hold one full context.
    pub kv_cache_mb: Option<usize>,
    /// Share of a GPU's memory the engine may fill (weights, workspace, KV cache) when
    /// `kv_cache_mb` is not given; in (0, 1].
    pub gpu_memory_utilization: f64,
    /// Most sequences generated together in one batch.
    pub max_seqs: usize,
    /// Most tokens in one forward pass (decodes plus prefill chunks).
    pub max_batch_tokens: usize,
    /// Host kernels (default) or a device and dtype (`--device cuda`).
    pub placement: Placement,
}

/// Default [`EngineConfig::max_seqs`] on the CPU.
pub const DEFAULT_MAX_SEQS: usize = 32;
/// Default [`EngineConfig::max_seqs`] on a GPU: a decode step of a 7B model reads its ~15 GB of
/// weights once whatever the batch, so throughput keeps growing with the batch well past 64.
pub const DEFAULT_GPU_MAX_SEQS: usize = 128;
/// Default [`EngineConfig::max_batch_tokens`] on a GPU: prompts in chunks big enough for the
/// tensor cores, small enough that running streams don't stall for long.
pub const DEFAULT_GPU_MAX_BATCH_TOKENS: usize = 2048;
/// Default [`EngineConfig::max_batch_tokens`]: a prefill chunk this long costs about as much as
/// a few decode steps on a CPU, so running streams keep a steady pace while a prompt is read.
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 256;

impl EngineConfig {
    /// The defaults for a model (file, folder or `hf:` id): all cores, the model's context,
    /// queue of 64.
    pub fn new(model: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            model: model.into(),
            threads: None,
            pin_threads: false,
            ctx_size: None,
            max_queue: 64,
            kv_cache_mb: None,
            gpu_memory_utilization: crate::kv_budget::DEFAULT_GPU_MEMORY_UTILIZATION,
            max_seqs: DEFAULT_MAX_SEQS,
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
            placement: Placement::default(),
        }
    }
}

/// Facts about the loaded model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// GGUF: `general.name`, else the file stem. Hugging Face: the repo id for `hf:` sources,
    /// the folder's name for a local folder.
    pub name: String,
    /// `general.architecture` (llama, mistral, qwen2...).
    pub arch: String,
    /// Usable context (KV-cache length) in tokens.
    pub ctx_size: usize,
    /// Number of logits per step: token ids (prompt, logit_bias) must be below it.
    pub vocab_size: usize,
    /// The GGUF file, or the Hugging Face model folder (for `hf:`, its snapshot in the HF cache).
    pub path: PathBuf,
}

/// Handle to a loaded model and its generation worker. Clones share the same worker; the worker
/// stops once the last clone is dropped and its running request ends.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    info: ModelInfo,
    tokenizer: Arc<Tokenizer>,
    template: ChatTemplate,
    scheduler: Scheduler,
    threads: usize,
}

impl Engine {
    /// Blocking: opens the model (`cfg.model` as [`ModelSource::parse`] reads it: a GGUF file, a
    /// Hugging Face model folder, or `hf:ORG/NAME[@REV]`, downloaded into the HF cache first),
    /// builds tokenizer, template, model; starts the worker thread.
    pub fn load(cfg: EngineConfig) -> Result<Engine, EngineError> {
        if cfg.threads == Some(0) {
            return Err(EngineError::Load("--threads must be at least 1".into()));
        }
        let mut source = Opened::open(&cfg.model)?;
        let (tokenizer, template) = source.tokenizer_and_template()?;
        let tokenizer = Arc::new(tokenizer);
        let threads = decide_threads(cfg.threads);
        export_thread_count(threads);
        let mut builder = rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("engine-rayon-{i}"));
        if cfg.pin_threads {
            let cpus = crate::affinity::allowed_cpus()?;
            tracing::info!(?cpus, threads, "pinning inference thread i to CPU i of these (modulo their count)");
            builder = builder.start_handler(move |i| {
                if let Err(e) = crate::affinity::pin_current(cpus[i % cpus.len()]) {
                    tracing::warn!("{e}");
                }
            });
        }
        let pool = builder
            .build()
            .map_err(|e| EngineError::Load(format!("cannot start {threads} inference threads: {e}")))?;
        let effective = candle_core::utils::barrier_pool().n_workers() + 1;
        if effective != threads {
            tracing::warn!(
                requested = threads,
                effective,
                "candle's CPU thread pool was already started in this process with another size; \
                 quantized matmuls keep using {effective} threads"
            );
        }

        let kv_blocks = kv_budget::kv_blocks(&source.config()?, &cfg, device_memory(&cfg.placement)?)?;
        let options = LoadOptions { kv_blocks: Some(kv_blocks), placement: cfg.placement.clone(), ..LoadOptions::default() };
        let (model, path) = match &mut source {
            Opened::Gguf(gguf) => (Model::load_with(gguf, cfg.ctx_size, &options)?, cfg.model.clone()),
            Opened::Hf { files, config, weights, .. } => {
                (Model::load_safetensors(weights, config.clone(), cfg.ctx_size, &options)?, files.dir.clone())
            }
        };
        let config = model.config();
        let name = match &source {
            Opened::Gguf(_) => config.name.clone().filter(|n| !n.trim().is_empty()).unwrap_or_else(|| {
                cfg.model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into())
            }),
            Opened::Hf { name, .. } => name.clone(),
        };
        let info = ModelInfo {
            name,
            arch: config.arch.clone(),
            ctx_size: model.ctx_size(),
            vocab_size: config.vocab_size,
            path,
        };
        let limits = Limits {
            vocab_size: info.vocab_size,
            ctx_size: info.ctx_size,
            max_queue: cfg.max_queue,
            block_size: KV_BLOCK_SIZE,
            kv_blocks: model.kv_blocks(),
            max_seqs: cfg.max_seqs,
            max_batch_tokens: cfg.max_batch_tokens,
        };
        let kv_mb = model.kv_blocks() * kv_bytes_per_block(model.config(), model.placement()) / MIB;
        let placement = model.placement().describe();
        let scheduler = Scheduler::spawn(model, tokenizer.clone(), Some(pool), limits)?;
        tracing::info!(
            model = %info.name, arch = %info.arch, ctx_size = info.ctx_size, threads = effective, placement,
            kernels = crate::kernels::describe(),
            kv_cache_mb = kv_mb, kv_tokens = limits.kv_blocks * KV_BLOCK_SIZE, max_seqs = cfg.max_seqs,
            "engine ready"
        );
        Ok(Engine { inner: Arc::new(Inner { info, tokenizer, template, scheduler, threads: effective }) })
    }

    /// Facts about the loaded model.
    pub fn info(&self) -> &ModelInfo {
        &self.inner.info
    }

    /// Threads candle's quantized matmuls actually use.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// Chat messages -> prompt token ids (template with add_generation_prompt=true, then encode
    /// with the model's BOS rule; a BOS the template already wrote is not doubled).
    pub fn chat_prompt(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, EngineError> {
        let text = self.inner.template.render(messages, true)?;
        let tok = &self.inner.tokenizer;
        tok.encode(&text, tok.add_bos_default())
    }

    /// Whether raw text prompts get a BOS prepended (the model's own rule from its metadata).
    pub fn add_bos_default(&self) -> bool {
        self.inner.tokenizer.add_bos_default()
    }

    /// Text -> token ids (special tokens written in the text are parsed).
    pub fn tokenize(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, EngineError> {
        self.inner.tokenizer.encode(text, add_bos)
    }

    /// Token ids -> text (lossy UTF-8). Out-of-range ids are `InvalidInput`.
    pub fn detokenize(&self, ids: &[u32]) -> Result<String, EngineError> {
        self.inner.tokenizer.decode(ids)
    }

    /// Queue a generation. Err(QueueFull) when max_queue requests are already waiting for a
    /// place in the batch; `InvalidInput`/`ContextLength` for a bad prompt or parameters.
    /// Events arrive on the receiver (zero or more `Delta`, then one `Done` or `Error`);
    /// dropping the receiver cancels the generation at the next token (or removes it from the
    /// queue). The consumer must keep reading or drop the receiver: the worker waits for room.
    pub fn submit(&self, req: GenerateRequest) -> Result<mpsc::Receiver<GenEvent>, EngineError> {
        self.inner.scheduler.submit(req)
    }

    /// Requests waiting for a place in the batch (not the running ones).
    pub fn queue_len(&self) -> usize {
        self.inner.scheduler.queue_len()
    }
}

/// The GPU's memory before the weights load, for [`kv_budget::kv_blocks`]; `None` on the host
/// placement and on the CPU standing in for a device.
fn device_memory(placement: &Placement) -> Result<Option<DeviceMemory>, EngineError> {
    #[cfg(feature = "cuda")]
    if let Placement::Device { device: device @ candle_core::Device::Cuda(_), .. } = placement {
        let (free, total) = crate::cuda::memory_info(device)
            .map_err(|e| EngineError::Load(format!("reading the GPU's free memory: {e}")))?;
        return Ok(Some(DeviceMemory { free, total }));
    }
    let _ = placement;
    Ok(None)
}

/// The model `--model` names, opened: a GGUF, or a Hugging Face folder with its config.json
/// validated and its safetensors headers read (no weights read yet).
// One short-lived value per load: the variants' sizes don't matter.
#[allow(clippy::large_enum_variant)]
enum Opened {
    Gguf(GgufFile),
    Hf {
        files: HfModelFiles,
        config: ModelConfig,
        weights: SafetensorsWeights,
        /// The repo id (`hf:`) or the folder's name.
        name: String,
    },
}

impl Opened {
    /// Parses `--model` and opens it; `hf:` sources are downloaded (or found in the HF cache)
    /// with [`HubOptions::from_env`]. A path that isn't valid UTF-8 can only be a GGUF file.
    fn open(model: &Path) -> Result<Opened, EngineError> {
        let source = match model.to_str() {
            Some(arg) => ModelSource::parse(arg)?,
            None => ModelSource::Gguf(model.to_path_buf()),
        };
        let (files, name) = match source {
            ModelSource::Gguf(path) => return Ok(Opened::Gguf(GgufFile::open(&path)?)),
            ModelSource::Folder(dir) => {
                let files = HfModelFiles::from_dir(&dir)?;
                (files, folder_name(&dir))
            }
            ModelSource::Hub(repo) => {
                let files = repo.download(&HubOptions::from_env()?)?;
                (files, repo.repo_id.clone())
            }
        };
        let (config, weights) = files.open_model()?;
        Ok(Opened::Hf { files, config, weights, name })
    }

    fn tokenizer_and_template(&self) -> Result<(Tokenizer, ChatTemplate), EngineError> {
        match self {
            Opened::Gguf(gguf) => {
                let tokenizer = Tokenizer::from_gguf(gguf)?;
                let template = ChatTemplate::from_gguf(gguf, &tokenizer)?;
                Ok((tokenizer, template))
            }
            Opened::Hf { files, .. } => {
                let tokenizer = files.tokenizer()?;
                let template = files.chat_template(&tokenizer)?;
                Ok((tokenizer, template))
            }
        }
    }

    /// The model's hyper-parameters (for sizing the KV cache before the weights are read).
    fn config(&mut self) -> Result<ModelConfig, EngineError> {
        match self {
            Opened::Gguf(gguf) => {
                let embd = gguf.tensor_info("token_embd.weight")?;
                let vocab_rows = embd.shape.dims().first().copied().unwrap_or(0);
                ModelConfig::from_gguf(gguf, vocab_rows)
            }
            Opened::Hf { config, .. } => Ok(config.clone()),
        }
    }
}

/// A folder's own name (`.` and `..` resolved), for `ModelInfo::name`.
fn folder_name(dir: &Path) -> String {
    let named = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned()).filter(|n| !n.is_empty());
    named(dir)
        .filter(|n| n != "." && n != "..")
        .or_else(|| dir.canonicalize().ok().as_deref().and_then(named))
        .unwrap_or_else(|| "model".into())
}

/// `requested`, else `CANDLE_NUM_THREADS`, else `RAYON_NUM_THREADS`, else available parallelism.
fn decide_threads(requested: Option<usize>) -> usize {
    let from_env =
        |key: &str| std::env::var(key).ok().and_then(|v| v.trim().parse::<usize>().ok()).filter(|&n| n > 0);
    requested
        .or_else(|| from_env("CANDLE_NUM_THREADS"))
        .or_else(|| from_env("RAYON_NUM_THREADS"))
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

/// Makes candle's pools (which read these variables) use `n` threads. Done at load, before any
/// tensor op, which is when the server is still single-purpose; later loads in the same process
/// cannot resize the barrier pool (see the check in `Engine::load`).
fn export_thread_count(n: usize) {
    let value = n.to_string();
    for key in ["CANDLE_NUM_THREADS", "RAYON_NUM_THREADS"] {
        if std::env::var(key).ok().as_deref() != Some(value.as_str()) {
            std::env::set_var(key, &value);
        }
    }
    // candle's barrier-pool workers spin this many rounds before sleeping (default 25,000).
    // Measured on a 2-vCPU machine with SmolLM2 Q4_1 and 2 threads (docs/performance.md):
    // 200 gave 30-33 tok/s against 17-20 for the default, 0, 50, 1,000 and 5,000. An explicit
    // CANDLE_BARRIER_POOL_SPIN_LIMIT in the environment wins.
    if std::env::var_os(SPIN_LIMIT_VAR).is_none() {
        std::env::set_var(SPIN_LIMIT_VAR, DEFAULT_SPIN_LIMIT.to_string());
    }
}

const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
const DEFAULT_SPIN_LIMIT: u32 = 200;

impl LanguageModel for Model {
    fn forward_batch(&mut self, seqs: &[SeqInput]) -> Result<Vec<Vec<f32>>, EngineError> {
        Model::forward_batch(self, seqs)
    }

    /// On a device placement greedy steps copy back token ids, not `[seqs, vocab]` logits.
    fn samples_on_device(&self) -> bool {
        matches!(self.placement(), Placement::Device { .. })
    }

    fn forward_batch_greedy(&mut self, seqs: &[SeqInput]) -> Result<Vec<u32>, EngineError> {
        Model::forward_batch_greedy(self, seqs)
    }
}

impl TokenText for Tokenizer {
    fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        Tokenizer::token_bytes(self, id)
    }
    fn eos_ids(&self) -> &[u32] {
        Tokenizer::eos_ids(self)
    }
    fn is_control(&self, id: u32) -> bool {
        Tokenizer::is_control(self, id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_is_shareable_across_tasks() {
        fn assert_send_sync<T: Send + Sync + Clone + 'static>() {}
        assert_send_sync::<Engine>();
    }

    #[test]
    fn explicit_threads_win_and_missing_model_is_a_load_error() {
        assert_eq!(decide_threads(Some(3)), 3);
        let cfg = EngineConfig { threads: Some(1), max_queue: 1, ..EngineConfig::new("/nonexistent/model.gguf") };
        assert!(matches!(Engine::load(cfg.clone()), Err(EngineError::Load(_))));
        assert!(matches!(Engine::load(EngineConfig { threads: Some(0), ..cfg }), Err(EngineError::Load(_))));
    }
}
