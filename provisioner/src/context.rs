//! Everything a command reads from the outside world before it acts: the config file, the
//! environment, the defaults that need IO (the caller's public IP for `--allow`,
//! `~/.ssh/*.pub` for `--ssh-key`), the Linode client, and the test hooks (poll interval,
//! health URL, IP echo URL). The resulting [`DeployConfig`] is validated by
//! `config::resolve`; nothing here writes anything.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::cli::{DeployFlags, CONFIG_ENV};
use crate::config::{self, PartialConfig, Resolved};
use crate::error::CmdError;
use crate::linode::{base_url_from_env, ApiToken, LinodeClient, RetryPolicy, TOKEN_ENV};

/// URL answering the caller's public IP as plain text.
pub const IP_ECHO_URL_ENV: &str = "AI_SANDBOX_IP_ECHO_URL";
pub const DEFAULT_IP_ECHO_URL: &str = "https://api.ipify.org";
/// Milliseconds between polls of the instance status and `/health` (default 5000).
pub const POLL_MS_ENV: &str = "AI_SANDBOX_POLL_MS";
/// Test hook: base URL (`http://host:port`) used instead of `http://<instance IP>:<port>`
/// for `/health` and `/v1/models`, and printed as BASE_URL. Also disables reading the
/// setup phase over SSH.
pub const HEALTH_URL_OVERRIDE_ENV: &str = "AI_SANDBOX_HEALTH_URL_OVERRIDE";
/// Test hook: first backoff of the Linode client's retries in milliseconds (default 500).
pub const RETRY_BASE_MS_ENV: &str = "AI_SANDBOX_RETRY_BASE_MS";
/// How long deploy waits for SSH on a new instance, in seconds (default 600).
pub const SSH_WAIT_SECS_ENV: &str = "AI_SANDBOX_SSH_WAIT_SECS";
/// Source tree uploaded to the instance when no prebuilt API image is used.
pub const SOURCE_DIR_ENV: &str = "AI_SANDBOX_SOURCE_DIR";

/// The process environment as a map (for `PartialConfig::from_env`).
pub fn env_map() -> BTreeMap<String, String> {
    std::env::vars().collect()
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Reads the config file named by `--config` or `AI_SANDBOX_CONFIG` (none: empty layer).
pub fn file_layer(flag: Option<&Path>) -> Result<PartialConfig, CmdError> {
    let path = match flag {
        Some(p) => p.to_path_buf(),
        None => match env_nonempty(CONFIG_ENV) {
            Some(p) => PathBuf::from(p),
            None => return Ok(PartialConfig::default()),
        },
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| CmdError::Usage(format!("--config {}: cannot read: {e}", path.display())))?;
    PartialConfig::from_yaml(&text)
        .map_err(|e| CmdError::Usage(format!("--config {}: {e}", path.display())))
}

/// Config file < environment < flags, without the IO defaults.
pub fn merged_layers(
    config_file: Option<&Path>,
    flags: &DeployFlags,
) -> Result<PartialConfig, CmdError> {
    let file = file_layer(config_file)?;
    let env = PartialConfig::from_env(&env_map()).map_err(CmdError::Config)?;
    Ok(file.merge(env).merge(flags.to_partial()))
}

/// The deployment name for commands that take `NAME`: the argument, else the config
/// file / environment, else the default. Validated like `--name`.
pub fn name_for(arg: Option<&str>, config_file: Option<&Path>) -> Result<String, CmdError> {
    let layered = merged_layers(config_file, &DeployFlags::default())?;
    let name = arg
        .map(str::to_string)
        .or(layered.name)
        .unwrap_or_else(|| config::DEFAULT_NAME.to_string());
    config::check_linode_label(&name, config::MAX_NAME_LEN)
        .map_err(|r| CmdError::Usage(format!("NAME {name}: {r}")))?;
    Ok(name)
}

/// Fully resolved deployment settings: layers plus the IO defaults (public IP, SSH keys),
/// validated.
pub async fn resolve_deploy_config(
    config_file: Option<&Path>,
    flags: &DeployFlags,
) -> Result<Resolved, CmdError> {
    let mut merged = merged_layers(config_file, flags)?;
    if merged.allow.is_none() {
        let ip = public_ip().await?;
        merged.allow = Some(vec![ip]);
    }
    if merged.ssh_key.is_none() {
        let keys = default_ssh_keys();
        if !keys.is_empty() {
            merged.ssh_key = Some(keys);
        }
    }
    merged
        .resolve(|p: &Path| read_key(p))
        .map_err(CmdError::Config)
}

fn read_key(p: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(p).map_err(|e| e.to_string())?;
    if meta.len() > 16 * 1024 {
        return Err("file too large for a public key".into());
    }
    std::fs::read_to_string(p).map_err(|e| e.to_string())
}

/// `$HOME/.ssh/*.pub`, sorted.
pub fn default_ssh_keys() -> Vec<PathBuf> {
    let Some(home) = std::env::var_os("HOME") else {
        return Vec::new();
    };
    let dir = PathBuf::from(home).join(".ssh");
    let mut keys: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pub") && p.is_file())
        .collect();
    keys.sort();
    keys
}

/// The private key next to the first configured public key, for `ssh -i` (None: let ssh
/// use its defaults and the agent).
pub fn identity_file(config_file: Option<&Path>) -> Option<PathBuf> {
    let layered = merged_layers(config_file, &DeployFlags::default()).ok()?;
    let pubs = layered.ssh_key.unwrap_or_else(default_ssh_keys);
    pubs.iter()
        .filter_map(|p| {
            let s = p.to_str()?;
            Some(PathBuf::from(s.strip_suffix(".pub")?))
        })
        .find(|p| p.is_file())
}

/// An HTTP client for talking to the instance and the IP echo service. Never through a
/// proxy: the firewall admits the caller's own address only.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, CmdError> {
    reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .timeout(timeout)
        .build()
        .map_err(|e| CmdError::Other(format!("cannot initialise the HTTP client: {e}")))
}

/// The caller's public IP as a single-host CIDR, from [`IP_ECHO_URL_ENV`].
pub async fn public_ip() -> Result<String, CmdError> {
    let url = env_nonempty(IP_ECHO_URL_ENV).unwrap_or_else(|| DEFAULT_IP_ECHO_URL.to_string());
    let fail = |why: String| {
        CmdError::Usage(format!(
            "--allow: could not find your public IP from {url} ({why}); pass --allow CIDR \
             (e.g. --allow 203.0.113.7/32), AI_SANDBOX_ALLOW or `allow:` in the config file"
        ))
    };
    let resp = http_client(Duration::from_secs(10))?
        .get(&url)
        .send()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        return Err(fail(format!("HTTP {}", resp.status())));
    }
    let text = resp.text().await.map_err(|e| fail(e.to_string()))?;
    let ip: std::net::IpAddr = text
        .trim()
        .parse()
        .map_err(|_| fail("the answer is not an IP address".into()))?;
    Ok(match ip {
        std::net::IpAddr::V4(a) => format!("{a}/32"),
        std::net::IpAddr::V6(a) => format!("{a}/128"),
    })
}

/// A Linode client from `LINODE_TOKEN` and `LINODE_API_URL`.
pub fn linode_client() -> Result<LinodeClient, CmdError> {
    let token = ApiToken::from_env()
        .map_err(|e| CmdError::Usage(e.to_string()))?
        .ok_or_else(|| {
            CmdError::Usage(format!(
                "{TOKEN_ENV} is not set: create a personal access token (Linodes and Firewalls: \
                 Read/Write; Images: Read Only) at https://cloud.linode.com/profile/tokens"
            ))
        })?;
    let mut retry = RetryPolicy::default();
    if let Some(ms) = env_nonempty(RETRY_BASE_MS_ENV).and_then(|v| v.trim().parse::<u64>().ok()) {
        retry.base_delay = Duration::from_millis(ms);
        retry.max_delay = Duration::from_millis(ms.saturating_mul(8)).max(retry.base_delay);
    }
    Ok(LinodeClient::new(token, &base_url_from_env())
        .map_err(CmdError::Linode)?
        .with_retry(retry))
}

/// Interval between status and health polls.
pub fn poll_interval() -> Duration {
    env_nonempty(POLL_MS_ENV)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms.max(1)))
        .unwrap_or(Duration::from_secs(5))
}

/// The health override (test hook), without a trailing slash.
pub fn health_url_override() -> Option<String> {
    env_nonempty(HEALTH_URL_OVERRIDE_ENV).map(|v| v.trim().trim_end_matches('/').to_string())
}

/// Base URL of the API on an instance: `http://IP:PORT` (or the override).
pub fn api_base(ip: &str, port: u16) -> String {
    health_url_override().unwrap_or_else(|| {
        if ip.contains(':') {
            format!("http://[{ip}]:{port}")
        } else {
            format!("http://{ip}:{port}")
        }
    })
}

/// The Hugging Face token from the environment (`HF_TOKEN`, `HUGGING_FACE_HUB_TOKEN`).
pub fn hf_token() -> Option<String> {
    config::env::HF_TOKENS
        .iter()
        .find_map(|k| env_nonempty(k))
        .map(|t| t.trim().to_string())
}

/// How long deploy waits for SSH to answer on a new instance.
pub fn ssh_wait() -> Duration {
    env_nonempty(SSH_WAIT_SECS_ENV)
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.max(1)))
        .unwrap_or(Duration::from_secs(600))
}
