//! The real `walvault-server`: its CA and certificates (`init`, `cert issue`), the running
//! daemon, and [`Walvault`], a deployment of both with an admin client.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{chmod, chown_postgres, run, run_ok, Client, ClientConfig, Log, Run, Storage, TestDir};

const CLI_TIMEOUT: Duration = Duration::from_secs(120);

/// A binary of this workspace, from the cargo target directory this test was built in.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // Tests live in target/<profile>/deps, binaries such as the benchmark in target/<profile>.
    let own_dir = exe.parent().expect("executable in a directory");
    let dir = if own_dir.ends_with("deps") {
        own_dir.parent().expect("target/<profile>/deps")
    } else {
        own_dir
    };
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

fn server_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(binary("walvault-server"));
    c.args(args).env("NO_COLOR", "1");
    c
}

/// A certificate and its key.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A CA directory made by `walvault-server init`.
#[derive(Debug, Clone)]
pub struct Certs {
    pub dir: PathBuf,
    /// Where issued identities are written (`<testdir>/certs`).
    out: PathBuf,
    log: Log,
}

impl Certs {
    /// `walvault-server init --dir <testdir>/<name> <args…>`: returns the CA and the path of the
    /// `server.toml` it wrote.
    pub fn init(td: &TestDir, name: &str, args: &[&str]) -> (Self, PathBuf) {
        let dir = td.join(name);
        let mut all = vec!["init", "--dir", dir.to_str().expect("utf-8 path")];
        all.extend_from_slice(args);
        run_ok(td.log(), &mut server_cmd(&all), CLI_TIMEOUT);
        for f in [
            "ca.crt",
            "ca.key",
            "server.crt",
            "server.key",
            "server.toml",
        ] {
            assert!(
                dir.join(f).is_file(),
                "`walvault-server init` did not write {f}"
            );
        }
        let certs = Self {
            out: td.mkdir("certs"),
            dir: dir.clone(),
            log: td.log().clone(),
        };
        (certs, dir.join("server.toml"))
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// `walvault-server cert issue --ca-dir <dir> <role…> --out <testdir>/certs/<file_stem>`.
    /// `for_postgres` gives the files to the `postgres` user, for archive_command and
    /// restore_command.
    pub fn issue(&self, role: &[&str], file_stem: &str, for_postgres: bool) -> Identity {
        let prefix = self.out.join(file_stem);
        let mut args = vec![
            "cert",
            "issue",
            "--ca-dir",
            self.dir.to_str().expect("utf-8"),
        ];
        args.extend_from_slice(role);
        args.extend_from_slice(&["--out", prefix.to_str().expect("utf-8")]);
        run_ok(&self.log, &mut server_cmd(&args), CLI_TIMEOUT);
        let id = Identity {
            cert: prefix.with_extension("crt"),
            key: prefix.with_extension("key"),
        };
        for f in [&id.cert, &id.key] {
            assert!(f.is_file(), "`cert issue` did not write {}", f.display());
            if for_postgres {
                chown_postgres(f);
            }
        }
        id
    }

    pub fn agent(&self, cluster: &str) -> Identity {
        self.issue(
            &["--agent", cluster],
            &format!("agent-{}", cluster.replace('/', "-")),
            true,
        )
    }

    pub fn operator(&self, tenant: &str) -> Identity {
        self.issue(
            &["--operator", tenant],
            &format!("operator-{tenant}"),
            false,
        )
    }

    pub fn admin(&self) -> Identity {
        self.issue(&["--admin"], "admin", false)
    }
}

/// A running `walvault-server run --config <file>`. Dropping it SIGKILLs it and then checks
/// its log: an unexpected ` ERROR ` line fails the test.
#[derive(Debug)]
pub struct Server {
    config: PathBuf,
    child: Option<Child>,
    addr: SocketAddr,
    log_path: PathBuf,
    log: Log,
    /// Substrings that make an ERROR line expected.
    allowed_errors: Vec<String>,
    any_error_allowed: bool,
    /// Environment of the next start (a fault point, say).
    env: Vec<(String, String)>,
}

impl Server {
    /// Starts the server with `config` and waits for its `listening on ADDR` line. Its stderr
    /// is appended to `<testdir>/server.log`.
    pub fn start(td: &TestDir, config: &Path) -> Self {
        let log_path = td.join("server.log");
        let mut s = Self {
            config: config.to_owned(),
            child: None,
            addr: "127.0.0.1:0".parse().expect("addr"),
            log_path,
            log: td.log().clone(),
            allowed_errors: Vec::new(),
            any_error_allowed: false,
            env: Vec::new(),
        };
        s.spawn(config.to_owned());
        s
    }

    fn spawn(&mut self, config: PathBuf) {
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open server.log");
        let mut cmd = server_cmd(&["run", "--config", config.to_str().expect("utf-8")]);
        cmd.env("RUST_BACKTRACE", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        self.log.line(&format!("starting {cmd:?}"));
        let mut child = cmd.spawn().expect("spawn walvault-server");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let log = self.log.clone();
        std::thread::spawn(move || {
            // Keep draining so the server never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                log.line(&format!("walvault-server stdout: {line}"));
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let line = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => break line,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    panic!(
                        "walvault-server exited ({status:?}) before saying `listening on`; \
                         log:\n{}",
                        self.log_text()
                    );
                }
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("walvault-server did not say `listening on` within 60 s");
            }
        };
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            .unwrap_or_else(|| {
                panic!("walvault-server's first stdout line is {line:?}, expected `listening on 127.0.0.1:PORT`")
            });
        self.addr = addr;
        self.child = Some(child);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn config(&self) -> &Path {
        &self.config
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until the process exited by itself (a fault point's SIGKILL, say); false if it
    /// still runs after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut c) = self.child.take() {
            let status = c.wait().ok();
            self.log
                .line(&format!("walvault-server exited by itself: {status:?}"));
        }
        true
    }

    /// [`Server::restart`] with `WALVAULT_FAULT=<point>` armed (see server/src/fault.rs): the
    /// server SIGKILLs itself when it gets there. `None` disarms it.
    pub fn restart_with_fault(&mut self, point: Option<&str>) {
        self.env.retain(|(k, _)| k != "WALVAULT_FAULT");
        if let Some(p) = point {
            self.env.push(("WALVAULT_FAULT".into(), p.into()));
        }
        self.restart();
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            self.log.line("walvault-server SIGKILLed");
        }
    }

    /// SIGTERM; asserts a clean exit (0) within 30 s.
    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        run_ok(
            &self.log,
            Command::new("kill").args(["-TERM", &c.id().to_string()]),
            CLI_TIMEOUT,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = c.try_wait().expect("wait walvault-server") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("walvault-server did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.log.line(&format!("walvault-server stopped: {status}"));
        assert!(
            status.success(),
            "walvault-server exited with {status} on SIGTERM"
        );
    }

    /// Starts the server again with the same configuration, on the same address so that
    /// clients' configs stay valid. (The first start had port 0.)
    pub fn restart(&mut self) {
        self.kill();
        let text = std::fs::read_to_string(&self.config).expect("read server config");
        let mut table: toml::Table = text.parse().expect("server config is TOML");
        table.insert("listen".into(), toml::Value::String(self.addr.to_string()));
        let again = self.config.with_extension("restart.toml");
        std::fs::write(&again, toml::to_string(&table).expect("serialize TOML"))
            .expect("write restart config");
        self.spawn(again);
    }

    /// `walvault-server <args…> --config <config>` (for `catalog …`, server stopped).
    pub fn admin_command(&self, args: &[&str]) -> Run {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--config", self.config.to_str().expect("utf-8")]);
        run(&self.log, &mut server_cmd(&all), CLI_TIMEOUT)
    }

    /// `catalog dump` parsed as JSON.
    pub fn catalog_dump(&self) -> serde_json::Value {
        let r = self.admin_command(&["catalog", "dump"]);
        assert!(r.success(), "{}", r.describe());
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("`catalog dump` is not JSON ({e}):\n{}", r.stdout))
    }

    pub fn catalog_rebuild(&self) {
        let r = self.admin_command(&["catalog", "rebuild"]);
        assert!(r.success(), "{}", r.describe());
    }

    /// The server's log so far (stderr of every run), without ANSI colours.
    pub fn log_text(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log_path).unwrap_or_default())
    }

    /// ERROR lines containing `substring` are expected by this test.
    pub fn allow_errors(&mut self, substring: &str) {
        self.allowed_errors.push(substring.to_owned());
    }

    /// Any ERROR line is expected by this test (it provokes failures on purpose).
    pub fn expect_errors(&mut self) {
        self.any_error_allowed = true;
    }

    /// ERROR lines the test did not announce.
    pub fn unexpected_errors(&self) -> Vec<String> {
        if self.any_error_allowed {
            return Vec::new();
        }
        unexpected_error_lines(&self.log_text(), &self.allowed_errors)
    }
}

/// Lines of a (colour-stripped) tracing log at level ERROR that contain none of `allowed`.
fn unexpected_error_lines(log: &str, allowed: &[String]) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(" ERROR "))
        .filter(|l| !allowed.iter().any(|a| l.contains(a.as_str())))
        .map(str::to_owned)
        .collect()
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            return;
        }
        let errors = self.unexpected_errors();
        if !errors.is_empty() {
            panic!(
                "walvault-server logged unexpected errors ({}):\n{}",
                self.log_path.display(),
                errors.join("\n")
            );
        }
    }
}

/// A walvault deployment for one test: CA, server on the test's storage, an admin
/// client, and helpers to add tenants, clusters and agents.
#[derive(Debug)]
pub struct Walvault {
    pub certs: Certs,
    pub server: Server,
    pub admin: Client,
    td_path: PathBuf,
    log: Log,
}

impl Walvault {
    /// `init` with the test's storage, catalog in the test directory, then `run`.
    pub fn start(td: &TestDir, storage: &Storage) -> Self {
        Self::start_with(td, storage, "")
    }

    /// Like [`Walvault::start`], with `extra` (TOML, such as a `[restore]` section) appended
    /// to the `server.toml` that `init` wrote, before the server starts.
    pub fn start_with(td: &TestDir, storage: &Storage, extra: &str) -> Self {
        let catalog = td.join("catalog");
        let (certs, config) = Certs::init(
            td,
            "ca",
            &[
                "--storage",
                &storage.spec(),
                "--listen",
                "127.0.0.1:0",
                "--catalog",
                catalog.to_str().expect("utf-8"),
                "--pg-user",
                super::PG_USER,
            ],
        );
        // Clients running as postgres must read the CA certificate.
        chmod(&certs.ca_cert(), 0o644);
        // The server's own background jobs start PostgreSQL on its storage: a test asks for
        // them (and for how often), so that no other test finds an instance it did not start.
        let mut extra = extra.to_owned();
        for (section, off) in [
            ("[verify]", "snapshots_interval_secs = 0"),
            ("[rollforward]", "interval_secs = 0"),
        ] {
            if !extra.contains(section) {
                extra.push_str(&format!("\n{section}\n{off}\n"));
            }
        }
        // Clones' pg_wal on the local disk, in the test's directory: parallel tests' servers
        // would otherwise share the default one.
        let local_wal = format!(
            "local_wal_dir = {:?}\n",
            td.join("local-wal").display().to_string()
        );
        extra = if extra.contains("local_wal_dir") {
            extra
        } else if extra.contains("[restore]\n") {
            extra.replacen("[restore]\n", &format!("[restore]\n{local_wal}"), 1)
        } else {
            format!("{extra}\n[restore]\n{local_wal}")
        };
        let extra = extra.as_str();
        if !extra.is_empty() {
            let mut text = std::fs::read_to_string(&config)
                .unwrap_or_else(|e| panic!("read {}: {e}", config.display()));
            text.push('\n');
            text.push_str(extra);
            std::fs::write(&config, text)
                .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
            td.log()
                .line(&format!("appended to {}:\n{extra}", config.display()));
        }
        let server = Server::start(td, &config);
        let admin_id = certs.admin();
        let admin = Client::new(
            td.path(),
            td.log(),
            "admin",
            &ClientConfig::new(&server, &certs.ca_cert(), Some(&admin_id), None),
            None,
        );
        Self {
            certs,
            server,
            admin,
            td_path: td.path().to_owned(),
            log: td.log().clone(),
        }
    }

    /// `tenant create NAME [--quota SIZE]`.
    pub fn tenant_create(&self, name: &str, quota: Option<&str>) {
        let mut args = vec!["tenant", "create", name];
        if let Some(q) = quota {
            args.extend_from_slice(&["--quota", q]);
        }
        self.admin.ok(&args);
    }

    /// `cluster create TENANT/CLUSTER`.
    pub fn cluster_create(&self, cluster: &str) {
        self.admin.ok(&["cluster", "create", cluster]);
    }

    /// An agent certificate for `cluster` and a client config using it (compression zstd),
    /// run as `postgres` like archive_command would.
    pub fn agent(&self, cluster: &str) -> Client {
        self.agent_with(cluster, "zstd")
    }

    pub fn agent_with(&self, cluster: &str, compression: &str) -> Client {
        let stem = format!("agent-{}-{compression}", cluster.replace('/', "-"));
        let id = self.certs.issue(&["--agent", cluster], &stem, true);
        let mut cfg = ClientConfig::new(
            &self.server,
            &self.certs.ca_cert(),
            Some(&id),
            Some(cluster),
        );
        cfg.compression = Some(compression.to_owned());
        Client::new(&self.td_path, &self.log, &stem, &cfg, Some(super::PG_USER))
    }

    /// An operator certificate of `tenant` and a client config using it (no default
    /// cluster: commands name one with `--cluster`), run as `user` (`None`: ourselves, root;
    /// `postgres` for restores into a directory, which refuse to run as root).
    pub fn operator(&self, tenant: &str, user: Option<&str>) -> Client {
        let stem = format!("operator-{tenant}-{}", user.unwrap_or("root"));
        let id = self
            .certs
            .issue(&["--operator", tenant], &stem, user.is_some());
        let cfg = ClientConfig::new(&self.server, &self.certs.ca_cert(), Some(&id), None);
        Client::new(&self.td_path, &self.log, &stem, &cfg, user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_unexpected_error_lines_in_coloured_logs() {
        let log = strip_ansi(
            "2026-01-01T00:00:00Z  INFO walvault_server: listening\n\
             2026-01-01T00:00:01Z \u{1b}[31mERROR\u{1b}[0m walvault_server::api: tenant acme is over its quota\n\
             2026-01-01T00:00:02Z ERROR walvault_server::wal: fsync failed\n\
             2026-01-01T00:00:03Z  WARN walvault_server: ERROR-free warning\n",
        );
        assert_eq!(unexpected_error_lines(&log, &[]).len(), 2);
        let left = unexpected_error_lines(&log, &["quota".to_owned()]);
        assert_eq!(left.len(), 1);
        assert!(left[0].ends_with("fsync failed"));
    }
}
