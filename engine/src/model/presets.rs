//! Named model shapes for random-weight runs (`Model::random`, `ai-sandbox-bench
//! --random-weights`): the published configs of the models we deploy, so that a benchmark on a
//! machine with no download reads and multiplies exactly as many bytes as the real model.

use super::config::{ModelConfig, RopeScaling, RopeStyle};

/// The names [`ModelConfig::preset`] knows.
const NAMES: &[&str] = &["mistral-7b", "llama-8b", "qwen2-7b", "tiny"];

impl ModelConfig {
    /// The shape of a known model: `mistral-7b` (Mistral-7B-Instruct-v0.3's config.json),
    /// `llama-8b` (Llama-3-8B), `qwen2-7b` (Qwen2-7B), `tiny` (a small llama for CPU tests).
    pub fn preset(name: &str) -> Option<ModelConfig> {
        let base = |arch: &str, vocab, hidden, layers, heads, kv_heads, ffn, ctx, theta: f32| ModelConfig {
            arch: arch.to_string(),
            name: Some(format!("random {name}")),
            vocab_size: vocab,
            hidden_size: hidden,
            n_layers: layers,
            n_heads: heads,
            n_kv_heads: kv_heads,
            head_dim: hidden / heads,
            ffn_size: ffn,
            context_length: ctx,
            rope_theta: theta,
            rms_eps: 1e-5,
            rope_dim: hidden / heads,
            rope_style: RopeStyle::Neox,
            rope_scaling: RopeScaling::None,
            sliding_window: None,
        };
        Some(match name {
            "mistral-7b" => base("mistral", 32768, 4096, 32, 32, 8, 14336, 32768, 1e6),
            "llama-8b" => base("llama", 128256, 4096, 32, 32, 8, 14336, 8192, 5e5),
            "qwen2-7b" => ModelConfig {
                rms_eps: 1e-6,
                ..base("qwen2", 152064, 3584, 28, 28, 4, 18944, 32768, 1e6)
            },
            "tiny" => base("llama", 512, 256, 2, 4, 2, 512, 1024, 1e4),
            _ => return None,
        })
    }

    /// Every name [`ModelConfig::preset`] accepts.
    pub fn preset_names() -> &'static [&'static str] {
        NAMES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_published_parameter_counts() {
        // Parameters: embeddings + output (untied) + per layer (q, k, v, o, gate, up, down, norms).
        let params = |c: &ModelConfig| {
            let (h, kv) = (c.hidden_size, c.n_kv_heads * c.head_dim);
            let layer = h * h * 2 + h * kv * 2 + 3 * h * c.ffn_size + 2 * h;
            2 * c.vocab_size * h + c.n_layers * layer + h
        };
        let billions = |n: &str| params(&ModelConfig::preset(n).unwrap()) as f64 / 1e9;
        assert!((billions("mistral-7b") - 7.25).abs() < 0.01, "{}", billions("mistral-7b"));
        assert!((billions("llama-8b") - 8.03).abs() < 0.01, "{}", billions("llama-8b"));
        for n in ModelConfig::preset_names() {
            let c = ModelConfig::preset(n).unwrap();
            assert_eq!(c.n_heads % c.n_kv_heads, 0, "{n}");
            assert_eq!(c.head_dim * c.n_heads, c.hidden_size, "{n}");
        }
        assert!(ModelConfig::preset("gpt-5").is_none());
    }
}
