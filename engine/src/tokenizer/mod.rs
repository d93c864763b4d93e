//! Text <-> token ids, built from a GGUF's `tokenizer.ggml.*` metadata. Owns special-token
//! parsing (control and user-defined tokens written literally in the text), BOS/EOS ids, and the
//! exact bytes each token contributes to the output. Byte-level BPE lives in `bpe`,
//! SentencePiece BPE in `spm`; any other `tokenizer.ggml.model`/`pre` is refused. A Hugging Face
//! folder's `tokenizer.json` is run by the `tokenizers` crate (`hf`, [`Tokenizer::from_hf_files`]).

mod bpe;
mod hf;
mod spm;

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use crate::gguf::GgufFile;
use crate::EngineError;

/// GGUF token types (llama.cpp's `llama_token_type`).
const TYPE_NORMAL: i32 = 1;
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;
const TYPE_UNUSED: i32 = 5;
const TYPE_BYTE: i32 = 6;

/// Control tokens that end a turn in the chat formats we know of; generation stops on them
/// (when the vocab marks them control or user-defined) in addition to the metadata's ids.
const END_OF_TURN: &[&str] = &[
    "<|im_end|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "<|end_of_turn|>",
];

enum Kind {
    ByteLevel(Box<bpe::ByteLevelBpe>),
    Spm { spm: Box<spm::Spm>, add_space_prefix: bool },
    /// A tokenizer.json pipeline; it parses special tokens itself. `strip_first_space`: its decoder
    /// drops the leading space of a text (SentencePiece-style prefix).
    Hf { tok: Box<hf::HfTokenizer>, strip_first_space: bool },
}

/// A model's tokenizer. Cheap to share (`Send + Sync`); all methods take `&self`.
pub struct Tokenizer {
    kind: Kind,
    tokens: Vec<String>,
    types: Vec<i32>,
    bytes: Vec<Vec<u8>>,
    specials: SpecialMatcher,
    bos: Option<u32>,
    add_bos: bool,
    eos: Vec<u32>,
}

impl Tokenizer {
    /// Build the tokenizer the file's metadata describes. `Unsupported` names an unknown
    /// `tokenizer.ggml.model` or `tokenizer.ggml.pre`; `Load` reports inconsistent metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Tokenizer, EngineError> {
        let model = gguf.get_str("tokenizer.ggml.model")?;
        let tokens: Vec<String> =
            gguf.get_str_array("tokenizer.ggml.tokens")?.into_iter().map(str::to_string).collect();
        let n = tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(EngineError::Load(format!("tokenizer.ggml.tokens has {n} entries")));
        }
        let types = match gguf.value("tokenizer.ggml.token_type") {
            Some(v) => int_array(v, "tokenizer.ggml.token_type")?,
            None => vec![TYPE_NORMAL; n],
        };
        if types.len() != n {
            return Err(EngineError::Load(format!(
                "tokenizer.ggml.token_type has {} entries for {n} tokens",
                types.len()
            )));
        }
        let id = |key: &str| -> Result<Option<u32>, EngineError> {
            match gguf.opt_u64(key)? {
                Some(i) if (i as usize) < n => Ok(Some(i as u32)),
                // Some converters write -1 / out-of-range ids for "none"; treat them as absent.
                _ => Ok(None),
            }
        };
        let bos = id("tokenizer.ggml.bos_token_id")?;
        let unk = id("tokenizer.ggml.unknown_token_id")?;
        let meta_eos = [
            id("tokenizer.ggml.eos_token_id")?,
            id("tokenizer.ggml.eot_token_id")?,
            id("tokenizer.ggml.eom_token_id")?,
        ];

        let (kind, bytes, default_bos) = match model {
            "gpt2" => {
                let pre = bpe::pre_tokenizer(gguf.opt_str("tokenizer.ggml.pre")?)?;
                let merges = gguf.get_str_array("tokenizer.ggml.merges")?;
                let inverse = bpe::char_to_byte();
                let bytes = tokens
                    .iter()
                    .zip(&types)
                    .map(|(t, ty)| match *ty {
                        TYPE_CONTROL | TYPE_USER_DEFINED => t.as_bytes().to_vec(),
                        _ => bpe::token_bytes(t, &inverse),
                    })
                    .collect();
                let kind = Kind::ByteLevel(Box::new(bpe::ByteLevelBpe::new(&tokens, &merges, &pre)?));
                (kind, bytes, pre.add_bos)
            }
            "llama" => {
                let scores = match gguf.value("tokenizer.ggml.scores") {
                    Some(v) => float_array(v, "tokenizer.ggml.scores")?,
                    None => return Err(EngineError::Load("GGUF metadata key `tokenizer.ggml.scores` is missing".into())),
                };
                if scores.len() != n {
                    return Err(EngineError::Load(format!(
                        "tokenizer.ggml.scores has {} entries for {n} tokens",
                        scores.len()
                    )));
                }
                let add_space_prefix = gguf.opt_bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
                let mergeable: Vec<bool> = types
                    .iter()
                    .map(|t| matches!(*t, TYPE_NORMAL | TYPE_USER_DEFINED | TYPE_UNKNOWN | TYPE_UNUSED))
                    .collect();
                let bytes = tokens
                    .iter()
                    .zip(&types)
                    .map(|(t, ty)| match (*ty, spm::parse_byte_token(t)) {
                        (TYPE_BYTE, Some(b)) => vec![b],
                        (TYPE_CONTROL | TYPE_USER_DEFINED | TYPE_UNKNOWN, _) => t.as_bytes().to_vec(),
                        _ => t.replace(spm::SPACE, " ").into_bytes(),
                    })
                    .collect();
                let kind = Kind::Spm { spm: Box::new(spm::Spm::new(&tokens, scores, &mergeable, unk)), add_space_prefix };
                (kind, bytes, true)
            }
            other => {
                return Err(EngineError::Unsupported(format!(
                    "tokenizer.ggml.model = `{other}` is not supported (supported: gpt2, llama)"
                )))
            }
        };

        let mut eos: Vec<u32> = meta_eos.into_iter().flatten().collect();
        for (i, (t, ty)) in tokens.iter().zip(&types).enumerate() {
            if matches!(*ty, TYPE_CONTROL | TYPE_USER_DEFINED) && END_OF_TURN.contains(&t.as_str()) {
                eos.push(i as u32);
            }
        }
        let mut seen = std::collections::HashSet::new();
        eos.retain(|id| seen.insert(*id));

        let add_bos = gguf.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(default_bos);
        let specials = SpecialMatcher::new(&tokens, &types);
        Ok(Tokenizer { kind, tokens, types, bytes, specials, bos, add_bos, eos })
    }

    /// Special/control tokens written literally in `text` (e.g. "<|im_start|>") are parsed as those tokens (as
    /// llama.cpp does for templated prompts). Prepends BOS when `add_bos` and the model has one, unless the text
    /// already starts with it.
    pub fn encode(&self, text: &str, add_bos: bool) -> Result<Vec<u32>, EngineError> {
        let mut out = match &self.kind {
            Kind::Hf { tok, .. } => tok.encode(text)?,
            _ => self.encode_pieces(text)?,
        };
        if let (true, Some(bos)) = (add_bos, self.bos) {
            if out.first() != Some(&bos) {
                out.insert(0, bos);
            }
        }
        Ok(out)
    }

    /// GGUF tokenizers: special tokens split off by [`SpecialMatcher`], the rest by the model.
    fn encode_pieces(&self, text: &str) -> Result<Vec<u32>, EngineError> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        // SentencePiece adds its space prefix at the start and after every special token.
        let mut after_special = true;
        for piece in self.specials.split(text) {
            match piece {
                Piece::Special(id) => {
                    out.push(id);
                    after_special = true;
                }
                Piece::Text(t) => {
                    match &self.kind {
                        Kind::ByteLevel(b) => b.encode(t, &mut out)?,
                        Kind::Spm { spm, add_space_prefix } => {
                            let mut s = String::with_capacity(t.len() + 3);
                            if *add_space_prefix && after_special {
                                s.push(spm::SPACE);
                            }
                            s.extend(t.chars().map(|c| if c == ' ' { spm::SPACE } else { c }));
                            spm.encode(&s, &mut out)?;
                        }
                        Kind::Hf { tok, .. } => out.extend(tok.encode(t)?),
                    }
                    after_special = false;
                }
            }
        }
        Ok(out)
    }

    /// Whether the model wants BOS prepended (tokenizer.ggml.add_bos_token, else the model-type default).
    pub fn add_bos_default(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Text of the ids (lossy UTF-8 of the concatenated token bytes; special tokens render as their text).
    /// SentencePiece's prefix space is dropped from the first token. Err for id >= vocab_size.
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        let mut buf = Vec::with_capacity(ids.len() * 4);
        for (i, &id) in ids.iter().enumerate() {
            let bytes = self.token_bytes(id).ok_or_else(|| {
                EngineError::invalid(
                    format!("token id {id} is out of range (vocabulary size {})", self.vocab_size()),
                    None,
                )
            })?;
            let strip = i == 0
                && matches!(
                    self.kind,
                    Kind::Spm { add_space_prefix: true, .. } | Kind::Hf { strip_first_space: true, .. }
                )
                && self.types[id as usize] == TYPE_NORMAL;
            match (strip, bytes.split_first()) {
                (true, Some((b' ', rest))) => buf.extend_from_slice(rest),
                _ => buf.extend_from_slice(bytes),
            }
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// The exact bytes a token contributes to the output (byte-level/byte-fallback decoded, SPM '▁' -> ' ').
    /// Control tokens give their text.
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.bytes.get(id as usize).map(Vec::as_slice)
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The BOS id, when the metadata names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// Every id that ends generation: eos, eot, eom ids from metadata plus end-of-turn controls the vocab marks
    /// (e.g. <|im_end|>, <|eot_id|>, <|end|>), deduplicated.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos
    }

    /// The vocab string (for bos_token/eos_token in templates).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// Whether `id` is a control token (BOS, EOS, `<|im_start|>`...).
    pub fn is_control(&self, id: u32) -> bool {
        self.types.get(id as usize) == Some(&TYPE_CONTROL)
    }
}

/// A run of the input: plain text, or a special token written literally.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(&'a str),
    Special(u32),
}

/// Finds control and user-defined token texts in a string, leftmost first, longest first.
struct SpecialMatcher {
    /// By first byte: (text, id), longest text first.
    by_first_byte: HashMap<u8, Vec<(String, u32)>>,
}

impl SpecialMatcher {
    fn new(tokens: &[String], types: &[i32]) -> Self {
        let mut by_first_byte: HashMap<u8, Vec<(String, u32)>> = HashMap::new();
        for (i, (t, ty)) in tokens.iter().zip(types).enumerate() {
            if matches!(*ty, TYPE_CONTROL | TYPE_USER_DEFINED) {
                if let Some(&b) = t.as_bytes().first() {
                    by_first_byte.entry(b).or_default().push((t.clone(), i as u32));
                }
            }
        }
        for v in by_first_byte.values_mut() {
            // Longest first; equal texts keep the lowest id.
            v.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        }
        Self { by_first_byte }
    }

    fn split<'a>(&self, text: &'a str) -> Vec<Piece<'a>> {
        let mut pieces = Vec::new();
        let bytes = text.as_bytes();
        let (mut start, mut i) = (0, 0);
        while i < bytes.len() {
            let found = self.by_first_byte.get(&bytes[i]).and_then(|cands| {
                cands.iter().find(|(t, _)| bytes[i..].starts_with(t.as_bytes()))
            });
            match found {
                // Token texts are whole UTF-8 strings, so a match starts and ends on char boundaries.
                Some((t, id)) => {
                    if start < i {
                        pieces.push(Piece::Text(&text[start..i]));
                    }
                    pieces.push(Piece::Special(*id));
                    i += t.len();
                    start = i;
                }
                None => i += 1,
            }
        }
        if start < bytes.len() {
            pieces.push(Piece::Text(&text[start..]));
        }
        pieces
    }
}

fn int_array(v: &Value, key: &str) -> Result<Vec<i32>, EngineError> {
    let Value::Array(items) = v else {
        return Err(EngineError::Load(format!("GGUF metadata key `{key}`: expected an array")));
    };
    items
        .iter()
        .map(|x| match x {
            Value::I32(i) => Ok(*i),
            Value::U32(i) => i32::try_from(*i).map_err(|_| bad_elem(key)),
            Value::I8(i) => Ok(*i as i32),
            Value::U8(i) => Ok(*i as i32),
            Value::I16(i) => Ok(*i as i32),
            Value::U16(i) => Ok(*i as i32),
            Value::I64(i) => i32::try_from(*i).map_err(|_| bad_elem(key)),
            _ => Err(bad_elem(key)),
        })
        .collect()
}

fn float_array(v: &Value, key: &str) -> Result<Vec<f32>, EngineError> {
    let Value::Array(items) = v else {
        return Err(EngineError::Load(format!("GGUF metadata key `{key}`: expected an array")));
    };
    items
        .iter()
        .map(|x| match x {
            Value::F32(f) => Ok(*f),
            Value::F64(f) => Ok(*f as f32),
            _ => Err(bad_elem(key)),
        })
        .collect()
}

fn bad_elem(key: &str) -> EngineError {
    EngineError::Load(format!("GGUF metadata key `{key}`: an element has the wrong type"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_split_is_leftmost_longest() {
        let tokens: Vec<String> = ["a", "<|x|>", "<|x|>y", "<s>"].iter().map(|s| s.to_string()).collect();
        let types = [TYPE_NORMAL, TYPE_CONTROL, TYPE_USER_DEFINED, TYPE_CONTROL];
        let m = SpecialMatcher::new(&tokens, &types);
        assert_eq!(
            m.split("é<|x|>y<|x|><s>z"),
            vec![Piece::Text("é"), Piece::Special(2), Piece::Special(1), Piece::Special(3), Piece::Text("z")]
        );
        assert_eq!(m.split("plain a"), vec![Piece::Text("plain a")]);
        assert!(m.split("").is_empty());
    }
}
