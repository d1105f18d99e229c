//! The server's configuration: one TOML file, read into a raw serde struct that refuses
//! unknown keys, then validated into [`Config`]. Relative paths are taken relative to the
//! file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: String,
    catalog: PathBuf,
    #[serde(default = "default_pg_user")]
    pg_user: String,
    tls: RawTls,
    storage: RawStorage,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    restore: RawRestore,
    #[serde(default)]
    retention: RawRetention,
    #[serde(default)]
    verify: RawVerify,
    #[serde(default)]
    rollforward: RawRollForward,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRollForward {
    interval_secs: Option<u64>,
    every_minutes: Option<u64>,
    every_mib: Option<u64>,
    max_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    prune_interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVerify {
    interval_secs: Option<u64>,
    snapshots_interval_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestore {
    ports: Option<String>,
    listen_address: Option<String>,
    pg_bin: Option<String>,
    superuser: Option<String>,
    wait_secs: Option<u64>,
    local_wal_dir: Option<String>,
    shared_buffers: Option<String>,
    settings: Option<std::collections::BTreeMap<String, String>>,
    prefetch: Option<bool>,
    wal_ahead: Option<u32>,
}

fn default_pg_user() -> String {
    "postgres".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, tag = "backend", rename_all = "lowercase")]
enum RawStorage {
    Zfs { dataset: String },
    Dir { path: PathBuf },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    request_timeout_secs: Option<u64>,
    backup_wal_wait_secs: Option<u64>,
    idle_timeout_secs: Option<u64>,
    stream_max_secs: Option<u64>,
    pushes_per_cluster: Option<u32>,
    pushes_per_tenant: Option<u32>,
    pushes: Option<u32>,
    fetches_per_cluster: Option<u32>,
    fetches_per_tenant: Option<u32>,
    fetches: Option<u32>,
    backups_per_tenant: Option<u32>,
    backups: Option<u32>,
    restores_per_cluster: Option<u32>,
    restores_per_tenant: Option<u32>,
    restores: Option<u32>,
    clones_per_tenant: Option<u32>,
    max_tablespaces: Option<u32>,
    max_file_bytes: Option<u64>,
    max_local_manifest_bytes: Option<u64>,
}

/// How much of the server one request, one cluster, one tenant and everyone together may use
/// (DESIGN §10). Every limit refuses the excess with a retryable error that names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// A stream (push, fetch, backup, restore) that sends or reads nothing this long is cut
    /// off, and what it held is released.
    pub idle_timeout: Duration,
    /// The longest a backup or a directory restore stream may last, whatever it does.
    pub stream_max: Duration,
    /// (per cluster, per tenant, on the server) of each kind of work at once.
    pub pushes: (u32, u32, u32),
    pub fetches: (u32, u32, u32),
    /// Backups: per tenant and on the server (one per cluster is the backup's lease, whose
    /// refusal names the backup running: the budget does not count per cluster).
    pub backups: (u32, u32, u32),
    /// Restores being planned, cloned, delivered or started.
    pub restores: (u32, u32, u32),
    /// Restore clones a tenant may hold open (deliveries and instances).
    pub clones_per_tenant: u32,
    /// Tablespaces a backup may announce.
    pub max_tablespaces: u32,
    /// Largest file a backup may send (PostgreSQL's relation segments are 1 GiB).
    pub max_file_bytes: u64,
    /// Largest manifest a delta restore may send of what its directory holds.
    pub max_local_manifest_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(60),
            stream_max: Duration::from_secs(86_400),
            pushes: (4, 16, 64),
            fetches: (8, 32, 64),
            backups: (u32::MAX, 4, 16),
            restores: (4, 8, 16),
            clones_per_tenant: 16,
            max_tablespaces: 128,
            max_file_bytes: 1 << 30,
            max_local_manifest_bytes: 1 << 30,
        }
    }
}

fn parse_limits(raw: &RawLimits) -> Result<Limits, String> {
    let d = Limits::default();
    let positive = |name: &str, v: Option<u32>, default: u32| match v {
        Some(0) => Err(format!("limits.{name} must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let triple = |what: &str,
                  (c, t, all): (Option<u32>, Option<u32>, Option<u32>),
                  (dc, dt, dall): (u32, u32, u32)|
     -> Result<(u32, u32, u32), String> {
        Ok((
            positive(&format!("{what}_per_cluster"), c, dc)?,
            positive(&format!("{what}_per_tenant"), t, dt)?,
            positive(what, all, dall)?,
        ))
    };
    let idle = raw.idle_timeout_secs.unwrap_or(d.idle_timeout.as_secs());
    if idle == 0 {
        return Err("limits.idle_timeout_secs must be at least 1".into());
    }
    let stream_max = raw.stream_max_secs.unwrap_or(d.stream_max.as_secs());
    if stream_max == 0 {
        return Err("limits.stream_max_secs must be at least 1".into());
    }
    Ok(Limits {
        idle_timeout: Duration::from_secs(idle),
        stream_max: Duration::from_secs(stream_max),
        pushes: triple(
            "pushes",
            (raw.pushes_per_cluster, raw.pushes_per_tenant, raw.pushes),
            d.pushes,
        )?,
        fetches: triple(
            "fetches",
            (raw.fetches_per_cluster, raw.fetches_per_tenant, raw.fetches),
            d.fetches,
        )?,
        backups: (
            u32::MAX,
            positive("backups_per_tenant", raw.backups_per_tenant, d.backups.1)?,
            positive("backups", raw.backups, d.backups.2)?,
        ),
        restores: triple(
            "restores",
            (
                raw.restores_per_cluster,
                raw.restores_per_tenant,
                raw.restores,
            ),
            d.restores,
        )?,
        clones_per_tenant: positive(
            "clones_per_tenant",
            raw.clones_per_tenant,
            d.clones_per_tenant,
        )?,
        max_tablespaces: positive("max_tablespaces", raw.max_tablespaces, d.max_tablespaces)?,
        max_file_bytes: match raw.max_file_bytes {
            Some(b) if b < u64::from(walvault_proto::BLOCK_SIZE) => {
                return Err("limits.max_file_bytes must be at least one block (8192)".into())
            }
            Some(b) => b,
            None => d.max_file_bytes,
        },
        max_local_manifest_bytes: raw
            .max_local_manifest_bytes
            .unwrap_or(d.max_local_manifest_bytes)
            .max(1 << 20),
    })
}

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageConfig {
    /// A ZFS dataset (`pool/walvault`) under which tenants live.
    Zfs { dataset: String },
    /// Plain directories under a path (for machines without ZFS).
    Dir { path: PathBuf },
}

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// How the server starts PostgreSQL instances for `restore --to instance`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreConfig {
    /// TCP ports handed out to instances, inclusive.
    pub ports: (u16, u16),
    /// The address instances listen on (`listen_addresses`).
    pub listen_address: String,
    /// The PostgreSQL binaries, `{major}` replaced by the cluster's major version.
    pub pg_bin: String,
    /// The role the server connects as to watch recovery (the restored cluster's superuser).
    pub superuser: String,
    /// How long a restore may take to reach its target.
    pub wait: Duration,
    /// Where the `pg_wal` of clones PostgreSQL recovers lives (a local disk: recovery writes
    /// and reads every segment there); `None`: in the clone.
    pub local_wal_dir: Option<PathBuf>,
    /// `shared_buffers` of the instances the server starts; `None` (`""`): the source's
    /// setting.
    pub shared_buffers: Option<String>,
    /// More settings for the instances the server starts (`[restore.settings]`), after the
    /// source's and before the recovery settings the server owns.
    pub settings: Vec<(String, String)>,
    /// Read the blocks recovery will need ahead of it (see `restore::prefetch`).
    pub prefetch: bool,
    /// Segments unpacked ahead of recovery beside its local `pg_wal` (see
    /// `restore::wal_ahead`); 0, or no `local_wal_dir`: each one when PostgreSQL asks.
    pub wal_ahead: u32,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        Self {
            ports: (54400, 54499),
            listen_address: "127.0.0.1".into(),
            pg_bin: "/usr/lib/postgresql/{major}/bin".into(),
            superuser: "postgres".into(),
            wait: Duration::from_secs(3600),
            local_wal_dir: Some(PathBuf::from("/var/tmp/walvault-wal")),
            // Not the source's: a large host's setting may not fit here, and the default 128MB
            // is too small for replay, which dirties a page per full-page image and, on FUSE,
            // pays a write request (and a pg_control update) per page it evicts. Touched pages
            // only cost memory, up to this bound.
            shared_buffers: Some("1GB".into()),
            settings: Vec::new(),
            // Off: measured on zfs-fuse, it did not make replay faster (see restore::prefetch).
            prefetch: false,
            wal_ahead: 4,
        }
    }
}

impl RestoreConfig {
    /// The local directory for the `pg_wal` of the clone `label` names, if configured.
    pub fn local_wal(&self, label: &str) -> Option<PathBuf> {
        self.local_wal_dir.as_ref().map(|d| {
            d.join(
                label
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .collect::<String>(),
            )
        })
    }

    /// Settings every instance of PostgreSQL `major` the server starts gets; `on_fuse`: its
    /// data directory is on a FUSE file system (zfs-fuse).
    pub fn tuning(&self, major: u32, on_fuse: bool) -> Vec<(String, String)> {
        let operator_sets = |name: &str| {
            self.settings
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case(name))
        };
        // A copy that was not shut down cleanly (a backup's) is synced before recovery starts:
        // by default one fsync per file, which on zfs-fuse costs more than the replay of a
        // few hundred MiB. The files come from a snapshot, so they are on disk already; one
        // syncfs per file system (PostgreSQL 14+) keeps the guarantee at no cost.
        let sync = (major >= 14 && !operator_sets("recovery_init_sync_method"))
            .then(|| ("recovery_init_sync_method".to_owned(), "syncfs".to_owned()));
        // PostgreSQL 15+ advises the kernel of blocks replay will read (posix_fadvise). On
        // FUSE each advice becomes read requests the daemon serves on its CPU, mostly for
        // blocks that a full-page image restores anyway, and that CPU is what replay then
        // waits for (replay-bench 100 on zfs-fuse: the daemon's CPU during replay fell from
        // 0.7-0.9 s to 0.08 s without it, see the README).
        let prefetch = (major >= 15 && on_fuse && !operator_sets("recovery_prefetch"))
            .then(|| ("recovery_prefetch".to_owned(), "off".to_owned()));
        self.shared_buffers
            .iter()
            .map(|b| ("shared_buffers".to_owned(), b.clone()))
            .chain(sync)
            .chain(prefetch)
            .chain(self.settings.iter().cloned())
            .collect()
    }
}

fn parse_restore(raw: RawRestore) -> Result<RestoreConfig, String> {
    let mut c = RestoreConfig::default();
    if let Some(p) = raw.ports {
        let parsed = p.split_once('-').and_then(|(a, b)| {
            let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
            (a > 0 && a <= b).then_some((a, b))
        });
        c.ports = parsed.ok_or_else(|| {
            format!("restore.ports = {p:?} is not a port range like \"54400-54499\"")
        })?;
    }
    if let Some(a) = raw.listen_address {
        if a.trim().is_empty() || a.contains(['\'', '\n']) {
            return Err(format!(
                "restore.listen_address = {a:?} is not a host address"
            ));
        }
        c.listen_address = a;
    }
    if let Some(b) = raw.pg_bin {
        if !b.starts_with('/') {
            return Err(format!("restore.pg_bin = {b:?} must be an absolute path"));
        }
        c.pg_bin = b;
    }
    if let Some(u) = raw.superuser {
        if u.is_empty() || u.contains(['\'', ' ', '\n']) {
            return Err(format!("restore.superuser = {u:?} is not a role name"));
        }
        c.superuser = u;
    }
    if let Some(w) = raw.wait_secs {
        if w == 0 {
            return Err("restore.wait_secs must be at least 1".into());
        }
        c.wait = Duration::from_secs(w);
    }
    if let Some(d) = raw.local_wal_dir {
        c.local_wal_dir = match d.as_str() {
            "" => None,
            d if d.starts_with('/') => Some(PathBuf::from(d)),
            d => {
                return Err(format!(
                    "restore.local_wal_dir = {d:?} must be an absolute path (\"\": in the clone)"
                ))
            }
        };
    }
    if let Some(b) = raw.shared_buffers {
        if b.is_empty() {
            c.shared_buffers = None;
        } else if b.chars().all(|c| c.is_ascii_alphanumeric()) {
            c.shared_buffers = Some(b);
        } else {
            return Err(format!(
                "restore.shared_buffers = {b:?} is not a size like \"1GB\" (\"\": the source's)"
            ));
        }
    }
    if let Some(p) = raw.prefetch {
        c.prefetch = p;
    }
    if let Some(n) = raw.wal_ahead {
        if n > 64 {
            return Err(format!(
                "restore.wal_ahead = {n}: at most 64 segments (each one takes a segment's size \
                 on the local disk)"
            ));
        }
        c.wal_ahead = n;
    }
    for (name, value) in raw.settings.unwrap_or_default() {
        if let Some(why) = crate::pg::conf::refused_setting(&name) {
            return Err(format!("restore.settings: {name:?} {why}"));
        }
        c.settings.push((name, value));
    }
    Ok(c)
}

fn parse_rollforward(raw: &RawRollForward) -> Result<RollForwardConfig, String> {
    let d = RollForwardConfig::default();
    let every = raw.every_minutes.map(|m| m * 60);
    let every_bytes = raw.every_mib.map(|m| m << 20);
    if every == Some(0) && every_bytes == Some(0) {
        return Err(
            "rollforward.every_minutes and rollforward.every_mib are both 0: set one, or \
             rollforward.interval_secs = 0 to turn roll-forward off"
                .into(),
        );
    }
    if raw.max_secs == Some(0) {
        return Err("rollforward.max_secs must be at least 1".into());
    }
    Ok(RollForwardConfig {
        interval: match raw.interval_secs {
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
            None => d.interval,
        },
        every: every.map(Duration::from_secs).unwrap_or(d.every),
        every_bytes: every_bytes.unwrap_or(d.every_bytes),
        max: raw.max_secs.map(Duration::from_secs).unwrap_or(d.max),
    })
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub catalog: PathBuf,
    /// The unprivileged OS user PostgreSQL runs as on the server.
    pub pg_user: String,
    pub tls: TlsFiles,
    pub storage: StorageConfig,
    /// Bound on every request's duration (a backup's stream excepted).
    pub request_timeout: Duration,
    /// How long a finishing backup waits for the archive to hold its WAL.
    pub backup_wal_wait: Duration,
    pub limits: Limits,
    pub restore: RestoreConfig,
    /// How often the server prunes every cluster by its policy; `None`: only on demand.
    pub prune_interval: Option<Duration>,
    /// How often the server verifies every cluster's archive and backups; `None`: only on
    /// demand.
    pub verify_interval: Option<Duration>,
    /// How often the server looks for snapshots to verify (clone, recover, check); `None`:
    /// only on demand.
    pub snapshot_check_interval: Option<Duration>,
    pub rollforward: RollForwardConfig,
}

/// When the server rolls each cluster's newest backup forward from the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollForwardConfig {
    /// How often the server looks for clusters due; `None`: never rolls forward.
    pub interval: Option<Duration>,
    /// A cluster is due once its newest snapshot is this old and commits followed it…
    pub every: Duration,
    /// … or once this much WAL followed it.
    pub every_bytes: u64,
    /// How long one roll-forward may replay before it is given up (and resumed next time).
    pub max: Duration,
}

impl Default for RollForwardConfig {
    /// Hourly or every GiB: a 7-day window of hourly snapshots costs only the blocks they
    /// change, and a PITR replays at most about an hour (or a GiB) of WAL.
    fn default() -> Self {
        Self {
            interval: Some(Duration::from_secs(60)),
            every: Duration::from_secs(3600),
            every_bytes: 1 << 30,
            max: Duration::from_secs(6 * 3600),
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|message| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses and validates; relative paths are resolved against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let listen = raw.listen.parse().map_err(|_| {
            format!(
                "listen = {:?} is not an address like 127.0.0.1:7400",
                raw.listen
            )
        })?;
        let storage = match raw.storage {
            RawStorage::Zfs { dataset } => {
                let ok = !dataset.is_empty()
                    && !dataset.starts_with('/')
                    && dataset.split('/').all(|c| {
                        !c.is_empty()
                            && c.chars()
                                .all(|ch| ch.is_ascii_alphanumeric() || "_.:-".contains(ch))
                    });
                if !ok {
                    return Err(format!("storage.dataset = {dataset:?} is not a ZFS dataset name like tank/walvault"));
                }
                StorageConfig::Zfs { dataset }
            }
            RawStorage::Dir { path } => StorageConfig::Dir { path: abs(path) },
        };
        if raw.pg_user.is_empty() || raw.pg_user == "root" {
            return Err(format!(
                "pg_user = {:?}: PostgreSQL must run as an unprivileged user",
                raw.pg_user
            ));
        }
        let timeout = raw.limits.request_timeout_secs.unwrap_or(600);
        if timeout == 0 {
            return Err("limits.request_timeout_secs must be at least 1".into());
        }
        let wal_wait = raw.limits.backup_wal_wait_secs.unwrap_or(300);
        let limits = parse_limits(&raw.limits)?;
        let restore = parse_restore(raw.restore)?;
        Ok(Self {
            listen,
            catalog: abs(raw.catalog),
            pg_user: raw.pg_user,
            tls: TlsFiles {
                ca: abs(raw.tls.ca),
                cert: abs(raw.tls.cert),
                key: abs(raw.tls.key),
            },
            storage,
            request_timeout: Duration::from_secs(timeout),
            backup_wal_wait: Duration::from_secs(wal_wait),
            limits,
            restore,
            prune_interval: match raw.retention.prune_interval_secs.unwrap_or(3600) {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            verify_interval: match raw.verify.interval_secs.unwrap_or(86_400) {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            snapshot_check_interval: match raw.verify.snapshots_interval_secs.unwrap_or(60) {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            rollforward: parse_rollforward(&raw.rollforward)?,
        })
    }
}

/// The configuration `walvault-server init` writes.
pub fn template(
    dir: &Path,
    storage: &StorageConfig,
    listen: &str,
    catalog: &Path,
    pg_user: &str,
) -> String {
    let storage = match storage {
        StorageConfig::Zfs { dataset } => format!("backend = \"zfs\"\ndataset = {dataset:?}\n"),
        StorageConfig::Dir { path } => format!(
            "backend = \"dir\"\npath = {:?}\n",
            path.display().to_string()
        ),
    };
    format!(
        "# walvault-server configuration (written by `walvault-server init`)\n\
         listen = {listen:?}\n\
         catalog = {:?}\n\
         pg_user = {pg_user:?}\n\n\
         [tls]\n\
         ca = {:?}\n\
         cert = {:?}\n\
         key = {:?}\n\n\
         [storage]\n{storage}",
        catalog.display().to_string(),
        dir.join("ca.crt").display().to_string(),
        dir.join("server.crt").display().to_string(),
        dir.join("server.key").display().to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:0"
catalog = "catalog"
[tls]
ca = "ca.crt"
cert = "/etc/walvault/server.crt"
key = "server.key"
[storage]
backend = "zfs"
dataset = "tank/walvault"
"#;

    #[test]
    fn parses_and_resolves_relative_paths() {
        let c = Config::parse(GOOD, Path::new("/etc/walvault")).unwrap();
        assert_eq!(c.catalog, Path::new("/etc/walvault/catalog"));
        assert_eq!(c.tls.cert, Path::new("/etc/walvault/server.crt"));
        assert_eq!(c.pg_user, "postgres");
        assert_eq!(
            c.storage,
            StorageConfig::Zfs {
                dataset: "tank/walvault".into()
            }
        );
    }

    #[test]
    fn refuses_bad_input_with_the_reason() {
        let cases = [
            (
                GOOD.replace("listen = \"127.0.0.1:0\"", "listen = \"here\""),
                "listen",
            ),
            (GOOD.replace("tank/walvault", "/tank"), "storage.dataset"),
            (GOOD.replace("tank/walvault", "tank//x"), "storage.dataset"),
            (format!("{GOOD}\nsurprise = 1\n"), "surprise"),
            (
                GOOD.replace("backend = \"zfs\"", "backend = \"ceph\""),
                "ceph",
            ),
            (format!("pg_user = \"root\"\n{GOOD}"), "unprivileged"),
            (
                format!("{GOOD}\n[restore]\nports = \"9-1\"\n"),
                "restore.ports",
            ),
            (
                format!("{GOOD}\n[restore]\npg_bin = \"bin\"\n"),
                "restore.pg_bin",
            ),
            (
                format!("{GOOD}\n[restore]\nwal_ahead = 1000\n"),
                "restore.wal_ahead = 1000: at most 64",
            ),
            (
                format!("{GOOD}\n[restore.settings]\nrecovery_target = \"immediate\"\n"),
                "restore.settings: \"recovery_target\" is set by the server",
            ),
            (
                format!("{GOOD}\n[limits]\npushes_per_tenant = 0\n"),
                "limits.pushes_per_tenant",
            ),
            (
                format!("{GOOD}\n[limits]\nidle_timeout_secs = 0\n"),
                "limits.idle_timeout_secs",
            ),
        ];
        for (text, needle) in cases {
            let err = Config::parse(&text, Path::new("/")).unwrap_err();
            assert!(err.contains(needle), "{err:?} should mention {needle}");
        }
    }

    #[test]
    fn instances_get_the_operators_settings() {
        let text = format!(
            "{GOOD}\n[restore]\nshared_buffers = \"1GB\"\n[restore.settings]\n\
             maintenance_io_concurrency = \"64\"\n"
        );
        let c = Config::parse(&text, Path::new("/")).unwrap();
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert_eq!(
            c.restore.tuning(13, true),
            [
                pair("shared_buffers", "1GB"),
                pair("maintenance_io_concurrency", "64")
            ]
        );
        assert_eq!(
            c.restore.tuning(14, true)[1],
            pair("recovery_init_sync_method", "syncfs"),
            "PostgreSQL 14+ syncs a snapshot's copy with syncfs"
        );
        assert!(
            c.restore
                .tuning(15, true)
                .contains(&pair("recovery_prefetch", "off")),
            "no prefetching advice on FUSE"
        );
        assert!(!c
            .restore
            .tuning(15, false)
            .iter()
            .any(|(k, _)| k == "recovery_prefetch"));
        // The operator's word wins.
        let text = format!("{GOOD}\n[restore.settings]\nrecovery_prefetch = \"on\"\n");
        let c = Config::parse(&text, Path::new("/")).unwrap();
        assert_eq!(
            c.restore.tuning(16, true),
            [
                pair("shared_buffers", "1GB"),
                pair("recovery_init_sync_method", "syncfs"),
                pair("recovery_prefetch", "on")
            ]
        );
        // "": the source's shared_buffers.
        let text = format!("{GOOD}\n[restore]\nshared_buffers = \"\"\n");
        let c = Config::parse(&text, Path::new("/")).unwrap();
        assert_eq!(c.restore.tuning(13, false), []);
    }

    #[test]
    fn the_template_parses() {
        let t = template(
            Path::new("/etc/walvault"),
            &StorageConfig::Dir {
                path: "/srv/wv".into(),
            },
            "127.0.0.1:7400",
            Path::new("/var/lib/walvault/catalog"),
            "postgres",
        );
        let c = Config::parse(&t, Path::new("/")).unwrap();
        assert_eq!(
            c.storage,
            StorageConfig::Dir {
                path: "/srv/wv".into()
            }
        );
    }
}
