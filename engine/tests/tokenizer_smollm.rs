//! The tokenizer on SmolLM2's real GGUF (byte-level BPE, pre `smollm`): known ids, round trips,
//! special tokens in text, BOS/EOS handling and per-token bytes.

use std::path::{Path, PathBuf};

use ai_sandbox_engine::gguf::GgufFile;
use ai_sandbox_engine::{EngineError, Tokenizer};

fn smollm2() -> Tokenizer {
    let p: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(p.exists(), "{} is missing: run scripts/fetch-model first", p.display());
    let gguf = GgufFile::open(&p).expect("open SmolLM2 GGUF");
    Tokenizer::from_gguf(&gguf).expect("SmolLM2 tokenizer")
}

#[test]
fn hello_is_19556() {
    let tok = smollm2();
    // candle's TokenizerFromGguf gives 38699 ('ĠHello'); HF and llama.cpp give 19556.
    assert_eq!(tok.encode("Hello", false).unwrap(), vec![19556]);
    assert_eq!(tok.encode("Hello world", false).unwrap(), vec![19556, 905]);
    assert_eq!(tok.token_text(19556), Some("Hello"));
    assert_eq!(tok.vocab_size(), 49152);
}

#[test]
fn digits_are_split_one_by_one() {
    let tok = smollm2();
    let ids = tok.encode("12345 3.14", false).unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| tok.decode(&[i]).unwrap()).collect();
    assert_eq!(pieces, ["1", "2", "3", "4", "5", " ", "3", ".", "1", "4"]);
}

#[test]
fn round_trips() {
    let tok = smollm2();
    let texts = [
        "12345 3.14",
        "emoji 🦀🎉 👍🏽 family 👨‍👩‍👧 done",
        "accents: café naïve Ångström São Paulo Æsir",
        "CJK: 你好，世界。日本語のテキスト 한국어",
        "lines\nand\n\nblank\r\nlines\n",
        "  multiple   spaces\t\ttabs  ",
        "zero\u{200b}width and nbsp\u{a0}here",
        "",
    ];
    for t in texts {
        let ids = tok.encode(t, false).unwrap();
        assert_eq!(tok.decode(&ids).unwrap(), t, "ids {ids:?}");
        let bytes: Vec<u8> = ids.iter().flat_map(|&i| tok.token_bytes(i).unwrap().to_vec()).collect();
        assert_eq!(bytes, t.as_bytes(), "token_bytes must concatenate to the text");
    }
}

#[test]
fn special_tokens_in_text_are_parsed() {
    let tok = smollm2();
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>\n", false).unwrap();
    assert_eq!(ids.first(), Some(&1), "<|im_start|> is id 1: {ids:?}");
    assert!(ids.contains(&2), "<|im_end|> is id 2: {ids:?}");
    assert_eq!(tok.decode(&ids).unwrap(), "<|im_start|>user\nHi<|im_end|>\n");
    // A partial special is plain text.
    let partial = tok.encode("<|im_end", false).unwrap();
    assert!(!partial.contains(&2) && partial.len() > 1, "{partial:?}");
    assert_eq!(tok.encode("a<repo_name>b", false).unwrap()[1], 3);
}

#[test]
fn bos_eos_and_errors() {
    let tok = smollm2();
    // SmolLM2 says add_bos_token = false; its BOS is <|im_start|> (1), EOS <|im_end|> (2).
    assert!(!tok.add_bos_default());
    assert_eq!(tok.bos_id(), Some(1));
    let mut eos = tok.eos_ids().to_vec();
    eos.sort();
    assert_eq!(eos, vec![0, 2], "<|im_end|> from metadata and <|endoftext|> from the vocab");
    assert_eq!(tok.encode("Hello", true).unwrap(), vec![1, 19556]);
    assert_eq!(tok.encode("<|im_start|>Hello", true).unwrap(), vec![1, 19556], "no second BOS");
    assert!(matches!(tok.decode(&[49152]), Err(EngineError::InvalidInput { .. })));
    assert_eq!(tok.token_bytes(49152), None);
    assert_eq!(tok.token_bytes(216), Some(&b" "[..]));
}
