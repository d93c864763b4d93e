//! The `ai-sandbox-api` binary: parse the configuration, start listening at once, load the
//! model in the background (/health says 503 until it is ready), shut down gracefully on
//! SIGINT/SIGTERM.

use std::process::ExitCode;

use ai_sandbox_api::config::{Args, Config};
use ai_sandbox_api::{app, AppState, ServerOptions};
use clap::Parser;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cfg = match Config::load(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(serve(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let addr = cfg.addr()?;
    let state = AppState::loading(ServerOptions {
        served_model_name: cfg.served_model_name.clone(),
        api_key: cfg.api_key.clone(),
    });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, auth = cfg.api_key.is_some(), "listening; loading the model in the background");

    // Checked before anything loads: a bad --device/--dtype (or no GPU) fails the start.
    let placement = ai_sandbox_engine::model::Placement::parse(&cfg.device, cfg.dtype.as_deref(), cfg.kv_cache_dtype.as_deref())?;
    let loader_state = state.clone();
    let engine_cfg = ai_sandbox_engine::EngineConfig {
        model: cfg.model.clone(),
        threads: cfg.threads,
        pin_threads: cfg.pin_threads,
        ctx_size: cfg.ctx_size,
        max_queue: cfg.max_queue,
        kv_cache_mb: cfg.kv_cache_mb,
        gpu_memory_utilization: cfg.gpu_memory_utilization,
        max_seqs: cfg.max_seqs,
        max_batch_tokens: cfg.max_batch_tokens,
        placement,
    };
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        match ai_sandbox_api::engine_backend::EngineBackend::load(engine_cfg) {
            Ok(b) => {
                tracing::info!(
                    model = b.model_id(),
                    ctx = b.ctx_size(),
                    secs = started.elapsed().as_secs_f32(),
                    "model ready"
                );
                loader_state.set_ready(b);
            }
            Err(e) => {
                tracing::error!(error = %e, "model failed to load");
                loader_state.set_failed(e.to_string());
            }
        }
    });

    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("shut down");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
