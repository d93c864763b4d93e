//! `deploy`, `destroy`, `status`, `health` and `list` through the real binary against the
//! fake Linode API and a local stand-in for the instance's API: the happy path, retries
//! (429 with Retry-After, 5xx), a failure injected at each step each leaving nothing
//! behind, Ctrl-C, re-deploy by name and `--replace`, and teardown.

#[path = "cli_support/mod.rs"]
mod cli_support;
#[path = "support/fake_linode/mod.rs"]
mod fake_linode;

use cli_support::{Env, API_IMAGE, CALLER_IP, MODEL};
use fake_linode::Fault;
use serde_json::{json, Value};

fn created_instance_body(env: &Env) -> Value {
    env.fake
        .requests()
        .iter()
        .find(|r| r.method == "POST" && r.path == "/linode/instances" && r.status == 200)
        .and_then(|r| r.body.clone())
        .expect("an accepted POST /linode/instances")
}

#[test]
fn happy_path_ends_with_base_url_and_one_tagged_instance_behind_the_firewall() {
    let env = Env::with_health(3);
    let run = env.deploy(&[]);
    run.assert_code(0)
        .assert_contains(&format!("BASE_URL={}/v1", env.endpoint.base))
        .assert_contains(&format!("MODEL={MODEL}"))
        .assert_contains(&format!("curl {}/v1/chat/completions", env.endpoint.base))
        .assert_contains("from openai import OpenAI")
        .assert_contains("ai-sandbox destroy ai-sandbox");
    assert!(
        env.endpoint
            .health_calls
            .load(std::sync::atomic::Ordering::SeqCst)
            >= 4
    );
    assert_eq!(env.fake.instance_count(), 1);
    assert_eq!(env.fake.firewall_count(), 1);
    env.assert_no_violations();

    let st = env.fake.state();
    let fw = st.firewalls.values().next().unwrap().clone();
    let inst = st.instances.values().next().unwrap().body.clone();
    drop(st);
    assert_eq!(fw["label"], "ai-sandbox-fw");
    assert_eq!(fw["tags"], json!(["ai-sandbox", "ai-sandbox:ai-sandbox"]));
    assert_eq!(fw["rules"]["inbound_policy"], "DROP");
    assert_eq!(
        fw["rules"]["inbound"][0]["addresses"]["ipv4"],
        json!([format!("{CALLER_IP}/32")])
    );
    assert_eq!(inst["tags"], json!(["ai-sandbox", "ai-sandbox:ai-sandbox"]));
    assert_eq!(inst["label"], "ai-sandbox");
    let body = created_instance_body(&env);
    assert_eq!(body["firewall_id"], fw["id"]);
    assert_eq!(body["image"], "linode/ubuntu24.04");
    assert_eq!(body["type"], "g2-gpu-rtx4000a1-s");
    assert!(body["metadata"]["user_data"].as_str().unwrap().len() > 100);
    // Firewall first, then the instance.
    let writes = env.writes();
    assert_eq!(
        writes,
        vec!["POST /networking/firewalls", "POST /linode/instances"]
    );

    // status / health / list see it.
    env.run(&["status", "ai-sandbox"])
        .assert_code(0)
        .assert_contains("running")
        .assert_contains("ready")
        .assert_contains("inbound DROP; ACCEPT TCP 22 from 198.51.100.7/32");
    let st = env.run(&["status", "ai-sandbox", "--json"]);
    let v: Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["instance"]["status"], "running");
    assert_eq!(v["hourly_price"], 0.52);
    assert!(v["cost_so_far"].as_f64().unwrap() > 0.0);
    env.run(&["health", "ai-sandbox"]).assert_code(0);
    let list = env.run(&["list", "--json"]);
    list.assert_code(0);
    let v: Value = serde_json::from_str(&list.stdout).unwrap();
    assert_eq!(v[0]["name"], "ai-sandbox");
    assert_eq!(v[0]["firewalls"][0]["label"], "ai-sandbox-fw");
    env.run(&["list"])
        .assert_code(0)
        .assert_contains("ai-sandbox-fw");

    // Not ready -> exit 1.
    env.endpoint
        .not_ready_for
        .store(u32::MAX, std::sync::atomic::Ordering::SeqCst);
    env.run(&["health"])
        .assert_code(1)
        .assert_contains("not ready");

    // destroy leaves nothing, and says so.
    env.run(&["destroy", "ai-sandbox", "-y"])
        .assert_code(0)
        .assert_contains("Nothing tagged ai-sandbox:ai-sandbox is left");
    env.assert_nothing_left();
    env.run(&["destroy", "ai-sandbox", "-y"])
        .assert_code(0)
        .assert_contains("Nothing to destroy");
    env.run(&["health", "ai-sandbox"]).assert_code(2);
    env.assert_no_violations();
}

#[test]
fn rate_limits_and_server_errors_are_retried() {
    let env = Env::new();
    env.fake.inject(
        "POST",
        "/networking/firewalls",
        Fault::RateLimited {
            retry_after_secs: 1,
        },
        1,
    );
    env.fake
        .inject("POST", "/linode/instances", Fault::Status(503), 1);
    env.fake
        .inject("GET", "/linode/instances/", Fault::Status(502), 2);
    env.fake.inject("GET", "/regions/", Fault::Status(500), 1);
    let run = env.deploy(&[]);
    run.assert_code(0).assert_contains("BASE_URL=");
    assert_eq!(env.fake.instance_count(), 1);
    assert_eq!(env.fake.firewall_count(), 1);
    env.assert_no_violations();
    let statuses: Vec<u16> = env.fake.requests().iter().map(|r| r.status).collect();
    assert!(statuses.contains(&429) && statuses.contains(&503) && statuses.contains(&502));
}

/// A create that the API commits but whose answer is lost (here a 500): the client's
/// retried POST gets "Label must be unique", and deploy must adopt the resource the first
/// attempt made (found by tag and label) instead of failing or duplicating it.
fn lost_create_is_adopted(path: &str) {
    let env = Env::new();
    env.fake
        .inject("POST", path, Fault::CommitThenStatus(500), 1);
    let run = env.deploy(&[]);
    run.assert_code(0).assert_contains("BASE_URL=");
    let posts: Vec<u16> = env
        .fake
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path == path)
        .map(|r| r.status)
        .collect();
    assert_eq!(
        posts,
        vec![500, 400],
        "the retried POST must meet the lost create"
    );
    assert_eq!(env.fake.instance_count(), 1);
    assert_eq!(env.fake.firewall_count(), 1);
    let fw_id = env.fake.state().firewalls.keys().next().copied().unwrap();
    let inst_id = env.fake.state().instances.keys().next().copied().unwrap();
    assert!(run
        .all()
        .contains(&format!("Cloud Firewall ai-sandbox-fw ({fw_id})")));
    assert!(run.all().contains(&format!("Created instance {inst_id} ")));
    let instance_posts: Vec<Value> = env
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path == "/linode/instances")
        .filter_map(|r| r.body)
        .collect();
    assert!(!instance_posts.is_empty());
    assert!(instance_posts
        .iter()
        .all(|b| b["firewall_id"] == json!(fw_id)));
    env.assert_no_violations();
    env.run(&["destroy", "-y"]).assert_code(0);
    env.assert_nothing_left();
}

#[test]
fn lost_firewall_create_after_a_retried_post_is_adopted() {
    lost_create_is_adopted("/networking/firewalls");
}

#[test]
fn lost_instance_create_after_a_retried_post_is_adopted() {
    lost_create_is_adopted("/linode/instances");
}

fn linode_error(reason: &str) -> Fault {
    Fault::Body {
        status: 400,
        body: json!({"errors": [{"reason": reason}]}),
    }
}

#[test]
fn firewall_create_failure_creates_nothing_and_quotes_linode() {
    let env = Env::new();
    let reason = "You have reached the limit of Cloud Firewalls for this account.";
    env.fake
        .inject("POST", "/networking/firewalls", linode_error(reason), 1);
    env.deploy(&[])
        .assert_code(2)
        .assert_contains("creating the Cloud Firewall failed")
        .assert_contains(reason)
        .assert_contains("Nothing was created");
    env.assert_nothing_left();
    assert!(env
        .writes()
        .iter()
        .all(|w| !w.contains("/linode/instances")));
    env.assert_no_violations();
}

#[test]
fn instance_create_failure_removes_the_firewall() {
    let env = Env::new();
    let reason = "There is no availability for the selected plan in the selected region.";
    env.fake
        .inject("POST", "/linode/instances", linode_error(reason), 1);
    env.deploy(&[])
        .assert_code(2)
        .assert_contains("creating the instance failed")
        .assert_contains(reason)
        .assert_contains("Not created: instance")
        .assert_contains("Cleaned up: deleted firewall");
    env.assert_nothing_left();
    env.assert_no_violations();
}

#[test]
fn instance_polls_failing_persistently_cleans_up() {
    let env = Env::new();
    // Six attempts (the client's bound) of the first status poll all fail.
    env.fake
        .inject("GET", "/linode/instances/", Fault::Status(500), 6);
    env.deploy(&[])
        .assert_code(2)
        .assert_contains("waiting for the instance to run failed")
        .assert_contains("HTTP 500")
        .assert_contains("Cleaned up:");
    env.assert_nothing_left();
    env.assert_no_violations();
}

#[test]
fn instance_going_offline_cleans_up() {
    let env = Env::new();
    let offline = Fault::Body {
        status: 200,
        body: json!({"id": 1002, "label": "ai-sandbox", "status": "offline",
                     "ipv4": ["203.0.113.2"], "region": "us-ord", "tags": ["ai-sandbox"]}),
    };
    env.fake.inject("GET", "/linode/instances/", offline, 1);
    env.deploy(&[])
        .assert_code(2)
        .assert_contains("the instance went offline instead of running")
        .assert_contains("Cleaned up:");
    env.assert_nothing_left();
}

#[test]
fn health_timeout_cleans_up_or_keeps_on_request() {
    let env = Env::with_health(u32::MAX);
    env.deploy(&["--timeout", "1s"])
        .assert_code(2)
        .assert_contains("was not ready after")
        .assert_contains("Cleaned up: deleted instance");
    env.assert_nothing_left();

    env.deploy(&["--timeout", "1s", "--keep-on-failure"])
        .assert_code(2)
        .assert_contains("Created and kept:")
        .assert_contains("ai-sandbox destroy ai-sandbox -y");
    assert_eq!(env.fake.instance_count(), 1);
    env.run(&["destroy", "-y"]).assert_code(0);
    env.assert_nothing_left();
    env.assert_no_violations();
}

#[test]
fn ctrl_c_during_the_wait_destroys_what_was_created() {
    let env = Env::with_health(u32::MAX);
    let child = env.spawn_deploy();
    env.wait_for_health_calls(3);
    assert_eq!(env.fake.instance_count(), 1);
    interrupt(child)
        .assert_code(2)
        .assert_contains("interrupted")
        .assert_contains("Cleaned up:");
    env.assert_nothing_left();
    env.assert_no_violations();
}

/// Sends SIGINT (what Ctrl-C sends) to a spawned `deploy` and returns how it ended.
fn interrupt(child: std::process::Child) -> cli_support::Run {
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    cli_support::Run::from(child.wait_with_output().unwrap())
}

#[test]
fn a_second_deploy_or_destroy_of_a_running_name_is_refused_on_this_machine() {
    let env = Env::with_health(u32::MAX);
    let child = env.spawn_deploy();
    env.wait_for_health_calls(3);
    let busy = format!("is running on this machine (process {})", child.id());
    env.deploy(&[]).assert_code(2).assert_contains(&busy);
    env.run(&["destroy", "-y"])
        .assert_code(2)
        .assert_contains(&busy);
    // Another name is not blocked.
    env.deploy(&["--name", "other", "--no-wait"])
        .assert_code(0);
    assert_eq!(env.fake.instance_count(), 2);
    assert_eq!(env.fake.firewall_count(), 2);
    interrupt(child)
        .assert_code(2)
        .assert_contains("Cleaned up:");
    // The first run removed only its own deployment; the name is free again.
    assert_eq!(env.fake.instance_count(), 1);
    env.run(&["destroy", "-y"])
        .assert_code(0)
        .assert_contains("Nothing to destroy");
    env.run(&["destroy", "other", "-y"]).assert_code(0);
    env.assert_nothing_left();
    env.assert_no_violations();
}

#[test]
fn ctrl_c_while_a_create_is_unanswered_still_finds_and_destroys_it() {
    for path in ["/networking/firewalls", "/linode/instances"] {
        let env = Env::new();
        env.fake.inject("POST", path, Fault::CommitThenStall, 1);
        let child = env.spawn_deploy();
        let start = std::time::Instant::now();
        while !env.fake.requests().iter().any(|r| r.method == "POST" && r.path == path) {
            assert!(start.elapsed().as_secs() < 60, "{path} was never sent");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The resource exists; its answer is held back.
        interrupt(child)
            .assert_code(2)
            .assert_contains("interrupted")
            .assert_contains("Cleaned up:");
        env.assert_nothing_left();
        env.assert_no_violations();
    }
}

/// Another deploy of the same name (from another machine: no local lock) creates the
/// resource at `path` between this run's plan and its create.
fn rival_creates_first(path: &str) -> Env {
    let env = Env::new();
    env.fake.inject("POST", path, Fault::RivalFirst, 1);
    let run = env.deploy(&[]);
    run.assert_code(2)
        .assert_contains("made by someone else")
        .assert_contains("this run leaves it alone");
    env.assert_no_violations();
    env
}

#[test]
fn a_rival_firewall_is_neither_adopted_nor_destroyed() {
    let env = rival_creates_first("/networking/firewalls");
    assert_eq!(env.fake.firewall_count(), 1, "the rival's firewall stays");
    assert_eq!(env.fake.instance_count(), 0, "no instance behind a firewall not ours");
    let posts = env.methods().iter().filter(|m| *m == "POST").count();
    assert_eq!(posts, 1, "one POST (the firewall's), not retried");
}

#[test]
fn a_rival_instance_is_neither_adopted_nor_destroyed() {
    let env = rival_creates_first("/linode/instances");
    assert_eq!(env.fake.instance_count(), 1, "the rival's instance stays");
    assert_eq!(env.fake.firewall_count(), 0, "this run's own firewall is cleaned up");
}

#[test]
fn redeploy_by_name_reports_it_and_replace_recreates() {
    let env = Env::new();
    env.deploy(&["--name", "box1"]).assert_code(0);
    let first = *env.fake.state().instances.keys().next().unwrap();

    let again = env.deploy(&["--name", "box1"]);
    again
        .assert_code(0)
        .assert_contains("already exists")
        .assert_contains("--replace")
        .assert_contains("BASE_URL=");
    assert_eq!(env.fake.instance_count(), 1);
    assert_eq!(env.fake.firewall_count(), 1);

    // A different name is a separate deployment.
    env.deploy(&["--name", "box2", "--no-wait"]).assert_code(0);
    assert_eq!(env.fake.instance_count(), 2);

    env.deploy(&["--name", "box1", "--replace"])
        .assert_code(0)
        .assert_contains("Destroying the existing deployment")
        .assert_contains("BASE_URL=");
    assert_eq!(env.fake.instance_count(), 2);
    assert_eq!(env.fake.firewall_count(), 2);
    assert!(!env.fake.state().instances.contains_key(&first));

    env.run(&["destroy", "box1", "-y"]).assert_code(0);
    env.run(&["destroy", "box2", "-y"]).assert_code(0);
    env.assert_nothing_left();
    env.assert_no_violations();
}

#[test]
fn confirmation_is_required_without_a_terminal() {
    let env = Env::new();
    env.run(&["deploy", "--region", "us-ord", "--api-image", API_IMAGE])
        .assert_code(2)
        .assert_contains("pass -y");
    assert!(env.writes().is_empty());
    env.deploy(&["--no-wait"]).assert_code(0);
    env.run(&["destroy"])
        .assert_code(2)
        .assert_contains("pass -y");
    assert_eq!(env.fake.instance_count(), 1);
    env.run(&["destroy", "-y"]).assert_code(0);
    env.assert_nothing_left();
}

#[test]
fn without_api_image_deploy_needs_a_source_tree_before_creating_anything() {
    let env = Env::new();
    env.run(&["deploy", "-y", "--region", "us-ord"])
        .assert_code(2)
        .assert_contains("--api-image")
        .assert_contains("AI_SANDBOX_SOURCE_DIR");
    assert!(env.writes().is_empty());
}
