//! Turning a stream of token bytes into safe text deltas: [`Utf8Stream`] holds back a token's
//! incomplete multi-byte character until it completes (invalid bytes become U+FFFD), and
//! [`StopMatcher`] cuts the output right before the first stop string and holds back any tail
//! that could still grow into one, so neither a partial character nor a partial stop string
//! ever reaches a client.

/// Incremental UTF-8 decoder: bytes in, complete characters out.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes and returns every character that is now complete. An incomplete sequence
    /// at the end stays pending; invalid bytes come out as U+FFFD.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // `valid` is valid UTF-8 by construction; lossy never replaces here.
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[n..];
                        }
                        None => {
                            rest = after;
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Whether bytes of an unfinished character are waiting.
    #[cfg(test)]
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the stream: whatever is still pending comes out as U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

/// What [`StopMatcher::push`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopOutput {
    /// Text that is now safe to send.
    pub text: String,
    /// A stop string matched: `text` ends right before it and generation must end.
    pub stopped: bool,
}

/// Finds stop strings in streamed text.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        let stops = stops.iter().filter(|s| !s.is_empty()).cloned().collect();
        Self { stops, held: String::new() }
    }

    /// Adds text; returns the part that can be sent now.
    pub fn push(&mut self, text: &str) -> StopOutput {
        self.held.push_str(text);
        if let Some(at) = self.first_match() {
            let out = self.held[..at].to_string();
            self.held.clear();
            return StopOutput { text: out, stopped: true };
        }
        let keep = self.partial_tail_len();
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopOutput { text: out, stopped: false }
    }

    /// Ends the stream without a match: releases whatever was held back.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Byte offset in `held` of the earliest match of any stop string.
    fn first_match(&self) -> Option<usize> {
        self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min()
    }

    /// Length of the longest suffix of `held` that is a proper prefix of some stop string.
    fn partial_tail_len(&self) -> usize {
        let mut best = 0;
        for stop in &self.stops {
            // Candidate suffixes start at char boundaries of `held`, longest first.
            let max = stop.len().saturating_sub(1).min(self.held.len());
            for (start, _) in self.held.char_indices() {
                let len = self.held.len() - start;
                if len > max || len <= best {
                    continue;
                }
                if stop.as_bytes().starts_with(&self.held.as_bytes()[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stops(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    /// Feeds `pieces` one by one; returns the deltas and whether a stop matched.
    fn run(stop: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut m = StopMatcher::new(&stops(stop));
        let mut out = Vec::new();
        for p in pieces {
            let o = m.push(p);
            out.push(o.text);
            if o.stopped {
                return (out, true);
            }
        }
        out.push(m.finish());
        (out, false)
    }

    #[test]
    fn utf8_holds_partial_characters() {
        let mut u = Utf8Stream::new();
        let snow = "é☃😀".as_bytes();
        let mut out = String::new();
        for b in snow {
            let piece = u.push(&[*b]);
            // Every piece is whole characters only.
            assert!(piece.chars().all(|c| c != char::REPLACEMENT_CHARACTER));
            out.push_str(&piece);
        }
        assert_eq!(out, "é☃😀");
        assert!(!u.has_pending());
        assert_eq!(u.push(&[0xF0, 0x9F]), "");
        assert!(u.has_pending());
        assert_eq!(u.push(&[0x98, 0x80, b'a']), "😀a");
    }

    #[test]
    fn utf8_invalid_bytes_become_replacement() {
        let mut u = Utf8Stream::new();
        assert_eq!(u.push(&[b'a', 0xFF, b'b']), "a\u{FFFD}b");
        // A start byte followed by a non-continuation byte.
        assert_eq!(u.push(&[0xE2, b'x']), "\u{FFFD}x");
        assert_eq!(u.push(&[0xE2, 0x98]), "");
        assert_eq!(u.finish(), "\u{FFFD}");
        assert!(!u.has_pending());
    }

    #[test]
    fn stop_cut_exactly_across_pieces() {
        let (out, stopped) = run(&["###"], &["Hello ", "wor", "ld#", "#", "# more"]);
        assert!(stopped);
        assert_eq!(out.concat(), "Hello world");
        // The '#' of "ld#" was held back, never sent.
        assert_eq!(out, vec!["Hello ", "wor", "ld", "", ""]);
    }

    #[test]
    fn held_text_released_when_not_a_stop() {
        let (out, stopped) = run(&["###"], &["a#", "#b", "c"]);
        assert!(!stopped);
        assert_eq!(out, vec!["a", "##b", "c", ""]);
        let (out, _) = run(&["END"], &["xE", "N"]);
        assert_eq!(out, vec!["x", "", "EN"], "released at finish");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let (out, stopped) = run(&["bar", "o b"], &["foo bar"]);
        assert!(stopped);
        assert_eq!(out.concat(), "fo");
    }

    #[test]
    fn stop_inside_one_piece_and_at_start() {
        assert_eq!(run(&["\n"], &["line one\nline two"]).0.concat(), "line one");
        let (out, stopped) = run(&["<"], &["<tag>"]);
        assert!(stopped);
        assert_eq!(out.concat(), "");
    }

    #[test]
    fn multibyte_stop_and_text() {
        let (out, stopped) = run(&["終わり"], &["日本", "語終", "わ", "り!"]);
        assert!(stopped);
        assert_eq!(out.concat(), "日本語");
        assert!(out.iter().all(|d| !d.contains('終')));
    }

    #[test]
    fn empty_stops_ignored_and_no_stops_passes_through() {
        let (out, stopped) = run(&[""], &["abc", "def"]);
        assert!(!stopped);
        assert_eq!(out, vec!["abc", "def", ""]);
    }

    #[test]
    fn no_prefix_of_stop_ever_leaks_in_any_split() {
        let text = "say abab STOP now";
        let stop = ["abSTOPx", "STOP"];
        // Every two-way and three-way split of the text.
        for i in 0..=text.len() {
            for j in i..=text.len() {
                let pieces = [&text[..i], &text[i..j], &text[j..]];
                let (out, stopped) = run(&stop, &pieces);
                assert!(stopped);
                assert_eq!(out.concat(), "say abab ", "split {i} {j}");
                let mut sent = String::new();
                for d in &out {
                    sent.push_str(d);
                    assert!("say abab ".starts_with(&sent), "leaked {sent:?} at split {i} {j}");
                }
            }
        }
    }
}
