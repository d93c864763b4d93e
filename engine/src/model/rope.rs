//! The rotary-embedding tables: cos/sin of every (position, frequency) pair up to the KV-cache
//! length, computed once at load from the GGUF's RoPE parameters.

use candle_core::{Device, Tensor};

use super::config::{ModelConfig, RopeScaling};
use crate::EngineError;

/// `cos`/`sin` tables of shape `[positions, rope_dim / 2]`.
pub(crate) struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

/// Angle of frequency `i` at position `p`, as llama.cpp computes it:
/// `p * scale * theta^(-2i/d) / freq_factor[i]`, with `scale = 1/factor` for linear scaling
/// and `freq_factors` from `rope_freqs.weight` (llama3-style long-context scaling) when present.
/// Computed in f64 so that positions near 8k keep full f32 precision after the cast.
pub(crate) fn build(
    cfg: &ModelConfig,
    positions: usize,
    freq_factors: Option<&[f32]>,
    device: &Device,
) -> Result<RopeTables, EngineError> {
    let half = cfg.rope_dim / 2;
    if let Some(ff) = freq_factors {
        if ff.len() != half {
            return Err(EngineError::Load(format!(
                "rope_freqs.weight has {} entries, expected {half}",
                ff.len()
            )));
        }
        if ff
            .iter()
            .any(|f| f.is_nan() || *f <= 0.0 || f.is_infinite())
        {
            return Err(EngineError::Load(
                "rope_freqs.weight has a non-positive entry".into(),
            ));
        }
    }
    let scale = match cfg.rope_scaling {
        RopeScaling::None => 1.0,
        RopeScaling::Linear { factor } => 1.0 / factor as f64,
    };
    let inv_freq: Vec<f64> = (0..half)
        .map(|i| {
            let f = (cfg.rope_theta as f64).powf(-2.0 * i as f64 / cfg.rope_dim as f64) * scale;
            match freq_factors {
                Some(ff) => f / ff[i] as f64,
                None => f,
            }
        })
        .collect();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for p in 0..positions {
        for f in &inv_freq {
            let a = p as f64 * f;
            cos.push(a.cos() as f32);
            sin.push(a.sin() as f32);
        }
    }
    Ok(RopeTables {
        cos: Tensor::from_vec(cos, (positions, half), device)?,
        sin: Tensor::from_vec(sin, (positions, half), device)?,
    })
}
