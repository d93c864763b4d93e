//! Serde types for the parts of the Linode API v4 the provisioner uses: regions, plan
//! types and prices, images, Cloud Firewalls (+ devices), instances and the account.
//! Responses are read leniently (unknown fields ignored, missing optional fields
//! defaulted); requests never serialize an absent optional field (no `null`s, no empty
//! arrays the caller did not ask for).

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

use super::secret::RootPassword;

/// Capability strings checked before deploying.
pub mod capability {
    /// Region capability: GPU plans can run there.
    pub const GPU_LINODES: &str = "GPU Linodes";
    /// Region capability: the metadata service (cloud-init user data) is available.
    pub const METADATA: &str = "Metadata";
    /// Region capability: Cloud Firewalls can be attached.
    pub const CLOUD_FIREWALL: &str = "Cloud Firewall";
    /// Image capability: the image runs cloud-init against Linode's metadata service.
    pub const CLOUD_INIT: &str = "cloud-init";
}

/// Longest Cloud Firewall label Linode accepts.
pub const FIREWALL_LABEL_MAX: usize = 32;
/// Longest Linode instance label.
pub const INSTANCE_LABEL_MAX: usize = 64;

/// Whether `label` satisfies Linode's label rule for instances and firewalls
/// (`^[a-zA-Z]((?!--|__|\.\.)[a-zA-Z0-9-_.])+$`, 3..=`max_len` characters).
pub fn is_valid_label(label: &str, max_len: usize) -> bool {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    (3..=max_len).contains(&label.len())
        && label.starts_with(|c: char| c.is_ascii_alphabetic())
        && label.chars().all(ok_char)
        && !label.contains("--")
        && !label.contains("__")
        && !label.contains("..")
}

/// One page of a collection: `{"data": [...], "page": 1, "pages": 3, "results": 300}`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Page<T> {
    pub data: Vec<T>,
    #[serde(default = "one")]
    pub page: u32,
    #[serde(default = "one")]
    pub pages: u32,
    #[serde(default)]
    pub results: u64,
}

fn one() -> u32 {
    1
}

/// `GET /regions/{id}`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Region {
    pub id: String,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub country: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// `ok` or `outage`.
    #[serde(default)]
    pub status: String,
    #[serde(default, rename = "site-type", skip_serializing_if = "Option::is_none")]
    pub site_type: Option<String>,
}

impl Region {
    pub fn has_capability(&self, cap: &str) -> bool {
        self.capabilities.iter().any(|c| c == cap)
    }
}

/// Hourly and monthly price in US dollars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Price {
    #[serde(default)]
    pub hourly: Option<f64>,
    #[serde(default)]
    pub monthly: Option<f64>,
}

/// A region-specific price override of a plan.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct RegionPrice {
    pub id: String,
    #[serde(default)]
    pub hourly: Option<f64>,
    #[serde(default)]
    pub monthly: Option<f64>,
}

/// `GET /linode/types` item: a plan.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct LinodeType {
    pub id: String,
    #[serde(default)]
    pub label: String,
    /// `nanode`, `standard`, `dedicated`, `premium`, `gpu`, `highmem`, ...
    #[serde(default)]
    pub class: String,
    #[serde(default)]
    pub vcpus: u32,
    /// MB
    #[serde(default)]
    pub memory: u64,
    /// MB
    #[serde(default)]
    pub disk: u64,
    #[serde(default)]
    pub transfer: u64,
    #[serde(default)]
    pub network_out: u64,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default)]
    pub price: Price,
    #[serde(default)]
    pub region_prices: Vec<RegionPrice>,
    #[serde(default)]
    pub successor: Option<String>,
}

impl LinodeType {
    pub fn is_gpu(&self) -> bool {
        self.class == "gpu"
    }

    /// The price that applies in `region`: its override if listed, the base price otherwise.
    pub fn price_in(&self, region: &str) -> Price {
        self.region_prices
            .iter()
            .find(|p| p.id == region)
            .map(|p| Price {
                hourly: p.hourly,
                monthly: p.monthly,
            })
            .unwrap_or(self.price)
    }
}

/// `GET /images/{id}`
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Image {
    pub id: String,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub vendor: Option<String>,
    #[serde(default)]
    pub is_public: bool,
    #[serde(default)]
    pub deprecated: bool,
    /// `creating`, `pending_upload`, `available`.
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub eol: Option<String>,
}

impl Image {
    pub fn supports_cloud_init(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| c == capability::CLOUD_INIT)
    }
}

/// A firewall rule or policy action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FirewallAction {
    Accept,
    Drop,
}

/// Protocol of a firewall rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum FirewallProtocol {
    Tcp,
    Udp,
    Icmp,
    Ipencap,
}

/// Source (inbound) or destination (outbound) CIDRs of a rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct FirewallAddresses {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Vec<String>>,
}

/// One firewall rule.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct FirewallRule {
    pub action: FirewallAction,
    pub protocol: FirewallProtocol,
    /// `"22"`, `"22, 8000"`, `"1000-2000"`; absent = all ports (not allowed for ICMP/IPENCAP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    pub addresses: FirewallAddresses,
    /// 3–32 characters, display only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// 1–100 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A firewall's rule set (the writable part; `fingerprint`/`version` are ignored).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub struct FirewallRules {
    #[serde(default)]
    pub inbound: Vec<FirewallRule>,
    pub inbound_policy: FirewallAction,
    #[serde(default)]
    pub outbound: Vec<FirewallRule>,
    pub outbound_policy: FirewallAction,
}

/// Devices to attach when creating a firewall.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
pub struct FirewallDevices {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub linodes: Vec<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodebalancers: Vec<u64>,
}

/// `POST /networking/firewalls` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CreateFirewallRequest {
    /// 3–32 characters, `^[a-zA-Z]((?!--|__|\.\.)[a-zA-Z0-9-_.])+$`, unique per account.
    pub label: String,
    pub rules: FirewallRules,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub devices: Option<FirewallDevices>,
}

/// A Cloud Firewall.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Firewall {
    pub id: u64,
    pub label: String,
    /// `enabled`, `disabled`, `deleted`.
    #[serde(default)]
    pub status: String,
    pub rules: FirewallRules,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub updated: Option<String>,
}

/// What a firewall device points at.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct FirewallDeviceEntity {
    pub id: u64,
    #[serde(default)]
    pub label: Option<String>,
    /// `linode` or `nodebalancer`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub url: Option<String>,
}

/// `GET /networking/firewalls/{id}/devices` item.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct FirewallDevice {
    pub id: u64,
    pub entity: FirewallDeviceEntity,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub updated: Option<String>,
}

/// Instance status. Unknown values are kept (and should be treated as transient).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(from = "String", into = "String")]
pub enum InstanceStatus {
    Provisioning,
    Booting,
    Running,
    Offline,
    ShuttingDown,
    Rebooting,
    Deleting,
    Other(String),
}

impl From<String> for InstanceStatus {
    fn from(s: String) -> Self {
        match s.as_str() {
            "provisioning" => Self::Provisioning,
            "booting" => Self::Booting,
            "running" => Self::Running,
            "offline" => Self::Offline,
            "shutting_down" => Self::ShuttingDown,
            "rebooting" => Self::Rebooting,
            "deleting" => Self::Deleting,
            _ => Self::Other(s),
        }
    }
}

impl InstanceStatus {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Provisioning => "provisioning",
            Self::Booting => "booting",
            Self::Running => "running",
            Self::Offline => "offline",
            Self::ShuttingDown => "shutting_down",
            Self::Rebooting => "rebooting",
            Self::Deleting => "deleting",
            Self::Other(s) => s,
        }
    }
}

impl From<InstanceStatus> for String {
    fn from(s: InstanceStatus) -> Self {
        s.as_str().to_owned()
    }
}

impl fmt::Display for InstanceStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Hardware of an instance.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct InstanceSpecs {
    #[serde(default)]
    pub disk: u64,
    #[serde(default)]
    pub memory: u64,
    #[serde(default)]
    pub vcpus: u32,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default)]
    pub transfer: u64,
}

/// A Linode instance (`GET /linode/instances/{id}`, create response, list item).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct Instance {
    pub id: u64,
    pub label: String,
    #[serde(default)]
    pub region: String,
    #[serde(rename = "type", default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    pub status: InstanceStatus,
    #[serde(default)]
    pub ipv4: Vec<String>,
    #[serde(default)]
    pub ipv6: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub created: Option<String>,
    #[serde(default)]
    pub updated: Option<String>,
    #[serde(default)]
    pub specs: Option<InstanceSpecs>,
    #[serde(default)]
    pub has_user_data: Option<bool>,
}

impl Instance {
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// The first public IPv4 address (private `192.168.x.x` ones are skipped).
    pub fn public_ipv4(&self) -> Option<&str> {
        self.ipv4
            .iter()
            .map(String::as_str)
            .find(|ip| match ip.parse::<std::net::Ipv4Addr>() {
                Ok(addr) => !addr.is_private() && !addr.is_loopback() && !addr.is_link_local(),
                Err(_) => false,
            })
    }
}

/// `metadata` of a create request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InstanceMetadata {
    /// Base64 (standard alphabet, padded, no line wraps) of the cloud-config.
    pub user_data: String,
}

/// `POST /linode/instances` body. Only `region` and `type` are required by the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CreateInstanceRequest {
    pub region: String,
    #[serde(rename = "type")]
    pub plan: String,
    /// 3–64 characters, unique among the account's Linodes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "expose_password"
    )]
    pub root_pass: Option<RootPassword>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub authorized_keys: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub authorized_users: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<InstanceMetadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firewall_id: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backups_enabled: Option<bool>,
}

impl CreateInstanceRequest {
    /// A request with only the required fields set.
    pub fn new(region: impl Into<String>, plan: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            plan: plan.into(),
            label: None,
            image: None,
            root_pass: None,
            authorized_keys: Vec::new(),
            authorized_users: Vec::new(),
            metadata: None,
            firewall_id: None,
            tags: Vec::new(),
            booted: None,
            private_ip: None,
            backups_enabled: None,
        }
    }
}

// Only reached when `root_pass` is `Some` (skip_serializing_if), i.e. when building the
// real request body; logs and dumps redact the field (see `request::redact_body`).
fn expose_password<S: Serializer>(p: &Option<RootPassword>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(p.expose_secret()),
        None => s.serialize_none(),
    }
}

/// `GET /account` (the fields the CLI may show).
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct Account {
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub company: Option<String>,
    #[serde(default)]
    pub euuid: Option<String>,
    #[serde(default)]
    pub balance: Option<f64>,
    #[serde(default)]
    pub capabilities: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn minimal_create_request_has_no_nulls_or_empty_lists() {
        let body = serde_json::to_value(CreateInstanceRequest::new("us-ord", "g1")).unwrap();
        assert_eq!(body, json!({"region": "us-ord", "type": "g1"}));
    }

    #[test]
    fn label_rule() {
        assert!(is_valid_label("ai-sandbox-fw", FIREWALL_LABEL_MAX));
        assert!(!is_valid_label(&"a".repeat(33), FIREWALL_LABEL_MAX));
        assert!(is_valid_label(&"a".repeat(33), INSTANCE_LABEL_MAX));
        assert!(!is_valid_label("1abc", 64));
        assert!(!is_valid_label("ab", 64));
        assert!(!is_valid_label("a--b", 64));
        assert!(!is_valid_label("a b c", 64));
    }

    #[test]
    fn unknown_status_is_kept() {
        let s: InstanceStatus = serde_json::from_value(json!("resizing")).unwrap();
        assert_eq!(s, InstanceStatus::Other("resizing".into()));
        assert_eq!(serde_json::to_value(&s).unwrap(), json!("resizing"));
    }

    #[test]
    fn public_ipv4_skips_private() {
        let i: Instance = serde_json::from_value(json!({
            "id": 1, "label": "a", "status": "running",
            "ipv4": ["192.168.1.2", "203.0.113.1"]
        }))
        .unwrap();
        assert_eq!(i.public_ipv4(), Some("203.0.113.1"));
    }

    #[test]
    fn region_price_overrides_base_price() {
        let t: LinodeType = serde_json::from_value(json!({
            "id": "g", "price": {"hourly": 1.0, "monthly": 700},
            "region_prices": [{"id": "br-gru", "hourly": 1.2, "monthly": 840}]
        }))
        .unwrap();
        assert_eq!(t.price_in("br-gru").hourly, Some(1.2));
        assert_eq!(t.price_in("us-ord").monthly, Some(700.0));
    }
}
