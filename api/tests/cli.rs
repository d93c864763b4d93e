//! The binary's command line: `--help` is a reviewed artifact (insta snapshot), and bad
//! configuration exits with status 2 and a message naming the problem.

use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ai-sandbox-api"));
    // Values from the environment would show up in the help text and change the outcome.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AI_SANDBOX_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn help_text() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    insta::assert_snapshot!("help", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn missing_model_is_a_usage_error() {
    let out = bin().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no model given"));
}

#[test]
fn unknown_config_key_is_rejected() {
    let dir = std::env::temp_dir().join(format!("ai-sandbox-api-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.yaml");
    std::fs::write(&path, "model: x.gguf\nmax_queu: 3\n").unwrap();
    let out = bin().arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid config file") && err.contains("max_queu"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_kv_cache_dtype_fails_the_start_naming_the_flag() {
    let out = bin()
        .args(["--model", "x.gguf", "--port", "0", "--kv-cache-dtype", "bf16"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kv-cache-dtype `bf16`: expected f16 or f32"), "{err}");
}
