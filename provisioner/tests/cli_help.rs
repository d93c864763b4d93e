//! `--help` of `ai-sandbox` and of every subcommand, from the built binary, as reviewed
//! golden files (insta). The help text is the doc comments in `src/cli.rs`.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ai-sandbox"))
        .args(args)
        .env_clear()
        .env("COLUMNS", "100")
        .output()
        .expect("run ai-sandbox");
    assert!(out.status.success(), "{args:?} exited {:?}", out.status);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 help")
}

#[test]
fn top_level_help() {
    insta::assert_snapshot!("help", help(&["--help"]));
}

#[test]
fn subcommand_help() {
    for cmd in [
        "plan", "deploy", "status", "health", "logs", "ssh", "list", "destroy",
    ] {
        insta::assert_snapshot!(format!("help_{cmd}"), help(&[cmd, "--help"]));
    }
}

#[test]
fn usage_errors_exit_2_and_name_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_ai-sandbox"))
        .args(["logs", "x1x", "--since", "1m; rm -rf /"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since"));
    let out = Command::new(env!("CARGO_BIN_EXE_ai-sandbox"))
        .args(["deploy", "--timeout", "soon"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--timeout"));
}
