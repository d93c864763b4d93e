//! The binary's SSH paths against a real local sshd standing in for the instance
//! (`sshd_host`, via the `AI_SANDBOX_SSH_OVERRIDE` test hook): `deploy` copies the Hugging
//! Face token into a 0600 file and uploads the source tree before waiting for `/health`;
//! `logs NAME` runs `docker compose logs api` with the flags mapped; while `/health` says
//! 503, deploy shows the phases the instance writes to its deploy log, and fails fast (and
//! cleans up) on a `failed` phase.

#[path = "cli_support/mod.rs"]
mod cli_support;
#[path = "support/fake_linode/mod.rs"]
mod fake_linode;
#[allow(dead_code)]
#[path = "sshd_host/mod.rs"]
mod sshd_host;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;

use ai_sandbox_provisioner::render::cloud_init::paths;
use cli_support::{Env, API_IMAGE};
use sshd_host::Host;

fn env_for(host: &Host) -> Env {
    env_with_health(host, 2)
}

/// [`env_for`] with `/health` answering 503 `not_ready_for` times.
fn env_with_health(host: &Host, not_ready_for: u32) -> Env {
    let mut env = Env::with_health(not_ready_for);
    let user = host.target().user;
    env.vars.push((
        "AI_SANDBOX_SSH_OVERRIDE".into(),
        format!("{user}@127.0.0.1:{}", host.port),
    ));
    env.vars.push((
        "AI_SANDBOX_SSH_KEY".into(),
        host.path("user_key.pub").display().to_string(),
    ));
    env
}

#[test]
fn deploy_copies_the_hf_token_and_the_source_then_logs_work() {
    const HF: &str = "hf_CliSshTestToken0123456789abcdef";
    let host = Host::start();
    let mut env = env_for(&host);
    env.vars.push(("HF_TOKEN".into(), HF.into()));
    let src = env.home().join("src");
    std::fs::create_dir_all(src.join("deploy")).unwrap();
    std::fs::write(src.join("Cargo.toml"), "[workspace]\n").unwrap();
    std::fs::write(src.join("deploy/Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::create_dir_all(src.join("target")).unwrap();
    std::fs::write(src.join("target/big.bin"), "build output").unwrap();
    env.vars
        .push(("AI_SANDBOX_SOURCE_DIR".into(), src.display().to_string()));

    let run = env.run(&["deploy", "-y", "--region", "us-ord"]);
    run.assert_code(0)
        .assert_contains("Copied the Hugging Face token")
        .assert_contains("BASE_URL=");
    assert!(!run.all().contains(HF), "token in output");

    let token_file = host.instance_path(paths::HF_TOKEN);
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), HF);
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        !host.record("commands").contains(HF),
        "token in a command line"
    );

    let uploaded = host.instance_path(paths::SOURCE_DIR);
    assert!(host.instance_path(paths::UPLOAD_MARKER).exists());
    assert_eq!(
        std::fs::read_to_string(uploaded.join("deploy/Dockerfile")).unwrap(),
        "FROM scratch\n"
    );
    assert!(!uploaded.join("target").exists(), "build outputs uploaded");

    let logs = env.run(&["logs", "ai-sandbox", "--tail", "5", "--since", "10m"]);
    logs.assert_code(0)
        .assert_contains("stand-in v2: model loaded");
    let argv = host.argv_lines();
    assert!(
        argv.iter()
            .any(|l| l.contains("[logs] [--tail] [5] [--since] [10m] [api]")),
        "{argv:?}"
    );
    env.run(&["destroy", "-y"]).assert_code(0);
    env.assert_nothing_left();
    env.assert_no_violations();
}

#[test]
fn ssh_failure_during_deploy_cleans_up() {
    let mut env = Env::new();
    env.vars.push(("HF_TOKEN".into(), "hf_x0123456789".into()));
    // Nothing listens on port 1: SSH never answers within the (shortened) wait.
    env.vars.push((
        "AI_SANDBOX_SSH_OVERRIDE".into(),
        "nobody@127.0.0.1:1".into(),
    ));
    env.vars
        .push(("AI_SANDBOX_SSH_WAIT_SECS".into(), "2".into()));
    let run = env.run(&[
        "deploy",
        "-y",
        "--region",
        "us-ord",
        "--api-image",
        API_IMAGE,
    ]);
    run.assert_code(2)
        .assert_contains("SSH to")
        .assert_contains("Cleaned up:");
    env.assert_nothing_left();
}

/// Appends one phase line, as the instance's setup writes it, to the stand-in's deploy log.
fn write_phase(host: &Host, phase: &str, message: &str) {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(host.instance_path(paths::DEPLOY_LOG))
        .unwrap();
    writeln!(log, "2026-01-02T03:04:05Z phase={phase} {message}").unwrap();
}

/// A child's stderr, line by line as it comes.
struct Lines {
    rx: mpsc::Receiver<String>,
    seen: Vec<String>,
    /// The child, stopped when a wait fails so it does not outlive the test.
    pid: u32,
}

impl Lines {
    fn of(child: &mut std::process::Child) -> Self {
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
            pid: child.id(),
        }
    }

    /// Blocks until a line containing `needle` arrives.
    fn wait_for(&mut self, needle: &str) {
        loop {
            match self.rx.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(e) => {
                    let _ = std::process::Command::new("kill")
                        .arg(self.pid.to_string())
                        .status();
                    panic!(
                        "no line with {needle:?} ({e}); got:\n{}",
                        self.seen.join("\n")
                    )
                }
            }
        }
    }
}

#[test]
fn deploy_shows_the_phases_from_the_deploy_log_while_health_says_503() {
    let host = Host::start();
    let env = env_with_health(&host, u32::MAX);
    let mut child = env.spawn_deploy();
    let mut lines = Lines::of(&mut child);
    // No log yet: the CLI's own first phase.
    lines.wait_for("setting up (booting); ");
    let phases = [
        (
            "cloud-init",
            "cloud-init started",
            "cloud-init: cloud-init started",
        ),
        (
            "drivers",
            "installing the NVIDIA driver",
            "drivers: installing the NVIDIA driver",
        ),
        (
            "image",
            "pulling the API image",
            "image: pulling the API image",
        ),
        (
            "model-download",
            "downloading m/x",
            "model download: downloading m/x",
        ),
        ("loading", "loading weights", "loading: loading weights"),
    ];
    // Each line is written only once the previous one is on screen, so every phase must
    // show up, in this order.
    for (id, message, shown) in phases {
        write_phase(&host, id, message);
        lines.wait_for(&format!("setting up ({shown}); "));
    }
    write_phase(&host, "ready", "API answering");
    env.endpoint.not_ready_for.store(0, Ordering::SeqCst);
    let out = child.wait_with_output().unwrap();
    lines.wait_for("ready");
    let run = cli_support::Run::from(out);
    run.assert_code(0).assert_contains("BASE_URL=");
    let shown: Vec<&String> = lines
        .seen
        .iter()
        .filter(|l| l.contains("setting up ("))
        .collect();
    assert!(
        shown.iter().all(|l| l.contains("/health: ")),
        "phase lines name the health answer: {shown:?}"
    );
    assert!(
        host.record("commands").contains("deploy.log"),
        "the phase was read over SSH"
    );
    env.run(&["destroy", "-y"]).assert_code(0);
    env.assert_nothing_left();
    env.assert_no_violations();
}

#[test]
fn a_failed_phase_fails_deploy_fast_with_its_message_and_cleans_up() {
    const WHY: &str = "apt-get install nvidia-driver-550 failed (exit 100)";
    let host = Host::start();
    let env = env_with_health(&host, u32::MAX);
    write_phase(&host, "cloud-init", "cloud-init started");
    write_phase(&host, "drivers", "installing the NVIDIA driver");
    write_phase(&host, "failed", WHY);
    // Fast: well inside the health timeout, which would end it with "was not ready after".
    let run = env.deploy(&["--timeout", "30s"]);
    run.assert_code(2)
        .assert_contains(&format!("setup failed on the instance: {WHY}"))
        .assert_contains("ai-sandbox logs ai-sandbox --cloud-init")
        .assert_contains("Cleaned up:");
    assert!(!run.all().contains("was not ready after"));
    env.assert_nothing_left();
    env.assert_no_violations();
}
