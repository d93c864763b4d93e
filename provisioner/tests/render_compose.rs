//! The compose stack: golden files for docker-compose.yml, .env and the systemd unit;
//! `docker-compose config` (Debian's 1.29) and `docker compose config` (v2, the plugin that
//! `scripts/test` installs) accept the file and resolve it to the intended service.

mod render_util;

use std::path::Path;
use std::process::Command;

use ai_sandbox_provisioner::config::DeployConfig;
use ai_sandbox_provisioner::render::compose::DOCKERFILE;
use ai_sandbox_provisioner::render::{render_compose, render_env, render_service_unit};
use render_util::*;
use serde_json::{json, Value};

#[test]
fn golden_files() {
    for (name, cfg) in [("default", default_config()), ("tricky", tricky_config())] {
        insta::assert_snapshot!(format!("compose_{name}"), render_compose(&cfg).unwrap());
        insta::assert_snapshot!(format!("env_{name}"), render_env(&cfg).unwrap());
        insta::assert_snapshot!(format!("unit_{name}"), render_service_unit(&cfg).unwrap());
    }
}

/// Writes the project as it sits in /opt/ai-sandbox and returns the directory.
fn project(cfg: &DeployConfig) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("docker-compose.yml"),
        render_compose(cfg).unwrap(),
    )
    .unwrap();
    std::fs::write(dir.path().join(".env"), render_env(cfg).unwrap()).unwrap();
    std::fs::create_dir_all(dir.path().join("src/deploy")).unwrap();
    std::fs::write(dir.path().join("src/deploy/Dockerfile"), DOCKERFILE).unwrap();
    dir
}

fn compose_config(dir: &Path, program: &str, args: &[&str]) -> Value {
    let mut cmd = Command::new(program);
    cmd.args(args).arg("config").current_dir(dir);
    if let Some(cfg) = compose_v2_config().filter(|_| program == "docker") {
        cmd.env("DOCKER_CONFIG", cfg);
    }
    let out = run(
        &mut cmd,
        None,
        "install Debian's docker-compose: apt-get install -y docker-compose",
    );
    assert!(
        out.status.success(),
        "{program} {args:?} config: {}",
        text(&out)
    );
    pyyaml_to_json(&String::from_utf8_lossy(&out.stdout))
}

/// The DOCKER_CONFIG directory holding the Compose v2 CLI plugin that `scripts/test` installs
/// (Debian 12 packages only 1.29); when it is set, the v2 tests must run.
fn compose_v2_config() -> Option<String> {
    std::env::var("AI_SANDBOX_COMPOSE_V2_CONFIG")
        .ok()
        .filter(|s| !s.is_empty())
}

/// `docker compose` (v2) as this machine offers it: the plugin of `scripts/test`, else the
/// user's own; `None` (test skipped) only when neither exists and scripts/test did not ask.
fn compose_v2() -> Option<Command> {
    let mut cmd = Command::new("docker");
    cmd.arg("compose");
    let required = compose_v2_config();
    if let Some(cfg) = &required {
        cmd.env("DOCKER_CONFIG", cfg);
    }
    let present = Command::new("docker")
        .args(["compose", "version"])
        .envs(required.iter().map(|c| ("DOCKER_CONFIG", c)))
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        assert!(
            required.is_none(),
            "AI_SANDBOX_COMPOSE_V2_CONFIG={required:?} has no working `docker compose`"
        );
        eprintln!("docker compose v2 plugin not installed; skipped (scripts/test installs it)");
        return None;
    }
    Some(cmd)
}

fn check_resolved(api: &Value, cfg: &DeployConfig, who: &str) {
    assert_eq!(api["container_name"], json!("ai-sandbox-api"), "{who}");
    assert_eq!(api["network_mode"], json!("host"), "{who}");
    assert_eq!(api["restart"], json!("unless-stopped"), "{who}");
    let dev = &api["deploy"]["resources"]["reservations"]["devices"][0];
    assert_eq!(dev["driver"], json!("nvidia"), "{who}");
    assert_eq!(dev["capabilities"], json!(["gpu"]), "{who}");
    assert!(
        dev["count"] == json!("all") || dev["count"] == json!(-1),
        "{who}: {dev}"
    );
    let port = cfg.port.to_string();
    assert_eq!(
        api["command"],
        json!(["--model", format!("hf:{}", cfg.model), "--host", "0.0.0.0", "--port", port]),
        "{who}"
    );
    let health = api["healthcheck"]["test"].to_string();
    assert!(
        health.contains(&format!("http://127.0.0.1:{port}/health")),
        "{who}: {health}"
    );
    assert_eq!(api["logging"]["driver"], json!("json-file"), "{who}");
    assert_eq!(api["logging"]["options"]["max-size"], json!("10m"), "{who}");
    let volumes = api["volumes"].to_string();
    assert!(volumes.contains("/opt/models"), "{who}: {volumes}");
    assert_eq!(
        volumes.contains("hf_token"),
        cfg.hf_token_present,
        "{who}: {volumes}"
    );
    match &cfg.api_image {
        Some(img) => {
            assert_eq!(api["image"], json!(img), "{who}");
            assert!(api.get("build").is_none(), "{who}");
        }
        None => assert!(
            api["build"]["dockerfile"]
                .to_string()
                .contains("Dockerfile"),
            "{who}"
        ),
    }
}

#[test]
fn docker_compose_1_29_accepts_and_resolves_it() {
    for cfg in [default_config(), tricky_config()] {
        let dir = project(&cfg);
        let doc = compose_config(dir.path(), "docker-compose", &[]);
        check_resolved(&doc["services"]["api"], &cfg, "docker-compose");
        assert_eq!(doc["services"].as_object().unwrap().len(), 1);
    }
}

#[test]
fn docker_compose_v2_accepts_and_resolves_it() {
    if compose_v2().is_none() {
        return;
    }
    for cfg in [default_config(), tricky_config()] {
        let dir = project(&cfg);
        let doc = compose_config(dir.path(), "docker", &["compose"]);
        check_resolved(&doc["services"]["api"], &cfg, "docker compose");
        assert_eq!(doc["services"].as_object().unwrap().len(), 1);
    }
}

#[test]
fn compose_rejects_a_broken_file() {
    // Proves the validators validate: a misspelt service key is an error for both.
    let dir = project(&default_config());
    let broken = render_compose(&default_config())
        .unwrap()
        .replace("    restart: ", "    restrat: ");
    std::fs::write(dir.path().join("docker-compose.yml"), broken).unwrap();
    let mut v1 = Command::new("docker-compose");
    let mut runners = vec![("docker-compose", &mut v1)];
    let mut v2 = compose_v2();
    if let Some(cmd) = v2.as_mut() {
        runners.push(("docker compose", cmd));
    }
    for (who, cmd) in runners {
        let out = run(
            cmd.arg("config").current_dir(dir.path()),
            None,
            "apt-get install -y docker-compose",
        );
        assert!(!out.status.success(), "{who}: {}", text(&out));
        assert!(text(&out).contains("restrat"), "{who} names the key: {}", text(&out));
    }
}

#[test]
fn env_and_unit_follow_the_config() {
    let cfg = default_config();
    let env = render_env(&cfg).unwrap();
    assert!(env.contains("\nAI_SANDBOX_MODEL=hf:mistralai/Mistral-7B-Instruct-v0.3\n"));
    assert!(env.contains("\nAI_SANDBOX_SERVED_MODEL_NAME=mistralai/Mistral-7B-Instruct-v0.3\n"));
    assert!(env.contains("\nAI_SANDBOX_DEVICE=cuda\n"), "the instance runs the GPU path");
    assert!(!env.contains("HF_TOKEN_PATH"));
    assert!(
        !env.contains('"'),
        "docker-compose 1.29 keeps quotes in env_file values"
    );
    let unit = render_service_unit(&cfg).unwrap();
    assert!(!unit.contains("hf_token"));
    let gated = render_service_unit(&tricky_config()).unwrap();
    assert!(
        gated.contains("ExecStartPre=/bin/sh -c 'until [ -s /opt/ai-sandbox/secrets/hf_token ]")
    );
    assert!(render_env(&tricky_config())
        .unwrap()
        .contains("\nHF_TOKEN_PATH=/run/secrets/hf_token\n"));
}

#[test]
fn dockerfile_builds_with_cuda_in_matching_images() {
    assert!(DOCKERFILE.contains("-p ai-sandbox-api --features cuda"));
    let froms: Vec<&str> = DOCKERFILE
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(
        froms,
        [
            "FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS build",
            "FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04"
        ]
    );
}
