//! The cluster's live PGDATA copy on disk: writing blocks in place, deleting, and bringing the
//! manifest back in line with the files after an interrupted session or a catalog rebuild.
//!
//! Only regular files and directories are ever created here (never symlinks), so a path from
//! the manifest joined to an area's root stays inside that root.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use walvault_proto::manifest::{hash_block, BlockHash};
use walvault_proto::{Area, ClusterId, RelPath, BLOCK_SIZE};

use crate::catalog::{Catalog, CatalogError, FileEntry};

/// Files the server writes itself at the root of PGDATA; never part of the manifest.
pub const SERVER_FILES: [&str; 2] = ["backup_label", "tablespace_map"];

/// The OS user that owns the copy, so PostgreSQL can run on a clone of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

impl Owner {
    /// `user`'s ids, when we run as root and the user exists; `None` leaves files as they are.
    pub fn lookup(user: &str) -> Option<Owner> {
        let root = fs::metadata("/proc/self")
            .map(|m| m.uid() == 0)
            .unwrap_or(false);
        if !root {
            return None;
        }
        let passwd = fs::read_to_string("/etc/passwd").ok()?;
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || f[0] != user {
                return None;
            }
            Some(Owner {
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
            })
        })
    }

    pub fn apply(owner: Option<Owner>, path: &Path) -> std::io::Result<()> {
        match owner {
            Some(o) => std::os::unix::fs::lchown(path, Some(o.uid), Some(o.gid)),
            None => Ok(()),
        }
    }
}

/// Only permission bits travel; no set-uid, set-gid or sticky bits.
pub fn permissions(mode: u32) -> fs::Permissions {
    fs::Permissions::from_mode(mode & 0o777)
}

/// Creates `dir` and missing parents (mode 0700, owned by `owner`).
pub fn make_dirs(dir: &Path, owner: Option<Owner>) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        make_dirs(parent, owner)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {
            fs::set_permissions(dir, permissions(0o700))?;
            Owner::apply(owner, dir)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes a file or a directory tree; absent is fine.
pub fn remove(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Hashes a file block by block.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, Vec<BlockHash>)> {
    let mut f = fs::File::open(path)?;
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    let mut hashes = Vec::new();
    let mut size = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match f.read(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        if filled == 0 {
            break;
        }
        size += filled as u64;
        hashes.push(hash_block(&buf[..filled]));
        if filled < buf.len() {
            break;
        }
    }
    Ok((size, hashes))
}

/// Writes a small file durably: temporary name, fsync, rename, fsync the directory.
pub fn write_durably(path: &Path, content: &[u8], owner: Option<Owner>) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(content)?;
        f.set_permissions(permissions(0o600))?;
        f.sync_all()?;
    }
    Owner::apply(owner, &tmp)?;
    fs::rename(&tmp, path)?;
    fs::File::open(dir)?.sync_all()
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

fn io(context: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ReconcileError {
    let path = path.display().to_string();
    move |source| ReconcileError::Io {
        context,
        path,
        source,
    }
}

/// What a reconcile changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    pub rehashed: u64,
    pub removed: u64,
}

/// Brings the manifest of one area in line with the files under `root`: files changed at or
/// after `since` (all of them with `None`), files the manifest lacks and files whose size
/// disagrees are re-hashed; entries without a file are dropped.
pub fn reconcile(
    catalog: &Catalog,
    cluster: &ClusterId,
    area: Area,
    root: &Path,
    since: Option<i64>,
) -> Result<Reconciled, ReconcileError> {
    let mut on_disk = BTreeMap::new();
    walk(root, root, area, &mut on_disk)?;
    let mut known = BTreeMap::new();
    for item in catalog.file_entries(cluster) {
        let (a, path, entry) = item?;
        if a == area {
            known.insert(path, entry);
        }
    }
    let mut done = Reconciled::default();
    for (path, meta) in &on_disk {
        let old = known.get(path);
        let mode = meta.mode() & 0o7777;
        if meta.is_dir() {
            if old.is_none_or(|e| !e.directory || e.mode != mode) {
                let entry = FileEntry {
                    directory: true,
                    mode,
                    ..FileEntry::default()
                };
                catalog.put_file_entry(cluster, area, path, &entry, false)?;
            }
            continue;
        }
        let changed_at = meta.mtime().max(meta.ctime());
        let stale = match old {
            None => true,
            Some(e) => {
                e.directory
                    || e.size != meta.len()
                    || e.mode != mode
                    || since.is_none_or(|s| changed_at >= s)
            }
        };
        if stale {
            let file = root.join(path.as_str());
            let (size, hashes) = hash_file(&file).map_err(io("hash", &file))?;
            let entry = FileEntry {
                directory: false,
                mode,
                size,
                hashes,
            };
            catalog.put_file_entry(cluster, area, path, &entry, false)?;
            done.rehashed += 1;
        }
    }
    for path in known.keys().filter(|p| !on_disk.contains_key(*p)) {
        catalog.remove_file_entries(cluster, area, path)?;
        done.removed += 1;
    }
    catalog.sync()?;
    Ok(done)
}

/// Files and directories under `dir`, keyed by their path relative to `root`; skips what is
/// not PostgreSQL's (storage-internal names, the server's own files, symlinks).
fn walk(
    root: &Path,
    dir: &Path,
    area: Area,
    out: &mut BTreeMap<RelPath, fs::Metadata>,
) -> Result<(), ReconcileError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(io("list", dir))?;
        let path: PathBuf = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let at_root = dir == root;
        if at_root
            && (walvault_proto::manifest::is_reserved_name(&name)
                || (area == Area::Data && SERVER_FILES.contains(&name.as_ref())))
        {
            continue;
        }
        let meta = fs::symlink_metadata(&path).map_err(io("stat", &path))?;
        if !(meta.is_dir() || meta.is_file()) {
            continue;
        }
        let Some(rel) = path
            .strip_prefix(root)
            .ok()
            .and_then(|p| p.to_str())
            .and_then(|p| p.parse::<RelPath>().ok())
        else {
            continue;
        };
        let is_dir = meta.is_dir();
        out.insert(rel, meta);
        if is_dir {
            walk(root, &path, area, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_trusts_only_untouched_files() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("cat")).unwrap();
        let c: ClusterId = "acme/db".parse().unwrap();
        let root = dir.path().join("data");
        fs::create_dir_all(root.join("base/1")).unwrap();
        fs::write(root.join("base/1/100"), vec![7u8; 20000]).unwrap();
        fs::write(root.join("backup_label"), "x").unwrap();
        let first = reconcile(&cat, &c, Area::Data, &root, None).unwrap();
        assert_eq!(first.rehashed, 1);
        let entries: Vec<_> = cat.file_entries(&c).map(|e| e.unwrap()).collect();
        let names: Vec<_> = entries.iter().map(|(_, p, _)| p.as_str()).collect();
        assert_eq!(names, ["base", "base/1", "base/1/100"]);
        assert_eq!(entries[2].2.hashes.len(), 3);
        assert_eq!(entries[2].2.size, 20000);

        // A stale entry (as an interrupted session leaves it) is fixed only when the file
        // changed since the given time or its size disagrees.
        let p: RelPath = "base/1/100".parse().unwrap();
        let mut wrong = entries[2].2.clone();
        wrong.hashes[0] = [0; 32];
        cat.put_file_entry(&c, Area::Data, &p, &wrong, true)
            .unwrap();
        let far_future = i64::MAX;
        reconcile(&cat, &c, Area::Data, &root, Some(far_future)).unwrap();
        assert_eq!(cat.file_entry(&c, Area::Data, &p).unwrap().unwrap(), wrong);
        reconcile(&cat, &c, Area::Data, &root, Some(0)).unwrap();
        assert_eq!(
            cat.file_entry(&c, Area::Data, &p).unwrap().unwrap(),
            entries[2].2
        );

        fs::remove_dir_all(root.join("base/1")).unwrap();
        let gone = reconcile(&cat, &c, Area::Data, &root, Some(far_future)).unwrap();
        assert_eq!(gone.removed, 2);
        assert_eq!(cat.file_entries(&c).count(), 1);
    }
}
