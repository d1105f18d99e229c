//! The end-to-end harness: a directory per test, file-backed zfs-fuse pools, PostgreSQL 15
//! instances run as the `postgres` OS user, the real `walvault-server` process with its
//! certificates, and the `walvault` client. Nothing here is a mock.
//!
//! Drop order matters and follows declaration order in a test: declare the [`TestDir`]
//! first, then the [`Zpool`], the [`Walvault`] deployment and the [`Pg`] instances, so that
//! PostgreSQL stops before the server, the server before its pool is destroyed, and the
//! directory is judged (kept or removed) last.

pub mod backup;
pub mod bench;
mod client;
mod command;
pub mod loopfs;
pub(crate) mod pg;
pub mod restore;
mod server;
mod testdir;
pub mod wal;
mod zpool;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

pub use client::{Client, ClientConfig};
pub use command::{run, run_ok, Log, Run, NOT_ALLOWED};
pub use pg::{Pg, PG_BIN};
pub use server::{binary, Certs, Identity, Server, Walvault};
pub use testdir::TestDir;
pub use zpool::{pool_gib, Storage, Zpool};

/// The OS user PostgreSQL runs as (it refuses to run as root).
pub const PG_USER: &str = "postgres";

/// Reports a missing prerequisite. Locally the test is skipped (the caller returns); with
/// `CI` set a missing tool is a failure, so that CI cannot pass by testing nothing.
pub fn skip(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("end-to-end prerequisite missing (CI is set, so this fails): {reason}");
    }
    eprintln!("SKIPPED: {reason} (run scripts/setup.sh as root)");
}

/// Checks every tool the end-to-end tests need; `false` (after [`skip`]) when one is missing.
pub fn e2e_ready() -> bool {
    let zfs = if Storage::dir_requested() {
        Ok(())
    } else {
        zpool::check_zfs()
    };
    match zfs.and_then(|()| pg::check_postgres()) {
        Ok(()) => true,
        Err(reason) => {
            skip(&reason);
            false
        }
    }
}

/// Polls `cond` until it returns `Some`, or panics after `timeout` naming `what`.
/// Readiness is always polled, never slept for.
pub fn wait_until<T>(what: &str, timeout: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(20);
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Ports handed out by this process are
/// remembered so that parallel tests never get the same one.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0 to find a free port")
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// uid and gid of an OS user, from `id`.
pub fn user_ids(user: &str) -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = std::process::Command::new("id")
            .args([flag, user])
            .output()
            .expect("run id");
        assert!(out.status.success(), "no OS user {user}");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// Gives a file or directory to the `postgres` OS user.
pub fn chown_postgres(path: &std::path::Path) {
    let (uid, gid) = user_ids(PG_USER);
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {} to {PG_USER}: {e}", path.display()));
}

/// Sets a path's permission bits.
pub fn chmod(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Every file under `dir` with its size, mtime and blake3: two listings are equal only if
/// nothing was written there in between.
pub fn file_tree(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime, String)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("read {}: {e}", d.display()))
            .flatten()
        {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).expect("stat");
            if meta.is_dir() {
                stack.push(p);
            } else {
                let hash = blake3::hash(&std::fs::read(&p).unwrap_or_default())
                    .to_hex()
                    .to_string();
                out.insert(p, (meta.len(), meta.modified().expect("mtime"), hash));
            }
        }
    }
    out
}
