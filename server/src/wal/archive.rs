//! Archiving and fetching WAL files (DESIGN §5).
//!
//! Invariants:
//! - a push is acknowledged only once the file is on stable storage under its final name:
//!   written under `.incoming/`, fsynced, hard-linked into place (which fails rather than
//!   replace), the directory fsynced, then catalogued; a crash at any point leaves either
//!   nothing or the complete file under its final name;
//! - a name, once archived, keeps its first content for good: the same content again is a
//!   success (PostgreSQL retries), other content is refused;
//! - a segment must carry the cluster's system identifier and segment size, which the first
//!   archived segment binds;
//! - the tenant's quota is checked before writing, and a write that hits it anyway fails
//!   without leaving anything behind.

use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use walvault_proto::{ClusterId, TenantId, WalFileKind, WalFileName};

use super::header::{HeaderError, LongPageHeader};
use super::stored::{StoredError, StoredMeta, HEADER_LEN};
use super::text;
use crate::catalog::{Catalog, CatalogError, ClusterBinding, ClusterRecord, WalRecord};
use crate::layout::{self, cluster_props, ClusterLayout, INCOMING_DIR, STORED_EXT};
use crate::storage::{Space, Storage, StorageError};
use crate::{human_bytes, unix_now};

/// zstd level when the server has to compress (the client sent plain bytes): fast, since
/// PostgreSQL waits on the push.
const SERVER_ZSTD_LEVEL: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cluster {0} does not exist")]
    ClusterNotFound(ClusterId),
    #[error("{cluster}: {name} is {actual} bytes, but the client declared {declared}")]
    SizeMismatch {
        cluster: ClusterId,
        name: WalFileName,
        declared: u64,
        actual: u64,
    },
    #[error("{cluster}: {name} could not be decompressed: {detail}")]
    Undecodable {
        cluster: ClusterId,
        name: WalFileName,
        detail: String,
    },
    #[error("{cluster}: {name} does not match the blake3 the client sent (damaged in transit)")]
    ChecksumMismatch {
        cluster: ClusterId,
        name: WalFileName,
    },
    #[error("{cluster}: {name} is no valid WAL segment: it {source}")]
    BadSegment {
        cluster: ClusterId,
        name: WalFileName,
        #[source]
        source: HeaderError,
    },
    #[error("{cluster}: {name} is not a valid {what}: it {detail}")]
    BadTextFile {
        cluster: ClusterId,
        name: WalFileName,
        what: &'static str,
        detail: String,
    },
    #[error(
        "{cluster}: {name} belongs to the database system {actual}, but this cluster's archive \
         holds system {expected}; is archive_command pointing at the right cluster?"
    )]
    SystemIdentifierMismatch {
        cluster: ClusterId,
        name: WalFileName,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{cluster}: {name} has {actual}-byte segments, but this cluster's archive holds \
         {expected}-byte segments"
    )]
    SegmentSizeMismatch {
        cluster: ClusterId,
        name: WalFileName,
        expected: u32,
        actual: u32,
    },
    #[error(
        "{cluster}: {name} is already archived with different content; the archived copy is \
         kept (two clusters archiving to one place, or a restored cluster reusing names?)"
    )]
    ContentConflict {
        cluster: ClusterId,
        name: WalFileName,
    },
    #[error(
        "tenant {tenant} is over its quota of {}: {} used, {} more needed for {name}; \
         raise it with `walvault tenant set-quota {tenant} SIZE` or prune",
        human_bytes(*quota), human_bytes(*used), human_bytes(*needed)
    )]
    QuotaExceeded {
        tenant: TenantId,
        name: WalFileName,
        quota: u64,
        used: u64,
        needed: u64,
    },
    #[error("{cluster}: storage is full while writing {name}")]
    StorageFull {
        cluster: ClusterId,
        name: WalFileName,
    },
    #[error("{cluster}: {name} is not in the archive")]
    NotFound {
        cluster: ClusterId,
        name: WalFileName,
    },
    #[error("{cluster}: archived file {path} {source}")]
    Damaged {
        cluster: ClusterId,
        path: String,
        #[source]
        source: StoredError,
    },
    #[error("{cluster}: {context}: {source}")]
    Storage {
        cluster: ClusterId,
        context: String,
        #[source]
        source: Box<StorageError>,
    },
    #[error("{cluster}: {context}: {source}")]
    Io {
        cluster: ClusterId,
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("read the space of tenant {tenant}: {source}")]
    TenantSpace {
        tenant: TenantId,
        #[source]
        source: Box<StorageError>,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// A file as the client sent it.
#[derive(Debug)]
pub struct IncomingWal {
    pub name: WalFileName,
    /// Size of the original file.
    pub size: u64,
    pub blake3: [u8; 32],
    /// True when `payload` is a zstd stream, false when it is the file itself.
    pub zstd: bool,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    Archived,
    /// The archive already held this name with the same content.
    AlreadyArchived,
}

/// An archived file on its way out: the metadata and the zstd stream.
#[derive(Debug)]
pub struct FetchedWal {
    pub meta: StoredMeta,
    pub zstd: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct WalArchive {
    storage: Arc<dyn Storage>,
    catalog: Catalog,
    /// One lock per cluster: binding the system identifier and publishing a name are
    /// check-then-act steps.
    locks: Arc<Mutex<HashMap<ClusterId, Arc<Mutex<()>>>>>,
    /// WAL directories by cluster; mountpoints do not move while the server runs.
    wal_dirs: Arc<Mutex<HashMap<ClusterId, PathBuf>>>,
}

impl WalArchive {
    pub fn new(storage: Arc<dyn Storage>, catalog: Catalog) -> Self {
        Self {
            storage,
            catalog,
            locks: Default::default(),
            wal_dirs: Default::default(),
        }
    }

    fn lock(&self, cluster: &ClusterId) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(cluster.clone()).or_default().clone()
    }

    fn storage_err(
        cluster: &ClusterId,
        context: impl Into<String>,
    ) -> impl FnOnce(StorageError) -> ArchiveError {
        let (cluster, context) = (cluster.clone(), context.into());
        move |source| ArchiveError::Storage {
            cluster,
            context,
            source: Box::new(source),
        }
    }

    fn io_err(
        cluster: &ClusterId,
        context: impl Into<String>,
    ) -> impl FnOnce(std::io::Error) -> ArchiveError {
        let (cluster, context) = (cluster.clone(), context.into());
        move |source| ArchiveError::Io {
            cluster,
            context,
            source,
        }
    }

    fn cluster_record(&self, cluster: &ClusterId) -> Result<ClusterRecord, ArchiveError> {
        self.catalog
            .cluster(cluster)?
            .ok_or_else(|| ArchiveError::ClusterNotFound(cluster.clone()))
    }

    /// What the cluster's first archived segment bound (`None` before any).
    pub fn binding(&self, cluster: &ClusterId) -> Result<Option<ClusterBinding>, ArchiveError> {
        Ok(self.cluster_record(cluster)?.binding)
    }

    /// Where the cluster's archived files are (`<name>.zst`).
    pub fn wal_dir_path(&self, cluster: &ClusterId) -> Result<PathBuf, ArchiveError> {
        self.wal_dir(cluster)
    }

    fn wal_dir(&self, cluster: &ClusterId) -> Result<PathBuf, ArchiveError> {
        if let Some(d) = self
            .wal_dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
        {
            return Ok(d.clone());
        }
        let l = ClusterLayout::of(cluster).map_err(Self::storage_err(cluster, "name datasets"))?;
        let dir = self
            .storage
            .mountpoint(&l.wal)
            .map_err(Self::storage_err(cluster, "find the WAL dataset"))?;
        self.wal_dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(cluster.clone(), dir.clone());
        Ok(dir)
    }

    /// Removes leftovers of pushes a crash interrupted. Call at start-up, before serving.
    pub fn discard_incomplete(&self) -> Result<usize, ArchiveError> {
        let mut removed = 0;
        for c in self.catalog.clusters(None)? {
            let incoming = self.wal_dir(&c.id)?.join(INCOMING_DIR);
            let Ok(entries) = fs::read_dir(&incoming) else {
                continue;
            };
            for e in entries.flatten() {
                fs::remove_file(e.path()).map_err(Self::io_err(
                    &c.id,
                    format!("remove {}", e.path().display()),
                ))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Archives one file; blocking (call from `spawn_blocking`).
    pub fn push(
        &self,
        cluster: &ClusterId,
        mut incoming: IncomingWal,
    ) -> Result<PushOutcome, ArchiveError> {
        let name = incoming.name.clone();
        let started = std::time::Instant::now();
        self.cluster_record(cluster)?;
        let content = self.verify_transfer(cluster, &mut incoming)?;
        let verified = started.elapsed();

        let lock = self.lock(cluster);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());

        let binding = self.check_content(cluster, &name, &content)?;
        let dir = self.wal_dir(cluster)?;
        let path = dir.join(format!("{name}{STORED_EXT}"));
        if let Some(existing) = self.existing(cluster, &path)? {
            return if existing.blake3 == incoming.blake3 {
                tracing::info!(%cluster, %name, "already archived with the same content");
                Ok(PushOutcome::AlreadyArchived)
            } else {
                Err(ArchiveError::ContentConflict {
                    cluster: cluster.clone(),
                    name,
                })
            };
        }

        let zstd = if incoming.zstd {
            incoming.payload
        } else {
            zstd::encode_all(&content[..], SERVER_ZSTD_LEVEL)
                .map_err(Self::io_err(cluster, format!("compress {name}")))?
        };
        let meta = StoredMeta {
            size: incoming.size,
            archived_unix: unix_now(),
            blake3: incoming.blake3,
        };
        let stored_size = (HEADER_LEN + zstd.len()) as u64;
        let checked = started.elapsed();
        self.check_quota(cluster.tenant(), &name, stored_size)?;
        let quota_checked = started.elapsed();
        if let Some(b) = binding {
            self.bind(cluster, b)?;
        }
        self.write_durably(cluster, &name, &dir, &path, &meta, &zstd)?;
        let written = started.elapsed();
        self.catalog.put_wal(
            cluster,
            &WalRecord {
                name: name.to_string(),
                size: meta.size,
                stored_size,
                blake3: hex::encode(meta.blake3),
                archived_unix: meta.archived_unix,
            },
        )?;
        tracing::info!(%cluster, %name, size = meta.size, stored_size, "archived");
        // Where a push spends its time, for tuning (WALVAULT_LOG=walvault_server::wal=debug).
        tracing::debug!(
            %cluster, %name,
            verify_ms = verified.as_millis(),
            check_ms = (checked - verified).as_millis(),
            quota_ms = (quota_checked - checked).as_millis(),
            write_ms = (written - quota_checked).as_millis(),
            catalog_ms = (started.elapsed() - written).as_millis(),
            "push timings"
        );
        Ok(PushOutcome::Archived)
    }

    /// Decodes the payload and checks it against what the client declared.
    fn verify_transfer(
        &self,
        cluster: &ClusterId,
        w: &mut IncomingWal,
    ) -> Result<Vec<u8>, ArchiveError> {
        let limit = match w.name.kind() {
            WalFileKind::Segment | WalFileKind::Partial => walvault_proto::MAX_WAL_FILE_SIZE,
            WalFileKind::History | WalFileKind::Backup => text::MAX_TEXT_FILE as u64,
        };
        let size_err = |actual| ArchiveError::SizeMismatch {
            cluster: cluster.clone(),
            name: w.name.clone(),
            declared: w.size,
            actual,
        };
        if w.size > limit {
            return Err(size_err(w.size));
        }
        let content = if w.zstd {
            let mut out = Vec::with_capacity(w.size as usize);
            let decoder = zstd::stream::read::Decoder::new(&w.payload[..]).map_err(|e| {
                ArchiveError::Undecodable {
                    cluster: cluster.clone(),
                    name: w.name.clone(),
                    detail: e.to_string(),
                }
            })?;
            // One byte past the declared size is enough to know it lied.
            decoder
                .take(w.size + 1)
                .read_to_end(&mut out)
                .map_err(|e| ArchiveError::Undecodable {
                    cluster: cluster.clone(),
                    name: w.name.clone(),
                    detail: e.to_string(),
                })?;
            out
        } else {
            // Plain bytes are the content itself: take them rather than copy 16 MiB.
            std::mem::take(&mut w.payload)
        };
        if content.len() as u64 != w.size {
            return Err(size_err(content.len() as u64));
        }
        if *blake3::hash(&content).as_bytes() != w.blake3 {
            return Err(ArchiveError::ChecksumMismatch {
                cluster: cluster.clone(),
                name: w.name.clone(),
            });
        }
        Ok(content)
    }

    /// Checks the content against its name and the cluster; returns the binding to record
    /// when this is the cluster's first segment. Call with the cluster's lock held.
    fn check_content(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
        content: &[u8],
    ) -> Result<Option<ClusterBinding>, ArchiveError> {
        let bad_text = |what, detail| ArchiveError::BadTextFile {
            cluster: cluster.clone(),
            name: name.clone(),
            what,
            detail,
        };
        match name.kind() {
            WalFileKind::History => {
                return text::check_history(name, content)
                    .map(|_| None)
                    .map_err(|d| bad_text("timeline history file", d))
            }
            WalFileKind::Backup => {
                return text::check_backup(content)
                    .map(|_| None)
                    .map_err(|d| bad_text("backup history file", d))
            }
            WalFileKind::Segment | WalFileKind::Partial => {}
        }
        let h = LongPageHeader::check_segment(name, content).map_err(|source| {
            ArchiveError::BadSegment {
                cluster: cluster.clone(),
                name: name.clone(),
                source,
            }
        })?;
        let found = ClusterBinding {
            system_identifier: h.system_identifier,
            wal_segment_size: h.segment_size,
            pg_major: h.pg_major,
        };
        // Re-read under the lock: a concurrent first push may have bound it meanwhile.
        match self.cluster_record(cluster)?.binding {
            None => Ok(Some(found)),
            Some(b) if b.system_identifier != found.system_identifier => {
                Err(ArchiveError::SystemIdentifierMismatch {
                    cluster: cluster.clone(),
                    name: name.clone(),
                    expected: b.system_identifier,
                    actual: found.system_identifier,
                })
            }
            Some(b) if b.wal_segment_size != found.wal_segment_size => {
                Err(ArchiveError::SegmentSizeMismatch {
                    cluster: cluster.clone(),
                    name: name.clone(),
                    expected: b.wal_segment_size,
                    actual: found.wal_segment_size,
                })
            }
            Some(_) => Ok(None),
        }
    }

    /// Binds an unbound cluster to `b` (a base backup may come before the first segment);
    /// returns the binding already held, if any, for the caller to compare.
    pub fn ensure_binding(
        &self,
        cluster: &ClusterId,
        b: ClusterBinding,
    ) -> Result<Option<ClusterBinding>, ArchiveError> {
        let lock = self.lock(cluster);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        match self.cluster_record(cluster)?.binding {
            Some(held) => Ok(Some(held)),
            None => {
                self.bind(cluster, b)?;
                Ok(None)
            }
        }
    }

    /// Records the binding in the storage (for rebuilds) and then the catalog.
    fn bind(&self, cluster: &ClusterId, b: ClusterBinding) -> Result<(), ArchiveError> {
        let l = ClusterLayout::of(cluster).map_err(Self::storage_err(cluster, "name datasets"))?;
        for (k, v) in [
            (
                cluster_props::SYSTEM_IDENTIFIER,
                b.system_identifier.to_string(),
            ),
            (
                cluster_props::WAL_SEGMENT_SIZE,
                b.wal_segment_size.to_string(),
            ),
            (cluster_props::PG_MAJOR, b.pg_major.to_string()),
        ] {
            self.storage
                .set_property(&l.cluster, k, &v)
                .map_err(Self::storage_err(cluster, "record the system identifier"))?;
        }
        let mut record = self.cluster_record(cluster)?;
        record.binding = Some(b);
        self.catalog.put_cluster(&record)?;
        tracing::info!(%cluster, system_identifier = b.system_identifier, wal_segment_size = b.wal_segment_size, pg_major = b.pg_major, "cluster bound to its database system");
        Ok(())
    }

    fn existing(
        &self,
        cluster: &ClusterId,
        path: &Path,
    ) -> Result<Option<StoredMeta>, ArchiveError> {
        match fs::File::open(path) {
            Ok(mut f) => {
                StoredMeta::read_from(&mut f)
                    .map(Some)
                    .map_err(|source| ArchiveError::Damaged {
                        cluster: cluster.clone(),
                        path: path.display().to_string(),
                        source,
                    })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Self::io_err(cluster, format!("open {}", path.display()))(e)),
        }
    }

    fn check_quota(
        &self,
        tenant: &TenantId,
        name: &WalFileName,
        needed: u64,
    ) -> Result<(), ArchiveError> {
        let space = layout::tenant(tenant)
            .and_then(|ds| self.storage.space(&ds))
            .map_err(|source| ArchiveError::TenantSpace {
                tenant: tenant.clone(),
                source: Box::new(source),
            })?;
        if let Some(quota) = space.quota {
            if space.used.saturating_add(needed) > quota {
                return Err(ArchiveError::QuotaExceeded {
                    tenant: tenant.clone(),
                    name: name.clone(),
                    quota,
                    used: space.used,
                    needed,
                });
            }
        }
        Ok(())
    }

    /// The quota error for a write ZFS refused, with the tenant's figures when they can be read.
    fn quota_refusal(&self, cluster: &ClusterId, name: &WalFileName, needed: u64) -> ArchiveError {
        let tenant = cluster.tenant();
        match layout::tenant(tenant).and_then(|ds| self.storage.space(&ds)) {
            Ok(Space {
                quota: Some(quota),
                used,
                ..
            }) => ArchiveError::QuotaExceeded {
                tenant: tenant.clone(),
                name: name.clone(),
                quota,
                used,
                needed,
            },
            _ => ArchiveError::StorageFull {
                cluster: cluster.clone(),
                name: name.clone(),
            },
        }
    }

    fn write_durably(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
        dir: &Path,
        path: &Path,
        meta: &StoredMeta,
        zstd: &[u8],
    ) -> Result<(), ArchiveError> {
        let incoming = dir.join(INCOMING_DIR);
        fs::create_dir_all(&incoming).map_err(Self::io_err(
            cluster,
            format!("create {}", incoming.display()),
        ))?;
        let tmp = incoming.join(format!("{name}.{}", std::process::id()));
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&meta.encode())?;
            f.write_all(zstd)?;
            f.sync_all()?;
            drop(f);
            // A hard link never replaces: if another writer won, we get AlreadyExists.
            fs::hard_link(&tmp, path)?;
            fs::remove_file(&tmp)?;
            fs::File::open(dir)?.sync_all()
        })();
        result.map_err(|e| {
            let _ = fs::remove_file(&tmp);
            match e.raw_os_error() {
                // ZFS refused the write itself: its accounting ran ahead of our pre-check.
                Some(libc::EDQUOT) => {
                    self.quota_refusal(cluster, name, (HEADER_LEN + zstd.len()) as u64)
                }
                Some(libc::ENOSPC) => ArchiveError::StorageFull {
                    cluster: cluster.clone(),
                    name: name.clone(),
                },
                _ => Self::io_err(cluster, format!("write {}", path.display()))(e),
            }
        })
    }

    /// Reads an archived file; blocking.
    pub fn fetch(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
    ) -> Result<FetchedWal, ArchiveError> {
        self.cluster_record(cluster)?;
        let path = self.wal_dir(cluster)?.join(format!("{name}{STORED_EXT}"));
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(ArchiveError::NotFound {
                    cluster: cluster.clone(),
                    name: name.clone(),
                })
            }
            Err(e) => return Err(Self::io_err(cluster, format!("read {}", path.display()))(e)),
        };
        let meta = StoredMeta::decode(&bytes).map_err(|source| ArchiveError::Damaged {
            cluster: cluster.clone(),
            path: path.display().to_string(),
            source,
        })?;
        Ok(FetchedWal {
            meta,
            zstd: bytes[HEADER_LEN..].to_vec(),
        })
    }

    pub fn list(&self, cluster: &ClusterId) -> Result<Vec<WalRecord>, ArchiveError> {
        self.cluster_record(cluster)?;
        Ok(self.catalog.wal_files(cluster)?)
    }
}
