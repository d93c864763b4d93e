//! SentencePiece BPE (`tokenizer.ggml.model = "llama"`, used by Llama 2 and Mistral GGUFs):
//! spaces become '▁', adjacent pieces are merged best-score-first while the merged text is a
//! vocab entry, and anything left that is not in the vocab falls back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use crate::EngineError;

/// SentencePiece's visible space.
pub(crate) const SPACE: char = '\u{2581}';

/// Parse a byte token's text, `<0xAB>` -> 0xAB.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The merge table of a SentencePiece vocab.
pub(crate) struct Spm {
    /// Mergeable entries (normal, user-defined, unknown, unused tokens; not control or byte tokens).
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    byte_ids: [Option<u32>; 256],
    unk: Option<u32>,
}

/// A candidate merge of the symbols at `left` and `right`.
struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score.total_cmp(&other.score).then_with(|| other.left.cmp(&self.left))
    }
}

/// A run of the text, linked to its neighbours; `len == 0` once merged into its left neighbour.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    /// `mergeable[i]` says whether token `i` may be produced by merging.
    pub fn new(tokens: &[String], scores: Vec<f32>, mergeable: &[bool], unk: Option<u32>) -> Self {
        let mut ids = HashMap::with_capacity(tokens.len());
        let mut byte_ids = [None; 256];
        for (i, t) in tokens.iter().enumerate() {
            if let Some(b) = parse_byte_token(t) {
                byte_ids[b as usize].get_or_insert(i as u32);
            }
            if mergeable.get(i).copied().unwrap_or(false) {
                ids.entry(t.clone()).or_insert(i as u32);
            }
        }
        Self { ids, scores, byte_ids, unk }
    }

    /// Append the ids of `text` (already '▁'-escaped, no special-token parsing) to `out`.
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<(), EngineError> {
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, c) in text.char_indices() {
            let idx = symbols.len();
            symbols.push(Symbol {
                start,
                len: c.len_utf8(),
                prev: idx.checked_sub(1),
                next: Some(idx + 1),
            });
        }
        let Some(last) = symbols.last_mut() else { return Ok(()) };
        last.next = None;

        let mut queue = BinaryHeap::new();
        for i in 1..symbols.len() {
            self.push_bigram(text, &symbols, i - 1, i, &mut queue);
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            // Stale: one side has changed since this pair was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
                continue;
            }
            symbols[b.left].len += r.len;
            symbols[b.left].next = r.next;
            symbols[b.right].len = 0;
            if let Some(n) = r.next {
                symbols[n].prev = Some(b.left);
            }
            if let Some(p) = l.prev {
                self.push_bigram(text, &symbols, p, b.left, &mut queue);
            }
            if let Some(n) = r.next {
                self.push_bigram(text, &symbols, b.left, n, &mut queue);
            }
        }

        let mut cur = Some(0);
        while let Some(i) = cur {
            let s = symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match self.ids.get(piece) {
                Some(id) => out.push(*id),
                None => {
                    for byte in piece.bytes() {
                        match self.byte_ids[byte as usize].or(self.unk) {
                            Some(id) => out.push(id),
                            None => {
                                return Err(EngineError::invalid(
                                    format!("the model's vocabulary cannot represent {piece:?} (no byte or unknown token)"),
                                    None,
                                ))
                            }
                        }
                    }
                }
            }
            cur = s.next;
        }
        Ok(())
    }

    fn push_bigram(&self, text: &str, symbols: &[Symbol], left: usize, right: usize, queue: &mut BinaryHeap<Bigram>) {
        let (l, r) = (symbols[left], symbols[right]);
        let merged = &text[l.start..r.start + r.len];
        if let Some(&id) = self.ids.get(merged) {
            let score = self.scores.get(id as usize).copied().unwrap_or(0.0);
            queue.push(Bigram { left, right, score, len: merged.len() });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spm(vocab: &[(&str, f32)]) -> Spm {
        let tokens: Vec<String> = vocab.iter().map(|(t, _)| t.to_string()).collect();
        let scores = vocab.iter().map(|(_, s)| *s).collect();
        let mergeable: Vec<bool> = tokens.iter().map(|t| parse_byte_token(t).is_none()).collect();
        Spm::new(&tokens, scores, &mergeable, Some(0))
    }

    #[test]
    fn merges_best_score_first() {
        // "abc": "ab" (score -1) beats "bc" (score -2), so the result is ab + c, not a + bc.
        let s = spm(&[("<unk>", 0.0), ("a", -10.0), ("b", -10.0), ("c", -10.0), ("ab", -1.0), ("bc", -2.0)]);
        let mut out = vec![];
        s.encode("abc", &mut out).unwrap();
        assert_eq!(out, vec![4, 3]);
    }

    #[test]
    fn unknown_chars_fall_back_to_bytes_then_unk() {
        let s = spm(&[("<unk>", 0.0), ("<0xC3>", 0.0), ("<0xA9>", 0.0), ("x", -1.0)]);
        let mut out = vec![];
        s.encode("xé", &mut out).unwrap();
        assert_eq!(out, vec![3, 1, 2]);
        let mut out = vec![];
        s.encode("z", &mut out).unwrap();
        assert_eq!(out, vec![0], "no <0x7A> token: unknown");
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0x0AA>"), None);
    }
}
