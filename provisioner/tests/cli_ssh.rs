//! The binary's SSH paths against a real local sshd standing in for the instance
//! (`sshd_host`, via the `AI_SANDBOX_SSH_OVERRIDE` test hook): `deploy` copies the Hugging
//! Face token into a 0600 file and uploads the source tree before waiting for `/health`;
//! `logs NAME` runs `docker compose logs api` with the flags mapped.

#[path = "cli_support/mod.rs"]
mod cli_support;
#[path = "support/fake_linode/mod.rs"]
mod fake_linode;
#[allow(dead_code)]
#[path = "sshd_host/mod.rs"]
mod sshd_host;

use std::os::unix::fs::PermissionsExt;

use ai_sandbox_provisioner::render::cloud_init::paths;
use cli_support::{Env, API_IMAGE};
use sshd_host::Host;

fn env_for(host: &Host) -> Env {
    let mut env = Env::new();
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
