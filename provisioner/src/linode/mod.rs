//! Linode API v4: the HTTP client ([`LinodeClient`]), pure request builders (also used by
//! `plan --out` to dump what would be sent), typed request/response bodies, retry policy,
//! typed errors, and the two secrets (API token, root password) with redacted `Debug`.
//!
//! Invariant: the token and the root password never appear in `Debug` output, logs, request
//! dumps or error messages; only the real HTTP request carries them.

pub mod client;
pub mod error;
pub mod request;
pub mod retry;
pub mod secret;
pub mod types;

pub use client::{base_url_from_env, LinodeClient, RequestHook, BASE_URL_ENV, DEFAULT_BASE_URL};
pub use error::{ApiErrorBody, ApiErrorDetail, LinodeError};
pub use request::{ApiRequest, Filter, LoggedRequest, Method, REDACTED};
pub use retry::{RetryPolicy, SleepFuture, Sleeper, TokioSleeper};
pub use secret::{ApiToken, RootPassword, SecretError, TOKEN_ENV};
pub use types::*;
