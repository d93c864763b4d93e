//! Read-only commands: `status NAME` (instance, firewall, health, price so far), `health
//! NAME` (exit 0 ready, 1 not) and `list` (everything tagged `ai-sandbox`), plus the
//! client-side `/health` and `/v1/models` probes deploy also uses.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use crate::cli::{HealthArgs, ListArgs, StatusArgs};
use crate::config::{DEFAULT_PORT, TAG};
use crate::context;
use crate::destroy;
use crate::error::{CmdError, EXIT_ERROR, EXIT_NOT_READY, EXIT_OK};
use crate::linode::{Firewall, FirewallRule, Instance};

/// The answer of one `/health` probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    NotReady(String),
}

/// `GET {base}/health`: 200 is ready; anything else says why not.
pub async fn check_health(base: &str, timeout: Duration) -> Health {
    let client = match context::http_client(timeout) {
        Ok(c) => c,
        Err(e) => return Health::NotReady(e.to_string()),
    };
    match client.get(format!("{base}/health")).send().await {
        Ok(r) if r.status().is_success() => Health::Ready,
        Ok(r) => Health::NotReady(format!("HTTP {}", r.status().as_u16())),
        Err(e) if e.is_timeout() => Health::NotReady("no answer (timeout)".into()),
        Err(e) if e.is_connect() => Health::NotReady("connection refused or unreachable".into()),
        Err(e) => Health::NotReady(e.to_string()),
    }
}

/// The first model id from `GET {base}/v1/models`.
pub async fn model_id(base: &str) -> Option<String> {
    let client = context::http_client(Duration::from_secs(10)).ok()?;
    let v: Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    v["data"][0]["id"].as_str().map(str::to_string)
}

/// Whole hours and minutes since an API timestamp (`2018-01-01T00:01:01`, UTC).
pub fn hours_since(created: &str, now_unix: u64) -> Option<f64> {
    let t = parse_api_time(created)?;
    Some(now_unix.saturating_sub(t) as f64 / 3600.0)
}

/// Seconds since the epoch of `YYYY-MM-DDTHH:MM:SS` (UTC; a trailing `Z` is accepted).
pub fn parse_api_time(s: &str) -> Option<u64> {
    let s = s.trim().trim_end_matches('Z');
    let (date, time) = s.split_once('T')?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let t: Vec<i64> = time
        .split('.')
        .next()?
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let ([y, m, day], [hh, mm, ss]) = (d.as_slice(), t.as_slice()) else {
        return None;
    };
    if !(1..=12).contains(m) || !(1..=31).contains(day) || *hh > 23 || *mm > 59 || *ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if *m <= 2 { y - 1 } else { *y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Upper-case wire name of a serde enum (`ACCEPT`, `TCP`).
fn wire<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn rule_summary(r: &FirewallRule) -> String {
    let mut addrs: Vec<String> = r.addresses.ipv4.clone().unwrap_or_default();
    addrs.extend(r.addresses.ipv6.clone().unwrap_or_default());
    format!(
        "{} {} {} from {}",
        wire(&r.action),
        wire(&r.protocol),
        r.ports.as_deref().unwrap_or("all ports"),
        addrs.join(", ")
    )
}

/// `inbound DROP; ACCEPT TCP 22 from ...; outbound ACCEPT`
pub fn firewall_summary(f: &Firewall) -> String {
    let mut parts = vec![format!("inbound {}", wire(&f.rules.inbound_policy))];
    parts.extend(f.rules.inbound.iter().map(rule_summary));
    parts.push(format!("outbound {}", wire(&f.rules.outbound_policy)));
    parts.join("; ")
}

#[derive(Debug, Serialize)]
struct StatusReport {
    name: String,
    instance: Option<Value>,
    firewalls: Vec<Value>,
    health: Option<String>,
    base_url: Option<String>,
    hourly_price: Option<f64>,
    hours_running: Option<f64>,
    cost_so_far: Option<f64>,
}

/// `ai-sandbox status NAME`
pub async fn status(config: Option<&Path>, args: &StatusArgs) -> Result<u8, CmdError> {
    let name = context::name_for(args.target.name.as_deref(), config)?;
    let client = context::linode_client()?;
    let found = destroy::find(&client, &name).await?;
    if found.is_empty() {
        return Err(CmdError::Other(format!(
            "no deployment named \"{name}\" (nothing tagged {TAG}:{name}); `ai-sandbox list` shows them all"
        )));
    }
    let port = port_for(config);
    let mut report = StatusReport {
        name: name.clone(),
        instance: None,
        firewalls: Vec::new(),
        health: None,
        base_url: None,
        hourly_price: None,
        hours_running: None,
        cost_so_far: None,
    };
    let mut lines = vec![format!("Deployment \"{name}\"")];
    for i in &found.instances {
        let ip = i.public_ipv4().unwrap_or("-");
        lines.push(format!(
            "  Instance  {} {}: {} at {ip}, {} in {}, created {}",
            i.id,
            i.label,
            i.status,
            i.plan.as_deref().unwrap_or("?"),
            i.region,
            i.created.as_deref().unwrap_or("?")
        ));
        report.instance = Some(instance_json(i));
        if let Some(plan) = &i.plan {
            if let Ok(t) = client.get_type(plan).await {
                report.hourly_price = t.price_in(&i.region).hourly;
            }
        }
        report.hours_running = i
            .created
            .as_deref()
            .and_then(|c| hours_since(c, now_unix()));
        if let (Some(h), Some(p)) = (report.hours_running, report.hourly_price) {
            // Linode bills started hours, capped at the monthly price (not modelled here).
            let cost = h.ceil().max(1.0) * p;
            report.cost_so_far = Some((cost * 100.0).round() / 100.0);
            lines.push(format!(
                "  Cost      ${cost:.2} so far ({h:.1} h at ${p:.2}/hour; Linode caps each month at the monthly price)"
            ));
        }
        if let Some(ip) = i.public_ipv4() {
            let base = context::api_base(ip, port);
            let h = check_health(&base, Duration::from_secs(5)).await;
            let text = match &h {
                Health::Ready => "ready".to_string(),
                Health::NotReady(why) => format!("not ready ({why})"),
            };
            lines.push(format!("  Health    {base}/health: {text}"));
            lines.push(format!("  BASE_URL  {base}/v1"));
            report.health = Some(text);
            report.base_url = Some(format!("{base}/v1"));
        }
    }
    if found.instances.is_empty() {
        lines.push(
            "  Instance  none (only a firewall is left; `ai-sandbox destroy` removes it)".into(),
        );
    }
    for f in &found.firewalls {
        lines.push(format!(
            "  Firewall  {} {} ({}): {}",
            f.id,
            f.label,
            f.status,
            firewall_summary(f)
        ));
        report.firewalls.push(json!({
            "id": f.id, "label": f.label, "status": f.status, "rules": f.rules,
            "summary": firewall_summary(f),
        }));
    }
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!("{}", lines.join("\n"));
    }
    Ok(EXIT_OK)
}

fn port_for(config: Option<&Path>) -> u16 {
    context::merged_layers(config, &Default::default())
        .ok()
        .and_then(|l| l.port)
        .unwrap_or(DEFAULT_PORT)
}

fn instance_json(i: &Instance) -> Value {
    json!({
        "id": i.id, "label": i.label, "status": i.status, "ipv4": i.public_ipv4(),
        "region": i.region, "type": i.plan, "created": i.created, "tags": i.tags,
    })
}

/// `ai-sandbox health NAME`
pub async fn health(config: Option<&Path>, args: &HealthArgs) -> Result<u8, CmdError> {
    let name = context::name_for(args.target.name.as_deref(), config)?;
    let client = context::linode_client()?;
    let found = destroy::find(&client, &name).await?;
    let Some(inst) = found.instances.first() else {
        eprintln!("no instance named \"{name}\" (nothing tagged {TAG}:{name})");
        return Ok(EXIT_ERROR);
    };
    let Some(ip) = inst.public_ipv4() else {
        println!(
            "not ready: instance {} has no public IPv4 ({})",
            inst.id, inst.status
        );
        return Ok(EXIT_NOT_READY);
    };
    let base = context::api_base(ip, port_for(config));
    match check_health(&base, args.timeout).await {
        Health::Ready => {
            println!("ready: {base}/health answered 200");
            Ok(EXIT_OK)
        }
        Health::NotReady(why) => {
            println!("not ready: {base}/health: {why} (instance {})", inst.status);
            Ok(EXIT_NOT_READY)
        }
    }
}

/// `ai-sandbox list`
pub async fn list(args: &ListArgs) -> Result<u8, CmdError> {
    let client = context::linode_client()?;
    let instances = client.instances_with_tag(TAG).await?;
    let firewalls = client.firewalls_with_tag(TAG).await?;
    let prefix = format!("{TAG}:");
    let name_of = |tags: &[String], fallback: &str| {
        tags.iter()
            .find_map(|t| t.strip_prefix(&prefix))
            .unwrap_or(fallback)
            .to_string()
    };
    let mut by_name: BTreeMap<String, (Vec<&Instance>, Vec<&Firewall>)> = BTreeMap::new();
    for i in &instances {
        by_name
            .entry(name_of(&i.tags, &i.label))
            .or_default()
            .0
            .push(i);
    }
    for f in &firewalls {
        by_name
            .entry(name_of(&f.tags, &f.label))
            .or_default()
            .1
            .push(f);
    }
    if args.json {
        let v: Vec<Value> = by_name
            .iter()
            .map(|(name, (is, fs))| {
                json!({
                    "name": name,
                    "instances": is.iter().map(|i| instance_json(i)).collect::<Vec<_>>(),
                    "firewalls": fs.iter().map(|f| json!({"id": f.id, "label": f.label, "status": f.status})).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(EXIT_OK);
    }
    if by_name.is_empty() {
        println!("No deployments (nothing tagged {TAG}).");
        return Ok(EXIT_OK);
    }
    let mut rows = vec![[
        "NAME".to_string(),
        "STATUS".into(),
        "IPV4".into(),
        "REGION".into(),
        "TYPE".into(),
        "FIREWALL".into(),
    ]];
    for (name, (is, fs)) in &by_name {
        let fw = fs
            .iter()
            .map(|f| f.label.clone())
            .collect::<Vec<_>>()
            .join(",");
        let fw = if fw.is_empty() { "-".into() } else { fw };
        if is.is_empty() {
            rows.push([
                name.clone(),
                "no instance".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                fw.clone(),
            ]);
        }
        for i in is {
            rows.push([
                name.clone(),
                i.status.to_string(),
                i.public_ipv4().unwrap_or("-").into(),
                i.region.clone(),
                i.plan.clone().unwrap_or_default(),
                fw.clone(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_times_parse_to_unix_seconds() {
        assert_eq!(parse_api_time("1970-01-01T00:00:00"), Some(0));
        assert_eq!(parse_api_time("2018-01-01T00:01:01"), Some(1_514_764_861));
        assert_eq!(parse_api_time("2024-02-29T12:00:00Z"), Some(1_709_208_000));
        assert_eq!(parse_api_time("2024-13-01T00:00:00"), None);
        assert_eq!(parse_api_time("yesterday"), None);
        let h = hours_since("2018-01-01T00:01:01", 1_514_764_861 + 5400).unwrap();
        assert!((h - 1.5).abs() < 1e-9);
    }
}
