//! An in-process fake of the Linode API v4 for tests: an axum server on `127.0.0.1:0`
//! serving `/v4/...` from [`State`]. Every request is checked against the official spec
//! (`../shared/specs/linode-openapi-v4.189.0.yaml`), the bearer token, the `X-Filter` shape
//! and paging; problems are answered like Linode would (400/401/404 with `errors[]`) and
//! recorded as [`Violation`]s that tests assert are empty. Faults can be injected per
//! (method, path prefix).
//!
//! Use from a test crate with
//! `#[path = "support/fake_linode/mod.rs"] mod fake_linode;`.
#![allow(dead_code)]

pub mod filter;
pub mod spec;
mod state;

use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

#[allow(unused_imports)]
pub use state::{FakeInstance, Fault, FaultRule, RecordedRequest, State, Violation};

/// The token the fake accepts.
pub const FAKE_TOKEN: &str = "fake-linode-token-3f9c2b7a1e";

/// A running fake API. Dropping it stops the server.
pub struct FakeLinode {
    base_url: String,
    state: Arc<Mutex<State>>,
    _stop: tokio::sync::oneshot::Sender<()>,
    _thread: Option<std::thread::JoinHandle<()>>,
}

async fn handle(state: Arc<Mutex<State>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let bytes = to_bytes(body, 1 << 20).await.unwrap_or_default();
    let reply = {
        let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
        st.handle(
            parts.method.as_str(),
            parts.uri.path(),
            parts.uri.query(),
            header("authorization").as_deref(),
            header("content-type").as_deref(),
            header("x-filter").as_deref(),
            &bytes,
        )
    };
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, axum::Json(reply.body)).into_response();
    for (name, value) in reply.headers {
        if let Ok(v) = HeaderValue::from_str(&value) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

fn router(state: Arc<Mutex<State>>) -> Router {
    Router::new().fallback(move |req: Request<Body>| handle(Arc::clone(&state), req))
}

impl FakeLinode {
    /// Starts the fake on the current tokio runtime.
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::new(FAKE_TOKEN)));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(Arc::clone(&state));
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Self {
            base_url: format!("http://{addr}/v4"),
            state,
            _stop: stop,
            _thread: None,
        }
    }

    /// Starts the fake on its own thread and runtime (for synchronous tests that run the
    /// `ai-sandbox` binary with `LINODE_API_URL` pointing here).
    pub fn start_in_background() -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let fake = FakeLinode::start().await;
                let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
                let handle = (fake.base_url.clone(), Arc::clone(&fake.state), done_tx);
                let _ = tx.send(handle);
                let _ = done_rx.await;
                drop(fake);
            });
        });
        let (base_url, state, done) = rx.recv().expect("fake Linode API thread started");
        Self {
            base_url,
            state,
            _stop: done,
            _thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/v4` — the value for `LINODE_API_URL`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The token the fake accepts (for `LINODE_TOKEN`).
    pub fn token(&self) -> &'static str {
        FAKE_TOKEN
    }

    /// Locks the state for arranging or inspecting.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything the client did that the real API or the spec would reject.
    pub fn violations(&self) -> Vec<Violation> {
        self.state().violations.clone()
    }

    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().requests.clone()
    }

    /// The next `times` calls of `method` to paths starting with `path_prefix` (relative to
    /// `/v4`, e.g. `/linode/instances`) answer with `fault`.
    pub fn inject(&self, method: &str, path_prefix: &str, fault: Fault, times: u32) {
        self.state().faults.push(FaultRule {
            method: method.to_owned(),
            path_prefix: path_prefix.to_owned(),
            fault,
            remaining: times,
        });
    }

    pub fn instance_count(&self) -> usize {
        self.state().instances.len()
    }

    pub fn firewall_count(&self) -> usize {
        self.state().firewalls.len()
    }
}
