//! File-system chores of the dir backend: durable JSON, fsync of files and trees, copies
//! (reflink when the file system can), disk usage, and removal.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::super::{DatasetPath, StorageError};
use super::{PATHS_PER_CP, RESERVED_PREFIX};
use crate::process;

/// A process-unique suffix for temporary names.
pub(super) fn scratch_suffix() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

pub(super) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StorageError {
    let context = context.into();
    move |e| StorageError::io(context, e)
}

pub(super) fn fsync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("fsync directory {}", dir.display())))
}

/// Writes `value` as JSON to `path` durably: temp file, fsync, rename, fsync directory.
pub(super) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StorageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!("{name}.tmp.{}", scratch_suffix()));
    let json = serde_json::to_vec_pretty(value).map_err(|e| StorageError::Parse {
        what: path.display().to_string(),
        detail: format!("cannot serialise: {e}"),
    })?;
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(StorageError::io(format!("write {}", tmp.display()), e));
    }
    fs::rename(&tmp, path).map_err(io_err(format!(
        "rename {} to {}",
        tmp.display(),
        path.display()
    )))?;
    fsync_dir(dir)
}

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, std::io::Error> {
    let bytes = fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(|e| std::io::Error::new(ErrorKind::InvalidData, e))
}

/// Bytes allocated on disk under `path` (not following symlinks; hard links counted once).
pub(super) fn disk_usage(path: &Path) -> Result<u64, StorageError> {
    fn walk(path: &Path, seen: &mut HashSet<(u64, u64)>) -> Result<u64, StorageError> {
        let meta = match fs::symlink_metadata(path) {
            Ok(m) => m,
            // Something deleted while we walk is simply not counted.
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StorageError::io(format!("stat {}", path.display()), e)),
        };
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert((meta.dev(), meta.ino())) {
            return Ok(0);
        }
        let mut total = meta.blocks() * 512;
        if meta.is_dir() {
            let entries = match fs::read_dir(path) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound => return Ok(total),
                Err(e) => return Err(StorageError::io(format!("list {}", path.display()), e)),
            };
            for entry in entries {
                let entry = entry.map_err(io_err(format!("list {}", path.display())))?;
                total += walk(&entry.path(), seen)?;
            }
        }
        Ok(total)
    }
    walk(path, &mut HashSet::new())
}

/// Free bytes on the file system holding `path`, from POSIX `df -P -k` (std has no statvfs and
/// this crate forbids the unsafe code libc's would need).
pub(super) fn filesystem_available(path: &Path) -> Result<u64, StorageError> {
    let out = process::run_stdout(Command::new("df").arg("-P").arg("-k").arg(path))?;
    let what = format!("df -P -k {}", path.display());
    let line = out.lines().nth(1).ok_or_else(|| StorageError::Parse {
        what: what.clone(),
        detail: format!("no data line in {out:?}"),
    })?;
    // Filesystem 1024-blocks Used Available Capacity Mounted-on: the device name may hold
    // spaces, so find the Capacity column ("NN%") and take the one before it.
    let fields: Vec<&str> = line.split_whitespace().collect();
    let capacity = fields
        .iter()
        .position(|f| f.ends_with('%') && f[..f.len() - 1].chars().all(|c| c.is_ascii_digit()))
        .filter(|i| *i >= 3);
    let kib = capacity
        .and_then(|i| fields[i - 1].parse::<u64>().ok())
        .ok_or_else(|| StorageError::Parse {
            what,
            detail: format!("no available-KiB column in {line:?}"),
        })?;
    Ok(kib * 1024)
}

/// Copies `sources` (files or directories) into the existing directory `dest`, preserving
/// everything, sharing blocks where the file system can.
pub(super) fn copy_into(sources: &[PathBuf], dest: &Path) -> Result<(), StorageError> {
    for chunk in sources.chunks(PATHS_PER_CP) {
        let mut cmd = Command::new("cp");
        cmd.args(["-a", "--reflink=auto", "--"])
            .args(chunk)
            .arg(dest);
        process::run(&mut cmd)?;
    }
    Ok(())
}

/// fsyncs every file and directory under `path`: `cp` does not, and a snapshot or clone is only
/// reported done once its content is durable.
pub(super) fn fsync_tree(path: &Path) -> Result<(), StorageError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(format!("stat {}", path.display())))?;
    if meta.is_dir() {
        for entry in fs::read_dir(path).map_err(io_err(format!("list {}", path.display())))? {
            let entry = entry.map_err(io_err(format!("list {}", path.display())))?;
            fsync_tree(&entry.path())?;
        }
        fsync_dir(path)
    } else if meta.is_file() {
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(io_err(format!("fsync {}", path.display())))
    } else {
        Ok(()) // symlinks and special files have no data of their own
    }
}

pub(super) fn remove_path(path: &Path) -> Result<(), StorageError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StorageError::io(format!("stat {}", path.display()), e)),
    };
    let result = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    result.map_err(io_err(format!("remove {}", path.display())))
}

/// Moves `path` out of sight atomically (into `<its dir>/<trash_name>`), then deletes it; a
/// crash in between leaves only a reserved name behind.
pub(super) fn discard(path: &Path, trash_name: &str) -> Result<(), StorageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let trash = dir.join(trash_name);
    fs::rename(path, &trash).map_err(io_err(format!(
        "move {} to {}",
        path.display(),
        trash.display()
    )))?;
    fsync_dir(dir)?;
    if let Err(e) = remove_path(&trash) {
        tracing::warn!(path = %trash.display(), error = %e, "could not delete discarded data; it is safe to delete by hand");
    }
    Ok(())
}

pub(super) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

pub(super) fn check_leaf(path: &DatasetPath) -> Result<(), StorageError> {
    match path.leaf() {
        Some(leaf) if leaf.starts_with(RESERVED_PREFIX) => {
            Err(StorageError::InvalidName(leaf.to_owned()))
        }
        _ => Ok(()),
    }
}
