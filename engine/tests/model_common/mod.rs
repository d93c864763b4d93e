//! Shared helpers for the model tests: running the numpy reference (tests/reference/llama_ref.py),
//! writing tiny random Llama-family GGUFs, and comparing logits.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

/// The repository root (the engine crate's parent).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("engine has a parent dir")
        .to_path_buf()
}

/// SmolLM2's GGUF; the tests fail (not skip) without it, since scripts/test fetches it.
pub fn smollm2_path() -> PathBuf {
    let p = repo_root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run scripts/fetch-model first",
        p.display()
    );
    p
}

/// Runs the numpy reference on `model` and returns the logits at every position.
pub fn reference_logits(model: &Path, ids: &[u32]) -> Vec<Vec<f32>> {
    let script = repo_root().join("tests/reference/llama_ref.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
    let out = Command::new(&python)
        .arg(&script)
        .arg(model)
        .args(ids.iter().map(|i| i.to_string()))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{python}` for the numpy reference ({e}); install Python 3 with `pip install gguf numpy` (scripts/test does)")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "numpy reference failed ({}): {stderr}\n(it needs `pip install gguf numpy`; scripts/test installs them)",
        out.status
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("reference prints JSON");
    v["logits"]
        .as_array()
        .expect("logits array")
        .iter()
        .map(|row| {
            row.as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect()
        })
        .collect()
}

pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "logit vectors differ in length");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn max_abs(a: &[f32]) -> f32 {
    a.iter().map(|x| x.abs()).fold(0.0, f32::max)
}

/// Deterministic pseudo-random numbers in [-1, 1) (xorshift), so tests need no RNG crate API.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
}

/// Shape of a tiny test model.
#[derive(Clone, Debug)]
pub struct TinySpec {
    pub arch: &'static str,
    pub vocab: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub context: usize,
    pub tied: bool,
    /// Adds q/k/v biases (qwen2 style).
    pub biases: bool,
    pub sliding_window: Option<u32>,
    pub linear_rope_factor: Option<f32>,
}

impl TinySpec {
    pub fn llama() -> Self {
        TinySpec {
            arch: "llama",
            vocab: 256,
            hidden: 256,
            ffn: 512,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            context: 64,
            tied: false,
            biases: false,
            sliding_window: None,
            linear_rope_factor: None,
        }
    }
}

/// Random f32 weights for a tiny model, by tensor name (candle's row-major shapes).
pub fn tiny_weights(spec: &TinySpec, seed: u64) -> Vec<(String, Tensor)> {
    let mut rng = Rng::new(seed);
    let dev = Device::Cpu;
    let hd = spec.hidden / spec.heads;
    let mut w = Vec::new();
    let mat = |name: String, rows: usize, cols: usize, rng: &mut Rng| {
        let scale = 1.0 / (cols as f32).sqrt() * 1.7;
        (
            name,
            Tensor::from_vec(rng.vec(rows * cols, scale), (rows, cols), &dev).unwrap(),
        )
    };
    let vecn = |name: String, n: usize, base: f32, spread: f32, rng: &mut Rng| {
        let v: Vec<f32> = (0..n).map(|_| base + rng.next() * spread).collect();
        (name, Tensor::from_vec(v, n, &dev).unwrap())
    };
    w.push(mat(
        "token_embd.weight".into(),
        spec.vocab,
        spec.hidden,
        &mut rng,
    ));
    for l in 0..spec.layers {
        let p = |s: &str| format!("blk.{l}.{s}");
        w.push(vecn(p("attn_norm.weight"), spec.hidden, 1.0, 0.2, &mut rng));
        w.push(mat(
            p("attn_q.weight"),
            spec.heads * hd,
            spec.hidden,
            &mut rng,
        ));
        w.push(mat(
            p("attn_k.weight"),
            spec.kv_heads * hd,
            spec.hidden,
            &mut rng,
        ));
        w.push(mat(
            p("attn_v.weight"),
            spec.kv_heads * hd,
            spec.hidden,
            &mut rng,
        ));
        if spec.biases {
            w.push(vecn(p("attn_q.bias"), spec.heads * hd, 0.0, 0.5, &mut rng));
            w.push(vecn(
                p("attn_k.bias"),
                spec.kv_heads * hd,
                0.0,
                0.5,
                &mut rng,
            ));
            w.push(vecn(
                p("attn_v.bias"),
                spec.kv_heads * hd,
                0.0,
                0.5,
                &mut rng,
            ));
        }
        w.push(mat(
            p("attn_output.weight"),
            spec.hidden,
            spec.heads * hd,
            &mut rng,
        ));
        w.push(vecn(p("ffn_norm.weight"), spec.hidden, 1.0, 0.2, &mut rng));
        w.push(mat(p("ffn_gate.weight"), spec.ffn, spec.hidden, &mut rng));
        w.push(mat(p("ffn_up.weight"), spec.ffn, spec.hidden, &mut rng));
        w.push(mat(p("ffn_down.weight"), spec.hidden, spec.ffn, &mut rng));
    }
    w.push(vecn(
        "output_norm.weight".into(),
        spec.hidden,
        1.0,
        0.2,
        &mut rng,
    ));
    if !spec.tied {
        w.push(mat(
            "output.weight".into(),
            spec.vocab,
            spec.hidden,
            &mut rng,
        ));
    }
    w
}

/// Metadata for a tiny model (no tokenizer keys: the vocabulary comes from `{arch}.vocab_size`).
pub fn tiny_metadata(spec: &TinySpec) -> Vec<(String, Value)> {
    let a = spec.arch;
    let mut m = vec![
        ("general.architecture".to_string(), Value::String(a.into())),
        (
            "general.name".to_string(),
            Value::String(format!("tiny-{a}")),
        ),
        (format!("{a}.vocab_size"), Value::U32(spec.vocab as u32)),
        (
            format!("{a}.context_length"),
            Value::U32(spec.context as u32),
        ),
        (
            format!("{a}.embedding_length"),
            Value::U32(spec.hidden as u32),
        ),
        (format!("{a}.block_count"), Value::U32(spec.layers as u32)),
        (
            format!("{a}.feed_forward_length"),
            Value::U32(spec.ffn as u32),
        ),
        (
            format!("{a}.attention.head_count"),
            Value::U32(spec.heads as u32),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            Value::U32(spec.kv_heads as u32),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{a}.rope.freq_base"), Value::F32(10000.0)),
        (
            format!("{a}.rope.dimension_count"),
            Value::U32((spec.hidden / spec.heads) as u32),
        ),
    ];
    if let Some(w) = spec.sliding_window {
        m.push((format!("{a}.attention.sliding_window"), Value::U32(w)));
    }
    if let Some(f) = spec.linear_rope_factor {
        m.push((
            format!("{a}.rope.scaling.type"),
            Value::String("linear".into()),
        ));
        m.push((format!("{a}.rope.scaling.factor"), Value::F32(f)));
    }
    m
}

/// Writes a GGUF: 2-D weights quantized to `dtype`, 1-D tensors (norms, biases) kept F32.
pub fn write_gguf(
    path: &Path,
    metadata: &[(String, Value)],
    weights: &[(String, Tensor)],
    dtype: GgmlDType,
) {
    let q: Vec<(String, QTensor)> = weights
        .iter()
        .map(|(n, t)| {
            let dt = if t.rank() == 1 { GgmlDType::F32 } else { dtype };
            (n.clone(), QTensor::quantize(t, dt).unwrap())
        })
        .collect();
    write_q(path, metadata, &q);
}

pub fn write_q(path: &Path, metadata: &[(String, Value)], tensors: &[(String, QTensor)]) {
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &md, &ts).unwrap();
}

/// A fresh temp directory for one test (removed by the OS's tmp cleaning; names are unique).
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ai-sandbox-model-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Logit tolerances: max and mean absolute difference, and `tie`: our argmax must be the
/// reference's, or a token whose reference logit is within `tie` of the reference's best (a
/// near-tie that numeric noise may legitimately flip).
#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub max: f32,
    pub mean: f32,
    pub tie: f32,
}

impl Tol {
    /// f32 forward vs f64 reference on the same weights: rounding only.
    pub const F32: Tol = Tol {
        max: 2e-3,
        mean: 2e-4,
        tie: 1e-4,
    };
}

pub fn check(label: &str, ours: &[f32], reference: &[f32], tol: Tol) {
    let d = max_abs_diff(ours, reference);
    let mean = ours
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b).abs())
        .sum::<f32>()
        / ours.len() as f32;
    eprintln!(
        "{label}: max |ours - reference| = {d:.5}, mean {mean:.5} (|logit| up to {:.1})",
        max_abs(reference)
    );
    let (mine, best) = (argmax(ours), argmax(reference));
    let gap = reference[best] - reference[mine];
    assert!(
        mine == best || gap <= tol.tie,
        "{label}: argmax {mine} differs from the reference's {best} (reference logits {} vs {}, gap {gap} > {})",
        reference[mine],
        reference[best],
        tol.tie
    );
    assert!(d < tol.max, "{label}: max abs diff {d} >= {}", tol.max);
    assert!(
        mean < tol.mean,
        "{label}: mean abs diff {mean} >= {}",
        tol.mean
    );
}

/// `<|im_start|>system\nYou are a helpful AI assistant named SmolLM, ...` (SmolLM2 ids).
pub const PROMPT: [u32; 10] = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 30];

fn smollm2_reference() -> &'static Vec<Vec<f32>> {
    static REF: std::sync::OnceLock<Vec<Vec<f32>>> = std::sync::OnceLock::new();
    REF.get_or_init(|| reference_logits(&smollm2_path(), &PROMPT))
}

/// Tests that want SmolLM2 loaded with `requantize_to_q8_0` set this before loading.
pub static REQUANTIZE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Tests that want SmolLM2's KV cache in f16 (the server's default) set this before loading;
/// otherwise it is f32, so the reference checks measure the weights' and activations' rounding.
pub static KV_F16: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn load_smollm2(ctx: usize) -> ai_sandbox_engine::model::Model {
    use ai_sandbox_engine::model::{KvDtype, Placement};
    let mut g = ai_sandbox_engine::gguf::GgufFile::open(&smollm2_path()).expect("open SmolLM2");
    let kv = match KV_F16.load(std::sync::atomic::Ordering::Relaxed) {
        true => KvDtype::F16,
        false => KvDtype::F32,
    };
    let options = ai_sandbox_engine::model::LoadOptions {
        requantize_to_q8_0: REQUANTIZE.load(std::sync::atomic::Ordering::Relaxed),
        placement: Placement::Host { kv },
        ..Default::default()
    };
    ai_sandbox_engine::model::Model::load_with(&mut g, Some(ctx), &options).expect("load SmolLM2")
}

/// The whole prompt in one forward at position 0.
pub fn smollm2_whole_prompt(tol: Tol) {
    let reference = smollm2_reference();
    let mut m = load_smollm2(64);
    assert_eq!(m.config().arch, "llama");
    assert_eq!(m.config().vocab_size, 49152);
    let logits = m.forward(&PROMPT, 0).unwrap();
    assert_eq!(logits.len(), 49152);
    check("whole prompt", &logits, &reference[PROMPT.len() - 1], tol);
}

/// forward(first 5, 0) + forward(rest, 5), then a rewind to position 3 (shared-prefix reuse).
pub fn smollm2_split_prompt(tol: Tol) {
    let reference = smollm2_reference();
    let mut m = load_smollm2(64);
    let first = m.forward(&PROMPT[..5], 0).unwrap();
    check("first 5 tokens", &first, &reference[4], tol);
    let rest = m.forward(&PROMPT[5..], 5).unwrap();
    check("rest at pos 5", &rest, &reference[PROMPT.len() - 1], tol);
    // Poison positions 3.. with other tokens, then rerun the true ones from 3.
    m.forward(&[42, 43, 44, 45], 3).unwrap();
    let again = m.forward(&PROMPT[3..], 3).unwrap();
    check(
        "rewound to pos 3",
        &again,
        &reference[PROMPT.len() - 1],
        tol,
    );
}

/// One token per forward; every position's logits against the reference.
pub fn smollm2_decode(tol: Tol) {
    let reference = smollm2_reference();
    let mut m = load_smollm2(64);
    for (i, &t) in PROMPT.iter().enumerate() {
        let logits = m.forward(&[t], i).unwrap();
        check(&format!("decode pos {i}"), &logits, &reference[i], tol);
    }
}
