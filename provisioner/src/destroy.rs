//! Teardown by tag: finds a deployment's instances and firewalls (`ai-sandbox:<name>`),
//! deletes the instances, waits until each answers 404, deletes the firewalls, then looks
//! again by tag and reports anything left. Used by `destroy`, `deploy --replace` and
//! deploy's cleanup after a failure or Ctrl-C.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::cli::DestroyArgs;
use crate::context;
use crate::error::{CmdError, EXIT_OK};
use crate::linode::{Firewall, Instance, LinodeClient, LinodeError};
use crate::output;
use crate::plan::{describe_existing, Existing};

/// How long to wait for a deleted instance to disappear.
const GONE_TIMEOUT: Duration = Duration::from_secs(600);

/// What a teardown did.
#[derive(Debug, Default)]
pub struct Teardown {
    /// `instance 123 name`, `firewall 45 name-fw`
    pub deleted: Vec<String>,
    /// Resources that could not be deleted, with Linode's reason.
    pub failed: Vec<String>,
    /// Resources still found by tag afterwards.
    pub leftovers: Vec<String>,
}

impl Teardown {
    pub fn clean(&self) -> bool {
        self.failed.is_empty() && self.leftovers.is_empty()
    }
}

/// The deployment tagged `ai-sandbox:<name>`.
pub async fn find(client: &LinodeClient, name: &str) -> Result<Existing, LinodeError> {
    let tag = format!("{}:{name}", crate::config::TAG);
    Ok(Existing {
        instances: client.instances_with_tag(&tag).await?,
        firewalls: client.firewalls_with_tag(&tag).await?,
    })
}

/// Deletes `instances` (waiting until gone) then `firewalls`, then re-checks `name`'s tag.
pub async fn teardown(
    client: &LinodeClient,
    name: &str,
    instances: &[Instance],
    firewalls: &[Firewall],
    poll: Duration,
) -> Teardown {
    let mut t = Teardown::default();
    let mut deleting = Vec::new();
    for i in instances {
        let what = format!("instance {} {}", i.id, i.label);
        match client.delete_instance(i.id).await {
            Ok(()) => deleting.push((i.id, what)),
            Err(e) if e.is_not_found() => t.deleted.push(what),
            Err(e) => t.failed.push(format!("{what}: {e}")),
        }
    }
    for (id, what) in deleting {
        match wait_gone(client, id, poll).await {
            Ok(()) => t.deleted.push(what),
            Err(e) => t.failed.push(format!("{what}: {e}")),
        }
    }
    for f in firewalls {
        let what = format!("firewall {} {}", f.id, f.label);
        match client.delete_firewall(f.id).await {
            Ok(()) => t.deleted.push(what),
            Err(e) if e.is_not_found() => t.deleted.push(what),
            Err(e) => t.failed.push(format!("{what}: {e}")),
        }
    }
    match find(client, name).await {
        Ok(left) => {
            t.leftovers.extend(
                left.instances
                    .iter()
                    .map(|i| format!("instance {} {} ({})", i.id, i.label, i.status)),
            );
            t.leftovers.extend(
                left.firewalls
                    .iter()
                    .map(|f| format!("firewall {} {}", f.id, f.label)),
            );
        }
        Err(e) => t
            .failed
            .push(format!("could not check by tag that nothing is left: {e}")),
    }
    t
}

async fn wait_gone(client: &LinodeClient, id: u64, poll: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        match client.get_instance(id).await {
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(format!("deleted, but checking that it is gone failed: {e}")),
            Ok(i) if start.elapsed() > GONE_TIMEOUT => {
                return Err(format!(
                    "still present ({}) {}s after deletion",
                    i.status,
                    GONE_TIMEOUT.as_secs()
                ))
            }
            Ok(_) => tokio::time::sleep(poll).await,
        }
    }
}

/// `ai-sandbox destroy NAME`
pub async fn run(config: Option<&Path>, args: &DestroyArgs) -> Result<u8, CmdError> {
    let name = context::name_for(args.target.name.as_deref(), config)?;
    let client = context::linode_client()?;
    let _lock = crate::lock::guard(&name)?;
    let found = find(&client, &name).await?;
    if found.is_empty() {
        println!("Nothing to destroy: no instance or firewall is tagged ai-sandbox:{name}.");
        return Ok(EXIT_OK);
    }
    println!("Deployment \"{name}\": {}", describe_existing(&found));
    if !output::confirm(&format!("Delete these resources of \"{name}\"?"), args.yes)? {
        return Err(CmdError::NotConfirmed(
            "aborted; nothing was deleted".into(),
        ));
    }
    let t = teardown(
        &client,
        &name,
        &found.instances,
        &found.firewalls,
        context::poll_interval(),
    )
    .await;
    for d in &t.deleted {
        println!("Deleted {d}");
    }
    if t.clean() {
        forget_host_key(&name);
        println!("Nothing tagged ai-sandbox:{name} is left; billing for it has stopped.");
        return Ok(EXIT_OK);
    }
    Err(CmdError::Leftovers(leftover_message(&name, &t)))
}

/// The error text for an unclean teardown.
pub fn leftover_message(name: &str, t: &Teardown) -> String {
    let mut lines = vec![format!(
        "destroy of \"{name}\" is incomplete; these may still be billed:"
    )];
    lines.extend(t.failed.iter().map(|f| format!("  could not delete {f}")));
    lines.extend(t.leftovers.iter().map(|l| format!("  still present: {l}")));
    lines.push(format!(
        "Run `ai-sandbox destroy {name} -y` again, or delete them in the Linode Cloud Manager."
    ));
    lines.join("\n")
}

/// Removes the deployment's known-hosts file: a new instance under the same name (and
/// maybe the same recycled IP) has a new host key.
pub fn forget_host_key(name: &str) {
    if let Some(p) = crate::ssh::known_hosts_path(name) {
        let _ = std::fs::remove_file(p);
    }
}
