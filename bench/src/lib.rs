//! `ai-sandbox-bench`: drives a running OpenAI-compatible server with concurrent streaming
//! clients and reports TTFT, inter-token latency, single-stream decode and aggregate tok/s,
//! and (optionally) the time-to-first-token gain of a server's prefix cache.

pub mod client;
pub mod prefix;
pub mod rss;
pub mod sse;
pub mod stats;

pub use client::{run_level, BenchConfig, BenchError, LevelReport, RequestSample};
pub use prefix::{run_prefix_cache, PrefixCacheConfig, PrefixCacheReport};
pub use stats::{percentile, Summary};
