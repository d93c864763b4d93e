//! Rendered cloud-init user data: golden files, cloud-init's JSON schema (draft-04),
//! Debian's `cloud-init schema`, the PyYAML (YAML 1.1) round trip, shell syntax of the
//! embedded scripts and the base64 size limit.

mod render_util;

use std::process::Command;

use ai_sandbox_provisioner::config::DeployConfig;
use ai_sandbox_provisioner::render::{
    instance_files, render_cloud_init, user_data_base64, RenderError, MAX_USER_DATA_BASE64,
};
use base64::Engine as _;
use render_util::*;
use serde_json::{json, Value};

fn configs() -> [(&'static str, DeployConfig); 2] {
    [("default", default_config()), ("tricky", tricky_config())]
}

#[test]
fn golden_default() {
    insta::assert_snapshot!(
        "user_data_default",
        render_cloud_init(&default_config()).unwrap()
    );
}

#[test]
fn golden_tricky() {
    insta::assert_snapshot!(
        "user_data_tricky",
        render_cloud_init(&tricky_config()).unwrap()
    );
}

#[test]
fn starts_with_the_cloud_config_header() {
    for (name, cfg) in configs() {
        let ud = render_cloud_init(&cfg).unwrap();
        assert!(ud.starts_with("#cloud-config\n"), "{name}");
    }
}

/// PyYAML reads exactly what we meant: permissions stay strings, file bodies are
/// byte-for-byte the separately rendered files, and every scalar is a string except the
/// one intended boolean.
#[test]
fn pyyaml_round_trip_gives_the_intended_values() {
    for (name, cfg) in configs() {
        let loaded = pyyaml_to_json(&render_cloud_init(&cfg).unwrap());
        let files = instance_files(&cfg).unwrap();
        let written = loaded["write_files"].as_array().expect("write_files list");
        assert_eq!(written.len(), files.len(), "{name}");
        for (w, f) in written.iter().zip(&files) {
            assert_eq!(
                w,
                &json!({"path": f.path, "owner": "root:root", "permissions": f.mode, "content": f.content}),
                "{name}: {}",
                f.path
            );
        }
        assert!(files.iter().any(|f| f.mode == "0600" || f.mode == "0700"));
        assert_eq!(loaded["ssh_pwauth"], json!(false), "{name}");
        assert_eq!(
            loaded["runcmd"][2],
            json!([
                "systemctl",
                "start",
                "--no-block",
                "ai-sandbox-setup.service"
            ])
        );
        let mut non_strings = Vec::new();
        non_string_leaves(&loaded, "", &mut non_strings);
        assert_eq!(non_strings, vec!["/ssh_pwauth".to_string()], "{name}");
    }
}

fn non_string_leaves(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::String(_) => {}
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| non_string_leaves(x, &format!("{at}/{i}"), out)),
        Value::Object(m) => m
            .iter()
            .for_each(|(k, x)| non_string_leaves(x, &format!("{at}/{k}"), out)),
        _ => out.push(at.to_string()),
    }
}

#[test]
fn name_and_model_that_look_like_yaml_11_values_stay_strings() {
    let cfg = tricky_config();
    let loaded = pyyaml_to_json(&render_cloud_init(&cfg).unwrap());
    let env = loaded["write_files"][1]["content"].as_str().unwrap();
    assert!(env.contains("\nAI_SANDBOX_MODEL=hf:on/0755\n"), "{env}");
    assert!(env.contains("\nAI_SANDBOX_SERVED_MODEL_NAME=on/0755\n"), "{env}");
    let compose = pyyaml_to_json(loaded["write_files"][0]["content"].as_str().unwrap());
    assert_eq!(
        compose["services"]["api"]["image"],
        json!("ghcr.io/example/ai-sandbox-api:0.1.0")
    );
    assert_eq!(
        compose["services"]["api"]["deploy"]["resources"]["reservations"]["devices"][0]["count"],
        json!("all")
    );
}

#[test]
fn valid_against_cloud_init_json_schema() {
    let path = specs_dir().join("cloud-init-schema-cloud-config-v1.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let schema: Value = serde_json::from_str(&text).expect("schema JSON");
    let validator = jsonschema::options()
        .with_draft(jsonschema::Draft::Draft4)
        .build(&schema)
        .expect("compile the cloud-init schema");
    for (name, cfg) in configs() {
        // Validate what cloud-init will see: the YAML 1.1 reading.
        let doc = pyyaml_to_json(&render_cloud_init(&cfg).unwrap());
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{name}: {errors:#?}");
    }
    // The check can fail: an integer mode and an unknown key are rejected.
    let bad = json!({"write_files": [{"path": "/x", "permissions": 384}], "MODEL_ID": "x"});
    assert!(validator.iter_errors(&bad).count() >= 2);
}

#[test]
fn valid_for_debian_cloud_init_schema_command() {
    let dir = tempfile::tempdir().unwrap();
    for (name, cfg) in configs() {
        let file = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&file, render_cloud_init(&cfg).unwrap()).unwrap();
        let out = run(
            Command::new("cloud-init")
                .arg("schema")
                .arg("--config-file")
                .arg(&file),
            None,
            "install it: apt-get install -y --no-install-recommends cloud-init",
        );
        let t = text(&out);
        assert!(
            out.status.success() && t.contains("Valid cloud-config"),
            "{name}: {t}"
        );
    }
    // And it rejects what it should (proves the command really validates).
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "#cloud-config\nwrite_files:\n  - path: /x\n    permissions: 0600\n",
    )
    .unwrap();
    let out = run(
        Command::new("cloud-init")
            .arg("schema")
            .arg("--config-file")
            .arg(&bad),
        None,
        "apt-get install -y --no-install-recommends cloud-init",
    );
    assert!(
        !out.status.success(),
        "integer permissions accepted: {}",
        text(&out)
    );
}

#[test]
fn embedded_scripts_parse() {
    for (name, cfg) in configs() {
        for f in instance_files(&cfg).unwrap() {
            let shell = match f.content.lines().next() {
                Some("#!/bin/bash") => "bash",
                Some("#!/bin/sh") => "sh",
                _ => continue,
            };
            let out = run(
                Command::new(shell).arg("-n"),
                Some(&f.content),
                "needs bash and sh",
            );
            assert!(out.status.success(), "{name} {}: {}", f.path, text(&out));
        }
    }
}

#[test]
fn user_data_base64_has_no_wraps_and_decodes_back() {
    for (name, cfg) in configs() {
        let ud = render_cloud_init(&cfg).unwrap();
        let b64 = user_data_base64(&ud).unwrap();
        assert!(!b64.contains('\n') && !b64.contains('\r'), "{name}");
        assert!(b64.len() <= MAX_USER_DATA_BASE64);
        let back = base64::engine::general_purpose::STANDARD
            .decode(&b64)
            .unwrap();
        assert_eq!(String::from_utf8(back).unwrap(), ud);
    }
}

#[test]
fn user_data_size_limit() {
    // 40 allowed networks still fit.
    let cfg = config(|p| p.allow = Some((0..40).map(|i| format!("198.51.{i}.0/24")).collect()));
    user_data_base64(&render_cloud_init(&cfg).unwrap()).unwrap();
    // 255 long IPv6 networks do not, and the error says why.
    let cfg = config(|p| {
        p.allow = Some(
            (0..255)
                .map(|i| format!("2001:db8:{i:x}:abcd:1234:5678:9abc:0/112"))
                .collect(),
        )
    });
    let err = user_data_base64(&render_cloud_init(&cfg).unwrap()).unwrap_err();
    assert!(matches!(
        err,
        RenderError::UserDataTooLarge {
            limit: MAX_USER_DATA_BASE64,
            ..
        }
    ));
    assert!(
        err.to_string().contains("over Linode's limit of 16384"),
        "{err}"
    );
}

#[test]
fn allow_list_reaches_ufw() {
    let cfg = default_config();
    let ud = render_cloud_init(&cfg).unwrap();
    assert!(ud.contains("for net in 203.0.113.7/32 2001:db8:1234::/48; do"));
    assert!(ud.contains("ufw default deny incoming"));
}
