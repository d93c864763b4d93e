//! Deployment configuration: the all-`Option` [`PartialConfig`] layers (defaults < YAML
//! file < environment < flags), their merge, and validation into the fully resolved
//! [`DeployConfig`] that rendering and planning consume. Pure: the environment arrives as
//! a map and SSH public keys through a caller-supplied reader; nothing here touches the
//! process or the disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::cidr::Cidr;

/// Default deployment name (Linode label, tag suffix, firewall label prefix).
pub const DEFAULT_NAME: &str = "ai-sandbox";
/// Default plan: one RTX 4000 Ada (20 GB), the smallest single-GPU plan.
pub const DEFAULT_TYPE: &str = "g2-gpu-rtx4000a1-s";
/// Default image; `linode/ubuntu22.04` is the other supported one.
pub const DEFAULT_IMAGE: &str = "linode/ubuntu24.04";
/// Default model (Hugging Face id).
pub const DEFAULT_MODEL: &str = "mistralai/Mistral-7B-Instruct-v0.3";
/// Port the OpenAI-compatible API listens on.
pub const DEFAULT_PORT: u16 = 8000;
/// Images the instance setup is written for (apt, `ubuntu-drivers`).
pub const SUPPORTED_IMAGES: [&str; 2] = ["linode/ubuntu24.04", "linode/ubuntu22.04"];
/// Tag carried by every resource this tool creates.
pub const TAG: &str = "ai-sandbox";
/// Suffix appended to the name to form the Cloud Firewall label.
pub const FIREWALL_SUFFIX: &str = "-fw";
/// Linode firewall rules take at most this many addresses (IPv4 + IPv6) each.
pub const MAX_ALLOW: usize = 255;
/// Longest name whose firewall label (`<name>-fw`) still fits Linode's 32 characters.
pub const MAX_NAME_LEN: usize = 32 - FIREWALL_SUFFIX.len();

/// Environment variable names read by [`PartialConfig::from_env`].
pub mod env {
    pub const NAME: &str = "AI_SANDBOX_NAME";
    pub const REGION: &str = "AI_SANDBOX_REGION";
    pub const TYPE: &str = "AI_SANDBOX_TYPE";
    pub const IMAGE: &str = "AI_SANDBOX_IMAGE";
    pub const MODEL: &str = "AI_SANDBOX_MODEL";
    /// Comma- or whitespace-separated CIDRs.
    pub const ALLOW: &str = "AI_SANDBOX_ALLOW";
    /// Comma-separated paths to SSH public keys.
    pub const SSH_KEY: &str = "AI_SANDBOX_SSH_KEY";
    pub const API_IMAGE: &str = "AI_SANDBOX_API_IMAGE";
    pub const PORT: &str = "AI_SANDBOX_PORT";
    /// Hugging Face token variables; only their presence is recorded here.
    pub const HF_TOKENS: [&str; 2] = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"];
}

/// Errors from reading or validating configuration. Messages name the flag (and, for
/// the file and environment, where the value came from is the caller's to add).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{flag} {value}: {reason}")]
    Invalid {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error("{flag} is required ({hint})")]
    Missing { flag: &'static str, hint: String },
    #[error("config file: {0}")]
    File(String),
    #[error("{var}={value}: {reason}")]
    Env {
        var: &'static str,
        value: String,
        reason: String,
    },
}

fn invalid(flag: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// One configuration layer. Every field is optional; later layers win field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartialConfig {
    pub name: Option<String>,
    pub region: Option<String>,
    #[serde(rename = "type")]
    pub linode_type: Option<String>,
    pub image: Option<String>,
    pub model: Option<String>,
    /// CIDRs (or bare addresses) allowed to reach SSH and the API.
    pub allow: Option<Vec<String>>,
    /// Paths to SSH public key files.
    #[serde(rename = "ssh_key")]
    pub ssh_key: Option<Vec<PathBuf>>,
    /// Prebuilt API container image reference (skips building on the instance).
    pub api_image: Option<String>,
    pub port: Option<u16>,
    /// Whether a Hugging Face token will be copied to the instance. Never read from the
    /// config file (tokens do not belong there); set from the environment or flags.
    #[serde(skip)]
    pub hf_token_present: Option<bool>,
}

impl PartialConfig {
    /// Parses the YAML config file. Unknown keys are errors (typos should not be
    /// silently ignored).
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_norway::from_str(text).map_err(|e| ConfigError::File(e.to_string()))
    }

    /// Reads the `AI_SANDBOX_*` variables (see [`env`]) from `vars`. Empty values count
    /// as unset.
    pub fn from_env(vars: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let get = |k: &str| {
            vars.get(k)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        };
        let port = match get(env::PORT) {
            None => None,
            Some(v) => Some(v.parse::<u16>().map_err(|_| ConfigError::Env {
                var: env::PORT,
                value: v.clone(),
                reason: "not a port number".into(),
            })?),
        };
        let hf = env::HF_TOKENS.iter().any(|k| get(k).is_some());
        Ok(Self {
            name: get(env::NAME),
            region: get(env::REGION),
            linode_type: get(env::TYPE),
            image: get(env::IMAGE),
            model: get(env::MODEL),
            allow: get(env::ALLOW).map(|v| split_list(&v)),
            ssh_key: get(env::SSH_KEY).map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
                    .collect()
            }),
            api_image: get(env::API_IMAGE),
            port,
            hf_token_present: hf.then_some(true),
        })
    }

    /// Returns `self` overridden by every field that `over` sets.
    pub fn merge(self, over: PartialConfig) -> PartialConfig {
        PartialConfig {
            name: over.name.or(self.name),
            region: over.region.or(self.region),
            linode_type: over.linode_type.or(self.linode_type),
            image: over.image.or(self.image),
            model: over.model.or(self.model),
            allow: over.allow.or(self.allow),
            ssh_key: over.ssh_key.or(self.ssh_key),
            api_image: over.api_image.or(self.api_image),
            port: over.port.or(self.port),
            hf_token_present: over.hf_token_present.or(self.hf_token_present),
        }
    }

    /// Merges `layers` in order (lowest precedence first) on top of the built-in
    /// defaults and validates the result. `read_key` loads an SSH public key file.
    pub fn resolve_layers<F>(
        layers: impl IntoIterator<Item = PartialConfig>,
        read_key: F,
    ) -> Result<Resolved, ConfigError>
    where
        F: FnMut(&Path) -> Result<String, String>,
    {
        layers
            .into_iter()
            .fold(PartialConfig::default(), PartialConfig::merge)
            .resolve(read_key)
    }

    /// Applies defaults and validates every field into a [`DeployConfig`].
    pub fn resolve<F>(self, mut read_key: F) -> Result<Resolved, ConfigError>
    where
        F: FnMut(&Path) -> Result<String, String>,
    {
        let mut warnings = Vec::new();
        let name = self.name.unwrap_or_else(|| DEFAULT_NAME.to_string());
        validate_name(&name)?;

        let region = self.region.ok_or_else(|| ConfigError::Missing {
            flag: "--region",
            hint: format!(
                "or {} / `region:` in the config file; `ai-sandbox plan` lists GPU regions",
                env::REGION
            ),
        })?;
        validate_slug("--region", &region)?;

        let linode_type = self.linode_type.unwrap_or_else(|| DEFAULT_TYPE.to_string());
        validate_slug("--type", &linode_type)?;

        let image = self.image.unwrap_or_else(|| DEFAULT_IMAGE.to_string());
        validate_image(&image, &mut warnings)?;

        let model = self.model.unwrap_or_else(|| DEFAULT_MODEL.to_string());
        validate_model(&model)?;

        let allow = parse_allow(self.allow.unwrap_or_default(), &mut warnings)?;

        let paths = self.ssh_key.unwrap_or_default();
        if paths.is_empty() {
            return Err(ConfigError::Missing {
                flag: "--ssh-key",
                hint: "no SSH public key found; pass --ssh-key PATH to a .pub file".into(),
            });
        }
        let mut ssh_keys = Vec::new();
        for p in &paths {
            let shown = p.display().to_string();
            let text = read_key(p).map_err(|e| invalid("--ssh-key", &shown, e))?;
            let key = validate_ssh_key(&text).map_err(|e| invalid("--ssh-key", &shown, e))?;
            if !ssh_keys.contains(&key) {
                ssh_keys.push(key);
            }
        }

        if let Some(img) = &self.api_image {
            validate_image_ref(img)?;
        }
        let port = self.port.unwrap_or(DEFAULT_PORT);
        if port < 1024 || port == 22 {
            return Err(invalid("--port", &port.to_string(), "must be 1024..=65535"));
        }

        Ok(Resolved {
            config: DeployConfig {
                name,
                region,
                linode_type,
                image,
                model,
                allow,
                ssh_keys,
                api_image: self.api_image,
                hf_token_present: self.hf_token_present.unwrap_or(false),
                port,
            },
            warnings,
        })
    }
}

/// A validated configuration plus warnings the CLI must show before acting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub config: DeployConfig,
    pub warnings: Vec<String>,
}

/// The fully resolved deployment: every value validated and safe to place in rendered
/// files (restricted character sets; no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeployConfig {
    /// Deployment name; also the Linode label.
    pub name: String,
    pub region: String,
    #[serde(rename = "type")]
    pub linode_type: String,
    pub image: String,
    /// Hugging Face model id served by the API.
    pub model: String,
    /// Networks allowed to reach SSH (22) and the API port; deduplicated, input order.
    pub allow: Vec<Cidr>,
    /// SSH public keys (one line each, no trailing newline).
    pub ssh_keys: Vec<String>,
    /// Prebuilt API image; `None` builds `deploy/Dockerfile` on the instance.
    pub api_image: Option<String>,
    /// The model is gated: the API service waits for the token file copied over SSH.
    pub hf_token_present: bool,
    pub port: u16,
}

impl DeployConfig {
    /// The Linode instance label.
    pub fn linode_label(&self) -> &str {
        &self.name
    }
    /// The Cloud Firewall label (`<name>-fw`, at most 32 characters).
    pub fn firewall_label(&self) -> String {
        format!("{}{}", self.name, FIREWALL_SUFFIX)
    }
    /// Tags put on the instance and the firewall: `ai-sandbox`, `ai-sandbox:<name>`.
    pub fn tags(&self) -> Vec<String> {
        vec![TAG.to_string(), self.name_tag()]
    }
    /// The tag that identifies this deployment.
    pub fn name_tag(&self) -> String {
        format!("{TAG}:{}", self.name)
    }
    pub fn allow_v4(&self) -> Vec<String> {
        self.allow
            .iter()
            .filter(|c| c.is_ipv4())
            .map(Cidr::to_string)
            .collect()
    }
    pub fn allow_v6(&self) -> Vec<String> {
        self.allow
            .iter()
            .filter(|c| !c.is_ipv4())
            .map(Cidr::to_string)
            .collect()
    }
}

/// Splits a comma- and/or whitespace-separated list.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

/// Linode's label rule (3..=max, letter first, alphanumeric last, `[A-Za-z0-9._-]`,
/// no `--`, `__` or `..`). Returns the reason on failure.
pub fn check_linode_label(label: &str, max: usize) -> Result<(), String> {
    let n = label.chars().count();
    if n < 3 || n > max {
        return Err(format!("must be 3 to {max} characters long (is {n})"));
    }
    let b = label.as_bytes();
    if !b[0].is_ascii_alphabetic() {
        return Err("must start with a letter".into());
    }
    if !b[b.len() - 1].is_ascii_alphanumeric() {
        return Err("must end with a letter or digit".into());
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "character {c:?} not allowed (letters, digits, '-', '_', '.')"
        ));
    }
    for pair in ["--", "__", ".."] {
        if label.contains(pair) {
            return Err(format!("must not contain {pair:?}"));
        }
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), ConfigError> {
    check_linode_label(name, 64).map_err(|r| invalid("--name", name, r))?;
    let fw = format!("{name}{FIREWALL_SUFFIX}");
    check_linode_label(&fw, 32).map_err(|_| {
        invalid(
            "--name",
            name,
            format!(
                "at most {MAX_NAME_LEN} characters, so that the firewall label {fw:?} fits Linode's 32"
            ),
        )
    })
}

/// Region and type ids: lowercase letters, digits and single hyphens.
fn validate_slug(flag: &'static str, v: &str) -> Result<(), ConfigError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            flag,
            v,
            "expected a Linode id such as us-east or g2-gpu-rtx4000a1-s",
        ))
    }
}

fn validate_image(image: &str, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
    if SUPPORTED_IMAGES.contains(&image) {
        return Ok(());
    }
    if let Some(rest) = image.strip_prefix("private/") {
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            warnings.push(format!(
                "--image {image}: private image; the instance setup assumes Ubuntu 22.04 or 24.04 with cloud-init"
            ));
            return Ok(());
        }
    }
    Err(invalid(
        "--image",
        image,
        format!(
            "unsupported; the instance setup needs Ubuntu ({}) or a private/<id> image based on it",
            SUPPORTED_IMAGES.join(", ")
        ),
    ))
}

fn hf_part_ok(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 96
        && p.as_bytes()[0].is_ascii_alphanumeric()
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !p.contains("..")
}

fn validate_model(model: &str) -> Result<(), ConfigError> {
    match model.split_once('/') {
        Some((owner, repo)) if hf_part_ok(owner) && hf_part_ok(repo) => Ok(()),
        _ => Err(invalid(
            "--model",
            model,
            "expected a Hugging Face model id such as mistralai/Mistral-7B-Instruct-v0.3",
        )),
    }
}

fn validate_image_ref(img: &str) -> Result<(), ConfigError> {
    let ok = !img.is_empty()
        && img.len() <= 255
        && img.as_bytes()[0].is_ascii_alphanumeric()
        && img.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(b, b'.' | b'/' | b':' | b'_' | b'-' | b'@')
        });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "--api-image",
            img,
            "expected a container image reference such as ghcr.io/owner/ai-sandbox-api:1.0",
        ))
    }
}

fn parse_allow(items: Vec<String>, warnings: &mut Vec<String>) -> Result<Vec<Cidr>, ConfigError> {
    if items.is_empty() {
        return Err(ConfigError::Missing {
            flag: "--allow",
            hint: "CIDRs allowed to reach SSH and the API; the CLI defaults to your public IP"
                .into(),
        });
    }
    let mut out: Vec<Cidr> = Vec::new();
    for s in &items {
        let c: Cidr = s.trim().parse().map_err(|e| invalid("--allow", s, e))?;
        if c.is_any() {
            warnings.push(format!(
                "--allow {c}: SSH and the unauthenticated API port are open to the whole internet"
            ));
        }
        if !out.contains(&c) {
            out.push(c);
        }
    }
    if out.len() > MAX_ALLOW {
        return Err(invalid(
            "--allow",
            &format!("({} entries)", out.len()),
            format!("a Linode firewall rule takes at most {MAX_ALLOW} addresses"),
        ));
    }
    Ok(out)
}

const KEY_TYPES: [&str; 8] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-dss",
];

/// Checks that `text` is one OpenSSH public key line and returns it trimmed.
pub fn validate_ssh_key(text: &str) -> Result<String, String> {
    if text.contains("PRIVATE KEY") {
        return Err("this is a private key; pass the .pub file".into());
    }
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let [line] = lines.as_slice() else {
        return Err(format!(
            "expected exactly one public key line, found {}",
            lines.len()
        ));
    };
    let mut parts = line.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    if !KEY_TYPES.contains(&kind) {
        return Err(format!(
            "unknown key type {kind:?}; expected e.g. ssh-ed25519"
        ));
    }
    let b64 = !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if !b64 {
        return Err("malformed public key (expected `type base64 [comment]`)".into());
    }
    if line.chars().any(|c| c.is_control()) {
        return Err("control characters in public key".into());
    }
    Ok(line.to_string())
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
