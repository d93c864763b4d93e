//! `ai-sandbox-bench`: drives a running OpenAI-compatible server with concurrent streaming
//! clients and reports TTFT, inter-token latency, single-stream decode and aggregate tok/s,
//! and (optionally) the time-to-first-token gain of a server's prefix cache. In process, without
//! a server: `--random-weights SHAPE` benchmarks the engine on random weights of a real shape
//! against the device's copy-bandwidth roofline, and `--kernel-check` runs the engine's kernel
//! reference checks on a device.

pub mod bandwidth;
pub mod client;
pub mod device_error;
pub mod kernel_check;
pub mod prefix;
pub mod random_report;
pub mod random_weights;
pub mod rss;
pub mod sse;
pub mod stats;

pub use client::{run_level, BenchConfig, BenchError, LevelReport, RequestSample};
pub use device_error::DeviceBenchError;
pub use prefix::{run_prefix_cache, PrefixCacheConfig, PrefixCacheReport};
pub use random_report::RandomWeightsReport;
pub use random_weights::{run_random_weights, RandomWeightsOptions};
pub use stats::{percentile, Summary};
