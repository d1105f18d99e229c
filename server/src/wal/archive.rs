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
//!   without leaving anything behind;
//! - nothing leaves the archive unchecked: a fetch re-reads the file against the size and
//!   blake3 recorded when it was archived, and a damaged file is recorded (and logged) and
//!   refused, never handed out; a push of the content it was archived with repairs it;
//! - the catalog and the WAL directory agree after any crash: a file published but not
//!   catalogued is catalogued (after its checks) by the next push, fetch or start-up
//!   reconciliation; a catalogued file gone from the disk is recorded as damaged;
//! - WAL files leave the archive only through [`WalArchive::remove`], under the cluster's
//!   lock, which also records the pruned ranges for the continuity ledger.

use std::collections::HashMap;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use walvault_proto::{ClusterId, TenantId, WalFileKind, WalFileName};

use super::continuity::Continuity;
use super::header::{HeaderError, LongPageHeader};
use super::ledger::{ArchiveView, Ledger};
use super::stored::{self, StoredError, StoredMeta, Verified, HEADER_LEN};
use super::text;
use crate::catalog::{
    Catalog, CatalogError, ClusterBinding, ClusterRecord, DamageRecord, WalRecord,
};
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
    #[error(
        "{cluster}: the archived copy of {name} is damaged ({reason}); it is not handed out: \
         push its good copy (walvault wal-push from a host that still has it) to repair it"
    )]
    Corrupt {
        cluster: ClusterId,
        name: WalFileName,
        reason: String,
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
    /// The archive held this name damaged; the pushed copy, the content it was archived
    /// with, replaced it.
    Repaired,
}

/// What the archive holds under a name, checked.
enum Existing {
    None,
    Intact(StoredMeta),
    /// The file fails its checks or is gone from the disk although catalogued; `expected`
    /// is the blake3 it was archived with, when anything still says.
    Damaged {
        expected: Option<[u8; 32]>,
        reason: String,
    },
}

/// What a start-up or verification reconciliation of a WAL directory with the catalog found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Files on disk the catalog lacked, checked and catalogued now.
    pub catalogued: Vec<String>,
    /// Catalogued files gone from the disk (now recorded as damaged).
    pub missing: Vec<String>,
    /// Files on disk the catalog lacked that fail their checks: (name, why); left alone.
    pub refused: Vec<(String, String)>,
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
    /// Each cluster's continuity ledger, kept current by push, remove and damage.
    continuity: Arc<Continuity>,
}

impl WalArchive {
    pub fn new(storage: Arc<dyn Storage>, catalog: Catalog) -> Self {
        Self {
            storage,
            catalog,
            locks: Default::default(),
            wal_dirs: Default::default(),
            continuity: Arc::default(),
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
        let repair = match self.existing(cluster, &name, &path)? {
            Existing::Intact(meta) if meta.blake3 == incoming.blake3 => {
                // Published by a push that died before cataloguing it: record it now, before
                // PostgreSQL is told it is archived and recycles its copy.
                if self.catalog.wal_file(cluster, &name)?.is_none() {
                    self.adopt(cluster, &name, &path, &meta)?;
                }
                tracing::info!(%cluster, %name, "already archived with the same content");
                return Ok(PushOutcome::AlreadyArchived);
            }
            Existing::Intact(_) => {
                return Err(ArchiveError::ContentConflict {
                    cluster: cluster.clone(),
                    name,
                })
            }
            Existing::Damaged {
                expected: Some(b3),
                reason,
            } if b3 == incoming.blake3 => Some(reason),
            Existing::Damaged {
                expected: Some(_), ..
            } => {
                return Err(ArchiveError::ContentConflict {
                    cluster: cluster.clone(),
                    name,
                })
            }
            Existing::Damaged {
                expected: None,
                reason,
            } => {
                // Nothing says what it was archived with: replacing it could replace history.
                return Err(ArchiveError::Damaged {
                    cluster: cluster.clone(),
                    path: path.display().to_string(),
                    source: StoredError::Io(std::io::Error::other(format!(
                        "{reason}, and the catalog has no record of its content; check it and \
                         remove it by hand before pushing {name} again"
                    ))),
                });
            }
            Existing::None => None,
        };

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
        self.write_durably(cluster, &name, &dir, &path, &meta, &zstd, repair.is_some())?;
        crate::fault::point("push-after-link");
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
        self.published(cluster, &name, &content)?;
        if let Some(reason) = &repair {
            self.catalog.remove_damage(cluster, &name)?;
            tracing::info!(%cluster, %name, was = %reason, "repaired: the damaged copy was replaced by the pushed one, which has the content it was archived with");
        }
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
        Ok(if repair.is_some() {
            PushOutcome::Repaired
        } else {
            PushOutcome::Archived
        })
    }

    /// Tells the continuity ledger about a file now in the archive. Call with the lock held.
    fn published(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
        content: &[u8],
    ) -> Result<(), ArchiveError> {
        // Not built yet: it will be, from the catalog, with this file in it.
        let seg = self.segment_size(cluster)?;
        self.continuity.published(cluster, name, content, seg);
        Ok(())
    }

    fn segment_size(&self, cluster: &ClusterId) -> Result<u32, ArchiveError> {
        Ok(self
            .cluster_record(cluster)?
            .binding
            .map(|b| b.wal_segment_size)
            .unwrap_or(0))
    }

    /// Catalogues a file found published but not catalogued, after checking its content
    /// against its name and the cluster. Call with the lock held.
    fn adopt(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
        path: &Path,
        meta: &StoredMeta,
    ) -> Result<(), ArchiveError> {
        let stored_size = fs::metadata(path)
            .map_err(Self::io_err(cluster, format!("stat {}", path.display())))?
            .len();
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
        self.continuity.forget(cluster);
        tracing::warn!(%cluster, %name, "catalogued an archived file the catalog lacked (a push interrupted between publishing and cataloguing it)");
        Ok(())
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

    /// What the archive holds under `name`, read back and checked. Call with the lock held.
    fn existing(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
        path: &Path,
    ) -> Result<Existing, ArchiveError> {
        let recorded = self
            .catalog
            .wal_file(cluster, name)?
            .and_then(|w| hex::decode(&w.blake3).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok());
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Ok(match recorded {
                    Some(b3) => Existing::Damaged {
                        expected: Some(b3),
                        reason: "catalogued, but gone from the disk".into(),
                    },
                    None => Existing::None,
                })
            }
            Err(e) => return Err(Self::io_err(cluster, format!("read {}", path.display()))(e)),
        };
        let framed = StoredMeta::decode(&bytes).ok().map(|m| m.blake3);
        match stored::verify(bytes) {
            Ok(v) => Ok(Existing::Intact(v.meta)),
            Err(e) if e.is_damage() => Ok(Existing::Damaged {
                expected: recorded.or(framed),
                reason: e.to_string(),
            }),
            Err(source) => Err(ArchiveError::Damaged {
                cluster: cluster.clone(),
                path: path.display().to_string(),
                source,
            }),
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

    /// Temporary file, fsync, then a hard link under the final name (which never replaces) or,
    /// to repair a damaged copy, a rename over it; then the directory is fsynced.
    #[allow(clippy::too_many_arguments)]
    fn write_durably(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
        dir: &Path,
        path: &Path,
        meta: &StoredMeta,
        zstd: &[u8],
        replace: bool,
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
            if replace {
                fs::rename(&tmp, path)?;
            } else {
                // A hard link never replaces: if another writer won, we get AlreadyExists.
                fs::hard_link(&tmp, path)?;
                fs::remove_file(&tmp)?;
            }
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

    /// Reads an archived file and checks it against what it was archived with; blocking. A
    /// damaged file is recorded and refused ([`ArchiveError::Corrupt`]); one the catalog
    /// lacks is catalogued first.
    pub fn fetch(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
    ) -> Result<FetchedWal, ArchiveError> {
        let v = self.read_verified(cluster, name)?;
        Ok(FetchedWal {
            meta: v.meta,
            zstd: v.zstd,
        })
    }

    /// An archived file's original bytes, checked like [`WalArchive::fetch`]; blocking.
    pub fn read_plain(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
    ) -> Result<Vec<u8>, ArchiveError> {
        Ok(self.read_verified(cluster, name)?.plain)
    }

    fn read_verified(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
    ) -> Result<Verified, ArchiveError> {
        self.cluster_record(cluster)?;
        let path = self.wal_dir(cluster)?.join(format!("{name}{STORED_EXT}"));
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if self.catalog.wal_file(cluster, name)?.is_some() {
                    let reason = format!("catalogued, but gone from {}", path.display());
                    return Err(self.damaged(cluster, name, reason)?);
                }
                return Err(ArchiveError::NotFound {
                    cluster: cluster.clone(),
                    name: name.clone(),
                });
            }
            Err(e) => return Err(Self::io_err(cluster, format!("read {}", path.display()))(e)),
        };
        match stored::verify(bytes) {
            Ok(v) => {
                if self.catalog.wal_file(cluster, name)?.is_none() {
                    let lock = self.lock(cluster);
                    let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
                    // Only what passes the checks of a push enters the catalog.
                    self.check_content(cluster, name, &v.plain)?;
                    if self.catalog.wal_file(cluster, name)?.is_none() {
                        self.adopt(cluster, name, &path, &v.meta)?;
                    }
                }
                Ok(v)
            }
            Err(e) if e.is_damage() => Err(self.damaged(cluster, name, e.to_string())?),
            Err(source) => Err(ArchiveError::Damaged {
                cluster: cluster.clone(),
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// Records that an archived file is damaged (logged at ERROR the first time) and returns
    /// the refusal to give.
    pub(crate) fn damaged(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
        reason: String,
    ) -> Result<ArchiveError, ArchiveError> {
        let known = self
            .catalog
            .damage(cluster)?
            .into_iter()
            .any(|d| d.name == name.as_str() && d.reason == reason);
        if known {
            tracing::warn!(%cluster, %name, "refused to hand out a damaged archived file: {reason}");
        } else {
            self.catalog.put_damage(
                cluster,
                &DamageRecord {
                    name: name.to_string(),
                    reason: reason.clone(),
                    found_unix: unix_now(),
                },
            )?;
            self.continuity.forget(cluster);
            tracing::error!(%cluster, %name, "archived file is damaged: {reason}; restores that need it are refused until its good copy is pushed (walvault wal-push from a host that has it)");
        }
        Ok(ArchiveError::Corrupt {
            cluster: cluster.clone(),
            name: name.clone(),
            reason,
        })
    }

    /// The damaged files of a cluster.
    pub fn damage(&self, cluster: &ClusterId) -> Result<Vec<DamageRecord>, ArchiveError> {
        Ok(self.catalog.damage(cluster)?)
    }

    /// Checks one archived file as a fetch would (without handing it out), and a segment's
    /// page header against the cluster; a file found intact again loses its damage record.
    /// `Ok(Err(why))` when it is damaged. Blocking.
    pub fn check_file(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
    ) -> Result<Result<u64, String>, ArchiveError> {
        match self.read_verified(cluster, name) {
            Ok(v) => {
                let size = v.meta.size;
                if let Err(e) = self.check_content(cluster, name, &v.plain) {
                    let reason = e.to_string();
                    self.damaged(cluster, name, reason.clone())?;
                    return Ok(Err(reason));
                }
                if self
                    .catalog
                    .damage(cluster)?
                    .iter()
                    .any(|d| d.name == name.as_str())
                {
                    self.catalog.remove_damage(cluster, name)?;
                    self.continuity.forget(cluster);
                    tracing::info!(%cluster, %name, "archived file reads back intact again");
                }
                Ok(Ok(size))
            }
            Err(ArchiveError::Corrupt { reason, .. }) => Ok(Err(reason)),
            Err(e) => Err(e),
        }
    }

    pub fn list(&self, cluster: &ClusterId) -> Result<Vec<WalRecord>, ArchiveError> {
        self.cluster_record(cluster)?;
        Ok(self.catalog.wal_files(cluster)?)
    }

    /// The cluster's continuity ledger: intact stretches and holes per timeline. Blocking (the
    /// first call per cluster reads the catalog and the history files).
    pub fn ledger(&self, cluster: &ClusterId) -> Result<Ledger, ArchiveError> {
        Ok(Ledger::compute(&self.view(cluster)?))
    }

    /// What the ledger is computed from, built from the catalog on first use.
    pub fn view(&self, cluster: &ClusterId) -> Result<ArchiveView, ArchiveError> {
        if let Some(v) = self.continuity.with_view(cluster, Clone::clone) {
            return Ok(v);
        }
        let lock = self.lock(cluster);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = self.continuity.with_view(cluster, Clone::clone) {
            return Ok(v);
        }
        let view = self.build_view(cluster)?;
        self.continuity.install(cluster, view.clone());
        Ok(view)
    }

    fn build_view(&self, cluster: &ClusterId) -> Result<ArchiveView, ArchiveError> {
        let seg = self.segment_size(cluster)?;
        let mut view = ArchiveView {
            segment_size: u64::from(seg),
            ..ArchiveView::default()
        };
        for w in self.catalog.wal_files(cluster)? {
            let Ok(name) = w.name.parse::<WalFileName>() else {
                continue;
            };
            match name.kind() {
                WalFileKind::Segment => {
                    if let Some(s) = name.segment_number(seg) {
                        view.present.insert((name.timeline(), s));
                    }
                }
                WalFileKind::History => {
                    // A damaged history file is reported as damaged; the ledger then treats
                    // its timeline as a root.
                    let path = self.wal_dir(cluster)?.join(format!("{name}{STORED_EXT}"));
                    if let Some(entries) = fs::read(&path)
                        .ok()
                        .and_then(|b| stored::verify(b).ok())
                        .and_then(|v| super::history::parse_history(name.timeline(), &v.plain).ok())
                    {
                        view.histories.insert(
                            name.timeline(),
                            entries.iter().map(|e| (e.parent, e.switch_lsn)).collect(),
                        );
                    }
                }
                _ => {}
            }
        }
        for d in self.catalog.damage(cluster)? {
            if let Some(key) = d
                .name
                .parse::<WalFileName>()
                .ok()
                .and_then(|n| n.segment_number(seg).map(|s| (n.timeline(), s)))
            {
                view.damaged.insert(key, d.reason);
            }
        }
        view.pruned = self.catalog.pruned(cluster)?.unwrap_or_default();
        Ok(view)
    }

    /// Removes archived files for good (the retention policy's prune): each leaves the
    /// catalog (with its time-index entry and any damage record) before its file is deleted,
    /// and the segment ranges are recorded as pruned first, so the ledger never reports
    /// them as holes. Blocking; returns how many files were removed.
    pub fn remove(
        &self,
        cluster: &ClusterId,
        names: &[WalFileName],
    ) -> Result<usize, ArchiveError> {
        if names.is_empty() {
            return Ok(0);
        }
        let lock = self.lock(cluster);
        let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let seg = self.segment_size(cluster)?;
        let mut by_timeline: std::collections::BTreeMap<
            walvault_proto::TimelineId,
            std::collections::BTreeSet<u64>,
        > = Default::default();
        for n in names {
            if let (WalFileKind::Segment, Some(s)) = (n.kind(), n.segment_number(seg)) {
                by_timeline.entry(n.timeline()).or_default().insert(s);
            }
        }
        if !by_timeline.is_empty() {
            let mut pruned: Vec<super::ledger::PrunedRange> =
                self.catalog.pruned(cluster)?.unwrap_or_default();
            for (t, segnos) in &by_timeline {
                super::ledger::merge_pruned(&mut pruned, super::ledger::pruned_runs(*t, segnos));
            }
            self.record_pruned(cluster, pruned)?;
        }
        let dir = self.wal_dir(cluster)?;
        let mut removed = 0;
        for name in names {
            self.catalog.remove_wal(cluster, name)?;
            self.catalog.remove_index_entry(cluster, name)?;
            self.catalog.remove_damage(cluster, name)?;
            let path = dir.join(format!("{name}{STORED_EXT}"));
            match fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => {
                    self.continuity.forget(cluster);
                    return Err(Self::io_err(cluster, format!("remove {}", path.display()))(
                        e,
                    ));
                }
            }
        }
        fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(Self::io_err(cluster, format!("sync {}", dir.display())))?;
        self.continuity.forget(cluster);
        Ok(removed)
    }

    /// Stores the pruned ranges (catalog and the cluster dataset's property), dropping those
    /// below every archived segment of their timeline: they can never be inside a hole.
    fn record_pruned(
        &self,
        cluster: &ClusterId,
        mut pruned: Vec<super::ledger::PrunedRange>,
    ) -> Result<(), ArchiveError> {
        let seg = self.segment_size(cluster)?;
        let mut lowest: HashMap<walvault_proto::TimelineId, u64> = HashMap::new();
        for w in self.catalog.wal_files(cluster)? {
            if let Ok(n) = w.name.parse::<WalFileName>() {
                if let (WalFileKind::Segment, Some(s)) = (n.kind(), n.segment_number(seg)) {
                    let e = lowest.entry(n.timeline()).or_insert(s);
                    *e = (*e).min(s);
                }
            }
        }
        pruned.retain(|r| lowest.get(&r.timeline).is_some_and(|low| r.last >= *low));
        let text = super::continuity::encode_pruned(&pruned);
        let l = ClusterLayout::of(cluster).map_err(Self::storage_err(cluster, "name datasets"))?;
        self.storage
            .set_property(&l.cluster, cluster_props::PRUNED_WAL, &text)
            .map_err(Self::storage_err(cluster, "record the pruned WAL ranges"))?;
        self.catalog.put_pruned(cluster, &pruned)?;
        Ok(())
    }

    /// Reconciles the cluster's WAL directory with the catalog (at start-up and in
    /// verification): files published but not catalogued are checked and catalogued,
    /// catalogued files gone from the disk are recorded as damaged. Blocking.
    pub fn reconcile(&self, cluster: &ClusterId) -> Result<Reconciled, ArchiveError> {
        let dir = self.wal_dir(cluster)?;
        let mut on_disk = std::collections::BTreeSet::new();
        let entries =
            fs::read_dir(&dir).map_err(Self::io_err(cluster, format!("list {}", dir.display())))?;
        for e in entries {
            let e = e.map_err(Self::io_err(cluster, format!("list {}", dir.display())))?;
            let file_name = e.file_name().to_string_lossy().into_owned();
            if let Some(name) = file_name
                .strip_suffix(STORED_EXT)
                .and_then(|n| n.parse::<WalFileName>().ok())
            {
                on_disk.insert(name);
            }
        }
        let catalogued: std::collections::BTreeSet<WalFileName> = self
            .catalog
            .wal_files(cluster)?
            .into_iter()
            .filter_map(|w| w.name.parse().ok())
            .collect();
        let mut out = Reconciled::default();
        for name in on_disk.difference(&catalogued) {
            match self.read_verified(cluster, name) {
                Ok(_) => out.catalogued.push(name.to_string()),
                Err(ArchiveError::Corrupt { reason, .. }) => {
                    out.refused.push((name.to_string(), reason))
                }
                Err(
                    e @ (ArchiveError::BadSegment { .. }
                    | ArchiveError::BadTextFile { .. }
                    | ArchiveError::SystemIdentifierMismatch { .. }
                    | ArchiveError::SegmentSizeMismatch { .. }),
                ) => {
                    tracing::error!(%cluster, %name, "a file in the WAL directory is not this cluster's: {e}");
                    out.refused.push((name.to_string(), e.to_string()));
                }
                Err(e) => return Err(e),
            }
        }
        for name in catalogued.difference(&on_disk) {
            let reason = format!("catalogued, but gone from {}", dir.display());
            let known = self
                .catalog
                .damage(cluster)?
                .iter()
                .any(|d| d.name == name.as_str());
            if !known {
                self.damaged(cluster, name, reason)?;
            }
            out.missing.push(name.to_string());
        }
        Ok(out)
    }
}
