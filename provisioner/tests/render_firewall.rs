//! The Cloud Firewall request body: golden JSON, Linode's own request schema (v4.189.0,
//! through the fake API's spec loader) and the rules' semantics.

mod render_util;
#[allow(dead_code)]
#[path = "support/fake_linode/spec.rs"]
mod spec;

use ai_sandbox_provisioner::render::firewall_request;
use render_util::*;
use serde_json::{json, Value};

const FIREWALLS: &str = "/{apiVersion}/networking/firewalls";

#[test]
fn golden_json() {
    insta::assert_json_snapshot!("firewall_default", firewall_request(&default_config()));
    insta::assert_json_snapshot!("firewall_tricky", firewall_request(&tricky_config()));
}

#[test]
fn valid_against_the_linode_spec() {
    let v4_only = config(|p| p.allow = Some(vec!["198.51.100.0/24".into()]));
    let v6_only = config(|p| p.allow = Some(vec!["2001:db8::/32".into()]));
    for cfg in [default_config(), tricky_config(), v4_only, v6_only] {
        let body = serde_json::to_value(firewall_request(&cfg)).unwrap();
        if let Err(errors) = spec::spec().validate_request("POST", FIREWALLS, &body) {
            panic!("{body:#}\n{errors:#?}");
        }
    }
    // The check can fail: a 33-character label is rejected.
    let mut body = serde_json::to_value(firewall_request(&default_config())).unwrap();
    body["label"] = json!("a".repeat(33));
    assert!(spec::spec()
        .validate_request("POST", FIREWALLS, &body)
        .is_err());
}

#[test]
fn rules_drop_by_default_and_admit_ssh_and_api_from_allow_only() {
    let cfg = default_config();
    let body: Value = serde_json::to_value(firewall_request(&cfg)).unwrap();
    assert_eq!(body["label"], json!("ai-sandbox-fw"));
    assert_eq!(body["tags"], json!(["ai-sandbox", "ai-sandbox:ai-sandbox"]));
    let rules = &body["rules"];
    assert_eq!(rules["inbound_policy"], json!("DROP"));
    assert_eq!(rules["outbound_policy"], json!("ACCEPT"));
    assert_eq!(rules["outbound"], json!([]));
    let inbound = rules["inbound"].as_array().unwrap();
    let ports: Vec<&Value> = inbound.iter().map(|r| &r["ports"]).collect();
    assert_eq!(ports, [&json!("22"), &json!("8000")]);
    for r in inbound {
        assert_eq!(r["action"], json!("ACCEPT"));
        assert_eq!(r["protocol"], json!("TCP"));
        assert_eq!(
            r["addresses"],
            json!({"ipv4": ["203.0.113.7/32"], "ipv6": ["2001:db8:1234::/48"]})
        );
    }
    // A v4-only allow list sends no ipv6 key at all (Linode rejects empty lists).
    let v4 = config(|p| p.allow = Some(vec!["198.51.100.0/24".into()]));
    let body = serde_json::to_value(firewall_request(&v4)).unwrap();
    assert_eq!(
        body["rules"]["inbound"][0]["addresses"],
        json!({"ipv4": ["198.51.100.0/24"]})
    );
    assert!(body.get("devices").is_none());
}
