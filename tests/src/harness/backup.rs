//! Base backups: running `walvault backup` / `walvault backups`, finding a backup's snapshots
//! in the storage, cloning them into datasets of the test, turning a clone into a running
//! PostgreSQL by hand (restores are not walvault's job yet), and counting the blocks two
//! backups differ in.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use walvault_proto::Lsn;

use super::{run, run_ok, Client, Log, Pg, Run, Storage, TestDir, PG_USER};

const ZFS_TIMEOUT: Duration = Duration::from_secs(120);
/// The lock every walvault process takes around mutating zfs commands on zfs-fuse
/// (server/src/storage/zfs_lock.rs): zfs-fuse deadlocks when several run at once.
pub const ZFS_FUSE_LOCK: &str = "/tmp/.walvault-zfs-fuse.lock";
/// PostgreSQL's page size, and the block size of walvault's backups.
pub const BLOCK: usize = 8192;

/// One backup as `walvault backup --json` and `walvault backups --json` print it.
#[derive(Debug, Clone, Deserialize)]
pub struct BackupInfo {
    pub id: String,
    pub kind: String,
    pub label: String,
    pub start_lsn: String,
    /// Not known yet while the backup runs.
    pub stop_lsn: Option<String>,
    pub timeline: u64,
    pub start_unix: i64,
    pub stop_unix: Option<i64>,
    pub bytes_read: u64,
    pub bytes_sent: u64,
    pub bytes_written: u64,
    pub blocks_written: u64,
    pub files: u64,
    pub files_changed: u64,
    pub files_deleted: u64,
    pub duration_ms: u64,
    pub snapshot_bytes: u64,
    pub host: String,
    pub state: String,
    /// A roll-forward snapshot's base backup.
    #[serde(default)]
    pub base: Option<String>,
    /// "verified", "failed" or "pending".
    #[serde(default)]
    pub verification: String,
    #[serde(default)]
    pub receipt: Option<Receipt>,
}

/// A snapshot's verification receipt, as `walvault backups --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Receipt {
    pub verified: bool,
    pub checks: Vec<String>,
    pub first_query_ms: u64,
    pub duration_ms: u64,
    pub tables: u64,
    pub indexes: u64,
    pub errors: Vec<String>,
}

impl BackupInfo {
    pub fn start(&self) -> Lsn {
        parse_lsn(&self.start_lsn)
    }

    pub fn stop(&self) -> Lsn {
        parse_lsn(
            self.stop_lsn
                .as_deref()
                .unwrap_or_else(|| panic!("backup {} has no stop_lsn: {self:?}", self.id)),
        )
    }
}

fn parse_lsn(s: &str) -> Lsn {
    s.parse()
        .unwrap_or_else(|e| panic!("{s:?} is not an LSN like 0/2000028: {e:?}"))
}

/// `walvault backup --json --conninfo <pg> <extra…>` as the agent (run as `postgres`).
pub fn run_backup(agent: &Client, pg: &Pg, extra: &[&str]) -> Run {
    agent.run(
        &backup_args(pg, extra)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )
}

/// The arguments of [`run_backup`], for a backup started in the background.
pub fn backup_args(pg: &Pg, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "backup".into(),
        "--json".into(),
        "--conninfo".into(),
        pg.conninfo(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// [`run_backup`], asserting success; the printed BackupInfo.
pub fn backup_ok(agent: &Client, pg: &Pg, extra: &[&str]) -> BackupInfo {
    let r = run_backup(agent, pg, extra);
    assert!(r.success(), "walvault backup failed: {}", r.describe());
    parse_info(&r.stdout)
}

/// Parses the one JSON object `walvault backup --json` prints.
pub fn parse_info(stdout: &str) -> BackupInfo {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("`walvault backup --json` did not print one BackupInfo object ({e}):\n{stdout}")
    })
}

/// `walvault [--cluster C] backups --json`, oldest first.
pub fn list_backups(client: &Client, cluster: Option<&str>) -> Vec<BackupInfo> {
    let mut args = Vec::new();
    if let Some(c) = cluster {
        args.extend_from_slice(&["--cluster", c]);
    }
    args.extend_from_slice(&["backups", "--json"]);
    let out = client.ok(&args);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| {
        panic!("`walvault backups --json` did not print an array of BackupInfo ({e}):\n{out}")
    })
}

/// Runs a zfs command that changes datasets under the machine-wide zfs-fuse lock the server
/// also takes, retrying for a while when zfs-fuse says the dataset is busy.
pub fn zfs_mutate(log: &Log, args: &[&str]) -> Run {
    use fs2::FileExt;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(ZFS_FUSE_LOCK)
            .unwrap_or_else(|e| panic!("open {ZFS_FUSE_LOCK}: {e}"));
        lock.lock_exclusive()
            .unwrap_or_else(|e| panic!("lock {ZFS_FUSE_LOCK}: {e}"));
        let quiet = Log::new(PathBuf::from("/dev/null"));
        let r = run(&quiet, Command::new("zfs").args(args), ZFS_TIMEOUT);
        drop(lock);
        if r.success() || !r.stderr.contains("busy") || Instant::now() > deadline {
            log.line(&format!(
                "$ {} ({attempts} attempts, under {ZFS_FUSE_LOCK})\n  -> {:?} {}",
                r.argv,
                r.code,
                r.stderr.trim()
            ));
            return r;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Where a backup's snapshot of one dataset is.
#[derive(Debug, Clone)]
enum SnapshotSource {
    /// `<dataset>@<id>`.
    Zfs(String),
    /// The `dir` backend's copy: `<dataset dir>/.walvault-snapshots/<id>/data`.
    Dir(PathBuf),
}

impl Storage {
    /// The root dataset of a cluster's backups (`<pool>/walvault/<tenant>/<cluster>/db`);
    /// `None` on the `dir` backend.
    pub fn db_dataset(&self, cluster: &str) -> Option<String> {
        match self {
            Self::Zfs(pool) => Some(format!("{}/walvault/{cluster}/db", pool.name())),
            Self::Dir(_) => None,
        }
    }

    /// The server's copy of the cluster's PGDATA (its `db/data` dataset).
    pub fn data_copy_dir(&self, cluster: &str) -> PathBuf {
        self.db_dir(cluster).join("data")
    }

    fn db_dir(&self, cluster: &str) -> PathBuf {
        match self {
            Self::Zfs(pool) => pool.mountpoint().join("walvault").join(cluster).join("db"),
            Self::Dir(root) => root.join(cluster).join("db"),
        }
    }

    /// Every snapshot under the cluster's `db` dataset, as `<dataset>@<name>` (relative to
    /// `db` on the `dir` backend). Empty when `db` does not exist.
    pub fn db_snapshots(&self, log: &Log, cluster: &str) -> Vec<String> {
        match self {
            Self::Zfs(_) => {
                let db = self.db_dataset(cluster).expect("zfs");
                let r = run(
                    log,
                    Command::new("zfs")
                        .args(["list", "-H", "-o", "name", "-t", "snapshot", "-r", &db]),
                    ZFS_TIMEOUT,
                );
                if !r.success() {
                    assert!(
                        r.stderr.contains("does not exist"),
                        "zfs list failed: {}",
                        r.describe()
                    );
                    return Vec::new();
                }
                r.stdout.lines().map(str::to_owned).collect()
            }
            Self::Dir(_) => {
                let mut out = Vec::new();
                dir_snapshots(&self.db_dir(cluster), "db", &mut out);
                out.sort();
                out
            }
        }
    }

    /// `createtxg` of `<db>/<rel>@<id>` (ZFS only): equal values mean one atomic snapshot.
    pub fn snapshot_createtxg(&self, log: &Log, cluster: &str, rel: &str, id: &str) -> u64 {
        let db = self
            .db_dataset(cluster)
            .expect("createtxg exists on ZFS only");
        let snap = if rel.is_empty() {
            format!("{db}@{id}")
        } else {
            format!("{db}/{rel}@{id}")
        };
        run_ok(
            log,
            Command::new("zfs").args(["get", "-H", "-p", "-o", "value", "createtxg", &snap]),
            ZFS_TIMEOUT,
        )
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("createtxg of {snap} is not a number: {e}"))
    }

    /// The tablespace datasets of the cluster (`db/tblspc/<oid>`), by OID.
    pub fn tablespace_datasets(&self, log: &Log, cluster: &str) -> Vec<u32> {
        let mut oids: Vec<u32> = match self {
            Self::Zfs(_) => {
                let parent = format!("{}/tblspc", self.db_dataset(cluster).expect("zfs"));
                let r = run(
                    log,
                    Command::new("zfs").args([
                        "list",
                        "-H",
                        "-o",
                        "name",
                        "-t",
                        "filesystem",
                        "-r",
                        &parent,
                    ]),
                    ZFS_TIMEOUT,
                );
                r.stdout
                    .lines()
                    .filter_map(|l| l.strip_prefix(&format!("{parent}/")))
                    .filter_map(|oid| oid.parse().ok())
                    .collect()
            }
            Self::Dir(_) => std::fs::read_dir(self.db_dir(cluster).join("tblspc"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect(),
        };
        oids.sort_unstable();
        oids
    }

    /// The snapshot of `<db>/<rel>` named `id`, if it exists.
    fn snapshot_source(
        &self,
        log: &Log,
        cluster: &str,
        rel: &str,
        id: &str,
    ) -> Option<SnapshotSource> {
        match self {
            Self::Zfs(_) => {
                let snap = format!("{}/{rel}@{id}", self.db_dataset(cluster).expect("zfs"));
                let r = run(
                    log,
                    Command::new("zfs").args(["list", "-H", "-o", "name", "-t", "snapshot", &snap]),
                    ZFS_TIMEOUT,
                );
                r.success().then_some(SnapshotSource::Zfs(snap))
            }
            Self::Dir(_) => {
                let p = self
                    .db_dir(cluster)
                    .join(rel)
                    .join(".walvault-snapshots")
                    .join(id)
                    .join("data");
                p.is_dir().then_some(SnapshotSource::Dir(p))
            }
        }
    }
}

fn dir_snapshots(dir: &Path, rel: &str, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if name == ".walvault-snapshots" {
            for s in std::fs::read_dir(e.path()).into_iter().flatten().flatten() {
                let s = s.file_name().to_string_lossy().into_owned();
                if !s.starts_with('.') && !s.contains('+') {
                    out.push(format!("{rel}@{s}"));
                }
            }
        } else if e.path().join(".walvault-dataset.json").is_file() {
            dir_snapshots(&e.path(), &format!("{rel}/{name}"), out);
        }
    }
}

/// Writable copies of one backup's datasets (`db/data@id` and each `db/tblspc/<oid>@id`) in
/// the test's own datasets (or directories, on the `dir` backend). On drop, a PostgreSQL
/// still running on it is stopped and the copies are destroyed.
#[derive(Debug)]
pub struct BackupClone {
    pub id: String,
    /// The copy of PGDATA.
    pub data: PathBuf,
    /// The copy of each tablespace's directory, by OID.
    pub tablespaces: BTreeMap<u32, PathBuf>,
    /// Datasets we created, in the order to destroy them.
    datasets: Vec<String>,
    /// Directories we copied into (`dir` backend).
    dirs: Vec<PathBuf>,
    log: Log,
}

impl BackupClone {
    /// Clones backup `id` of `cluster`: PGDATA at `data`, tablespace `<oid>` at
    /// `<tblspc_base>-<oid>`.
    pub fn create(
        td: &TestDir,
        storage: &Storage,
        cluster: &str,
        id: &str,
        data: &Path,
        tblspc_base: &str,
    ) -> Self {
        let log = td.log().clone();
        let mut clone = Self {
            id: id.to_owned(),
            data: data.to_owned(),
            tablespaces: BTreeMap::new(),
            datasets: Vec::new(),
            dirs: Vec::new(),
            log: log.clone(),
        };
        let clone_name = format!(
            "{}-{}",
            data.parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            data.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let src = storage
            .snapshot_source(&log, cluster, "data", id)
            .unwrap_or_else(|| panic!("backup {id} of {cluster} has no snapshot of db/data"));
        clone.clone_one(storage, &src, data, &clone_name);
        for oid in storage.tablespace_datasets(&log, cluster) {
            let Some(src) = storage.snapshot_source(&log, cluster, &format!("tblspc/{oid}"), id)
            else {
                continue;
            };
            let at = PathBuf::from(format!("{tblspc_base}-{oid}"));
            clone.clone_one(storage, &src, &at, &format!("{clone_name}-tblspc-{oid}"));
            clone.tablespaces.insert(oid, at);
        }
        clone
    }

    fn clone_one(&mut self, storage: &Storage, src: &SnapshotSource, at: &Path, name: &str) {
        match (storage, src) {
            (Storage::Zfs(pool), SnapshotSource::Zfs(snap)) => {
                let target = format!("{}/wvt-clones/{name}", pool.name());
                let r = zfs_mutate(
                    &self.log,
                    &[
                        "clone",
                        "-p",
                        "-o",
                        &format!("mountpoint={}", at.display()),
                        snap,
                        &target,
                    ],
                );
                assert!(r.success(), "cloning {snap}: {}", r.describe());
                self.datasets.push(target);
                assert!(
                    at.is_dir(),
                    "the clone of {snap} is not mounted at {}",
                    at.display()
                );
            }
            (Storage::Dir(_), SnapshotSource::Dir(dir)) => {
                std::fs::create_dir_all(at)
                    .unwrap_or_else(|e| panic!("create {}: {e}", at.display()));
                self.dirs.push(at.to_owned());
                run_ok(
                    &self.log,
                    Command::new("cp")
                        .arg("-a")
                        .arg(format!("{}/.", dir.display()))
                        .arg(at),
                    ZFS_TIMEOUT,
                );
                // The dir backend's snapshot keeps the files' owners and modes but not its top
                // directory's (made by the backend, root 0755), which ZFS keeps: give the copy
                // what the live dataset's top directory has (postgres, 0700).
                super::chown_postgres(at);
                super::chmod(at, 0o700);
            }
            _ => unreachable!("snapshot source of another backend"),
        }
    }

    /// All areas of the clone: `("data", path)` and `("tblspc/<oid>", path)`.
    pub fn areas(&self) -> Vec<(String, PathBuf)> {
        let mut v = vec![("data".to_owned(), self.data.clone())];
        for (oid, p) in &self.tablespaces {
            v.push((format!("tblspc/{oid}"), p.clone()));
        }
        v
    }
}

impl Drop for BackupClone {
    fn drop(&mut self) {
        // A PostgreSQL still running on the clone keeps it busy: stop it first.
        if self.data.join("postmaster.pid").exists() {
            let _ = run(
                &self.log,
                Command::new("runuser")
                    .args(["-u", PG_USER, "--"])
                    .arg(Path::new(super::pg::PG_BIN).join("pg_ctl"))
                    .arg("-D")
                    .arg(&self.data)
                    .args(["-w", "-m", "immediate", "stop"])
                    .current_dir("/"),
                Duration::from_secs(120),
            );
        }
        for ds in self.datasets.iter().rev() {
            let r = zfs_mutate(&self.log, &["destroy", ds]);
            if !r.success() {
                // The pool's own cleanup destroys whatever is left.
                eprintln!("could not destroy the clone {ds}: {}", r.describe());
            }
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Where recovery of a restored backup stops.
#[derive(Debug, Clone)]
pub enum Target {
    /// `recovery_target = 'immediate'`: as soon as the backup is consistent.
    Immediate,
    /// `recovery_target_name = '<name>'`, a `pg_create_restore_point`.
    Name(String),
}

/// A backup turned into a running PostgreSQL by hand: its snapshots cloned, `tablespace_map`
/// pointed at the cloned tablespaces, WAL fetched with `walvault wal-fetch`, recovered to a
/// target and promoted. Drops PostgreSQL first, then the clones.
#[derive(Debug)]
pub struct Restored {
    pub pg: Pg,
    pub clone: BackupClone,
}

impl Restored {
    /// Clones backup `id` of `cluster` and starts PostgreSQL on it (instance `name`, in
    /// `<testdir>/pg-<name>`); returns once recovery reached `target` and the instance was
    /// promoted.
    pub fn start(
        td: &TestDir,
        storage: &Storage,
        cluster: &str,
        id: &str,
        name: &str,
        agent: &Client,
        target: &Target,
    ) -> Self {
        let pg = Pg::empty(td, name);
        let pg_dir = pg
            .data_dir()
            .parent()
            .expect("data directory in an instance directory")
            .to_owned();
        let clone = BackupClone::create(
            td,
            storage,
            cluster,
            id,
            pg.data_dir(),
            &pg_dir.join("tblspc").to_string_lossy(),
        );
        let mut restored = Self { pg, clone };
        restored.prepare(agent, target);
        // pg_ctl -w returns as soon as recovery started (without hot standby): wait for the
        // end of recovery and the promotion, or for PostgreSQL to give up.
        restored.pg.start();
        super::wait_until(
            &format!("{name} to finish recovery and be promoted (see pg-{name}/postgres.log)"),
            Duration::from_secs(300),
            || {
                let r = restored.pg.try_psql("SELECT pg_is_in_recovery()");
                if r.success() && r.stdout.trim() == "f" {
                    return Some(());
                }
                let log = restored.pg.server_log();
                if log.contains("database system is shut down") || log.contains(" PANIC: ") {
                    panic!("the restored instance {name} stopped during recovery:\n{log}");
                }
                None
            },
        );
        let log = restored.pg.server_log();
        match target {
            Target::Immediate => assert!(
                log.contains("consistent recovery state reached"),
                "{name} never logged `consistent recovery state reached`"
            ),
            Target::Name(n) => assert!(
                log.contains(&format!("recovery stopping at restore point \"{n}\"")),
                "{name} did not stop at restore point {n:?}"
            ),
        }
        restored
    }

    fn prepare(&mut self, agent: &Client, target: &Target) {
        let data = &self.clone.data;
        let map_path = data.join("tablespace_map");
        if map_path.exists() {
            let text = std::fs::read_to_string(&map_path)
                .unwrap_or_else(|e| panic!("read {}: {e}", map_path.display()));
            let mut out = String::new();
            for line in text.lines().filter(|l| !l.is_empty()) {
                let (oid, _) = line.split_once(' ').unwrap_or_else(|| {
                    panic!("tablespace_map line {line:?} is not `<oid> <path>`")
                });
                let oid_n: u32 = oid
                    .parse()
                    .unwrap_or_else(|_| panic!("tablespace_map line {line:?}: bad OID"));
                let at = self.clone.tablespaces.get(&oid_n).unwrap_or_else(|| {
                    panic!(
                        "tablespace_map names tablespace {oid} but the backup has no \
                         snapshot of db/tblspc/{oid}"
                    )
                });
                out.push_str(&format!("{oid} {}\n", at.display()));
            }
            self.clone.log.line(&format!(
                "tablespace_map of the clone was:\n{text}rewritten to:\n{out}"
            ));
            self.pg.write_file_in_data("tablespace_map", &out);
        }
        let mut conf = vec![
            "archive_mode = off".to_owned(),
            format!(
                "restore_command = '{}'",
                agent.shell_command("wal-fetch %f %p")
            ),
            "recovery_target_action = 'promote'".to_owned(),
            "hot_standby = off".to_owned(),
        ];
        match target {
            Target::Immediate => conf.push("recovery_target = 'immediate'".to_owned()),
            Target::Name(n) => conf.push(format!("recovery_target_name = '{n}'")),
        }
        self.pg.append_conf(&conf);
        self.pg.write_file_in_data("recovery.signal", "");
        // Ownership and modes are the server's job: we change none (a wrong owner or mode
        // of the data directory fails the start). PostgreSQL needs an (empty) pg_wal.
        let pg_wal = self.clone.data.join("pg_wal");
        assert!(
            pg_wal.is_dir(),
            "the backup has no {} directory",
            pg_wal.display()
        );
    }
}

/// The 8 KiB blocks in which two clones differ: every block of every regular file in every
/// area, compared byte for byte; a block only one side has counts as changed.
pub fn changed_blocks(a: &BackupClone, b: &BackupClone) -> u64 {
    let areas_a: BTreeMap<String, PathBuf> = a.areas().into_iter().collect();
    let areas_b: BTreeMap<String, PathBuf> = b.areas().into_iter().collect();
    let mut names: Vec<&String> = areas_a.keys().chain(areas_b.keys()).collect();
    names.sort();
    names.dedup();
    let mut changed = 0;
    for area in names {
        let fa = areas_a.get(area).map(|p| files_of(p)).unwrap_or_default();
        let fb = areas_b.get(area).map(|p| files_of(p)).unwrap_or_default();
        let mut rels: Vec<&String> = fa.keys().chain(fb.keys()).collect();
        rels.sort();
        rels.dedup();
        for rel in rels {
            changed += differing_blocks(
                fa.get(rel).map(PathBuf::as_path),
                fb.get(rel).map(PathBuf::as_path),
            );
        }
    }
    changed
}

/// Regular files under `root`, by path relative to it.
fn files_of(root: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, PathBuf>) {
        let rd = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if name == ".zfs" || name.starts_with(".walvault-") {
                continue;
            }
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                walk(root, &p, out);
            } else if ft.is_file() {
                let rel = p
                    .strip_prefix(root)
                    .expect("under root")
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn read_block(r: &mut Option<std::fs::File>, buf: &mut [u8]) -> usize {
    let Some(f) = r else { return 0 };
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read: {e}"),
        }
    }
    n
}

fn differing_blocks(a: Option<&Path>, b: Option<&Path>) -> u64 {
    let open = |p: Option<&Path>| {
        p.map(|p| std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display())))
    };
    let (mut fa, mut fb) = (open(a), open(b));
    let (mut ba, mut bb) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    let mut changed = 0;
    loop {
        let na = read_block(&mut fa, &mut ba);
        let nb = read_block(&mut fb, &mut bb);
        if na == 0 && nb == 0 {
            return changed;
        }
        if na != nb || ba[..na] != bb[..nb] {
            changed += 1;
        }
    }
}

/// The cluster the backup tests work on.
pub const CLUSTER: &str = "acme/db1";

/// A walvault deployment with tenant `acme`, cluster [`CLUSTER`], its agent (run as
/// `postgres`) and a PostgreSQL 15 primary archiving into it. Fields drop in declaration
/// order: PostgreSQL, then the server, then the storage, then the test directory.
#[derive(Debug)]
pub struct Deployment {
    pub primary: Pg,
    pub agent: Client,
    pub wv: super::Walvault,
    pub storage: Storage,
    /// A small file system the catalog lives on, when the test runs out of space there.
    pub catalog_disk: Option<super::loopfs::LoopFs>,
    pub td: TestDir,
}

impl Deployment {
    /// `None` (skipped) when PostgreSQL or ZFS are missing. With `scale`, the primary holds a
    /// pgbench database of that scale (`pgbench -i -s <scale>`: about 16 MB per unit).
    pub fn start(name: &str, scale: Option<u32>) -> Option<Self> {
        Self::start_with(name, scale, "")
    }

    /// As `start`, with `extra_toml` appended to the server's configuration.
    pub fn start_with(name: &str, scale: Option<u32>, extra_toml: &str) -> Option<Self> {
        Self::start_on(name, scale, extra_toml, false)
    }

    /// As `start_with`, on the `dir` storage backend whatever `WALVAULT_TEST_STORAGE` says
    /// when `dir` is set: for what must hold on both backends.
    pub fn start_on(name: &str, scale: Option<u32>, extra_toml: &str, dir: bool) -> Option<Self> {
        Self::start_custom(name, scale, extra_toml, dir, None)
    }

    /// As `start_on`, with the catalog on a file system of its own of `catalog_mib` MiB
    /// ([`Deployment::catalog_disk`]).
    pub fn start_custom(
        name: &str,
        scale: Option<u32>,
        extra_toml: &str,
        dir: bool,
        catalog_mib: Option<u64>,
    ) -> Option<Self> {
        if !super::e2e_ready() {
            return None;
        }
        let td = TestDir::new(name);
        // Where Walvault puts the catalog: mounted first, so the catalog lands on it.
        let catalog_disk = catalog_mib.map(|mib| super::loopfs::LoopFs::mount(&td, "catalog", mib));
        let storage = if dir {
            Storage::Dir(td.mkdir("storage"))
        } else {
            Storage::create(&td)?
        };
        let wv = super::Walvault::start_with(&td, &storage, extra_toml);
        wv.tenant_create("acme", None);
        wv.cluster_create(CLUSTER);
        let agent = wv.agent(CLUSTER);
        let mut primary = Pg::init(&td, "primary", &super::wal::archive_conf(&agent));
        primary.start();
        if let Some(s) = scale {
            primary.pgbench(&["-i", "-s", &s.to_string(), "-q"]);
        }
        Some(Self {
            primary,
            agent,
            wv,
            storage,
            catalog_disk,
            td,
        })
    }

    /// `pg_database_size('postgres')`: what a backup reads at least.
    pub fn database_size(&self) -> u64 {
        self.primary
            .psql("SELECT pg_database_size('postgres')")
            .parse()
            .expect("a number")
    }

    /// Creates restore point `name`, completes its WAL segment and waits until the archive
    /// has it: recovery to `name` can then run from the archive alone.
    pub fn restore_point_archived(&self, name: &str) {
        self.primary
            .psql(&format!("SELECT pg_create_restore_point('{name}')"));
        let seg = self.primary.switch_wal();
        self.primary.wait_archived(&seg, Duration::from_secs(300));
    }

    /// Starts backup `id` as instance `name`, recovered to `target`.
    pub fn restore(&self, id: &str, name: &str, target: &Target) -> Restored {
        Restored::start(
            &self.td,
            &self.storage,
            CLUSTER,
            id,
            name,
            &self.agent,
            target,
        )
    }

    /// A read-only look at backup `id`'s files: clones under `<testdir>/<name>/`.
    pub fn clone_backup(&self, id: &str, name: &str) -> BackupClone {
        let dir = self.td.mkdir(name);
        BackupClone::create(
            &self.td,
            &self.storage,
            CLUSTER,
            id,
            &dir.join("data"),
            &dir.join("tblspc").to_string_lossy(),
        )
    }

    /// Snapshots under the cluster's `db` dataset.
    pub fn snapshots(&self) -> Vec<String> {
        self.storage.db_snapshots(self.td.log(), CLUSTER)
    }
}
