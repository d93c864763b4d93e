//! Writes tiny random-weight Hugging Face model folders (llama, mistral with a sliding window,
//! qwen2 with q/k/v biases and tied embeddings) for tests: config.json, a byte-level BPE
//! tokenizer.json trained here with the `tokenizers` crate, tokenizer_config.json with a chat
//! template, generation_config.json, and bf16 weights in two safetensors shards plus their index.
//! What was written is kept in [`TinyModel`] so tests can compare what the engine reads.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use half::bf16;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::tensor::TensorView;
use safetensors::Dtype;
use serde_json::{json, Value};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Llama,
    Mistral,
    Qwen2,
}

impl Arch {
    pub const ALL: [Arch; 3] = [Arch::Llama, Arch::Mistral, Arch::Qwen2];
    pub fn model_type(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Mistral => "mistral",
            Arch::Qwen2 => "qwen2",
        }
    }
    /// Special tokens, in id order from 0.
    pub fn specials(self) -> &'static [&'static str] {
        match self {
            Arch::Llama => &["<s>", "</s>"],
            Arch::Mistral => &["<s>", "</s>", "[INST]", "[/INST]"],
            Arch::Qwen2 => &["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        }
    }
}

pub const HIDDEN: usize = 32;
pub const HEADS: usize = 4;
pub const KV_HEADS: usize = 2;
pub const HEAD_DIM: usize = 8;
pub const FFN: usize = 64;
pub const LAYERS: usize = 2;
pub const MAX_POS: usize = 256;
pub const SLIDING_WINDOW: usize = 16;
pub const SHARDS: [&str; 2] = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];

/// A folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let p = std::env::temp_dir().join(format!("ai-sandbox-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One written tensor: HF name, shape and its values (already rounded to bf16).
pub struct Written {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

pub struct TinyModel {
    pub arch: Arch,
    pub dir: PathBuf,
    pub vocab_size: usize,
    /// HF name -> what was written.
    pub tensors: BTreeMap<String, Written>,
    /// Special token text -> id.
    pub special_ids: HashMap<String, u32>,
    /// The trained tokenizer itself (the reference for encode/decode checks).
    pub reference: Tokenizer,
}

const CORPUS: &[&str] = &[
    "Hello world! This is a tiny corpus for a tiny tokenizer.",
    "The quick brown fox jumps over the lazy dog 1234567890 times.",
    "Tokenizers split text into pieces; models read the pieces as ids.",
    "héllo wörld, naïve café: UTF-8 bytes must round-trip exactly.",
    "user: what is the capital of France?\nassistant: Paris is the capital.",
    "    indented code() { return x + y * 2; }",
];

fn train_tokenizer(arch: Arch) -> Tokenizer {
    let mut tok = Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::new(false, true, true)));
    let specials: Vec<AddedToken> = arch.specials().iter().map(|s| AddedToken::from(s.to_string(), true)).collect();
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(300 + specials.len())
        .min_frequency(1)
        .show_progress(false)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .special_tokens(specials)
        .build()
        .into();
    tok.train(&mut trainer, CORPUS.iter().map(|s| s.to_string())).expect("train tokenizer");
    if arch != Arch::Qwen2 {
        // llama/mistral-style post-processor: BOS before every text.
        let bos = tok.token_to_id("<s>").expect("<s> id");
        let post = TemplateProcessing::builder()
            .try_single("<s> $A")
            .expect("template")
            .special_tokens(vec![("<s>".to_string(), bos)])
            .build()
            .expect("post-processor");
        tok.with_post_processor(Some(post));
    }
    tok
}

fn random(rng: &mut StdRng, n: usize, center: f32, spread: f32) -> Vec<f32> {
    (0..n).map(|_| bf16::from_f32(center + spread * (rng.random::<f32>() - 0.5)).to_f32()).collect()
}

/// Writes the model folder for `arch` into `dir` (which must exist).
pub fn write_tiny_model(dir: &Path, arch: Arch, seed: u64) -> TinyModel {
    let tok = train_tokenizer(arch);
    tok.save(dir.join("tokenizer.json"), true).expect("save tokenizer.json");
    let vocab_size = tok.get_vocab_size(true);
    let special_ids: HashMap<String, u32> =
        arch.specials().iter().map(|s| (s.to_string(), tok.token_to_id(s).expect("special id"))).collect();
    let id = |s: &str| special_ids[s];

    let tied = arch == Arch::Qwen2;
    let mut config = json!({
        "architectures": [match arch { Arch::Llama => "LlamaForCausalLM", Arch::Mistral => "MistralForCausalLM", Arch::Qwen2 => "Qwen2ForCausalLM" }],
        "model_type": arch.model_type(),
        "_name_or_path": format!("tiny-{}", arch.model_type()),
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POS,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
    });
    match arch {
        Arch::Llama => {
            config["head_dim"] = json!(HEAD_DIM);
            config["rope_scaling"] = json!({"rope_type": "linear", "factor": 2.0});
            config["attention_bias"] = json!(false);
        }
        Arch::Mistral => config["sliding_window"] = json!(SLIDING_WINDOW),
        Arch::Qwen2 => {
            config["use_sliding_window"] = json!(false);
            config["sliding_window"] = json!(SLIDING_WINDOW);
            config["max_window_layers"] = json!(LAYERS);
        }
    }
    write_json(&dir.join("config.json"), &config);

    let (tcfg, gcfg) = match arch {
        Arch::Llama => (
            json!({
                "bos_token": "<s>", "eos_token": "</s>",
                "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}",
            }),
            json!({"bos_token_id": id("<s>"), "eos_token_id": id("</s>")}),
        ),
        Arch::Mistral => (
            json!({
                "add_bos_token": true, "add_eos_token": false,
                "bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false},
                "eos_token": {"__type": "AddedToken", "content": "</s>", "lstrip": false, "normalized": false, "rstrip": false, "single_word": false},
                "chat_template": [
                    {"name": "tool_use", "template": "unused"},
                    {"name": "default", "template": "{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}{% else %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"},
                ],
            }),
            json!({"bos_token_id": id("<s>"), "eos_token_id": [id("</s>")]}),
        ),
        Arch::Qwen2 => {
            std::fs::write(
                dir.join("chat_template.jinja"),
                "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
            )
            .expect("write chat_template.jinja");
            (
                json!({"bos_token": null, "eos_token": "<|im_end|>", "add_bos_token": false, "pad_token": "<|endoftext|>"}),
                json!({"bos_token_id": id("<|endoftext|>"), "eos_token_id": [id("<|im_end|>"), id("<|endoftext|>")]}),
            )
        }
    };
    write_json(&dir.join("tokenizer_config.json"), &tcfg);
    write_json(&dir.join("generation_config.json"), &gcfg);

    // Weights, HF layout ([out, in] matrices), bf16.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tensors = BTreeMap::new();
    let mut put = |name: String, shape: Vec<usize>, center: f32, spread: f32, rng: &mut StdRng| {
        let n = shape.iter().product();
        tensors.insert(name, Written { values: random(rng, n, center, spread), shape });
    };
    let (q, kv) = (HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM);
    put("model.embed_tokens.weight".into(), vec![vocab_size, HIDDEN], 0.0, 2.0, &mut rng);
    put("model.norm.weight".into(), vec![HIDDEN], 1.0, 0.2, &mut rng);
    if !tied {
        put("lm_head.weight".into(), vec![vocab_size, HIDDEN], 0.0, 0.5, &mut rng);
    }
    for l in 0..LAYERS {
        let p = |s: &str| format!("model.layers.{l}.{s}");
        put(p("input_layernorm.weight"), vec![HIDDEN], 1.0, 0.2, &mut rng);
        put(p("post_attention_layernorm.weight"), vec![HIDDEN], 1.0, 0.2, &mut rng);
        put(p("self_attn.q_proj.weight"), vec![q, HIDDEN], 0.0, 0.5, &mut rng);
        put(p("self_attn.k_proj.weight"), vec![kv, HIDDEN], 0.0, 0.5, &mut rng);
        put(p("self_attn.v_proj.weight"), vec![kv, HIDDEN], 0.0, 0.5, &mut rng);
        put(p("self_attn.o_proj.weight"), vec![HIDDEN, q], 0.0, 0.5, &mut rng);
        put(p("mlp.gate_proj.weight"), vec![FFN, HIDDEN], 0.0, 0.5, &mut rng);
        put(p("mlp.up_proj.weight"), vec![FFN, HIDDEN], 0.0, 0.5, &mut rng);
        put(p("mlp.down_proj.weight"), vec![HIDDEN, FFN], 0.0, 0.5, &mut rng);
        if arch == Arch::Qwen2 {
            put(p("self_attn.q_proj.bias"), vec![q], 0.0, 0.2, &mut rng);
            put(p("self_attn.k_proj.bias"), vec![kv], 0.0, 0.2, &mut rng);
            put(p("self_attn.v_proj.bias"), vec![kv], 0.0, 0.2, &mut rng);
        }
    }
    write_shards(dir, &tensors);
    TinyModel { arch, dir: dir.to_path_buf(), vocab_size, tensors, special_ids, reference: tok }
}

/// Layer-0 tensors and the embeddings in shard 1, the rest in shard 2 (so both hold some of
/// every kind), plus `model.safetensors.index.json`.
fn write_shards(dir: &Path, tensors: &BTreeMap<String, Written>) {
    let bytes: BTreeMap<&str, Vec<u8>> = tensors
        .iter()
        .map(|(k, w)| (k.as_str(), w.values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect()))
        .collect();
    let shard_of = |name: &str| usize::from(!(name.starts_with("model.layers.0.") || name == "model.embed_tokens.weight"));
    let mut weight_map = serde_json::Map::new();
    let mut total = 0;
    for (i, shard) in SHARDS.iter().enumerate() {
        let views: Vec<(&str, TensorView)> = tensors
            .iter()
            .filter(|(k, _)| shard_of(k) == i)
            .map(|(k, w)| (k.as_str(), TensorView::new(Dtype::BF16, w.shape.clone(), &bytes[k.as_str()]).expect("view")))
            .collect();
        for (k, _) in &views {
            weight_map.insert(k.to_string(), json!(shard));
            total += bytes[k].len();
        }
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(meta), &dir.join(shard)).expect("write shard");
    }
    write_json(
        &dir.join("model.safetensors.index.json"),
        &json!({"metadata": {"total_size": total}, "weight_map": weight_map}),
    );
}

pub fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).expect("json")).expect("write json");
}
