//! `ai-sandbox` binary: parses the command line, runs the command on a tokio runtime, and
//! maps the outcome to the exit status (0 ok, 1 not ready, 2 error). Errors are printed
//! with their full cause chain; a closed stdout (`ai-sandbox list | head`) is not an error.

use std::process::ExitCode;

use ai_sandbox_provisioner::cli::{Cli, Command};
use ai_sandbox_provisioner::error::{CmdError, EXIT_ERROR};
use ai_sandbox_provisioner::{apply, destroy, remote, status};
use clap::Parser;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(run(cli));
    // Do not wait for background SSH probes that may still be connecting.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {}", chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<u8, CmdError> {
    let config = cli.config.as_deref();
    match &cli.command {
        Command::Plan(a) => apply::plan_only(config, &a.flags, a.out.as_deref(), a.json).await,
        Command::Deploy(a) => apply::run(config, a).await,
        Command::Status(a) => status::status(config, a).await,
        Command::Health(a) => status::health(config, a).await,
        Command::Logs(a) => remote::logs(config, a).await,
        Command::Ssh(a) => remote::shell(config, a).await,
        Command::List(a) => status::list(a).await,
        Command::Destroy(a) => destroy::run(config, a).await,
    }
}

/// The error and its sources, `: `-separated (skipping repeats of the same text).
fn chain(e: &CmdError) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn is_broken_pipe(e: &CmdError) -> bool {
    matches!(e, CmdError::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
}
