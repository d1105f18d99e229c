//! Point-in-time restores (issue 4) the way their users run them: `walvault window`,
//! `walvault restore … --to dir:PATH` as the `postgres` OS user of a database host (the
//! cluster's agent), `walvault restore … --to instance` as an operator of the tenant, and
//! `walvault restores [drop ID]`, each read from its `--json`.
//!
//! A [`Lab`] is a [`Deployment`] whose server has a `[restore]` section with a port range of
//! its own. It drops every instance restore the test did not drop itself before the server
//! goes away, and then stops any PostgreSQL still running on the server's storage, so that no
//! instance keeps a clone (and the pool) busy, even when the test fails.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use walvault_proto::Lsn;

use super::backup::{Deployment, CLUSTER};
use super::{run, Client, Log, Pg, Run, Storage, TestDir, PG_USER};

/// Where the ports of the server's instances come from: below the kernel's ephemeral range
/// (32768 and up on Linux), from which [`super::free_port`], and so every [`Pg`] of the
/// harness, takes its ports.
const RESTORE_PORTS_FROM: u32 = 20_000;
const RESTORE_PORTS_TO: u32 = 32_000;
/// How many ports each test's server gets.
const PORTS_PER_SERVER: u16 = 8;
const PG_TIMEOUT: Duration = Duration::from_secs(180);
/// Quiet around a recorded time (not a wait for readiness: commit times must differ).
const APART: Duration = Duration::from_millis(1100);

pub use super::command::NOT_ALLOWED;

/// A range of `count` ports, all free when chosen, that this process never handed out
/// before. Processes start at different places (by pid), so that test binaries run side by
/// side rarely meet.
pub fn restore_ports(count: u16) -> (u16, u16) {
    use std::sync::Mutex;
    static NEXT: Mutex<Option<u32>> = Mutex::new(None);
    let count = u32::from(count.max(1));
    let span = RESTORE_PORTS_TO - RESTORE_PORTS_FROM;
    let mut next = NEXT.lock().unwrap_or_else(|e| e.into_inner());
    let mut at =
        next.unwrap_or_else(|| RESTORE_PORTS_FROM + std::process::id().wrapping_mul(97) % span);
    for _ in 0..(span / count) {
        if at + count > RESTORE_PORTS_TO {
            at = RESTORE_PORTS_FROM;
        }
        let (lo, hi) = (at, at + count - 1);
        at = hi + 1;
        let free = (lo..=hi).all(|p| {
            let p = u16::try_from(p).expect("below 32000");
            std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
        });
        if free {
            *next = Some(at);
            let port = |p: u32| u16::try_from(p).expect("below 32000");
            return (port(lo), port(hi));
        }
    }
    panic!("no {count} free consecutive ports between {RESTORE_PORTS_FROM} and {RESTORE_PORTS_TO}");
}

/// The server configuration's `[restore]` section for a port range.
pub fn restore_section((lo, hi): (u16, u16)) -> String {
    format!("[restore]\nports = \"{lo}-{hi}\"\nlisten_address = \"127.0.0.1\"\n")
}

/// One timeline of `walvault window --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct TimelineWindow {
    pub timeline: u32,
    /// 0 or absent for timeline 1.
    #[serde(default)]
    pub parent: Option<u32>,
    /// Where the timeline branched off its parent ("X/Y"); absent or 0/0 for timeline 1.
    #[serde(default)]
    pub switch_lsn: Option<String>,
    #[serde(default)]
    pub oldest_backup: Option<String>,
    pub from_lsn: String,
    pub from_micros: i64,
    #[serde(default)]
    pub from_time: String,
    #[serde(default)]
    pub last_commit_lsn: Option<String>,
    #[serde(default)]
    pub last_commit_micros: Option<i64>,
    #[serde(default)]
    pub last_commit_time: Option<String>,
    pub end_lsn: String,
    #[serde(default)]
    pub backups: u32,
    #[serde(default)]
    pub segments: u32,
    /// Stretches restorable to any point, oldest first.
    #[serde(default)]
    pub spans: Vec<WindowSpan>,
    /// Holes of the timeline's history.
    #[serde(default)]
    pub holes: Vec<WalHole>,
    /// Segments whose records the server could not decode.
    #[serde(default)]
    pub unreadable: Vec<Unreadable>,
}

/// A restorable stretch of a timeline in `window --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct WindowSpan {
    pub from_backup: String,
    pub from_lsn: String,
    pub from_micros: i64,
    #[serde(default)]
    pub last_commit_micros: i64,
    pub end_lsn: String,
    /// The first segment of the hole that ends it.
    #[serde(default)]
    pub until_hole: Option<String>,
}

/// A hole in `window --json` and `wal-list --json`.
#[derive(Debug, Clone, Deserialize)]
pub struct WalHole {
    pub first: String,
    pub last: String,
    pub segments: u64,
    /// "missing", "damaged" or "pruned".
    pub cause: String,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Unreadable {
    pub name: String,
    pub reason: String,
}

impl TimelineWindow {
    pub fn switch(&self) -> Option<Lsn> {
        self.switch_lsn
            .as_deref()
            .map(parse_lsn)
            .filter(|l| l.0 != 0)
    }

    pub fn end(&self) -> Lsn {
        parse_lsn(&self.end_lsn)
    }
}

/// What `walvault restore --to dir:PATH --json` prints.
#[derive(Debug, Clone, Deserialize)]
pub struct DirRestore {
    pub restore_id: String,
    pub backup_id: String,
    pub path: String,
    #[serde(default)]
    pub target: String,
    #[serde(default)]
    pub timeline: Option<u32>,
    pub files: u64,
    pub bytes_sent: u64,
    pub bytes_written: u64,
    #[serde(default)]
    pub blocks_sent: u64,
    #[serde(default)]
    pub blocks_same: u64,
    pub duration_ms: u64,
    /// The recovery settings written to `postgresql.auto.conf`.
    #[serde(default)]
    pub settings: BTreeMap<String, serde_json::Value>,
}

impl DirRestore {
    /// MiB written per second of the delivery.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes_written as f64 / (1 << 20) as f64 / (self.duration_ms.max(1) as f64 / 1000.0)
    }

    /// The figures of the closing note, on stderr.
    pub fn report(&self, what: &str) {
        eprintln!(
            "{what}: restore {} of backup {}: {} files, {} bytes sent, {} bytes written, \
             {} blocks sent, {} blocks already there, in {} ms ({:.1} MiB/s written)",
            self.restore_id,
            self.backup_id,
            self.files,
            self.bytes_sent,
            self.bytes_written,
            self.blocks_sent,
            self.blocks_same,
            self.duration_ms,
            self.mib_per_s()
        );
    }
}

/// A restore as `walvault restore --to instance --json` and `walvault restores --json`
/// print it.
#[derive(Debug, Clone, Deserialize)]
pub struct RestoreInfo {
    pub id: String,
    #[serde(default)]
    pub cluster: String,
    #[serde(default)]
    pub backup_id: String,
    #[serde(default)]
    pub target: String,
    pub delivery: String,
    pub state: String,
    #[serde(default)]
    pub conninfo: String,
    #[serde(default)]
    pub port: u16,
}

fn parse_lsn(s: &str) -> Lsn {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not an LSN like 0/2000028: {e:?}"))
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, stdout: &str) -> T {
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("`{what}` did not print what it should ({e}):\n{stdout}"))
}

/// A moment read from PostgreSQL's own clock (`clock_timestamp()`), in the forms `restore
/// --time` takes.
#[derive(Debug, Clone)]
pub struct PointInTime {
    /// `YYYY-MM-DD HH:MM:SS.ffffff`, UTC without a zone.
    pub utc: String,
    /// RFC 3339: `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
    pub rfc3339: String,
    pub micros: i64,
}

impl PointInTime {
    pub fn now(pg: &Pg) -> Self {
        Self::query(pg, "clock_timestamp()")
    }

    /// [`PointInTime::now`] with a little more than a second of quiet before and after, so
    /// that the commits of a test before and after it are clearly apart from it, whatever
    /// precision the time index keeps. The caller must not commit in between.
    pub fn between_commits(pg: &Pg) -> Self {
        std::thread::sleep(APART);
        let t = Self::now(pg);
        std::thread::sleep(APART);
        t
    }

    /// `expr` (a timestamptz expression) evaluated by `pg`.
    pub fn query(pg: &Pg, expr: &str) -> Self {
        let row = pg.psql(&format!(
            "WITH t AS (SELECT {expr} AS ts) SELECT \
             to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US'), \
             to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
             (extract(epoch FROM ts) * 1000000)::bigint FROM t"
        ));
        let f: Vec<&str> = row.split('|').collect();
        assert_eq!(f.len(), 3, "unexpected row {row:?}");
        Self {
            utc: f[0].to_owned(),
            rfc3339: f[1].to_owned(),
            micros: f[2].parse().expect("micros"),
        }
    }
}

/// Completes `pg`'s current WAL segment and waits until the archive has it: everything
/// committed so far can then be restored from the archive alone.
pub fn archive_now(pg: &Pg) {
    let seg = pg.switch_wal();
    pg.wait_archived(&seg, Duration::from_secs(300));
}

/// `psql -XAtq` as `postgres` on a libpq connection string (such as an instance's
/// conninfo): the connection a user of the restore makes.
pub fn psql_conninfo(log: &Log, conninfo: &str, sql: &str) -> Run {
    run(
        log,
        Command::new("runuser")
            .args(["-u", PG_USER, "--"])
            .arg(Path::new(super::pg::PG_BIN).join("psql"))
            .args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql])
            .current_dir("/")
            .env("PGCONNECT_TIMEOUT", "10"),
        PG_TIMEOUT,
    )
}

/// [`Pg::checksums`] of the database behind `conninfo`, in one query: per user table,
/// `"<rows> rows, sum <sum(hashtext(t.*::text))>"`.
pub fn checksums_conninfo(log: &Log, conninfo: &str) -> BTreeMap<String, String> {
    let r = psql_conninfo(
        log,
        conninfo,
        "SELECT format('%I.%I', n.nspname, c.relname), \
         (xpath('/row/s/text()', query_to_xml(format('SELECT count(*) || '' rows, sum '' || \
         coalesce(sum(hashtext(t.*::text))::text, ''null'') AS s FROM %I.%I t', \
         n.nspname, c.relname), false, true, '')))[1]::text \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' \
         AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1",
    );
    assert!(r.success(), "checksums on {conninfo}: {}", r.describe());
    r.stdout
        .lines()
        .map(|l| {
            let (t, v) = l
                .split_once('|')
                .unwrap_or_else(|| panic!("unexpected line {l:?}"));
            (t.to_owned(), v.to_owned())
        })
        .collect()
}

/// A PostgreSQL started by the server for `restore --to instance`.
#[derive(Debug)]
pub struct Instance {
    pub info: RestoreInfo,
    /// From the start of the `restore` command to the first answered query.
    pub ready_after: Duration,
    log: Log,
}

impl Instance {
    pub fn try_psql(&self, sql: &str) -> Run {
        psql_conninfo(&self.log, &self.info.conninfo, sql)
    }

    pub fn psql(&self, sql: &str) -> String {
        let r = self.try_psql(sql);
        assert!(
            r.success(),
            "psql on restore {} failed: {}",
            self.info.id,
            r.describe()
        );
        r.stdout.trim_end_matches('\n').to_owned()
    }

    pub fn checksums(&self) -> BTreeMap<String, String> {
        checksums_conninfo(&self.log, &self.info.conninfo)
    }

    /// Whether something accepts TCP connections on the instance's port.
    pub fn port_open(&self) -> bool {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.info.port));
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
    }
}

/// A [`Deployment`] (tenant `acme`, cluster [`CLUSTER`], its agent and an archiving primary)
/// whose server may start restore instances, and an operator of `acme`.
#[derive(Debug)]
pub struct Lab {
    pub d: Deployment,
    /// An operator of tenant `acme` (run as root; commands name the cluster).
    pub operator: Client,
    pub ports: (u16, u16),
    /// Instance restores not dropped yet: [`Lab`]'s drop drops them.
    live: RefCell<Vec<String>>,
}

impl Lab {
    /// Like [`Deployment::start`], with a `[restore]` section in the server's configuration.
    /// `None` (skipped) when PostgreSQL or ZFS are missing.
    pub fn start(name: &str, scale: Option<u32>) -> Option<Self> {
        Self::start_with(name, scale, "")
    }

    /// [`Lab::start`] with `extra` TOML (more sections) in the server's configuration.
    pub fn start_with(name: &str, scale: Option<u32>, extra: &str) -> Option<Self> {
        let ports = restore_ports(PORTS_PER_SERVER);
        let d =
            Deployment::start_with(name, scale, &format!("{}\n{extra}", restore_section(ports)))?;
        let operator = d.wv.operator("acme", None);
        Some(Self {
            d,
            operator,
            ports,
            live: RefCell::new(Vec::new()),
        })
    }

    pub fn td(&self) -> &TestDir {
        &self.d.td
    }

    /// `walvault --cluster <CLUSTER> <args…>` as the operator.
    pub fn op(&self, args: &[&str]) -> Run {
        let mut all = vec!["--cluster", CLUSTER];
        all.extend_from_slice(args);
        self.operator.run(&all)
    }

    /// `walvault --cluster <CLUSTER> <args…>` as the operator, started in the background
    /// (output discarded).
    pub fn op_spawn(&self, args: &[&str]) -> std::process::Child {
        let mut all = vec!["--cluster", CLUSTER];
        all.extend_from_slice(args);
        self.operator
            .command(&all)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn walvault")
    }

    /// `walvault window --json`, as the operator.
    pub fn window(&self) -> Vec<TimelineWindow> {
        window(&self.operator, Some(CLUSTER))
    }

    /// `walvault restores --json`, as the operator.
    pub fn restores(&self) -> Vec<RestoreInfo> {
        restores(&self.operator, Some(CLUSTER))
    }

    /// An instance directory `pg-<name>` with an empty data directory owned by `postgres`,
    /// for `restore --to dir:` (nothing is started).
    pub fn empty_instance(&self, name: &str) -> Pg {
        let pg = Pg::empty(self.td(), name);
        let rel = pg
            .data_dir()
            .strip_prefix(self.td().path())
            .expect("instances live in the test directory")
            .to_owned();
        self.td().mkdir_postgres(rel);
        pg
    }

    /// `restore <args…> --to dir:<path> --json --quiet` as the agent, which runs as the
    /// `postgres` OS user like on a database host.
    pub fn try_restore_to_dir(&self, path: &Path, args: &[&str]) -> Run {
        let to = format!("dir:{}", path.display());
        let mut all = vec!["restore"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--to", &to, "--json", "--quiet"]);
        self.d.agent.run(&all)
    }

    /// [`Lab::try_restore_to_dir`], asserting success and what a restored PGDATA holds:
    /// the signal file (`standby.signal` with `--standby`, else `recovery.signal`) and a
    /// `restore_command` calling `walvault wal-fetch` in `postgresql.auto.conf`.
    pub fn restore_to_dir(&self, path: &Path, args: &[&str]) -> DirRestore {
        let r = self.try_restore_to_dir(path, args);
        assert!(r.success(), "walvault restore failed: {}", r.describe());
        let out: DirRestore = parse_json("walvault restore --to dir: --json", &r.stdout);
        assert_eq!(
            Path::new(&out.path),
            path,
            "the restore reports another path: {out:?}"
        );
        let signal = if args.contains(&"--standby") {
            "standby.signal"
        } else {
            "recovery.signal"
        };
        assert!(
            path.join(signal).is_file(),
            "the restored PGDATA {} has no {signal}",
            path.display()
        );
        assert!(
            !path.join("postmaster.pid").exists(),
            "the restored PGDATA holds a stale postmaster.pid"
        );
        let auto = std::fs::read_to_string(path.join("postgresql.auto.conf"))
            .unwrap_or_else(|e| panic!("read postgresql.auto.conf of the restore: {e}"));
        assert!(
            auto.lines()
                .any(|l| l.trim_start().starts_with("restore_command") && l.contains("wal-fetch")),
            "postgresql.auto.conf of the restore has no restore_command with wal-fetch:\n{auto}"
        );
        self.td().log().line(&format!(
            "restored to {}: {out:?}\npostgresql.auto.conf:\n{auto}",
            path.display()
        ));
        out
    }

    /// Restores into a new instance `pg-<name>` ([`Lab::restore_to_dir`]), starts it with
    /// the test's port and socket (and `archive_mode = off`: the copy must not archive into
    /// the source's archive) and waits until recovery ended and it was promoted.
    pub fn restore_and_start(&self, name: &str, args: &[&str]) -> (Pg, DirRestore) {
        let mut pg = self.empty_instance(name);
        let out = self.restore_to_dir(pg.data_dir(), args);
        pg.append_conf(&["archive_mode = off".to_owned()]);
        pg.start();
        wait_promoted(&pg);
        (pg, out)
    }

    /// `restore <args…> --to instance --json` as the operator.
    pub fn try_restore_instance(&self, args: &[&str]) -> Run {
        let mut all = vec!["restore"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--to", "instance", "--json"]);
        self.op(&all)
    }

    /// [`Lab::try_restore_instance`], asserting success; the instance must answer a query
    /// (as primary, with the default action) as soon as the command returned.
    pub fn restore_instance(&self, args: &[&str]) -> Instance {
        let started = Instant::now();
        let r = self.try_restore_instance(args);
        assert!(r.success(), "walvault restore failed: {}", r.describe());
        let info: RestoreInfo = parse_json("walvault restore --to instance --json", &r.stdout);
        self.live.borrow_mut().push(info.id.clone());
        let inst = Instance {
            info,
            ready_after: Duration::ZERO,
            log: self.td().log().clone(),
        };
        let first = inst.try_psql("SELECT pg_is_in_recovery()");
        let ready_after = started.elapsed();
        assert!(
            first.success(),
            "restore {} returned, but its instance does not answer on {:?}: {}",
            inst.info.id,
            inst.info.conninfo,
            first.describe()
        );
        let promoted = args.iter().all(|a| *a != "--action");
        if promoted {
            assert_eq!(
                first.stdout.trim(),
                "f",
                "restore {} returned before its instance was promoted",
                inst.info.id
            );
        }
        assert_eq!(inst.info.delivery, "instance", "{:?}", inst.info);
        assert!(
            (self.ports.0..=self.ports.1).contains(&inst.info.port),
            "the instance's port {} is outside the configured range {:?}",
            inst.info.port,
            self.ports
        );
        Instance {
            ready_after,
            ..inst
        }
    }

    /// `restores drop ID` as the operator; the restore is then no longer the lab's to drop.
    pub fn drop_restore(&self, id: &str) {
        let r = self.op(&["restores", "drop", id]);
        assert!(
            r.success(),
            "walvault restores drop failed: {}",
            r.describe()
        );
        self.live.borrow_mut().retain(|l| l != id);
    }

    /// Polls the window until a timeline's last archived commit is at or after `micros`:
    /// the archive acknowledged the WAL, and the time index must catch up within a minute.
    pub fn wait_window_covers(&self, micros: i64) -> Vec<TimelineWindow> {
        super::wait_until(
            &format!("the window to reach the commit time {micros} µs"),
            Duration::from_secs(60),
            || {
                let w = self.window();
                w.iter()
                    .any(|t| t.last_commit_micros.is_some_and(|m| m >= micros))
                    .then_some(w)
            },
        )
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for id in self.live.take() {
            let r = self.op(&["restores", "drop", &id]);
            if !r.success() {
                eprintln!("could not drop restore {id}: {}", r.describe());
            }
        }
        let stray = stop_postgres_on_storage(&self.d.storage, self.d.td.log());
        if !stray.is_empty() && !std::thread::panicking() {
            panic!(
                "PostgreSQL was still running on the server's storage after every restore was \
                 dropped: {stray:?}"
            );
        }
    }
}

/// `walvault [--cluster C] window --json`.
pub fn window(client: &Client, cluster: Option<&str>) -> Vec<TimelineWindow> {
    listing(client, cluster, "window")
}

/// `walvault [--cluster C] restores --json`.
pub fn restores(client: &Client, cluster: Option<&str>) -> Vec<RestoreInfo> {
    listing(client, cluster, "restores")
}

/// `walvault [--cluster C] <verb> --json`, parsed.
fn listing<T: serde::de::DeserializeOwned>(
    client: &Client,
    cluster: Option<&str>,
    verb: &str,
) -> Vec<T> {
    let mut args = Vec::new();
    if let Some(c) = cluster {
        args.extend_from_slice(&["--cluster", c]);
    }
    args.extend_from_slice(&[verb, "--json"]);
    parse_json(&format!("walvault {verb} --json"), &client.ok(&args))
}

/// Waits until a started instance has finished recovery and was promoted; panics with its
/// log when PostgreSQL gives up instead (a target it never reached, say).
pub fn wait_promoted(pg: &Pg) {
    wait_in_recovery(pg, false);
}

/// Waits until `pg_is_in_recovery()` is `in_recovery`.
pub fn wait_in_recovery(pg: &Pg, in_recovery: bool) {
    let want = if in_recovery { "t" } else { "f" };
    super::wait_until(
        &format!(
            "{} to answer pg_is_in_recovery() = {want} (see pg-{}/postgres.log)",
            pg.name(),
            pg.name()
        ),
        Duration::from_secs(300),
        || {
            let r = pg.try_psql("SELECT pg_is_in_recovery()");
            if r.success() && r.stdout.trim() == want {
                return Some(());
            }
            let log = pg.server_log();
            if log.contains("database system is shut down") || log.contains(" PANIC: ") {
                panic!("{} stopped during recovery:\n{log}", pg.name());
            }
            None
        },
    );
}

/// Directories under the server's storage that hold a `postmaster.pid`: the data
/// directories of instances it started. Each is stopped (`pg_ctl stop -m immediate` as
/// `postgres`), so that the storage can be destroyed; returns them.
pub fn stop_postgres_on_storage(storage: &Storage, log: &Log) -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = match storage {
        Storage::Zfs(pool) => {
            // Every dataset's mountpoint: clones may be mounted anywhere.
            let r = run(
                log,
                Command::new("zfs")
                    .args(["list", "-H", "-o", "mountpoint", "-t", "filesystem", "-r"])
                    .arg(pool.name()),
                Duration::from_secs(60),
            );
            r.stdout
                .lines()
                .filter(|l| l.starts_with('/'))
                .map(PathBuf::from)
                .collect()
        }
        Storage::Dir(root) => vec![root.clone()],
    };
    roots.sort();
    roots.dedup();
    let mut found = Vec::new();
    for root in &roots {
        find_postmaster_pid(root, 0, &mut found);
    }
    found.sort();
    found.dedup();
    for dir in &found {
        log.line(&format!(
            "PostgreSQL still running on {}: stopping it",
            dir.display()
        ));
        let r = run(
            log,
            Command::new("runuser")
                .args(["-u", PG_USER, "--"])
                .arg(Path::new(super::pg::PG_BIN).join("pg_ctl"))
                .arg("-D")
                .arg(dir)
                .args(["-w", "-m", "immediate", "stop"])
                .current_dir("/"),
            Duration::from_secs(120),
        );
        if !r.success() {
            eprintln!(
                "could not stop PostgreSQL on {}: {}",
                dir.display(),
                r.describe()
            );
        }
    }
    found
}

fn find_postmaster_pid(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if dir.join("postmaster.pid").is_file() {
        out.push(dir.to_owned());
        return;
    }
    if depth >= 6 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        // Not into snapshots, nor into what a PGDATA holds below its top.
        if name == ".zfs" || name == "base" || name == "pg_wal" || name == "global" {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            find_postmaster_pid(&e.path(), depth + 1, out);
        }
    }
}
