//! The HTTP error type and the ONE place where failures become OpenAI-shaped responses:
//! `{"error":{"message","type","param","code"}}` with all four keys, plus `Retry-After` and
//! `x-should-retry` headers where they matter. `EngineError` is mapped here and nowhere else.

use ai_sandbox_engine::EngineError;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// OpenAI error `type` strings.
pub mod kind {
    pub const INVALID_REQUEST: &str = "invalid_request_error";
    pub const AUTHENTICATION: &str = "authentication_error";
    pub const NOT_FOUND: &str = "not_found_error";
    pub const RATE_LIMIT: &str = "rate_limit_error";
    pub const SERVER: &str = "server_error";
}

/// The inner object of an OpenAI error envelope. `param` and `code` are always serialized (null when absent).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorObject {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

/// `{"error": {...}}`.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorEnvelope {
    pub error: ErrorObject,
}

/// An error answered to the client: status, OpenAI error object and retry hints.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub object: ErrorObject,
    /// Seconds for a `Retry-After` header.
    pub retry_after: Option<u64>,
    /// `Some(false)` adds `x-should-retry: false` (non-transient server failures).
    pub should_retry: Option<bool>,
}

impl ApiError {
    /// A general constructor.
    pub fn new(
        status: StatusCode,
        kind: &str,
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&str>,
    ) -> Self {
        Self {
            status,
            object: ErrorObject {
                message: message.into(),
                kind: kind.to_string(),
                param: param.map(str::to_string),
                code: code.map(str::to_string),
            },
            retry_after: None,
            should_retry: None,
        }
    }

    /// 400 `invalid_request_error` naming the offending parameter.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            kind::INVALID_REQUEST,
            message,
            param,
            None,
        )
    }

    /// 400 for a parameter we do not support (never silently ignored).
    pub fn unsupported(param: &str, what: &str) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            kind::INVALID_REQUEST,
            format!("{what} is not supported by this server."),
            Some(param),
            Some("unsupported_parameter"),
        )
    }

    /// 400 `context_length_exceeded`.
    pub fn context_length(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            kind::INVALID_REQUEST,
            message,
            param,
            Some("context_length_exceeded"),
        )
    }

    /// 404 `model_not_found` for a model id we do not serve.
    pub fn model_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            kind::INVALID_REQUEST,
            format!("The model `{id}` does not exist or you do not have access to it."),
            Some("model"),
            Some("model_not_found"),
        )
    }

    /// 401 `invalid_api_key`.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            kind::AUTHENTICATION,
            "Incorrect or missing API key. Send it as `Authorization: Bearer <key>`.",
            None,
            Some("invalid_api_key"),
        )
    }

    /// 503 while the model loads (transient: the client may retry after a pause).
    pub fn loading() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            kind::SERVER,
            "The model is still loading; retry shortly.",
            None,
            Some("model_loading"),
        );
        e.retry_after = Some(5);
        e
    }

    /// 503 when the model failed to load (not transient).
    pub fn load_failed(message: &str) -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            kind::SERVER,
            format!("The model failed to load: {message}"),
            None,
            Some("model_load_failed"),
        );
        e.should_retry = Some(false);
        e
    }

    /// The `{"error":{...}}` body.
    pub fn envelope(&self) -> ErrorEnvelope {
        ErrorEnvelope {
            error: self.object.clone(),
        }
    }
}

/// The one mapping from engine failures to HTTP answers. Client mistakes are 4xx, never 5xx
/// (SDKs retry 5xx three times); deterministic server failures carry `x-should-retry: false`.
impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::InvalidInput { param, .. } => ApiError::invalid(message, param.as_deref()),
            EngineError::ContextLength { .. } => {
                ApiError::context_length(message, Some("messages"))
            }
            EngineError::QueueFull(_) => {
                let mut a = ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    kind::RATE_LIMIT,
                    message,
                    None,
                    Some("rate_limit_exceeded"),
                );
                a.retry_after = Some(1);
                a
            }
            EngineError::Unavailable => {
                let mut a = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    kind::SERVER,
                    message,
                    None,
                    Some("engine_unavailable"),
                );
                a.retry_after = Some(5);
                a
            }
            EngineError::Load(_) => {
                let mut a = ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    kind::SERVER,
                    message,
                    None,
                    Some("model_load_failed"),
                );
                a.should_retry = Some(false);
                a
            }
            EngineError::Unsupported(_) | EngineError::Internal(_) => {
                let mut a = ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    kind::SERVER,
                    message,
                    None,
                    None,
                );
                a.should_retry = Some(false);
                a
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = %self.status, message = %self.object.message, "request failed");
        } else {
            tracing::debug!(status = %self.status, message = %self.object.message, "request rejected");
        }
        let mut resp = (self.status, axum::Json(self.envelope())).into_response();
        let headers = resp.headers_mut();
        if let Some(s) = self.retry_after {
            headers.insert("retry-after", HeaderValue::from(s));
        }
        if let Some(r) = self.should_retry {
            headers.insert(
                "x-should-retry",
                HeaderValue::from_static(if r { "true" } else { "false" }),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_client_or_server_statuses() {
        let cases = [
            (
                EngineError::invalid("bad", Some("messages[0].role")),
                StatusCode::BAD_REQUEST,
                Some("messages[0].role"),
            ),
            (
                EngineError::ContextLength {
                    message: "too long".into(),
                },
                StatusCode::BAD_REQUEST,
                Some("messages"),
            ),
            (
                EngineError::QueueFull(3),
                StatusCode::TOO_MANY_REQUESTS,
                None,
            ),
            (
                EngineError::Unavailable,
                StatusCode::SERVICE_UNAVAILABLE,
                None,
            ),
            (
                EngineError::Internal("nan".into()),
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
            ),
        ];
        for (e, status, param) in cases {
            let a = ApiError::from(e);
            assert_eq!(a.status, status);
            assert_eq!(a.object.param.as_deref(), param);
        }
        let q = ApiError::from(EngineError::QueueFull(1));
        assert_eq!(q.object.kind, kind::RATE_LIMIT);
        assert_eq!(q.retry_after, Some(1));
        let i = ApiError::from(EngineError::Internal("x".into()));
        assert_eq!(i.should_retry, Some(false));
        let c = ApiError::from(EngineError::ContextLength {
            message: "m".into(),
        });
        assert_eq!(c.object.code.as_deref(), Some("context_length_exceeded"));
    }

    #[test]
    fn envelope_always_has_four_keys() {
        let v = serde_json::to_value(ApiError::invalid("m", None).envelope()).unwrap();
        let obj = v["error"].as_object().unwrap();
        let mut keys: Vec<_> = obj.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["code", "message", "param", "type"]);
        assert!(obj["param"].is_null() && obj["code"].is_null());
    }
}
