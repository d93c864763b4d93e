//! Cross-check against an independent implementation: tests/reference/tok_ref.py builds
//! transformers' own tokenizer from the same GGUF and renders chat templates with transformers'
//! jinja2 setup. Ids and rendered strings must be identical. Fails (doesn't skip) without the
//! Python packages: scripts/test installs them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ai_sandbox_engine::gguf::GgufFile;
use ai_sandbox_engine::{ChatMessage, ChatTemplate, EngineError, Tokenizer};
use serde_json::{json, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn model_path() -> PathBuf {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/fetch-model first", p.display());
    p
}

/// Runs tok_ref.py with `request` on stdin and returns its JSON answer.
fn reference(request: &Value) -> Value {
    let python = std::env::var("AI_SANDBOX_PYTHON")
        .or_else(|_| std::env::var("PYTHON"))
        .unwrap_or_else(|_| "python3".to_string());
    let script = root().join("tests/reference/tok_ref.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{python}` ({e}): install Python 3 and `pip install transformers==5.23.0 gguf==0.19.0 jinja2==3.1.6`"));
    child.stdin.take().expect("stdin").write_all(request.to_string().as_bytes()).expect("write request");
    let out = child.wait_with_output().expect("reference finished");
    assert!(
        out.status.success(),
        "tokenizer reference failed ({}):\n{}\n(it needs `pip install transformers==5.23.0 gguf==0.19.0 jinja2==3.1.6`; \
         scripts/test installs them; set AI_SANDBOX_PYTHON to pick the interpreter)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("reference prints JSON")
}

const TEXTS: &[&str] = &[
    "Hello",
    "Hello world",
    "12345 3.14",
    "1,000,000 and 3.14159e-10 and 0x1F and 2024-07-26",
    "  multiple   spaces  ",
    "trailing space ",
    " leading space",
    "tabs\tand\nnewlines\n\n\r\n end",
    "emoji 🦀🎉 👍🏽 family 👨‍👩‍👧",
    "accents: café naïve Ångström São Paulo",
    "CJK: 你好，世界。日本語のテキスト 한국어",
    "Arabic مرحبا and Hebrew שלום",
    "math ∑∫√∞ ≤ ≥ and zero\u{200b}width",
    "don't I'll we've THEY'RE it's",
    "code: fn main() { println!(\"{}\", x + 1); }\n    return;",
    "URL https://example.com/a?b=c&d=e#f",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "a<|endoftext|>b<|im_end",
    "<repo_name>x<file_sep>y",
    "!!!???...---___",
    "\n",
];

#[test]
fn ids_match_transformers() {
    let path = model_path();
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let answer = reference(&json!({ "gguf": path, "texts": TEXTS }));
    let expected = answer["ids"].as_array().expect("ids");
    assert_eq!(expected.len(), TEXTS.len());
    let mut mismatches = vec![];
    for (text, want) in TEXTS.iter().zip(expected) {
        let want: Vec<u32> = want.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let got = tok.encode(text, false).unwrap();
        if got != want {
            mismatches.push(format!("{text:?}\n  ours:         {got:?}\n  transformers: {want:?}"));
        }
        assert_eq!(tok.decode(&got).unwrap(), *text);
    }
    assert!(mismatches.is_empty(), "token ids differ:\n{}", mismatches.join("\n"));
}

fn msgs(pairs: &[(&str, &str)]) -> Vec<ChatMessage> {
    pairs.iter().map(|(r, c)| ChatMessage { role: r.to_string(), content: c.to_string() }).collect()
}

fn as_json(m: &[ChatMessage]) -> Value {
    // The reference gets what the template sees: developer already mapped to system.
    let role = |r: &str| if r == "developer" { "system".to_string() } else { r.to_string() };
    Value::Array(m.iter().map(|m| json!({ "role": role(&m.role), "content": m.content })).collect())
}

#[test]
fn chat_templates_match_transformers() {
    let path = model_path();
    let gguf = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&gguf).unwrap();
    let smol = ChatTemplate::from_gguf(&gguf, &tok).unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/chat_templates");
    let read = |f: &str| std::fs::read_to_string(data.join(f)).unwrap();
    let others = [
        ("llama3.jinja", "<|begin_of_text|>", "<|eot_id|>"),
        ("mistral_v03.jinja", "<s>", "</s>"),
        ("features.jinja", "<s>", "</s>"),
    ];

    let convs = [
        msgs(&[("user", "Hi!")]),
        msgs(&[("system", "Be brief."), ("user", "What is 2+2?"), ("assistant", " 4. "), ("user", "And 3+3?")]),
        msgs(&[("developer", "You are terse."), ("user", "  # Title\nline two?  ")]),
        msgs(&[("user", "1"), ("assistant", "2"), ("user", "3"), ("assistant", "4"), ("user", "5 é 🦀 \"q\" <b>")]),
        // Not alternating: Mistral's template raises.
        msgs(&[("user", "a"), ("user", "b")]),
    ];

    let mut chats = vec![];
    let mut ours = vec![];
    for conv in &convs {
        for agp in [true, false] {
            chats.push(json!({ "messages": as_json(conv), "add_generation_prompt": agp }));
            ours.push(smol.render(conv, agp));
            for (file, bos, eos) in others {
                chats.push(json!({ "messages": as_json(conv), "add_generation_prompt": agp,
                                   "template": read(file), "bos_token": bos, "eos_token": eos }));
                ours.push(ChatTemplate::from_source(&read(file), bos, eos).unwrap().render(conv, agp));
            }
        }
    }
    let answer = reference(&json!({ "gguf": path, "chats": chats }));
    let rendered = answer["rendered"].as_array().expect("rendered");
    assert_eq!(rendered.len(), ours.len());
    let mut n_errors = 0;
    for ((req, want), got) in chats.iter().zip(rendered).zip(&ours) {
        match (want.get("text").and_then(Value::as_str), got) {
            (Some(w), Ok(g)) => assert_eq!(g, w, "rendering differs for {req}"),
            (None, Err(EngineError::InvalidInput { message, param })) => {
                n_errors += 1;
                let w = want["error"].as_str().unwrap();
                assert!(w.contains(message.as_str()), "reference error {w:?} vs ours {message:?}");
                assert_eq!(param.as_deref(), Some("messages"));
            }
            (w, g) => panic!("reference {w:?} vs ours {g:?} for {req}"),
        }
    }
    assert_eq!(n_errors, 2, "Mistral's alternation check fires for both add_generation_prompt values");
}
