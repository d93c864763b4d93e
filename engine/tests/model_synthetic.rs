//! Tiny random Llama GGUFs written with candle's GGUF writer: every weight type we load gives
//! (nearly) the logits of the same model stored in F32; tied and untied output agree; bad
//! inputs and unsupported metadata are errors, not panics.

mod model_common;

use ai_sandbox_engine::gguf::GgufFile;
use ai_sandbox_engine::model::{Model, RopeScaling, RopeStyle};
use ai_sandbox_engine::EngineError;
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use model_common::*;

const IDS: [u32; 7] = [3, 17, 200, 5, 99, 128, 255];

fn load(path: &std::path::Path, ctx: Option<usize>) -> Result<Model, EngineError> {
    Model::load(&mut GgufFile::open(path)?, ctx)
}

/// Runs IDS as a 4-token prompt plus 3 decode steps; returns every step's logits.
fn run(m: &mut Model) -> Vec<Vec<f32>> {
    let mut out = vec![m.forward(&IDS[..4], 0).unwrap()];
    for (i, &t) in IDS.iter().enumerate().skip(4) {
        out.push(m.forward(&[t], i).unwrap());
    }
    out
}

#[test]
fn every_weight_type_matches_its_f32_dequantization() {
    let dir = temp_dir("dtypes");
    let spec = TinySpec::llama();
    let weights = tiny_weights(&spec, 11);
    let md = tiny_metadata(&spec);
    use GgmlDType::*;
    // (type, max |diff| allowed relative to the largest logit). Float types are dequantized at
    // load and multiply in f32: exact up to rounding. Quantized types multiply against 8-bit
    // quantized activations (Q8_0/Q8_1 for the 32-blocks, Q8_K for K-quants), as llama.cpp does;
    // on this 2-layer model that moves logits by up to ~2-4% of their range (measured).
    let cases = [
        (F32, 1e-5),
        (F16, 1e-5),
        (BF16, 1e-5),
        (Q4_0, 0.06),
        (Q4_1, 0.06),
        (Q5_0, 0.06),
        (Q5_1, 0.06),
        (Q8_0, 0.06),
        (Q2K, 0.06),
        (Q3K, 0.06),
        (Q4K, 0.06),
        (Q5K, 0.06),
        (Q6K, 0.06),
    ];
    for (dtype, rel_tol) in cases {
        let qpath = dir.join(format!("{dtype:?}.gguf"));
        write_gguf(&qpath, &md, &weights, dtype);
        // The same model in F32, from the quantized tensors as stored.
        let mut g = GgufFile::open(&qpath).unwrap();
        let names: Vec<String> = g.content().tensor_infos.keys().cloned().collect();
        let f32_tensors: Vec<(String, QTensor)> = names
            .iter()
            .map(|n| {
                let t = g
                    .tensor(n, &Device::Cpu)
                    .unwrap()
                    .dequantize(&Device::Cpu)
                    .unwrap();
                (n.clone(), QTensor::quantize(&t, F32).unwrap())
            })
            .collect();
        let fpath = dir.join(format!("{dtype:?}-as-f32.gguf"));
        write_q(&fpath, &md, &f32_tensors);

        let quantized = run(&mut load(&qpath, None).unwrap());
        let float = run(&mut load(&fpath, None).unwrap());
        for (step, (q, f)) in quantized.iter().zip(&float).enumerate() {
            let scale = max_abs(f);
            let d = max_abs_diff(q, f);
            eprintln!("{dtype:?} step {step}: max |diff| {d:.5} (|logit| up to {scale:.2})");
            assert!(scale > 0.5, "degenerate test model: logits are all ~0");
            assert!(
                d <= rel_tol * scale,
                "{dtype:?} step {step}: max |diff| {d} > {rel_tol} * {scale}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tied_output_equals_an_explicit_copy_of_the_embeddings() {
    let dir = temp_dir("tied");
    let spec = TinySpec {
        tied: true,
        ..TinySpec::llama()
    };
    // Q8_0, and the K-quants whose token tables llama.cpp writes (Q6_K in Q4_K_M files): where
    // the panel kernels run, the tied table is read back from the output matrix's panels.
    let mut tied = Vec::new();
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q6K, GgmlDType::Q4K] {
        let mut weights = tiny_weights(&spec, 5);
        assert!(!weights.iter().any(|(n, _)| n == "output.weight"));
        let tied_path = dir.join(format!("tied-{dtype:?}.gguf"));
        write_gguf(&tied_path, &tiny_metadata(&spec), &weights, dtype);
        let embd = weights.iter().find(|(n, _)| n == "token_embd.weight").unwrap().1.clone();
        weights.push(("output.weight".into(), embd));
        let untied_path = dir.join(format!("untied-{dtype:?}.gguf"));
        write_gguf(&untied_path, &tiny_metadata(&spec), &weights, dtype);
        let t = run(&mut load(&tied_path, None).unwrap());
        let untied = run(&mut load(&untied_path, None).unwrap());
        assert_eq!(t, untied, "{dtype:?}");
        tied.push(t);
    }

    // And a genuinely different output matrix gives different logits (the tensor is used).
    let spec = TinySpec {
        tied: false,
        ..TinySpec::llama()
    };
    let other_path = dir.join("other.gguf");
    write_gguf(
        &other_path,
        &tiny_metadata(&spec),
        &tiny_weights(&spec, 5),
        GgmlDType::Q8_0,
    );
    let other = run(&mut load(&other_path, None).unwrap());
    assert!(max_abs_diff(&other[0], &tied[0][0]) > 0.1);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tiny_file(tag: &str, spec: &TinySpec, extra_md: &[(String, Value)]) -> std::path::PathBuf {
    let dir = temp_dir(tag);
    let path = dir.join("m.gguf");
    let mut md = tiny_metadata(spec);
    for (k, v) in extra_md {
        md.retain(|(key, _)| key != k);
        md.push((k.clone(), v.clone()));
    }
    write_gguf(&path, &md, &tiny_weights(spec, 3), GgmlDType::F32);
    path
}

#[test]
fn config_comes_from_the_metadata() {
    let spec = TinySpec {
        arch: "qwen2",
        biases: true,
        ..TinySpec::llama()
    };
    let extra = [
        (
            "qwen2.rope.scaling.type".to_string(),
            Value::String("linear".into()),
        ),
        ("qwen2.rope.scaling.factor".to_string(), Value::F32(2.0)),
        ("qwen2.rope.freq_base".to_string(), Value::F32(1e6)),
    ];
    let m = load(&tiny_file("config", &spec, &extra), Some(16)).unwrap();
    let c = m.config();
    assert_eq!(
        (c.arch.as_str(), c.name.as_deref()),
        ("qwen2", Some("tiny-qwen2"))
    );
    assert_eq!(
        (c.vocab_size, c.hidden_size, c.n_layers, c.ffn_size),
        (256, 256, 2, 512)
    );
    assert_eq!(
        (c.n_heads, c.n_kv_heads, c.head_dim, c.context_length),
        (4, 2, 64, 64)
    );
    assert_eq!(c.rope_style, RopeStyle::Neox);
    assert_eq!(c.rope_scaling, RopeScaling::Linear { factor: 2.0 });
    assert_eq!(c.rope_theta, 1e6);
    assert_eq!(m.ctx_size(), 16);
    let m = load(&tiny_file("config-default", &TinySpec::llama(), &[]), None).unwrap();
    assert_eq!(m.ctx_size(), 64);
    assert_eq!(m.config().rope_style, RopeStyle::Interleaved);
}

#[test]
fn bad_calls_are_errors_and_leave_the_cache_usable() {
    let path = tiny_file("errors", &TinySpec::llama(), &[]);
    let mut m = load(&path, Some(8)).unwrap();
    let good = m.forward(&[1, 2, 3], 0).unwrap();
    assert!(matches!(
        m.forward(&[1; 6], 3),
        Err(EngineError::ContextLength { .. })
    ));
    assert!(matches!(
        m.forward(&[1], 8),
        Err(EngineError::ContextLength { .. })
    ));
    assert!(matches!(
        m.forward(&[1], usize::MAX),
        Err(EngineError::ContextLength { .. })
    ));
    assert!(matches!(
        m.forward(&[256], 0),
        Err(EngineError::InvalidInput { .. })
    ));
    assert!(matches!(
        m.forward(&[1, u32::MAX], 0),
        Err(EngineError::InvalidInput { .. })
    ));
    assert!(matches!(
        m.forward(&[], 0),
        Err(EngineError::InvalidInput { .. })
    ));
    // Position 5 was never filled: using it would attend to garbage.
    assert!(matches!(m.forward(&[1], 5), Err(EngineError::Internal(_))));
    // The rejected calls touched nothing: re-running the prefix gives the same logits, and the
    // cache still extends to exactly ctx_size.
    assert!(max_abs_diff(&m.forward(&[3], 2).unwrap(), &good) < 1e-4);
    m.forward(&[4, 5, 6, 7, 8], 3).unwrap();
}

#[test]
fn ctx_size_larger_than_the_model_context_names_the_flag() {
    let path = tiny_file("ctx", &TinySpec::llama(), &[]);
    match load(&path, Some(65)) {
        Err(e) => assert!(
            e.to_string().contains("--ctx-size 65") && e.to_string().contains("64"),
            "{e}"
        ),
        Ok(_) => panic!("ctx 65 > context 64 accepted"),
    }
    assert!(load(&path, Some(0)).is_err());
    assert_eq!(load(&path, Some(64)).unwrap().ctx_size(), 64);
}

#[test]
fn unsupported_models_are_refused_clearly() {
    let spec = TinySpec::llama();
    let gpt2 = [(
        "general.architecture".to_string(),
        Value::String("gpt2".into()),
    )];
    match load(&tiny_file("arch", &spec, &gpt2), None) {
        Err(EngineError::Unsupported(m)) => {
            assert!(m.contains("gpt2") && m.contains("llama"), "{m}")
        }
        other => panic!("expected Unsupported, got {:?}", other.err()),
    }
    let yarn = [
        (
            "llama.rope.scaling.type".to_string(),
            Value::String("yarn".into()),
        ),
        ("llama.rope.scaling.factor".to_string(), Value::F32(4.0)),
    ];
    match load(&tiny_file("yarn", &spec, &yarn), None) {
        Err(EngineError::Unsupported(m)) => assert!(m.contains("yarn"), "{m}"),
        other => panic!("expected Unsupported, got {:?}", other.err()),
    }
    // A vocabulary larger than the embedding table can't be served.
    let big_vocab = [("llama.vocab_size".to_string(), Value::U32(300))];
    assert!(matches!(
        load(&tiny_file("vocab", &spec, &big_vocab), None),
        Err(EngineError::Load(_))
    ));
    // Metadata that disagrees with the tensors is a load error naming the tensor.
    let wrong_ffn = [("llama.feed_forward_length".to_string(), Value::U32(384))];
    match load(&tiny_file("shape", &spec, &wrong_ffn), None) {
        Err(EngineError::Load(m)) => assert!(m.contains("ffn_gate"), "{m}"),
        other => panic!("expected Load, got {:?}", other.err()),
    }
}

#[test]
fn rope_freqs_tensor_changes_the_angles() {
    // llama3-style scaling ships per-frequency divisors in rope_freqs.weight; factors of 1 must
    // be a no-op and other factors must change the output.
    let spec = TinySpec::llama();
    let dir = temp_dir("rope-freqs");
    let md = tiny_metadata(&spec);
    let base = tiny_weights(&spec, 9);
    let with = |factors: Vec<f32>, name: &str| {
        let mut w = base.clone();
        w.push((
            "rope_freqs.weight".into(),
            Tensor::from_vec(factors, 32, &Device::Cpu).unwrap(),
        ));
        let p = dir.join(name);
        write_gguf(&p, &md, &w, GgmlDType::F32);
        run(&mut load(&p, None).unwrap())
    };
    let plain_path = dir.join("plain.gguf");
    write_gguf(&plain_path, &md, &base, GgmlDType::F32);
    let plain = run(&mut load(&plain_path, None).unwrap());
    assert_eq!(with(vec![1.0; 32], "ones.gguf"), plain);
    let scaled = with(
        (0..32).map(|i| 1.0 + i as f32 / 4.0).collect(),
        "scaled.gguf",
    );
    assert!(max_abs_diff(&scaled[3], &plain[3]) > 1e-3);
    let _ = std::fs::remove_dir_all(&dir);
}
