//! When and how long the Linode client waits before trying a request again: which answers
//! are transient (429, 408, 400 "Linode busy", 5xx except 503 during maintenance), how
//! `Retry-After` is honoured, exponential backoff with jitter, and the injectable
//! [`Sleeper`] that lets tests run without waiting.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use super::error::ApiErrorDetail;

/// A future returned by [`Sleeper::sleep`].
pub type SleepFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Waits between attempts. Production uses [`TokioSleeper`]; tests record the durations.
pub trait Sleeper: Send + Sync {
    fn sleep(&self, duration: Duration) -> SleepFuture<'_>;
}

/// Real waiting with `tokio::time::sleep`.
#[derive(Clone, Copy, Debug, Default)]
pub struct TokioSleeper;

impl Sleeper for TokioSleeper {
    fn sleep(&self, duration: Duration) -> SleepFuture<'_> {
        Box::pin(tokio::time::sleep(duration))
    }
}

/// Bounds of the retry loop.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Total attempts including the first (at least 1).
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each time.
    pub base_delay: Duration,
    /// Upper bound for any single wait (also caps `Retry-After`).
    pub max_delay: Duration,
    pub sleeper: Arc<dyn Sleeper>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(60),
            sleeper: Arc::new(TokioSleeper),
        }
    }
}

impl std::fmt::Debug for dyn Sleeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sleeper")
    }
}

/// What to do after an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Not transient: surface the error.
    No,
    /// Transient: wait (the server's `Retry-After` when given) and try again.
    After(Option<Duration>),
}

/// The parts of an HTTP answer that decide whether it is transient.
#[derive(Clone, Debug, Default)]
pub struct Answer<'a> {
    pub status: u16,
    /// Raw `Retry-After` header.
    pub retry_after: Option<&'a str>,
    /// `X-Maintenance-Mode` header present.
    pub maintenance: bool,
    /// Parsed Linode `errors[]`, if the body had that shape.
    pub errors: &'a [ApiErrorDetail],
}

/// Classifies an error answer the way Linode's official clients do.
pub fn classify(answer: &Answer<'_>) -> Retry {
    match answer.status {
        429 => Retry::After(answer.retry_after.and_then(parse_retry_after)),
        408 => Retry::After(None),
        400 if answer
            .errors
            .iter()
            .any(|e| e.reason.to_ascii_lowercase().contains("linode busy")) =>
        {
            Retry::After(None)
        }
        503 if answer.maintenance => Retry::No,
        500..=599 => Retry::After(None),
        _ => Retry::No,
    }
}

/// `Retry-After` in delta-seconds (Linode's form). HTTP dates are not used by Linode and
/// fall back to the computed backoff.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

impl RetryPolicy {
    /// A policy whose waits go to `sleeper` (tests).
    pub fn with_sleeper(sleeper: Arc<dyn Sleeper>) -> Self {
        Self {
            sleeper,
            ..Self::default()
        }
    }

    /// Wait before attempt `attempt + 1` (attempt counts from 1): the server's hint if any,
    /// else `base * 2^(attempt-1)` with "equal jitter" (half fixed, half random), both capped
    /// at `max_delay`.
    pub fn delay(&self, attempt: u32, server_hint: Option<Duration>) -> Duration {
        if let Some(hint) = server_hint {
            return hint.min(self.max_delay);
        }
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
            .min(self.max_delay);
        let half = exp / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        let jitter = if jitter_ms == 0 {
            Duration::ZERO
        } else {
            Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
        };
        (half + jitter).min(self.max_delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy() -> Vec<ApiErrorDetail> {
        vec![ApiErrorDetail {
            field: None,
            reason: "Linode busy.".into(),
        }]
    }

    #[test]
    fn classification_matches_official_clients() {
        let a = |status| Answer {
            status,
            ..Answer::default()
        };
        assert_eq!(classify(&a(500)), Retry::After(None));
        assert_eq!(classify(&a(502)), Retry::After(None));
        assert_eq!(classify(&a(503)), Retry::After(None));
        assert_eq!(classify(&a(408)), Retry::After(None));
        assert_eq!(classify(&a(400)), Retry::No);
        assert_eq!(classify(&a(401)), Retry::No);
        assert_eq!(classify(&a(404)), Retry::No);
        let maint = Answer {
            status: 503,
            maintenance: true,
            ..Answer::default()
        };
        assert_eq!(classify(&maint), Retry::No);
        let errors = busy();
        let b = Answer {
            status: 400,
            errors: &errors,
            ..Answer::default()
        };
        assert_eq!(classify(&b), Retry::After(None));
        let limited = Answer {
            status: 429,
            retry_after: Some("7"),
            ..Answer::default()
        };
        assert_eq!(
            classify(&limited),
            Retry::After(Some(Duration::from_secs(7)))
        );
    }

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(1000),
            max_delay: Duration::from_secs(5),
            sleeper: Arc::new(TokioSleeper),
        };
        for _ in 0..50 {
            let d1 = p.delay(1, None);
            assert!(d1 >= Duration::from_millis(500) && d1 <= Duration::from_millis(1000));
            let d3 = p.delay(3, None);
            assert!(d3 >= Duration::from_millis(2000) && d3 <= Duration::from_millis(4000));
            assert!(p.delay(30, None) <= Duration::from_secs(5));
        }
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(300))),
            Duration::from_secs(5)
        );
    }
}
