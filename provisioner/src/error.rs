//! The error type of the CLI commands ([`CmdError`]) and the exit codes: 0 success,
//! 1 "not ready" (`health`), 2 any error. Linode's reasons stay verbatim inside
//! [`crate::linode::LinodeError`]; deploy failures add what was and was not created.

use crate::config::ConfigError;
use crate::linode::LinodeError;
use crate::render::RenderError;

/// Exit status: success.
pub const EXIT_OK: u8 = 0;
/// Exit status: `health` says not ready.
pub const EXIT_NOT_READY: u8 = 1;
/// Exit status: any error.
pub const EXIT_ERROR: u8 = 2;

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// Bad flags, config file or environment; the message names the flag.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A usage problem found outside `config` (e.g. no token, IP lookup failed).
    #[error("{0}")]
    Usage(String),
    /// The region/type/image cannot host a deployment; names the flag and the alternatives.
    #[error("{0}")]
    Preflight(String),
    #[error(transparent)]
    Linode(#[from] LinodeError),
    #[error(transparent)]
    Render(#[from] RenderError),
    /// Another deploy or destroy of the same name runs on this machine.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    /// Deploy failed: the cause plus what was and was not created (and cleaned up).
    #[error("{cause}\n{report}")]
    Deploy { cause: String, report: String },
    /// Destroy left resources behind.
    #[error("{0}")]
    Leftovers(String),
    /// The user declined, or no terminal to confirm on.
    #[error("{0}")]
    NotConfirmed(String),
    /// File or terminal IO.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl CmdError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        CmdError::Io {
            context: context.into(),
            source,
        }
    }

    /// Process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        EXIT_ERROR
    }
}
