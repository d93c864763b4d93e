//! Cross-check of Hugging Face folders against an independent implementation: for each tiny model
//! (support/tiny_hf.rs), tests/reference/hf_tok_ref.py loads the same folder with transformers'
//! `AutoTokenizer` and renders the chats with `apply_chat_template`. Token ids (with and without
//! the tokenizer's BOS handling), rendered prompts and template errors must agree. Fails (doesn't
//! skip) without the Python packages: scripts/test installs them.

#[path = "support/tiny_hf.rs"]
mod tiny_hf;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use ai_sandbox_engine::hf::HfModelFiles;
use ai_sandbox_engine::{ChatMessage, EngineError};
use serde_json::{json, Value};
use tiny_hf::{write_tiny_model, Arch, TempDir};

fn reference(request: &Value) -> Value {
    let python = std::env::var("AI_SANDBOX_PYTHON")
        .or_else(|_| std::env::var("PYTHON"))
        .unwrap_or_else(|_| "python3".to_string());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/reference/hf_tok_ref.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{python}` ({e}): install Python 3 and `pip install transformers==5.23.0 jinja2==3.1.6`"));
    child.stdin.take().expect("stdin").write_all(request.to_string().as_bytes()).expect("write request");
    let out = child.wait_with_output().expect("reference finished");
    assert!(
        out.status.success(),
        "hf_tok_ref.py failed ({}):\n{}\n(set AI_SANDBOX_PYTHON to an interpreter with transformers; scripts/test does)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("reference prints JSON")
}

const TEXTS: &[&str] = &[
    "Hello world! This is a tiny corpus for a tiny tokenizer.",
    "Unseen: zebra quixotic 42 ∑ 😀 tabs\tand\nnewlines  double  spaces ",
    " leading space and 1234567890",
    "héllo wörld, naïve café",
    "specials inline: <s>x</s> [INST] y [/INST] <|im_start|>user\nhi<|im_end|><|endoftext|>",
    "",
];

fn chats() -> Vec<(Vec<ChatMessage>, bool)> {
    let m = |role: &str, content: &str| ChatMessage { role: role.into(), content: content.into() };
    vec![
        (vec![m("user", "Hi there")], true),
        (vec![m("user", "Hi"), m("assistant", "Hello!"), m("user", "What's 2+2?")], true),
        (vec![m("user", "Hi"), m("assistant", "Hello!")], false),
        // Mistral's template refuses this (roles must alternate); the others render it.
        (vec![m("assistant", "I start"), m("assistant", "twice")], false),
    ]
}

#[test]
fn tiny_hf_tokenizers_match_transformers() {
    for (i, arch) in Arch::ALL.into_iter().enumerate() {
        let tmp = TempDir::new(&format!("hf-ref-{}", arch.model_type()));
        write_tiny_model(&tmp.0, arch, 20 + i as u64);
        let files = HfModelFiles::from_dir(&tmp.0).unwrap();
        let tok = files.tokenizer().unwrap();
        let template = files.chat_template(&tok).unwrap();

        let chats = chats();
        let request = json!({
            "dir": tmp.0,
            "texts": TEXTS,
            "chats": chats.iter().map(|(msgs, gen)| json!({
                "messages": msgs.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
                "add_generation_prompt": gen,
            })).collect::<Vec<_>>(),
        });
        let r = reference(&request);
        let ids = |v: &Value| -> Vec<u32> { serde_json::from_value(v.clone()).expect("ids") };
        for (j, text) in TEXTS.iter().enumerate() {
            assert_eq!(tok.encode(text, false).unwrap(), ids(&r["ids"][j]), "{arch:?} {text:?}");
            assert_eq!(
                tok.encode(text, tok.add_bos_default()).unwrap(),
                ids(&r["ids_special"][j]),
                "{arch:?} {text:?} with the tokenizer's BOS handling"
            );
        }
        assert_eq!(r["bos_token_id"].as_u64().map(|b| b as u32), tok.bos_id(), "{arch:?} bos");
        let eos = r["eos_token"].as_str().expect("eos_token");
        assert!(tok.eos_ids().iter().any(|&e| tok.token_text(e) == Some(eos)), "{arch:?}: {eos} not an eos id");

        for (j, (msgs, gen)) in chats.iter().enumerate() {
            let ours = template.render(msgs, *gen);
            match (&r["rendered"][j]["text"], ours) {
                (Value::String(want), Ok(got)) => assert_eq!(&got, want, "{arch:?} chat {j}"),
                (Value::Null, Err(EngineError::InvalidInput { message, .. })) => {
                    let theirs = r["rendered"][j]["error"].as_str().unwrap_or("");
                    assert!(theirs.contains(&message), "{arch:?} chat {j}: {message:?} vs {theirs:?}");
                }
                (want, got) => panic!("{arch:?} chat {j}: transformers {want:?} / {:?}, engine {got:?}", r["rendered"][j]),
            }
        }
    }
}
