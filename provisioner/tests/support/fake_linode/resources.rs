//! Creation of firewalls and instances in the fake Linode API, with the server-side checks
//! the spec cannot express (unique labels, known region/type/image, GPU + Metadata region
//! capabilities, cloud-init image, root password strength, user-data size, firewall
//! existence) and spec-shaped answers built from the shared fixtures.

use serde_json::{json, Value};

use super::{error, fixture, reply, with, FakeInstance, Reply, State};

const TIME: &str = "2018-01-01T00:01:01";

fn strong_enough(p: &str) -> bool {
    let classes = [
        p.chars().any(|c| c.is_ascii_lowercase()),
        p.chars().any(|c| c.is_ascii_uppercase()),
        p.chars().any(|c| c.is_ascii_digit()),
        p.chars().any(|c| !c.is_ascii_alphanumeric()),
    ];
    p.chars().count() >= 11 && classes.iter().filter(|&&b| b).count() >= 3
}

fn decoded_len(b64: &str) -> usize {
    let pad = b64.bytes().rev().take_while(|&c| c == b'=').count();
    (b64.len() / 4) * 3 - pad.min(2)
}

fn has(list: &Value, item: &str) -> bool {
    list.as_array().into_iter().flatten().any(|v| v == item)
}

impl State {
    pub(super) fn create_firewall(&mut self, body: &Value) -> Reply {
        let label = body["label"].as_str().unwrap_or_default().to_owned();
        if self.firewalls.values().any(|f| f["label"] == json!(label)) {
            return error(400, Some("label"), "Label must be unique");
        }
        let linodes: Vec<u64> = body["devices"]["linodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        if let Some(missing) = linodes.iter().find(|id| !self.instances.contains_key(id)) {
            return error(
                400,
                Some("devices.linodes"),
                &format!("Linode {missing} not found"),
            );
        }
        let id = self.id();
        let mut rules = body["rules"].clone();
        rules["fingerprint"] = json!(format!("{:08x}", id * 2_654_435_761 % 0xffff_ffff));
        rules["version"] = json!(1);
        for dir in ["inbound", "outbound"] {
            if rules.get(dir).is_none() {
                rules[dir] = json!([]);
            }
        }
        let fw = with(
            &fixture("firewall.json"),
            json!({"id": id, "label": label, "rules": rules, "status": "enabled",
                "tags": body.get("tags").cloned().unwrap_or(json!([])),
                "created": TIME, "updated": TIME}),
        );
        self.firewalls.insert(id, fw.clone());
        for linode in linodes {
            self.attach(id, linode);
        }
        reply(200, fw)
    }

    fn attach(&mut self, firewall: u64, linode: u64) {
        let label = self.instances.get(&linode).map(|i| i.body["label"].clone());
        let device_id = self.id();
        let device = with(
            &fixture("firewall_device.json"),
            json!({"id": device_id, "created": TIME, "updated": TIME, "entity": {
                "id": linode, "label": label, "type": "linode",
                "url": format!("/v4/linode/instances/{linode}")}}),
        );
        self.devices.entry(firewall).or_default().push(device);
    }

    pub(super) fn create_instance(&mut self, body: &Value) -> Reply {
        let s = |k: &str| body.get(k).and_then(Value::as_str);
        let Some(region) = self
            .regions
            .iter()
            .find(|r| Some(r["id"].as_str().unwrap_or("")) == s("region"))
            .cloned()
        else {
            return error(400, Some("region"), "region is not valid");
        };
        let Some(plan) = self
            .types
            .iter()
            .find(|t| Some(t["id"].as_str().unwrap_or("")) == s("type"))
            .cloned()
        else {
            return error(
                400,
                Some("type"),
                "A valid plan type by that ID was not found",
            );
        };
        if plan["class"] == "gpu" && !has(&region["capabilities"], "GPU Linodes") {
            return error(
                400,
                None,
                "There is no availability for the selected plan in the selected region.",
            );
        }
        let image = match s("image") {
            Some(id) => match self.images.iter().find(|i| i["id"] == json!(id)) {
                Some(i) => Some(i.clone()),
                None => return error(400, Some("image"), "image is not valid"),
            },
            None => None,
        };
        if image.is_some() {
            match s("root_pass") {
                None => {
                    return error(
                        400,
                        Some("root_pass"),
                        "root_pass is required when deploying from an image",
                    )
                }
                Some(p) if !strong_enough(p) => {
                    return error(
                        400,
                        Some("root_pass"),
                        "Password does not meet strength requirement.",
                    )
                }
                Some(_) => {}
            }
        }
        if let Some(ud) = body.pointer("/metadata/user_data").and_then(Value::as_str) {
            if !has(&region["capabilities"], "Metadata") {
                return error(
                    400,
                    Some("metadata"),
                    "Metadata is not supported in this region.",
                );
            }
            if !image
                .as_ref()
                .is_some_and(|i| has(&i["capabilities"], "cloud-init"))
            {
                return error(
                    400,
                    Some("metadata.user_data"),
                    "The image does not support cloud-init.",
                );
            }
            if decoded_len(ud) > 65535 {
                return error(
                    400,
                    Some("metadata.user_data"),
                    "User data must not exceed 65535 bytes.",
                );
            }
        }
        for tag in body["tags"].as_array().into_iter().flatten() {
            let len = tag.as_str().map_or(0, |t| t.chars().count());
            if !(3..=50).contains(&len) {
                return error(
                    400,
                    Some("tags"),
                    "Tags must be between 3 and 50 characters.",
                );
            }
        }
        let firewall = body.get("firewall_id").and_then(Value::as_u64);
        if let Some(fw) = firewall {
            if !self.firewalls.contains_key(&fw) {
                return error(400, Some("firewall_id"), "Firewall not found");
            }
        }
        let id = self.id();
        let label = s("label").map_or_else(|| format!("linode{id}"), str::to_owned);
        if self
            .instances
            .values()
            .any(|i| i.body["label"] == json!(label))
        {
            return error(
                400,
                Some("label"),
                "Label must be unique among your linodes",
            );
        }
        let n = self.instances.len() as u64 + 1;
        let inst = with(
            &fixture("linode_instance.json"),
            json!({
                "id": id, "label": label, "region": region["id"], "type": plan["id"],
                "image": image.as_ref().map(|i| i["id"].clone()), "status": "provisioning",
                "ipv4": [format!("203.0.113.{}", n % 250 + 1)],
                "ipv6": format!("2600:3c03::f03c:91ff:fe24:{n:x}/128"),
                "tags": body.get("tags").cloned().unwrap_or(json!([])),
                "group": "", "created": TIME, "updated": TIME,
                "has_user_data": body.pointer("/metadata/user_data").is_some(),
                "placement_group": null, "lke_cluster_id": null, "capabilities": [],
                "specs": {"disk": plan["disk"], "memory": plan["memory"], "vcpus": plan["vcpus"],
                    "gpus": plan["gpus"], "transfer": plan["transfer"]},
            }),
        );
        self.instances.insert(
            id,
            FakeInstance {
                body: inst.clone(),
                polls: 0,
            },
        );
        if let Some(fw) = firewall {
            self.attach(fw, id);
        }
        reply(200, inst)
    }

    /// Puts a running instance straight into the state (for listing/pagination tests).
    pub fn seed_instance(&mut self, label: &str, tags: &[&str]) -> u64 {
        let id = self.id();
        let inst = with(
            &fixture("linode_instance.json"),
            json!({"id": id, "label": label, "tags": tags, "status": "running"}),
        );
        self.instances.insert(
            id,
            FakeInstance {
                body: inst,
                polls: u32::MAX / 2,
            },
        );
        id
    }
}
