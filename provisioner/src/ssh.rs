//! The SSH edge: everything the CLI does on the instance goes through the system OpenSSH
//! client (`ssh`), never a library, so users' keys, agents and `~/.ssh/config` just work.
//!
//! Invariants:
//! - Host keys live in a per-deployment known-hosts file ([`known_hosts_path`]) with
//!   `StrictHostKeyChecking=accept-new`: first contact records the key, a changed key later
//!   is refused ([`SshError::HostKeyChanged`]). The global known-hosts file is ignored.
//! - Non-interactive calls use `BatchMode=yes`; password and keyboard-interactive
//!   authentication are always off, so nothing ever waits on a prompt.
//! - Secrets travel on ssh's **stdin**, never in argv: the remote command string is fixed
//!   text, and every user-given value in it is validated and [`shell_quote`]d.
//! - Exit status 255 is ssh's own failure (connection, authentication, host key); any
//!   other non-zero status belongs to the remote command.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod remote_cmd;

pub use remote_cmd::{logs_command, shell_quote, validate_since, DEFAULT_CLOUD_INIT_TAIL};

use crate::phase::{self, PhaseEvent};
use crate::render::cloud_init::{paths, HF_TOKEN_INSTALL_COMMAND, SOURCE_UPLOAD_COMMAND};

/// How much of ssh's stderr an error keeps (the end of it, where the reason is).
const STDERR_TAIL: usize = 2048;

/// Errors of the SSH edge. None of them ever contains a secret sent on stdin.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error(
        "the OpenSSH client `{program}` was not found; install it \
         (Debian/Ubuntu: `apt-get install openssh-client`)"
    )]
    SshMissing { program: String },
    #[error("could not run `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("I/O error while talking to ssh: {0}")]
    Io(#[from] io::Error),
    #[error("invalid SSH target: {0}")]
    InvalidTarget(String),
    #[error("invalid {flag} value {value:?}: {reason}")]
    InvalidArgument {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },
    /// The token itself is never part of this error.
    #[error("invalid Hugging Face token: {0}")]
    InvalidHfToken(&'static str),
    #[error("SSH connection to {target} failed: {stderr}")]
    Connection { target: String, stderr: String },
    #[error(
        "the SSH host key of {target} does not match the one recorded in {}: refusing to \
         connect (possible man-in-the-middle). If the instance was recreated, delete that \
         file and retry.\n{stderr}",
        known_hosts.display()
    )]
    HostKeyChanged {
        target: String,
        known_hosts: PathBuf,
        stderr: String,
    },
    #[error("remote command failed on {target} ({}): {stderr_tail}", describe_status(*status))]
    RemoteCommand {
        target: String,
        /// The remote exit code; `None` when ssh was killed by a signal.
        status: Option<i32>,
        stderr_tail: String,
    },
    #[error("timed out after {}s waiting for SSH on {target}; last error: {last_error}", waited.as_secs())]
    Timeout {
        target: String,
        waited: Duration,
        last_error: String,
    },
}

fn describe_status(status: Option<i32>) -> String {
    match status {
        Some(code) => format!("exit status {code}"),
        None => "killed by a signal".to_string(),
    }
}

/// Where and how to reach an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// IP address or host name (no `user@`).
    pub host: String,
    pub port: u16,
    /// `root` on our instances.
    pub user: String,
    /// Private key (`-i`, with `IdentitiesOnly=yes`); `None` lets ssh use its defaults/agent.
    pub identity: Option<PathBuf>,
    /// Per-deployment known-hosts file ([`known_hosts_path`]); its directory is created.
    pub known_hosts: PathBuf,
    /// `ConnectTimeout` (rounded up to whole seconds, at least 1).
    pub connect_timeout: Duration,
    /// Raw ssh arguments placed before the destination (e.g. `["-F", "none"]`).
    pub extra_opts: Vec<String>,
    /// The ssh client to run; `ssh` from `PATH` by default.
    pub program: PathBuf,
}

impl Target {
    /// `root@host:22`, 10 s connect timeout, `ssh` from `PATH`.
    pub fn new(host: impl Into<String>, known_hosts: impl Into<PathBuf>) -> Target {
        Target {
            host: host.into(),
            port: 22,
            user: "root".to_string(),
            identity: None,
            known_hosts: known_hosts.into(),
            connect_timeout: Duration::from_secs(10),
            extra_opts: Vec::new(),
            program: PathBuf::from("ssh"),
        }
    }

    /// `user@host:port`, for messages.
    pub fn display(&self) -> String {
        format!("{}@{}:{}", self.user, self.host, self.port)
    }
}

/// `<config dir>/ai-sandbox/known_hosts.d/<name>` ([`crate::paths`]). One file per
/// deployment, because Linode reuses IP addresses: a new instance on an old address must not
/// trip over an old key. `destroy` and `--replace` should delete it. `None` when neither
/// `$XDG_CONFIG_HOME` nor `$HOME` is set.
pub fn known_hosts_path(name: &str) -> Option<PathBuf> {
    crate::paths::per_deployment("known_hosts.d", name)
}

/// Builds the ssh invocation: options, `--`, host, and the remote command if any.
/// `batch` adds `BatchMode=yes`; `tty` adds `-t`.
pub fn command(
    t: &Target,
    remote_cmd: Option<&str>,
    batch: bool,
    tty: bool,
) -> Result<Command, SshError> {
    let mut c = Command::new(&t.program);
    c.args(ssh_args(t, batch, tty, t.connect_timeout)?);
    if let Some(cmd) = remote_cmd {
        c.arg(cmd);
    }
    Ok(c)
}

fn ssh_args(
    t: &Target,
    batch: bool,
    tty: bool,
    connect_timeout: Duration,
) -> Result<Vec<OsString>, SshError> {
    let host_ok = !t.host.is_empty()
        && !t.host.starts_with('-')
        && t.host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".:-_[]%".contains(c));
    if !host_ok {
        return Err(SshError::InvalidTarget(format!("bad host {:?}", t.host)));
    }
    let user_ok = !t.user.is_empty()
        && !t.user.starts_with('-')
        && t.user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !user_ok {
        return Err(SshError::InvalidTarget(format!("bad user {:?}", t.user)));
    }
    if let Some(dir) = t.known_hosts.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir)?;
    }
    let secs = connect_timeout.as_secs() + u64::from(connect_timeout.subsec_nanos() > 0);
    let mut opts = vec![
        "StrictHostKeyChecking=accept-new".to_string(),
        format!("UserKnownHostsFile={}", quote_config_path(&t.known_hosts)?),
        "GlobalKnownHostsFile=/dev/null".to_string(),
        format!("ConnectTimeout={}", secs.max(1)),
        "PasswordAuthentication=no".to_string(),
        "KbdInteractiveAuthentication=no".to_string(),
        // A persistent master would keep our pipes open and hang captured calls.
        "ControlMaster=no".to_string(),
        "ControlPath=none".to_string(),
        "ServerAliveInterval=15".to_string(),
        "ServerAliveCountMax=4".to_string(),
        // Errors only: no "Permanently added ... to the list of known hosts" noise.
        "LogLevel=ERROR".to_string(),
    ];
    if batch {
        opts.push("BatchMode=yes".to_string());
    }
    let mut args: Vec<OsString> = Vec::new();
    for o in opts {
        args.push("-o".into());
        args.push(o.into());
    }
    if let Some(key) = &t.identity {
        args.push("-i".into());
        args.push(escape_percent(key)?.into());
        args.push("-o".into());
        args.push("IdentitiesOnly=yes".into());
    }
    if tty {
        args.push("-t".into());
    }
    args.push("-p".into());
    args.push(t.port.to_string().into());
    args.push("-l".into());
    args.push(t.user.clone().into());
    args.extend(t.extra_opts.iter().map(OsString::from));
    args.push("--".into());
    args.push(t.host.clone().into());
    Ok(args)
}

fn create_private_dir(dir: &Path) -> Result<(), SshError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    Ok(b.create(dir)?)
}

/// ssh expands `%` tokens (and `~`) in file options: escape `%`, refuse what it can't carry.
fn escape_percent(p: &Path) -> Result<String, SshError> {
    let s = p
        .to_str()
        .ok_or_else(|| SshError::InvalidTarget(format!("path {p:?} is not UTF-8")))?;
    if s.chars().any(|c| c.is_control() || c == '"') {
        return Err(SshError::InvalidTarget(format!(
            "path {s:?} has characters ssh cannot take"
        )));
    }
    Ok(s.replace('%', "%%"))
}

/// For `-o Key=path`: ssh splits option values on whitespace unless double-quoted.
fn quote_config_path(p: &Path) -> Result<String, SshError> {
    let s = escape_percent(p)?;
    Ok(if s.contains(char::is_whitespace) {
        format!("\"{s}\"")
    } else {
        s
    })
}

fn spawn(t: &Target, mut c: Command) -> Result<Child, SshError> {
    c.spawn().map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => SshError::SshMissing {
            program: t.program.display().to_string(),
        },
        _ => SshError::Spawn {
            program: t.program.display().to_string(),
            source: e,
        },
    })
}

fn tail_of(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    let start = s.len().saturating_sub(STDERR_TAIL);
    let start = (start..=s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].to_string()
}

fn ssh_failure(t: &Target, stderr: String) -> SshError {
    if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || stderr.contains("Host key verification failed")
    {
        SshError::HostKeyChanged {
            target: t.display(),
            known_hosts: t.known_hosts.clone(),
            stderr,
        }
    } else {
        SshError::Connection {
            target: t.display(),
            stderr,
        }
    }
}

/// Runs `remote_cmd` (a shell command line; quote values with [`shell_quote`]) and
/// captures its output. `stdin` is fed to the remote command (the only way secrets
/// travel); without it the remote stdin is empty. A non-zero remote status is
/// [`SshError::RemoteCommand`]; ssh's own failure is [`SshError::Connection`] or
/// [`SshError::HostKeyChanged`].
pub fn run(t: &Target, remote_cmd: &str, stdin: Option<&[u8]>) -> Result<Output, SshError> {
    run_until(t, remote_cmd, stdin, None)
}

/// [`run`], killing ssh at `deadline` (then [`SshError::Timeout`]).
fn run_until(
    t: &Target,
    remote_cmd: &str,
    stdin: Option<&[u8]>,
    deadline: Option<Instant>,
) -> Result<Output, SshError> {
    let timeout = match deadline {
        Some(d) => t
            .connect_timeout
            .min(d.saturating_duration_since(Instant::now())),
        None => t.connect_timeout,
    };
    let mut c = Command::new(&t.program);
    c.args(ssh_args(t, true, false, timeout)?).arg(remote_cmd);
    c.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = spawn(t, c)?;
    let (pipe_in, pipe_out, pipe_err) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let (status, stdout, stderr, written) = thread::scope(|s| {
        let writer = s.spawn(move || match (pipe_in, stdin) {
            // The pipe closes when the closure returns: the remote side sees EOF.
            (Some(mut p), Some(data)) => match p.write_all(data) {
                Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e),
                _ => Ok(()),
            },
            _ => Ok(()),
        });
        let out = s.spawn(move || read_all(pipe_out));
        let err = s.spawn(move || read_all(pipe_err));
        let status = wait_until(&mut child, deadline);
        let join = |h: thread::ScopedJoinHandle<'_, io::Result<Vec<u8>>>| {
            h.join()
                .unwrap_or_else(|_| Err(io::Error::other("reader thread panicked")))
        };
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("writer thread panicked")));
        (status, join(out), join(err), written)
    });
    let (stdout, stderr) = (stdout?, stderr?);
    let Some(status) = status? else {
        return Err(SshError::Timeout {
            target: t.display(),
            waited: timeout,
            last_error: tail_of(&stderr),
        });
    };
    if status.code() == Some(255) {
        return Err(ssh_failure(t, tail_of(&stderr)));
    }
    written?;
    if !status.success() {
        return Err(SshError::RemoteCommand {
            target: t.display(),
            status: status.code(),
            stderr_tail: tail_of(&stderr),
        });
    }
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

fn read_all<R: Read>(pipe: Option<R>) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if let Some(mut p) = pipe {
        p.read_to_end(&mut buf)?;
    }
    Ok(buf)
}

/// Waits for the child; past `deadline` kills it and returns `None`.
fn wait_until(child: &mut Child, deadline: Option<Instant>) -> io::Result<Option<ExitStatus>> {
    let Some(deadline) = deadline else {
        return child.wait().map(Some);
    };
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            // It may have exited in between: kill errors are not interesting then.
            let _ = child.kill();
            child.wait()?;
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `remote_cmd` with its stdout copied to ours and its stderr to ours (for `logs`).
/// Our stdout closing early (`ai-sandbox logs | head`) ends ssh and counts as success.
/// Returns the remote exit status; ssh's own failure (255) is an error.
pub fn stream(t: &Target, remote_cmd: &str) -> Result<ExitStatus, SshError> {
    stream_to(t, remote_cmd, &mut io::stdout().lock())
}

/// [`stream`] into any writer (tests use one that breaks like a closed pipe).
pub fn stream_to(
    t: &Target,
    remote_cmd: &str,
    out: &mut dyn Write,
) -> Result<ExitStatus, SshError> {
    let mut c = command(t, Some(remote_cmd), true, false)?;
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn(t, c)?;
    let (pipe_out, pipe_err) = (child.stdout.take(), child.stderr.take());
    let (copied, stderr_tail) = thread::scope(|s| {
        let err = s.spawn(move || forward_stderr(pipe_err));
        let copied = copy_out(pipe_out, out);
        if !matches!(copied, Ok(false)) {
            // Reader gone (or an error): stop the remote command rather than wait on it.
            let _ = child.kill();
        }
        (copied, err.join().unwrap_or_default())
    });
    let status = child.wait()?;
    if copied? {
        return Ok(success_status().unwrap_or(status));
    }
    if status.code() == Some(255) {
        return Err(ssh_failure(t, stderr_tail));
    }
    Ok(status)
}

/// Copies until EOF (`Ok(false)`) or until `out` is a broken pipe (`Ok(true)`).
fn copy_out<R: Read>(pipe: Option<R>, out: &mut dyn Write) -> io::Result<bool> {
    let Some(mut pipe) = pipe else {
        return Ok(false);
    };
    let mut buf = [0u8; 8192];
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        match out.write_all(&buf[..n]).and_then(|()| out.flush()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(true),
            Err(e) => return Err(e),
        }
    }
}

/// Copies ssh's stderr to ours, returning its tail for error messages.
fn forward_stderr(pipe: Option<ChildStderr>) -> String {
    let mut kept = Vec::new();
    if let Some(mut p) = pipe {
        let mut buf = [0u8; 4096];
        let mut ours = io::stderr();
        while let Ok(n) = p.read(&mut buf) {
            if n == 0 {
                break;
            }
            // Our stderr failing must not stop the drain (ssh would block on a full pipe).
            let _ = ours.write_all(&buf[..n]);
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 2 * STDERR_TAIL {
                kept.drain(..kept.len() - STDERR_TAIL);
            }
        }
    }
    tail_of(&kept)
}

#[cfg(unix)]
fn success_status() -> Option<ExitStatus> {
    Some(std::os::unix::process::ExitStatusExt::from_raw(0))
}

#[cfg(not(unix))]
fn success_status() -> Option<ExitStatus> {
    None
}

/// `ssh -t` to a login shell with our terminal; returns the session's exit status as is
/// (ssh has already shown any error). Key passphrases may be asked; passwords never.
pub fn interactive(t: &Target) -> Result<ExitStatus, SshError> {
    let mut c = command(t, None, false, true)?;
    c.stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let mut child = spawn(t, c)?;
    Ok(child.wait()?)
}

/// Polls (`true` over ssh, every `poll`) until the instance answers or `timeout` passes.
/// A changed host key or a missing ssh client ends the wait at once.
pub fn wait_ready(t: &Target, timeout: Duration, poll: Duration) -> Result<(), SshError> {
    let start = Instant::now();
    let deadline = start + timeout;
    loop {
        let last_error = match run_until(t, "true", None, Some(deadline)) {
            Ok(_) => return Ok(()),
            Err(
                e @ (SshError::HostKeyChanged { .. }
                | SshError::SshMissing { .. }
                | SshError::Spawn { .. }
                | SshError::InvalidTarget(_)),
            ) => return Err(e),
            Err(SshError::Timeout { last_error, .. }) => last_error,
            Err(other) => other.to_string(),
        };
        let now = Instant::now();
        if now + poll >= deadline {
            return Err(SshError::Timeout {
                target: t.display(),
                waited: now - start,
                last_error,
            });
        }
        thread::sleep(poll);
    }
}

/// The latest phase line of the instance's deploy log; `None` while there is none.
pub fn read_phase(t: &Target) -> Result<Option<PhaseEvent>, SshError> {
    let log = paths::DEPLOY_LOG;
    let out = run(
        t,
        &format!("if [ -r {log} ]; then tail -n 200 {log}; fi"),
        None,
    )?;
    Ok(phase::latest(&String::from_utf8_lossy(&out.stdout)))
}

/// Stores the Hugging Face token on the instance (root-only, 0600), sending it on stdin
/// to [`HF_TOKEN_INSTALL_COMMAND`]. Surrounding whitespace is dropped.
pub fn install_hf_token(t: &Target, token: &str) -> Result<(), SshError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(SshError::InvalidHfToken("it is empty"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SshError::InvalidHfToken(
            "it contains whitespace or control characters",
        ));
    }
    run(t, HF_TOKEN_INSTALL_COMMAND, Some(token.as_bytes())).map(drop)
}

/// Uploads the workspace (a tar stream) with [`SOURCE_UPLOAD_COMMAND`].
pub fn upload_source(t: &Target, tar: &[u8]) -> Result<(), SshError> {
    run(t, SOURCE_UPLOAD_COMMAND, Some(tar)).map(drop)
}

#[cfg(test)]
mod tests;
