//! Hugging Face model folders end to end on tiny random models written by the test
//! (support/tiny_hf.rs): `--model` parsing, config.json -> ModelConfig, tokenizer.json (checked
//! against the `tokenizers` pipeline that wrote it, byte-exact token bytes, special tokens, BOS/EOS),
//! the chat template, and every weight tensor read back by its GGUF name equal to what was written.

#[path = "support/tiny_hf.rs"]
mod tiny_hf;

use std::collections::BTreeSet;

use ai_sandbox_engine::hf::{HfModelFiles, ModelSource, SafetensorsWeights};
use ai_sandbox_engine::model::{RopeScaling, RopeStyle};
use ai_sandbox_engine::{ChatMessage, EngineError};
use tiny_hf::{write_tiny_model, Arch, TempDir, TinyModel};

/// The GGUF names the model loader asks for, with the HF names they must read (written out here,
/// independently of the engine's mapping).
fn gguf_to_hf() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
    ]
    .map(|(g, h)| (g.to_string(), h.to_string()))
    .to_vec();
    let parts = [
        ("attn_norm.weight", "input_layernorm.weight"),
        ("ffn_norm.weight", "post_attention_layernorm.weight"),
        ("attn_q.weight", "self_attn.q_proj.weight"),
        ("attn_k.weight", "self_attn.k_proj.weight"),
        ("attn_v.weight", "self_attn.v_proj.weight"),
        ("attn_q.bias", "self_attn.q_proj.bias"),
        ("attn_k.bias", "self_attn.k_proj.bias"),
        ("attn_v.bias", "self_attn.v_proj.bias"),
        ("attn_output.weight", "self_attn.o_proj.weight"),
        ("ffn_gate.weight", "mlp.gate_proj.weight"),
        ("ffn_up.weight", "mlp.up_proj.weight"),
        ("ffn_down.weight", "mlp.down_proj.weight"),
    ];
    for l in 0..tiny_hf::LAYERS {
        v.extend(parts.iter().map(|(g, h)| (format!("blk.{l}.{g}"), format!("model.layers.{l}.{h}"))));
    }
    v
}

fn msg(role: &str, content: &str) -> ChatMessage {
    ChatMessage { role: role.into(), content: content.into() }
}

fn check_weights(m: &TinyModel, w: &SafetensorsWeights) {
    let tied = m.arch == Arch::Qwen2;
    let mut reached = BTreeSet::new();
    for (name, hf) in gguf_to_hf() {
        assert_eq!(ai_sandbox_engine::hf::hf_tensor_name(&name).as_deref(), Some(hf.as_str()));
        let written = m.tensors.get(&hf);
        let expect_present = written.is_some() && !(tied && name == "output.weight");
        assert_eq!(w.has(&name), expect_present, "{:?} has({name})", m.arch);
        let Some(written) = written.filter(|_| expect_present) else { continue };
        reached.insert(hf.clone());
        let t = w.tensor_f32(&name, &written.shape).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, written.values, "{:?} {name} values", m.arch);
        // The wrong shape is a Load error naming both names.
        let mut bad = written.shape.clone();
        bad[0] += 1;
        let err = w.tensor_f32(&name, &bad).unwrap_err();
        assert!(matches!(&err, EngineError::Load(s) if s.contains(&name) && s.contains(&hf)), "{err}");
    }
    // Every tensor in the files is one the loader reads (the mapping misses nothing).
    let in_files: BTreeSet<String> = w.hf_names().into_iter().map(String::from).collect();
    assert_eq!(reached, in_files, "{:?}", m.arch);
    let missing = w.tensor_f32("blk.9.attn_q.weight", &[1]).unwrap_err();
    assert!(matches!(&missing, EngineError::Load(s) if s.contains("model.layers.9.self_attn.q_proj.weight")), "{missing}");
}

fn check_tokenizer(m: &TinyModel, files: &HfModelFiles) {
    let tok = files.tokenizer().expect("tokenizer");
    assert_eq!(tok.vocab_size(), m.vocab_size);
    let texts = [
        "Hello world! This is a tiny corpus for a tiny tokenizer.",
        "Unseen words: zebra quixotic 42 ∑ 😀 — tabs\tand\nnewlines  double  spaces",
        "héllo wörld, naïve café",
        "",
    ];
    for text in texts {
        let ids = tok.encode(text, false).unwrap();
        let reference = m.reference.encode(text, false).unwrap();
        assert_eq!(ids, reference.get_ids(), "{:?} encode {text:?}", m.arch);
        assert_eq!(tok.decode(&ids).unwrap(), text);
        // The streaming path: per-token bytes concatenate to the exact text.
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| tok.token_bytes(i).unwrap().to_vec()).collect();
        assert_eq!(bytes, text.as_bytes(), "{:?} token bytes {text:?}", m.arch);
    }
    // Special tokens written in the text are parsed as themselves.
    for (s, &id) in &m.special_ids {
        let ids = tok.encode(&format!("a{s}b"), false).unwrap();
        assert!(ids.contains(&id), "{:?}: {s} -> {ids:?}", m.arch);
        assert_eq!(tok.token_bytes(id).unwrap(), s.as_bytes());
        assert!(tok.is_control(id), "{s} is special");
        assert_eq!(tok.token_text(id), Some(s.as_str()));
    }
    let sid = |s: &str| m.special_ids[s];
    match m.arch {
        // Llama: no add_bos_token, so tokenizer.json's post-processor (which adds <s>) decides.
        Arch::Llama | Arch::Mistral => {
            assert_eq!(tok.bos_id(), Some(sid("<s>")));
            assert!(tok.add_bos_default());
            assert_eq!(tok.eos_ids(), &[sid("</s>")]);
            let ids = tok.encode("Hello", true).unwrap();
            assert_eq!(ids[0], sid("<s>"));
            assert_eq!(&ids[1..], m.reference.encode("Hello", false).unwrap().get_ids());
            // Already there: not doubled.
            assert_eq!(tok.encode("<s>Hello", true).unwrap(), ids);
        }
        Arch::Qwen2 => {
            assert_eq!(tok.bos_id(), None, "tokenizer_config's bos_token is null");
            assert!(!tok.add_bos_default());
            assert_eq!(tok.eos_ids(), &[sid("<|im_end|>"), sid("<|endoftext|>")]);
        }
    }

    let template = files.chat_template(&tok).expect("template");
    let conv = [msg("user", "Hi"), msg("assistant", "Hello"), msg("user", "Bye")];
    let rendered = template.render(&conv, true).unwrap();
    let expected = match m.arch {
        Arch::Llama => "<s>user: Hi</s>assistant: Hello</s>user: Bye</s>assistant: ",
        Arch::Mistral => "<s>[INST] Hi [/INST]Hello</s>[INST] Bye [/INST]",
        Arch::Qwen2 => "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n",
    };
    assert_eq!(rendered, expected, "{:?}", m.arch);
    let ids = tok.encode(&rendered, tok.add_bos_default()).unwrap();
    assert_eq!(ids, m.reference.encode(rendered.as_str(), false).unwrap().get_ids(), "{:?} template ids", m.arch);
    if m.arch == Arch::Mistral {
        let err = template.render(&[msg("assistant", "first")], false).unwrap_err();
        assert!(matches!(&err, EngineError::InvalidInput { message, .. } if message.contains("must alternate")), "{err}");
    }
}

#[test]
fn tiny_hf_models_load() {
    for (i, arch) in Arch::ALL.into_iter().enumerate() {
        let tmp = TempDir::new(&format!("hf-{}", arch.model_type()));
        let m = write_tiny_model(&tmp.0, arch, 7 + i as u64);
        let arg = tmp.0.to_str().unwrap();
        assert_eq!(ModelSource::parse(arg).unwrap(), ModelSource::Folder(tmp.0.clone()));

        let files = HfModelFiles::from_dir(&tmp.0).unwrap();
        assert_eq!(files.weights, tiny_hf::SHARDS.map(|s| tmp.0.join(s)).to_vec());
        assert_eq!(files.chat_template.is_some(), arch == Arch::Qwen2);

        let cfg = files.config().unwrap();
        assert_eq!(cfg.tie_word_embeddings(), arch == Arch::Qwen2);
        assert_eq!(cfg.qkv_bias(), arch == Arch::Qwen2);
        let w = files.open_weights().unwrap().with_tied_embeddings(cfg.tie_word_embeddings());
        let rows = w.shape("token_embd.weight").unwrap()[0];
        let mc = cfg.model_config(rows).unwrap();
        assert_eq!(mc.arch, arch.model_type());
        assert_eq!(mc.name.as_deref(), Some(format!("tiny-{}", arch.model_type()).as_str()));
        assert_eq!(mc.vocab_size, m.vocab_size);
        assert_eq!(
            (mc.hidden_size, mc.n_layers, mc.n_heads, mc.n_kv_heads, mc.head_dim, mc.ffn_size, mc.context_length),
            (tiny_hf::HIDDEN, tiny_hf::LAYERS, tiny_hf::HEADS, tiny_hf::KV_HEADS, tiny_hf::HEAD_DIM, tiny_hf::FFN, tiny_hf::MAX_POS)
        );
        assert_eq!((mc.rope_dim, mc.rope_style, mc.rope_theta, mc.rms_eps), (tiny_hf::HEAD_DIM, RopeStyle::Neox, 10000.0, 1e-6));
        let (scaling, window) = match arch {
            Arch::Llama => (RopeScaling::Linear { factor: 2.0 }, None),
            Arch::Mistral => (RopeScaling::None, Some(tiny_hf::SLIDING_WINDOW)),
            // use_sliding_window is false: the window is ignored.
            Arch::Qwen2 => (RopeScaling::None, None),
        };
        assert_eq!((mc.rope_scaling, mc.sliding_window), (scaling, window), "{arch:?}");
        assert!(cfg.model_config(rows + 1).is_err(), "vocab_size must match the embedding rows");

        check_weights(&m, &w);
        if arch == Arch::Llama {
            // Tied: lm_head.weight is ignored even when the files have one.
            let tied = files.open_weights().unwrap().with_tied_embeddings(true);
            assert!(!tied.has("output.weight") && tied.has("token_embd.weight"));
        }
        check_tokenizer(&m, &files);
    }
}

#[test]
fn broken_folders_are_refused_by_name() {
    let tmp = TempDir::new("hf-broken");
    let arg = tmp.0.to_str().unwrap().to_string();
    let err = ModelSource::parse(&arg).unwrap_err();
    assert!(matches!(&err, EngineError::Load(s) if s.contains("--model") && s.contains("config.json")), "{err}");

    write_tiny_model(&tmp.0, Arch::Llama, 1);
    std::fs::remove_file(tmp.0.join(tiny_hf::SHARDS[1])).unwrap();
    let err = HfModelFiles::from_dir(&tmp.0).unwrap_err();
    assert!(matches!(&err, EngineError::Load(s) if s.contains(tiny_hf::SHARDS[1])), "{err}");

    // A shard cut short: its header promises more bytes than the file has.
    let shard = tmp.0.join(tiny_hf::SHARDS[0]);
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 10]).unwrap();
    let err = SafetensorsWeights::open(std::slice::from_ref(&shard)).unwrap_err();
    assert!(matches!(&err, EngineError::Load(s) if s.contains("byte range")), "{err}");
    std::fs::write(&shard, b"not a safetensors file").unwrap();
    assert!(matches!(SafetensorsWeights::open(&[shard]), Err(EngineError::Load(_))));

    // An index pointing outside the folder.
    tiny_hf::write_json(
        &tmp.0.join("model.safetensors.index.json"),
        &serde_json::json!({"weight_map": {"model.norm.weight": "../escape.safetensors"}}),
    );
    let err = HfModelFiles::from_dir(&tmp.0).unwrap_err();
    assert!(matches!(&err, EngineError::Load(s) if s.contains("../escape.safetensors")), "{err}");

    let err = ModelSource::parse("no-such-org/no-such-model").unwrap_err();
    assert!(matches!(&err, EngineError::Load(s) if s.contains("hf:no-such-org/no-such-model")), "{err}");
}
