//! The typed error of the in-process modes (`--random-weights`, `--kernel-check`).

use thiserror::Error;

/// Why an in-process benchmark or check could not run.
#[derive(Debug, Error)]
pub enum DeviceBenchError {
    /// `--random-weights` named a shape the engine has no preset for.
    #[error("unknown shape `{shape}` for --random-weights (known: {known})")]
    UnknownShape { shape: String, known: String },
    /// A flag value that can't work; the message names the flag.
    #[error("{0}")]
    Invalid(String),
    /// The engine refused or failed (placement, model build, forward pass, checks).
    #[error(transparent)]
    Engine(#[from] ai_sandbox_engine::EngineError),
    /// A tensor operation of the benchmark itself (the copy-bandwidth measurement).
    #[error("device: {0}")]
    Candle(#[from] candle_core::Error),
}
