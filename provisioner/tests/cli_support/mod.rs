//! Harness for the CLI tests: runs the real `ai-sandbox` binary against the fake Linode
//! API with a throwaway HOME (one SSH public key), a tiny local HTTP server standing in for
//! the IP echo service and for the instance's `/health` and `/v1/models`, fast polling, and
//! nothing inherited from the caller's environment but PATH.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::fake_linode::FakeLinode;

pub const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3Qta2V5LW5vdC1yZWFs cli-test@example";
/// What the stand-in IP echo service answers.
pub const CALLER_IP: &str = "198.51.100.7";
pub const API_IMAGE: &str = "ghcr.io/example/ai-sandbox-api:0.1.0";
pub const MODEL: &str = "mistralai/Mistral-7B-Instruct-v0.3";

/// The local stand-in for the instance's API and the IP echo service.
pub struct Endpoint {
    pub base: String,
    /// `/health` answers 503 this many times, then 200 (u32::MAX: never ready).
    pub not_ready_for: Arc<AtomicU32>,
    pub health_calls: Arc<AtomicU32>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

#[derive(Clone)]
struct EndpointState {
    not_ready_for: Arc<AtomicU32>,
    calls: Arc<AtomicU32>,
}

async fn health(State(s): State<EndpointState>) -> (StatusCode, Json<serde_json::Value>) {
    let n = s.calls.fetch_add(1, Ordering::SeqCst);
    if n < s.not_ready_for.load(Ordering::SeqCst) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "unhealthy", "error_type": "healthcheck"})),
        )
    } else {
        (StatusCode::OK, Json(json!({"status": "ok"})))
    }
}

impl Endpoint {
    /// Starts on its own thread and runtime.
    pub fn start(not_ready_for: u32) -> Self {
        let not_ready = Arc::new(AtomicU32::new(not_ready_for));
        let calls = Arc::new(AtomicU32::new(0));
        let state = EndpointState {
            not_ready_for: Arc::clone(&not_ready),
            calls: Arc::clone(&calls),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let app = Router::new()
                    .route("/health", get(health))
                    .route(
                        "/v1/models",
                        get(|| async { Json(json!({"object": "list", "data": [{"id": MODEL, "object": "model"}]})) }),
                    )
                    .route("/ip", get(|| async { format!("{CALLER_IP}\n") }))
                    .with_state(state);
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                tx.send(listener.local_addr().expect("addr")).expect("send addr");
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        let addr = rx.recv().expect("endpoint started");
        Self {
            base: format!("http://{addr}"),
            not_ready_for: not_ready,
            health_calls: calls,
            _stop: stop,
        }
    }
}

/// A fake API, an endpoint, a temp HOME.
pub struct Env {
    pub fake: FakeLinode,
    pub endpoint: Endpoint,
    pub home: tempfile::TempDir,
    /// Extra environment for every run.
    pub vars: Vec<(String, String)>,
}

impl Env {
    pub fn new() -> Self {
        Self::with_health(2)
    }

    pub fn with_health(not_ready_for: u32) -> Self {
        let fake = FakeLinode::start_in_background();
        let endpoint = Endpoint::start(not_ready_for);
        let home = tempfile::tempdir().expect("temp HOME");
        let ssh = home.path().join(".ssh");
        std::fs::create_dir_all(&ssh).expect("mkdir .ssh");
        std::fs::write(ssh.join("id_ed25519.pub"), format!("{KEY}\n")).expect("write key");
        Self {
            fake,
            endpoint,
            home,
            vars: Vec::new(),
        }
    }

    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The binary with a clean environment pointing at the fakes.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_ai-sandbox"));
        c.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", self.home().join(".config"))
            .env("LINODE_API_URL", self.fake.base_url())
            .env("LINODE_TOKEN", self.fake.token())
            .env(
                "AI_SANDBOX_IP_ECHO_URL",
                format!("{}/ip", self.endpoint.base),
            )
            .env("AI_SANDBOX_HEALTH_URL_OVERRIDE", &self.endpoint.base)
            .env("AI_SANDBOX_POLL_MS", "10")
            .env("AI_SANDBOX_RETRY_BASE_MS", "5")
            .current_dir(self.home())
            .stdin(Stdio::null());
        for (k, v) in &self.vars {
            c.env(k, v);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.cmd(args).output().expect("run ai-sandbox");
        Run::from(out)
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        self.cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ai-sandbox")
    }

    /// `deploy -y` with a prebuilt image in us-ord, plus `extra`.
    pub fn deploy(&self, extra: &[&str]) -> Run {
        self.run(&deploy_args(extra))
    }

    /// [`Env::deploy`] with a 5-minute health timeout, started and not waited for.
    pub fn spawn_deploy(&self) -> Child {
        self.spawn(&deploy_args(&["--timeout", "5m"]))
    }

    /// Methods of every request the fake received.
    pub fn methods(&self) -> Vec<String> {
        self.fake
            .requests()
            .iter()
            .map(|r| r.method.clone())
            .collect()
    }

    pub fn writes(&self) -> Vec<String> {
        self.fake
            .requests()
            .iter()
            .filter(|r| r.method != "GET")
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    pub fn assert_no_violations(&self) {
        let v = self.fake.violations();
        assert!(v.is_empty(), "spec violations: {v:#?}");
    }

    /// Waits (at most a minute) until the instance's `/health` was asked `n` times: the
    /// deploy under test is in its health wait, with everything created.
    #[track_caller]
    pub fn wait_for_health_calls(&self, n: u32) {
        let start = std::time::Instant::now();
        while self.endpoint.health_calls.load(Ordering::SeqCst) < n {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(60),
                "deploy never reached the health wait"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn assert_nothing_left(&self) {
        assert_eq!(self.fake.instance_count(), 0, "instances left behind");
        assert_eq!(self.fake.firewall_count(), 0, "firewalls left behind");
    }
}

/// The arguments of `deploy -y` with a prebuilt image in us-ord, plus `extra`.
pub fn deploy_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["deploy", "-y", "--region", "us-ord", "--api-image", API_IMAGE];
    args.extend_from_slice(extra);
    args
}

/// A finished run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit status\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn assert_contains(&self, needle: &str) -> &Self {
        assert!(
            self.all().contains(needle),
            "{needle:?} not in output\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Every file under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}
