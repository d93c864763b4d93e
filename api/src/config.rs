//! Server configuration: the clap command line (each flag also an env var), an optional YAML
//! config file with the same keys, and their merge with precedence defaults < file < env < flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ai_sandbox_engine::{
    DEFAULT_GPU_MAX_BATCH_TOKENS, DEFAULT_GPU_MAX_SEQS, DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_SEQS,
};
use clap::Parser;
use serde::Deserialize;

/// Default listen host.
pub const DEFAULT_HOST: &str = "127.0.0.1";
/// Default listen port.
pub const DEFAULT_PORT: u16 = 8000;
/// Default request queue length.
pub const DEFAULT_MAX_QUEUE: usize = 64;

/// OpenAI-compatible LLM server for AI Sandbox (GGUF and Hugging Face models on the CPU or an NVIDIA GPU).
///
/// Every option can also be set with an environment variable or in a YAML file given with
/// --config (keys as below with `_` instead of `-`, e.g. `max_queue: 16`). Precedence:
/// defaults < config file < environment < command-line flags.
#[derive(Debug, Clone, Default, Parser)]
#[command(name = "ai-sandbox-api", version)]
pub struct Args {
    /// YAML config file with any of the keys below.
    #[arg(long, env = "AI_SANDBOX_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The model (required, here or in the config file): a GGUF file, a Hugging Face model
    /// folder, or hf:ORG/NAME[@REV] (downloaded into the HF cache, $HF_HOME; HF_TOKEN for gated
    /// repos).
    #[arg(long, env = "AI_SANDBOX_MODEL", value_name = "PATH")]
    pub model: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "AI_SANDBOX_HOST", value_name = "H")]
    pub host: Option<String>,
    /// Port to listen on [default: 8000].
    #[arg(long, env = "AI_SANDBOX_PORT", value_name = "P")]
    pub port: Option<u16>,
    /// Model id served on /v1/models and expected in requests [default: the model's own name].
    #[arg(long, env = "AI_SANDBOX_SERVED_MODEL_NAME", value_name = "NAME")]
    pub served_model_name: Option<String>,
    /// CPU threads for inference [default: all cores].
    #[arg(long, env = "AI_SANDBOX_THREADS", value_name = "N")]
    pub threads: Option<usize>,
    /// Pin inference thread i to the i-th CPU this process may use (Linux); a pinned thread
    /// cannot move off a CPU that another process loads (measured in docs/performance.md)
    /// [default: false].
    #[arg(long, env = "AI_SANDBOX_PIN_THREADS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub pin_threads: Option<bool>,
    /// Context size in tokens [default: the model's own].
    #[arg(long, env = "AI_SANDBOX_CTX_SIZE", value_name = "N")]
    pub ctx_size: Option<usize>,
    /// Requests allowed to wait for the engine; more get 429 [default: 64].
    #[arg(long, env = "AI_SANDBOX_MAX_QUEUE", value_name = "N")]
    pub max_queue: Option<usize>,
    /// KV-cache budget in MiB, shared by all running requests; must hold one full context
    /// [default: two full contexts; with --device cuda what --gpu-memory-utilization leaves].
    #[arg(long, env = "AI_SANDBOX_KV_CACHE_MB", value_name = "MIB")]
    pub kv_cache_mb: Option<usize>,
    /// Share of the GPU's memory this server may fill with weights, workspace and the KV cache
    /// when --kv-cache-mb is not given, in (0, 1] [default: 0.9].
    #[arg(long, env = "AI_SANDBOX_GPU_MEMORY_UTILIZATION", value_name = "FRACTION")]
    pub gpu_memory_utilization: Option<f64>,
    /// Most requests generated together in one batch [default: 32; 128 with --device cuda].
    #[arg(long, env = "AI_SANDBOX_MAX_SEQS", value_name = "N")]
    pub max_seqs: Option<usize>,
    /// Most tokens in one forward pass: all decodes plus prompt chunks [default: 256; 2048 with
    /// --device cuda].
    #[arg(long, env = "AI_SANDBOX_MAX_BATCH_TOKENS", value_name = "N")]
    pub max_batch_tokens: Option<usize>,
    /// Where the model runs: cpu (our CPU kernels), cuda or cuda:N (an NVIDIA GPU; needs a
    /// binary built with the `cuda` feature), cpu-tensor (the GPU code path on the CPU, for
    /// tests) [default: cpu].
    #[arg(long, env = "AI_SANDBOX_DEVICE", value_name = "DEVICE")]
    pub device: Option<String>,
    /// Weight and KV-cache dtype on a GPU: bf16, f16 or f32 [default: bf16 on cuda].
    #[arg(long, env = "AI_SANDBOX_DTYPE", value_name = "DTYPE")]
    pub dtype: Option<String>,
    /// KV-cache element type with --device cpu: f16 (half the memory, faster attention) or f32
    /// (exact) [default: f16].
    #[arg(long, env = "AI_SANDBOX_KV_CACHE_DTYPE", value_name = "DTYPE")]
    pub kv_cache_dtype: Option<String>,
    /// Require `Authorization: Bearer KEY` on /v1/* [default: any key or none accepted].
    #[arg(
        long,
        env = "AI_SANDBOX_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub api_key: Option<String>,
}

/// The YAML config file: the same keys as the flags, all optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub model: Option<PathBuf>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub served_model_name: Option<String>,
    pub threads: Option<usize>,
    pub pin_threads: Option<bool>,
    pub ctx_size: Option<usize>,
    pub max_queue: Option<usize>,
    pub kv_cache_mb: Option<usize>,
    pub gpu_memory_utilization: Option<f64>,
    pub max_seqs: Option<usize>,
    pub max_batch_tokens: Option<usize>,
    pub device: Option<String>,
    pub dtype: Option<String>,
    pub kv_cache_dtype: Option<String>,
    pub api_key: Option<String>,
}

/// Fully resolved settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub model: PathBuf,
    pub host: String,
    pub port: u16,
    pub served_model_name: Option<String>,
    pub threads: Option<usize>,
    pub pin_threads: bool,
    pub ctx_size: Option<usize>,
    pub max_queue: usize,
    pub kv_cache_mb: Option<usize>,
    pub gpu_memory_utilization: f64,
    pub max_seqs: usize,
    pub max_batch_tokens: usize,
    pub device: String,
    pub dtype: Option<String>,
    pub kv_cache_dtype: Option<String>,
    pub api_key: Option<String>,
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("no model given: pass --model PATH, set AI_SANDBOX_MODEL, or put `model:` in the config file")]
    NoModel,
    #[error("`{name}` must be at least 1. Given: 0")]
    Zero { name: &'static str },
    #[error("`gpu-memory-utilization` must be a fraction in (0, 1]. Given: {0}")]
    Fraction(f64),
    #[error("invalid listen address {host}:{port}: {message}")]
    Address {
        host: String,
        port: u16,
        message: String,
    },
}

/// Parse a YAML config file's text.
pub fn parse_file(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(FileConfig::default());
    }
    serde_norway::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

impl Config {
    /// Merge flags/env (already merged by clap, flags first) over the file over defaults.
    pub fn resolve(args: Args, file: FileConfig) -> Result<Config, ConfigError> {
        let device = args.device.or(file.device).filter(|s| !s.is_empty()).unwrap_or_else(|| "cpu".into());
        let (default_seqs, default_tokens) = match device.starts_with("cuda") {
            true => (DEFAULT_GPU_MAX_SEQS, DEFAULT_GPU_MAX_BATCH_TOKENS),
            false => (DEFAULT_MAX_SEQS, DEFAULT_MAX_BATCH_TOKENS),
        };
        let cfg = Config {
            model: args.model.or(file.model).ok_or(ConfigError::NoModel)?,
            host: args
                .host
                .or(file.host)
                .unwrap_or_else(|| DEFAULT_HOST.to_string()),
            port: args.port.or(file.port).unwrap_or(DEFAULT_PORT),
            served_model_name: args
                .served_model_name
                .or(file.served_model_name)
                .filter(|s| !s.is_empty()),
            threads: args.threads.or(file.threads),
            pin_threads: args.pin_threads.or(file.pin_threads).unwrap_or(false),
            ctx_size: args.ctx_size.or(file.ctx_size),
            max_queue: args
                .max_queue
                .or(file.max_queue)
                .unwrap_or(DEFAULT_MAX_QUEUE),
            kv_cache_mb: args.kv_cache_mb.or(file.kv_cache_mb),
            gpu_memory_utilization: args
                .gpu_memory_utilization
                .or(file.gpu_memory_utilization)
                .unwrap_or(ai_sandbox_engine::kv_budget::DEFAULT_GPU_MEMORY_UTILIZATION),
            max_seqs: args.max_seqs.or(file.max_seqs).unwrap_or(default_seqs),
            max_batch_tokens: args
                .max_batch_tokens
                .or(file.max_batch_tokens)
                .unwrap_or(default_tokens),
            device,
            dtype: args.dtype.or(file.dtype).filter(|s| !s.is_empty()),
            kv_cache_dtype: args.kv_cache_dtype.or(file.kv_cache_dtype).filter(|s| !s.is_empty()),
            api_key: args.api_key.or(file.api_key).filter(|s| !s.is_empty()),
        };
        if cfg.threads == Some(0) {
            return Err(ConfigError::Zero { name: "threads" });
        }
        if cfg.ctx_size == Some(0) {
            return Err(ConfigError::Zero { name: "ctx-size" });
        }
        if cfg.max_queue == 0 {
            return Err(ConfigError::Zero { name: "max-queue" });
        }
        if cfg.kv_cache_mb == Some(0) {
            return Err(ConfigError::Zero { name: "kv-cache-mb" });
        }
        let util = cfg.gpu_memory_utilization;
        if !(util > 0.0 && util <= 1.0) {
            return Err(ConfigError::Fraction(util));
        }
        if cfg.max_seqs == 0 {
            return Err(ConfigError::Zero { name: "max-seqs" });
        }
        if cfg.max_batch_tokens == 0 {
            return Err(ConfigError::Zero { name: "max-batch-tokens" });
        }
        Ok(cfg)
    }

    /// Read `--config` if given, then resolve.
    pub fn load(args: Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                parse_file(&text, p)?
            }
            None => FileConfig::default(),
        };
        Config::resolve(args, file)
    }

    /// The socket address to bind.
    pub fn addr(&self) -> Result<SocketAddr, ConfigError> {
        let err = |message: String| ConfigError::Address {
            host: self.host.clone(),
            port: self.port,
            message,
        };
        use std::net::ToSocketAddrs;
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| err(e.to_string()))?
            .next()
            .ok_or_else(|| err("no address found".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("ai-sandbox-api").chain(list.iter().copied())).unwrap()
    }

    #[test]
    fn flags_beat_file_and_file_beats_defaults() {
        let file = parse_file(
            "model: /m/file.gguf\nport: 9000\nmax_queue: 3\nhost: 0.0.0.0\n",
            Path::new("c.yaml"),
        )
        .unwrap();
        let c = Config::resolve(args(&["--port", "9100"]), file).unwrap();
        assert_eq!(c.port, 9100);
        assert_eq!(c.max_queue, 3);
        assert_eq!(c.host, "0.0.0.0");
        assert_eq!(c.model, PathBuf::from("/m/file.gguf"));
        let c = Config::resolve(args(&["--model", "x.gguf"]), FileConfig::default()).unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.max_queue),
            (DEFAULT_HOST, DEFAULT_PORT, DEFAULT_MAX_QUEUE)
        );
        assert_eq!(c.served_model_name, None);
    }

    #[test]
    fn pin_threads_is_off_unless_a_flag_or_the_file_says() {
        let pin = |a: &[&str], f: &str| {
            let file = parse_file(&format!("model: m\n{f}"), Path::new("c.yaml")).unwrap();
            Config::resolve(args(a), file).unwrap().pin_threads
        };
        assert!(!pin(&[], ""));
        assert!(pin(&["--pin-threads"], ""));
        assert!(pin(&["--pin-threads=true"], ""));
        assert!(pin(&[], "pin_threads: true\n"));
        assert!(!pin(&["--pin-threads", "false"], "pin_threads: true\n"));
        assert!(Args::try_parse_from(["ai-sandbox-api", "--pin-threads=maybe"]).is_err());
    }

    #[test]
    fn device_and_dtype_come_from_file_env_or_flags_with_cpu_by_default() {
        let c = Config::resolve(args(&["--model", "m"]), FileConfig::default()).unwrap();
        assert_eq!((c.device.as_str(), c.dtype.as_deref()), ("cpu", None));
        assert_eq!((c.max_seqs, c.max_batch_tokens), (DEFAULT_MAX_SEQS, DEFAULT_MAX_BATCH_TOKENS));
        let file = parse_file("model: m\ndevice: cuda:1\ndtype: f16\n", Path::new("c.yaml")).unwrap();
        let c = Config::resolve(args(&[]), file.clone()).unwrap();
        assert_eq!((c.device.as_str(), c.dtype.as_deref()), ("cuda:1", Some("f16")));
        assert_eq!((c.max_seqs, c.max_batch_tokens), (DEFAULT_GPU_MAX_SEQS, DEFAULT_GPU_MAX_BATCH_TOKENS));
        let c = Config::resolve(args(&["--device", "cpu-tensor", "--dtype", "bf16"]), file).unwrap();
        assert_eq!((c.device.as_str(), c.dtype.as_deref()), ("cpu-tensor", Some("bf16")));
        // --kv-cache-dtype: unset (the engine's f16) unless the file or a flag says.
        assert_eq!(c.kv_cache_dtype, None);
        let file = parse_file("model: m\nkv_cache_dtype: f32\n", Path::new("c.yaml")).unwrap();
        assert_eq!(Config::resolve(args(&[]), file.clone()).unwrap().kv_cache_dtype.as_deref(), Some("f32"));
        let c = Config::resolve(args(&["--kv-cache-dtype", "f16"]), file).unwrap();
        assert_eq!(c.kv_cache_dtype.as_deref(), Some("f16"));
    }

    #[test]
    fn bad_configs_are_errors() {
        assert!(matches!(
            Config::resolve(args(&[]), FileConfig::default()),
            Err(ConfigError::NoModel)
        ));
        assert!(matches!(
            parse_file("modle: x\n", Path::new("c.yaml")),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            Config::resolve(
                args(&["--model", "m", "--max-queue", "0"]),
                FileConfig::default()
            ),
            Err(ConfigError::Zero { name: "max-queue" })
        ));
    }

    #[test]
    fn gpu_memory_utilization_is_a_fraction_from_any_layer() {
        let c = Config::resolve(args(&["--model", "m"]), FileConfig::default()).unwrap();
        assert_eq!(c.gpu_memory_utilization, 0.9);
        let file = parse_file("model: m
gpu_memory_utilization: 0.75
", Path::new("c.yaml")).unwrap();
        assert_eq!(Config::resolve(args(&[]), file.clone()).unwrap().gpu_memory_utilization, 0.75);
        let c = Config::resolve(args(&["--gpu-memory-utilization", "0.5"]), file).unwrap();
        assert_eq!(c.gpu_memory_utilization, 0.5);
        for bad in ["0", "1.01", "-0.2", "NaN"] {
            let flag = format!("--gpu-memory-utilization={bad}");
            let err = Config::resolve(args(&["--model", "m", &flag]), FileConfig::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains("gpu-memory-utilization") && err.contains("(0, 1]"), "{bad}: {err}");
        }
    }
}
