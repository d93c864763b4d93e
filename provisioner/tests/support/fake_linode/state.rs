//! State and request handling of the fake Linode API, free of HTTP plumbing: checks every
//! request (token, body against the spec, `X-Filter`, paging), applies injected faults,
//! keeps firewalls/devices/instances (with `provisioning -> booting -> running` over
//! successive GETs), answers with spec-shaped bodies built from the shared fixtures, and
//! records every request and every violation.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::filter;
use super::spec::{spec, specs_dir};

/// A request as the fake saw it (the token itself is never stored).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    /// Path after `/v4`, with the query string.
    pub path: String,
    pub x_filter: Option<String>,
    /// Whether `Authorization: Bearer <the fake's token>` was present.
    pub authorized: bool,
    pub body: Option<Value>,
    pub status: u16,
}

/// Something a client did that the real API would reject or that the spec forbids.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    pub method: String,
    pub path: String,
    pub problem: String,
}

/// An injected failure.
#[derive(Clone, Debug)]
pub enum Fault {
    /// 429 with `Retry-After: secs`.
    RateLimited { retry_after_secs: u64 },
    /// This status with a generic Linode error body (e.g. 500, 502, 503).
    Status(u16),
    /// 503 with `X-Maintenance-Mode` (must not be retried).
    Maintenance,
    /// 400 `Linode busy.` (must be retried).
    Busy,
    /// Any status with the given body (e.g. a Linode `errors[]` body).
    Body { status: u16, body: Value },
    /// Performs the request (e.g. a create) and then answers this status with a generic
    /// error body, as when the API commits but the answer is lost (a 5xx from a proxy, a
    /// timeout): the client cannot know the change was made. If the request itself fails,
    /// its own answer is returned.
    CommitThenStatus(u16),
    /// Another client sends the same request just before this one (a second deploy of the
    /// same name racing this one); this request then proceeds as usual and meets the result
    /// (e.g. "Label must be unique").
    RivalFirst,
    /// Performs the request and holds the answer back for a minute, as when the client is
    /// stopped (Ctrl-C) after the API made the change but before the answer arrived.
    CommitThenStall,
}

#[derive(Clone, Debug)]
pub struct FaultRule {
    pub method: String,
    pub path_prefix: String,
    pub fault: Fault,
    pub remaining: u32,
}

/// An instance and how many times it has been fetched since creation.
#[derive(Clone, Debug)]
pub struct FakeInstance {
    pub body: Value,
    pub polls: u32,
}

/// An answer: status, JSON body, extra headers.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub headers: Vec<(&'static str, String)>,
    /// How long the server waits before sending it (outside the state lock).
    pub delay: std::time::Duration,
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        body,
        headers: Vec::new(),
        delay: std::time::Duration::ZERO,
    }
}

fn error(status: u16, field: Option<&str>, reason: &str) -> Reply {
    let mut e = json!({ "reason": reason });
    if let Some(f) = field {
        e["field"] = json!(f);
    }
    reply(status, json!({ "errors": [e] }))
}

/// Everything the fake knows. Fields are public so tests can arrange and inspect state.
pub struct State {
    pub token: String,
    pub regions: Vec<Value>,
    pub types: Vec<Value>,
    pub images: Vec<Value>,
    pub account: Value,
    pub firewalls: BTreeMap<u64, Value>,
    /// Firewall id -> its device objects.
    pub devices: BTreeMap<u64, Vec<Value>>,
    pub instances: BTreeMap<u64, FakeInstance>,
    /// GETs of a new instance answered `provisioning`, then `booting`, before `running`.
    pub provisioning_polls: u32,
    pub booting_polls: u32,
    pub faults: Vec<FaultRule>,
    pub requests: Vec<RecordedRequest>,
    pub violations: Vec<Violation>,
    next_id: u64,
}

fn fixture(name: &str) -> Value {
    let path = specs_dir().join("linode-fixtures").join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn with(base: &Value, patch: Value) -> Value {
    let mut out = base.clone();
    for (k, v) in patch.as_object().into_iter().flatten() {
        out[k] = v.clone();
    }
    out
}

impl State {
    /// Regions, types and images seeded from the fixtures: `us-ord` (GPU + Metadata),
    /// `us-sea` (GPU, no Metadata), `us-east` (fixture as is: neither).
    pub fn new(token: &str) -> Self {
        let region = fixture("regions_list.json")["data"][0].clone();
        let gpu_caps = json!([
            "Linodes",
            "GPU Linodes",
            "Metadata",
            "Cloud Firewall",
            "Vlans"
        ]);
        let regions = vec![
            region.clone(),
            with(
                &region,
                json!({"id": "us-ord", "label": "Chicago, IL", "capabilities": gpu_caps}),
            ),
            with(
                &region,
                json!({"id": "us-sea", "label": "Seattle, WA",
                "capabilities": ["Linodes", "GPU Linodes", "Cloud Firewall"]}),
            ),
        ];
        let standard = fixture("linode_types_list.json")["data"][0].clone();
        let gpu = |id: &str, label: &str, hourly: f64, monthly: f64, mem: u64, gpus: u64| {
            with(
                &standard,
                json!({"id": id, "label": label, "class": "gpu", "gpus": gpus,
                "memory": mem, "vcpus": 4 * gpus, "price": {"hourly": hourly, "monthly": monthly},
                "region_prices": []}),
            )
        };
        let types = vec![
            standard.clone(),
            gpu(
                "g2-gpu-rtx4000a1-s",
                "RTX4000 Ada x1 Small",
                0.52,
                350.0,
                16384,
                1,
            ),
            gpu(
                "g1-gpu-rtx6000-1",
                "Dedicated 32GB + RTX6000 GPU x1",
                1.5,
                1000.0,
                32768,
                1,
            ),
        ];
        let image = spec()
            .example_response("GET", "/{apiVersion}/images/{imageId}")
            .expect("the spec documents GET /images/{imageId}");
        let img = |id: &str, label: &str, caps: Value| {
            with(
                &image,
                json!({"id": id, "label": label, "capabilities": caps,
                "status": "available", "is_public": true, "deprecated": false, "vendor": "Ubuntu"}),
            )
        };
        let images = vec![
            img(
                "linode/ubuntu24.04",
                "Ubuntu 24.04 LTS",
                json!(["cloud-init"]),
            ),
            img(
                "linode/ubuntu22.04",
                "Ubuntu 22.04 LTS",
                json!(["cloud-init"]),
            ),
            img("linode/slackware15.0", "Slackware 15.0", json!([])),
        ];
        let account = spec()
            .example_response("GET", "/{apiVersion}/account")
            .expect("the spec documents GET /account");
        Self {
            token: token.to_owned(),
            regions,
            types,
            images,
            account,
            firewalls: BTreeMap::new(),
            devices: BTreeMap::new(),
            instances: BTreeMap::new(),
            provisioning_polls: 1,
            booting_polls: 1,
            faults: Vec::new(),
            requests: Vec::new(),
            violations: Vec::new(),
            next_id: 1000,
        }
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Handles one request; `path` is the full URL path (`/v4/...`), `query` the raw query.
    #[allow(clippy::too_many_arguments)]
    pub fn handle(
        &mut self,
        method: &str,
        path: &str,
        query: Option<&str>,
        authorization: Option<&str>,
        content_type: Option<&str>,
        x_filter: Option<&str>,
        body: &[u8],
    ) -> Reply {
        let rel = path.strip_prefix("/v4").unwrap_or(path).to_owned();
        let shown = match query {
            Some(q) => format!("{rel}?{q}"),
            None => rel.clone(),
        };
        let authorized = authorization == Some(format!("Bearer {}", self.token).as_str());
        let parsed_body: Option<Value> = if body.is_empty() {
            None
        } else {
            serde_json::from_slice(body).ok()
        };
        let mut problems = Vec::new();
        let answer = self.check_and_route(
            method,
            &rel,
            query,
            authorized,
            content_type,
            x_filter,
            body,
            &parsed_body,
            &mut problems,
        );
        for problem in problems {
            self.violations.push(Violation {
                method: method.to_owned(),
                path: shown.clone(),
                problem,
            });
        }
        self.requests.push(RecordedRequest {
            method: method.to_owned(),
            path: shown,
            x_filter: x_filter.map(str::to_owned),
            authorized,
            body: parsed_body,
            status: answer.status,
        });
        answer
    }

    #[allow(clippy::too_many_arguments)]
    fn check_and_route(
        &mut self,
        method: &str,
        rel: &str,
        query: Option<&str>,
        authorized: bool,
        content_type: Option<&str>,
        x_filter: Option<&str>,
        raw_body: &[u8],
        body: &Option<Value>,
        problems: &mut Vec<String>,
    ) -> Reply {
        if !authorized {
            problems.push("missing or wrong Authorization bearer token".into());
            return error(401, None, "Invalid Token");
        }
        let Some((template, collection)) = route(method, rel) else {
            problems.push(format!("no such endpoint: {method} {rel}"));
            return error(404, None, "Not found");
        };
        let takes_body = matches!(method, "POST" | "PUT");
        if takes_body {
            if !content_type.is_some_and(|c| c.starts_with("application/json")) {
                problems.push(format!(
                    "Content-Type {content_type:?} is not application/json"
                ));
            }
            let Some(body) = body else {
                problems.push("body is missing or not JSON".into());
                return error(400, None, "Invalid JSON");
            };
            if let Err(errs) = spec().validate_request(method, template, body) {
                let mut list = Vec::new();
                for (field, reason) in errs {
                    problems.push(format!(
                        "spec violation at {}: {reason}",
                        field.as_deref().unwrap_or("<body>")
                    ));
                    list.push(json!({ "field": field, "reason": reason }));
                }
                return reply(400, json!({ "errors": list }));
            }
        } else if !raw_body.is_empty() {
            problems.push(format!("{method} request has a body"));
        }
        let mut filter_value = None;
        if let Some(raw) = x_filter {
            match collection.map(|c| filter::parse(c, raw)) {
                Some(Ok(f)) => filter_value = Some(f),
                Some(Err(reason)) => {
                    problems.push(format!("bad X-Filter {raw}: {reason}"));
                    return error(400, Some("X-Filter"), &reason);
                }
                None => {
                    problems.push(format!("X-Filter sent to a non-collection {rel}"));
                    return error(400, Some("X-Filter"), "This endpoint cannot be filtered");
                }
            }
        }
        let paging = match parse_paging(query) {
            Ok(p) => p,
            Err(reason) => {
                problems.push(reason.clone());
                return error(400, None, &reason);
            }
        };
        let fault = self.take_fault(method, rel);
        if let Some(Fault::RivalFirst) = fault {
            let rival = self.dispatch(method, rel, body.as_ref());
            assert!((200..300).contains(&rival.status), "the rival's request failed: {rival:?}");
        } else if let Some(Fault::CommitThenStall) = fault {
            let mut done = self.dispatch(method, rel, body.as_ref());
            done.delay = std::time::Duration::from_secs(60);
            return done;
        } else if let Some(fault) = fault {
            if matches!(fault, Fault::CommitThenStatus(_)) {
                let done = self.dispatch(method, rel, body.as_ref());
                if !(200..300).contains(&done.status) {
                    return done;
                }
            }
            return fault_reply(fault);
        }
        let items = match (method, collection) {
            ("GET", Some(c)) => Some(self.collection(c, rel)),
            _ => None,
        };
        if let Some(items) = items {
            let Some(items) = items else {
                return error(404, None, "Not found");
            };
            let f = filter_value.unwrap_or(Value::Null);
            let kept: Vec<Value> = items
                .into_iter()
                .filter(|i| filter::matches(&f, i))
                .collect();
            return reply(200, paginate(kept, paging));
        }
        self.dispatch(method, rel, body.as_ref())
    }

    fn take_fault(&mut self, method: &str, rel: &str) -> Option<Fault> {
        let rule = self.faults.iter_mut().find(|r| {
            r.remaining > 0
                && r.method.eq_ignore_ascii_case(method)
                && rel.starts_with(&r.path_prefix)
        })?;
        rule.remaining -= 1;
        Some(rule.fault.clone())
    }

    /// Items of a GET collection (`None`: its parent does not exist).
    fn collection(&mut self, collection: &str, rel: &str) -> Option<Vec<Value>> {
        Some(match collection {
            "/regions" => self.regions.clone(),
            "/linode/types" => self.types.clone(),
            "/images" => self.images.clone(),
            "/networking/firewalls" => self.firewalls.values().cloned().collect(),
            "/linode/instances" => self
                .instances
                .values()
                .map(|i| self.instance_view(i))
                .collect(),
            "/devices" => {
                let id = rel.split('/').nth(3)?.parse().ok()?;
                self.firewalls.get(&id)?;
                self.devices.get(&id).cloned().unwrap_or_default()
            }
            _ => return None,
        })
    }

    fn instance_view(&self, i: &FakeInstance) -> Value {
        let status = if i.polls <= self.provisioning_polls {
            "provisioning"
        } else if i.polls <= self.provisioning_polls + self.booting_polls {
            "booting"
        } else {
            "running"
        };
        with(&i.body, json!({ "status": status }))
    }

    fn dispatch(&mut self, method: &str, rel: &str, body: Option<&Value>) -> Reply {
        let parts: Vec<&str> = rel.trim_start_matches('/').split('/').collect();
        let found =
            |v: Option<Value>| v.map_or_else(|| error(404, None, "Not found"), |v| reply(200, v));
        let by_id = |list: &[Value], id: &str| list.iter().find(|v| v["id"] == json!(id)).cloned();
        match (method, parts.as_slice()) {
            ("GET", ["regions", id]) => found(by_id(&self.regions, id)),
            ("GET", ["linode", "types", id]) => found(by_id(&self.types, id)),
            ("GET", ["images", a, b]) => found(by_id(&self.images, &format!("{a}/{b}"))),
            ("GET", ["account"]) => reply(200, self.account.clone()),
            ("POST", ["networking", "firewalls"]) => {
                self.create_firewall(body.unwrap_or(&Value::Null))
            }
            ("GET", ["networking", "firewalls", id]) => found(
                id.parse()
                    .ok()
                    .and_then(|id: u64| self.firewalls.get(&id).cloned()),
            ),
            ("DELETE", ["networking", "firewalls", id]) => {
                let id: u64 = id.parse().unwrap_or(0);
                if self.firewalls.remove(&id).is_none() {
                    return error(404, None, "Not found");
                }
                self.devices.remove(&id);
                reply(200, json!({}))
            }
            ("POST", ["linode", "instances"]) => self.create_instance(body.unwrap_or(&Value::Null)),
            ("GET", ["linode", "instances", id]) => {
                let Some(inst) = id
                    .parse()
                    .ok()
                    .and_then(|id: u64| self.instances.get_mut(&id))
                else {
                    return error(404, None, "Not found");
                };
                inst.polls += 1;
                let inst = inst.clone();
                reply(200, self.instance_view(&inst))
            }
            ("DELETE", ["linode", "instances", id]) => {
                let id: u64 = id.parse().unwrap_or(0);
                if self.instances.remove(&id).is_none() {
                    return error(404, None, "Not found");
                }
                for devs in self.devices.values_mut() {
                    devs.retain(|d| d["entity"]["id"] != json!(id));
                }
                reply(200, json!({}))
            }
            _ => error(404, None, "Not found"),
        }
    }
}

/// Known endpoints: (spec path template, collection key for GET listings).
fn route(method: &str, rel: &str) -> Option<(&'static str, Option<&'static str>)> {
    let parts: Vec<&str> = rel.trim_start_matches('/').split('/').collect();
    let numeric = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
    Some(match (method, parts.as_slice()) {
        ("GET", ["regions"]) => ("/{apiVersion}/regions", Some("/regions")),
        ("GET", ["regions", _]) => ("/{apiVersion}/regions/{regionId}", None),
        ("GET", ["linode", "types"]) => ("/{apiVersion}/linode/types", Some("/linode/types")),
        ("GET", ["linode", "types", _]) => ("/{apiVersion}/linode/types/{typeId}", None),
        ("GET", ["images"]) => ("/{apiVersion}/images", Some("/images")),
        ("GET", ["images", _, _]) => ("/{apiVersion}/images/{imageId}", None),
        ("GET", ["account"]) => ("/{apiVersion}/account", None),
        ("GET", ["networking", "firewalls"]) => (
            "/{apiVersion}/networking/firewalls",
            Some("/networking/firewalls"),
        ),
        ("POST", ["networking", "firewalls"]) => ("/{apiVersion}/networking/firewalls", None),
        ("GET" | "DELETE", ["networking", "firewalls", id]) if numeric(id) => {
            ("/{apiVersion}/networking/firewalls/{firewallId}", None)
        }
        ("GET", ["networking", "firewalls", id, "devices"]) if numeric(id) => (
            "/{apiVersion}/networking/firewalls/{firewallId}/devices",
            Some("/devices"),
        ),
        ("POST", ["networking", "firewalls", id, "devices"]) if numeric(id) => (
            "/{apiVersion}/networking/firewalls/{firewallId}/devices",
            None,
        ),
        ("GET", ["linode", "instances"]) => {
            ("/{apiVersion}/linode/instances", Some("/linode/instances"))
        }
        ("POST", ["linode", "instances"]) => ("/{apiVersion}/linode/instances", None),
        ("GET" | "DELETE", ["linode", "instances", id]) if numeric(id) => {
            ("/{apiVersion}/linode/instances/{linodeId}", None)
        }
        _ => return None,
    })
}

struct Paging {
    page: usize,
    page_size: usize,
}

fn parse_paging(query: Option<&str>) -> Result<Paging, String> {
    let mut p = Paging {
        page: 1,
        page_size: 100,
    };
    for pair in query.unwrap_or("").split('&').filter(|s| !s.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let n: usize = v
            .parse()
            .map_err(|_| format!("query {k}={v:?} is not an integer"))?;
        match k {
            "page" if n >= 1 => p.page = n,
            "page_size" if (25..=500).contains(&n) => p.page_size = n,
            "page" | "page_size" => return Err(format!("{k}={n} is out of range")),
            _ => return Err(format!("unknown query parameter {k}")),
        }
    }
    Ok(p)
}

fn paginate(items: Vec<Value>, p: Paging) -> Value {
    let results = items.len();
    let pages = results.div_ceil(p.page_size).max(1);
    let page = p.page.min(pages);
    let data: Vec<Value> = items
        .into_iter()
        .skip((page - 1) * p.page_size)
        .take(p.page_size)
        .collect();
    json!({ "data": data, "page": page, "pages": pages, "results": results })
}

fn fault_reply(fault: Fault) -> Reply {
    match fault {
        Fault::RateLimited { retry_after_secs } => {
            let mut r = error(429, None, "Too many requests");
            r.headers
                .push(("Retry-After", retry_after_secs.to_string()));
            r
        }
        Fault::Status(status) => error(status, None, "Internal Server Error (injected)"),
        Fault::Maintenance => {
            let mut r = error(503, None, "The API is in maintenance mode");
            r.headers.push(("X-Maintenance-Mode", "true".into()));
            r
        }
        Fault::Busy => error(400, None, "Linode busy."),
        Fault::Body { status, body } => reply(status, body),
        Fault::CommitThenStatus(status) => error(
            status,
            None,
            "Internal Server Error (injected after the change was made)",
        ),
        Fault::RivalFirst | Fault::CommitThenStall => unreachable!("not an answer of its own"),
    }
}

#[path = "resources.rs"]
mod resources;
