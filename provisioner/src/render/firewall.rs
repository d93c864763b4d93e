//! The Cloud Firewall this tool creates for a deployment, as the `POST
//! /networking/firewalls` body: inbound DROP by default, TCP 22 (SSH) and the API port
//! accepted only from the `--allow` networks, outbound ACCEPT. The same rules are mirrored
//! on the instance by ufw (see `cloud-init/setup.sh.tera`).

use crate::config::DeployConfig;
use crate::linode::{
    CreateFirewallRequest, FirewallAction, FirewallAddresses, FirewallProtocol, FirewallRule,
    FirewallRules,
};

/// The request body type (shared with the Linode client).
pub type FirewallCreate = CreateFirewallRequest;

/// Builds the firewall body for `cfg`. `cfg.allow` is validated non-empty and at most
/// 255 entries, so each rule satisfies Linode's address limits; IPv4 and IPv6 lists are
/// omitted when empty (Linode rejects empty lists).
pub fn firewall_request(cfg: &DeployConfig) -> FirewallCreate {
    let addresses = FirewallAddresses {
        ipv4: non_empty(cfg.allow_v4()),
        ipv6: non_empty(cfg.allow_v6()),
    };
    let rule = |label: &str, port: u16, description: String| FirewallRule {
        action: FirewallAction::Accept,
        protocol: FirewallProtocol::Tcp,
        ports: Some(port.to_string()),
        addresses: addresses.clone(),
        label: Some(label.to_string()),
        description: Some(description),
    };
    CreateFirewallRequest {
        label: cfg.firewall_label(),
        rules: FirewallRules {
            inbound: vec![
                rule("allow-ssh", 22, "SSH from the allowed networks".into()),
                rule(
                    "allow-api",
                    cfg.port,
                    format!(
                        "OpenAI-compatible API (port {}) from the allowed networks",
                        cfg.port
                    ),
                ),
            ],
            inbound_policy: FirewallAction::Drop,
            outbound: Vec::new(),
            outbound_policy: FirewallAction::Accept,
        },
        tags: cfg.tags(),
        devices: None,
    }
}

fn non_empty(v: Vec<String>) -> Option<Vec<String>> {
    (!v.is_empty()).then_some(v)
}
