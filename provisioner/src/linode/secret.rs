//! The two secrets the Linode client handles: the API token ([`ApiToken`]) and the
//! instance's root password ([`RootPassword`]). Neither type implements `Display` or
//! `Serialize`; their `Debug` output is redacted. The raw value is reachable only through
//! `expose_secret`, which the client uses when building the real HTTP request.

use std::fmt;

use rand::rngs::OsRng;
use rand::TryRngCore;

/// Environment variable the token is read from.
pub const TOKEN_ENV: &str = "LINODE_TOKEN";

/// A Linode personal access token. Never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

/// Why a token or password could not be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the Linode API token is empty; set {TOKEN_ENV} or `token` in the config file")]
    EmptyToken,
    #[error("the Linode API token contains whitespace or control characters")]
    MalformedToken,
    #[error("the operating system's random number generator failed: {0}")]
    Rng(String),
}

impl ApiToken {
    /// Wraps a token given by the caller (config file or environment). Surrounding
    /// whitespace (a trailing newline from a file) is trimmed.
    pub fn new(token: impl Into<String>) -> Result<Self, SecretError> {
        let token = token.into();
        let trimmed = token.trim();
        if trimmed.is_empty() {
            return Err(SecretError::EmptyToken);
        }
        if trimmed
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
        {
            return Err(SecretError::MalformedToken);
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// Reads `LINODE_TOKEN`; `Ok(None)` when unset.
    pub fn from_env() -> Result<Option<Self>, SecretError> {
        match std::env::var(TOKEN_ENV) {
            Ok(v) => Self::new(v).map(Some),
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(SecretError::MalformedToken),
        }
    }

    /// The raw token, for the `Authorization` header only.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

/// Length of generated root passwords (Linode allows 7..=128; its docs ask for 11+ with
/// mixed character classes and the server scores strength).
pub const ROOT_PASSWORD_LEN: usize = 40;

const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS: &[u8] = b"0123456789";
/// Symbols that need no quoting in shells, YAML or JSON (the password is never rendered,
/// but this keeps it harmless if a user ever pastes it).
const SYMBOLS: &[u8] = b"-_.+=@%^~";

/// A strong random root password for a new Linode. Never printed or stored: deploy sends
/// it once in `POST /linode/instances` and users log in with SSH keys.
#[derive(Clone, PartialEq, Eq)]
pub struct RootPassword(String);

impl RootPassword {
    /// Generates [`ROOT_PASSWORD_LEN`] characters from the OS RNG, uniformly over
    /// lower/upper/digits/symbols, guaranteeing at least one of each class.
    pub fn generate() -> Result<Self, SecretError> {
        let alphabet: Vec<u8> = [LOWER, UPPER, DIGITS, SYMBOLS].concat();
        // Rejection sampling keeps the choice uniform: only bytes below the largest
        // multiple of the alphabet size are used.
        let limit = 256 - (256 % alphabet.len());
        for _ in 0..64 {
            let mut out = Vec::with_capacity(ROOT_PASSWORD_LEN);
            while out.len() < ROOT_PASSWORD_LEN {
                let mut buf = [0u8; 64];
                OsRng
                    .try_fill_bytes(&mut buf)
                    .map_err(|e| SecretError::Rng(e.to_string()))?;
                for b in buf {
                    if usize::from(b) < limit && out.len() < ROOT_PASSWORD_LEN {
                        out.push(alphabet[usize::from(b) % alphabet.len()]);
                    }
                }
            }
            if meets_strength_rule(&out) {
                // Every byte comes from an ASCII alphabet.
                return Ok(Self(out.into_iter().map(char::from).collect()));
            }
        }
        Err(SecretError::Rng(
            "generated 64 passwords without every character class".into(),
        ))
    }

    /// The raw password, for the request body only.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

/// Linode's documented minimum, made stricter: 11..=128 characters with lower case, upper
/// case, digits and symbols all present.
pub fn meets_strength_rule(password: &[u8]) -> bool {
    let has = |set: &[u8]| password.iter().any(|c| set.contains(c));
    (11..=128).contains(&password.len())
        && has(LOWER)
        && has(UPPER)
        && has(DIGITS)
        && password.iter().any(|c| c.is_ascii_punctuation())
}

impl fmt::Debug for RootPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RootPassword(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_trimmed_validated_and_redacted() {
        let t = ApiToken::new("abc123\n").unwrap();
        assert_eq!(t.expose_secret(), "abc123");
        assert_eq!(format!("{t:?}"), "ApiToken(<redacted>)");
        assert_eq!(ApiToken::new("  "), Err(SecretError::EmptyToken));
        assert_eq!(ApiToken::new("a b"), Err(SecretError::MalformedToken));
        assert_eq!(ApiToken::new("a\u{7f}b"), Err(SecretError::MalformedToken));
    }

    #[test]
    fn generated_passwords_are_strong_distinct_and_redacted() {
        let a = RootPassword::generate().unwrap();
        let b = RootPassword::generate().unwrap();
        assert_ne!(a, b);
        for p in [&a, &b] {
            let s = p.expose_secret();
            assert_eq!(s.len(), ROOT_PASSWORD_LEN);
            assert!(meets_strength_rule(s.as_bytes()), "weak: class missing");
            assert!(!format!("{p:?}").contains(s));
        }
    }

    #[test]
    fn strength_rule_rejects_single_class_and_short() {
        assert!(!meets_strength_rule(b"aaaaaaaaaaaaaaaaaaaa"));
        assert!(!meets_strength_rule(b"aA1-"));
        assert!(meets_strength_rule(b"aA1-aA1-aA1-"));
    }
}
