//! What `--random-weights` reports (the serde types of its `--json` object and its table) and
//! the memory-roofline arithmetic: bytes a decode step must read (weights + KV) from the model
//! shape, and the fraction of the measured copy bandwidth a step time achieves.

use std::fmt::Write as _;

use ai_sandbox_engine::model::ModelConfig;
use serde::Serialize;

use crate::bandwidth::CopyBandwidth;
use crate::stats::percentile;

/// Weight elements one decode step reads: every layer's attention and MLP matrices and norms,
/// the final norm, the whole output projection, and ONE row of the embedding table (a lookup).
/// The same whether or not the model ties its output to the embeddings.
pub fn weight_elems_read_per_step(c: &ModelConfig) -> u64 {
    let (h, f) = (c.hidden_size as u64, c.ffn_size as u64);
    let q = (c.n_heads * c.head_dim) as u64;
    let kv = (c.n_kv_heads * c.head_dim) as u64;
    let layer = h * q + 2 * h * kv + q * h + 3 * h * f + 2 * h;
    c.n_layers as u64 * layer + h + c.vocab_size as u64 * h + h
}

/// Mean number of cached positions each timed decode step attends over: after a prompt of
/// `prompt_len` tokens and `warmup` untimed steps, timed step `i` feeds position
/// `prompt_len + warmup + i` and reads keys `0..=` that position.
pub fn mean_context(prompt_len: usize, warmup: usize, steps: usize) -> f64 {
    (prompt_len + warmup) as f64 + (steps.max(1) - 1) as f64 / 2.0 + 1.0
}

/// Step-time statistics in milliseconds.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct StepTimes {
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub max_ms: f64,
}

impl StepTimes {
    /// From per-step wall times in seconds; `None` for none.
    pub fn of(step_s: &[f64]) -> Option<StepTimes> {
        if step_s.is_empty() {
            return None;
        }
        let ms: Vec<f64> = step_s.iter().map(|s| s * 1e3).collect();
        Some(StepTimes {
            mean_ms: ms.iter().sum::<f64>() / ms.len() as f64,
            p50_ms: percentile(&ms, 50.0)?,
            max_ms: ms.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }
}

/// How close a step time comes to the copy roofline.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Roofline {
    /// Weight + KV bytes one step must read.
    pub bytes_per_step: f64,
    /// `bytes_per_step` / mean step time, GB/s.
    pub achieved_gb_s: f64,
    /// `achieved_gb_s` / the copy bandwidth.
    pub fraction: f64,
    /// Steps per second the copy bandwidth would allow.
    pub steps_per_s_at_roofline: f64,
}

impl Roofline {
    pub fn new(bytes_per_step: f64, mean_step_s: f64, copy_gb_s: f64) -> Roofline {
        let achieved_gb_s = bytes_per_step / mean_step_s / 1e9;
        Roofline {
            bytes_per_step,
            achieved_gb_s,
            fraction: achieved_gb_s / copy_gb_s,
            steps_per_s_at_roofline: copy_gb_s * 1e9 / bytes_per_step,
        }
    }
}

/// The single-stream measurement.
#[derive(Debug, Clone, Serialize)]
pub struct SingleStream {
    pub prompt_len: usize,
    pub warmup_steps: usize,
    pub decode_steps: usize,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
    pub step: StepTimes,
    pub roofline: Roofline,
}

/// One concurrency level: `streams` sequences decoding together, one token each per step.
#[derive(Debug, Clone, Serialize)]
pub struct StreamLevel {
    pub streams: usize,
    /// Why the level did not run (then every measurement is absent).
    pub skipped: Option<String>,
    /// The error that ended the level (then every measurement is absent; the run goes on).
    pub error: Option<String>,
    pub prefill_tok_s: Option<f64>,
    /// Output tokens per second over all streams.
    pub aggregate_tok_s: Option<f64>,
    pub per_stream_tok_s: Option<f64>,
    pub step: Option<StepTimes>,
    pub roofline: Option<Roofline>,
}

impl StreamLevel {
    /// A level that did not run, and why.
    pub fn skipped(streams: usize, reason: String) -> StreamLevel {
        StreamLevel {
            skipped: Some(reason),
            ..StreamLevel::empty(streams)
        }
    }

    /// A level that failed with `error`.
    pub fn failed(streams: usize, error: String) -> StreamLevel {
        StreamLevel {
            error: Some(error),
            ..StreamLevel::empty(streams)
        }
    }

    fn empty(streams: usize) -> StreamLevel {
        StreamLevel {
            streams,
            skipped: None,
            error: None,
            prefill_tok_s: None,
            aggregate_tok_s: None,
            per_stream_tok_s: None,
            step: None,
            roofline: None,
        }
    }
}

/// Everything one `--random-weights` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RandomWeightsReport {
    pub shape: String,
    /// `cuda:0`, `cpu`...
    pub device: String,
    pub device_name: Option<String>,
    /// `device` (candle tensors) or `host` (the CPU kernels).
    pub placement: String,
    pub dtype: String,
    /// The shape that ran (what `bench/torch_reference.py --config-from` rebuilds).
    pub config: ModelConfig,
    /// All weights as stored (the model's own count).
    pub weight_bytes: usize,
    /// Weight bytes a decode step reads (see [`weight_elems_read_per_step`]).
    pub weight_bytes_read_per_step: f64,
    pub kv_bytes_per_token: usize,
    pub kv_blocks: usize,
    pub ctx_size: usize,
    pub load_s: f64,
    pub copy_bandwidth: CopyBandwidth,
    pub single_stream: SingleStream,
    pub streams: Vec<StreamLevel>,
}

/// `14.50 GB`, `5.25 MB`, `2.0 KB` (decimal units, as bandwidths are quoted).
fn size(bytes: f64) -> String {
    match bytes {
        b if b >= 1e9 => format!("{:.2} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.2} MB", b / 1e6),
        b => format!("{:.1} KB", b / 1e3),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.digits$}"))
}

impl RandomWeightsReport {
    /// The human-readable report.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let c = &self.config;
        let name = self
            .device_name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "random-weights {} on {}{name}, {} ({}): {} layers, hidden {}, {}/{} heads x {}, ffn {}, vocab {}",
            self.shape, self.device, self.dtype, self.placement, c.n_layers, c.hidden_size,
            c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_size, c.vocab_size
        );
        let _ = writeln!(
            s,
            "weights {} ({} read per decode step), KV {}/token, {} KV blocks, ctx {}, built in {:.1} s",
            size(self.weight_bytes as f64),
            size(self.weight_bytes_read_per_step),
            size(self.kv_bytes_per_token as f64),
            self.kv_blocks,
            self.ctx_size,
            self.load_s
        );
        let bw = &self.copy_bandwidth;
        let _ = writeln!(
            s,
            "device-to-device copy: {:.0} GB/s (memcpy {:.0}, copy kernel {:.0}; {} buffer, read + write counted)",
            bw.gb_s, bw.memcpy_gb_s, bw.kernel_copy_gb_s, size(bw.buffer_bytes as f64)
        );
        let one = &self.single_stream;
        let _ = writeln!(
            s,
            "single stream: prompt {}, prefill {:.0} tok/s; {} decode steps after {} warm-up: {:.1} tok/s (step p50 {:.2} ms, max {:.2} ms)",
            one.prompt_len, one.prefill_tok_s, one.decode_steps, one.warmup_steps,
            one.decode_tok_s, one.step.p50_ms, one.step.max_ms
        );
        let r = &one.roofline;
        let _ = writeln!(
            s,
            "roofline: {} read per step -> {:.0} GB/s = {:.1}% of the copy bandwidth (at 100%: {:.1} tok/s)",
            size(r.bytes_per_step),
            r.achieved_gb_s,
            100.0 * r.fraction,
            r.steps_per_s_at_roofline
        );
        let _ = writeln!(
            s,
            "{:>7} {:>13} {:>11} {:>13} {:>11} {:>9}",
            "streams", "prefill tok/s", "step p50 ms", "agg tok/s", "tok/s each", "roofline"
        );
        for l in &self.streams {
            if let Some(why) = &l.skipped {
                let _ = writeln!(s, "{:>7} skipped: {why}", l.streams);
                continue;
            }
            if let Some(e) = &l.error {
                let _ = writeln!(s, "{:>7} FAILED: {e}", l.streams);
                continue;
            }
            let _ = writeln!(
                s,
                "{:>7} {:>13} {:>11} {:>13} {:>11} {:>9}",
                l.streams,
                opt(l.prefill_tok_s, 0),
                opt(l.step.map(|t| t.p50_ms), 2),
                opt(l.aggregate_tok_s, 1),
                opt(l.per_stream_tok_s, 1),
                l.roofline
                    .map_or_else(|| "-".into(), |r| format!("{:.1}%", 100.0 * r.fraction)),
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ai_sandbox_engine::model::{RopeScaling, RopeStyle};

    fn mistral_like() -> ModelConfig {
        ModelConfig {
            arch: "llama".into(),
            name: None,
            vocab_size: 32768,
            hidden_size: 4096,
            n_layers: 32,
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            ffn_size: 14336,
            context_length: 32768,
            rope_theta: 1e6,
            rms_eps: 1e-5,
            rope_dim: 128,
            rope_style: RopeStyle::Interleaved,
            rope_scaling: RopeScaling::None,
            sliding_window: None,
        }
    }

    #[test]
    fn mistral_7b_reads_its_published_parameter_count_less_the_embedding_table() {
        // Mistral-7B-v0.3 has 7,248,023,552 parameters, of which the embedding table is
        // 32768 * 4096; a decode step reads one of its rows.
        let read = weight_elems_read_per_step(&mistral_like());
        assert_eq!(read, 7_248_023_552 - 32768 * 4096 + 4096);
    }

    #[test]
    fn mean_context_counts_the_fed_position_itself() {
        // Prompt 4, no warm-up, 1 step: the step feeds position 4 and reads keys 0..=4.
        assert_eq!(mean_context(4, 0, 1), 5.0);
        // Steps at positions 10, 11, 12 read 11, 12, 13 keys.
        assert_eq!(mean_context(8, 2, 3), 12.0);
    }

    #[test]
    fn roofline_fraction_is_achieved_over_copy_bandwidth() {
        // 14.5 GB per step in 5 ms = 2900 GB/s; against 3000 GB/s that is 96.7%.
        let r = Roofline::new(14.5e9, 5e-3, 3000.0);
        assert!((r.achieved_gb_s - 2900.0).abs() < 1e-6);
        assert!((r.fraction - 2900.0 / 3000.0).abs() < 1e-12);
        assert!((r.steps_per_s_at_roofline - 3000.0 / 14.5).abs() < 1e-9);
    }

    #[test]
    fn the_table_shows_measured_skipped_and_failed_levels() {
        let cfg = mistral_like();
        let step = StepTimes {
            mean_ms: 5.0,
            p50_ms: 5.0,
            max_ms: 6.0,
        };
        let roofline = Roofline::new(14.5e9, 5e-3, 3000.0);
        let report = RandomWeightsReport {
            shape: "mistral-7b".into(),
            device: "cuda:0".into(),
            device_name: Some("NVIDIA H100 80GB HBM3".into()),
            placement: "device".into(),
            dtype: "bf16".into(),
            config: cfg.clone(),
            weight_bytes: 14_496_047_104,
            weight_bytes_read_per_step: 14.2e9,
            kv_bytes_per_token: 131_072,
            kv_blocks: 1664,
            ctx_size: 196,
            load_s: 2.5,
            copy_bandwidth: CopyBandwidth {
                buffer_bytes: 1 << 30,
                memcpy_gb_s: 3000.0,
                kernel_copy_gb_s: 2800.0,
                gb_s: 3000.0,
            },
            single_stream: SingleStream {
                prompt_len: 128,
                warmup_steps: 4,
                decode_steps: 64,
                prefill_tok_s: 9000.0,
                decode_tok_s: 200.0,
                step,
                roofline,
            },
            streams: vec![
                StreamLevel {
                    aggregate_tok_s: Some(6400.0),
                    per_stream_tok_s: Some(100.0),
                    prefill_tok_s: Some(20000.0),
                    step: Some(step),
                    roofline: Some(roofline),
                    ..StreamLevel::empty(64)
                },
                StreamLevel::skipped(128, "needs 3328 KV blocks".into()),
                StreamLevel::failed(256, "out of memory".into()),
            ],
        };
        let t = report.table();
        assert!(
            t.starts_with("random-weights mistral-7b on cuda:0 (NVIDIA H100 80GB HBM3), bf16"),
            "{t}"
        );
        assert!(
            t.contains("weights 14.50 GB (14.20 GB read per decode step), KV 131.1 KB/token"),
            "{t}"
        );
        assert!(
            t.contains("96.7% of the copy bandwidth (at 100%: 206.9 tok/s)"),
            "{t}"
        );
        let rows: Vec<&str> = t.lines().rev().take(3).collect();
        assert_eq!(
            rows[2].split_whitespace().collect::<Vec<_>>(),
            ["64", "20000", "5.00", "6400.0", "100.0", "96.7%"]
        );
        assert_eq!(rows[1].trim(), "128 skipped: needs 3328 KV blocks");
        assert_eq!(rows[0].trim(), "256 FAILED: out of memory");
    }

    #[test]
    fn sizes_pick_a_readable_unit() {
        assert_eq!(size(14.5e9), "14.50 GB");
        assert_eq!(size(5_249_024.0), "5.25 MB");
        assert_eq!(size(2048.0), "2.0 KB");
    }

    #[test]
    fn step_times_summarise_milliseconds() {
        let t = StepTimes::of(&[0.001, 0.003, 0.002]).unwrap();
        assert!((t.mean_ms - 2.0).abs() < 1e-12);
        assert!((t.p50_ms - 2.0).abs() < 1e-12);
        assert!((t.max_ms - 3.0).abs() < 1e-12);
        assert!(StepTimes::of(&[]).is_none());
    }
}
