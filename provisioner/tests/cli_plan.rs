//! `ai-sandbox plan` through the real binary against the fake Linode API: the files
//! `--out` writes, `--json`, reads only (no API writes), checks that name the flag for a
//! bad region/type/image/CIDR with exit status 2, config layering (file < env < flags),
//! and the secrets sweep over every output, file and request of a plan and a deploy.

#[path = "cli_support/mod.rs"]
mod cli_support;
#[path = "support/fake_linode/mod.rs"]
mod fake_linode;

use base64::Engine as _;
use cli_support::{files_under, Env, API_IMAGE, CALLER_IP, KEY};
use serde_json::Value;

#[test]
fn plan_writes_every_file_and_only_reads_the_api() {
    let env = Env::new();
    let out = env.home().join("plan-out");
    let run = env.run(&["plan", "--region", "us-ord", "--out", out.to_str().unwrap()]);
    run.assert_code(0)
        .assert_contains("Cloud Firewall  ai-sandbox-fw")
        .assert_contains("$0.52/hour, $350.00/month")
        .assert_contains(&format!("from {CALLER_IP}/32"))
        .assert_contains("nothing was created");

    // No writes, nothing created, every request spec-valid.
    assert!(env.writes().is_empty(), "plan wrote: {:?}", env.writes());
    assert!(env.methods().iter().all(|m| m == "GET"));
    env.assert_nothing_left();
    env.assert_no_violations();

    let read =
        |rel: &str| std::fs::read_to_string(out.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    let user_data = read("user-data.yaml");
    assert!(user_data.starts_with("#cloud-config\n"), "{user_data}");
    let fw: Value = serde_json::from_str(&read("firewall.json")).unwrap();
    assert_eq!(fw["label"], "ai-sandbox-fw");
    assert_eq!(fw["rules"]["inbound_policy"], "DROP");
    assert_eq!(
        fw["rules"]["inbound"][0]["addresses"]["ipv4"][0],
        format!("{CALLER_IP}/32")
    );
    assert!(read("docker-compose.yml").contains("ai-sandbox-api"));
    assert!(out.join("files/opt/ai-sandbox/.env").is_file());
    assert!(out
        .join("files/etc/systemd/system/ai-sandbox.service")
        .is_file());

    let reqs: Value = serde_json::from_str(&read("requests.json")).unwrap();
    let reqs = reqs.as_array().unwrap();
    assert_eq!(reqs[0]["method"], "POST");
    assert_eq!(reqs[0]["path"], "/networking/firewalls");
    assert_eq!(reqs[1]["path"], "/linode/instances");
    let inst = &reqs[1]["body"];
    assert_eq!(inst["root_pass"], "<redacted>");
    assert_eq!(reqs[1]["headers"]["Authorization"], "Bearer <redacted>");
    assert_eq!(
        inst["tags"],
        serde_json::json!(["ai-sandbox", "ai-sandbox:ai-sandbox"])
    );
    assert_eq!(inst["authorized_keys"][0], KEY);
    // The user data sent is exactly the YAML written, base64 without line wraps.
    let b64 = inst["metadata"]["user_data"].as_str().unwrap();
    assert!(!b64.contains('\n'));
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(String::from_utf8(decoded).unwrap(), user_data);
}

#[test]
fn plan_json_has_price_checks_and_existing() {
    let env = Env::new();
    let run = env.run(&[
        "plan",
        "--region",
        "us-ord",
        "--json",
        "--allow",
        "10.0.0.0/8",
    ]);
    run.assert_code(0);
    let v: Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    assert_eq!(v["config"]["region"], "us-ord");
    assert_eq!(v["config"]["allow"], serde_json::json!(["10.0.0.0/8"]));
    assert_eq!(v["type"]["class"], "gpu");
    assert_eq!(v["price"]["hourly"], 0.52);
    assert_eq!(v["existing"]["instances"], serde_json::json!([]));
    assert_eq!(v["requests"][1]["body"]["root_pass"], "<redacted>");
    // --allow was given: the IP echo service is not needed.
    assert!(env.writes().is_empty());
}

#[test]
fn layers_file_then_env_then_flags() {
    let env = Env::new();
    let cfg = env.home().join("ai-sandbox.yaml");
    std::fs::write(
        &cfg,
        "name: from-file\nregion: us-ord\nmodel: org/file-model\nallow: [\"192.0.2.0/24\"]\n",
    )
    .unwrap();
    let mut env = env;
    env.vars
        .push(("AI_SANDBOX_MODEL".into(), "org/env-model".into()));
    env.vars
        .push(("AI_SANDBOX_CONFIG".into(), cfg.display().to_string()));
    let run = env.run(&["plan", "--json", "--name", "from-flag"]);
    run.assert_code(0);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["config"]["name"], "from-flag");
    assert_eq!(v["config"]["region"], "us-ord");
    assert_eq!(v["config"]["model"], "org/env-model");
    assert_eq!(v["config"]["allow"], serde_json::json!(["192.0.2.0/24"]));
}

#[test]
fn bad_flags_name_the_flag_exit_2_and_write_nothing() {
    let env = Env::new();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--allow", "bogus"], &["--allow", "bogus"]),
        (&["--allow", "10.0.0.1/8"], &["--allow", "host bits"]),
        (
            &["--region", "us-sea"],
            &["--region us-sea", "Metadata", "us-ord"],
        ),
        (
            &["--region", "us-east"],
            &["--region us-east", "GPU Linodes", "us-ord"],
        ),
        (
            &["--region", "xx-nowhere"],
            &["--region xx-nowhere", "no such region", "us-ord"],
        ),
        (
            &["--type", "g6-nanode-1"],
            &["--type g6-nanode-1", "g2-gpu-rtx4000a1-s"],
        ),
        (
            &["--image", "private/12"],
            &["--image private/12", "no such image"],
        ),
        (&["--name", "1bad"], &["--name", "1bad"]),
    ];
    for (flags, needles) in cases {
        for cmd in ["plan", "deploy"] {
            let mut args = vec![cmd, "-y"];
            if cmd == "plan" {
                args.pop();
            }
            if !flags.contains(&"--region") {
                args.extend(["--region", "us-ord"]);
            }
            args.extend_from_slice(flags);
            args.extend(["--api-image", API_IMAGE]);
            let run = env.run(&args);
            run.assert_code(2);
            for n in *needles {
                run.assert_contains(n);
            }
        }
    }
    // No region at all: the message lists the usable ones.
    env.run(&["plan"])
        .assert_code(2)
        .assert_contains("--region is required")
        .assert_contains("us-ord (Chicago, IL)");
    assert!(env.writes().is_empty(), "writes: {:?}", env.writes());
    env.assert_nothing_left();
    env.assert_no_violations();
}

#[test]
fn no_allow_and_no_ip_echo_names_allow() {
    let mut env = Env::new();
    env.vars.push((
        "AI_SANDBOX_IP_ECHO_URL".into(),
        "http://127.0.0.1:9/ip".into(),
    ));
    env.run(&["plan", "--region", "us-ord"])
        .assert_code(2)
        .assert_contains("--allow")
        .assert_contains("could not find your public IP");
}

#[test]
fn no_ssh_key_names_ssh_key() {
    let env = Env::new();
    std::fs::remove_dir_all(env.home().join(".ssh")).unwrap();
    env.run(&["plan", "--region", "us-ord"])
        .assert_code(2)
        .assert_contains("--ssh-key");
    let bad = env.home().join("id.pub");
    std::fs::write(&bad, "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
    env.run(&[
        "plan",
        "--region",
        "us-ord",
        "--ssh-key",
        bad.to_str().unwrap(),
    ])
    .assert_code(2)
    .assert_contains("private key");
}

#[test]
fn no_token_is_a_clear_error() {
    let env = Env::new();
    let out = env
        .cmd(&["plan", "--region", "us-ord"])
        .env_remove("LINODE_TOKEN")
        .output()
        .unwrap();
    let run = cli_support::Run::from(out);
    run.assert_code(2)
        .assert_contains("LINODE_TOKEN is not set");
}

#[test]
fn secrets_never_leak_into_output_files_or_requests() {
    const HF: &str = "hf_SeCrEtToKeN0123456789abcdefABCDEF";
    let mut env = Env::new();
    env.vars.push(("HF_TOKEN".into(), HF.into()));
    let out = env.home().join("out");
    let plan = env.run(&["plan", "--region", "us-ord", "--out", out.to_str().unwrap()]);
    plan.assert_code(0)
        .assert_contains("Hugging Face token copied over SSH");
    let plan_json = env.run(&["plan", "--region", "us-ord", "--json"]);
    plan_json.assert_code(0);
    let deploy = env.deploy(&["--no-wait"]);
    deploy.assert_code(0);
    env.assert_no_violations();

    // The root password, as the fake received it.
    let reqs = env.fake.requests();
    let create = reqs
        .iter()
        .find(|r| r.method == "POST" && r.path == "/linode/instances")
        .expect("instance created");
    let body = create.body.as_ref().unwrap();
    let root_pass = body["root_pass"].as_str().unwrap().to_string();
    assert!(root_pass.len() >= 20);
    let user_data = base64::engine::general_purpose::STANDARD
        .decode(body["metadata"]["user_data"].as_str().unwrap())
        .unwrap();
    let user_data = String::from_utf8(user_data).unwrap();
    assert!(
        user_data.contains("hf_token"),
        "gated model waits for the token file"
    );

    let mut haystacks: Vec<(String, String)> = vec![
        ("plan output".into(), plan.all()),
        ("plan --json".into(), plan_json.all()),
        ("deploy output".into(), deploy.all()),
        ("user data".into(), user_data),
    ];
    for f in files_under(&out) {
        haystacks.push((
            f.display().to_string(),
            std::fs::read_to_string(&f).unwrap(),
        ));
    }
    for r in &reqs {
        let mut body = r.body.clone().unwrap_or(Value::Null);
        if r.method == "POST" && r.path == "/linode/instances" {
            // The one place the root password belongs.
            body["root_pass"] = Value::Null;
        }
        haystacks.push((
            format!("request {} {}", r.method, r.path),
            format!("{} {:?} {}", r.path, r.x_filter, body),
        ));
    }
    assert!(haystacks.len() > 10);
    for (what, text) in &haystacks {
        for (secret_name, secret) in [
            ("Linode token", env.fake.token()),
            ("root password", root_pass.as_str()),
            ("HF token", HF),
        ] {
            assert!(!text.contains(secret), "{secret_name} leaked into {what}");
        }
    }
}
