//! Incremental Server-Sent Events parser: bytes in, `data:` payloads out.

/// One complete `data` payload of an event, or the `[DONE]` terminator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseEvent {
    /// The event's data lines joined with `\n`.
    Data(String),
    /// `data: [DONE]`.
    Done,
}

/// Buffers partial lines across chunks; an event is emitted at the blank line that ends it.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    data: Vec<String>,
}

impl SseParser {
    /// A parser with empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds a chunk of the response body and returns the events it completed, in order.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=pos).collect();
            let mut line = &line[..line.len() - 1];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            self.line(&String::from_utf8_lossy(line), &mut out);
        }
        out
    }

    /// Flushes an event left open when the body ended without a trailing blank line.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let text = String::from_utf8_lossy(&rest)
                .trim_end_matches('\r')
                .to_string();
            self.line(&text, &mut out);
        }
        self.line("", &mut out);
        out
    }

    fn line(&mut self, line: &str, out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if !self.data.is_empty() {
                let data = std::mem::take(&mut self.data).join("\n");
                out.push(if data.trim() == "[DONE]" {
                    SseEvent::Done
                } else {
                    SseEvent::Data(data)
                });
            }
        } else if let Some(rest) = line.strip_prefix("data:") {
            self.data
                .push(rest.strip_prefix(' ').unwrap_or(rest).to_string());
        }
        // Comments (":...") and other fields (event:, id:, retry:) carry nothing we measure.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_crlf() {
        let mut p = SseParser::new();
        assert!(p.feed(b"data: {\"a\"").is_empty());
        assert!(p.feed(b":1}\r").is_empty());
        let ev = p.feed(b"\n\r\n: keep-alive\n\ndata: x\ndata: y\n\ndata: [DONE]\n\n");
        assert_eq!(
            ev,
            vec![
                SseEvent::Data("{\"a\":1}".into()),
                SseEvent::Data("x\ny".into()),
                SseEvent::Done
            ]
        );
        assert!(p.finish().is_empty());
    }

    #[test]
    fn unterminated_event_flushed_at_end() {
        let mut p = SseParser::new();
        assert!(p.feed(b"event: message\ndata:no-space").is_empty());
        assert_eq!(p.finish(), vec![SseEvent::Data("no-space".into())]);
    }
}
