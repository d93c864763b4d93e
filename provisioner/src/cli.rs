//! The `ai-sandbox` command line (clap derive): commands, their flags and help text, and
//! the conversion of the common deployment flags into the highest-precedence
//! [`PartialConfig`] layer. Pure: parsing does no IO. Doc comments are the help text and
//! are golden-tested (`tests/cli_help.rs`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::PartialConfig;

/// Environment variable naming the YAML config file (same as `--config`).
pub const CONFIG_ENV: &str = "AI_SANDBOX_CONFIG";

/// Deploy your own private OpenAI-compatible LLM endpoint on a GPU Linode.
///
/// `ai-sandbox deploy --region us-ord` creates a Cloud Firewall that admits only your IP,
/// a GPU Linode that installs the driver, Docker and the API with cloud-init, waits until
/// the model answers, and prints BASE_URL. `ai-sandbox destroy` removes everything.
///
/// The Linode API token is read from LINODE_TOKEN (never from the command line). Settings
/// come from, lowest precedence first: built-in defaults, the YAML config file
/// (--config / AI_SANDBOX_CONFIG), AI_SANDBOX_* environment variables, flags.
///
/// Exit status: 0 success, 1 not ready (`health`), 2 error.
#[derive(Debug, Parser)]
#[command(name = "ai-sandbox", version, propagate_version = true)]
pub struct Cli {
    /// YAML config file with deployment settings (keys: name, region, type, image, model,
    /// allow, ssh_key, api_image, port) [env: AI_SANDBOX_CONFIG]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what `deploy` would create and what it costs; writes nothing to your account.
    ///
    /// Checks that the region offers GPU Linodes and the Metadata service, that the type is
    /// a GPU plan and that the image supports cloud-init; finds an existing deployment with
    /// the same name. Same as `deploy --dry-run`.
    Plan(PlanArgs),
    /// Create the Cloud Firewall and the GPU Linode, wait until the API is ready, print BASE_URL.
    ///
    /// Shows the plan and asks before creating anything (-y skips the question). If a
    /// deployment with the same name exists it is reported and left alone unless
    /// --replace is given. On any failure or Ctrl-C, what this run created is destroyed
    /// (after asking, on Ctrl-C at a terminal), or the command that destroys it is printed.
    Deploy(DeployArgs),
    /// Show a deployment: instance, firewall, health and the price so far.
    Status(StatusArgs),
    /// Check whether a deployment's API is ready (exit 0) or not (exit 1).
    Health(HealthArgs),
    /// Show the API's container logs (or the instance setup logs) over SSH.
    Logs(LogsArgs),
    /// Open an SSH session on a deployment's instance as root.
    Ssh(NameArgs),
    /// List deployments made by this tool (instances and firewalls tagged `ai-sandbox`).
    List(ListArgs),
    /// Delete a deployment's instance and firewall, then check that nothing is left.
    Destroy(DestroyArgs),
}

/// Settings of a deployment; each is also an environment variable and a config-file key.
#[derive(Debug, Clone, Default, Args)]
pub struct DeployFlags {
    /// Deployment name: the Linode label and the `ai-sandbox:<NAME>` tag [default:
    /// ai-sandbox] [env: AI_SANDBOX_NAME] [config: name]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Linode region with GPU Linodes and Metadata, e.g. us-ord [env: AI_SANDBOX_REGION]
    /// [config: region]
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// GPU plan [default: g2-gpu-rtx4000a1-s] [env: AI_SANDBOX_TYPE] [config: type]
    #[arg(long = "type", value_name = "TYPE")]
    pub linode_type: Option<String>,
    /// Linode image [default: linode/ubuntu24.04] [env: AI_SANDBOX_IMAGE] [config: image]
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// Hugging Face model id [default: mistralai/Mistral-7B-Instruct-v0.3] [env:
    /// AI_SANDBOX_MODEL] [config: model]
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// Networks allowed to reach SSH and the API (repeat or comma-separate); default: your
    /// public IP. 0.0.0.0/0 opens them to everyone [env: AI_SANDBOX_ALLOW] [config: allow]
    #[arg(long, value_name = "CIDR", num_args = 1.., value_delimiter = ',')]
    pub allow: Vec<String>,
    /// SSH public key(s) to install for root (repeatable); default: ~/.ssh/*.pub [env:
    /// AI_SANDBOX_SSH_KEY] [config: ssh_key]
    #[arg(long, value_name = "PATH")]
    pub ssh_key: Vec<PathBuf>,
    /// Prebuilt API container image instead of building one on the instance [env:
    /// AI_SANDBOX_API_IMAGE] [config: api_image]
    #[arg(long, value_name = "REF")]
    pub api_image: Option<String>,
    /// Port of the API on the instance [default: 8000] [env: AI_SANDBOX_PORT] [config: port]
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
}

impl DeployFlags {
    /// The flags layer (highest precedence) for [`PartialConfig::merge`].
    pub fn to_partial(&self) -> PartialConfig {
        PartialConfig {
            name: self.name.clone(),
            region: self.region.clone(),
            linode_type: self.linode_type.clone(),
            image: self.image.clone(),
            model: self.model.clone(),
            allow: (!self.allow.is_empty()).then(|| {
                self.allow
                    .iter()
                    .flat_map(|a| crate::config::split_list(a))
                    .collect()
            }),
            ssh_key: (!self.ssh_key.is_empty()).then(|| self.ssh_key.clone()),
            api_image: self.api_image.clone(),
            port: self.port,
            hf_token_present: None,
        }
    }
}

/// `plan`
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub flags: DeployFlags,
    /// Write the cloud-init user data, firewall body, instance files and every API request
    /// that deploy would send (secrets redacted) into DIR
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the plan as JSON
    #[arg(long)]
    pub json: bool,
}

/// `deploy`
#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub flags: DeployFlags,
    /// Only show the plan (same as `ai-sandbox plan`)
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: write the plan's files into DIR (see `plan --out`)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Do not ask for confirmation
    #[arg(short = 'y', long = "yes")]
    pub yes: bool,
    /// Destroy an existing deployment with the same name first, then create it again
    #[arg(long)]
    pub replace: bool,
    /// Stop once the instance is created; do not wait for it to be running or ready
    #[arg(long)]
    pub no_wait: bool,
    /// How long to wait for the API to become ready (e.g. 45m, 90s, 1h)
    #[arg(long, value_name = "DURATION", default_value = "40m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// On failure, keep what was created (for debugging) and print the destroy command
    #[arg(long)]
    pub keep_on_failure: bool,
}

/// A command that acts on one deployment.
#[derive(Debug, Clone, Args)]
pub struct NameArgs {
    /// Deployment name [default: --name from the config file / AI_SANDBOX_NAME, else ai-sandbox]
    #[arg(value_name = "NAME")]
    pub name: Option<String>,
}

/// `status`
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: NameArgs,
    /// Print the status as JSON
    #[arg(long)]
    pub json: bool,
}

/// `health`
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub target: NameArgs,
    /// How long to wait for one answer from /health
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `logs`
#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    #[command(flatten)]
    pub target: NameArgs,
    /// Keep streaming new lines
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show from the end
    #[arg(long, value_name = "N")]
    pub tail: Option<u32>,
    /// Only lines since T (e.g. 10m, 2h, 2025-01-02T03:04:05Z)
    #[arg(long, value_name = "T", value_parser = crate::ssh::validate_since)]
    pub since: Option<String>,
    /// Show the instance setup logs (cloud-init output and the deploy phase log) instead
    #[arg(long)]
    pub cloud_init: bool,
}

/// `list`
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Print the deployments as JSON
    #[arg(long)]
    pub json: bool,
}

/// `destroy`
#[derive(Debug, Clone, Args)]
pub struct DestroyArgs {
    #[command(flatten)]
    pub target: NameArgs,
    /// Do not ask for confirmation
    #[arg(short = 'y', long = "yes")]
    pub yes: bool,
}

/// Parses `90`, `90s`, `45m`, `1h`, `1h30m` into a duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?}: expected e.g. 90s, 45m or 1h30m");
    let mut total = 0u64;
    let mut num = String::new();
    let mut any = false;
    for c in s.trim().chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        total = total
            .checked_add(n.checked_mul(unit).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        num.clear();
        any = true;
    }
    if !num.is_empty() {
        total = total
            .checked_add(num.parse::<u64>().map_err(|_| bad())?)
            .ok_or_else(bad)?;
        any = true;
    }
    if !any || total == 0 {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("45m").unwrap(), Duration::from_secs(2700));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn flags_layer_splits_allow_lists() {
        let cli = Cli::try_parse_from([
            "ai-sandbox",
            "plan",
            "--allow",
            "1.2.3.4/32,5.6.7.0/24",
            "--allow",
            "::1",
            "--region",
            "us-ord",
        ])
        .unwrap();
        let Command::Plan(p) = cli.command else {
            panic!("not plan")
        };
        let layer = p.flags.to_partial();
        assert_eq!(
            layer.allow.unwrap(),
            vec!["1.2.3.4/32", "5.6.7.0/24", "::1"]
        );
        assert_eq!(layer.region.as_deref(), Some("us-ord"));
        assert!(layer.ssh_key.is_none());
    }
}
