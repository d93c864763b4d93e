//! No secret reaches a rendered file: with the Hugging Face and Linode tokens set in the
//! environment, nothing rendered (user data, its base64, every instance file, the firewall
//! body, compose, .env, unit) contains them, a password, or a token variable.

mod render_util;

use std::collections::BTreeMap;

use ai_sandbox_provisioner::config::PartialConfig;
use ai_sandbox_provisioner::render::{
    firewall_request, instance_files, render_cloud_init, render_compose, render_env,
    render_service_unit, user_data_base64,
};
use render_util::KEY;

const HF_TOKEN: &str = "hf_TestTokenDoNotLeak1234567890";
const LINODE_TOKEN: &str = "linode-token-do-not-leak-0987654321";

#[test]
fn rendered_files_hold_no_secrets() {
    let vars: BTreeMap<String, String> = [
        ("HF_TOKEN", HF_TOKEN),
        ("LINODE_TOKEN", LINODE_TOKEN),
        ("AI_SANDBOX_REGION", "us-ord"),
        ("AI_SANDBOX_ALLOW", "203.0.113.7"),
        ("AI_SANDBOX_SSH_KEY", "/k.pub"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let cfg = PartialConfig::from_env(&vars)
        .unwrap()
        .resolve(|_| Ok(KEY.to_string()))
        .unwrap()
        .config;
    assert!(cfg.hf_token_present);

    let user_data = render_cloud_init(&cfg).unwrap();
    let mut outputs = vec![
        ("user-data".to_string(), user_data.clone()),
        (
            "user-data base64".to_string(),
            user_data_base64(&user_data).unwrap(),
        ),
        (
            "firewall".to_string(),
            serde_json::to_string(&firewall_request(&cfg)).unwrap(),
        ),
        ("compose".to_string(), render_compose(&cfg).unwrap()),
        (".env".to_string(), render_env(&cfg).unwrap()),
        ("unit".to_string(), render_service_unit(&cfg).unwrap()),
        ("config".to_string(), format!("{cfg:?}")),
    ];
    outputs.extend(
        instance_files(&cfg)
            .unwrap()
            .into_iter()
            .map(|f| (f.path.to_string(), f.content)),
    );
    for (what, text) in &outputs {
        let lower = text.to_lowercase();
        for needle in [
            HF_TOKEN,
            LINODE_TOKEN,
            "TestTokenDoNotLeak",
            "root_pass",
            "password",
            "HF_TOKEN=",
            "passwd",
        ] {
            assert!(
                !text.contains(needle) && !lower.contains(&needle.to_lowercase()),
                "{what} contains {needle:?}"
            );
        }
    }
    // The token's place is a mounted root-only file, named but never filled in here.
    assert!(user_data.contains("/opt/ai-sandbox/secrets/hf_token"));
}
