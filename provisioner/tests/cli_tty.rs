//! Ctrl-C during `deploy` on a real terminal: the binary runs in a pseudo-terminal (rexpect),
//! Ctrl-C is typed as a person would (the terminal turns it into SIGINT), and the question
//! "Destroy what this run created?" is answered each way: Enter destroys, "n" keeps and
//! prints the exact destroy command, a second Ctrl-C at the question keeps too.

#[path = "cli_support/mod.rs"]
mod cli_support;
#[path = "support/fake_linode/mod.rs"]
mod fake_linode;

use std::process::Stdio;
use cli_support::{deploy_args, Env};
use rexpect::session::{spawn_command, PtySession};

const QUESTION: &str = "Interrupted. Destroy what this run created (it is billed until destroyed)? [Y/n]";

/// `deploy` on a terminal, stopped with Ctrl-C once it waits for health; returns at the
/// question.
fn interrupted_deploy(env: &Env) -> PtySession {
    let mut cmd = env.cmd(&deploy_args(&["--timeout", "5m"]));
    cmd.stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    let mut p = spawn_command(cmd, Some(60_000)).expect("spawn ai-sandbox in a pty");
    env.wait_for_health_calls(3);
    assert_eq!(env.fake.instance_count(), 1);
    assert_eq!(env.fake.firewall_count(), 1);
    p.send_control('c').unwrap();
    p.exp_string(QUESTION)
        .expect("the question after Ctrl-C on a terminal");
    p
}

/// Reads to the end; returns the rest of the output and the exit code.
fn finish(mut p: PtySession) -> (String, String) {
    let rest = p.exp_eof().expect("the command ends");
    let status = p.process().wait().expect("wait");
    (rest, format!("{status:?}"))
}

#[test]
fn enter_at_the_question_destroys_what_was_created() {
    let env = Env::with_health(u32::MAX);
    let mut p = interrupted_deploy(&env);
    p.send_line("").unwrap();
    let (rest, status) = finish(p);
    assert!(rest.contains("Destroying what this run created"), "{rest}");
    assert!(rest.contains("interrupted (Ctrl-C)"), "{rest}");
    assert!(rest.contains("Cleaned up:"), "{rest}");
    assert!(status.ends_with(", 2)"), "exit status 2: {status}");
    env.assert_nothing_left();
    env.assert_no_violations();
}

fn assert_kept_with_the_destroy_command(env: &Env, rest: &str, status: &str) {
    assert!(rest.contains("interrupted (Ctrl-C)"), "{rest}");
    assert!(rest.contains("Created and kept: Cloud Firewall ai-sandbox-fw"), "{rest}");
    assert!(rest.contains("ai-sandbox destroy ai-sandbox -y"), "{rest}");
    assert!(!rest.contains("Cleaned up"), "{rest}");
    assert!(status.ends_with(", 2)"), "exit status 2: {status}");
    assert_eq!(env.fake.instance_count(), 1, "kept");
    assert_eq!(env.fake.firewall_count(), 1, "kept");
    // The printed command does remove them.
    env.run(&["destroy", "ai-sandbox", "-y"]).assert_code(0);
    env.assert_nothing_left();
    env.assert_no_violations();
}

#[test]
fn no_at_the_question_keeps_them_and_prints_the_destroy_command() {
    let env = Env::with_health(u32::MAX);
    let mut p = interrupted_deploy(&env);
    p.send_line("n").unwrap();
    let (rest, status) = finish(p);
    assert_kept_with_the_destroy_command(&env, &rest, &status);
}

#[test]
fn a_second_ctrl_c_at_the_question_keeps_them_too() {
    let env = Env::with_health(u32::MAX);
    let mut p = interrupted_deploy(&env);
    p.send_control('c').unwrap();
    let (rest, status) = finish(p);
    assert_kept_with_the_destroy_command(&env, &rest, &status);
}
