//! SentencePiece (`tokenizer.ggml.model = "llama"`) on a tiny hand-made vocab written to a GGUF,
//! plus refusal of unknown tokenizer models and pre-tokenizers.

use std::path::PathBuf;

use ai_sandbox_engine::gguf::GgufFile;
use ai_sandbox_engine::{EngineError, Tokenizer};
use candle_core::quantized::gguf_file::{self, Value};

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const BYTE: i32 = 6;

/// Writes a GGUF holding only tokenizer metadata and opens it.
fn gguf_with(name: &str, meta: Vec<(&str, Value)>) -> GgufFile {
    let path: PathBuf = std::env::temp_dir().join(format!("ai-sandbox-tok-{}-{name}.gguf", std::process::id()));
    let mut f = std::fs::File::create(&path).unwrap();
    let refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut f, &refs, &[]).unwrap();
    drop(f);
    let g = GgufFile::open(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    g
}

fn strs(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::String(s.to_string())).collect())
}

/// A Llama-2-like vocab: <unk> <s> </s>, a few byte tokens, pieces with scores (higher merges first).
fn spm_meta() -> Vec<(&'static str, Value)> {
    let vocab: &[(&str, f32, i32)] = &[
        ("<unk>", 0.0, UNKNOWN),        // 0
        ("<s>", 0.0, CONTROL),          // 1
        ("</s>", 0.0, CONTROL),         // 2
        ("<0x0A>", 0.0, BYTE),          // 3
        ("<0xC3>", 0.0, BYTE),          // 4
        ("<0xA9>", 0.0, BYTE),          // 5
        ("\u{2581}", -1.0, NORMAL),     // 6
        ("H", -5.0, NORMAL),            // 7
        ("e", -5.0, NORMAL),            // 8
        ("l", -5.0, NORMAL),            // 9
        ("o", -5.0, NORMAL),            // 10
        ("w", -5.0, NORMAL),            // 11
        ("r", -5.0, NORMAL),            // 12
        ("d", -5.0, NORMAL),            // 13
        ("ll", -2.0, NORMAL),           // 14
        ("\u{2581}H", -3.0, NORMAL),    // 15
        ("\u{2581}He", -3.5, NORMAL),   // 16
        ("\u{2581}Hell", -4.0, NORMAL), // 17
        ("\u{2581}Hello", -4.5, NORMAL), // 18
        ("\u{2581}w", -3.0, NORMAL),    // 19
        ("or", -3.0, NORMAL),           // 20
        ("\u{2581}wor", -3.2, NORMAL),  // 21
        ("\u{2581}world", -3.3, NORMAL), // 22
        ("ld", -2.5, NORMAL),           // 23
        ("\u{2581}wo", -9.0, NORMAL),   // 24: a worse path to "world" that must lose
    ];
    vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strs(&vocab.iter().map(|v| v.0).collect::<Vec<_>>())),
        ("tokenizer.ggml.scores", Value::Array(vocab.iter().map(|v| Value::F32(v.1)).collect())),
        ("tokenizer.ggml.token_type", Value::Array(vocab.iter().map(|v| Value::I32(v.2)).collect())),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
    ]
}

#[test]
fn spm_merges_by_score_with_space_prefix() {
    let tok = Tokenizer::from_gguf(&gguf_with("spm1", spm_meta())).unwrap();
    assert_eq!(tok.encode("Hello world", false).unwrap(), vec![18, 22]);
    // Llama-style vocabs want BOS by default (no add_bos_token key).
    assert!(tok.add_bos_default());
    assert_eq!(tok.encode("Hello world", true).unwrap(), vec![1, 18, 22]);
    assert_eq!(tok.decode(&[18, 22]).unwrap(), "Hello world", "the prefix space is dropped");
    assert_eq!(tok.token_bytes(22), Some(&b" world"[..]));
    assert_eq!(tok.eos_ids(), &[2]);
}

#[test]
fn spm_byte_fallback_and_unknown() {
    let tok = Tokenizer::from_gguf(&gguf_with("spm2", spm_meta())).unwrap();
    // "é" is not a piece: its UTF-8 bytes C3 A9 are; "\n" is <0x0A>; "z" has neither: <unk>.
    let ids = tok.encode("Hello é\nz", false).unwrap();
    assert_eq!(ids, vec![18, 6, 4, 5, 3, 0]);
    assert_eq!(tok.token_bytes(4), Some(&[0xC3u8][..]));
    assert_eq!(tok.decode(&ids[..5]).unwrap(), "Hello é\n");
    // Byte-token text written literally is plain text, not a byte.
    assert!(!tok.encode("<0x0A>", false).unwrap().contains(&3));
}

#[test]
fn spm_specials_in_text_and_space_after_them() {
    let tok = Tokenizer::from_gguf(&gguf_with("spm3", spm_meta())).unwrap();
    // Like llama.cpp: a special splits the text and the next run gets its own space prefix.
    assert_eq!(tok.encode("<s>Hello</s>world", false).unwrap(), vec![1, 18, 2, 22]);
    assert_eq!(tok.encode("<s>Hello", true).unwrap(), vec![1, 18], "no double BOS");
    assert_eq!(tok.decode(&[1, 18, 2]).unwrap(), "<s> Hello</s>");
}

#[test]
fn spm_add_space_prefix_false_and_add_bos_false() {
    let mut meta = spm_meta();
    meta.push(("tokenizer.ggml.add_space_prefix", Value::Bool(false)));
    meta.push(("tokenizer.ggml.add_bos_token", Value::Bool(false)));
    let tok = Tokenizer::from_gguf(&gguf_with("spm4", meta)).unwrap();
    assert!(!tok.add_bos_default());
    // No leading '▁': "Hello" starts with a bare H and can't reach ▁Hello.
    assert_eq!(tok.encode("Hello", false).unwrap(), vec![7, 8, 14, 10]);
}

#[test]
fn unknown_model_and_pre_are_refused_by_name() {
    let mut meta = spm_meta();
    meta[0] = ("tokenizer.ggml.model", Value::String("bert".into()));
    let err = Tokenizer::from_gguf(&gguf_with("bert", meta)).err().expect("bert refused");
    assert!(matches!(&err, EngineError::Unsupported(m) if m.contains("`bert`")), "{err}");

    let gpt2 = |pre: &str| {
        vec![
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
            ("tokenizer.ggml.pre", Value::String(pre.into())),
            ("tokenizer.ggml.tokens", strs(&["a", "b", "ab", "Ġ"])),
            ("tokenizer.ggml.token_type", Value::Array(vec![Value::I32(NORMAL); 4])),
            ("tokenizer.ggml.merges", strs(&["a b"])),
        ]
    };
    let err = Tokenizer::from_gguf(&gguf_with("falcon", gpt2("falcon"))).err().expect("falcon refused");
    assert!(matches!(&err, EngineError::Unsupported(m) if m.contains("`falcon`")), "{err}");
    let ok = Tokenizer::from_gguf(&gguf_with("gpt2", gpt2("gpt-2"))).unwrap();
    assert_eq!(ok.encode("ab a", false).unwrap(), vec![2, 3, 0]);
    assert_eq!(ok.decode(&[2, 3, 0]).unwrap(), "ab a");
}
