//! Unit tests for configuration merging and validation.

use super::*;

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBe2Vt3Zm9vYmFyYmF6cXV4 me@laptop";

fn read_key(_: &Path) -> Result<String, String> {
    Ok(format!("{KEY}\n"))
}

fn base() -> PartialConfig {
    PartialConfig {
        region: Some("us-ord".into()),
        allow: Some(vec!["203.0.113.7".into()]),
        ssh_key: Some(vec!["/home/me/.ssh/id_ed25519.pub".into()]),
        ..Default::default()
    }
}

fn resolve(p: PartialConfig) -> Result<Resolved, ConfigError> {
    p.resolve(read_key)
}

fn err(p: PartialConfig) -> String {
    resolve(p).unwrap_err().to_string()
}

#[test]
fn defaults_fill_everything() {
    let r = resolve(base()).unwrap();
    let c = &r.config;
    assert_eq!(c.name, "ai-sandbox");
    assert_eq!(c.linode_type, "g2-gpu-rtx4000a1-s");
    assert_eq!(c.image, "linode/ubuntu24.04");
    assert_eq!(c.model, "mistralai/Mistral-7B-Instruct-v0.3");
    assert_eq!(c.port, 8000);
    assert_eq!(c.allow_v4(), vec!["203.0.113.7/32"]);
    assert!(c.allow_v6().is_empty());
    assert_eq!(c.ssh_keys, vec![KEY.to_string()]);
    assert_eq!(c.firewall_label(), "ai-sandbox-fw");
    assert_eq!(c.tags(), vec!["ai-sandbox", "ai-sandbox:ai-sandbox"]);
    assert!(!c.hf_token_present);
    assert!(r.warnings.is_empty());
}

#[test]
fn precedence_defaults_file_env_flags() {
    let file = PartialConfig::from_yaml(
        "name: from-file\nregion: us-east\nmodel: a/file\ntype: g1-gpu-rtx6000-1\nallow: [10.0.0.0/8]\nssh_key: [/k.pub]\n",
    )
    .unwrap();
    let vars: BTreeMap<String, String> = [
        ("AI_SANDBOX_MODEL", "b/env"),
        ("AI_SANDBOX_REGION", "fr-par"),
        ("AI_SANDBOX_ALLOW", "192.0.2.0/24, 2001:db8::/32"),
        ("HF_TOKEN", "hf_sekrit"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let env = PartialConfig::from_env(&vars).unwrap();
    let flags = PartialConfig {
        model: Some("c/flag".into()),
        ..Default::default()
    };
    let r = PartialConfig::resolve_layers([file, env, flags], read_key).unwrap();
    let c = r.config;
    assert_eq!(c.name, "from-file");
    assert_eq!(c.linode_type, "g1-gpu-rtx6000-1");
    assert_eq!(c.region, "fr-par");
    assert_eq!(c.model, "c/flag");
    assert_eq!(c.allow_v4(), vec!["192.0.2.0/24"]);
    assert_eq!(c.allow_v6(), vec!["2001:db8::/32"]);
    assert!(c.hf_token_present);
    // The token's value is never kept.
    assert!(!format!("{c:?}").contains("hf_sekrit"));
}

#[test]
fn yaml_file_rejects_unknown_keys_and_tokens() {
    let e = PartialConfig::from_yaml("nmae: x\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("nmae"), "{e}");
    let e = PartialConfig::from_yaml("hf_token_present: true\n").unwrap_err();
    assert!(matches!(e, ConfigError::File(_)));
    assert_eq!(
        PartialConfig::from_yaml("  \n").unwrap(),
        PartialConfig::default()
    );
    // YAML 1.2 reading: `yes` stays the string "yes".
    assert_eq!(
        PartialConfig::from_yaml("name: yes\n")
            .unwrap()
            .name
            .as_deref(),
        Some("yes")
    );
}

#[test]
fn invalid_cidr_names_the_flag() {
    let mut p = base();
    p.allow = Some(vec!["10.0.0.300/8".into()]);
    assert_eq!(
        err(p),
        "--allow 10.0.0.300/8: invalid CIDR: not an IP address"
    );
    for bad in [
        "10.0.0.0/33",
        "10.0.0.0/",
        "10.0.0.0/08",
        "::/129",
        "fe80::1%eth0/128",
        "x/1",
    ] {
        let mut p = base();
        p.allow = Some(vec![bad.into()]);
        let e = err(p);
        assert!(e.starts_with(&format!("--allow {bad}: ")), "{e}");
    }
    let mut p = base();
    p.allow = Some(vec!["10.1.2.3/8".into()]);
    assert!(err(p).contains("did you mean 10.0.0.0/8?"));
}

#[test]
fn cidr_parsing_and_dedup() {
    let c: Cidr = "2001:DB8::/32".parse().unwrap();
    assert_eq!(c.to_string(), "2001:db8::/32");
    assert!(!c.is_ipv4());
    let c: Cidr = "::1".parse().unwrap();
    assert_eq!(c.to_string(), "::1/128");
    let mut p = base();
    p.allow = Some(vec!["198.51.100.1".into(), "198.51.100.1/32".into()]);
    assert_eq!(resolve(p).unwrap().config.allow.len(), 1);
    let mut p = base();
    p.allow = Some((0..=255).map(|i| format!("10.0.{i}.0/24")).collect());
    assert!(err(p).contains("at most 255"));
}

#[test]
fn open_to_the_world_is_allowed_with_a_warning() {
    let mut p = base();
    p.allow = Some(vec!["0.0.0.0/0".into(), "::/0".into()]);
    let r = resolve(p).unwrap();
    assert_eq!(r.warnings.len(), 2);
    assert!(
        r.warnings[0].starts_with("--allow 0.0.0.0/0: "),
        "{:?}",
        r.warnings
    );
    assert!(r.warnings[1].starts_with("--allow ::/0: "));
    assert_eq!(r.config.allow_v6(), vec!["::/0"]);
}

#[test]
fn missing_required_values() {
    let mut p = base();
    p.region = None;
    assert!(err(p).starts_with("--region is required"));
    let mut p = base();
    p.allow = Some(vec![]);
    assert!(err(p).starts_with("--allow is required"));
    let mut p = base();
    p.ssh_key = None;
    assert!(err(p).starts_with("--ssh-key is required"));
}

#[test]
fn name_rules_cover_both_labels() {
    for (name, why) in [
        ("ab", "must be 3 to 64"),
        ("1abc", "must start with a letter"),
        ("abc-", "must end with a letter or digit"),
        ("a--b", "must not contain \"--\""),
        ("a__b", "must not contain \"__\""),
        ("a..b", "must not contain \"..\""),
        ("a b c", "character ' ' not allowed"),
        ("sandbox-with-a-very-long-name-x", "at most 29 characters"),
    ] {
        let mut p = base();
        p.name = Some(name.into());
        let e = err(p);
        assert!(
            e.starts_with(&format!("--name {name}: ")) && e.contains(why),
            "{name}: {e}"
        );
    }
    let mut p = base();
    p.name = Some("a".repeat(29));
    let c = resolve(p).unwrap().config;
    assert_eq!(c.firewall_label().len(), 32);
    assert!(check_linode_label(&c.firewall_label(), 32).is_ok());
}

#[test]
fn field_validation_messages() {
    type Edit = fn(&mut PartialConfig);
    let cases: [(Edit, &str); 6] = [
        (|p| p.model = Some("no-slash".into()), "--model no-slash: "),
        (|p| p.model = Some("a/b c".into()), "--model a/b c: "),
        (
            |p| p.image = Some("linode/debian12".into()),
            "--image linode/debian12: unsupported",
        ),
        (|p| p.region = Some("US East".into()), "--region US East: "),
        (
            |p| p.api_image = Some("img;rm -rf".into()),
            "--api-image img;rm -rf: ",
        ),
        (|p| p.port = Some(22), "--port 22: "),
    ];
    for (f, want) in cases {
        let mut p = base();
        f(&mut p);
        let e = err(p);
        assert!(e.starts_with(want), "{want} -> {e}");
    }
    let mut p = base();
    p.image = Some("private/12345".into());
    assert_eq!(resolve(p).unwrap().warnings.len(), 1);
}

#[test]
fn ssh_key_checks() {
    let mut p = base();
    p.ssh_key = Some(vec!["/id_ed25519".into()]);
    let e = p
        .resolve(|_| Ok("-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n".into()))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "--ssh-key /id_ed25519: this is a private key; pass the .pub file"
    );
    assert!(validate_ssh_key("ssh-foo AAAA").is_err());
    assert!(validate_ssh_key("ssh-ed25519 AA$A").is_err());
    assert!(validate_ssh_key(&format!("{KEY}\n{KEY}\n")).is_err());
    assert_eq!(validate_ssh_key(&format!("# c\n  {KEY}  \n")).unwrap(), KEY);
    let mut p = base();
    p.ssh_key = Some(vec!["/missing.pub".into()]);
    let e = p
        .resolve(|_| Err("No such file".into()))
        .unwrap_err()
        .to_string();
    assert_eq!(e, "--ssh-key /missing.pub: No such file");
}

#[test]
fn env_port_errors_name_the_variable() {
    let vars: BTreeMap<String, String> =
        [("AI_SANDBOX_PORT".to_string(), "eighty".to_string())].into();
    assert_eq!(
        PartialConfig::from_env(&vars).unwrap_err().to_string(),
        "AI_SANDBOX_PORT=eighty: not a port number"
    );
}
