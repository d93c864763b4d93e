//! The Linode API client against the in-process fake Linode API: happy path, retries
//! (429 + Retry-After, 5xx, "Linode busy", maintenance), error reasons verbatim,
//! pagination, `X-Filter` shape, secret redaction, and spec validation of every request
//! body (including proof that the validator rejects bad bodies).

#[path = "support/fake_linode/mod.rs"]
mod fake_linode;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ai_sandbox_provisioner::linode::request::{self, ApiRequest, Filter, LoggedRequest, Method};
use ai_sandbox_provisioner::linode::*;
use fake_linode::spec::spec;
use fake_linode::{FakeLinode, Fault, FAKE_TOKEN};
use serde_json::{json, Value};

#[derive(Default)]
struct RecordingSleeper(Mutex<Vec<Duration>>);

impl Sleeper for RecordingSleeper {
    fn sleep(&self, d: Duration) -> SleepFuture<'_> {
        self.0.lock().unwrap().push(d);
        Box::pin(async {})
    }
}

impl RecordingSleeper {
    fn waits(&self) -> Vec<Duration> {
        self.0.lock().unwrap().clone()
    }
}

struct Harness {
    fake: FakeLinode,
    client: LinodeClient,
    sleeper: Arc<RecordingSleeper>,
    log: Arc<Mutex<Vec<LoggedRequest>>>,
}

async fn harness(max_attempts: u32) -> Harness {
    let fake = FakeLinode::start().await;
    let sleeper = Arc::new(RecordingSleeper::default());
    let log = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&log);
    let retry = RetryPolicy {
        max_attempts,
        ..RetryPolicy::with_sleeper(sleeper.clone())
    };
    let client = LinodeClient::new(ApiToken::new(FAKE_TOKEN).unwrap(), fake.base_url())
        .unwrap()
        .with_retry(retry)
        .with_request_hook(Arc::new(move |r: &LoggedRequest| {
            sink.lock().unwrap().push(r.clone())
        }));
    Harness {
        fake,
        client,
        sleeper,
        log,
    }
}

fn firewall_request(label: &str) -> CreateFirewallRequest {
    let allow = |port: &str, label: &str| FirewallRule {
        action: FirewallAction::Accept,
        protocol: FirewallProtocol::Tcp,
        ports: Some(port.into()),
        addresses: FirewallAddresses {
            ipv4: Some(vec!["203.0.113.5/32".into()]),
            ipv6: None,
        },
        label: Some(label.into()),
        description: None,
    };
    CreateFirewallRequest {
        label: label.into(),
        rules: FirewallRules {
            inbound: vec![allow("22", "allow-ssh"), allow("8000", "allow-api")],
            inbound_policy: FirewallAction::Drop,
            outbound: vec![],
            outbound_policy: FirewallAction::Accept,
        },
        tags: vec!["ai-sandbox".into(), "ai-sandbox:demo".into()],
        devices: None,
    }
}

fn instance_request(label: &str, firewall_id: Option<u64>) -> CreateInstanceRequest {
    CreateInstanceRequest {
        label: Some(label.into()),
        image: Some("linode/ubuntu24.04".into()),
        root_pass: Some(RootPassword::generate().unwrap()),
        authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyKeyKey user@host".into()],
        // "#cloud-config\n" in base64, no line wraps.
        metadata: Some(InstanceMetadata {
            user_data: "I2Nsb3VkLWNvbmZpZwo=".into(),
        }),
        firewall_id,
        tags: vec!["ai-sandbox".into(), format!("ai-sandbox:{label}")],
        booted: Some(true),
        ..CreateInstanceRequest::new("us-ord", "g2-gpu-rtx4000a1-s")
    }
}

#[tokio::test]
async fn happy_path_deploy_status_destroy() {
    let h = harness(4).await;
    let c = &h.client;

    let region = c.get_region("us-ord").await.unwrap();
    assert!(region.has_capability(capability::GPU_LINODES));
    assert!(region.has_capability(capability::METADATA));
    assert!(!c
        .get_region("us-east")
        .await
        .unwrap()
        .has_capability(capability::GPU_LINODES));

    let gpu = c.list_gpu_types().await.unwrap();
    assert_eq!(gpu.len(), 2, "{gpu:?}");
    let plan = c.get_type("g2-gpu-rtx4000a1-s").await.unwrap();
    assert!(plan.is_gpu());
    assert_eq!(plan.price_in("us-ord").hourly, Some(0.52));
    assert_eq!(plan.price_in("us-ord").monthly, Some(350.0));
    assert!(c
        .get_image("linode/ubuntu24.04")
        .await
        .unwrap()
        .supports_cloud_init());
    assert!(!c
        .get_image("linode/slackware15.0")
        .await
        .unwrap()
        .supports_cloud_init());
    c.get_account().await.unwrap();

    let fw = c
        .create_firewall(&firewall_request("ai-sandbox-demo"))
        .await
        .unwrap();
    assert_eq!(fw.label, "ai-sandbox-demo");
    assert_eq!(fw.rules.inbound_policy, FirewallAction::Drop);
    assert_eq!(fw.rules.inbound.len(), 2);

    let created = c
        .create_instance(&instance_request("demo", Some(fw.id)))
        .await
        .unwrap();
    assert_eq!(created.status, InstanceStatus::Provisioning);
    assert!(created.public_ipv4().is_some());
    let mut seen = vec![];
    for _ in 0..10 {
        let i = c.get_instance(created.id).await.unwrap();
        seen.push(i.status.clone());
        if i.status == InstanceStatus::Running {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            InstanceStatus::Provisioning,
            InstanceStatus::Booting,
            InstanceStatus::Running
        ]
    );

    let devices = c.list_firewall_devices(fw.id).await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].entity.id, created.id);
    assert_eq!(c.get_firewall(fw.id).await.unwrap().id, fw.id);

    let mine = c.instances_with_tag("ai-sandbox:demo").await.unwrap();
    assert_eq!(mine.iter().map(|i| i.id).collect::<Vec<_>>(), [created.id]);
    assert_eq!(
        c.list_instances(Some(Filter::label("demo")))
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(c
        .list_instances(Some(Filter::label("other")))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(c.firewalls_with_tag("ai-sandbox").await.unwrap().len(), 1);

    c.delete_instance(created.id).await.unwrap();
    assert!(c.get_instance(created.id).await.unwrap_err().is_not_found());
    assert!(c.list_firewall_devices(fw.id).await.unwrap().is_empty());
    c.delete_firewall(fw.id).await.unwrap();
    assert!(c.delete_firewall(fw.id).await.unwrap_err().is_not_found());
    assert!(c.instances_with_tag("ai-sandbox").await.unwrap().is_empty());
    assert!(c.firewalls_with_tag("ai-sandbox").await.unwrap().is_empty());

    assert_eq!(h.fake.instance_count() + h.fake.firewall_count(), 0);
    assert!(h.sleeper.waits().is_empty(), "no retries expected");
    let violations = h.fake.violations();
    assert!(violations.is_empty(), "{violations:#?}");
}

#[tokio::test]
async fn rate_limit_is_retried_honouring_retry_after() {
    let h = harness(5).await;
    h.fake.inject(
        "GET",
        "/regions",
        Fault::RateLimited {
            retry_after_secs: 7,
        },
        2,
    );
    let r = h.client.get_region("us-ord").await.unwrap();
    assert_eq!(r.id, "us-ord");
    assert_eq!(
        h.sleeper.waits(),
        [Duration::from_secs(7), Duration::from_secs(7)]
    );
    assert_eq!(h.fake.requests().len(), 3);
    assert!(h.fake.violations().is_empty());
}

#[tokio::test]
async fn server_errors_and_busy_are_retried_without_duplicating() {
    let h = harness(5).await;
    h.fake
        .inject("POST", "/linode/instances", Fault::Status(500), 1);
    h.fake.inject("POST", "/linode/instances", Fault::Busy, 1);
    h.fake
        .inject("POST", "/linode/instances", Fault::Status(502), 1);
    let i = h
        .client
        .create_instance(&instance_request("retry", None))
        .await
        .unwrap();
    assert_eq!(i.label, "retry");
    assert_eq!(h.fake.instance_count(), 1);
    let waits = h.sleeper.waits();
    assert_eq!(waits.len(), 3);
    // Default base 500 ms doubling with equal jitter: [250,500], [500,1000], [1000,2000] ms.
    for (w, lo) in waits.iter().zip([250u64, 500, 1000]) {
        assert!(
            *w >= Duration::from_millis(lo) && *w <= Duration::from_millis(lo * 2),
            "{waits:?}"
        );
    }
    assert!(h.fake.violations().is_empty(), "{:?}", h.fake.violations());
}

#[tokio::test]
async fn persistent_server_error_gives_up_with_the_reasons() {
    let h = harness(4).await;
    h.fake
        .inject("GET", "/linode/types", Fault::Status(502), 100);
    let err = h.client.get_type("g2-gpu-rtx4000a1-s").await.unwrap_err();
    match &err {
        LinodeError::Api {
            status,
            errors,
            method,
            path,
            attempts,
        } => {
            assert_eq!(*status, 502);
            assert_eq!(*attempts, 4, "every attempt of the policy was sent");
            assert_eq!(errors[0].reason, "Internal Server Error (injected)");
            assert_eq!(*method, Method::Get);
            assert_eq!(path, "/linode/types/g2-gpu-rtx4000a1-s");
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    assert!(err.to_string().contains("Internal Server Error (injected)"));
    assert_eq!(h.fake.requests().len(), 4, "bounded attempts");
    assert_eq!(h.sleeper.waits().len(), 3);
}

#[tokio::test]
async fn maintenance_503_is_not_retried() {
    let h = harness(5).await;
    h.fake.inject("GET", "/account", Fault::Maintenance, 5);
    let err = h.client.get_account().await.unwrap_err();
    assert_eq!(err.status(), Some(503));
    assert_eq!(h.fake.requests().len(), 1);
    assert!(h.sleeper.waits().is_empty());
}

#[tokio::test]
async fn linode_400_reasons_reach_the_user_verbatim() {
    let h = harness(5).await;
    h.client
        .create_instance(&instance_request("twin", None))
        .await
        .unwrap();
    let err = h
        .client
        .create_instance(&instance_request("twin", None))
        .await
        .unwrap_err();
    assert_eq!(
        err.details(),
        [ApiErrorDetail {
            field: Some("label".into()),
            reason: "Label must be unique among your linodes".into()
        }]
    );
    assert!(
        err.to_string()
            .contains("label: Label must be unique among your linodes"),
        "{err}"
    );

    let body = json!({"errors": [
        {"field": "type", "reason": "There is no availability for the selected plan in the selected region."},
        {"field": null, "reason": "Please open a support ticket to enable GPU plans."}
    ]});
    h.fake.inject(
        "POST",
        "/linode/instances",
        Fault::Body { status: 400, body },
        1,
    );
    let err = h
        .client
        .create_instance(&instance_request("third", None))
        .await
        .unwrap_err();
    assert_eq!(err.details().len(), 2);
    assert_eq!(err.details()[1].field, None);
    let text = err.to_string();
    assert!(text
        .contains("type: There is no availability for the selected plan in the selected region."));
    assert!(text.contains("Please open a support ticket to enable GPU plans."));
    assert!(h.sleeper.waits().is_empty(), "a plain 400 is not retried");
}

#[tokio::test]
async fn pagination_follows_pages() {
    let mut h = harness(3).await;
    h.client = h.client.clone().with_page_size(25);
    {
        let mut st = h.fake.state();
        for n in 0..60 {
            st.seed_instance(&format!("box{n:02}"), &["ai-sandbox"]);
        }
        st.seed_instance("unrelated", &["other"]);
    }
    let all = h.client.instances_with_tag("ai-sandbox").await.unwrap();
    assert_eq!(all.len(), 60);
    let mut labels: Vec<_> = all.iter().map(|i| i.label.clone()).collect();
    labels.dedup();
    assert_eq!(labels.len(), 60, "no page fetched twice");
    let paths: Vec<_> = h.fake.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/linode/instances?page=1&page_size=25",
            "/linode/instances?page=2&page_size=25",
            "/linode/instances?page=3&page_size=25"
        ]
    );
    assert_eq!(h.client.list_instances(None).await.unwrap().len(), 61);
    assert!(h.fake.violations().is_empty());
}

#[tokio::test]
async fn tag_filters_are_strings_and_arrays_are_caught() {
    let h = harness(3).await;
    h.client.instances_with_tag("ai-sandbox").await.unwrap();
    h.client.list_gpu_types().await.unwrap();
    let filters: Vec<_> = h
        .fake
        .requests()
        .into_iter()
        .filter_map(|r| r.x_filter)
        .collect();
    assert_eq!(filters, [r#"{"tags":"ai-sandbox"}"#, r#"{"class":"gpu"}"#]);
    assert!(h.fake.violations().is_empty());

    // The fake rejects what Linode rejects: a tag filter given as an array.
    let mut bad = request::list_instances(None);
    bad.filter = Some(Filter::new().and("tags", json!(["ai-sandbox"])));
    let err = h.client.send::<Value>(&bad).await.unwrap_err();
    assert_eq!(err.details()[0].field.as_deref(), Some("X-Filter"));
    assert_eq!(
        err.details()[0].reason,
        "Tags filter must be a string or dict"
    );
    assert_eq!(h.fake.violations().len(), 1);
}

#[tokio::test]
async fn secrets_never_reach_debug_output_or_request_logs() {
    let h = harness(3).await;
    let req = instance_request("secret", None);
    let password = req.root_pass.clone().unwrap();
    let pw = password.expose_secret().to_owned();
    h.client.create_instance(&req).await.unwrap();
    h.fake.inject("GET", "/account", Fault::Status(401), 1);
    let err = h.client.get_account().await.unwrap_err();

    let mut outputs = vec![
        format!("{:?}", h.client),
        format!("{req:?}"),
        format!("{password:?}"),
        format!("{:?}", ApiToken::new(FAKE_TOKEN).unwrap()),
        format!("{err} {err:?}"),
        serde_json::to_string(&*h.log.lock().unwrap()).unwrap(),
        serde_json::to_string(&request::create_instance(&req).unwrap().to_logged()).unwrap(),
    ];
    outputs.push(format!("{:?}", h.log.lock().unwrap()));
    for out in &outputs {
        assert!(!out.contains(FAKE_TOKEN), "token leaked: {out}");
        assert!(!out.contains(&pw), "root password leaked: {out}");
    }
    let logged = h.log.lock().unwrap();
    let create = logged.iter().find(|r| r.method == Method::Post).unwrap();
    assert_eq!(create.body.as_ref().unwrap()["root_pass"], REDACTED);
    assert_eq!(create.headers["Authorization"], "Bearer <redacted>");
    // ...while the real request did carry them.
    let sent = h.fake.requests();
    assert!(sent.iter().all(|r| r.authorized || r.status == 401));
    assert_eq!(sent[0].body.as_ref().unwrap()["root_pass"], json!(pw));
}

#[tokio::test]
async fn planned_requests_are_exactly_what_is_sent() {
    let h = harness(3).await;
    let fw = firewall_request("ai-sandbox-plan");
    let planned: ApiRequest = request::create_firewall(&fw).unwrap();
    let got = h.client.create_firewall(&fw).await.unwrap();
    let sent = h.fake.requests().pop().unwrap();
    assert_eq!(sent.body, planned.body);
    assert_eq!(sent.path, planned.path_and_query());
    let inst = instance_request("plan", Some(got.id));
    let planned = request::create_instance(&inst).unwrap();
    h.client.create_instance(&inst).await.unwrap();
    let sent = h.fake.requests().pop().unwrap();
    assert_eq!(sent.body, planned.body);
    // No optional field is sent as null.
    let body = planned.body.unwrap();
    assert!(body.as_object().unwrap().values().all(|v| !v.is_null()));
    assert!(h.fake.violations().is_empty(), "{:?}", h.fake.violations());
}

#[tokio::test]
async fn invalid_bodies_are_caught_by_the_spec_validator() {
    let h = harness(3).await;

    // Firewall label over 32 characters.
    let err = h
        .client
        .create_firewall(&firewall_request(&"a".repeat(40)))
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert_eq!(err.details()[0].field.as_deref(), Some("label"));
    assert!(!is_valid_label(&"a".repeat(40), FIREWALL_LABEL_MAX));

    let raw = |path: &str, body: Value| ApiRequest {
        method: Method::Post,
        path: path.into(),
        query: vec![],
        filter: None,
        body: Some(body),
    };
    let cases = [
        (
            "null label",
            "/linode/instances",
            json!({"region": "us-ord", "type": "g2-gpu-rtx4000a1-s", "label": null}),
        ),
        (
            "missing region",
            "/linode/instances",
            json!({"type": "g2-gpu-rtx4000a1-s"}),
        ),
        (
            "unknown field",
            "/linode/instances",
            json!({"region": "us-ord", "type": "g2-gpu-rtx4000a1-s", "bogus": 1}),
        ),
        (
            "wrapped user data",
            "/linode/instances",
            json!({"region": "us-ord", "type": "g2-gpu-rtx4000a1-s",
                "metadata": {"user_data": "I2Nsb3Vk\nLWNvbmZpZwo="}}),
        ),
        (
            "short root_pass",
            "/linode/instances",
            json!({"region": "us-ord", "type": "g2-gpu-rtx4000a1-s", "root_pass": "abc"}),
        ),
        (
            "bad label pattern",
            "/linode/instances",
            json!({"region": "us-ord", "type": "g2-gpu-rtx4000a1-s", "label": "has space"}),
        ),
        (
            "double dash in label",
            "/linode/instances",
            json!({"region": "us-ord", "type": "g2-gpu-rtx4000a1-s", "label": "ab--cd"}),
        ),
        (
            "tags not strings",
            "/linode/instances",
            json!({"region": "us-ord", "type": "g2-gpu-rtx4000a1-s", "tags": [1]}),
        ),
        (
            "bad policy enum",
            "/networking/firewalls",
            json!({"label": "fw-ok", "rules": {"inbound_policy": "DENY", "outbound_policy": "ACCEPT"}}),
        ),
        (
            "rule without addresses",
            "/networking/firewalls",
            json!({"label": "fw-ok", "rules": {"inbound_policy": "DROP", "outbound_policy": "ACCEPT",
                "inbound": [{"action": "ACCEPT", "protocol": "TCP", "ports": "22"}]}}),
        ),
        (
            "read-only id sent",
            "/networking/firewalls",
            json!({"id": 5, "label": "fw-ok", "rules": {"inbound_policy": "DROP", "outbound_policy": "ACCEPT"}}),
        ),
        (
            "missing policy",
            "/networking/firewalls",
            json!({"label": "fw-ok", "rules": {"inbound_policy": "DROP"}}),
        ),
    ];
    for (name, path, body) in &cases {
        let before = h.fake.violations().len();
        let err = h
            .client
            .send::<Value>(&raw(path, body.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(400), "{name}: {err}");
        let new = &h.fake.violations()[before..];
        assert!(!new.is_empty(), "{name} was not recorded as a violation");
        eprintln!(
            "{name}: {:?}",
            new.iter().map(|v| &v.problem).collect::<Vec<_>>()
        );
    }
    assert_eq!(h.fake.instance_count() + h.fake.firewall_count(), 0);

    // And minimal valid bodies pass the same validator.
    let s = spec();
    for (tpl, body) in [
        (
            "/{apiVersion}/linode/instances",
            json!({"region": "us-ord", "type": "g1"}),
        ),
        (
            "/{apiVersion}/networking/firewalls",
            json!({"label": "fw-ok", "rules": {"inbound_policy": "DROP", "outbound_policy": "ACCEPT",
                "inbound": [{"action": "ACCEPT", "protocol": "TCP", "ports": "22",
                             "addresses": {"ipv4": ["0.0.0.0/0"]}}]},
                "devices": {"linodes": [1]}}),
        ),
        (
            "/{apiVersion}/networking/firewalls/{firewallId}/devices",
            json!({"id": 1, "type": "linode"}),
        ),
    ] {
        assert_eq!(s.validate_request("POST", tpl, &body), Ok(()), "{tpl}");
    }
}

#[tokio::test]
async fn server_side_rules_the_spec_cannot_express() {
    let h = harness(3).await;
    let mut weak = instance_request("weak", None);
    weak.root_pass = None;
    let err = h.client.create_instance(&weak).await.unwrap_err();
    assert_eq!(err.details()[0].field.as_deref(), Some("root_pass"));

    let mut no_meta = instance_request("nometa", None);
    no_meta.region = "us-sea".into();
    let err = h.client.create_instance(&no_meta).await.unwrap_err();
    assert_eq!(err.details()[0].field.as_deref(), Some("metadata"));

    let err = h
        .client
        .create_instance(&instance_request("nofw", Some(424242)))
        .await
        .unwrap_err();
    assert_eq!(err.details()[0].field.as_deref(), Some("firewall_id"));
    assert_eq!(h.fake.instance_count(), 0);
}

#[tokio::test]
async fn unreachable_api_is_a_transport_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v4", listener.local_addr().unwrap());
    drop(listener);
    let sleeper = Arc::new(RecordingSleeper::default());
    let client = LinodeClient::new(ApiToken::new("t0ken").unwrap(), &url)
        .unwrap()
        .with_retry(RetryPolicy {
            max_attempts: 3,
            ..RetryPolicy::with_sleeper(sleeper.clone())
        });
    let err = client.get_region("us-ord").await.unwrap_err();
    assert!(matches!(err, LinodeError::Transport { .. }), "{err:?}");
    assert_eq!(
        sleeper.waits().len(),
        2,
        "connect failures are retried, bounded"
    );
    assert!(!format!("{err} {err:?}").contains("t0ken"));
}

#[test]
fn fake_runs_on_its_own_thread_for_cli_tests() {
    let fake = FakeLinode::start_in_background();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = LinodeClient::new(ApiToken::new(fake.token()).unwrap(), fake.base_url()).unwrap();
    let region = rt.block_on(client.get_region("us-ord")).unwrap();
    assert_eq!(region.id, "us-ord");
    assert!(fake.violations().is_empty());
}
