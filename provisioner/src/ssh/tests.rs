//! Unit tests of the SSH edge that need no server: quoting, argument building, the logs
//! command text, validation. The real-sshd tests are in `tests/ssh_sshd.rs`.

use super::*;

/// Strings a shell would mangle if quoting were wrong.
pub(crate) const NASTY: &[&str] = &[
    "",
    " ",
    "plain",
    "it's",
    "'",
    "''",
    "\"double\"",
    "$(touch /tmp/pwned)",
    "`id`",
    "$HOME ${HOME} $1 $@ $*",
    "a\\b\\\\c\\",
    "line1\nline2\n",
    "\ttab\t",
    "; rm -rf / #",
    "&& || | > < >> 2>&1",
    "*?[a-z]{1,2}~",
    "-n",
    "--",
    "!event !!",
    "ünïcødé ✓ 日本",
    "%h %p %% ~root",
];

#[test]
fn shell_quote_round_trips_through_sh() {
    for s in NASTY {
        let script = format!("printf '%s' {}", shell_quote(s));
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(out.status.success(), "{script:?}");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            *s,
            "script {script:?}"
        );
    }
    assert_eq!(shell_quote("abc-1.2/x@y:z"), "abc-1.2/x@y:z");
    assert_eq!(shell_quote("it's"), r"'it'\''s'");
    assert_eq!(shell_quote(""), "''");
}

#[test]
fn logs_command_for_compose_v2_with_fallback() {
    assert_eq!(
        logs_command(false, None, None, false),
        "cd /opt/ai-sandbox && if docker compose version >/dev/null 2>&1; then \
         exec docker compose logs api; else exec docker-compose logs api; fi"
    );
    assert_eq!(
        logs_command(true, Some(50), Some("10m"), false),
        "cd /opt/ai-sandbox && if docker compose version >/dev/null 2>&1; then \
         exec docker compose logs --tail 50 --since 10m -f api; else \
         exec docker logs --tail 50 --since 10m -f ai-sandbox-api; fi"
    );
    assert!(logs_command(true, Some(7), None, false)
        .ends_with("else exec docker-compose logs --tail=7 -f api; fi"));
}

#[test]
fn logs_command_quotes_whatever_since_it_gets() {
    let cmd = logs_command(false, None, Some("1h'; touch /tmp/x; '"), false);
    assert!(
        cmd.contains(r"--since '1h'\''; touch /tmp/x; '\'''"),
        "{cmd}"
    );
    assert!(validate_since("1h'; touch /tmp/x; '").is_err());
}

#[test]
fn logs_command_for_cloud_init() {
    let cmd = logs_command(false, None, Some("5m"), true);
    assert!(cmd.contains(
        "for f in /var/log/cloud-init-output.log /var/log/ai-sandbox/setup.log \
         /var/log/ai-sandbox/deploy.log;"
    ));
    assert!(cmd.ends_with("exec tail -n 200 -- \"$@\""), "{cmd}");
    assert!(!cmd.contains("5m"));
    assert_eq!(
        logs_command(true, Some(3), None, true),
        "exec tail -n 3 -F -- /var/log/cloud-init-output.log /var/log/ai-sandbox/setup.log \
         /var/log/ai-sandbox/deploy.log"
    );
}

#[test]
fn since_validation() {
    for ok in [
        "42m",
        "1h30m",
        "2025-01-02",
        "2025-01-02T13:23:37Z",
        "2025-01-02T13:23:37.5+02:00",
        "1700000000",
    ] {
        assert_eq!(validate_since(ok).unwrap(), ok);
    }
    for bad in [
        "",
        "-1h",
        "m42",
        "1h 2m",
        "1h;id",
        "$(id)",
        "1h\n",
        &"9".repeat(41),
    ] {
        let err = validate_since(bad).unwrap_err();
        assert!(
            matches!(
                err,
                SshError::InvalidArgument {
                    flag: "--since",
                    ..
                }
            ),
            "{bad:?}"
        );
    }
}

fn args_of(t: &Target, batch: bool, tty: bool) -> Vec<String> {
    command(t, Some("echo hi"), batch, tty)
        .unwrap()
        .get_args()
        .map(|a| a.to_str().unwrap().to_string())
        .collect()
}

fn has_opt(args: &[String], opt: &str) -> bool {
    args.windows(2).any(|w| w[0] == "-o" && w[1] == opt)
}

#[test]
fn ssh_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let kh = dir.path().join("my dir/known_hosts.d/x%y");
    let mut t = Target::new("203.0.113.7", &kh);
    t.identity = Some(PathBuf::from("/keys/id_%u"));
    t.connect_timeout = Duration::from_millis(1500);
    t.extra_opts = vec!["-F".into(), "none".into()];
    let args = args_of(&t, true, false);
    for opt in [
        "StrictHostKeyChecking=accept-new",
        "GlobalKnownHostsFile=/dev/null",
        "BatchMode=yes",
        "ConnectTimeout=2",
        "PasswordAuthentication=no",
        "KbdInteractiveAuthentication=no",
        "IdentitiesOnly=yes",
        "ControlPath=none",
    ] {
        assert!(has_opt(&args, opt), "{opt} missing from {args:?}");
    }
    let kh_opt = format!(
        "UserKnownHostsFile=\"{}\"",
        kh.display().to_string().replace('%', "%%")
    );
    assert!(has_opt(&args, &kh_opt), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["-i", "/keys/id_%%u"]));
    let n = args.len();
    assert_eq!(
        args[n - 9..],
        [
            "-p",
            "22",
            "-l",
            "root",
            "-F",
            "none",
            "--",
            "203.0.113.7",
            "echo hi"
        ]
    );
    assert!(!args.contains(&"-t".to_string()));
    assert!(
        kh.parent().unwrap().is_dir(),
        "known_hosts directory is created"
    );

    let interactive = args_of(&t, false, true);
    assert!(interactive.contains(&"-t".to_string()));
    assert!(!has_opt(&interactive, "BatchMode=yes"));
    assert!(has_opt(&interactive, "PasswordAuthentication=no"));
}

#[test]
fn bad_targets_are_refused_before_running_anything() {
    let kh = tempfile::tempdir().unwrap();
    for host in ["", "-oProxyCommand=id", "user@host", "a b", "h;id"] {
        let t = Target::new(host, kh.path().join("k"));
        assert!(
            matches!(run(&t, "true", None), Err(SshError::InvalidTarget(_))),
            "{host:?}"
        );
    }
    let mut t = Target::new("127.0.0.1", kh.path().join("k"));
    t.user = "-oProxyCommand=id".into();
    assert!(matches!(
        run(&t, "true", None),
        Err(SshError::InvalidTarget(_))
    ));
    t.user = "root".into();
    t.known_hosts = kh.path().join("a\"b");
    assert!(matches!(
        run(&t, "true", None),
        Err(SshError::InvalidTarget(_))
    ));
}

#[test]
fn missing_ssh_binary_is_named() {
    let kh = tempfile::tempdir().unwrap();
    let mut t = Target::new("127.0.0.1", kh.path().join("k"));
    t.program = PathBuf::from("/nonexistent/bin/ssh");
    let err = run(&t, "true", None).unwrap_err();
    assert!(matches!(err, SshError::SshMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("openssh-client"));
    assert!(matches!(
        stream_to(&t, "true", &mut Vec::new()),
        Err(SshError::SshMissing { .. })
    ));
    assert!(matches!(
        wait_ready(&t, Duration::from_secs(5), Duration::from_millis(10)),
        Err(SshError::SshMissing { .. })
    ));
}

#[test]
fn hf_token_is_checked_and_never_echoed() {
    let kh = tempfile::tempdir().unwrap();
    let mut t = Target::new("127.0.0.1", kh.path().join("k"));
    t.program = PathBuf::from("/nonexistent/bin/ssh");
    assert!(matches!(
        install_hf_token(&t, "  \n"),
        Err(SshError::InvalidHfToken(_))
    ));
    let err = install_hf_token(&t, "hf_secret part").unwrap_err();
    assert!(matches!(err, SshError::InvalidHfToken(_)));
    assert!(!format!("{err} {err:?}").contains("hf_secret"));
}

#[test]
fn stderr_tail_keeps_the_end_on_a_char_boundary() {
    let long = format!("{}é{}", "x".repeat(10), "ü".repeat(STDERR_TAIL));
    let t = tail_of(long.as_bytes());
    assert!(t.len() <= STDERR_TAIL && t.ends_with('ü'));
    assert_eq!(tail_of(b"  short\n"), "short");
}
