//! The instance's compose stack in `/opt/ai-sandbox`: `docker-compose.yml`, its `.env`,
//! the `ai-sandbox.service` unit that runs it, the `compose` wrapper script, and the
//! Dockerfile that builds the API image when no prebuilt `api_image` is given.

use super::{render, RenderError};
use crate::config::DeployConfig;

const COMPOSE_TEMPLATE: &str = include_str!("../../../deploy/docker-compose.yml.tera");
const ENV_TEMPLATE: &str = include_str!("../../../deploy/env.tera");
const UNIT_TEMPLATE: &str = include_str!("../../../deploy/ai-sandbox.service.tera");

/// `/opt/ai-sandbox/compose`: `docker compose`, falling back to `docker-compose` 1.29.
pub const COMPOSE_WRAPPER: &str = include_str!("../../../deploy/compose.sh");
/// `deploy/Dockerfile`: builds `ai-sandbox-api --features cuda` (context: workspace root).
pub const DOCKERFILE: &str = include_str!("../../../deploy/Dockerfile");

/// Compose service name of the API.
pub const SERVICE: &str = "api";
/// Container name of the API.
pub const CONTAINER: &str = "ai-sandbox-api";

/// `/opt/ai-sandbox/docker-compose.yml`.
pub fn render_compose(cfg: &DeployConfig) -> Result<String, RenderError> {
    render("docker-compose.yml", COMPOSE_TEMPLATE, cfg, &[])
}

/// `/opt/ai-sandbox/.env`: model, host, port and cache settings (no secrets).
pub fn render_env(cfg: &DeployConfig) -> Result<String, RenderError> {
    render(".env", ENV_TEMPLATE, cfg, &[])
}

/// `/etc/systemd/system/ai-sandbox.service`.
pub fn render_service_unit(cfg: &DeployConfig) -> Result<String, RenderError> {
    render("ai-sandbox.service", UNIT_TEMPLATE, cfg, &[])
}
