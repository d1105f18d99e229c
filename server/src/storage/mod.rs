//! Storage: datasets, snapshots, clones, properties and quotas, behind one trait so that the
//! domain never knows whether it runs on ZFS or on plain directories.
//!
//! Invariants every backend keeps (checked by the contract suite in `storage::contract`):
//! - a dataset is addressed by a [`DatasetPath`] relative to the backend's root and is mounted
//!   (a directory exists at [`Storage::mountpoint`]) for as long as it exists;
//! - user properties are strings under the `walvault:` namespace and survive a restart;
//! - a recursive snapshot covers a dataset and all its descendants at one instant;
//! - a quota on a dataset bounds the space of it and all its descendants.
//!
//! Calls block (they run external programs or walk directories): call them from
//! `tokio::task::spawn_blocking` in async code.

pub mod dir;
pub mod zfs;
pub mod zfs_lock;

#[cfg(test)]
mod contract;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::process::ProcessError;

/// The namespace of our user properties on ZFS (`walvault:system_identifier`, …).
pub const PROPERTY_PREFIX: &str = "walvault:";

/// A dataset's name relative to the backend's root, like `acme/orders/wal`.
/// Components are validated: no empty parts, no `.`/`..`, only `[A-Za-z0-9_.:-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DatasetPath(Vec<String>);

impl DatasetPath {
    /// The backend's root itself.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    pub fn new<I, S>(components: I) -> Result<Self, StorageError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out = Vec::new();
        for c in components {
            let c = c.as_ref();
            let ok = !c.is_empty()
                && c != "."
                && c != ".."
                && c.len() <= 64
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "_.:-".contains(ch));
            if !ok {
                return Err(StorageError::InvalidName(c.to_owned()));
            }
            out.push(c.to_owned());
        }
        Ok(Self(out))
    }

    pub fn join(&self, component: &str) -> Result<Self, StorageError> {
        Self::new(self.0.iter().map(String::as_str).chain([component]))
    }

    pub fn components(&self) -> &[String] {
        &self.0
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The last component, `None` for the root.
    pub fn leaf(&self) -> Option<&str> {
        self.0.last().map(String::as_str)
    }
}

impl fmt::Display for DatasetPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("(root)")
        } else {
            f.write_str(&self.0.join("/"))
        }
    }
}

/// Options for a new dataset; `None` inherits from the parent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DatasetOptions {
    pub recordsize: Option<u32>,
    pub dedup: Option<bool>,
    pub quota: Option<u64>,
}

/// Nearer than this to a tenant's quota or the pool's end, writers go carefully: backups
/// write single blocks (a large zfs-fuse write into the quota can kill the daemon) and each
/// push reads the space from ZFS instead of a recent reading.
pub const WRITE_HEADROOM: u64 = 256 << 20;

/// Space accounting of a dataset and its descendants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes used by the dataset, its descendants and their snapshots.
    pub used: u64,
    /// Bytes that can still be written (bounded by the quota and the pool).
    pub available: u64,
    /// The quota set on this dataset itself, if any.
    pub quota: Option<u64>,
}

/// A snapshot of one dataset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub name: String,
    /// Creation time, seconds since the epoch.
    pub created_unix: i64,
    /// Bytes held only by this snapshot.
    pub used: u64,
    /// `walvault:*` properties, without the prefix.
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid dataset or snapshot name component {0:?}")]
    InvalidName(String),
    #[error("dataset {0} does not exist")]
    DatasetNotFound(DatasetPath),
    #[error("dataset {0} already exists")]
    DatasetExists(DatasetPath),
    #[error("snapshot {dataset}@{snapshot} does not exist")]
    SnapshotNotFound {
        dataset: DatasetPath,
        snapshot: String,
    },
    #[error("snapshot {dataset}@{snapshot} already exists")]
    SnapshotExists {
        dataset: DatasetPath,
        snapshot: String,
    },
    #[error("dataset {0} is busy")]
    Busy(DatasetPath),
    #[error("dataset {dataset} has dependent clones; destroy them first")]
    HasClones { dataset: DatasetPath },
    #[error("quota of {dataset} exceeded")]
    QuotaExceeded { dataset: DatasetPath },
    #[error("{0}")]
    Process(#[from] ProcessError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("unexpected output from {what}: {detail}")]
    Parse { what: String, detail: String },
}

impl StorageError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        StorageError::Io {
            context: context.into(),
            source,
        }
    }
}

/// The operations walvault needs from its storage.
pub trait Storage: Send + Sync + fmt::Debug {
    /// `zfs` or `dir`, for logs and errors.
    fn backend(&self) -> &'static str;

    /// A human description of where the data lives (`tank/walvault`, `/srv/walvault`).
    fn location(&self) -> String;

    /// The compression the backend applies at rest (`zstd`, `lz4`, `lzjb`, `off`, …).
    fn compression(&self) -> String;

    /// Whether `name`, at the top of a dataset, is the backend's own (ZFS's `.zfs`, the `dir`
    /// backend's `.walvault-*`): never written, deleted or handed out for a client.
    fn reserves(&self, name: &str) -> bool;

    /// Creates a dataset; its parent must exist.
    fn create(&self, path: &DatasetPath, options: &DatasetOptions) -> Result<(), StorageError>;

    fn exists(&self, path: &DatasetPath) -> Result<bool, StorageError>;

    /// Names of the direct child datasets, sorted.
    fn children(&self, path: &DatasetPath) -> Result<Vec<String>, StorageError>;

    /// Where the dataset's files are.
    fn mountpoint(&self, path: &DatasetPath) -> Result<PathBuf, StorageError>;

    /// Destroys a dataset with its snapshots; `recursive` also destroys descendants.
    fn destroy(&self, path: &DatasetPath, recursive: bool) -> Result<(), StorageError>;

    /// Sets (`Some`) or removes (`None`) the quota of a dataset.
    fn set_quota(&self, path: &DatasetPath, quota: Option<u64>) -> Result<(), StorageError>;

    fn space(&self, path: &DatasetPath) -> Result<Space, StorageError>;

    /// Sets `walvault:<key>` on a dataset or, with `key` of a snapshot, see `snapshot`.
    fn set_property(&self, path: &DatasetPath, key: &str, value: &str) -> Result<(), StorageError>;

    /// The `walvault:*` properties set on the dataset itself (not inherited), prefix stripped.
    fn properties(&self, path: &DatasetPath) -> Result<BTreeMap<String, String>, StorageError>;

    /// Takes a snapshot of `path` (and, if `recursive`, of all descendants atomically) and sets
    /// `properties` on every snapshot taken (as `zfs snapshot -r -o` does).
    fn snapshot(
        &self,
        path: &DatasetPath,
        name: &str,
        recursive: bool,
        properties: &BTreeMap<String, String>,
    ) -> Result<(), StorageError>;

    /// Sets `walvault:<key>` on the existing snapshot `path@snapshot` (what is learnt about a
    /// snapshot after it was taken, such as its verification).
    fn set_snapshot_property(
        &self,
        path: &DatasetPath,
        snapshot: &str,
        key: &str,
        value: &str,
    ) -> Result<(), StorageError>;

    /// Snapshots of `path`, oldest first.
    fn snapshots(&self, path: &DatasetPath) -> Result<Vec<SnapshotInfo>, StorageError>;

    /// Destroys a snapshot (`recursive`: the same-named snapshots of descendants too).
    fn destroy_snapshot(
        &self,
        path: &DatasetPath,
        name: &str,
        recursive: bool,
    ) -> Result<(), StorageError>;

    /// Creates `target` as a writable clone of `path@snapshot`; `target`'s parent must exist.
    fn clone_snapshot(
        &self,
        path: &DatasetPath,
        snapshot: &str,
        target: &DatasetPath,
    ) -> Result<(), StorageError>;

    /// Rolls `path` back to `snapshot`, destroying later snapshots.
    fn rollback(&self, path: &DatasetPath, snapshot: &str) -> Result<(), StorageError>;
}
