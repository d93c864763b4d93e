//! Remote command lines for the SSH edge: POSIX quoting, `--since` validation and the
//! `logs` command. Pure string building; nothing here runs anything.

use super::SshError;
use crate::render::cloud_init::paths;
use crate::render::compose::{CONTAINER, SERVICE};

/// Lines `logs --cloud-init` shows when `--tail` is not given.
pub const DEFAULT_CLOUD_INIT_TAIL: u32 = 200;
/// The longest `--since` value accepted.
const MAX_SINCE_LEN: usize = 40;

/// POSIX shell quoting: the result, read by `sh`/`bash`, is exactly `s` as one word.
/// Safe words are returned as they are. (A NUL byte cannot pass through a shell at all.)
pub fn shell_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-.,:/@%+=".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Checks a `--since` value for `docker compose logs` (an RFC 3339 time such as
/// `2025-01-02T13:23:37Z`, a date, or a relative duration such as `42m`, `1h30m`).
/// Usable as a clap `value_parser`.
pub fn validate_since(s: &str) -> Result<String, SshError> {
    let bad = |reason| SshError::InvalidArgument {
        flag: "--since",
        value: s.to_string(),
        reason,
    };
    if s.is_empty() || s.len() > MAX_SINCE_LEN {
        return Err(bad(
            "expected a time like 2025-01-02T13:23:37Z or a duration like 42m",
        ));
    }
    if !s.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(bad("must start with a digit"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ":.+-".contains(c))
    {
        return Err(bad("only digits, letters and : . + - are allowed"));
    }
    Ok(s.to_string())
}

/// The remote command for `ai-sandbox logs`. Without `cloud_init`: the API service's logs,
/// with `docker compose` (v2) when `docker compose version` works, else Debian's
/// `docker-compose` 1.29 (which has no `--since`: then `docker logs` on the container).
/// Logs run once either way. With `cloud_init`: the tail of cloud-init's output, the setup
/// script's output and the deploy log (`since` does not apply; `tail` defaults to
/// [`DEFAULT_CLOUD_INIT_TAIL`]). Every value is quoted; pass `since` through
/// [`validate_since`] first for a clear error.
pub fn logs_command(
    follow: bool,
    tail: Option<u32>,
    since: Option<&str>,
    cloud_init: bool,
) -> String {
    let f = if follow { " -f" } else { "" };
    if cloud_init {
        let n = tail.unwrap_or(DEFAULT_CLOUD_INIT_TAIL);
        let files = [paths::CLOUD_INIT_LOG, paths::SETUP_LOG, paths::DEPLOY_LOG].join(" ");
        if follow {
            // -F waits for files that do not exist yet and follows rotation.
            return format!("exec tail -n {n} -F -- {files}");
        }
        return format!(
            "set --; for f in {files}; do if [ -r \"$f\" ]; then set -- \"$@\" \"$f\"; fi; done; \
             if [ $# -eq 0 ]; then echo 'no setup logs yet' >&2; exit 1; fi; exec tail -n {n} -- \"$@\""
        );
    }
    let tail_v2 = tail.map(|n| format!(" --tail {n}")).unwrap_or_default();
    let since_v2 = since
        .map(|s| format!(" --since {}", shell_quote(s)))
        .unwrap_or_default();
    let fallback = match since {
        None => {
            let tail_v1 = tail.map(|n| format!(" --tail={n}")).unwrap_or_default();
            format!("exec docker-compose logs{tail_v1}{f} {SERVICE}")
        }
        Some(_) => format!("exec docker logs{tail_v2}{since_v2}{f} {CONTAINER}"),
    };
    format!(
        "cd {} && if docker compose version >/dev/null 2>&1; then \
         exec docker compose logs{tail_v2}{since_v2}{f} {SERVICE}; else {fallback}; fi",
        paths::APP_DIR
    )
}
