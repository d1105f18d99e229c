//! The real `walvault` client: its config file and running it as a given OS user.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{binary, run, Identity, Log, Run, Server};

const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);

/// The client's TOML config; `None` fields are left out of the file.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    pub server: String,
    pub server_name: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub cluster: Option<String>,
    pub compression: Option<String>,
}

impl ClientConfig {
    pub fn new(server: &Server, ca: &Path, id: Option<&Identity>, cluster: Option<&str>) -> Self {
        Self {
            server: server.url(),
            server_name: Some("localhost".into()),
            ca: Some(ca.to_owned()),
            cert: id.map(|i| i.cert.clone()),
            key: id.map(|i| i.key.clone()),
            cluster: cluster.map(str::to_owned),
            compression: None,
        }
    }

    pub fn to_toml(&self) -> String {
        let mut t = toml::Table::new();
        let s = |v: &str| toml::Value::String(v.to_owned());
        let p = |v: &Path| toml::Value::String(v.to_string_lossy().into_owned());
        t.insert("server".into(), s(&self.server));
        if let Some(v) = &self.server_name {
            t.insert("server_name".into(), s(v));
        }
        if let Some(v) = &self.ca {
            t.insert("ca".into(), p(v));
        }
        if let Some(v) = &self.cert {
            t.insert("cert".into(), p(v));
        }
        if let Some(v) = &self.key {
            t.insert("key".into(), p(v));
        }
        if let Some(v) = &self.cluster {
            t.insert("cluster".into(), s(v));
        }
        if let Some(v) = &self.compression {
            t.insert("compression".into(), s(v));
        }
        toml::to_string(&t).expect("serialize client config")
    }
}

/// `walvault --config <file> …`, run as `user` (via runuser) or as ourselves.
#[derive(Debug, Clone)]
pub struct Client {
    config: PathBuf,
    user: Option<String>,
    log: Log,
}

impl Client {
    /// Writes `<dir>/<name>.toml` (world-readable: it holds only paths) and returns a client
    /// using it.
    pub fn new(dir: &Path, log: &Log, name: &str, cfg: &ClientConfig, user: Option<&str>) -> Self {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, cfg.to_toml())
            .unwrap_or_else(|e| panic!("write {}: {e}", config.display()));
        super::chmod(&config, 0o644);
        Self {
            config,
            user: user.map(str::to_owned),
            log: log.clone(),
        }
    }

    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The same config, run as another user (`None`: as ourselves, root).
    pub fn as_user(&self, user: Option<&str>) -> Self {
        Self {
            user: user.map(str::to_owned),
            ..self.clone()
        }
    }

    /// The command line PostgreSQL should run: `'<walvault> --config <cfg> <args>'`.
    pub fn shell_command(&self, args: &str) -> String {
        format!(
            "{} --config {} {args}",
            self.postgres_binary().display(),
            self.config.display()
        )
    }

    /// The client binary as `postgres` (archive_command, restore_command) can run it: where
    /// cargo built it, or else a copy beside this client's config, in the test directory.
    fn postgres_binary(&self) -> PathBuf {
        let bin = binary("walvault");
        if postgres_can_run_built_binary() {
            return bin;
        }
        let dir = self
            .config
            .parent()
            .expect("config in a directory")
            .join("bin");
        let copy = dir.join("walvault");
        if !copy.exists() {
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            super::chmod(&dir, 0o755);
            std::fs::copy(&bin, &copy)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", bin.display(), copy.display()));
            super::chmod(&copy, 0o755);
        }
        copy
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = match &self.user {
            Some(u) => {
                let bin = self.postgres_binary();
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(bin);
                c
            }
            None => Command::new(binary("walvault")),
        };
        c.arg("--config").arg(&self.config).args(args);
        // A directory every user can enter, whatever ours is.
        c.current_dir("/");
        c
    }

    /// Like [`Client::command`], but the `walvault` process itself is the child (its uid and
    /// gid set directly instead of through `runuser`), so that killing the child kills the
    /// client, as a crash or `kill -9` on the database host would.
    pub fn direct_command(&self, args: &[&str]) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = match &self.user {
            Some(u) => {
                let (uid, gid) = super::user_ids(u);
                let mut c = Command::new(self.postgres_binary());
                c.uid(uid).gid(gid);
                c
            }
            None => Command::new(binary("walvault")),
        };
        c.arg("--config").arg(&self.config).args(args);
        c.current_dir("/");
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        run(&self.log, &mut self.command(args), CLIENT_TIMEOUT)
    }

    /// Runs and asserts exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert!(r.success(), "{}", r.describe());
        r.stdout
    }

    /// Runs and asserts the documented failure: exit 1 and an error on stderr; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(r.code, Some(1), "expected exit 1: {}", r.describe());
        assert!(
            !r.stderr.trim().is_empty(),
            "no error message: {}",
            r.describe()
        );
        r.stderr
    }
}

/// Whether the `postgres` user can run the client binary where cargo built it. It cannot
/// when the checkout is under a private directory (such as /root).
fn postgres_can_run_built_binary() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| {
        Command::new("runuser")
            .args(["-u", super::PG_USER, "--", "test", "-x"])
            .arg(binary("walvault"))
            .status()
            .is_ok_and(|s| s.success())
    })
}
