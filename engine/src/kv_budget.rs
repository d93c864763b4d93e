//! How many KV-cache blocks a load allocates. `--kv-cache-mb` when given; otherwise on the
//! host two full contexts, and on a GPU what `--gpu-memory-utilization` of the device's memory
//! leaves after what is already in use, the weights and a workspace reserve (vLLM's rule),
//! capped at `--max-seqs` full contexts. Never less than one full context: fewer is a load
//! error that names the flags. Pure: the device's memory is measured by the caller.

use crate::model::{kv_bytes_per_block, ModelConfig, Placement, KV_BLOCK_SIZE};
use crate::{EngineConfig, EngineError};

const MIB: usize = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;

/// Default [`EngineConfig::gpu_memory_utilization`]: vLLM's default share.
pub const DEFAULT_GPU_MEMORY_UTILIZATION: f64 = 0.9;

/// Fixed part of the workspace reserve on a GPU: the CUDA context's later growth, cuBLAS
/// workspaces, our kernels' modules and the allocator's slack.
const FIXED_RESERVE: usize = 768 * MIB;

/// A device's memory as the driver reports it, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub free: usize,
    pub total: usize,
}

/// The KV blocks for `cfg` and a model of shape `config`; `memory` is the device's memory
/// before the weights load (`None` on the host placement or when unknown).
pub fn kv_blocks(config: &ModelConfig, cfg: &EngineConfig, memory: Option<DeviceMemory>) -> Result<usize, EngineError> {
    if cfg.max_seqs == 0 || cfg.max_batch_tokens == 0 {
        return Err(EngineError::Load("--max-seqs and --max-batch-tokens must be at least 1".into()));
    }
    // A --ctx-size beyond the model's context fails in Model::load with its own message.
    let ctx = cfg.ctx_size.unwrap_or(config.context_length).min(config.context_length);
    let need = ctx.div_ceil(KV_BLOCK_SIZE);
    let per_block = kv_bytes_per_block(config, &cfg.placement);
    if let Some(mb) = cfg.kv_cache_mb {
        let blocks = mb.saturating_mul(MIB) / per_block;
        if blocks < need {
            return Err(EngineError::Load(format!(
                "--kv-cache-mb {mb} holds {} tokens, less than one full context of {ctx} tokens \
                 (needs at least {} MiB; or lower --ctx-size)",
                blocks * KV_BLOCK_SIZE,
                (need * per_block).div_ceil(MIB)
            )));
        }
        return Ok(blocks);
    }
    let (Some(mem), Placement::Device { dtype, .. }) = (memory, &cfg.placement) else {
        return Ok(2 * need);
    };
    let util = cfg.gpu_memory_utilization;
    if !(util > 0.0 && util <= 1.0) {
        return Err(EngineError::Load(format!("--gpu-memory-utilization {util}: expected a fraction in (0, 1]")));
    }
    let weights = dense_weight_bytes(config, dtype.size_in_bytes());
    let reserve = workspace_reserve(config, cfg);
    let in_use = mem.total.saturating_sub(mem.free);
    let allowed = (mem.total as f64 * util) as usize;
    let left = allowed.saturating_sub(in_use).saturating_sub(weights).saturating_sub(reserve);
    let blocks = (left / per_block).min(cfg.max_seqs.saturating_mul(need));
    if blocks < need {
        return Err(EngineError::Load(format!(
            "the GPU has {:.1} GiB free of {:.1} GiB; with --gpu-memory-utilization {util} the weights \
             ({:.1} GiB) and a {:.1} GiB workspace leave {:.2} GiB for the KV cache, less than one \
             full context of {ctx} tokens ({:.2} GiB): lower --ctx-size, raise \
             --gpu-memory-utilization, or free the GPU",
            mem.free as f64 / GIB,
            mem.total as f64 / GIB,
            weights as f64 / GIB,
            reserve as f64 / GIB,
            left as f64 / GIB,
            (need * per_block) as f64 / GIB,
        )));
    }
    Ok(blocks)
}

/// Bytes of every weight of `config` stored densely with `elem` bytes per value, counting an
/// untied output matrix and q/k/v biases (an upper bound for tied or bias-free models).
pub fn dense_weight_bytes(config: &ModelConfig, elem: usize) -> usize {
    let (h, hd, ffn) = (config.hidden_size, config.head_dim, config.ffn_size);
    let q = config.n_heads * hd;
    let kv = config.n_kv_heads * hd;
    let per_layer = h * q + 2 * h * kv + q * h + 3 * h * ffn + 2 * h + q + 2 * kv;
    let values = config.n_layers * per_layer + 2 * config.vocab_size * h + h;
    values * elem
}

/// Activations of the largest step (every value counted in f32) plus [`FIXED_RESERVE`].
fn workspace_reserve(config: &ModelConfig, cfg: &EngineConfig) -> usize {
    let (h, hd) = (config.hidden_size, config.head_dim);
    let per_token = 6 * h + 3 * config.ffn_size + (config.n_heads + 2 * config.n_kv_heads) * hd;
    let activations = cfg.max_batch_tokens * per_token * 4;
    // Logits (f32) of every row that samples, and a copy for the argmax or sampling.
    let logits = 2 * cfg.max_seqs * config.vocab_size * 4;
    FIXED_RESERVE + activations + logits
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    const GB: usize = 1 << 30;

    fn gpu_cfg(max_seqs: usize) -> EngineConfig {
        EngineConfig {
            placement: Placement::Device { device: Device::Cpu, dtype: DType::BF16 },
            max_seqs,
            max_batch_tokens: 2048,
            ..EngineConfig::new("unused")
        }
    }

    fn mistral() -> ModelConfig {
        ModelConfig::preset("mistral-7b").unwrap()
    }

    #[test]
    fn weights_of_mistral_7b_in_bf16_are_about_14_5_gb() {
        // 7.25e9 parameters (config.json's shape), two bytes each; the bound adds biases.
        let b = dense_weight_bytes(&mistral(), 2) as f64;
        assert!((14.4e9..14.6e9).contains(&b), "{b}");
    }

    #[test]
    fn a_gpu_gets_what_the_utilization_leaves_after_weights_and_workspace() {
        let m = mistral();
        let per_block = kv_bytes_per_block(&m, &gpu_cfg(128).placement);
        assert_eq!(per_block, 2 << 20, "32 layers x 8 kv heads x 128 x K,V x bf16 x 16 positions");
        // An 80 GB card with 0.5 GB in use (the CUDA context).
        let mem = DeviceMemory { free: 80 * GB - GB / 2, total: 80 * GB };
        let blocks = kv_blocks(&m, &gpu_cfg(128), Some(mem)).unwrap();
        let kv = (blocks * per_block) as f64 / GB as f64;
        // 72 GiB allowed - 0.5 in use - 13.5 weights - ~1.4 workspace: about 56.5 GiB.
        assert!((55.0..58.0).contains(&kv), "{kv} GiB");
        // Far more than the host default of two full contexts (8 GiB for 32k tokens).
        assert!(blocks > 6 * 2 * m.context_length / KV_BLOCK_SIZE);
        // A lower utilization leaves less, in proportion to the card.
        let half = EngineConfig { gpu_memory_utilization: 0.5, ..gpu_cfg(128) };
        let fewer = kv_blocks(&m, &half, Some(mem)).unwrap();
        let diff = ((blocks - fewer) * per_block) as f64 / GB as f64;
        assert!((31.5..32.5).contains(&diff), "{diff} GiB = 0.4 of 80 GiB");
    }

    #[test]
    fn never_more_than_max_seqs_full_contexts() {
        let m = ModelConfig { context_length: 4096, ..mistral() };
        let mem = DeviceMemory { free: 140 * GB, total: 141 * GB };
        assert_eq!(kv_blocks(&m, &gpu_cfg(2), Some(mem)).unwrap(), 2 * 4096 / KV_BLOCK_SIZE);
    }

    #[test]
    fn too_little_memory_is_a_load_error_naming_the_flags() {
        // 18 GiB allowed - 1 in use - 13.5 weights - 1.3 workspace: 2.2 GiB, under the 4 GiB
        // of a 32k context.
        let mem = DeviceMemory { free: 19 * GB, total: 20 * GB };
        let err = kv_blocks(&mistral(), &gpu_cfg(128), Some(mem)).unwrap_err().to_string();
        for needle in ["--ctx-size", "--gpu-memory-utilization", "32768 tokens", "20.0 GiB"] {
            assert!(err.contains(needle), "{needle}: {err}");
        }
        // A shorter context fits.
        let short = EngineConfig { ctx_size: Some(4096), ..gpu_cfg(128) };
        assert!(kv_blocks(&mistral(), &short, Some(mem)).unwrap() >= 4096 / KV_BLOCK_SIZE);
        let bad = EngineConfig { gpu_memory_utilization: 1.5, ..gpu_cfg(128) };
        let err = kv_blocks(&mistral(), &bad, Some(mem)).unwrap_err().to_string();
        assert!(err.contains("--gpu-memory-utilization 1.5"), "{err}");
    }

    #[test]
    fn kv_cache_mb_wins_and_the_host_keeps_two_full_contexts() {
        let m = mistral();
        let mem = DeviceMemory { free: 80 * GB, total: 80 * GB };
        let fixed = EngineConfig { kv_cache_mb: Some(8192), ..gpu_cfg(128) };
        assert_eq!(kv_blocks(&m, &fixed, Some(mem)).unwrap(), 4096);
        let host = EngineConfig::new("unused");
        assert_eq!(kv_blocks(&m, &host, None).unwrap(), 2 * 32768 / KV_BLOCK_SIZE);
        // A device whose memory is unknown (the CPU standing in for one) keeps the host rule.
        assert_eq!(kv_blocks(&m, &gpu_cfg(128), None).unwrap(), 2 * 32768 / KV_BLOCK_SIZE);
    }
}
