//! The SSH edge against a real OpenSSH server (see `sshd_host`): `logs` through stand-in
//! `docker compose` / `docker-compose`, the Hugging Face token install (0600, never in
//! argv or any process's environment), stdin, quoting, readiness, host-key pinning and
//! `| head` behaviour.

mod sshd_host;

use std::fs;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use ai_sandbox_provisioner::phase::Phase;
use ai_sandbox_provisioner::render::cloud_init::paths;
use ai_sandbox_provisioner::ssh::{
    install_hf_token, logs_command, read_phase, run, shell_quote, stream_to, upload_source,
    wait_ready, SshError,
};
use sshd_host::{free_port, Host};

fn stdout_of(host: &Host, cmd: &str) -> String {
    let out = run(&host.target(), cmd, None).unwrap_or_else(|e| {
        panic!("{cmd}: {e}\nsshd log:\n{}", host.sshd_log());
    });
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn logs_use_compose_v2_with_the_flags_mapped() {
    let host = Host::start();
    let out = stdout_of(
        &host,
        &logs_command(false, Some(25), Some("2025-01-02T03:04:05Z"), false),
    );
    let cwd = host.instance_path(paths::APP_DIR);
    assert_eq!(
        out,
        format!(
            "api-1  | stand-in v2: model loaded\napi-1  | stand-in v2: cwd {}\n",
            cwd.display()
        )
    );
    let _ = stdout_of(&host, &logs_command(true, None, None, false));
    assert_eq!(
        host.argv_lines(),
        [
            "docker [compose] [version]",
            "docker [compose] [logs] [--tail] [25] [--since] [2025-01-02T03:04:05Z] [api]",
            "docker [compose] [version]",
            "docker [compose] [logs] [-f] [api]",
        ]
    );
}

#[test]
fn logs_fall_back_to_docker_compose_v1() {
    let host = Host::start();
    host.set_state("no-compose-v2");
    let out = stdout_of(&host, &logs_command(true, Some(5), None, false));
    assert!(
        out.starts_with("ai-sandbox-api | stand-in v1: model loaded\n"),
        "{out}"
    );
    // docker-compose 1.29 has no --since: the container's own logs then.
    let out = stdout_of(&host, &logs_command(false, Some(9), Some("10m"), false));
    assert_eq!(out, "stand-in docker logs: model loaded\n");
    assert_eq!(
        host.argv_lines(),
        [
            "docker [compose] [version]",
            "docker-compose [logs] [--tail=5] [-f] [api]",
            "docker [compose] [version]",
            "docker [logs] [--tail] [9] [--since] [10m] [ai-sandbox-api]",
        ]
    );
}

#[test]
fn failing_logs_run_once_and_report_the_remote_error() {
    let host = Host::start();
    host.set_state("logs-fail");
    let err = run(
        &host.target(),
        &logs_command(false, None, None, false),
        None,
    )
    .unwrap_err();
    match &err {
        SshError::RemoteCommand {
            status,
            stderr_tail,
            ..
        } => {
            assert_eq!(*status, Some(3));
            assert!(
                stderr_tail.contains("stand-in: logs failed"),
                "{stderr_tail}"
            );
        }
        other => panic!("expected RemoteCommand, got {other:?}"),
    }
    assert_eq!(
        host.argv_lines(),
        [
            "docker [compose] [version]",
            "docker [compose] [logs] [api]"
        ]
    );
    // The same through stream(): the status comes back, not an error.
    let mut sink = Vec::new();
    let status = stream_to(
        &host.target(),
        &logs_command(false, None, None, false),
        &mut sink,
    )
    .unwrap();
    assert_eq!(status.code(), Some(3));
}

#[test]
fn cloud_init_logs_tail_the_setup_logs() {
    let host = Host::start();
    let err = run(&host.target(), &logs_command(false, None, None, true), None).unwrap_err();
    assert!(
        matches!(&err, SshError::RemoteCommand { status: Some(1), stderr_tail, .. }
        if stderr_tail.contains("no setup logs yet")),
        "{err:?}"
    );

    fs::write(
        host.instance_path(paths::CLOUD_INIT_LOG),
        "ci old\nci 1\nci 2\n",
    )
    .unwrap();
    fs::write(
        host.instance_path(paths::DEPLOY_LOG),
        "dl old\ndl 1\ndl 2\n",
    )
    .unwrap();
    let out = stdout_of(&host, &logs_command(false, Some(2), None, true));
    let header = |p: &str| format!("==> {} <==", host.instance_path(p).display());
    assert_eq!(
        out,
        format!(
            "{}\nci 1\nci 2\n\n{}\ndl 1\ndl 2\n",
            header(paths::CLOUD_INIT_LOG),
            header(paths::DEPLOY_LOG)
        )
    );
    assert!(host.argv_lines().is_empty(), "no docker for --cloud-init");
}

#[test]
fn hf_token_lands_0600_and_never_in_argv_or_environment() {
    use std::os::unix::fs::PermissionsExt;
    let host = Host::start();
    host.set_state("snapshot-ps");
    let token = format!("hf_TestOnly{}x{}", std::process::id(), host.port);
    install_hf_token(&host.target(), &format!("{token}\n")).unwrap();

    let file = host.instance_path(paths::HF_TOKEN);
    assert_eq!(fs::read_to_string(&file).unwrap(), token);
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let dir = host.instance_path(paths::SECRETS_DIR);
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );

    let ps = host.record("ps");
    assert!(
        ps.contains("StrictHostKeyChecking=accept-new"),
        "the snapshot saw our ssh client"
    );
    assert!(ps.contains("sshd"), "the snapshot saw sshd");
    for (what, text) in [
        ("process list and environments", ps),
        ("remote command lines", host.record("commands")),
        ("sshd log", host.sshd_log()),
    ] {
        assert!(!text.is_empty(), "{what} recorded");
        assert!(!text.contains(&token), "token in {what}");
    }

    // A second install replaces the first atomically.
    install_hf_token(&host.target(), "hf_second").unwrap();
    assert_eq!(fs::read_to_string(&file).unwrap(), "hf_second");
    assert!(!dir.join("hf_token.new").exists());
}

#[test]
fn run_feeds_stdin_and_reports_status() {
    let host = Host::start();
    let t = host.target();
    // More than a pipe buffer in both directions: no deadlock, every byte back.
    let data: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let out = run(&t, "cat", Some(&data)).unwrap();
    assert!(
        out.stdout == data,
        "stdin round trip ({} bytes back)",
        out.stdout.len()
    );
    // Without stdin the remote side reads EOF at once.
    assert_eq!(run(&t, "wc -c", None).unwrap().stdout, b"0\n");
    let err = run(&t, "echo oops >&2; exit 7", None).unwrap_err();
    assert!(
        matches!(&err, SshError::RemoteCommand { status: Some(7), stderr_tail, .. }
        if stderr_tail == "oops"),
        "{err:?}"
    );
    assert!(err.to_string().contains("exit status 7"));
}

#[test]
fn shell_quote_round_trips_over_ssh() {
    let host = Host::start();
    let nasty = [
        "",
        " ",
        "it's",
        "'",
        "\"dq\"",
        "$(touch /tmp/pwned-ai-sandbox)",
        "`id`",
        "$HOME ${HOME} $1 $@",
        "a\\b\\\\c\\",
        "line1\nline2\n",
        "\ttab\t",
        "; exit 9 #",
        "&& || | > < 2>&1",
        "*?[a-z]~",
        "-n",
        "--",
        "!x !!",
        "ünïcødé ✓ 日本",
        "%h %p %% ~root",
    ];
    // One ssh call for all of them: a NUL-free separator between the words.
    let script: Vec<String> = nasty
        .iter()
        .map(|s| format!("printf '%s\\001' {}", shell_quote(s)))
        .collect();
    let out = stdout_of(&host, &script.join("; "));
    let words: Vec<&str> = out.split('\u{1}').collect();
    assert_eq!(words[..words.len() - 1], nasty[..]);
}

#[test]
fn upload_source_unpacks_a_tarball() {
    let host = Host::start();
    let src = host.path("src-tree");
    fs::create_dir_all(src.join("sub")).unwrap();
    fs::write(src.join("sub/file.txt"), "hello").unwrap();
    let tar = std::process::Command::new("tar")
        .arg("-c")
        .arg("-C")
        .arg(&src)
        .arg(".")
        .output()
        .unwrap();
    assert!(tar.status.success());
    upload_source(&host.target(), &tar.stdout).unwrap();
    let dst = host.instance_path(paths::SOURCE_DIR);
    assert_eq!(
        fs::read_to_string(dst.join("sub/file.txt")).unwrap(),
        "hello"
    );
    assert!(host.instance_path(paths::UPLOAD_MARKER).exists());
}

#[test]
fn read_phase_reads_the_deploy_log() {
    let host = Host::start();
    assert_eq!(read_phase(&host.target()).unwrap(), None);
    fs::write(
        host.instance_path(paths::DEPLOY_LOG),
        "2025-01-02T03:04:05Z phase=cloud-init cloud-init started\nnoise\n\
         2025-01-02T03:09:00Z phase=model-download downloading m\n",
    )
    .unwrap();
    let e = read_phase(&host.target()).unwrap().unwrap();
    assert_eq!(
        (e.phase, e.message.as_str()),
        (Phase::ModelDownload, "downloading m")
    );
}

#[test]
fn wait_ready_succeeds_and_times_out_on_a_closed_port() {
    let host = Host::start();
    let start = Instant::now();
    wait_ready(
        &host.target(),
        Duration::from_secs(20),
        Duration::from_millis(50),
    )
    .unwrap();
    assert!(start.elapsed() < Duration::from_secs(10));

    let mut closed = host.target();
    closed.port = free_port();
    let start = Instant::now();
    let err = wait_ready(
        &closed,
        Duration::from_millis(1200),
        Duration::from_millis(100),
    )
    .unwrap_err();
    let took = start.elapsed();
    match &err {
        SshError::Timeout { last_error, .. } => {
            assert!(last_error.contains("refused"), "{last_error}")
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(8),
        "{took:?}"
    );
    let err = run(&closed, "true", None).unwrap_err();
    assert!(
        matches!(&err, SshError::Connection { stderr, .. } if stderr.contains("refused")),
        "{err:?}"
    );
}

#[test]
fn host_key_is_pinned_on_first_contact_and_a_change_is_refused() {
    let host = Host::start();
    let t = host.target();
    assert!(!t.known_hosts.exists());
    stdout_of(&host, "true");
    let recorded = fs::read_to_string(&t.known_hosts).unwrap();
    let host_pub = fs::read_to_string(host.path("host_key.pub")).unwrap();
    let host_blob = host_pub.split_whitespace().nth(1).unwrap();
    assert!(recorded.contains(host_blob), "{recorded}");
    stdout_of(&host, "true"); // the recorded key is accepted

    // Another key for the same host:port, as if the instance had been swapped.
    let other_pub = fs::read_to_string(host.path("user_key.pub")).unwrap();
    let other_blob = other_pub.split_whitespace().nth(1).unwrap();
    fs::write(&t.known_hosts, recorded.replace(host_blob, other_blob)).unwrap();
    let err = run(&t, "true", None).unwrap_err();
    assert!(matches!(err, SshError::HostKeyChanged { .. }), "{err:?}");
    assert!(err
        .to_string()
        .contains(&t.known_hosts.display().to_string()));
    assert_eq!(
        host.record("commands").lines().count(),
        2,
        "nothing ran the third time"
    );

    let start = Instant::now();
    let err = wait_ready(&t, Duration::from_secs(30), Duration::from_millis(50)).unwrap_err();
    assert!(matches!(err, SshError::HostKeyChanged { .. }), "{err:?}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "no retrying on a changed key"
    );
}

/// Accepts `budget` writes, then fails like a pipe whose reader (`head`) has gone.
struct ClosingPipe {
    budget: usize,
    got: Vec<u8>,
}

impl Write for ClosingPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.budget == 0 {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.budget -= 1;
        self.got.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn stream_treats_a_closed_stdout_as_success() {
    let host = Host::start();
    host.set_state("follow-forever");
    let mut pipe = ClosingPipe {
        budget: 3,
        got: Vec::new(),
    };
    let start = Instant::now();
    let status = stream_to(
        &host.target(),
        &logs_command(true, None, None, false),
        &mut pipe,
    )
    .unwrap();
    assert!(status.success());
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(String::from_utf8_lossy(&pipe.got).starts_with("api-1  | stand-in v2: model loaded\n"));

    let mut all = Vec::new();
    let status = stream_to(&host.target(), "echo one; echo two", &mut all).unwrap();
    assert!(status.success());
    assert_eq!(all, b"one\ntwo\n");

    let mut closed = host.target();
    closed.port = free_port();
    let err = stream_to(&closed, "true", &mut Vec::new()).unwrap_err();
    assert!(
        matches!(&err, SshError::Connection { stderr, .. } if stderr.contains("refused")),
        "{err:?}"
    );
}
