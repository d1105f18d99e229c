//! The cluster's live PGDATA copy on disk: writing blocks in place, deleting, and bringing the
//! manifest back in line with the files after an interrupted session or a catalog rebuild.
//!
//! Only regular files and directories are ever created here (never symlinks), so a path from
//! the manifest joined to an area's root stays inside that root.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use walvault_proto::manifest::{block_count, block_len, hash_block, BlockHash};
use walvault_proto::{Area, ClusterId, RelPath, BLOCK_SIZE};

use crate::catalog::{Catalog, CatalogError, FileEntry, Ranges, Touched};

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
    /// Files whose hashes were recomputed, wholly or in part.
    pub rehashed: u64,
    pub removed: u64,
    /// Bytes read to recompute them: the cost of the reconcile.
    pub bytes_hashed: u64,
}

/// What may differ between the files and the manifest.
#[derive(Debug, Clone, Copy)]
pub enum Changed<'a> {
    /// Anything (a rebuild: no entry is known to be right).
    All,
    /// Files changed at or after this time (an unfinished session whose record of touched
    /// blocks may be incomplete: the machine rebooted since it began).
    Since(i64),
    /// Of the files changed since then, only the blocks an unfinished session recorded as
    /// touched (and any beyond the entry's end); of a file it created, only what it wrote.
    Touched {
        since: i64,
        touched: &'a BTreeMap<(Area, RelPath), Touched>,
    },
}

/// How much of a file a reconcile reads.
enum Rehash<'e> {
    /// Nothing: the entry is right (but for its mode, maybe).
    No(&'e FileEntry),
    Whole,
    /// The touched blocks, the rest from this entry (or holes without one).
    Touched(Option<&'e FileEntry>),
}

fn known_touched<'a>(changed: Changed<'a>, area: Area, path: &RelPath) -> Option<&'a Touched> {
    match changed {
        Changed::Touched { touched, .. } => touched.get(&(area, path.clone())),
        _ => None,
    }
}

/// Brings the manifest of one area in line with the files under `root`: files the manifest
/// lacks, files whose kind disagrees and files `changed` names are (re-)hashed, as little of
/// them as `changed` allows; entries without a file are dropped.
pub fn reconcile(
    catalog: &Catalog,
    cluster: &ClusterId,
    area: Area,
    root: &Path,
    changed: Changed<'_>,
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
    let none = Touched::default();
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
        let old = old.filter(|e| !e.directory);
        let t = known_touched(changed, area, path).unwrap_or(&none);
        let how = match (old, changed) {
            (Some(e), Changed::Since(s)) if changed_at < s && e.size == meta.len() => Rehash::No(e),
            // Created empty by the session (whatever an entry says): the rest is a hole.
            (_, Changed::Touched { .. }) if t.created => Rehash::Touched(None),
            // Untouched yet changed: only its mode or size was set (`file_end`).
            (Some(e), Changed::Touched { since, .. })
                if (changed_at < since || t.ranges.is_empty()) && e.size == meta.len() =>
            {
                Rehash::No(e)
            }
            (Some(e), Changed::Touched { .. }) => Rehash::Touched(Some(e)),
            _ => Rehash::Whole,
        };
        let file = root.join(path.as_str());
        let (size, hashes) = match how {
            Rehash::No(e) => {
                if e.mode != mode {
                    let entry = FileEntry { mode, ..e.clone() };
                    catalog.put_file_entry(cluster, area, path, &entry, false)?;
                }
                continue;
            }
            Rehash::Whole => {
                let (size, hashes) = hash_file(&file).map_err(io("hash", &file))?;
                done.bytes_hashed += size;
                (size, hashes)
            }
            Rehash::Touched(old) => {
                let (size, hashes, read) =
                    rehash(&file, old, &t.ranges).map_err(io("hash", &file))?;
                done.bytes_hashed += read;
                (size, hashes)
            }
        };
        done.rehashed += 1;
        let entry = FileEntry {
            directory: false,
            mode,
            size,
            hashes,
        };
        catalog.put_file_entry(cluster, area, path, &entry, false)?;
    }
    for path in known.keys().filter(|p| !on_disk.contains_key(*p)) {
        catalog.remove_file_entries(cluster, area, path)?;
        done.removed += 1;
    }
    catalog.sync()?;
    Ok(done)
}

/// A file's hashes, recomputing the blocks in `touched`, and also, against an old entry,
/// those past its blocks or whose length the new size changes; the other blocks keep the old
/// entry's hashes or, without one (a file created empty), are holes. Returns the size, the
/// hashes and the bytes read.
fn rehash(
    path: &Path,
    old: Option<&FileEntry>,
    touched: &Ranges,
) -> std::io::Result<(u64, Vec<BlockHash>, u64)> {
    let f = fs::File::open(path)?;
    let size = f.metadata()?.len();
    let count = block_count(size);
    let in_touched = |i: u64| touched.range(..=i).next_back().is_some_and(|(_, e)| *e > i);
    let stale = |i: u64| {
        in_touched(i)
            || old.is_some_and(|o| {
                i >= o.hashes.len() as u64 || block_len(o.size, i) != block_len(size, i)
            })
    };
    let zero = |len: u64| hash_block(&vec![0; len as usize]);
    let full_zero = zero(u64::from(BLOCK_SIZE));
    let mut hashes = Vec::with_capacity(count as usize);
    let mut buf = Vec::new();
    let mut read = 0u64;
    let mut i = 0;
    while i < count {
        if !stale(i) {
            hashes.push(match old {
                Some(o) => o.hashes[i as usize],
                None if block_len(size, i) == u64::from(BLOCK_SIZE) => full_zero,
                None => zero(block_len(size, i)),
            });
            i += 1;
            continue;
        }
        // A run of stale blocks, read in pieces of up to 1 MiB (small reads are slow on ZFS).
        let mut end = i + 1;
        while end < count && end - i < 128 && stale(end) {
            end += 1;
        }
        let from = i * u64::from(BLOCK_SIZE);
        let len = (end * u64::from(BLOCK_SIZE)).min(size) - from;
        buf.resize(len as usize, 0);
        f.read_exact_at(&mut buf, from)?;
        read += len;
        hashes.extend(buf.chunks(BLOCK_SIZE as usize).map(hash_block));
        i = end;
    }
    Ok((size, hashes, read))
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
        let first = reconcile(&cat, &c, Area::Data, &root, Changed::All).unwrap();
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
        reconcile(&cat, &c, Area::Data, &root, Changed::Since(far_future)).unwrap();
        assert_eq!(cat.file_entry(&c, Area::Data, &p).unwrap().unwrap(), wrong);
        reconcile(&cat, &c, Area::Data, &root, Changed::Since(0)).unwrap();
        assert_eq!(
            cat.file_entry(&c, Area::Data, &p).unwrap().unwrap(),
            entries[2].2
        );

        fs::remove_dir_all(root.join("base/1")).unwrap();
        let gone = reconcile(&cat, &c, Area::Data, &root, Changed::Since(far_future)).unwrap();
        assert_eq!(gone.removed, 2);
        assert_eq!(cat.file_entries(&c).count(), 1);
    }

    #[test]
    fn a_reconcile_reads_only_the_touched_blocks() {
        use crate::catalog::{Ranges, Touched};
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("cat")).unwrap();
        let c: ClusterId = "acme/db".parse().unwrap();
        let root = dir.path().join("data");
        fs::create_dir_all(&root).unwrap();
        // 1 GiB, sparse: one block written at 100 000 (as a session that created it).
        let big = root.join("big");
        let f = fs::File::create(&big).unwrap();
        f.set_len(1 << 30).unwrap();
        f.write_all_at(&[3; 8192], 100_000 * 8192).unwrap();
        let p: RelPath = "big".parse().unwrap();
        let touched = BTreeMap::from([(
            (Area::Data, p.clone()),
            Touched {
                created: true,
                ranges: Ranges::from([(99_984, 100_000 + 16)]),
            },
        )]);
        let changed = Changed::Touched {
            since: 0,
            touched: &touched,
        };
        let done = reconcile(&cat, &c, Area::Data, &root, changed).unwrap();
        assert_eq!(done.bytes_hashed, 32 * 8192);
        let entry = cat.file_entry(&c, Area::Data, &p).unwrap().unwrap();
        assert_eq!(entry.hashes, hash_file(&big).unwrap().1);

        // Known now; a later session touches one chunk of it.
        f.write_all_at(&[4; 8192], 5 * 8192).unwrap();
        let touched = BTreeMap::from([(
            (Area::Data, p.clone()),
            Touched {
                created: false,
                ranges: Ranges::from([(0, 16)]),
            },
        )]);
        let changed = Changed::Touched {
            since: 0,
            touched: &touched,
        };
        let done = reconcile(&cat, &c, Area::Data, &root, changed).unwrap();
        assert_eq!(done.bytes_hashed, 16 * 8192);
        let entry = cat.file_entry(&c, Area::Data, &p).unwrap().unwrap();
        assert_eq!(entry.hashes, hash_file(&big).unwrap().1);
    }
}
