//! Rendering of everything the instance gets: cloud-init user data (with the files it
//! writes), the Cloud Firewall request body, and the compose stack. Pure functions of a
//! [`DeployConfig`]; templates live in the repository's `cloud-init/` and `deploy/`
//! directories and are embedded at compile time. Nothing rendered here holds a secret.

pub mod cloud_init;
pub mod compose;
pub mod firewall;

use base64::Engine as _;
use serde::Serialize;

use crate::config::DeployConfig;

pub use cloud_init::{instance_files, render_cloud_init, render_setup_script};
pub use compose::{render_compose, render_env, render_service_unit};
pub use firewall::{firewall_request, FirewallCreate};

/// Linode's user-data limit, applied to the base64 text sent in `metadata.user_data`.
/// The API spec says "Unencoded data must not exceed 65535 bytes, or about 16kb
/// encoded"; we keep to the stricter reading (16 KiB encoded).
pub const MAX_USER_DATA_BASE64: usize = 16 * 1024;

/// Errors from rendering.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RenderError {
    /// A template failed to render (a bug in the template, not in the user's input).
    #[error("template {name}: {message}")]
    Template { name: &'static str, message: String },
    #[error(
        "cloud-init user data is {size} bytes base64-encoded, over Linode's limit of {limit} \
         (fewer --allow entries make it smaller)"
    )]
    UserDataTooLarge { size: usize, limit: usize },
}

/// A file the instance gets, as written by cloud-init `write_files`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceFile {
    /// Absolute path on the instance.
    pub path: &'static str,
    /// Octal permissions as cloud-init wants them: a string such as `"0600"`.
    pub mode: &'static str,
    /// File contents, ending with exactly one newline.
    pub content: String,
}

/// Base64 of the user data for `metadata.user_data`: standard alphabet, padded, no line
/// wraps. Errors when over [`MAX_USER_DATA_BASE64`].
pub fn user_data_base64(user_data: &str) -> Result<String, RenderError> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(user_data.as_bytes());
    if encoded.len() > MAX_USER_DATA_BASE64 {
        return Err(RenderError::UserDataTooLarge {
            size: encoded.len(),
            limit: MAX_USER_DATA_BASE64,
        });
    }
    Ok(encoded)
}

/// Values every template sees. Only validated, non-secret fields of the config.
#[derive(Serialize)]
struct TemplateContext<'a> {
    name: &'a str,
    model: &'a str,
    port: u16,
    allow: Vec<String>,
    api_image: Option<&'a str>,
    hf_token_present: bool,
    firewall_label: String,
}

fn context(cfg: &DeployConfig) -> Result<tera::Context, RenderError> {
    let ctx = TemplateContext {
        name: &cfg.name,
        model: &cfg.model,
        port: cfg.port,
        allow: cfg.allow.iter().map(ToString::to_string).collect(),
        api_image: cfg.api_image.as_deref(),
        hf_token_present: cfg.hf_token_present,
        firewall_label: cfg.firewall_label(),
    };
    tera::Context::from_serialize(ctx).map_err(|e| template_error("context", &e))
}

/// Renders one embedded template with the config's context plus `extra`.
fn render(
    name: &'static str,
    source: &str,
    cfg: &DeployConfig,
    extra: &[(&str, &dyn erased::Value)],
) -> Result<String, RenderError> {
    let mut ctx = context(cfg)?;
    for (k, v) in extra {
        v.insert_into(&mut ctx, k);
    }
    let out = tera::Tera::one_off(source, &ctx, false).map_err(|e| template_error(name, &e))?;
    Ok(one_trailing_newline(out))
}

/// Lets `render` take heterogeneous serializable extras.
mod erased {
    pub trait Value {
        fn insert_into(&self, ctx: &mut tera::Context, key: &str);
    }
    impl<T: serde::Serialize> Value for T {
        fn insert_into(&self, ctx: &mut tera::Context, key: &str) {
            ctx.insert(key, self);
        }
    }
}

fn template_error(name: &'static str, e: &dyn std::error::Error) -> RenderError {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    RenderError::Template { name, message }
}

/// Trims trailing blank lines and ends the text with exactly one newline.
fn one_trailing_newline(s: String) -> String {
    let mut s = s.trim_end().to_string();
    s.push('\n');
    s
}
