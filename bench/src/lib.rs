//! `ai-sandbox-bench`: drives a running OpenAI-compatible server with concurrent streaming
//! clients and reports TTFT, inter-token latency, single-stream decode and aggregate tok/s.

pub mod client;
pub mod rss;
pub mod sse;
pub mod stats;

pub use client::{run_level, BenchConfig, BenchError, LevelReport, RequestSample};
pub use stats::{percentile, Summary};
