//! Machine-wide serialisation of `zfs`/`zpool` commands on zfs-fuse.
//!
//! zfs-fuse deadlocks when several processes create, mount or destroy datasets at the same
//! time: the new file system's FUSE INIT is never answered, every later request to it hangs
//! in the kernel (`fuse_get_req`), and the daemon stays wedged until restarted. Seen here with
//! four `zpool create` + `zfs create` loops in parallel; the same loops under one exclusive
//! lock ran clean. So on zfs-fuse every command that changes datasets takes an exclusive
//! `flock` on one file shared by all processes (the server, the test harness, scripts with
//! `flock(1)` on the same path). Read-only `zfs get`/`zfs list` do not need it. OpenZFS (a
//! loaded kernel module) needs no lock, and gets none.

use std::fs::File;
use std::path::Path;
use std::sync::OnceLock;

/// The lock file every walvault process agrees on.
pub const LOCK_PATH: &str = "/tmp/.walvault-zfs-fuse.lock";

/// True when the ZFS in use is zfs-fuse (no kernel module).
pub fn needed() -> bool {
    static NEEDED: OnceLock<bool> = OnceLock::new();
    *NEEDED.get_or_init(|| !Path::new("/sys/module/zfs").exists())
}

/// Held while a command runs; released on drop (closing the file releases the flock).
#[derive(Debug)]
pub struct ZfsGuard {
    _file: Option<File>,
}

/// Takes the machine-wide lock when zfs-fuse needs it; waits for other holders.
pub fn lock() -> std::io::Result<ZfsGuard> {
    if !needed() {
        return Ok(ZfsGuard { _file: None });
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_PATH)?;
    file.lock()?;
    Ok(ZfsGuard { _file: Some(file) })
}

/// True for `zfs`/`zpool` subcommands that only read and so may run unlocked.
pub fn is_read_only(args: &[&str]) -> bool {
    matches!(args.first(), Some(&"get") | Some(&"list") | Some(&"status"))
}
