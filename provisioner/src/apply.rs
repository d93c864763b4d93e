//! `deploy`: plan, confirm, create the Cloud Firewall then the instance, wait for
//! `running`, hand the source tree and the Hugging Face token over SSH, wait for
//! `/health` while showing the setup phase, print BASE_URL. Every failure and Ctrl-C
//! ends in [`crate::destroy::teardown`] of what this run created (or, with
//! `--keep-on-failure` or a "no" at the Ctrl-C question, the exact destroy command).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cli::DeployArgs;
use crate::config::DeployConfig;
use crate::context;
use crate::destroy::{self, Teardown};
use crate::error::{CmdError, EXIT_OK};
use crate::linode::{Firewall, Instance, InstanceStatus, LinodeClient, LinodeError, RootPassword};
use crate::output::{self, Progress};
use crate::phase::{Phase, PhaseEvent};
use crate::plan::{self, Plan};
use crate::remote;
use crate::status::{self, Health};

/// Longest wait for `running` after creation.
const RUNNING_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How often the setup phase is read over SSH during the health wait.
const PHASE_READ_INTERVAL: Duration = Duration::from_secs(10);

/// What this run has created so far (shared with the Ctrl-C path).
#[derive(Debug, Default, Clone)]
struct Created {
    firewall: Option<Firewall>,
    instance: Option<Instance>,
    /// A create of that kind is in flight (Ctrl-C may drop it after it reached Linode) or
    /// failed in a way that may still have made it (a lost answer): cleanup then looks for it
    /// by tag and label. Otherwise cleanup touches only what this run knows it made, never a
    /// namesake made by another run.
    firewall_unsure: bool,
    instance_unsure: bool,
}

/// How the steps ended.
enum Done {
    /// `--no-wait`: created, not waited for.
    Created(Box<Instance>),
    Ready {
        base_url: String,
        model: String,
    },
}

/// `ai-sandbox plan` / `deploy --dry-run`.
pub async fn plan_only(
    config: Option<&Path>,
    flags: &crate::cli::DeployFlags,
    out: Option<&Path>,
    json: bool,
) -> Result<u8, CmdError> {
    let client = context::linode_client()?;
    let plan = make_plan(&client, config, flags).await?;
    if json {
        let v = plan.to_json()?;
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    } else {
        print!("{}", plan.describe());
    }
    if let Some(dir) = out {
        let files = plan.write_out(dir)?;
        if !json {
            println!("Wrote {} files to {}.", files.len(), dir.display());
        }
    }
    if !json {
        println!("This was a plan only; nothing was created. Run `ai-sandbox deploy` with the same settings to create it.");
    }
    Ok(EXIT_OK)
}

async fn make_plan(
    client: &LinodeClient,
    config: Option<&Path>,
    flags: &crate::cli::DeployFlags,
) -> Result<Plan, CmdError> {
    let resolved = match context::resolve_deploy_config(config, flags).await {
        Err(CmdError::Config(crate::config::ConfigError::Missing {
            flag: "--region", ..
        })) => return Err(CmdError::Preflight(plan::missing_region_hint(client).await)),
        other => other?,
    };
    for w in &resolved.warnings {
        eprintln!("warning: {w}");
    }
    plan::make_plan(client, resolved.config, resolved.warnings).await
}

/// `ai-sandbox deploy`.
pub async fn run(config: Option<&Path>, args: &DeployArgs) -> Result<u8, CmdError> {
    if args.dry_run {
        return plan_only(config, &args.flags, args.out.as_deref(), false).await;
    }
    let client = context::linode_client()?;
    // Held from before the plan's existence check until the process ends. A bad name is
    // left to the plan, whose message names --name.
    let _lock = match context::name_for(args.flags.name.as_deref(), config) {
        Ok(name) => crate::lock::guard(&name)?,
        Err(_) => None,
    };
    let plan = make_plan(&client, config, &args.flags).await?;
    let name = plan.config.name.clone();
    let source = match (&plan.config.api_image, args.no_wait) {
        (Some(_), _) => None,
        (None, false) => Some(remote::source_dir()?),
        (None, true) => {
            return Err(CmdError::Usage(
                "--no-wait needs --api-image: without a prebuilt image the instance waits for \
                 the source upload that deploy makes once SSH answers"
                    .into(),
            ))
        }
    };
    print!("{}", plan.describe());

    if !plan.existing.is_empty() {
        if !args.replace {
            println!(
                "Deployment \"{name}\" already exists; nothing to do. Use --replace to destroy and recreate it, or `ai-sandbox destroy {name}`."
            );
            if let Some(ip) = plan
                .existing
                .instances
                .iter()
                .find_map(Instance::public_ipv4)
            {
                println!("BASE_URL={}/v1", context::api_base(ip, plan.config.port));
            }
            return Ok(EXIT_OK);
        }
        if !output::confirm(
            &format!("Destroy the existing \"{name}\" and create it again?"),
            args.yes,
        )? {
            return Err(CmdError::NotConfirmed(
                "aborted; nothing was changed".into(),
            ));
        }
        println!("Destroying the existing deployment \"{name}\"...");
        let t = destroy::teardown(
            &client,
            &name,
            &plan.existing.instances,
            &plan.existing.firewalls,
            context::poll_interval(),
        )
        .await;
        if !t.clean() {
            return Err(CmdError::Leftovers(destroy::leftover_message(&name, &t)));
        }
        destroy::forget_host_key(&name);
    } else if !output::confirm(
        "Create these resources? They are billed by the hour until destroyed.",
        args.yes,
    )? {
        return Err(CmdError::NotConfirmed(
            "aborted; nothing was created".into(),
        ));
    }

    let created = Arc::new(Mutex::new(Created::default()));
    let steps = steps(
        &client,
        &plan,
        args,
        config,
        source.as_deref(),
        Arc::clone(&created),
    );
    let outcome = tokio::select! {
        r = steps => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    let snapshot = created.lock().map(|c| c.clone()).unwrap_or_default();
    match outcome {
        Some(Ok(Done::Ready { base_url, model })) => {
            print!("{}", output::ready_message(&name, &base_url, &model));
            Ok(EXIT_OK)
        }
        Some(Ok(Done::Created(inst))) => {
            let ip = inst.public_ipv4().unwrap_or("(no public IPv4 yet)");
            println!(
                "Created instance {} ({ip}); not waiting (--no-wait). Check with `ai-sandbox status {name}`.",
                inst.id
            );
            println!(
                "BASE_URL={}/v1 (ready once `ai-sandbox health {name}` says so)",
                context::api_base(ip, plan.config.port)
            );
            Ok(EXIT_OK)
        }
        Some(Err(cause)) => {
            let report = if args.keep_on_failure {
                kept_report(&name, &snapshot)
            } else {
                eprintln!("Deploy failed; cleaning up what this run created...");
                cleanup_report(&client, &plan.config, &snapshot).await
            };
            Err(CmdError::Deploy { cause, report })
        }
        None => {
            eprintln!();
            // On a terminal: ask (Enter destroys; "n" or a second Ctrl-C keeps and prints the
            // destroy command). Without one: destroy.
            let answer = if output::interactive() {
                output::ask_interruptible(
                    "Interrupted. Destroy what this run created (it is billed until destroyed)?",
                    true,
                )
                .await?
            } else {
                Some(true)
            };
            let report = if answer == Some(true) {
                eprintln!("Destroying what this run created...");
                cleanup_report(&client, &plan.config, &snapshot).await
            } else {
                if answer.is_none() {
                    eprintln!();
                }
                kept_report(&name, &snapshot)
            };
            Err(CmdError::Deploy {
                cause: "interrupted (Ctrl-C)".into(),
                report,
            })
        }
    }
}

fn created_list(c: &Created) -> (Vec<String>, Vec<&'static str>) {
    let mut made = Vec::new();
    let mut not = Vec::new();
    match &c.firewall {
        Some(f) => made.push(format!("Cloud Firewall {} ({})", f.label, f.id)),
        None => not.push("Cloud Firewall"),
    }
    match &c.instance {
        Some(i) => made.push(format!("instance {} ({})", i.label, i.id)),
        None => not.push("instance"),
    }
    (made, not)
}

fn kept_report(name: &str, c: &Created) -> String {
    let (made, not) = created_list(c);
    let mut s = String::new();
    if made.is_empty() {
        s.push_str("Nothing was created.");
    } else {
        s.push_str(&format!(
            "Created and kept: {}. Not created: {}.\n",
            made.join(", "),
            if not.is_empty() {
                "-".into()
            } else {
                not.join(", ")
            }
        ));
        s.push_str(&format!(
            "They are billed until destroyed. Remove them with:\n  ai-sandbox destroy {name} -y"
        ));
    }
    s
}

async fn cleanup_report(client: &LinodeClient, cfg: &DeployConfig, c: &Created) -> String {
    let name = cfg.name.as_str();
    let (made, not) = created_list(c);
    let mut instances: Vec<Instance> = c.instance.iter().cloned().collect();
    let mut firewalls: Vec<Firewall> = c.firewall.iter().cloned().collect();
    // A create whose answer was lost may have made something this run never heard about:
    // look for it by tag and label, for those kinds only.
    if c.firewall_unsure || c.instance_unsure {
        let found = destroy::find(client, name).await.unwrap_or_default();
        let (fw_label, inst_label) = (cfg.firewall_label(), cfg.linode_label());
        if c.instance_unsure && instances.is_empty() {
            instances.extend(found.instances.into_iter().filter(|i| i.label == inst_label));
        }
        if c.firewall_unsure && firewalls.is_empty() {
            firewalls.extend(found.firewalls.into_iter().filter(|f| f.label == fw_label));
        }
    }
    if instances.is_empty() && firewalls.is_empty() {
        return "Nothing was created; nothing is left behind.".into();
    }
    let t: Teardown = destroy::teardown(
        client,
        name,
        &instances,
        &firewalls,
        context::poll_interval(),
    )
    .await;
    let mut s = format!(
        "Created by this run: {}. Not created: {}.\n",
        if made.is_empty() {
            "-".into()
        } else {
            made.join(", ")
        },
        if not.is_empty() {
            "-".into()
        } else {
            not.join(", ")
        }
    );
    if t.clean() {
        destroy::forget_host_key(name);
        s.push_str(&format!(
            "Cleaned up: deleted {}; nothing tagged ai-sandbox:{name} is left.",
            t.deleted.join(", ")
        ));
    } else {
        s.push_str(&destroy::leftover_message(name, &t));
    }
    s
}

fn is_label_taken(e: &LinodeError) -> bool {
    e.details().iter().any(|d| {
        d.field.as_deref() == Some("label") && d.reason.to_ascii_lowercase().contains("unique")
    })
}

/// After a create failed with `e`: `Ok(true)` when the label is taken by what is most likely
/// this run's own lost create (the POST was retried), so it may be adopted by tag and label;
/// `Ok(false)` for other failures; `Err` when the label was taken on the first attempt, i.e.
/// by someone else between the plan and the create (another deploy of the same name), whose
/// resource this run must neither adopt nor clean up.
fn lost_create(e: &LinodeError, kind: &str, label: &str, name: &str) -> Result<bool, String> {
    if !is_label_taken(e) {
        return Ok(false);
    }
    if e.attempts() > 1 {
        return Ok(true);
    }
    Err(format!(
        "a {kind} labelled {label:?} appeared after the plan, made by someone else (another \
         `ai-sandbox deploy {name}` running elsewhere?); this run leaves it alone. See \
         `ai-sandbox status {name}` ({e})"
    ))
}

async fn steps(
    client: &LinodeClient,
    plan: &Plan,
    args: &DeployArgs,
    config: Option<&Path>,
    source: Option<&Path>,
    created: Arc<Mutex<Created>>,
) -> Result<Done, String> {
    let cfg = &plan.config;
    let tag = cfg.name_tag();
    let record = |f: &dyn Fn(&mut Created)| {
        if let Ok(mut c) = created.lock() {
            f(&mut c)
        }
    };

    let mut progress = Progress::new(&format!("creating Cloud Firewall {}", cfg.firewall_label()));
    // Unsure until answered: a Ctrl-C that drops this future mid-request must still look.
    record(&|c| c.firewall_unsure = true);
    let firewall = match client.create_firewall(&plan.firewall).await {
        Ok(f) => f,
        Err(e) => {
            record(&|c| c.firewall_unsure = e.may_have_created());
            let adopted = match lost_create(&e, "Cloud Firewall", &cfg.firewall_label(), &cfg.name)? {
                true => adopt_firewall(client, &tag, &cfg.firewall_label()).await,
                false => None,
            };
            adopted.ok_or_else(|| format!("creating the Cloud Firewall failed: {e}"))?
        }
    };
    record(&|c| {
        c.firewall = Some(firewall.clone());
        c.firewall_unsure = false;
    });
    progress.println(&format!(
        "Created Cloud Firewall {} ({})",
        firewall.label, firewall.id
    ));

    progress.set(&format!("creating GPU Linode {}", cfg.linode_label()));
    let root_pass = RootPassword::generate().map_err(|e| e.to_string())?;
    let body = plan.instance_request(Some(firewall.id), root_pass);
    record(&|c| c.instance_unsure = true);
    let instance = match client.create_instance(&body).await {
        Ok(i) => i,
        Err(e) => {
            record(&|c| c.instance_unsure = e.may_have_created());
            let adopted = match lost_create(&e, "instance", cfg.linode_label(), &cfg.name)? {
                true => adopt_instance(client, &tag, cfg.linode_label()).await,
                false => None,
            };
            adopted.ok_or_else(|| format!("creating the instance failed: {e}"))?
        }
    };
    drop(body);
    record(&|c| {
        c.instance = Some(instance.clone());
        c.instance_unsure = false;
    });
    progress.println(&format!(
        "Created instance {} ({}, {})",
        instance.id,
        instance.label,
        instance.public_ipv4().unwrap_or("no public IPv4 yet")
    ));
    if args.no_wait {
        progress.abandon();
        return Ok(Done::Created(Box::new(instance)));
    }

    let poll = context::poll_interval();
    let instance = wait_running(client, instance.id, poll, &mut progress).await?;
    record(&|c| c.instance = Some(instance.clone()));
    let ip = instance
        .public_ipv4()
        .ok_or("the instance has no public IPv4 address")?
        .to_string();
    progress.println(&format!("Instance {} is running at {ip}", instance.id));

    let target = remote::target(&ip, &cfg.name, config);
    let token = context::hf_token();
    if source.is_some() || token.is_some() {
        progress.set("waiting for SSH on the instance");
        remote::wait_ready(&target, context::ssh_wait())
            .await
            .map_err(|e| format!("SSH to {ip} did not answer: {e}"))?;
        if let Some(dir) = source {
            progress.set("uploading the source tree to build the API image");
            remote::upload_source(&target, dir)
                .await
                .map_err(|e| format!("uploading the source tree failed: {e}"))?;
        }
        if let Some(tok) = token {
            progress.set("copying the Hugging Face token");
            remote::install_hf_token(&target, tok)
                .await
                .map_err(|e| format!("copying the Hugging Face token failed: {e}"))?;
            progress.println("Copied the Hugging Face token into a root-only file on the instance");
        }
    }

    let base = context::api_base(&ip, cfg.port);
    wait_healthy(&base, &target, &cfg.name, args.timeout, poll, &mut progress).await?;
    let model = status::model_id(&base)
        .await
        .unwrap_or_else(|| cfg.model.clone());
    progress.finish("ready");
    Ok(Done::Ready {
        base_url: format!("{base}/v1"),
        model,
    })
}

async fn adopt_firewall(client: &LinodeClient, tag: &str, label: &str) -> Option<Firewall> {
    let found = client.firewalls_with_tag(tag).await.ok()?;
    found.into_iter().find(|f| f.label == label)
}

async fn adopt_instance(client: &LinodeClient, tag: &str, label: &str) -> Option<Instance> {
    let found = client.instances_with_tag(tag).await.ok()?;
    found.into_iter().find(|i| i.label == label)
}

async fn wait_running(
    client: &LinodeClient,
    id: u64,
    poll: Duration,
    progress: &mut Progress,
) -> Result<Instance, String> {
    let start = Instant::now();
    loop {
        let inst = client
            .get_instance(id)
            .await
            .map_err(|e| format!("waiting for the instance to run failed: {e}"))?;
        match &inst.status {
            InstanceStatus::Running => return Ok(inst),
            InstanceStatus::Offline | InstanceStatus::ShuttingDown | InstanceStatus::Deleting => {
                return Err(format!(
                    "the instance went {} instead of running; see the Linode Cloud Manager for its events",
                    inst.status
                ))
            }
            InstanceStatus::Other(s) if matches!(s.as_str(), "stopped" | "billing_suspension") => {
                return Err(format!("the instance is {s} instead of running"))
            }
            s => progress.set(&format!("instance {id} is {s}")),
        }
        if start.elapsed() > RUNNING_TIMEOUT {
            return Err(format!(
                "the instance was not running after {} minutes (last status: {})",
                RUNNING_TIMEOUT.as_secs() / 60,
                inst.status
            ));
        }
        tokio::time::sleep(poll).await;
    }
}

async fn wait_healthy(
    base: &str,
    target: &crate::ssh::Target,
    name: &str,
    timeout: Duration,
    poll: Duration,
    progress: &mut Progress,
) -> Result<(), String> {
    let start = Instant::now();
    let phase: Arc<Mutex<Option<PhaseEvent>>> = Arc::new(Mutex::new(None));
    // The phase comes from the instance's deploy log over SSH, in the background so a slow
    // or refused SSH never delays the health polls. The health test hook turns it off, unless
    // the SSH test hook points it at a stand-in instance too.
    let read_phases = context::health_url_override().is_none() || remote::ssh_override_set();
    // Every 10 s; a shortened poll interval (test hook) shortens it in proportion.
    let every = PHASE_READ_INTERVAL.min(poll.saturating_mul(10));
    let reader = read_phases.then(|| {
        let phase = Arc::clone(&phase);
        let target = target.clone();
        tokio::spawn(async move {
            loop {
                if let Some(ev) = remote::read_phase(&target).await {
                    if let Ok(mut p) = phase.lock() {
                        *p = Some(ev);
                    }
                }
                tokio::time::sleep(every).await;
            }
        })
    });
    let result = loop {
        let current = phase.lock().ok().and_then(|p| p.clone());
        if let Some(ev) = &current {
            if ev.phase == Phase::Failed {
                break Err(format!(
                    "setup failed on the instance: {} (see `ai-sandbox logs {name} --cloud-init`)",
                    ev.message
                ));
            }
        }
        match status::check_health(base, Duration::from_secs(10)).await {
            Health::Ready => break Ok(()),
            Health::NotReady(why) => {
                let shown = match &current {
                    Some(ev) if ev.message.is_empty() => ev.phase.to_string(),
                    Some(ev) => format!("{}: {}", ev.phase, ev.message),
                    None => Phase::Booting.to_string(),
                };
                progress.set(&format!("setting up ({shown}); {base}/health: {why}"));
            }
        }
        if start.elapsed() > timeout {
            let last = current.map_or_else(|| "booting".to_string(), |e| e.phase.to_string());
            break Err(format!(
                "the API at {base} was not ready after {} (last phase: {last}); raise --timeout, \
                 or use --keep-on-failure and `ai-sandbox logs {name} --cloud-init` to see why",
                output::elapsed(timeout)
            ));
        }
        tokio::time::sleep(poll).await;
    };
    if let Some(r) = reader {
        r.abort();
    }
    result
}
