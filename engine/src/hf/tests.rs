//! Unit tests of the HF pieces that need no model folder: `--model` parsing, name mapping,
//! config.json validation, tokenizer/generation config forms, shard names, dtype conversion.
//! Whole tiny models are tested in tests/hf_folder.rs and tests/hf_download.rs.

use std::collections::HashMap;

use candle_core::DType;
use half::{bf16, f16};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::json;

use super::files::shard_names_from_json;
use super::*;
use crate::model::{RopeScaling, RopeStyle};
use crate::EngineError;

#[test]
fn hub_ids_are_validated() {
    let ok = |s: &str| match ModelSource::parse(s) {
        Ok(ModelSource::Hub(r)) => (r.repo_id, r.revision),
        other => panic!("{s}: {other:?}"),
    };
    assert_eq!(ok("hf:mistralai/Mistral-7B-Instruct-v0.3"), ("mistralai/Mistral-7B-Instruct-v0.3".into(), None));
    assert_eq!(ok("hf:Qwen/Qwen2.5-0.5B-Instruct@main"), ("Qwen/Qwen2.5-0.5B-Instruct".into(), Some("main".into())));
    assert_eq!(ok("hf:a/b@refs/pr/1"), ("a/b".into(), Some("refs/pr/1".into())));
    for bad in ["hf:", "hf:noslash", "hf:a/b/c", "hf:/b", "hf:a/", "hf:a/b@", "hf:a/-b", "hf:a/b.", "hf:a/b..c",
        "hf:a/b c", "hf:a/b@x y", "hf:a/b@../x", "hf:a/b@/x", "hf:ä/b"]
    {
        let err = ModelSource::parse(bad).unwrap_err();
        assert!(
            matches!(&err, EngineError::InvalidInput { message, .. } if message.contains("--model") && message.contains(bad)),
            "{bad}: {err}"
        );
    }
    assert_eq!(HubRepo::parse("o/n@v1").unwrap().display(), "hf:o/n@v1");
}

#[test]
fn local_paths() {
    let dir = std::env::temp_dir().join(format!("ai-sandbox-hf-src-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let gguf = dir.join("m.gguf");
    std::fs::write(&gguf, b"GGUF").unwrap();
    assert_eq!(ModelSource::parse(gguf.to_str().unwrap()).unwrap(), ModelSource::Gguf(gguf.clone()));
    let err = ModelSource::parse(dir.to_str().unwrap()).unwrap_err();
    assert!(matches!(&err, EngineError::Load(m) if m.contains("no config.json")), "{err}");
    std::fs::write(dir.join("config.json"), b"{}").unwrap();
    assert_eq!(ModelSource::parse(dir.to_str().unwrap()).unwrap(), ModelSource::Folder(dir.clone()));
    let missing = dir.join("absent.gguf");
    let err = ModelSource::parse(missing.to_str().unwrap()).unwrap_err();
    assert!(matches!(&err, EngineError::Load(m) if m.contains("no such file") && !m.contains("hf:")), "{err}");
    assert!(matches!(ModelSource::parse("  "), Err(EngineError::InvalidInput { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gguf_names_map_to_hf_names() {
    let cases = [
        ("token_embd.weight", Some("model.embed_tokens.weight")),
        ("output_norm.weight", Some("model.norm.weight")),
        ("output.weight", Some("lm_head.weight")),
        ("blk.0.attn_norm.weight", Some("model.layers.0.input_layernorm.weight")),
        ("blk.11.ffn_norm.weight", Some("model.layers.11.post_attention_layernorm.weight")),
        ("blk.3.attn_q.bias", Some("model.layers.3.self_attn.q_proj.bias")),
        ("blk.3.attn_v.weight", Some("model.layers.3.self_attn.v_proj.weight")),
        ("blk.3.attn_output.weight", Some("model.layers.3.self_attn.o_proj.weight")),
        ("blk.3.ffn_gate.weight", Some("model.layers.3.mlp.gate_proj.weight")),
        ("blk.3.ffn_down.weight", Some("model.layers.3.mlp.down_proj.weight")),
        ("blk.3.attn_output.bias", None),
        ("blk.x.attn_q.weight", None),
        ("blk.01.attn_q.weight", None),
        ("blk..attn_q.weight", None),
        ("rope_freqs.weight", None),
    ];
    for (g, h) in cases {
        assert_eq!(hf_tensor_name(g).as_deref(), h, "{g}");
    }
}

fn base_config() -> serde_json::Value {
    json!({
        "model_type": "mistral", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 8, "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "max_position_embeddings": 4096,
        "sliding_window": null, "hidden_act": "silu"
    })
}

fn convert(v: &serde_json::Value) -> Result<crate::model::ModelConfig, EngineError> {
    let cfg = HfConfig::from_json(&v.to_string()).map_err(EngineError::Load)?;
    cfg.model_config(100)
}

#[test]
fn config_json_converts_and_refuses_by_name() {
    let mc = convert(&base_config()).unwrap();
    assert_eq!((mc.head_dim, mc.n_kv_heads, mc.rope_theta, mc.sliding_window), (8, 2, 1e6, None));
    assert_eq!((mc.rope_style, mc.rope_scaling, mc.context_length), (RopeStyle::Neox, RopeScaling::None, 4096));

    let with = |k: &str, v: serde_json::Value| {
        let mut c = base_config();
        c[k] = v;
        c
    };
    assert_eq!(convert(&with("sliding_window", json!(4096))).unwrap().sliding_window, Some(4096));
    assert_eq!(convert(&with("head_dim", json!(16))).unwrap().head_dim, 16);
    assert_eq!(convert(&with("num_key_value_heads", serde_json::Value::Null)).unwrap().n_kv_heads, 8);
    let linear = convert(&with("rope_scaling", json!({"type": "linear", "factor": 4.0}))).unwrap();
    assert_eq!(linear.rope_scaling, RopeScaling::Linear { factor: 4.0 });
    // transformers v5 layout.
    let mut v5 = base_config();
    v5.as_object_mut().unwrap().remove("rope_theta");
    v5["rope_parameters"] = json!({"rope_theta": 500000.0, "rope_type": "default"});
    assert_eq!(convert(&v5).unwrap().rope_theta, 500000.0);

    // qwen2: the window only with use_sliding_window, and only when it covers all layers or none.
    let mut q = with("model_type", json!("qwen2"));
    q["sliding_window"] = json!(32);
    assert_eq!(convert(&q).unwrap().sliding_window, None);
    q["use_sliding_window"] = json!(true);
    q["max_window_layers"] = json!(0);
    assert_eq!(convert(&q).unwrap().sliding_window, Some(32));
    q["max_window_layers"] = json!(2);
    assert_eq!(convert(&q).unwrap().sliding_window, None);
    q["max_window_layers"] = json!(1);
    assert!(matches!(convert(&q), Err(EngineError::Unsupported(m)) if m.contains("max_window_layers")));
    // llama ignores sliding_window.
    assert_eq!(convert(&with("model_type", json!("llama"))).unwrap().rope_style, RopeStyle::Neox);

    let unsupported = [
        (with("model_type", json!("gemma")), "`gemma`"),
        (with("hidden_act", json!("gelu")), "`gelu`"),
        (with("rope_scaling", json!({"rope_type": "yarn", "factor": 4.0})), "`yarn`"),
        (with("rope_scaling", json!({"rope_type": "llama3", "factor": 8.0})), "`llama3`"),
        (with("mlp_bias", json!(true)), "mlp_bias"),
        (with("attention_bias", json!(true)), "attention_bias"),
        (with("layer_types", json!(["full_attention", "sliding_attention"])), "layer_types"),
    ];
    for (cfg, needle) in unsupported {
        let err = convert(&cfg).unwrap_err();
        assert!(matches!(&err, EngineError::Unsupported(m) if m.contains(needle)), "{needle}: {err}");
    }
    let load = [
        (with("num_key_value_heads", json!(3)), "not a multiple"),
        (with("hidden_size", json!(60)), "not a multiple"),
        (with("head_dim", json!(7)), "even"),
        (with("max_position_embeddings", json!(0)), "max_position_embeddings"),
        (with("rope_scaling", json!({"type": "linear"})), "factor"),
        (with("vocab_size", json!(99)), "embed_tokens"),
        (with("rms_norm_eps", json!(0.0)), "rms_norm_eps"),
    ];
    for (cfg, needle) in load {
        let err = convert(&cfg).unwrap_err();
        assert!(matches!(&err, EngineError::Load(m) if m.contains(needle)), "{needle}: {err}");
    }
    let mut missing = base_config();
    missing.as_object_mut().unwrap().remove("hidden_size");
    let err = convert(&missing).unwrap_err();
    assert!(err.to_string().contains("hidden_size"), "{err}");
}

#[test]
fn tokenizer_and_generation_config_forms() {
    let t = TokenizerConfig::from_value(&json!({
        "bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "add_bos_token": true,
        "chat_template": [{"name": "rag", "template": "R"}, {"name": "default", "template": "D"}],
    }))
    .unwrap();
    assert_eq!(t, TokenizerConfig {
        chat_template: Some("D".into()),
        bos_token: Some("<s>".into()),
        eos_token: Some("</s>".into()),
        add_bos_token: Some(true),
    });
    assert_eq!(TokenizerConfig::from_value(&json!({"bos_token": null})).unwrap(), TokenizerConfig::default());
    assert!(TokenizerConfig::from_value(&json!({"chat_template": [{"name": "rag", "template": "R"}]})).is_err());
    assert!(TokenizerConfig::from_value(&json!({"eos_token": 5})).is_err());

    let g = |v| GenerationConfig::from_value(&v);
    assert_eq!(g(json!({"eos_token_id": 2, "bos_token_id": 1})).unwrap(), GenerationConfig { bos_token_id: Some(1), eos_token_ids: vec![2] });
    assert_eq!(g(json!({"eos_token_id": [151645, 151643]})).unwrap().eos_token_ids, vec![151645, 151643]);
    assert_eq!(g(json!({})).unwrap(), GenerationConfig::default());
    assert!(g(json!({"eos_token_id": -1})).is_err());
    assert!(g(json!({"eos_token_id": ["x"]})).is_err());
}

#[test]
fn shard_names_stay_inside_the_folder() {
    let idx = |m: serde_json::Value| shard_names_from_json(&json!({"weight_map": m}).to_string());
    assert_eq!(
        idx(json!({"a": "m-2.safetensors", "b": "m-1.safetensors", "c": "m-2.safetensors"})).unwrap(),
        vec!["m-1.safetensors", "m-2.safetensors"]
    );
    for bad in ["../x.safetensors", "/etc/x.safetensors", "sub/x.safetensors", ".hidden.safetensors", "x.bin", ""] {
        assert!(idx(json!({"a": bad})).is_err(), "{bad}");
    }
    assert!(idx(json!({})).is_err());
}

#[test]
fn safetensors_dtypes_convert_exactly() {
    let dir = std::env::temp_dir().join(format!("ai-sandbox-hf-st-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let vals = [1.5f32, -2.25, 0.0, 65504.0, 1e-3, -7.0];
    let f32b: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
    let f16b: Vec<u8> = vals.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect();
    let bf16b: Vec<u8> = vals.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect();
    let i32b: Vec<u8> = [1i32, 2].iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = vec![
        ("model.norm.weight", TensorView::new(Dtype::F32, vec![6], &f32b).unwrap()),
        ("model.layers.0.input_layernorm.weight", TensorView::new(Dtype::F16, vec![6], &f16b).unwrap()),
        ("model.layers.0.self_attn.q_proj.weight", TensorView::new(Dtype::BF16, vec![2, 3], &bf16b).unwrap()),
        ("model.layers.0.self_attn.q_proj.bias", TensorView::new(Dtype::I32, vec![2], &i32b).unwrap()),
    ];
    let path = dir.join("model.safetensors");
    safetensors::serialize_to_file(views, None::<HashMap<String, String>>, &path).unwrap();
    let w = SafetensorsWeights::open(std::slice::from_ref(&path)).unwrap();

    let read = |name: &str, shape: &[usize]| -> Vec<f32> {
        w.tensor_f32(name, shape).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    };
    assert_eq!(read("output_norm.weight", &[6]), vals);
    let from_f16: Vec<f32> = vals.iter().map(|v| f16::from_f32(*v).to_f32()).collect();
    assert_eq!(read("blk.0.attn_norm.weight", &[6]), from_f16);
    let from_bf16: Vec<f32> = vals.iter().map(|v| bf16::from_f32(*v).to_f32()).collect();
    assert_eq!(read("blk.0.attn_q.weight", &[2, 3]), from_bf16);
    // bf16 kept as bf16 (the GPU path), and f32 narrowed to bf16 by candle's rounding.
    let t = w.tensor("blk.0.attn_q.weight", &[2, 3], DType::BF16, &candle_core::Device::Cpu).unwrap();
    assert_eq!(t.dtype(), DType::BF16);
    let back: Vec<f32> = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(back, from_bf16);
    let t = w.tensor("output_norm.weight", &[6], DType::BF16, &candle_core::Device::Cpu).unwrap();
    let back: Vec<f32> = t.to_dtype(DType::F32).unwrap().to_vec1().unwrap();
    assert_eq!(back, from_bf16);

    let err = w.tensor_f32("blk.0.attn_q.bias", &[2]).unwrap_err();
    assert!(matches!(&err, EngineError::Unsupported(m) if m.contains("I32")), "{err}");
    assert!(!w.has("output.weight") && !w.has("token_embd.weight"));
    assert_eq!(w.shape("blk.0.attn_q.weight"), Some(&[2usize, 3][..]));

    // The same tensor name in two files is refused.
    let err = SafetensorsWeights::open(&[path.clone(), path.clone()]).err().unwrap();
    assert!(matches!(&err, EngineError::Load(m) if m.contains("more than one")), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
