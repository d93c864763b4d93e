//! `ai-sandbox` provisioner library: configuration, rendering of the instance's files
//! (cloud-init, firewall, compose), planning, the Linode API client, SSH, and the CLI
//! commands. Rendering and planning do no IO; only the Linode client, the SSH modules and
//! the command modules (`context`, `apply`, `destroy`, `status`, `remote`) touch the world.

pub mod cidr;
pub mod config;
pub mod linode;
pub mod paths;
pub mod phase;
pub mod render;
pub mod ssh;

pub mod apply;
pub mod cli;
pub mod context;
pub mod destroy;
pub mod error;
pub mod lock;
pub mod output;
pub mod plan;
pub mod remote;
pub mod status;
