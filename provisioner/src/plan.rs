//! The deployment plan: API reads only (region capabilities, GPU plan and its price, image
//! cloud-init support, an existing deployment by tag), then pure rendering of what deploy
//! would create and send. `plan --out DIR` writes it all to disk; `--json` prints it.
//! Nothing here writes to the Linode account.

use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use crate::config::DeployConfig;
use crate::error::CmdError;
use crate::linode::capability::{GPU_LINODES, METADATA};
use crate::linode::request::{self, LoggedRequest};
use crate::linode::{
    CreateFirewallRequest, CreateInstanceRequest, Firewall, Image, Instance, InstanceMetadata,
    LinodeClient, LinodeType, Price, Region, RootPassword,
};
use crate::render::{self, InstanceFile};

/// A deployment that already exists under the plan's name (found by tag).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Existing {
    pub instances: Vec<Instance>,
    pub firewalls: Vec<Firewall>,
}

impl Existing {
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty() && self.firewalls.is_empty()
    }
}

/// What deploy will do, and everything it will send.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub config: DeployConfig,
    pub warnings: Vec<String>,
    pub region: Region,
    #[serde(rename = "type")]
    pub linode_type: LinodeType,
    pub image: Image,
    /// Price in the chosen region (region-specific when Linode lists one).
    pub price: Price,
    pub existing: Existing,
    /// The `#cloud-config` user data (plain text; contains no secret).
    #[serde(skip)]
    pub user_data: String,
    /// Base64 of `user_data`, as sent in `metadata.user_data`.
    #[serde(skip)]
    pub user_data_base64: String,
    pub firewall: CreateFirewallRequest,
    #[serde(skip)]
    pub files: Vec<InstanceFile>,
}

/// Checks the region, type and image against the API and renders the deployment.
pub async fn make_plan(
    client: &LinodeClient,
    config: DeployConfig,
    warnings: Vec<String>,
) -> Result<Plan, CmdError> {
    let region = check_region(client, &config.region).await?;
    let linode_type = check_type(client, &config.linode_type).await?;
    let image = check_image(client, &config.image).await?;
    let tag = config.name_tag();
    let existing = Existing {
        instances: client.instances_with_tag(&tag).await?,
        firewalls: client.firewalls_with_tag(&tag).await?,
    };
    let user_data = render::render_cloud_init(&config)?;
    let user_data_base64 = render::user_data_base64(&user_data)?;
    let files = render::instance_files(&config)?;
    let firewall = render::firewall_request(&config);
    let price = linode_type.price_in(&config.region);
    Ok(Plan {
        config,
        warnings,
        region,
        linode_type,
        image,
        price,
        existing,
        user_data,
        user_data_base64,
        firewall,
        files,
    })
}

fn is_deployable(r: &Region) -> bool {
    r.has_capability(GPU_LINODES) && r.has_capability(METADATA)
}

async fn deployable_regions(client: &LinodeClient) -> String {
    match client.list_regions().await {
        Ok(regions) => {
            let ids: Vec<String> = regions
                .iter()
                .filter(|r| is_deployable(r))
                .map(|r| format!("{} ({})", r.id, r.label))
                .collect();
            if ids.is_empty() {
                "none of the regions visible to this account offer both".into()
            } else {
                format!("regions with both: {}", ids.join(", "))
            }
        }
        Err(e) => format!("could not list regions: {e}"),
    }
}

/// A message for a missing `--region`, listing the usable regions.
pub async fn missing_region_hint(client: &LinodeClient) -> String {
    format!(
        "--region is required: a region with GPU Linodes and Metadata; {}",
        deployable_regions(client).await
    )
}

async fn check_region(client: &LinodeClient, id: &str) -> Result<Region, CmdError> {
    let region = match client.get_region(id).await {
        Ok(r) => r,
        Err(e) if e.is_not_found() => {
            return Err(CmdError::Preflight(format!(
                "--region {id}: no such region; {}",
                deployable_regions(client).await
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let missing: Vec<&str> = [GPU_LINODES, METADATA]
        .into_iter()
        .filter(|c| !region.has_capability(c))
        .collect();
    if !missing.is_empty() {
        return Err(CmdError::Preflight(format!(
            "--region {id}: lacks the {} capability (needed: \"{GPU_LINODES}\" for the GPU plan, \
             \"{METADATA}\" for cloud-init user data); {}",
            missing
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(" and "),
            deployable_regions(client).await
        )));
    }
    Ok(region)
}

async fn gpu_types(client: &LinodeClient) -> String {
    match client.list_gpu_types().await {
        Ok(types) if !types.is_empty() => format!(
            "GPU plans: {}",
            types
                .iter()
                .map(|t| format!("{} ({})", t.id, t.label))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Ok(_) => "this account sees no GPU plans".into(),
        Err(e) => format!("could not list GPU plans: {e}"),
    }
}

async fn check_type(client: &LinodeClient, id: &str) -> Result<LinodeType, CmdError> {
    let t = match client.get_type(id).await {
        Ok(t) => t,
        Err(e) if e.is_not_found() => {
            return Err(CmdError::Preflight(format!(
                "--type {id}: no such plan; {}",
                gpu_types(client).await
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if !t.is_gpu() {
        return Err(CmdError::Preflight(format!(
            "--type {id}: is a {:?} plan, not a GPU plan (class \"gpu\"); {}",
            t.class,
            gpu_types(client).await
        )));
    }
    Ok(t)
}

async fn check_image(client: &LinodeClient, id: &str) -> Result<Image, CmdError> {
    let img = match client.get_image(id).await {
        Ok(i) => i,
        Err(e) if e.is_not_found() => {
            return Err(CmdError::Preflight(format!(
                "--image {id}: no such image; supported: {}",
                crate::config::SUPPORTED_IMAGES.join(", ")
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if !img.supports_cloud_init() {
        return Err(CmdError::Preflight(format!(
            "--image {id}: does not support cloud-init (its capabilities: [{}]); use one of {}",
            img.capabilities.join(", "),
            crate::config::SUPPORTED_IMAGES.join(", ")
        )));
    }
    if img.status != "available" && !img.status.is_empty() {
        return Err(CmdError::Preflight(format!(
            "--image {id}: is {}, not available",
            img.status
        )));
    }
    Ok(img)
}

impl Plan {
    /// The instance request deploy sends (with a fresh root password and the firewall id
    /// once known).
    pub fn instance_request(
        &self,
        firewall_id: Option<u64>,
        root_pass: RootPassword,
    ) -> CreateInstanceRequest {
        let c = &self.config;
        let mut req = CreateInstanceRequest::new(&c.region, &c.linode_type);
        req.label = Some(c.linode_label().to_string());
        req.image = Some(c.image.clone());
        req.root_pass = Some(root_pass);
        req.authorized_keys = c.ssh_keys.clone();
        req.metadata = Some(InstanceMetadata {
            user_data: self.user_data_base64.clone(),
        });
        req.firewall_id = firewall_id;
        req.tags = c.tags();
        req.booted = Some(true);
        req
    }

    /// Every write request deploy would send, redacted, in order.
    pub fn logged_requests(&self) -> Result<Vec<LoggedRequest>, CmdError> {
        let fw = request::create_firewall(&self.firewall)?.to_logged();
        let pass = RootPassword::generate().map_err(|e| CmdError::Other(e.to_string()))?;
        let mut inst = request::create_instance(&self.instance_request(Some(0), pass))?.to_logged();
        if let Some(body) = inst.body.as_mut() {
            body["firewall_id"] = json!("<id of the firewall created by the request above>");
        }
        let mut poll = request::get_instance(0).to_logged();
        poll.path = "/linode/instances/<id of the instance created above>".into();
        Ok(vec![fw, inst, poll])
    }

    /// Monthly/hourly price in words.
    pub fn price_text(&self) -> String {
        price_text(&self.price)
    }

    /// The human-readable plan.
    pub fn describe(&self) -> String {
        let c = &self.config;
        let t = &self.linode_type;
        let allow: Vec<String> = c.allow.iter().map(ToString::to_string).collect();
        let mut out = format!(
            "Plan for deployment \"{name}\" (tags: {tags}):\n\
             \x20 + Cloud Firewall  {fw}: inbound DROP except TCP 22 (SSH) and {port} (API) from {allow}; outbound ACCEPT\n\
             \x20 + GPU Linode      {label}: {tid} ({tlabel}, {gpus} GPU, {mem} GB RAM) in {region} ({rlabel})\n\
             \x20                   image {image}, root login by SSH key only, cloud-init user data {ud} bytes\n\
             \x20   Model           {model}{gated}\n\
             \x20   API image       {api}\n\
             \x20   Price           {price}\n",
            name = c.name,
            tags = c.tags().join(", "),
            fw = c.firewall_label(),
            port = c.port,
            allow = allow.join(", "),
            label = c.linode_label(),
            tid = t.id,
            tlabel = t.label,
            gpus = t.gpus,
            mem = t.memory / 1024,
            region = c.region,
            rlabel = self.region.label,
            image = c.image,
            ud = self.user_data.len(),
            model = c.model,
            gated = if c.hf_token_present {
                " (Hugging Face token copied over SSH once the instance answers)"
            } else {
                ""
            },
            api = c
                .api_image
                .as_deref()
                .unwrap_or("built on the instance from this source tree (uploaded over SSH)"),
            price = self.price_text(),
        );
        if !self.existing.is_empty() {
            out.push_str(&format!(
                "  ! A deployment named \"{}\" already exists: {}\n",
                c.name,
                describe_existing(&self.existing)
            ));
        }
        for w in &self.warnings {
            out.push_str(&format!("  warning: {w}\n"));
        }
        out
    }

    /// The plan as JSON (`--json`): config, checks, price, existing deployment, firewall
    /// body and the redacted requests.
    pub fn to_json(&self) -> Result<Value, CmdError> {
        let mut v = serde_json::to_value(self)
            .map_err(|e| CmdError::Other(format!("cannot encode the plan: {e}")))?;
        v["requests"] = serde_json::to_value(self.logged_requests()?)
            .map_err(|e| CmdError::Other(e.to_string()))?;
        v["user_data_bytes"] = json!(self.user_data.len());
        Ok(v)
    }

    /// Writes the plan's files into `dir` (created if needed).
    pub fn write_out(&self, dir: &Path) -> Result<Vec<String>, CmdError> {
        let mut written = Vec::new();
        let mut put = |rel: String, content: &[u8]| -> Result<(), CmdError> {
            let path = dir.join(&rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| CmdError::io(format!("--out {}", parent.display()), e))?;
            }
            std::fs::write(&path, content)
                .map_err(|e| CmdError::io(format!("--out {}", path.display()), e))?;
            written.push(rel);
            Ok(())
        };
        let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
        put("user-data.yaml".into(), self.user_data.as_bytes())?;
        let fw = serde_json::to_value(&self.firewall).unwrap_or_default();
        put("firewall.json".into(), pretty(&fw).as_bytes())?;
        let reqs = serde_json::to_value(self.logged_requests()?).unwrap_or_default();
        put("requests.json".into(), pretty(&reqs).as_bytes())?;
        put("plan.json".into(), pretty(&self.to_json()?).as_bytes())?;
        for f in &self.files {
            if f.path == render::cloud_init::paths::COMPOSE_FILE {
                put("docker-compose.yml".into(), f.content.as_bytes())?;
            }
            put(
                format!("files/{}", f.path.trim_start_matches('/')),
                f.content.as_bytes(),
            )?;
        }
        Ok(written)
    }
}

/// `$0.52/hour, $350.00/month`
pub fn price_text(p: &Price) -> String {
    match (p.hourly, p.monthly) {
        (Some(h), Some(m)) => format!("${h:.2}/hour, ${m:.2}/month (billed until destroyed)"),
        (Some(h), None) => format!("${h:.2}/hour (billed until destroyed)"),
        (None, Some(m)) => format!("${m:.2}/month (billed until destroyed)"),
        (None, None) => "unknown (Linode lists no price for this plan)".into(),
    }
}

/// One line about an existing deployment.
pub fn describe_existing(e: &Existing) -> String {
    let mut parts: Vec<String> = e
        .instances
        .iter()
        .map(|i| {
            format!(
                "instance {} {} ({}, {})",
                i.id,
                i.label,
                i.status,
                i.public_ipv4().unwrap_or("no public IPv4")
            )
        })
        .collect();
    parts.extend(
        e.firewalls
            .iter()
            .map(|f| format!("firewall {} {}", f.id, f.label)),
    );
    parts.join("; ")
}
