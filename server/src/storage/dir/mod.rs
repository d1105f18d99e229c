//! The plain-directory backend, for laptops and tests without ZFS. Never the default where ZFS
//! exists: it is slower, snapshots cost copies, and quotas are not enforced.
//!
//! Layout, under the root directory given to [`DirStorage::open`]:
//! ```text
//! <dir>/.walvault-dataset.json            marks <dir> as a dataset: quota, properties, origin
//! <dir>/.walvault-snapshots/<name>/       one snapshot: snapshot.json + data/ (the files)
//! <dir>/<child>/                          a child dataset (a subdirectory with the marker)
//! <dir>/<anything else>                   the dataset's own files
//! ```
//! Invariants:
//! - names starting with [`RESERVED_PREFIX`] belong to this backend: they never show up as
//!   datasets and never go into snapshots; the domain must not create such names and must
//!   skip them when it lists a dataset's files (as it skips `.zfs` on ZFS);
//! - metadata files are written durably (temp file, fsync, rename, fsync directory), and new
//!   datasets and snapshots are built under a temporary name and renamed into place, so a crash
//!   never leaves a half-made one under its real name;
//! - snapshots are copies (`cp -a --reflink=auto`: free on btrfs/XFS, a full copy elsewhere) of
//!   the dataset's own files, without child datasets; a recursive snapshot copies one dataset
//!   after another, so unlike ZFS it is NOT atomic across datasets: callers must quiesce writes;
//! - rollback deletes the dataset's files and copies the snapshot back: not atomic either, and a
//!   rollback interrupted by a crash is finished by running it again;
//! - quotas are recorded and reported, and `set_quota` refuses a quota below current use, but
//!   writes past a quota are NOT refused: the domain checks `space()` before it writes.
//!   `space().used` is the blocks allocated under the directory (children and snapshots
//!   included, as on ZFS), `available` the smallest headroom under this and every ancestor
//!   quota, bounded by the file system's free space;
//! - clones remember their origin, so that destroying a snapshot a clone came from fails with
//!   [`StorageError::HasClones`] as on ZFS, although the copy would not need it;
//! - one `DirStorage` per directory tree and process: mutations are serialised by a mutex;
//! - needs GNU coreutils (`cp --reflink`, `df -P`), i.e. Linux.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use super::zfs::{check_property_key, check_property_value, check_snapshot_name, parent_of};
use super::{DatasetOptions, DatasetPath, SnapshotInfo, Space, Storage, StorageError};

mod files;
use files::*;

/// Entries whose names start with this belong to the backend, never to the domain.
pub const RESERVED_PREFIX: &str = ".walvault-";
const MARKER: &str = ".walvault-dataset.json";
const SNAPSHOTS: &str = ".walvault-snapshots";
const SNAPSHOT_META: &str = "snapshot.json";
const SNAPSHOT_DATA: &str = "data";
/// Temporary and trash names inside `.walvault-snapshots`; `+` is not valid in snapshot names.
const SNAPSHOT_SCRATCH: &str = "+";
const FORMAT_VERSION: u32 = 1;
/// How many source paths go into one `cp` command line.
const PATHS_PER_CP: usize = 256;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DatasetMeta {
    version: u32,
    quota: Option<u64>,
    properties: BTreeMap<String, String>,
    /// The snapshot this dataset was cloned from.
    origin: Option<Origin>,
    /// Orders snapshots exactly, even when several are taken in the same second.
    next_snapshot_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Origin {
    dataset: Vec<String>,
    snapshot: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotMeta {
    version: u32,
    seq: u64,
    created_unix: i64,
    properties: BTreeMap<String, String>,
}

fn read_snapshot_meta(path: &Path) -> Result<SnapshotMeta, StorageError> {
    read_json(path).map_err(|e| StorageError::Parse {
        what: path.display().to_string(),
        detail: e.to_string(),
    })
}

#[derive(Debug)]
pub struct DirStorage {
    root: PathBuf,
    lock: Mutex<()>,
}

impl DirStorage {
    /// Opens (creating it if needed) a directory tree whose root directory is the root dataset.
    pub fn open(path: &Path) -> Result<DirStorage, StorageError> {
        fs::create_dir_all(path).map_err(io_err(format!(
            "create storage directory {}",
            path.display()
        )))?;
        let root = fs::canonicalize(path).map_err(io_err(format!("resolve {}", path.display())))?;
        let storage = DirStorage {
            root,
            lock: Mutex::new(()),
        };
        let marker = storage.root.join(MARKER);
        if !marker.exists() {
            write_json(
                &marker,
                &DatasetMeta {
                    version: FORMAT_VERSION,
                    ..Default::default()
                },
            )?;
        }
        storage.load(&DatasetPath::root())?;
        tracing::info!(root = %storage.root.display(), "opened directory storage");
        Ok(storage)
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn locked(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, so a panic elsewhere cannot leave anything inconsistent.
        self.lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn dir(&self, path: &DatasetPath) -> PathBuf {
        let mut dir = self.root.clone();
        dir.extend(path.components());
        dir
    }

    fn snapshots_dir(&self, path: &DatasetPath) -> PathBuf {
        self.dir(path).join(SNAPSHOTS)
    }

    fn snapshot_dir(&self, path: &DatasetPath, name: &str) -> PathBuf {
        self.snapshots_dir(path).join(name)
    }

    fn load(&self, path: &DatasetPath) -> Result<DatasetMeta, StorageError> {
        let marker = self.dir(path).join(MARKER);
        match read_json::<DatasetMeta>(&marker) {
            Ok(meta) if meta.version == FORMAT_VERSION => Ok(meta),
            Ok(meta) => Err(StorageError::Parse {
                what: marker.display().to_string(),
                detail: format!("format version {} is not {FORMAT_VERSION}", meta.version),
            }),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
                Err(StorageError::DatasetNotFound(path.clone()))
            }
            Err(e) if e.kind() == ErrorKind::InvalidData => Err(StorageError::Parse {
                what: marker.display().to_string(),
                detail: e.to_string(),
            }),
            Err(e) => Err(StorageError::io(format!("read {}", marker.display()), e)),
        }
    }

    fn save(&self, path: &DatasetPath, meta: &DatasetMeta) -> Result<(), StorageError> {
        write_json(&self.dir(path).join(MARKER), meta)
    }

    fn is_dataset_dir(dir: &Path) -> bool {
        dir.join(MARKER).is_file()
    }

    /// The dataset's own entries: everything but reserved names and child datasets.
    fn own_entries(dir: &Path) -> Result<Vec<PathBuf>, StorageError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err(format!("list {}", dir.display())))? {
            let entry = entry.map_err(io_err(format!("list {}", dir.display())))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with(RESERVED_PREFIX) {
                continue;
            }
            let is_dir = entry
                .file_type()
                .map_err(io_err(format!("stat {}", entry.path().display())))?
                .is_dir();
            if is_dir && Self::is_dataset_dir(&entry.path()) {
                continue;
            }
            out.push(entry.path());
        }
        out.sort();
        Ok(out)
    }

    /// `path` and all its descendants, parents first.
    fn subtree(&self, path: &DatasetPath) -> Result<Vec<DatasetPath>, StorageError> {
        let mut out = vec![path.clone()];
        let mut i = 0;
        while i < out.len() {
            let current = out[i].clone();
            for child in self.children(&current)? {
                out.push(current.join(&child)?);
            }
            i += 1;
        }
        Ok(out)
    }

    /// Every clone in the tree whose origin is a snapshot of one of `datasets` (named
    /// `snapshot`, or any when `None`) and that is not itself in `excluded`.
    fn clones_of(
        &self,
        datasets: &[DatasetPath],
        snapshot: Option<&str>,
        excluded: &[DatasetPath],
    ) -> Result<Vec<DatasetPath>, StorageError> {
        let mut clones = Vec::new();
        for ds in self.subtree(&DatasetPath::root())? {
            if excluded.contains(&ds) {
                continue;
            }
            let Some(origin) = self.load(&ds)?.origin else {
                continue;
            };
            let from = DatasetPath::new(&origin.dataset)?;
            if datasets.contains(&from) && snapshot.is_none_or(|s| s == origin.snapshot) {
                clones.push(ds);
            }
        }
        Ok(clones)
    }

    /// Snapshots of `path` with their sequence numbers, oldest first.
    fn snapshot_metas(
        &self,
        path: &DatasetPath,
    ) -> Result<Vec<(String, SnapshotMeta)>, StorageError> {
        self.load(path)?;
        let dir = self.snapshots_dir(path);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::io(format!("list {}", dir.display()), e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(format!("list {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if check_snapshot_name(&name).is_err() {
                continue; // scratch space of an interrupted snapshot or destroy
            }
            out.push((name, read_snapshot_meta(&entry.path().join(SNAPSHOT_META))?));
        }
        out.sort_by_key(|(_, m)| m.seq);
        Ok(out)
    }

    fn has_snapshot(&self, path: &DatasetPath, name: &str) -> bool {
        self.snapshot_dir(path, name).join(SNAPSHOT_META).is_file()
    }

    fn require_snapshot(&self, path: &DatasetPath, name: &str) -> Result<(), StorageError> {
        if self.has_snapshot(path, name) {
            Ok(())
        } else {
            Err(StorageError::SnapshotNotFound {
                dataset: path.clone(),
                snapshot: name.to_owned(),
            })
        }
    }

    /// Copies the own files of one dataset into a new snapshot `name`.
    fn snapshot_one(
        &self,
        path: &DatasetPath,
        name: &str,
        properties: &BTreeMap<String, String>,
    ) -> Result<(), StorageError> {
        let dir = self.dir(path);
        let snapshots = self.snapshots_dir(path);
        if !snapshots.is_dir() {
            fs::create_dir(&snapshots)
                .map_err(io_err(format!("create {}", snapshots.display())))?;
            fsync_dir(&dir)?;
        }
        let tmp = snapshots.join(format!("{SNAPSHOT_SCRATCH}new.{name}.{}", scratch_suffix()));
        let data = tmp.join(SNAPSHOT_DATA);
        fs::create_dir_all(&data).map_err(io_err(format!("create {}", data.display())))?;
        let result = (|| {
            copy_into(&Self::own_entries(&dir)?, &data)?;
            fsync_tree(&data)?;
            // Take the sequence number first, so that it is never handed out twice.
            let mut meta = self.load(path)?;
            let seq = meta.next_snapshot_seq;
            meta.next_snapshot_seq += 1;
            self.save(path, &meta)?;
            let snap = SnapshotMeta {
                version: FORMAT_VERSION,
                seq,
                created_unix: now_unix(),
                properties: properties.clone(),
            };
            write_json(&tmp.join(SNAPSHOT_META), &snap)?;
            let target = snapshots.join(name);
            fs::rename(&tmp, &target).map_err(io_err(format!(
                "move {} to {}",
                tmp.display(),
                target.display()
            )))?;
            fsync_dir(&snapshots)
        })();
        if result.is_err() {
            let _ = remove_path(&tmp);
        }
        result
    }

    fn discard_snapshot(&self, path: &DatasetPath, name: &str) -> Result<(), StorageError> {
        discard(
            &self.snapshot_dir(path, name),
            &format!("{SNAPSHOT_SCRATCH}trash.{name}.{}", scratch_suffix()),
        )
    }

    /// Makes a new dataset at `path` whose files are copies of `sources`: built under a
    /// reserved name in the parent, then renamed into place.
    fn build_dataset(
        &self,
        path: &DatasetPath,
        meta: &DatasetMeta,
        sources: &[PathBuf],
    ) -> Result<(), StorageError> {
        check_leaf(path)?;
        let Some(parent) = parent_of(path) else {
            return Err(StorageError::DatasetExists(path.clone()));
        };
        self.load(&parent)?;
        let target = self.dir(path);
        match fs::symlink_metadata(&target) {
            Ok(_) if Self::is_dataset_dir(&target) => {
                return Err(StorageError::DatasetExists(path.clone()))
            }
            Ok(_) => {
                return Err(StorageError::io(
                    format!("create dataset {path}"),
                    std::io::Error::new(
                        ErrorKind::AlreadyExists,
                        format!("{} exists and is not a dataset", target.display()),
                    ),
                ))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::io(format!("stat {}", target.display()), e)),
        }
        let parent_dir = self.dir(&parent);
        let leaf = path.leaf().unwrap_or_default();
        let tmp = parent_dir.join(format!("{RESERVED_PREFIX}new.{leaf}.{}", scratch_suffix()));
        fs::create_dir(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
        let result = (|| {
            copy_into(sources, &tmp)?;
            fsync_tree(&tmp)?;
            write_json(&tmp.join(MARKER), meta)?;
            fs::rename(&tmp, &target).map_err(io_err(format!(
                "move {} to {}",
                tmp.display(),
                target.display()
            )))?;
            fsync_dir(&parent_dir)
        })();
        if result.is_err() {
            let _ = remove_path(&tmp);
        }
        result
    }
}

impl Storage for DirStorage {
    fn backend(&self) -> &'static str {
        "dir"
    }

    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn compression(&self) -> String {
        "off".to_owned()
    }

    fn reserves(&self, name: &str) -> bool {
        name.starts_with(RESERVED_PREFIX)
    }

    /// `recordsize` and `dedup` mean nothing for plain directories and are ignored.
    fn create(&self, path: &DatasetPath, options: &DatasetOptions) -> Result<(), StorageError> {
        let _guard = self.locked();
        let meta = DatasetMeta {
            version: FORMAT_VERSION,
            quota: options.quota.filter(|q| *q > 0),
            ..Default::default()
        };
        self.build_dataset(path, &meta, &[])
    }

    fn exists(&self, path: &DatasetPath) -> Result<bool, StorageError> {
        Ok(Self::is_dataset_dir(&self.dir(path)))
    }

    fn children(&self, path: &DatasetPath) -> Result<Vec<String>, StorageError> {
        self.load(path)?;
        let dir = self.dir(path);
        let mut children = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err(format!("list {}", dir.display())))? {
            let entry = entry.map_err(io_err(format!("list {}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_dir = entry
                .file_type()
                .map_err(io_err(format!("stat {}", entry.path().display())))?
                .is_dir();
            if is_dir
                && !name.starts_with(RESERVED_PREFIX)
                && DatasetPath::new([&name]).is_ok()
                && Self::is_dataset_dir(&entry.path())
            {
                children.push(name);
            }
        }
        children.sort();
        Ok(children)
    }

    fn mountpoint(&self, path: &DatasetPath) -> Result<PathBuf, StorageError> {
        self.load(path)?;
        Ok(self.dir(path))
    }

    fn destroy(&self, path: &DatasetPath, recursive: bool) -> Result<(), StorageError> {
        if path.is_root() {
            return Err(StorageError::InvalidName(path.to_string()));
        }
        let _guard = self.locked();
        self.load(path)?;
        let children = self.children(path)?;
        if !recursive && !children.is_empty() {
            return Err(StorageError::io(
                format!("destroy dataset {path} without recursion"),
                std::io::Error::new(
                    ErrorKind::DirectoryNotEmpty,
                    format!("it has child datasets {}", children.join(", ")),
                ),
            ));
        }
        let subtree = self.subtree(path)?;
        if !self.clones_of(&subtree, None, &subtree)?.is_empty() {
            return Err(StorageError::HasClones {
                dataset: path.clone(),
            });
        }
        let leaf = path.leaf().unwrap_or_default();
        discard(
            &self.dir(path),
            &format!("{RESERVED_PREFIX}trash.{leaf}.{}", scratch_suffix()),
        )
    }

    fn set_quota(&self, path: &DatasetPath, quota: Option<u64>) -> Result<(), StorageError> {
        let _guard = self.locked();
        let mut meta = self.load(path)?;
        let quota = quota.filter(|q| *q > 0);
        if let Some(q) = quota {
            // As ZFS does: a quota below what is already used is refused.
            if disk_usage(&self.dir(path))? > q {
                return Err(StorageError::QuotaExceeded {
                    dataset: path.clone(),
                });
            }
        }
        meta.quota = quota;
        self.save(path, &meta)
    }

    fn space(&self, path: &DatasetPath) -> Result<Space, StorageError> {
        let meta = self.load(path)?;
        let dir = self.dir(path);
        let used = disk_usage(&dir)?;
        let mut available = filesystem_available(&dir)?;
        // Every quota on the way up bounds this dataset too.
        let mut current = Some(path.clone());
        while let Some(ds) = current {
            let quota = if ds == *path {
                meta.quota
            } else {
                self.load(&ds)?.quota
            };
            if let Some(q) = quota {
                let ds_used = if ds == *path {
                    used
                } else {
                    disk_usage(&self.dir(&ds))?
                };
                available = available.min(q.saturating_sub(ds_used));
            }
            current = parent_of(&ds);
        }
        Ok(Space {
            used,
            available,
            quota: meta.quota,
        })
    }

    /// An empty value removes the property, as on ZFS.
    fn set_property(&self, path: &DatasetPath, key: &str, value: &str) -> Result<(), StorageError> {
        check_property_key(key)?;
        if !value.is_empty() {
            check_property_value(key, value)?;
        }
        let _guard = self.locked();
        let mut meta = self.load(path)?;
        if value.is_empty() {
            meta.properties.remove(key);
        } else {
            meta.properties.insert(key.to_owned(), value.to_owned());
        }
        self.save(path, &meta)
    }

    fn properties(&self, path: &DatasetPath) -> Result<BTreeMap<String, String>, StorageError> {
        Ok(self.load(path)?.properties)
    }

    /// With `recursive`, the properties go on every snapshot taken, as with ZFS. Not atomic
    /// across datasets (see the module doc); if one copy fails, those already made are removed.
    fn snapshot(
        &self,
        path: &DatasetPath,
        name: &str,
        recursive: bool,
        properties: &BTreeMap<String, String>,
    ) -> Result<(), StorageError> {
        check_snapshot_name(name)?;
        for (key, value) in properties.iter().filter(|(_, v)| !v.is_empty()) {
            check_property_key(key)?;
            check_property_value(key, value)?;
        }
        let properties: BTreeMap<String, String> = properties
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let _guard = self.locked();
        self.load(path)?;
        let datasets = if recursive {
            self.subtree(path)?
        } else {
            vec![path.clone()]
        };
        if let Some(ds) = datasets.iter().find(|ds| self.has_snapshot(ds, name)) {
            return Err(StorageError::SnapshotExists {
                dataset: ds.clone(),
                snapshot: name.to_owned(),
            });
        }
        for (i, ds) in datasets.iter().enumerate() {
            if let Err(e) = self.snapshot_one(ds, name, &properties) {
                for done in &datasets[..i] {
                    if let Err(undo) = self.discard_snapshot(done, name) {
                        tracing::warn!(dataset = %done, snapshot = name, error = %undo, "could not remove partial recursive snapshot");
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    fn set_snapshot_property(
        &self,
        path: &DatasetPath,
        snapshot: &str,
        key: &str,
        value: &str,
    ) -> Result<(), StorageError> {
        check_snapshot_name(snapshot)?;
        check_property_key(key)?;
        check_property_value(key, value)?;
        let _guard = self.locked();
        self.load(path)?;
        self.require_snapshot(path, snapshot)?;
        let meta_path = self.snapshot_dir(path, snapshot).join(SNAPSHOT_META);
        let mut meta = read_snapshot_meta(&meta_path)?;
        meta.properties.insert(key.to_owned(), value.to_owned());
        write_json(&meta_path, &meta)
    }

    fn snapshots(&self, path: &DatasetPath) -> Result<Vec<SnapshotInfo>, StorageError> {
        self.snapshot_metas(path)?
            .into_iter()
            .map(|(name, meta)| {
                Ok(SnapshotInfo {
                    used: disk_usage(&self.snapshot_dir(path, &name))?,
                    name,
                    created_unix: meta.created_unix,
                    properties: meta.properties,
                })
            })
            .collect()
    }

    fn destroy_snapshot(
        &self,
        path: &DatasetPath,
        name: &str,
        recursive: bool,
    ) -> Result<(), StorageError> {
        check_snapshot_name(name)?;
        let _guard = self.locked();
        self.load(path)?;
        if !self.has_snapshot(path, name) {
            return Err(StorageError::SnapshotNotFound {
                dataset: path.clone(),
                snapshot: name.to_owned(),
            });
        }
        let mut datasets = vec![path.clone()];
        if recursive {
            for ds in self.subtree(path)?.into_iter().skip(1) {
                if self.has_snapshot(&ds, name) {
                    datasets.push(ds);
                }
            }
        }
        for ds in &datasets {
            if !self
                .clones_of(std::slice::from_ref(ds), Some(name), &[])?
                .is_empty()
            {
                return Err(StorageError::HasClones {
                    dataset: ds.clone(),
                });
            }
        }
        for ds in &datasets {
            self.discard_snapshot(ds, name)?;
        }
        Ok(())
    }

    fn clone_snapshot(
        &self,
        path: &DatasetPath,
        snapshot: &str,
        target: &DatasetPath,
    ) -> Result<(), StorageError> {
        check_snapshot_name(snapshot)?;
        let _guard = self.locked();
        self.load(path)?;
        self.require_snapshot(path, snapshot)?;
        let data = self.snapshot_dir(path, snapshot).join(SNAPSHOT_DATA);
        let sources = Self::own_entries(&data)?;
        let meta = DatasetMeta {
            version: FORMAT_VERSION,
            origin: Some(Origin {
                dataset: path.components().to_vec(),
                snapshot: snapshot.to_owned(),
            }),
            ..Default::default()
        };
        self.build_dataset(target, &meta, &sources)
    }

    fn rollback(&self, path: &DatasetPath, snapshot: &str) -> Result<(), StorageError> {
        check_snapshot_name(snapshot)?;
        let _guard = self.locked();
        let metas = self.snapshot_metas(path)?;
        let Some(position) = metas.iter().position(|(n, _)| n == snapshot) else {
            return Err(StorageError::SnapshotNotFound {
                dataset: path.clone(),
                snapshot: snapshot.to_owned(),
            });
        };
        let later: Vec<&str> = metas[position + 1..]
            .iter()
            .map(|(n, _)| n.as_str())
            .collect();
        for name in &later {
            if !self
                .clones_of(std::slice::from_ref(path), Some(name), &[])?
                .is_empty()
            {
                return Err(StorageError::HasClones {
                    dataset: path.clone(),
                });
            }
        }
        for name in &later {
            self.discard_snapshot(path, name)?;
        }
        let dir = self.dir(path);
        for entry in Self::own_entries(&dir)? {
            remove_path(&entry)?;
        }
        let data = self.snapshot_dir(path, snapshot).join(SNAPSHOT_DATA);
        let sources = Self::own_entries(&data)?;
        copy_into(&sources, &dir)?;
        for entry in Self::own_entries(&dir)? {
            fsync_tree(&entry)?;
        }
        fsync_dir(&dir)
    }
}

#[cfg(test)]
mod tests;
