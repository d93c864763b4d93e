//! The device placement (the code path CUDA runs: dense weights in one dtype, candle ops, the
//! paged KV cache as device tensors) run on the CPU, against the host placement (our kernels):
//! the tiny Hugging Face llama / mistral (sliding window) / qwen2 (biases, tied embeddings)
//! models and SmolLM2's GGUF give the same logits within float tolerance, alone and packed in
//! a batch with other sequences at other positions; greedy ids chosen "on the device" equal the
//! argmax of the logits; the engine serves the same greedy completion on both placements; random
//! presets load with the weight and KV byte counts the benchmark's roofline uses.

#[path = "model_common/mod.rs"]
mod model_common;
#[path = "support/tiny_hf.rs"]
mod tiny_hf;

use ai_sandbox_engine::hf::HfModelFiles;
use ai_sandbox_engine::model::{LoadOptions, Model, ModelConfig, Placement, SeqInput, KV_BLOCK_SIZE};
use ai_sandbox_engine::{Engine, EngineConfig, GenEvent, GenerateRequest, SamplingParams};
use candle_core::{DType, Device};
use model_common::{argmax, max_abs_diff, smollm2_path};
use tiny_hf::{write_tiny_model, Arch, TempDir};

fn cpu_tensor(dtype: DType) -> Placement {
    Placement::Device { device: Device::Cpu, dtype }
}

fn load_hf(dir: &std::path::Path, placement: Placement) -> Model {
    let files = HfModelFiles::from_dir(dir).expect("files");
    let (config, weights) = files.open_model().expect("open model");
    let options = LoadOptions { placement, ..LoadOptions::default() };
    Model::load_safetensors(&weights, config, Some(128), &options).expect("load model")
}

/// Three sequences at different positions (one crossing the sliding window, one with a
/// scattered block table) run packed in one batch, after their prefixes were run alone.
fn packed_logits(model: &mut Model, vocab: usize) -> Vec<Vec<f32>> {
    let tok = |n: usize, seed: usize| -> Vec<u32> { (0..n).map(|i| ((i * 7 + seed * 13) % vocab) as u32).collect() };
    let (a, b, c) = (tok(40, 1), tok(9, 2), tok(23, 3));
    let tables: [Vec<u32>; 3] = [vec![0, 1, 2, 3], vec![7, 4], vec![6, 5]];
    // Prefixes first, each in its own forward.
    model.forward_batch(&[SeqInput { tokens: &a[..37], pos: 0, blocks: &tables[0], logits: false }]).unwrap();
    model.forward_batch(&[SeqInput { tokens: &b[..1], pos: 0, blocks: &tables[1], logits: false }]).unwrap();
    // Then one packed step: a decode, a prefill chunk, a whole prompt.
    model
        .forward_batch(&[
            SeqInput { tokens: &a[37..38], pos: 37, blocks: &tables[0], logits: true },
            SeqInput { tokens: &b[1..], pos: 1, blocks: &tables[1], logits: true },
            SeqInput { tokens: &c, pos: 0, blocks: &tables[2], logits: true },
        ])
        .unwrap()
}

#[test]
fn device_placement_on_the_cpu_matches_the_host_kernels_for_every_tiny_architecture() {
    for (i, arch) in Arch::ALL.into_iter().enumerate() {
        let tmp = TempDir::new(&format!("device-{}", arch.model_type()));
        let m = write_tiny_model(&tmp.0, arch, 300 + i as u64);
        let mut host = load_hf(&tmp.0, Placement::host_f32());
        let mut dev = load_hf(&tmp.0, cpu_tensor(DType::F32));
        let (h, d) = (packed_logits(&mut host, m.vocab_size), packed_logits(&mut dev, m.vocab_size));
        for (row, (h, d)) in h.iter().zip(&d).enumerate() {
            let diff = max_abs_diff(h, d);
            assert!(diff < 1e-4, "{arch:?} row {row}: host vs device f32 logits differ by {diff}");
        }
        // Greedy on the device = argmax of the logits (same model, same state).
        let mut dev2 = load_hf(&tmp.0, cpu_tensor(DType::F32));
        let prompt: Vec<u32> = (0..20).map(|i| (i * 5 % m.vocab_size) as u32).collect();
        let blocks: Vec<u32> = (0..8).collect();
        let logits = dev.forward_batch(&[SeqInput { tokens: &prompt, pos: 0, blocks: &blocks, logits: true }]).unwrap();
        let ids = dev2.forward_batch_greedy(&[SeqInput { tokens: &prompt, pos: 0, blocks: &blocks, logits: true }]).unwrap();
        assert_eq!(ids, vec![argmax(&logits[0]) as u32], "{arch:?}");

        // bf16 weights and cache: the same answers within bf16 rounding (8 bits of mantissa).
        let mut bf = load_hf(&tmp.0, cpu_tensor(DType::BF16));
        let b = packed_logits(&mut bf, m.vocab_size);
        for (row, (h, b)) in h.iter().zip(&b).enumerate() {
            let scale = h.iter().fold(0f32, |a, x| a.max(x.abs()));
            let diff = max_abs_diff(h, b);
            assert!(diff < 0.05 * scale.max(1.0), "{arch:?} row {row}: bf16 logits off by {diff} (scale {scale})");
        }
    }
}


#[test]
fn smollm2_gguf_on_the_device_path_matches_the_host_kernels() {
    let mut gguf = ai_sandbox_engine::gguf::GgufFile::open(&smollm2_path()).expect("open SmolLM2 (scripts/fetch-model)");
    let host_options = LoadOptions { placement: Placement::host_f32(), ..LoadOptions::default() };
    let mut host = Model::load_with(&mut gguf, Some(256), &host_options).expect("host");
    let options = LoadOptions { placement: cpu_tensor(DType::F32), ..LoadOptions::default() };
    let mut dev = Model::load_with(&mut gguf, Some(256), &options).expect("device");
    let vocab = host.config().vocab_size;
    let (h, d) = (packed_logits(&mut host, vocab), packed_logits(&mut dev, vocab));
    for (row, (h, d)) in h.iter().zip(&d).enumerate() {
        // The host path quantizes activations to 8 bits for its Q4_1/Q8_0 kernels (as llama.cpp
        // does); the device path multiplies the dequantized f32 weights by f32 activations.
        let scale = h.iter().fold(0f32, |a, x| a.max(x.abs()));
        let diff = max_abs_diff(h, d);
        assert!(diff < 0.05 * scale, "row {row}: logits differ by {diff} (largest {scale})");
        assert_eq!(argmax(h), argmax(d), "row {row}: different greedy token");
    }
}

#[test]
fn the_engine_serves_the_same_greedy_completion_on_both_placements() {
    let tmp = TempDir::new("device-engine");
    let m = write_tiny_model(&tmp.0, Arch::Mistral, 77);
    let run = |placement: Placement| -> Vec<u32> {
        let cfg = EngineConfig { threads: Some(1), ctx_size: Some(128), placement, ..EngineConfig::new(&tmp.0) };
        let engine = Engine::load(cfg).expect("engine");
        let prompt: Vec<u32> = (0..30).map(|i| (i * 11 % m.vocab_size) as u32).collect();
        let req = GenerateRequest {
            prompt,
            sampling: SamplingParams { temperature: 0.0, ..SamplingParams::default() },
            stop: Vec::new(),
            max_tokens: 24,
            logprobs: Some(0),
        };
        let mut rx = engine.submit(req).expect("submit");
        let mut ids = Vec::new();
        while let Some(ev) = rx.blocking_recv() {
            match ev {
                GenEvent::Delta { logprobs, .. } => ids.extend(logprobs.iter().map(|l| l.token_id)),
                GenEvent::Done { .. } => return ids,
                GenEvent::Error(e) => panic!("{e}"),
            }
        }
        panic!("no Done");
    };
    let host = run(Placement::host_f32());
    assert!(!host.is_empty());
    assert_eq!(run(cpu_tensor(DType::F32)), host);
}

#[test]
fn random_presets_report_the_bytes_a_step_reads() {
    let config = ModelConfig::preset("tiny").unwrap();
    let c = config.clone();
    let options = LoadOptions { placement: cpu_tensor(DType::BF16), kv_blocks: Some(64), ..LoadOptions::default() };
    let mut model = Model::random(config, Some(256), 7, &options).expect("random tiny");
    let (h, kv, f) = (c.hidden_size, c.n_kv_heads * c.head_dim, c.ffn_size);
    let params = 2 * c.vocab_size * h + c.n_layers * (2 * h * h + 2 * h * kv + 3 * h * f + 2 * h) + h;
    assert_eq!(model.weight_bytes(), 2 * params);
    assert_eq!(model.kv_bytes_per_token(), 2 * c.n_layers * kv * 2);
    assert_eq!(model.kv_blocks(), 64);
    let prompt: Vec<u32> = (0..40).collect();
    let blocks: Vec<u32> = (0..(40 / KV_BLOCK_SIZE as u32 + 1)).collect();
    let ids = model.forward_batch_greedy(&[SeqInput { tokens: &prompt, pos: 0, blocks: &blocks, logits: true }]).unwrap();
    assert_eq!(ids.len(), 1);
    assert!((ids[0] as usize) < c.vocab_size);
    model.synchronize().unwrap();
}
