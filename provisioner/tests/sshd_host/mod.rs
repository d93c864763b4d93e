//! A throwaway OpenSSH server for the SSH edge tests: `/usr/sbin/sshd` (Debian's
//! openssh-server) on 127.0.0.1 and a free port, with a fresh host key and user key in a
//! temp dir, killed on drop.
//!
//! The "instance" it stands for: a `ForceCommand` wrapper records every command line it
//! receives, moves the instance's paths (`/opt/ai-sandbox`, `/var/log/...`) under the
//! temp dir's `root/` (so nothing on this machine is touched), puts stand-in `docker`,
//! `docker-compose` and `cat` first on `PATH`, then runs the command with the user's shell
//! exactly as sshd would. The stand-ins record their argv (`rec/argv`); `cat`, once
//! `state/snapshot-ps` exists, also snapshots every process's argv and environment
//! (`rec/ps`) before it reads the data.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ai_sandbox_provisioner::ssh::{shell_quote, Target};

pub const SSHD: &str = "/usr/sbin/sshd";

const DOCKER: &str = r#"#!/bin/sh
# Stand-in docker: records argv, answers `compose version`, `compose logs`, `logs`.
{ printf 'docker'; for a in "$@"; do printf ' [%s]' "$a"; done; echo; } >> "$STANDIN_REC/argv"
follow=no
for a in "$@"; do [ "$a" = -f ] && follow=yes; done
case "$1 $2" in
  "compose version")
    if [ -e "$STANDIN_STATE/no-compose-v2" ]; then
      echo "docker: 'compose' is not a docker command." >&2; exit 1
    fi
    echo 'Docker Compose version v2.29.1'; exit 0 ;;
  "compose logs")
    if [ -e "$STANDIN_STATE/logs-fail" ]; then echo 'stand-in: logs failed' >&2; exit 3; fi
    echo 'api-1  | stand-in v2: model loaded'
    echo "api-1  | stand-in v2: cwd $(pwd)"
    if [ $follow = yes ] && [ -e "$STANDIN_STATE/follow-forever" ]; then
      while :; do echo 'api-1  | tick'; sleep 0.01; done
    fi
    exit 0 ;;
  logs*)
    echo 'stand-in docker logs: model loaded'; exit 0 ;;
esac
echo "stand-in docker: unexpected: $*" >&2
exit 64
"#;

const DOCKER_COMPOSE: &str = r#"#!/bin/sh
# Stand-in docker-compose 1.29: records argv, answers `logs`.
{ printf 'docker-compose'; for a in "$@"; do printf ' [%s]' "$a"; done; echo; } >> "$STANDIN_REC/argv"
[ "$1" = logs ] || { echo "stand-in docker-compose: unexpected: $*" >&2; exit 64; }
echo 'ai-sandbox-api | stand-in v1: model loaded'
echo "ai-sandbox-api | stand-in v1: cwd $(pwd)"
"#;

pub struct Host {
    sshd: Child,
    pub port: u16,
    /// The temp dir (kept alive as long as the host).
    pub dir: tempfile::TempDir,
}

impl Drop for Host {
    fn drop(&mut self) {
        // Our own child only; its per-connection children end with their connections.
        let _ = self.sshd.kill();
        let _ = self.sshd.wait();
    }
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn keygen(path: &Path) {
    sh(Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "ai-sandbox-test",
            "-f",
        ])
        .arg(path));
}

fn write_exec(path: &Path, text: &str) {
    fs::write(path, text).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }
}

fn current_user() -> String {
    let out = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn real(cmd: &str) -> String {
    ["/usr/bin", "/bin"]
        .iter()
        .map(|d| format!("{d}/{cmd}"))
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| panic!("no {cmd} in /usr/bin or /bin"))
}

impl Host {
    /// Starts sshd; panics with a clear message when openssh-server is missing.
    pub fn start() -> Host {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: these tests need Debian's openssh-server \
             (apt-get install -y openssh-server)"
        );
        // sshd refuses to start without its privilege separation directory.
        let _ = fs::create_dir_all("/run/sshd");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for sub in [
            "bin",
            "rec",
            "state",
            "root/opt/ai-sandbox",
            "root/var/log/ai-sandbox",
            "client dir",
        ] {
            fs::create_dir_all(d.join(sub)).unwrap();
        }
        keygen(&d.join("host_key"));
        keygen(&d.join("user_key"));
        fs::copy(d.join("user_key.pub"), d.join("authorized_keys")).unwrap();
        fs::write(d.join("rec/argv"), "").unwrap();
        fs::write(d.join("rec/commands"), "").unwrap();

        let q = |p: &str| shell_quote(&d.join(p).display().to_string());
        write_exec(&d.join("bin/docker"), DOCKER);
        write_exec(&d.join("bin/docker-compose"), DOCKER_COMPOSE);
        write_exec(
            &d.join("bin/cat"),
            &format!(
                "#!/bin/sh\n# Stand-in cat: with state/snapshot-ps, snapshot every process's argv and\n\
                 # environment, then run the real cat.\n\
                 if [ -e \"$STANDIN_STATE/snapshot-ps\" ]; then\n\
                 for p in /proc/[0-9]*; do tr '\\0' ' ' < \"$p/cmdline\"; echo; \
                 tr '\\0' '\\n' < \"$p/environ\"; done >> \"$STANDIN_REC/ps\" 2>/dev/null\nfi\n\
                 exec {} \"$@\"\n",
                real("cat")
            ),
        );
        let root = d.join("root").display().to_string();
        assert!(!root.contains('#'), "sed delimiter in {root}");
        write_exec(
            &d.join("wrapper"),
            &format!(
                "#!/bin/sh\n\
                 printf '%s\\n' \"$SSH_ORIGINAL_COMMAND\" >> {commands}\n\
                 STANDIN_REC={rec} STANDIN_STATE={state} PATH={bin}:$PATH\n\
                 export STANDIN_REC STANDIN_STATE PATH\n\
                 # sshd's shell has read the user's rc files already; bash would read them again.\n\
                 unset SSH_CLIENT SSH2_CLIENT\n\
                 [ -n \"$SSH_ORIGINAL_COMMAND\" ] || exec \"${{SHELL:-/bin/sh}}\"\n\
                 cmd=$(printf '%s' \"$SSH_ORIGINAL_COMMAND\" | sed -e 's#/opt/ai-sandbox#{root}/opt/ai-sandbox#g' \
                 -e 's#/var/log/#{root}/var/log/#g')\n\
                 exec \"${{SHELL:-/bin/sh}}\" -c \"$cmd\"\n",
                commands = q("rec/commands"),
                rec = q("rec"),
                state = q("state"),
                bin = q("bin"),
            ),
        );

        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
                 PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nAllowUsers {user}\nForceCommand {d}/wrapper\n\
                 PrintMotd no\nMaxStartups 100\n",
                d = d.display(),
                user = current_user(),
            );
            fs::write(d.join("sshd_config"), config).unwrap();
            let log = fs::File::create(d.join("sshd.log")).unwrap();
            let mut sshd = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(d.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start sshd");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Host { sshd, port, dir };
                }
                if sshd.try_wait().unwrap().is_some() {
                    break; // e.g. the port was taken in between: try another
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = sshd.kill();
            let _ = sshd.wait();
            last_log = fs::read_to_string(d.join("sshd.log")).unwrap_or_default();
        }
        panic!("sshd did not start; its log:\n{last_log}");
    }

    /// The client's view: our user, the throwaway key, a known-hosts file in a directory
    /// whose name has a space (created by the SSH module on first use).
    pub fn target(&self) -> Target {
        let mut t = Target::new("127.0.0.1", self.path("client dir/known_hosts.d/test"));
        t.port = self.port;
        t.user = current_user();
        t.identity = Some(self.path("user_key"));
        t.connect_timeout = Duration::from_secs(5);
        // Hermetic: no ~/.ssh/config or /etc/ssh/ssh_config of this machine.
        t.extra_opts = vec!["-F".into(), "none".into()];
        t
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The instance's `abs` path (e.g. `/opt/ai-sandbox/x`) as stood in for here.
    pub fn instance_path(&self, abs: &str) -> PathBuf {
        self.path("root").join(abs.trim_start_matches('/'))
    }

    /// Creates a flag file read by the stand-ins.
    pub fn set_state(&self, flag: &str) {
        fs::write(self.path("state").join(flag), "").unwrap();
    }

    /// What the stand-ins recorded (`argv`, `ps`) or the commands sshd ran (`commands`).
    pub fn record(&self, name: &str) -> String {
        fs::read_to_string(self.path("rec").join(name)).unwrap_or_default()
    }

    /// The stand-ins' recorded argv, one invocation a line: `docker [compose] [logs] ...`.
    pub fn argv_lines(&self) -> Vec<String> {
        self.record("argv").lines().map(str::to_string).collect()
    }

    pub fn sshd_log(&self) -> String {
        fs::read_to_string(self.path("sshd.log")).unwrap_or_default()
    }
}
