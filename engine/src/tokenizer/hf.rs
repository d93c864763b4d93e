//! The tokenizer of a Hugging Face model folder: `tokenizer.json` run by the `tokenizers` crate
//! (the same code transformers' fast tokenizers run, added/special tokens included), BOS/EOS from
//! `tokenizer_config.json` and `generation_config.json`, and the exact bytes of every token taken
//! from the decoder the file declares: byte-level (GPT-2 alphabet: llama 3, qwen2) or
//! SentencePiece-style (`▁` for space, `<0xNN>` byte fallback: llama 2, mistral). Other decoders
//! are refused, since the engine streams text token by token from those bytes.

use std::path::Path;

use serde_json::Value;

use super::{bpe, Kind, SpecialMatcher, Tokenizer, END_OF_TURN, TYPE_BYTE, TYPE_CONTROL, TYPE_NORMAL, TYPE_UNUSED, TYPE_USER_DEFINED};
use crate::hf::{GenerationConfig, TokenizerConfig};
use crate::EngineError;

/// SentencePiece's word-boundary mark.
const SPACE: char = '\u{2581}';

/// A `tokenizers` pipeline for whole texts (it splits added tokens itself).
pub(crate) struct HfTokenizer {
    inner: tokenizers::Tokenizer,
}

impl HfTokenizer {
    pub(crate) fn encode(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        if text.is_empty() {
            return Ok(vec![]);
        }
        // No post-processor: the caller decides about BOS.
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| EngineError::Internal(format!("tokenizer.json pipeline failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }
}

/// How token strings map to output bytes, read from tokenizer.json's `decoder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decoding {
    ByteLevel,
    /// `▁` -> space; `<0xNN>` -> that byte when byte fallback is on; `strip_first`: the decoder
    /// drops the leading space of the text (Strip after Metaspace's prefix).
    Metaspace { byte_fallback: bool, strip_first: bool },
}

fn decoding(decoder: Option<&Value>) -> Result<Decoding, EngineError> {
    let ty = |d: &Value| d.get("type").and_then(Value::as_str).unwrap_or("").to_string();
    let Some(d) = decoder.filter(|d| !d.is_null()) else {
        return Err(EngineError::Unsupported("tokenizer.json has no decoder".into()));
    };
    let parts: Vec<&Value> = match ty(d).as_str() {
        "Sequence" => d.get("decoders").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default(),
        _ => vec![d],
    };
    let types: Vec<String> = parts.iter().map(|p| ty(p)).collect();
    if types.iter().any(|t| t == "ByteLevel") {
        return Ok(Decoding::ByteLevel);
    }
    let replaces_mark = parts.iter().any(|p| {
        ty(p) == "Replace"
            && p.get("pattern").and_then(|x| x.get("String")).and_then(Value::as_str) == Some("\u{2581}")
            && p.get("content").and_then(Value::as_str) == Some(" ")
    });
    let metaspace = types.iter().any(|t| t == "Metaspace");
    if replaces_mark || metaspace {
        let strip_first = parts.iter().any(|p| {
            ty(p) == "Strip" && p.get("start").and_then(Value::as_u64).unwrap_or(0) > 0
        }) || (metaspace
            && parts.iter().any(|p| {
                ty(p) == "Metaspace"
                    && p.get("prepend_scheme").and_then(Value::as_str).is_some_and(|s| s != "never")
            }));
        return Ok(Decoding::Metaspace { byte_fallback: types.iter().any(|t| t == "ByteFallback"), strip_first });
    }
    Err(EngineError::Unsupported(format!(
        "tokenizer.json decoder {types:?} (supported: ByteLevel, or SentencePiece-style Metaspace/Replace with ByteFallback)"
    )))
}

/// `<0xNN>` -> NN.
fn byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

impl Tokenizer {
    /// Builds the tokenizer of a Hugging Face model folder. `Load` for unreadable or inconsistent
    /// files, `Unsupported` for a decoder the engine can't stream.
    pub fn from_hf_files(
        tokenizer_json: &Path,
        tokenizer_config: Option<&Path>,
        generation_config: Option<&Path>,
    ) -> Result<Tokenizer, EngineError> {
        let load = |e: String| EngineError::Load(format!("{}: {e}", tokenizer_json.display()));
        let text = std::fs::read_to_string(tokenizer_json).map_err(|e| load(e.to_string()))?;
        let json: Value = serde_json::from_str(&text).map_err(|e| load(e.to_string()))?;
        let decoding = decoding(json.get("decoder"))?;
        let inner: tokenizers::Tokenizer = text.parse().map_err(|e| load(format!("{e}")))?;
        let tcfg = match tokenizer_config {
            Some(p) => TokenizerConfig::from_file(p)?,
            None => TokenizerConfig::default(),
        };
        let gcfg = match generation_config {
            Some(p) => GenerationConfig::from_file(p)?,
            None => GenerationConfig::default(),
        };

        let vocab = inner.get_vocab(true);
        let n = vocab.values().max().map_or(0, |&m| m as usize + 1);
        if n == 0 || n > u32::MAX as usize {
            return Err(load(format!("the vocabulary has {n} entries")));
        }
        let mut tokens = vec![String::new(); n];
        let mut types = vec![TYPE_UNUSED; n];
        for (t, &id) in &vocab {
            tokens[id as usize] = t.clone();
            types[id as usize] = TYPE_NORMAL;
        }
        for (id, added) in inner.get_added_tokens_decoder() {
            if let Some(ty) = types.get_mut(id as usize) {
                *ty = if added.special { TYPE_CONTROL } else { TYPE_USER_DEFINED };
            }
        }
        let inverse = bpe::char_to_byte();
        let bytes: Vec<Vec<u8>> = tokens
            .iter()
            .zip(types.iter_mut())
            .map(|(t, ty)| match (*ty, decoding) {
                (TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNUSED, _) => t.as_bytes().to_vec(),
                (_, Decoding::ByteLevel) => bpe::token_bytes(t, &inverse),
                (_, Decoding::Metaspace { byte_fallback, .. }) => match byte_token(t).filter(|_| byte_fallback) {
                    Some(b) => {
                        *ty = TYPE_BYTE;
                        vec![b]
                    }
                    None => t.replace(SPACE, " ").into_bytes(),
                },
            })
            .collect();

        let id_of = |t: &Option<String>| t.as_deref().and_then(|s| inner.token_to_id(s));
        // tokenizer_config.json decides (a null bos_token means none, as for qwen2, whose
        // generation_config still names one); generation_config.json only without it.
        let bos = match tokenizer_config {
            Some(_) => id_of(&tcfg.bos_token),
            None => gcfg.bos_token_id,
        }
        .filter(|&i| (i as usize) < n);
        // Without add_bos_token, the post-processor in tokenizer.json is what transformers runs.
        let add_bos = match (tcfg.add_bos_token, bos) {
            (Some(b), _) => b,
            (None, Some(b)) => inner
                .encode_fast("a", true)
                .map(|e| e.get_ids().first() == Some(&b))
                .map_err(|e| load(format!("post-processor: {e}")))?,
            (None, None) => false,
        };
        let mut eos: Vec<u32> = gcfg.eos_token_ids.clone();
        eos.extend(id_of(&tcfg.eos_token));
        for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            if matches!(*ty, TYPE_CONTROL | TYPE_USER_DEFINED) && END_OF_TURN.contains(&t.as_str()) {
                eos.push(i as u32);
            }
        }
        if let Some(bad) = eos.iter().find(|&&i| i as usize >= n) {
            return Err(EngineError::Load(format!(
                "eos token id {bad} is outside the vocabulary of {n} tokens (generation_config.json)"
            )));
        }
        let mut seen = std::collections::HashSet::new();
        eos.retain(|id| seen.insert(*id));

        let strip_first_space = matches!(decoding, Decoding::Metaspace { strip_first: true, .. });
        let specials = SpecialMatcher::new(&tokens, &types);
        Ok(Tokenizer {
            kind: Kind::Hf { tok: Box::new(HfTokenizer { inner }), strip_first_space },
            tokens,
            types,
            bytes,
            specials,
            bos,
            add_bos,
            eos,
        })
    }
}
