//! The CLI's use of [`crate::ssh`]: building a [`Target`] for a deployment, running the
//! blocking ssh calls off the async runtime (wait for SSH, read the setup phase, copy the
//! Hugging Face token, upload the source tree), and the `logs` and `ssh` commands.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::cli::{LogsArgs, NameArgs};
use crate::context;
use crate::destroy;
use crate::error::{CmdError, EXIT_ERROR};
use crate::phase::PhaseEvent;
use crate::ssh::{self, SshError, Target};

/// Test hook: `user@host:port` used instead of `root@<instance IP>:22` for every SSH
/// connection (with `-F none`), so tests can point deploy, `logs` and `ssh` at a local sshd.
pub const SSH_OVERRIDE_ENV: &str = "AI_SANDBOX_SSH_OVERRIDE";
/// Largest source tarball deploy uploads.
const MAX_SOURCE_BYTES: usize = 256 * 1024 * 1024;
/// Paths left out of the source upload (relative to the source root).
const SOURCE_EXCLUDES: [&str; 5] = [
    "./target",
    "./.git",
    "./models",
    "./tests/reference",
    "./.ci",
];

/// The SSH target of a deployment's instance: root@ip, per-deployment known-hosts file,
/// the private key next to the configured public key when there is one.
pub fn target(ip: &str, name: &str, config: Option<&Path>) -> Target {
    let known = ssh::known_hosts_path(name)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("ai-sandbox-known_hosts-{name}")));
    let mut t = Target::new(ip, known);
    t.identity = context::identity_file(config);
    if let Some((user, host, port)) = ssh_override() {
        t.user = user;
        t.host = host;
        t.port = port;
        // Hermetic: ignore the machine's ssh_config.
        t.extra_opts = vec!["-F".into(), "none".into()];
    }
    t
}

/// Whether the [`SSH_OVERRIDE_ENV`] test hook is in effect.
pub fn ssh_override_set() -> bool {
    ssh_override().is_some()
}

/// Test hook [`SSH_OVERRIDE_ENV`]: `user@host:port`.
fn ssh_override() -> Option<(String, String, u16)> {
    let v = std::env::var(SSH_OVERRIDE_ENV).ok()?;
    let (user, rest) = v.trim().split_once('@')?;
    let (host, port) = rest.rsplit_once(':')?;
    Some((user.to_string(), host.to_string(), port.parse().ok()?))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SshError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the SSH task failed: {e}")),
    }
}

/// Waits until `true` runs over SSH.
pub async fn wait_ready(t: &Target, timeout: Duration) -> Result<(), String> {
    let t = t.clone();
    blocking(move || ssh::wait_ready(&t, timeout, Duration::from_secs(5))).await
}

/// The latest setup phase, `None` when SSH or the log is not there yet.
pub async fn read_phase(t: &Target) -> Option<PhaseEvent> {
    let t = t.clone();
    blocking(move || ssh::read_phase(&t)).await.ok().flatten()
}

/// Copies the Hugging Face token (stdin only; never argv, never a log).
pub async fn install_hf_token(t: &Target, token: String) -> Result<(), String> {
    let t = t.clone();
    blocking(move || ssh::install_hf_token(&t, &token)).await
}

/// Tars `dir` (without build outputs, git data and model files) and unpacks it on the
/// instance, where the setup builds the API image from it.
pub async fn upload_source(t: &Target, dir: &Path) -> Result<(), String> {
    let tar = tar_source(dir)?;
    let t = t.clone();
    blocking(move || ssh::upload_source(&t, &tar)).await
}

fn tar_source(dir: &Path) -> Result<Vec<u8>, String> {
    let mut cmd = Command::new("tar");
    cmd.arg("-c").arg("-C").arg(dir);
    for ex in SOURCE_EXCLUDES {
        cmd.arg(format!("--exclude={ex}"));
    }
    cmd.arg(".");
    let out = cmd
        .output()
        .map_err(|e| format!("could not run tar: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tar of {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if out.stdout.len() > MAX_SOURCE_BYTES {
        return Err(format!(
            "the source tree {} is {} MB, over the {} MB upload limit",
            dir.display(),
            out.stdout.len() >> 20,
            MAX_SOURCE_BYTES >> 20
        ));
    }
    Ok(out.stdout)
}

/// The source tree to upload when no prebuilt image is used: `AI_SANDBOX_SOURCE_DIR`, else
/// the current directory when it is an ai-sandbox checkout.
pub fn source_dir() -> Result<PathBuf, CmdError> {
    let dir = std::env::var_os(context::SOURCE_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_default();
    let looks_right = dir.join("deploy/Dockerfile").is_file() && dir.join("Cargo.toml").is_file();
    if looks_right {
        Ok(dir)
    } else {
        Err(CmdError::Usage(format!(
            "--api-image is not set, so the API image is built on the instance from this \
             source tree, but {} is not an ai-sandbox checkout (no deploy/Dockerfile). Run \
             from the repository root, set {}=DIR, or pass --api-image REF",
            dir.display(),
            context::SOURCE_DIR_ENV
        )))
    }
}

async fn instance_ip(name: &str) -> Result<String, CmdError> {
    let client = context::linode_client()?;
    let found = destroy::find(&client, name).await?;
    let inst = found.instances.first().ok_or_else(|| {
        CmdError::Other(format!(
            "no instance named \"{name}\" (nothing tagged ai-sandbox:{name}); `ai-sandbox list` shows them all"
        ))
    })?;
    inst.public_ipv4().map(str::to_string).ok_or_else(|| {
        CmdError::Other(format!(
            "instance {} has no public IPv4 address ({})",
            inst.id, inst.status
        ))
    })
}

fn exit_of(status: std::process::ExitStatus) -> u8 {
    match status.code() {
        Some(0) => 0,
        _ => EXIT_ERROR,
    }
}

/// `ai-sandbox logs NAME`
pub async fn logs(config: Option<&Path>, args: &LogsArgs) -> Result<u8, CmdError> {
    let name = context::name_for(args.target.name.as_deref(), config)?;
    let ip = instance_ip(&name).await?;
    let t = target(&ip, &name, config);
    let cmd = ssh::logs_command(
        args.follow,
        args.tail,
        args.since.as_deref(),
        args.cloud_init,
    );
    let status = tokio::task::spawn_blocking(move || ssh::stream(&t, &cmd))
        .await
        .map_err(|e| CmdError::Other(e.to_string()))?
        .map_err(|e| CmdError::Other(e.to_string()))?;
    Ok(exit_of(status))
}

/// `ai-sandbox ssh NAME`
pub async fn shell(config: Option<&Path>, args: &NameArgs) -> Result<u8, CmdError> {
    let name = context::name_for(args.name.as_deref(), config)?;
    let ip = instance_ip(&name).await?;
    let t = target(&ip, &name, config);
    let status = tokio::task::spawn_blocking(move || ssh::interactive(&t))
        .await
        .map_err(|e| CmdError::Other(e.to_string()))?
        .map_err(|e| CmdError::Other(e.to_string()))?;
    Ok(status
        .code()
        .map_or(EXIT_ERROR, |c| u8::try_from(c).unwrap_or(EXIT_ERROR)))
}
