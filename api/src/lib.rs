//! AI Sandbox's OpenAI-compatible HTTP layer: `app()` builds the axum router over an `AppState`
//! that holds a `Backend` (the real engine, or a fake in tests). Owns routing, request ids,
//! auth, the loading state, and the cross-cutting middleware; endpoint logic lives in `openai/`.

pub mod backend;
pub mod config;
pub mod engine_backend;
pub mod error;
pub mod openai;
pub mod sse;

use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use subtle::ConstantTimeEq;

pub use backend::Backend;
use error::{kind, ApiError};

/// Largest accepted request body: 16 MiB (a full 8k-token context is well under 1 MiB of JSON;
/// the margin is for clients that send long histories). Larger bodies get a 413 error envelope.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024 * 1024;

/// Where the model is in its life.
#[derive(Clone)]
pub enum LoadState {
    /// Still loading: /health and /v1 answer 503.
    Loading,
    /// Ready to generate.
    Ready(Arc<dyn Backend>),
    /// Loading failed; the message says why.
    Failed(String),
}

/// Server settings that the handlers need.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// The id served on /v1/models; defaults to the model's own name.
    pub served_model_name: Option<String>,
    /// When set, /v1/* requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
}

struct Shared {
    load: RwLock<LoadState>,
    opts: ServerOptions,
    /// Unix seconds at server start (the `created` of our model object).
    created: u64,
}

/// Shared state of the app. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

impl AppState {
    /// A state whose model is still loading; call `set_ready` or `set_failed` later.
    pub fn loading(opts: ServerOptions) -> Self {
        Self {
            inner: Arc::new(Shared {
                load: RwLock::new(LoadState::Loading),
                opts,
                created: openai::common::unix_now(),
            }),
        }
    }

    /// A state that is ready at once.
    pub fn ready(backend: Arc<dyn Backend>, opts: ServerOptions) -> Self {
        let s = Self::loading(opts);
        s.set_ready(backend);
        s
    }

    /// The model finished loading.
    pub fn set_ready(&self, backend: Arc<dyn Backend>) {
        self.set(LoadState::Ready(backend));
    }

    /// The model failed to load.
    pub fn set_failed(&self, message: impl Into<String>) {
        self.set(LoadState::Failed(message.into()));
    }

    fn set(&self, st: LoadState) {
        match self.inner.load.write() {
            Ok(mut g) => *g = st,
            Err(poisoned) => *poisoned.into_inner() = st,
        }
    }

    /// The current load state.
    pub fn load_state(&self) -> LoadState {
        match self.inner.load.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The backend, or the 503 to answer while it is not available.
    pub fn backend(&self) -> Result<Arc<dyn Backend>, ApiError> {
        match self.load_state() {
            LoadState::Ready(b) => Ok(b),
            LoadState::Loading => Err(ApiError::loading()),
            LoadState::Failed(m) => Err(ApiError::load_failed(&m)),
        }
    }

    /// Unix seconds at server start.
    pub fn created(&self) -> u64 {
        self.inner.created
    }

    /// The id we serve the model under.
    pub fn served_id(&self, b: &dyn Backend) -> String {
        self.inner
            .opts
            .served_model_name
            .clone()
            .unwrap_or_else(|| b.model_id().to_string())
    }

    /// Check a requested model id and return the served id. Accepted: the served id, the
    /// model's own name, and the GGUF file name (with or without `.gguf`). Anything else is 404.
    pub fn resolve_model(
        &self,
        b: &dyn Backend,
        requested: Option<&str>,
    ) -> Result<String, ApiError> {
        let served = self.served_id(b);
        let Some(req) = requested else {
            return Err(ApiError::invalid(
                "You must provide a model parameter.",
                Some("model"),
            ));
        };
        let file_ok = b
            .model_file()
            .is_some_and(|f| req == f || Some(req) == f.strip_suffix(".gguf"));
        if req == served || req == b.model_id() || file_ok {
            Ok(served)
        } else {
            Err(ApiError::model_not_found(req))
        }
    }

    fn api_key(&self) -> Option<&str> {
        self.inner.opts.api_key.as_deref()
    }
}

/// Build the router: /health, /v1/chat/completions, /v1/completions, /v1/models[/{id}], with
/// OpenAI-shaped errors for every failure (404, 405, 413, bad JSON) and `x-request-id` on every response.
pub fn app(state: AppState) -> Router {
    let v1 = Router::new()
        .route("/v1/chat/completions", post(openai::chat::handle))
        .route("/v1/completions", post(openai::completions::handle))
        .route("/v1/models", get(openai::models::list))
        .route("/v1/models/{*id}", get(openai::models::retrieve))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/health", get(health))
        .merge(v1)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(middleware::from_fn(request_id))
        .with_state(state)
}

async fn health(State(state): State<AppState>) -> Response {
    match state.load_state() {
        LoadState::Ready(_) => Json(serde_json::json!({"status": "ok"})).into_response(),
        LoadState::Loading => {
            let e = ApiError::loading();
            let mut r = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"status": "loading", "error": e.object})),
            )
                .into_response();
            r.headers_mut()
                .insert("retry-after", HeaderValue::from(5u64));
            r
        }
        LoadState::Failed(m) => {
            let e = ApiError::load_failed(&m);
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({"status": "error", "error": e.object})),
            )
                .into_response()
        }
    }
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        kind::NOT_FOUND,
        format!("Unknown route: {} {}", req.method(), req.uri().path()),
        None,
        Some("unknown_url"),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        kind::INVALID_REQUEST,
        format!(
            "Method {} is not allowed for {}",
            req.method(),
            req.uri().path()
        ),
        None,
        Some("method_not_allowed"),
    )
}

/// Bearer check on /v1/* when an API key is configured; constant-time comparison.
async fn auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(key) = state.api_key() {
        let given = req
            .headers()
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .unwrap_or("");
        if !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// A client-sent request id is reused when it is short and printable; otherwise `req_<uuid>`.
fn sane_request_id(v: &HeaderValue) -> Option<String> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'=')
        });
    ok.then(|| s.to_string())
}

async fn request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(sane_request_id)
        .unwrap_or_else(|| format!("req_{}", uuid::Uuid::new_v4().simple()));
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let start = Instant::now();
    let span = tracing::info_span!("request", request_id = %id);
    let mut resp = tracing::Instrument::instrument(next.run(req), span).await;
    tracing::info!(request_id = %id, %method, %path, status = resp.status().as_u16(), ms = start.elapsed().as_millis() as u64, "handled");
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_sanity() {
        assert_eq!(
            sane_request_id(&HeaderValue::from_static("abc-123")).as_deref(),
            Some("abc-123")
        );
        assert_eq!(
            sane_request_id(&HeaderValue::from_static("has space")),
            None
        );
        assert_eq!(sane_request_id(&HeaderValue::from_static("")), None);
        let long = "a".repeat(200);
        assert_eq!(
            sane_request_id(&HeaderValue::from_str(&long).unwrap()),
            None
        );
    }
}
