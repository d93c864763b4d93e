//! `--random-weights SHAPE`: the engine in process, no server, on a model of a real shape with
//! random weights built on the device: the copy-bandwidth roofline, single-stream decode
//! (prefill, warm-up, timed greedy steps) and aggregate decode at several stream counts.
//!
//! Every stream has its own disjoint run of KV blocks; the cache is sized for the largest
//! stream count (capped by `--kv-cache-mb` or, on CUDA, by the free memory), and a level that
//! doesn't fit is skipped with its reason, one that fails is reported with its error and the
//! next one runs. Decode steps go through `forward_batch_greedy` (the argmax on the device, only
//! the ids copied back), so each timed step ends synchronised.

use std::time::Instant;

use ai_sandbox_engine::model::{
    kv_bytes_per_block, LoadOptions, Model, ModelConfig, Placement, SeqInput, KV_BLOCK_SIZE,
};
use candle_core::DeviceLocation;

use crate::bandwidth::{copy_bandwidth, device_facts, DeviceFacts};
use crate::device_error::DeviceBenchError;
use crate::random_report::{
    mean_context, weight_elems_read_per_step, RandomWeightsReport, Roofline,
    SingleStream, StepTimes, StreamLevel,
};

/// Most prompt tokens one prefill forward pass carries (bounds the activations).
pub const PREFILL_TOKENS_PER_PASS: usize = 2048;

/// Device memory left free besides the weights and the KV cache when sizing the cache from the
/// free memory (activations of a prefill pass, cuBLAS workspaces, the copy-bandwidth buffers).
const RESERVE_BYTES: usize = 4 << 30;

/// What to run; see `ai-sandbox-bench --help`.
#[derive(Debug, Clone)]
pub struct RandomWeightsOptions {
    pub shape: String,
    pub device: String,
    pub dtype: Option<String>,
    pub streams: Vec<usize>,
    pub prompt_len: usize,
    pub decode_steps: usize,
    pub warmup_steps: usize,
    pub ctx_size: Option<usize>,
    pub kv_cache_mb: Option<usize>,
    /// Bytes of the buffer the copy bandwidth is measured on (None: 1 GiB on CUDA, 64 MiB on
    /// the CPU).
    pub copy_bytes: Option<usize>,
    pub seed: u64,
}

impl RandomWeightsOptions {
    /// The defaults of the CLI for `shape` on `device`.
    pub fn new(shape: &str, device: &str) -> Self {
        RandomWeightsOptions {
            shape: shape.to_string(),
            device: device.to_string(),
            dtype: None,
            streams: vec![1, 8, 32, 64, 128],
            prompt_len: 128,
            decode_steps: 64,
            warmup_steps: 4,
            ctx_size: None,
            kv_cache_mb: None,
            copy_bytes: None,
            seed: 0,
        }
    }

    /// Positions one stream uses: prompt, warm-up and timed steps.
    pub fn tokens_per_stream(&self) -> usize {
        self.prompt_len + self.warmup_steps + self.decode_steps
    }

    fn validate(&self) -> Result<(), DeviceBenchError> {
        let bad = |m: &str| Err(DeviceBenchError::Invalid(m.to_string()));
        if self.streams.is_empty() || self.streams.contains(&0) {
            return bad("--streams needs positive stream counts");
        }
        if self.prompt_len == 0 {
            return bad("--prompt-len must be at least 1");
        }
        if self.decode_steps == 0 {
            return bad("--decode-steps must be at least 1");
        }
        if let Some(ctx) = self.ctx_size {
            if ctx < self.tokens_per_stream() {
                return Err(DeviceBenchError::Invalid(format!(
                    "--ctx-size {ctx} is smaller than --prompt-len {} + {} warm-up + --decode-steps {} = {}",
                    self.prompt_len,
                    self.warmup_steps,
                    self.decode_steps,
                    self.tokens_per_stream()
                )));
            }
        }
        Ok(())
    }
}

/// KV blocks to allocate: enough for `max_streams` streams of `blocks_per_stream`, capped at
/// `cap` (a memory limit) but never below one full context (`min_blocks`, the engine's floor).
/// Err when even that floor exceeds the cap.
pub fn plan_kv_blocks(
    max_streams: usize,
    blocks_per_stream: usize,
    min_blocks: usize,
    cap: Option<usize>,
) -> Result<usize, DeviceBenchError> {
    let wanted = (max_streams * blocks_per_stream).max(min_blocks);
    match cap {
        Some(cap) if cap < min_blocks => Err(DeviceBenchError::Invalid(format!(
            "the KV cache can hold {cap} blocks but one context needs {min_blocks}: raise \
             --kv-cache-mb or lower --ctx-size / --prompt-len / --decode-steps"
        ))),
        Some(cap) => Ok(wanted.min(cap)),
        None => Ok(wanted),
    }
}

/// A reproducible prompt of `len` token ids below `vocab` (splitmix64).
pub fn random_prompt(len: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut state = seed;
    (0..len)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % vocab as u64) as u32
        })
        .collect()
}

fn device_name(model: &Model) -> String {
    match model.device().location() {
        DeviceLocation::Cpu => "cpu".into(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

fn dtype_name(p: &Placement) -> String {
    match p {
        Placement::Host { .. } => "f32".into(),
        Placement::Device { dtype, .. } => dtype.as_str().into(),
    }
}

/// The KV block cap from `--kv-cache-mb`, else (CUDA) from the free memory less the weights
/// and a reserve; None when neither says anything.
fn kv_block_cap(
    opts: &RandomWeightsOptions,
    facts: &DeviceFacts,
    config: &ModelConfig,
    placement: &Placement,
) -> Option<usize> {
    let per_block = kv_bytes_per_block(config, placement);
    if let Some(mb) = opts.kv_cache_mb {
        return Some((mb << 20) / per_block);
    }
    let free = facts.free_bytes?;
    // Embedding table + the rest read per step covers every weight (the table is read once
    // per step minus one row).
    let elems =
        weight_elems_read_per_step(config) + (config.vocab_size * config.hidden_size) as u64;
    let weights = elems as usize * placement.weight_elem_bytes();
    Some(free.saturating_sub(weights + RESERVE_BYTES) / per_block)
}

/// Runs the benchmark; `log` gets one line per phase.
pub fn run_random_weights(
    opts: &RandomWeightsOptions,
    log: &mut dyn FnMut(&str),
) -> Result<RandomWeightsReport, DeviceBenchError> {
    opts.validate()?;
    let config =
        ModelConfig::preset(&opts.shape).ok_or_else(|| DeviceBenchError::UnknownShape {
            shape: opts.shape.clone(),
            known: ModelConfig::preset_names().join(", "),
        })?;
    let placement = Placement::parse(&opts.device, opts.dtype.as_deref(), None)?;
    let device = placement.device();
    let facts = device_facts(&device);
    let copy_bytes = opts
        .copy_bytes
        .unwrap_or(if device.is_cuda() { 1 << 30 } else { 64 << 20 });
    log(&format!(
        "measuring device-to-device copy bandwidth ({} MiB buffer)",
        copy_bytes >> 20
    ));
    let copy = copy_bandwidth(&device, copy_bytes)?;

    let per_stream = opts.tokens_per_stream();
    let ctx_size = opts.ctx_size.unwrap_or(per_stream);
    let blocks_per_stream = per_stream.div_ceil(KV_BLOCK_SIZE);
    let max_streams = opts.streams.iter().copied().max().unwrap_or(1);
    let cap = kv_block_cap(opts, &facts, &config, &placement);
    let kv_blocks = plan_kv_blocks(
        max_streams,
        blocks_per_stream,
        ctx_size.div_ceil(KV_BLOCK_SIZE),
        cap,
    )?;
    log(&format!(
        "building {} with random weights on {} ({} KV blocks, ctx {ctx_size})",
        opts.shape, opts.device, kv_blocks
    ));
    let start = Instant::now();
    let options = LoadOptions {
        kv_blocks: Some(kv_blocks),
        placement: placement.clone(),
        ..Default::default()
    };
    let mut model = Model::random(config.clone(), Some(ctx_size), opts.seed, &options)?;
    model.synchronize()?;
    let load_s = start.elapsed().as_secs_f64();

    let weight_bytes_read =
        weight_elems_read_per_step(&config) as f64 * placement.weight_elem_bytes() as f64;
    let kv_per_token = model.kv_bytes_per_token();
    let ctx_mean = mean_context(opts.prompt_len, opts.warmup_steps, opts.decode_steps);
    let step_bytes =
        |streams: usize| weight_bytes_read + (streams * kv_per_token) as f64 * ctx_mean;

    log(&format!(
        "single stream: prompt {}, {} decode steps",
        opts.prompt_len, opts.decode_steps
    ));
    let one = run_level(&mut model, opts, 1, blocks_per_stream)?;
    let single_step = StepTimes::of(&one.step_s)
        .ok_or_else(|| DeviceBenchError::Invalid("no decode steps ran".into()))?;
    let single_stream = SingleStream {
        prompt_len: opts.prompt_len,
        warmup_steps: opts.warmup_steps,
        decode_steps: opts.decode_steps,
        prefill_tok_s: opts.prompt_len as f64 / one.prefill_s,
        decode_tok_s: opts.decode_steps as f64 / one.decode_s,
        step: single_step,
        roofline: Roofline::new(
            step_bytes(1),
            one.decode_s / opts.decode_steps as f64,
            copy.gb_s,
        ),
    };

    let mut streams = Vec::new();
    for &b in &opts.streams {
        let needed = b * blocks_per_stream;
        if needed > kv_blocks {
            let why = format!(
                "needs {needed} KV blocks ({} MiB), {kv_blocks} allocated (memory or --kv-cache-mb)",
                (needed * kv_bytes_per_block(&config, &placement)) >> 20
            );
            log(&format!("{b} streams: skipped: {why}"));
            streams.push(StreamLevel::skipped(b, why));
            continue;
        }
        log(&format!(
            "{b} streams: prefill {} tokens, {} decode steps",
            b * opts.prompt_len,
            opts.decode_steps
        ));
        // A failing level (say, out of device memory) is reported and the next one runs.
        let r = match run_level(&mut model, opts, b, blocks_per_stream) {
            Ok(r) => r,
            Err(e) => {
                log(&format!("{b} streams: FAILED: {e}"));
                streams.push(StreamLevel::failed(b, e.to_string()));
                continue;
            }
        };
        let mean_step = r.decode_s / opts.decode_steps as f64;
        let aggregate = (b * opts.decode_steps) as f64 / r.decode_s;
        streams.push(StreamLevel {
            streams: b,
            skipped: None,
            error: None,
            prefill_tok_s: Some((b * opts.prompt_len) as f64 / r.prefill_s),
            aggregate_tok_s: Some(aggregate),
            per_stream_tok_s: Some(aggregate / b as f64),
            step: StepTimes::of(&r.step_s),
            roofline: Some(Roofline::new(step_bytes(b), mean_step, copy.gb_s)),
        });
    }

    Ok(RandomWeightsReport {
        shape: opts.shape.clone(),
        device: device_name(&model),
        device_name: facts.name,
        placement: if matches!(placement, Placement::Host { .. }) {
            "host"
        } else {
            "device"
        }
        .into(),
        dtype: dtype_name(&placement),
        config: config.clone(),
        weight_bytes: model.weight_bytes(),
        weight_bytes_read_per_step: weight_bytes_read,
        kv_bytes_per_token: kv_per_token,
        kv_blocks,
        ctx_size,
        load_s,
        copy_bandwidth: copy,
        single_stream,
        streams,
    })
}

/// Timings of one level.
struct LevelTimes {
    prefill_s: f64,
    /// Wall time of the timed decode steps together.
    decode_s: f64,
    step_s: Vec<f64>,
}

/// `streams` sequences (stream `i` on blocks `i*blocks_per_stream..`): prefill, warm-up steps,
/// then the timed decode steps, all streams in one forward pass per step.
fn run_level(
    model: &mut Model,
    opts: &RandomWeightsOptions,
    streams: usize,
    blocks_per_stream: usize,
) -> Result<LevelTimes, DeviceBenchError> {
    let vocab = model.config().vocab_size;
    let tables: Vec<Vec<u32>> = (0..streams)
        .map(|i| {
            (i * blocks_per_stream..(i + 1) * blocks_per_stream)
                .map(|b| b as u32)
                .collect()
        })
        .collect();
    let prompts: Vec<Vec<u32>> = (0..streams)
        .map(|i| random_prompt(opts.prompt_len, vocab, opts.seed ^ (i as u64 + 1)))
        .collect();
    model.synchronize()?;
    let start = Instant::now();
    let mut next = prefill(model, &prompts, &tables)?;
    model.synchronize()?;
    let prefill_s = start.elapsed().as_secs_f64();
    let mut pos = opts.prompt_len;
    decode_steps(model, &mut next, &mut pos, &tables, opts.warmup_steps)?;
    model.synchronize()?;
    let start = Instant::now();
    let step_s = decode_steps(model, &mut next, &mut pos, &tables, opts.decode_steps)?;
    model.synchronize()?;
    Ok(LevelTimes {
        prefill_s,
        decode_s: start.elapsed().as_secs_f64(),
        step_s,
    })
}

/// Prefills every prompt (all the same length) in passes of at most
/// [`PREFILL_TOKENS_PER_PASS`] tokens, never two pieces of one sequence in a pass; returns each
/// sequence's greedy next token.
fn prefill(
    model: &mut Model,
    prompts: &[Vec<u32>],
    tables: &[Vec<u32>],
) -> Result<Vec<u32>, DeviceBenchError> {
    let len = prompts.first().map_or(0, Vec::len);
    let chunk = len.clamp(1, PREFILL_TOKENS_PER_PASS);
    let per_pass = (PREFILL_TOKENS_PER_PASS / chunk).max(1);
    let mut next = Vec::with_capacity(prompts.len());
    let indices: Vec<usize> = (0..prompts.len()).collect();
    for group in indices.chunks(per_pass) {
        for start in (0..len).step_by(chunk) {
            let end = (start + chunk).min(len);
            let last = end == len;
            let inputs: Vec<SeqInput> = group
                .iter()
                .map(|&i| SeqInput {
                    tokens: &prompts[i][start..end],
                    pos: start,
                    blocks: &tables[i],
                    logits: last,
                })
                .collect();
            if last {
                let ids = model.forward_batch_greedy(&inputs)?;
                if ids.len() != group.len() {
                    return Err(DeviceBenchError::Invalid(format!(
                        "prefill of {} sequences returned {} tokens",
                        group.len(),
                        ids.len()
                    )));
                }
                next.extend(ids);
            } else {
                model.forward_batch(&inputs)?;
            }
        }
    }
    Ok(next)
}

/// `steps` decode steps of every stream at position `*pos` (advanced), feeding each stream its
/// previous greedy token; returns each step's wall time (ids copied back, so synchronised).
fn decode_steps(
    model: &mut Model,
    next: &mut [u32],
    pos: &mut usize,
    tables: &[Vec<u32>],
    steps: usize,
) -> Result<Vec<f64>, DeviceBenchError> {
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let start = Instant::now();
        let ids = {
            let inputs: Vec<SeqInput> = next
                .iter()
                .zip(tables)
                .map(|(t, blocks)| SeqInput {
                    tokens: std::slice::from_ref(t),
                    pos: *pos,
                    blocks,
                    logits: true,
                })
                .collect();
            model.forward_batch_greedy(&inputs)?
        };
        times.push(start.elapsed().as_secs_f64());
        if ids.len() != next.len() {
            return Err(DeviceBenchError::Invalid(format!(
                "a decode step of {} streams returned {} tokens",
                next.len(),
                ids.len()
            )));
        }
        next.copy_from_slice(&ids);
        *pos += 1;
    }
    Ok(times)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_blocks_cover_the_largest_level_within_the_cap() {
        assert_eq!(plan_kv_blocks(128, 13, 13, None).unwrap(), 1664);
        assert_eq!(plan_kv_blocks(128, 13, 13, Some(1000)).unwrap(), 1000);
        // A --ctx-size longer than a stream needs still gets one full context.
        assert_eq!(plan_kv_blocks(1, 13, 64, None).unwrap(), 64);
        let err = plan_kv_blocks(8, 13, 13, Some(12)).unwrap_err().to_string();
        assert!(err.contains("--kv-cache-mb"), "{err}");
    }

    #[test]
    fn random_prompts_are_reproducible_and_in_range() {
        let a = random_prompt(500, 256, 7);
        assert_eq!(a, random_prompt(500, 256, 7));
        assert_ne!(a, random_prompt(500, 256, 8));
        assert!(a.iter().all(|&t| t < 256));
        // Not degenerate: many distinct ids.
        let distinct: std::collections::HashSet<_> = a.iter().collect();
        assert!(distinct.len() > 200, "{}", distinct.len());
    }

    #[test]
    fn options_name_the_flag_they_break() {
        let mut o = RandomWeightsOptions::new("tiny", "cpu");
        o.ctx_size = Some(10);
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--ctx-size 10"));
        o.ctx_size = None;
        o.streams = vec![1, 0];
        assert!(o.validate().unwrap_err().to_string().contains("--streams"));
        o.streams = vec![1];
        o.decode_steps = 0;
        assert!(o
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--decode-steps"));
    }

    #[test]
    fn an_unknown_shape_lists_the_known_ones() {
        let o = RandomWeightsOptions::new("gpt-9", "cpu");
        let err = run_random_weights(&o, &mut |_| {}).unwrap_err().to_string();
        assert!(
            err.contains("gpt-9") && err.contains("mistral-7b") && err.contains("tiny"),
            "{err}"
        );
    }
}
