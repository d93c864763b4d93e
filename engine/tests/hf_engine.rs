//! Hugging Face models end to end on the CPU, on the tiny random llama / mistral (sliding
//! window) / qwen2 (q/k/v biases, tied embeddings) folders of support/tiny_hf.rs: `Engine::load`
//! of a folder and of an `hf:` id found in the HF cache, chat templating and greedy generation
//! through the real worker (checked against a plain greedy loop over `Model::forward`), the
//! forward pass against the float64 numpy reference (tests/reference/hf_ref.py: rotate-half RoPE
//! with linear scaling, GQA, sliding window, biases), and batched == unbatched tokens.

#[path = "model_common/mod.rs"]
mod model_common;
#[path = "support/tiny_hf.rs"]
mod tiny_hf;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ai_sandbox_engine::hf::HfModelFiles;
use ai_sandbox_engine::model::{LoadOptions, Model};
use ai_sandbox_engine::{
    ChatMessage, Engine, EngineConfig, EngineError, FinishReason, GenEvent, GenerateRequest, SamplingParams,
    TokenLogprob,
};
use model_common::argmax;
use tiny_hf::{write_tiny_model, Arch, TempDir, TinyModel};

fn engine(model: impl Into<PathBuf>) -> Engine {
    let cfg = EngineConfig {
        threads: Some(1),
        ctx_size: Some(128),
        max_queue: 8,
        ..EngineConfig::new(model)
    };
    Engine::load(cfg).expect("load the tiny HF model")
}

fn greedy() -> SamplingParams {
    SamplingParams {
        temperature: 0.0,
        ..SamplingParams::default()
    }
}

/// Runs one request to its end: (each generated token's id and logprob, finish reason).
fn collect_logprobs(mut rx: tokio::sync::mpsc::Receiver<GenEvent>) -> (Vec<TokenLogprob>, FinishReason) {
    let mut out = Vec::new();
    while let Some(ev) = rx.blocking_recv() {
        match ev {
            GenEvent::Delta { logprobs, .. } => out.extend(logprobs),
            GenEvent::Done { finish_reason, usage, .. } => {
                assert_eq!(usage.completion_tokens, out.len());
                return (out, finish_reason);
            }
            GenEvent::Error(e) => panic!("generation failed: {e}"),
        }
    }
    panic!("the event channel closed without Done or Error");
}

/// [`collect_logprobs`], token ids only.
fn collect(rx: tokio::sync::mpsc::Receiver<GenEvent>) -> (Vec<u32>, FinishReason) {
    let (lps, finish) = collect_logprobs(rx);
    (lps.iter().map(|l| l.token_id).collect(), finish)
}

/// Token ids with the exact bits of their logprobs: equal only if every logits row was.
fn tokens_and_bits(rx: tokio::sync::mpsc::Receiver<GenEvent>) -> Vec<(u32, u32)> {
    collect_logprobs(rx).0.iter().map(|l| (l.token_id, l.logprob.to_bits())).collect()
}

fn request(prompt: Vec<u32>, sampling: SamplingParams, max_tokens: usize) -> GenerateRequest {
    GenerateRequest {
        prompt,
        sampling,
        stop: Vec::new(),
        max_tokens,
        logprobs: Some(0),
    }
}

/// The model loaded directly (no engine, no worker): the unbatched reference.
fn direct_model(dir: &Path) -> Model {
    let files = HfModelFiles::from_dir(dir).expect("files");
    let (config, weights) = files.open_model().expect("open model");
    // f32 KV cache: this compares with a float64 reference at 1e-4 (and with the engine below).
    let options = LoadOptions { placement: ai_sandbox_engine::model::Placement::host_f32(), ..LoadOptions::default() };
    Model::load_safetensors(&weights, config, Some(128), &options).expect("load model")
}

/// Greedy decoding with `Model::forward`: up to `max` tokens, stopping before an EOS id.
fn greedy_direct(model: &mut Model, prompt: &[u32], max: usize, eos: &[u32]) -> (Vec<u32>, FinishReason) {
    let mut logits = model.forward(prompt, 0).expect("prefill");
    let mut out = Vec::new();
    while out.len() < max {
        let next = argmax(&logits) as u32;
        if eos.contains(&next) {
            return (out, FinishReason::Stop);
        }
        out.push(next);
        logits = model.forward(&[next], prompt.len() + out.len() - 1).expect("decode");
    }
    (out, FinishReason::Length)
}

fn expected_chat(arch: Arch, user: &str) -> String {
    match arch {
        Arch::Llama => format!("<s>user: {user}</s>assistant: "),
        Arch::Mistral => format!("<s>[INST] {user} [/INST]"),
        Arch::Qwen2 => format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"),
    }
}

fn write(arch: Arch, seed: u64) -> (TempDir, TinyModel) {
    let tmp = TempDir::new(&format!("hf-engine-{}", arch.model_type()));
    let m = write_tiny_model(&tmp.0, arch, seed);
    (tmp, m)
}

#[test]
fn each_tiny_model_loads_templates_and_generates_through_the_engine() {
    for (i, arch) in Arch::ALL.into_iter().enumerate() {
        let (tmp, m) = write(arch, 100 + i as u64);
        let e = engine(&tmp.0);
        let info = e.info();
        let folder = tmp.0.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(
            info.name, folder,
            "{arch:?}: a folder's model is named after the folder"
        );
        assert_eq!(
            (info.arch.as_str(), info.vocab_size, info.ctx_size),
            (arch.model_type(), m.vocab_size, 128)
        );
        assert_eq!(info.path, tmp.0);

        let user = "Hello world! What is the capital of France?";
        let prompt = e
            .chat_prompt(&[ChatMessage {
                role: "user".into(),
                content: user.into(),
            }])
            .unwrap();
        let rendered = expected_chat(arch, user);
        let want = m.reference.encode(rendered.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(prompt, want, "{arch:?}: chat prompt tokens");

        let (got, finish) = collect(e.submit(request(prompt.clone(), greedy(), 8)).unwrap());
        let mut model = direct_model(&tmp.0);
        let eos = HfModelFiles::from_dir(&tmp.0)
            .unwrap()
            .tokenizer()
            .unwrap()
            .eos_ids()
            .to_vec();
        let (want, want_finish) = greedy_direct(&mut model, &prompt, 8, &eos);
        assert_eq!(
            got, want,
            "{arch:?}: the engine's greedy tokens vs a plain Model::forward loop"
        );
        assert_eq!(finish, want_finish, "{arch:?}");
        eprintln!("{arch:?}: {} prompt tokens -> {got:?} ({finish:?})", prompt.len());
    }
}

/// The numpy reference's logits at every position of `ids`.
fn reference_logits(dir: &Path, ids: &[u32]) -> Vec<Vec<f32>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root");
    let script = root.join("tests/reference/hf_ref.py");
    let python = ["PYTHON", "AI_SANDBOX_PYTHON"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "python3".into());
    let out = Command::new(&python)
        .arg(&script)
        .arg(dir)
        .args(ids.iter().map(|i| i.to_string()))
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{python}` for the numpy reference ({e}); scripts/test sets PYTHON"));
    assert!(
        out.status.success(),
        "numpy reference failed ({}): {}\n(it needs numpy; scripts/test installs it)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("reference prints JSON");
    v["logits"]
        .as_array()
        .expect("logits")
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

#[test]
fn forward_matches_the_float64_reference() {
    for (i, arch) in Arch::ALL.into_iter().enumerate() {
        let (tmp, m) = write(arch, 200 + i as u64);
        // 41 tokens: past mistral's 16-token window, with positions far enough for RoPE (and
        // llama's linear scaling) to matter.
        let ids: Vec<u32> = (0..41u32)
            .map(|k| (k * 37 + 11 + i as u32) % m.vocab_size as u32)
            .collect();
        let reference = reference_logits(&tmp.0, &ids);
        assert_eq!(reference.len(), ids.len());
        let mut model = direct_model(&tmp.0);
        // A prefill chunk, a second chunk, then a single-token decode step.
        let mut worst = 0f32;
        for (start, end) in [(0, 23), (23, 40), (40, 41)] {
            let got = model.forward(&ids[start..end], start).expect("forward");
            let want = &reference[end - 1];
            assert_eq!(got.len(), want.len());
            let scale = want.iter().fold(1f32, |a, x| a.max(x.abs()));
            let diff = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            worst = worst.max(diff / scale);
            assert!(
                diff <= 1e-5 * scale,
                "{arch:?} position {}: max |ours - reference| = {diff} (largest logit {scale})",
                end - 1
            );
            assert_eq!(argmax(&got), argmax(want), "{arch:?} position {}", end - 1);
        }
        eprintln!("{arch:?}: worst logit error {worst:.2e} of the largest logit");
    }
}

#[test]
fn batched_greedy_tokens_and_logprobs_equal_unbatched() {
    for (i, arch) in Arch::ALL.into_iter().enumerate() {
        let (tmp, _m) = write(arch, 300 + i as u64);
        let e = engine(&tmp.0);
        // EOS banned so all three run their full length side by side.
        let eos = HfModelFiles::from_dir(&tmp.0)
            .unwrap()
            .tokenizer()
            .unwrap()
            .eos_ids()
            .to_vec();
        let mut sampling = greedy();
        sampling.logit_bias = eos.iter().map(|&id| (id, -100.0)).collect::<HashMap<_, _>>();
        let questions = [
            "Hi",
            "The quick brown fox jumps over the lazy dog 1234567890 times.",
            "héllo wörld",
        ];
        let prompts: Vec<Vec<u32>> = questions
            .iter()
            .map(|q| {
                e.chat_prompt(&[ChatMessage {
                    role: "user".into(),
                    content: q.to_string(),
                }])
                .unwrap()
            })
            .collect();
        let alone: Vec<Vec<(u32, u32)>> = prompts
            .iter()
            .map(|p| tokens_and_bits(e.submit(request(p.clone(), sampling.clone(), 16)).unwrap()))
            .collect();
        let rxs: Vec<_> = prompts
            .iter()
            .map(|p| e.submit(request(p.clone(), sampling.clone(), 16)).unwrap())
            .collect();
        let handles: Vec<_> = rxs
            .into_iter()
            .map(|rx| std::thread::spawn(move || tokens_and_bits(rx)))
            .collect();
        let together: Vec<Vec<(u32, u32)>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (k, (a, t)) in alone.iter().zip(&together).enumerate() {
            assert_eq!(a.len(), 16, "{arch:?} request {k}");
            assert_eq!(t, a, "{arch:?} request {k}: (token, logprob bits) batched vs alone");
        }
        // The three are different generations (the check compares something).
        assert!(alone[0] != alone[1] || alone[1] != alone[2], "{arch:?}");
    }
}

#[test]
fn an_hf_id_loads_from_the_hf_cache_and_is_named_by_its_repo_id() {
    // The cache layout hf-hub and the Python tools share: refs/main names the commit, the
    // snapshot holds the files. qwen2's tiny folder has every optional file, so nothing is
    // fetched; the endpoint is a closed local port, so any fetch would fail the load.
    let (tmp, _m) = write(Arch::Qwen2, 400);
    let hub = tmp.0.join("hub");
    let repo = hub.join("models--tiny-org--tiny-qwen2");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for entry in std::fs::read_dir(&tmp.0).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            std::fs::copy(&p, snapshot.join(p.file_name().unwrap())).unwrap();
        }
    }
    std::env::set_var("HF_HUB_CACHE", &hub);
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    let e = engine("hf:tiny-org/tiny-qwen2");
    assert_eq!(e.info().name, "tiny-org/tiny-qwen2");
    assert_eq!(e.info().path, snapshot);
    let prompt = e
        .chat_prompt(&[ChatMessage {
            role: "user".into(),
            content: "Hi".into(),
        }])
        .unwrap();
    let got = collect(e.submit(request(prompt.clone(), greedy(), 4)).unwrap());
    let eos = HfModelFiles::from_dir(&snapshot)
        .unwrap()
        .tokenizer()
        .unwrap()
        .eos_ids()
        .to_vec();
    assert_eq!(got, greedy_direct(&mut direct_model(&snapshot), &prompt, 4, &eos));

    // A repo not in the cache: the download is tried (and fails: nothing listens there).
    let err = Engine::load(EngineConfig::new("hf:tiny-org/absent"))
        .err()
        .expect("must fail");
    assert!(
        matches!(&err, EngineError::Load(s) if s.contains("hf:tiny-org/absent")),
        "{err}"
    );
}

#[test]
fn a_folder_whose_weights_disagree_with_its_config_is_refused_by_name() {
    // llama weights (no q/k/v biases) under a qwen2 config.json: the biases are missing.
    let (tmp, _m) = write(Arch::Llama, 500);
    let cfg_path = tmp.0.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["model_type"] = "qwen2".into();
    cfg.as_object_mut().unwrap().remove("rope_scaling");
    tiny_hf::write_json(&cfg_path, &cfg);
    let err = Engine::load(EngineConfig::new(&tmp.0)).err().expect("must fail");
    assert!(
        matches!(&err, EngineError::Load(s) if s.contains("model.layers.0.self_attn.q_proj.bias") && s.contains("missing")),
        "{err}"
    );
}
