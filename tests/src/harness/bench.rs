//! Small pieces the benchmark binaries share: sizes, timed commands, pgbench with a
//! deadline, the machine facts a report names, and the ZFS datasets and configuration of the
//! peer tools they compare with.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{run, Log, Pg, Run, TestDir, PG_USER};

const MIB: f64 = (1u64 << 20) as f64;

/// Bytes in MiB.
pub fn mib(b: u64) -> f64 {
    b as f64 / MIB
}

/// Bytes of the regular files under `dir`, skipping paths that end with one of `skip`.
pub fn dir_bytes(dir: &Path, skip: &[&str]) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if skip.iter().any(|s| p.ends_with(s)) {
            continue;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() => total += dir_bytes(&p, skip),
            Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => {}
        }
    }
    total
}

/// Runs a command, panicking with its output unless it exits 0 within `timeout`; returns the
/// run and its wall-clock time.
pub fn timed(log: &Log, cmd: &mut Command, timeout: Duration) -> (Run, f64) {
    let start = Instant::now();
    let r = run(log, cmd, timeout);
    let secs = start.elapsed().as_secs_f64();
    assert!(r.success(), "{}", r.describe());
    (r, secs)
}

/// `pgbench <args>` as postgres, with a deadline that suits the work (the harness's own is
/// three minutes).
pub fn pgbench(log: &Log, pg: &Pg, args: &[&str], timeout: Duration) -> f64 {
    let mut c = Command::new("runuser");
    c.args(["-u", PG_USER, "--"])
        .arg("/usr/lib/postgresql/15/bin/pgbench")
        .args(["-h", &pg.socket_dir(), "-p", &pg.port().to_string()])
        .args(["-U", "postgres"])
        .args(args)
        .arg("postgres")
        .current_dir("/");
    timed(log, &mut c, timeout).1
}

/// (current RSS, peak RSS) of a process in KiB, from /proc/<pid>/status.
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `syscw` of `/proc/<pid>/io`: the write calls the process made; `None` when unreadable.
pub fn write_calls(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("syscw:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The machine's memory, for reports.
pub fn meminfo_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb as f64 / (1u64 << 20) as f64))
        .unwrap_or_else(|| "?".into())
}

/// The CPU model, for reports.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}

/// `zfs get -Hp -o value <property> <dataset>`.
pub fn zfs_get(log: &Log, property: &str, dataset: &str) -> String {
    let r = run(
        log,
        Command::new("zfs").args(["get", "-H", "-p", "-o", "value", property, dataset]),
        Duration::from_secs(60),
    );
    assert!(r.success(), "{}", r.describe());
    r.stdout.trim().to_owned()
}

/// Installs Debian's `package` with apt-get when `program` does not run.
pub fn ensure_installed(program: &str, package: &str) -> Result<(), String> {
    if Command::new(program).arg("--version").output().is_ok() {
        return Ok(());
    }
    let apt = Command::new("apt-get")
        .args(["install", "-y", "-q", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output();
    if apt.is_ok_and(|o| o.status.success()) {
        Ok(())
    } else {
        Err(format!(
            "{package} is not installed and apt-get install failed"
        ))
    }
}

/// A dataset `<pool>/<name>` for a peer tool, with the compression of walvault's own
/// datasets (so stored sizes compare) and owned by postgres: its name and mountpoint.
pub fn peer_dataset(log: &Log, pool: &str, name: &str) -> Result<(String, PathBuf), String> {
    let compression = zfs_get(log, "compression", &format!("{pool}/walvault"));
    let dataset = format!("{pool}/{name}");
    let r = super::backup::zfs_mutate(
        log,
        &[
            "create",
            "-o",
            &format!("compression={compression}"),
            "-o",
            "atime=off",
            &dataset,
        ],
    );
    if !r.success() {
        return Err(format!("create {dataset}: {}", r.describe()));
    }
    let dir = PathBuf::from(zfs_get(log, "mountpoint", &dataset));
    super::chown_postgres(&dir);
    Ok((dataset, dir))
}

/// A pgbackrest configuration (readable by postgres) for the stanza `bench` of `pg`, with
/// its repository in `repo`: zst level 1, immediate checkpoint, `archive-check=n` (the
/// benches measure file copies, WAL goes to walvault).
pub fn pgbackrest_conf(td: &TestDir, repo: &Path, pg: &Pg) -> Result<PathBuf, String> {
    let spool = td.mkdir_postgres("pgbackrest-spool");
    let conf = td.join("pgbackrest.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nrepo1-path={}\ncompress-type=zst\ncompress-level=1\n\
             start-fast=y\narchive-check=n\nlog-level-console=warn\nlog-level-file=off\n\
             lock-path={}\nspool-path={}\n\n[bench]\npg1-path={}\npg1-port={}\n\
             pg1-socket-path={}\npg1-user=postgres\n",
            repo.display(),
            spool.display(),
            spool.display(),
            pg.data_dir().display(),
            pg.port(),
            pg.socket_dir(),
        ),
    )
    .map_err(|e| format!("write {}: {e}", conf.display()))?;
    super::chmod(&conf, 0o644);
    Ok(conf)
}

/// pgbackrest 2.45 with its repository on a dataset of the walvault pool.
pub struct Pgbackrest {
    pub conf: PathBuf,
    pub dataset: String,
    pub repo: PathBuf,
    log: Log,
}

impl Pgbackrest {
    pub fn setup(td: &TestDir, pool: &str, pg: &Pg) -> Result<Self, String> {
        ensure_installed("pgbackrest", "pgbackrest")?;
        let version = Command::new("pgbackrest")
            .arg("version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let (dataset, repo) = peer_dataset(td.log(), pool, "pgbackrest")?;
        let conf = pgbackrest_conf(td, &repo, pg)?;
        let me = Self {
            conf,
            dataset,
            repo,
            log: td.log().clone(),
        };
        let r = run(
            &me.log,
            &mut me.command(&["stanza-create"]),
            Duration::from_secs(300),
        );
        if !r.success() {
            return Err(format!("stanza-create failed: {}", r.stderr.trim()));
        }
        println!("{version}: repository on {}", me.dataset);
        Ok(me)
    }

    /// `pgbackrest --config=… --stanza=bench <args>` as postgres.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_USER, "--", "pgbackrest"])
            .arg(format!("--config={}", self.conf.display()))
            .arg("--stanza=bench")
            .args(args)
            .current_dir("/");
        c
    }

    /// Runs a backup of `kind` (full, incr); returns its wall-clock seconds and its entry in
    /// `pgbackrest info --output=json`.
    pub fn backup(&self, kind: &str) -> (f64, Value) {
        let (_, secs) = timed(
            &self.log,
            &mut self.command(&["backup", &format!("--type={kind}")]),
            Duration::from_secs(1800),
        );
        let (r, _) = timed(
            &self.log,
            &mut self.command(&["info", "--output=json"]),
            Duration::from_secs(120),
        );
        let info: Value = serde_json::from_str(r.stdout.trim())
            .unwrap_or_else(|e| panic!("pgbackrest info is not JSON ({e}): {}", r.stdout));
        let last = info[0]["backup"]
            .as_array()
            .and_then(|b| b.last())
            .cloned()
            .unwrap_or_else(|| panic!("pgbackrest info lists no backup: {info}"));
        assert_eq!(last["type"].as_str(), Some(kind), "last backup: {last}");
        (secs, last)
    }
}
