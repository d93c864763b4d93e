//! cloud-init user data for the instance: a `#cloud-config` that writes the setup script,
//! its systemd unit, the compose stack, the API unit and the MOTD, then starts the setup.
//! Also owns the on-instance paths and the SSH commands that the CLI uses to hand files
//! (source tree, Hugging Face token) to the setup.

use super::compose::{self, COMPOSE_WRAPPER};
use super::{render, InstanceFile, RenderError};
use crate::config::DeployConfig;

const USER_DATA_TEMPLATE: &str = include_str!("../../../cloud-init/user-data.yaml.tera");
const SETUP_TEMPLATE: &str = include_str!("../../../cloud-init/setup.sh.tera");
const MOTD_TEMPLATE: &str = include_str!("../../../cloud-init/motd.sh.tera");
const SETUP_UNIT: &str = include_str!("../../../cloud-init/ai-sandbox-setup.service");

/// Paths on the instance.
pub mod paths {
    /// The compose project directory.
    pub const APP_DIR: &str = "/opt/ai-sandbox";
    pub const COMPOSE_FILE: &str = "/opt/ai-sandbox/docker-compose.yml";
    pub const ENV_FILE: &str = "/opt/ai-sandbox/.env";
    pub const COMPOSE_WRAPPER: &str = "/opt/ai-sandbox/compose";
    pub const SETUP_SCRIPT: &str = "/opt/ai-sandbox/setup.sh";
    pub const SETUP_UNIT: &str = "/etc/systemd/system/ai-sandbox-setup.service";
    pub const API_UNIT: &str = "/etc/systemd/system/ai-sandbox.service";
    pub const MOTD: &str = "/etc/update-motd.d/99-ai-sandbox";
    /// Root-only (0700) directory for secrets.
    pub const SECRETS_DIR: &str = "/opt/ai-sandbox/secrets";
    /// Root-only (0600) Hugging Face token file, copied over SSH by `deploy`.
    pub const HF_TOKEN: &str = "/opt/ai-sandbox/secrets/hf_token";
    /// Where `deploy` uploads the workspace when no prebuilt API image is used.
    pub const SOURCE_DIR: &str = "/opt/ai-sandbox/src";
    /// Created by `deploy` once the upload into [`SOURCE_DIR`] is complete.
    pub const UPLOAD_MARKER: &str = "/opt/ai-sandbox/src/.upload-complete";
    /// Model cache (bind-mounted to `/models` in the container).
    pub const MODELS_DIR: &str = "/opt/models";
    /// Progress log: `<UTC time> phase=<phase> <message>` lines.
    pub const DEPLOY_LOG: &str = "/var/log/ai-sandbox/deploy.log";
    /// The current phase id alone.
    pub const PHASE_FILE: &str = "/var/log/ai-sandbox/phase";
    /// stdout/stderr of the setup script.
    pub const SETUP_LOG: &str = "/var/log/ai-sandbox/setup.log";
    /// cloud-init's own output (package installs, runcmd).
    pub const CLOUD_INIT_LOG: &str = "/var/log/cloud-init-output.log";
}

/// Shell command, run as root over SSH with the token on **stdin**, that stores the
/// Hugging Face token as a root-only 0600 file (atomically, so the API unit never sees a
/// partial file). The token never appears in argv, the environment or a log.
pub const HF_TOKEN_INSTALL_COMMAND: &str = "umask 077 && mkdir -p /opt/ai-sandbox/secrets \
&& chmod 0700 /opt/ai-sandbox/secrets && cat > /opt/ai-sandbox/secrets/hf_token.new \
&& chmod 0600 /opt/ai-sandbox/secrets/hf_token.new \
&& mv -f /opt/ai-sandbox/secrets/hf_token.new /opt/ai-sandbox/secrets/hf_token";

/// Shell command, run as root over SSH with a tar stream of the workspace on **stdin**,
/// that unpacks it into [`paths::SOURCE_DIR`] and marks the upload complete.
pub const SOURCE_UPLOAD_COMMAND: &str = "mkdir -p /opt/ai-sandbox/src \
&& tar -x -C /opt/ai-sandbox/src -f - && touch /opt/ai-sandbox/src/.upload-complete";

/// Writes the first progress line as early as possible, once per instance (bootcmd).
const PHASE_CMD: &str = "mkdir -p /var/log/ai-sandbox && echo cloud-init > /var/log/ai-sandbox/phase \
&& echo \"$(date -u +%Y-%m-%dT%H:%M:%SZ) phase=cloud-init cloud-init started\" >> /var/log/ai-sandbox/deploy.log";

/// `/opt/ai-sandbox/setup.sh`: packages, ufw, NVIDIA driver, Docker, toolkit, image,
/// then starts the API and reports phases until `/health` answers.
pub fn render_setup_script(cfg: &DeployConfig) -> Result<String, RenderError> {
    render("setup.sh", SETUP_TEMPLATE, cfg, &[])
}

/// Every file cloud-init writes, in write order.
pub fn instance_files(cfg: &DeployConfig) -> Result<Vec<InstanceFile>, RenderError> {
    Ok(vec![
        InstanceFile {
            path: paths::COMPOSE_FILE,
            mode: "0644",
            content: compose::render_compose(cfg)?,
        },
        InstanceFile {
            path: paths::ENV_FILE,
            mode: "0644",
            content: compose::render_env(cfg)?,
        },
        InstanceFile {
            path: paths::COMPOSE_WRAPPER,
            mode: "0755",
            content: COMPOSE_WRAPPER.to_string(),
        },
        InstanceFile {
            path: paths::API_UNIT,
            mode: "0644",
            content: compose::render_service_unit(cfg)?,
        },
        InstanceFile {
            path: paths::SETUP_SCRIPT,
            mode: "0700",
            content: render_setup_script(cfg)?,
        },
        InstanceFile {
            path: paths::SETUP_UNIT,
            mode: "0644",
            content: SETUP_UNIT.to_string(),
        },
        InstanceFile {
            path: paths::MOTD,
            mode: "0755",
            content: render("motd", MOTD_TEMPLATE, cfg, &[])?,
        },
    ])
}

/// The `#cloud-config` user data (plain text; see [`super::user_data_base64`]).
pub fn render_cloud_init(cfg: &DeployConfig) -> Result<String, RenderError> {
    let files = instance_files(cfg)?;
    render(
        "user-data",
        USER_DATA_TEMPLATE,
        cfg,
        &[("files", &files), ("phase_cmd", &PHASE_CMD)],
    )
}
