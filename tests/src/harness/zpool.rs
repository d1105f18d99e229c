//! A file-backed zfs-fuse pool per test, destroyed on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::{run, run_ok, skip, Log, TestDir};

static NEXT: AtomicUsize = AtomicUsize::new(0);
/// zfs-fuse is one daemon for the whole machine and has hung under concurrent pool creation
/// and destruction: this process does those one at a time.
static POOL_OPS: Mutex<()> = Mutex::new(());

fn pool_ops() -> MutexGuard<'static, ()> {
    POOL_OPS.lock().unwrap_or_else(|e| e.into_inner())
}
const ZFS_TIMEOUT: Duration = Duration::from_secs(60);

/// `Err(reason)` when `zpool`/`zfs` are missing or the zfs-fuse daemon does not answer.
pub(super) fn check_zfs() -> Result<(), String> {
    for tool in ["zpool", "zfs"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!("`{tool}` is not installed (zfs-fuse)"));
        }
    }
    match Command::new("zpool").arg("list").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`zpool list` fails, is the zfs-fuse daemon running? {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run `zpool list`: {e}")),
    }
}

/// zfs-fuse (one daemon for the machine) has deadlocked when two tests created or destroyed
/// datasets at the same time, taking every later test down with it. So tests that use ZFS
/// run one at a time, across processes too (`cargo nextest`), by an exclusive lock on
/// `<base>/.zfs.lock`; `WALVAULT_TEST_ZFS_PARALLEL=1` turns that off.
fn zfs_lock(dir: &TestDir) -> Option<std::fs::File> {
    use fs2::FileExt;
    if std::env::var_os("WALVAULT_TEST_ZFS_PARALLEL").is_some() {
        return None;
    }
    let base = dir
        .path()
        .parent()
        .expect("test directories live in a base directory");
    let path = base.join(".zfs.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    if file.try_lock_exclusive().is_err() {
        dir.log()
            .line("waiting for the zfs lock (another test uses zfs-fuse)");
        file.lock_exclusive()
            .unwrap_or_else(|e| panic!("lock {}: {e}", path.display()));
    }
    dir.log().line("holding the zfs lock");
    Some(file)
}

#[derive(Debug)]
pub struct Zpool {
    name: String,
    mountpoint: PathBuf,
    log: Log,
    /// Held until the pool is destroyed (fields drop after `Drop::drop`).
    _lock: Option<std::fs::File>,
}

/// The size of the pools the harness creates, in GiB.
pub fn pool_gib() -> u64 {
    std::env::var("WALVAULT_TEST_POOL_GIB")
        .ok()
        .and_then(|g| g.parse().ok())
        .filter(|g| *g > 0)
        .unwrap_or(1)
}

impl Zpool {
    /// A sparse-file pool named `wvt<pid><n>`, mounted at `<testdir>/mnt`: 1 GiB, or
    /// `WALVAULT_TEST_POOL_GIB` GiB (for benchmarks with more data). `None` (after [`skip`])
    /// when ZFS is not usable here.
    pub fn create(dir: &TestDir) -> Option<Self> {
        if let Err(reason) = check_zfs() {
            skip(&reason);
            return None;
        }
        let lock = zfs_lock(dir);
        let name = format!(
            "wvt{}{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let vdev = dir.join("pool.img");
        std::fs::File::create(&vdev)
            .and_then(|f| f.set_len(pool_gib() << 30))
            .unwrap_or_else(|e| panic!("create sparse vdev {}: {e}", vdev.display()));
        let mountpoint = dir.join("mnt");
        let _serial = pool_ops();
        run_ok(
            dir.log(),
            Command::new("zpool")
                .args(["create", "-m"])
                .arg(&mountpoint)
                .arg(&name)
                .arg(&vdev),
            ZFS_TIMEOUT,
        );
        // The pool's root directory must be traversable by `postgres` too.
        if let Err(e) =
            std::fs::set_permissions(&mountpoint, std::fs::Permissions::from_mode(0o755))
        {
            panic!(
                "the new pool's mountpoint {} is not usable ({e}): is the zfs-fuse daemon healthy?",
                mountpoint.display()
            );
        }
        Some(Self {
            name,
            mountpoint,
            log: dir.log().clone(),
            _lock: lock,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pool's mountpoint (`<testdir>/mnt`).
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// `zfs create -p <pool>/<rel>`; returns its mountpoint.
    pub fn create_dataset(&self, rel: &str) -> PathBuf {
        let ds = format!("{}/{rel}", self.name);
        run_ok(
            &self.log,
            Command::new("zfs").args(["create", "-p", &ds]),
            ZFS_TIMEOUT,
        );
        self.dataset_mountpoint(&ds)
    }

    /// The mountpoint of a dataset, by its full name.
    pub fn dataset_mountpoint(&self, dataset: &str) -> PathBuf {
        PathBuf::from(self.get(dataset, "mountpoint"))
    }

    /// `zfs get -Hp -o value <property> <dataset>`.
    pub fn get(&self, dataset: &str, property: &str) -> String {
        run_ok(
            &self.log,
            Command::new("zfs").args(["get", "-Hp", "-o", "value", property, dataset]),
            ZFS_TIMEOUT,
        )
        .trim()
        .to_owned()
    }

    /// Every dataset of the pool (recursive), with the pool itself.
    pub fn datasets(&self) -> Vec<String> {
        run_ok(
            &self.log,
            Command::new("zfs")
                .args(["list", "-H", "-o", "name", "-t", "filesystem", "-r"])
                .arg(&self.name),
            ZFS_TIMEOUT,
        )
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// Runs a zfs/zpool command until it succeeds, retrying while zfs-fuse says "busy" (it
    /// keeps a dataset busy for about a second after its files are closed).
    fn retry_busy(&self, program: &str, args: &[&str]) -> Result<(), String> {
        // Minutes, not seconds: a benchmark's pool of hundreds of datasets stays busy longer.
        let deadline = Instant::now() + Duration::from_secs(180);
        // The retries themselves would drown the log: only the outcome is logged.
        let quiet = Log::new(PathBuf::from("/dev/null"));
        let mut attempts = 0;
        loop {
            attempts += 1;
            let r = run(&quiet, Command::new(program).args(args), ZFS_TIMEOUT);
            let busy = r.stderr.contains("busy");
            if r.success() || !busy || Instant::now() > deadline {
                self.log.line(&format!(
                    "$ {} ({attempts} attempts)\n  -> {:?} {}",
                    r.argv,
                    r.code,
                    r.stderr.trim()
                ));
                return if r.success() {
                    Ok(())
                } else {
                    Err(r.describe())
                };
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn destroy(&self) -> Result<(), String> {
        let _serial = pool_ops();
        let list = run(
            &self.log,
            Command::new("zfs")
                .args(["list", "-H", "-o", "name", "-d", "1", "-t", "filesystem"])
                .arg(&self.name),
            ZFS_TIMEOUT,
        );
        if list.success() {
            // zfs-fuse cannot destroy a pool whose datasets are still busy: empty it first.
            for ds in list.stdout.lines().filter(|d| *d != self.name) {
                self.retry_busy("zfs", &["destroy", "-R", ds])?;
            }
        }
        self.retry_busy("zpool", &["destroy", &self.name])
    }
}

impl Drop for Zpool {
    fn drop(&mut self) {
        if std::thread::panicking() && std::env::var_os("WALVAULT_TEST_KEEP_POOLS").is_some() {
            eprintln!("kept pool {} (WALVAULT_TEST_KEEP_POOLS)", self.name);
            return;
        }
        if let Err(e) = self.destroy() {
            let msg = format!("could not destroy pool {}: {e}", self.name);
            self.log.line(&msg);
            if std::thread::panicking() {
                eprintln!("{msg}");
            } else {
                panic!("{msg}");
            }
        }
    }
}

/// Where a test's walvault server keeps its data: a fresh zfs-fuse pool (the default), or,
/// with `WALVAULT_TEST_STORAGE=dir`, a plain directory (the server's `dir` backend, for
/// machines without ZFS).
#[derive(Debug)]
pub enum Storage {
    Zfs(Zpool),
    Dir(PathBuf),
}

impl Storage {
    pub fn dir_requested() -> bool {
        std::env::var("WALVAULT_TEST_STORAGE").is_ok_and(|v| v == "dir")
    }

    /// `None` (after [`skip`]) when ZFS is wanted but not usable.
    pub fn create(td: &TestDir) -> Option<Self> {
        if Self::dir_requested() {
            return Some(Self::Dir(td.mkdir("storage")));
        }
        Zpool::create(td).map(Self::Zfs)
    }

    /// The server's `--storage` argument: `zfs:<pool>/walvault` or `dir:<testdir>/storage`.
    pub fn spec(&self) -> String {
        match self {
            Self::Zfs(pool) => format!("zfs:{}/walvault", pool.name()),
            Self::Dir(root) => format!("dir:{}", root.display()),
        }
    }

    /// The directory holding a cluster's archived WAL (`<root>/<tenant>/<cluster>/wal`).
    pub fn wal_dir(&self, cluster: &str) -> PathBuf {
        match self {
            Self::Zfs(pool) => {
                pool.dataset_mountpoint(&format!("{}/walvault/{cluster}/wal", pool.name()))
            }
            Self::Dir(root) => root.join(cluster).join("wal"),
        }
    }

    /// The files at the top of a cluster's WAL directory: the archive's content.
    /// Subdirectories (e.g. for incoming files) and the `dir` backend's own property file are
    /// left out.
    pub fn archive_files(&self, cluster: &str) -> Vec<String> {
        let wal_dir = self.wal_dir(cluster);
        let mut names: Vec<String> = std::fs::read_dir(&wal_dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", wal_dir.display()))
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !(matches!(self, Self::Dir(_)) && n == ".walvault-dataset.json"))
            .collect();
        names.sort();
        names
    }
}
