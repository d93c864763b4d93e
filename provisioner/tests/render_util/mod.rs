//! Shared fixtures for the render tests: example configurations and helpers that run
//! the external validators (Python, cloud-init, docker-compose) with clear failures.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ai_sandbox_provisioner::config::{DeployConfig, PartialConfig};

pub const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3Qta2V5LW5vdC1yZWFs test@example";

/// The default deployment: one IPv4 and one IPv6 network allowed, model public.
pub fn default_config() -> DeployConfig {
    config(|_| {})
}

/// A config built from `base` layers plus `f`'s changes.
pub fn config(f: impl FnOnce(&mut PartialConfig)) -> DeployConfig {
    let mut p = PartialConfig {
        region: Some("us-ord".into()),
        allow: Some(vec!["203.0.113.7/32".into(), "2001:db8:1234::/48".into()]),
        ssh_key: Some(vec!["/home/me/.ssh/id_ed25519.pub".into()]),
        ..Default::default()
    };
    f(&mut p);
    p.resolve(|_| Ok(KEY.to_string()))
        .expect("valid test config")
        .config
}

/// A gated model with a prebuilt image and YAML-1.1 bait in every free-form value:
/// the name `yes`, a model `on/0755`.
pub fn tricky_config() -> DeployConfig {
    config(|p| {
        p.name = Some("yes".into());
        p.model = Some("on/0755".into());
        p.api_image = Some("ghcr.io/example/ai-sandbox-api:0.1.0".into());
        p.hf_token_present = Some(true);
        p.allow = Some(vec!["0.0.0.0/0".into()]);
    })
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn specs_dir() -> PathBuf {
    workspace_root().join("../shared/specs")
}

/// Runs `cmd`, failing the test with `install_hint` when the program is missing.
pub fn run(cmd: &mut Command, stdin: Option<&str>, install_hint: &str) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!("cannot run `{program}` ({e}); {install_hint}"),
    };
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin piped")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    child.wait_with_output().expect("wait for child")
}

pub fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Loads YAML with PyYAML (`yaml.safe_load`, what cloud-init and docker-compose 1.29
/// use) and returns it as JSON.
pub fn pyyaml_to_json(yaml: &str) -> serde_json::Value {
    let out = run(
        Command::new("python3").args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin.read())))",
        ]),
        Some(yaml),
        "install Python 3 with PyYAML (apt-get install python3-yaml)",
    );
    assert!(out.status.success(), "PyYAML failed:\n{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("PyYAML output is JSON")
}
