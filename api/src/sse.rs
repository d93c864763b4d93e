//! Server-sent events for streaming answers: turns a generation receiver into a
//! `text/event-stream` body of `data: {json}\n\n` events ending with `data: [DONE]`. The body
//! stream owns the receiver, so a client that disconnects drops it and cancels the generation.
//! An error after the stream started is sent as `data: {"error":{...}}` and ends the stream.
//! One response may chain several generations (a completions request with several prompts):
//! after each `Done` the maker is asked for the next one, which starts only then.

use std::collections::VecDeque;
use std::convert::Infallible;

use ai_sandbox_engine::{EngineError, FinishReason, GenEvent, Timings, TokenLogprob, Usage};
use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::Response;
use serde_json::Value;
use tokio::sync::mpsc::Receiver;

use crate::error::ApiError;

/// What `ChunkMaker::next` gives: the chunks that open the next generation, and its receiver.
pub type NextGeneration = Result<(Vec<Value>, Receiver<GenEvent>), EngineError>;

/// Builds the JSON chunks of one endpoint's stream.
pub trait ChunkMaker: Send + 'static {
    /// Chunks sent before any token (e.g. the role chunk).
    fn start(&mut self) -> Vec<Value>;
    /// Chunks for newly generated text (may be none, e.g. empty text and no logprobs).
    fn delta(&mut self, text: String, logprobs: Vec<TokenLogprob>) -> Vec<Value>;
    /// The finish chunk, then the usage chunk when asked for (after the last generation).
    fn done(&mut self, finish: FinishReason, usage: Usage, timings: Timings) -> Vec<Value>;
    /// Called after `done`: the chunks that open the next generation of this response and its
    /// receiver, or `None` when the response is complete (the default: one generation).
    fn next(&mut self) -> Option<NextGeneration> {
        None
    }
}

struct SseState<M> {
    rx: Option<Receiver<GenEvent>>,
    maker: M,
    queue: VecDeque<Bytes>,
    started: bool,
    finished: bool,
}

impl<M> SseState<M> {
    fn push(&mut self, v: &Value) {
        self.queue.push_back(Bytes::from(format!("data: {v}\n\n")));
    }
    fn fail(&mut self, e: EngineError) {
        let api = ApiError::from(e);
        tracing::warn!(message = %api.object.message, "generation failed after the stream started");
        let v = serde_json::to_value(api.envelope()).unwrap_or(Value::Null);
        self.push(&v);
        self.finished = true;
        self.rx = None;
    }
}

/// A `text/event-stream` response over a generation.
pub fn sse_response<M: ChunkMaker>(rx: Receiver<GenEvent>, maker: M) -> Response {
    let st = SseState {
        rx: Some(rx),
        maker,
        queue: VecDeque::new(),
        started: false,
        finished: false,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(b) = st.queue.pop_front() {
                return Some((Ok::<Bytes, Infallible>(b), st));
            }
            if st.finished {
                return None;
            }
            if !st.started {
                st.started = true;
                for v in st.maker.start() {
                    st.push(&v);
                }
                continue;
            }
            let ev = match st.rx.as_mut() {
                Some(rx) => rx.recv().await,
                None => return None,
            };
            match ev {
                Some(GenEvent::Delta { text, logprobs }) => {
                    for v in st.maker.delta(text, logprobs) {
                        st.push(&v);
                    }
                }
                Some(GenEvent::Done {
                    finish_reason,
                    usage,
                    timings,
                }) => {
                    for v in st.maker.done(finish_reason, usage, timings) {
                        st.push(&v);
                    }
                    // Drop the finished generation's receiver before the next one starts.
                    st.rx = None;
                    match st.maker.next() {
                        Some(Ok((chunks, rx))) => {
                            for v in chunks {
                                st.push(&v);
                            }
                            st.rx = Some(rx);
                        }
                        Some(Err(e)) => st.fail(e),
                        None => {
                            st.queue.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                            st.finished = true;
                        }
                    }
                }
                Some(GenEvent::Error(e)) => st.fail(e),
                None => st.fail(EngineError::Unavailable),
            }
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    // Tell reverse proxies (nginx) not to buffer the stream.
    h.insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    resp
}
