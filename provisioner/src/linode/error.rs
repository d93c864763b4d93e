//! Typed errors of the Linode API client: API answers (with Linode's `errors[]` kept
//! verbatim), transport failures, undecodable bodies, and bad client input. Nothing here
//! ever holds the API token or the root password.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::request::Method;

/// One entry of Linode's `{"errors": [{"field": ..., "reason": ...}]}` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorDetail {
    /// The request field the error is about (dotted path such as `metadata.user_data`),
    /// absent or `null` when the error is about the request as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Linode's explanation, shown to the user verbatim.
    pub reason: String,
}

impl fmt::Display for ApiErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) if !field.is_empty() => write!(f, "{field}: {}", self.reason),
            _ => f.write_str(&self.reason),
        }
    }
}

/// The error body Linode sends with every non-2xx answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    #[serde(default)]
    pub errors: Vec<ApiErrorDetail>,
}

/// Everything the Linode client can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LinodeError {
    /// Linode answered with a non-2xx status. `errors` are Linode's own words; when the body
    /// was not Linode's error shape a single synthetic reason describes what came back.
    #[error("Linode API {method} {path} failed (HTTP {status}): {}", join_reasons(.errors))]
    Api {
        status: u16,
        errors: Vec<ApiErrorDetail>,
        method: Method,
        path: String,
        /// How many times the request was sent (retries included); this answer is the last.
        attempts: u32,
    },
    /// The request never got an HTTP answer (DNS, connect, TLS, timeout, reset).
    #[error("could not reach the Linode API for {method} {path}: {source}")]
    Transport {
        method: Method,
        path: String,
        #[source]
        source: reqwest::Error,
    },
    /// A 2xx answer whose body is not what the API documents.
    #[error(
        "unexpected answer from the Linode API for {method} {path} (HTTP {status}): {message}"
    )]
    Decode {
        status: u16,
        method: Method,
        path: String,
        message: String,
    },
    /// `LINODE_API_URL` (or the configured base URL) is not a usable http(s) URL.
    #[error("invalid Linode API base URL {url:?}: {reason}")]
    InvalidBaseUrl { url: String, reason: String },
    /// No API token was given, or it cannot be sent in an HTTP header.
    #[error("invalid Linode API token: {0}")]
    InvalidToken(String),
    /// An id or label passed by the caller cannot be put into a request path.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    /// The HTTP client could not be built (TLS backend initialisation).
    #[error("could not initialise the HTTP client: {0}")]
    ClientInit(#[source] reqwest::Error),
}

impl LinodeError {
    /// HTTP status of an API error, if this is one.
    pub fn status(&self) -> Option<u16> {
        match self {
            LinodeError::Api { status, .. } | LinodeError::Decode { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True for a 404 answer — teardown treats "already gone" as success.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// How many times the request was sent before this error (1 for errors that are not
    /// API answers).
    pub fn attempts(&self) -> u32 {
        match self {
            LinodeError::Api { attempts, .. } => *attempts,
            _ => 1,
        }
    }

    /// Whether a failed POST may still have created its resource: its answer was lost
    /// (transport error after sending, a 5xx whose work may have committed), or an earlier
    /// attempt of it got no definite answer before this one was retried.
    pub fn may_have_created(&self) -> bool {
        match self {
            LinodeError::Api {
                status, attempts, ..
            } => *attempts > 1 || *status >= 500,
            LinodeError::Transport { source, .. } => !source.is_connect(),
            LinodeError::Decode { .. } => true,
            _ => false,
        }
    }

    /// Linode's `errors[]` for API errors, empty otherwise.
    pub fn details(&self) -> &[ApiErrorDetail] {
        match self {
            LinodeError::Api { errors, .. } => errors,
            _ => &[],
        }
    }
}

fn join_reasons(errors: &[ApiErrorDetail]) -> String {
    if errors.is_empty() {
        return "no reason given".to_owned();
    }
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_keeps_field_and_reason_verbatim() {
        let err = LinodeError::Api {
            status: 400,
            errors: vec![
                ApiErrorDetail {
                    field: Some("label".into()),
                    reason: "Label must be unique among your linodes".into(),
                },
                ApiErrorDetail {
                    field: None,
                    reason: "Linode busy.".into(),
                },
            ],
            method: Method::Post,
            path: "/linode/instances".into(),
            attempts: 1,
        };
        assert_eq!(
            err.to_string(),
            "Linode API POST /linode/instances failed (HTTP 400): \
             label: Label must be unique among your linodes; Linode busy."
        );
    }

    #[test]
    fn error_body_accepts_null_and_missing_field() {
        let body: ApiErrorBody =
            serde_json::from_str(r#"{"errors":[{"field":null,"reason":"a"},{"reason":"b"}]}"#)
                .unwrap();
        assert_eq!(body.errors.len(), 2);
        assert!(body.errors.iter().all(|e| e.field.is_none()));
    }
}
