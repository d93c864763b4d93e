//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`): the split regexes for each accepted
//! `tokenizer.ggml.pre` value, the GPT-2 byte<->char alphabet, and a `tokenizers` pipeline
//! (regex splits, then ByteLevel without its own regex, then BPE over the GGUF merges).

use std::collections::HashMap;

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use crate::EngineError;

/// GPT-2's pre-tokenizer regex (also the second stage of several others).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Llama 3's regex with the case-insensitive group spelled out (as llama.cpp does).
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's regex: like Llama 3 but digits one at a time.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How one `tokenizer.ggml.pre` value tokenizes: its regex stages and whether a piece that is
/// already a whole vocab entry skips the merges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PreTokenizer {
    pub regexes: Vec<&'static str>,
    pub ignore_merges: bool,
    /// The model type's BOS default when `tokenizer.ggml.add_bos_token` is absent.
    pub add_bos: bool,
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` value (`None` = key absent), or `Unsupported`.
pub(crate) fn pre_tokenizer(pre: Option<&str>) -> Result<PreTokenizer, EngineError> {
    let p = |regexes: Vec<&'static str>, ignore_merges, add_bos| PreTokenizer { regexes, ignore_merges, add_bos };
    Ok(match pre {
        // llama.cpp's fallback for files without a (known) pre value.
        None | Some("default") => p(
            vec![r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"],
            false,
            false,
        ),
        Some("gpt-2") => p(vec![GPT2], false, false),
        Some("smollm" | "starcoder" | "refact" | "command-r") => p(vec![r"\p{N}", GPT2], false, false),
        Some("llama3" | "llama-v3" | "llama-bpe") => p(vec![LLAMA3], true, true),
        Some("qwen2" | "deepseek-r1-qwen") => p(vec![QWEN2], false, false),
        Some(other) => {
            return Err(EngineError::Unsupported(format!(
                "tokenizer.ggml.pre = `{other}` is not supported (supported: default, gpt-2, smollm, \
                 starcoder, refact, command-r, llama3, llama-v3, llama-bpe, qwen2, deepseek-r1-qwen)"
            )))
        }
    })
}

/// GPT-2's reversible map from the 256 byte values to printable chars.
pub(crate) fn byte_to_char() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next_free = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next_free).unwrap_or('\u{FFFD}');
            next_free += 1;
            c
        };
    }
    table
}

/// The inverse of [`byte_to_char`].
pub(crate) fn char_to_byte() -> HashMap<char, u8> {
    byte_to_char().iter().enumerate().map(|(b, c)| (*c, b as u8)).collect()
}

/// The bytes a byte-level token's text stands for (chars outside the alphabet count as their UTF-8).
pub(crate) fn token_bytes(text: &str, inverse: &HashMap<char, u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match inverse.get(&c) {
            Some(b) => out.push(*b),
            None => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out
}

/// A byte-level BPE encoder for plain text (special tokens are split off before it is called).
pub(crate) struct ByteLevelBpe {
    inner: tokenizers::Tokenizer,
}

impl ByteLevelBpe {
    /// `tokens` in id order; `merges` as GGUF stores them ("left right").
    pub fn new(tokens: &[String], merges: &[&str], pre: &PreTokenizer) -> Result<Self, EngineError> {
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
        let mut pairs = Vec::with_capacity(merges.len());
        for (i, m) in merges.iter().enumerate() {
            // The separator is the first space after the first char (a token may itself be " ").
            let first_len = m.chars().next().map(char::len_utf8).unwrap_or(0);
            let split = m.get(first_len..).and_then(|rest| rest.find(' ')).map(|p| p + first_len);
            match split {
                Some(p) => pairs.push((m[..p].to_string(), m[p + 1..].to_string())),
                None => {
                    return Err(EngineError::Load(format!(
                        "tokenizer.ggml.merges[{i}] = {m:?} is not two tokens separated by a space"
                    )))
                }
            }
        }
        let model = BPE::builder()
            .vocab_and_merges(vocab, pairs)
            .ignore_merges(pre.ignore_merges)
            .build()
            .map_err(|e| EngineError::Load(format!("tokenizer merges: {e}")))?;
        let mut stages: Vec<PreTokenizerWrapper> = Vec::with_capacity(pre.regexes.len() + 1);
        for r in &pre.regexes {
            let split = Split::new(SplitPattern::Regex(r.to_string()), SplitDelimiterBehavior::Isolated, false)
                .map_err(|e| EngineError::Internal(format!("pre-tokenizer regex {r:?}: {e}")))?;
            stages.push(split.into());
        }
        stages.push(ByteLevel::new(false, false, false).into());
        let mut inner = tokenizers::Tokenizer::new(model);
        inner.with_pre_tokenizer(Some(Sequence::new(stages)));
        Ok(Self { inner })
    }

    /// Append the ids of `text` (no special-token parsing) to `out`.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<(), EngineError> {
        if text.is_empty() {
            return Ok(());
        }
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| EngineError::Internal(format!("byte-level BPE failed: {e}")))?;
        out.extend_from_slice(enc.get_ids());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_alphabet_is_gpt2s() {
        let t = byte_to_char();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'A' as usize], 'A');
        let inv = char_to_byte();
        assert_eq!(inv.len(), 256);
        assert_eq!(token_bytes("ĠHello", &inv), b" Hello");
    }

    #[test]
    fn unknown_pre_is_refused_by_name() {
        let err = pre_tokenizer(Some("falcon")).unwrap_err();
        assert!(matches!(&err, EngineError::Unsupported(m) if m.contains("`falcon`")), "{err}");
        assert!(pre_tokenizer(Some("smollm")).is_ok());
        assert!(pre_tokenizer(Some("llama-bpe")).unwrap().ignore_merges);
    }

    #[test]
    fn every_accepted_pre_compiles_and_splits() {
        let alphabet = byte_to_char();
        let tokens: Vec<String> = alphabet.iter().map(|c| c.to_string()).collect();
        let text = "Hi  there's 12345\n\nok!";
        for pre in [None, Some("default"), Some("gpt-2"), Some("smollm"), Some("llama3"), Some("llama-bpe"), Some("qwen2")] {
            let p = pre_tokenizer(pre).unwrap();
            let bpe = ByteLevelBpe::new(&tokens, &[], &p).unwrap();
            let mut ids = vec![];
            bpe.encode(text, &mut ids).unwrap();
            // No merges: one id per byte, in order.
            let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
            assert_eq!(bytes, text.as_bytes(), "pre {pre:?}");
        }
    }
}
