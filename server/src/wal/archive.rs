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
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use walvault_proto::{ClusterId, TenantId, WalFileKind, WalFileName};

use super::continuity::Continuity;
use super::header::{HeaderError, LongPageHeader};
use super::stored::{self, StoredError, StoredMeta, Verified};
use super::text;
use crate::catalog::{
    Catalog, CatalogError, ClusterBinding, ClusterRecord, DamageRecord, WalRecord,
};
use crate::layout::{self, cluster_props, ClusterLayout, INCOMING_DIR, STORED_EXT};
use crate::storage::WRITE_HEADROOM;
use crate::storage::{Space, Storage, StorageError};
use crate::{human_bytes, unix_now};

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
    #[error("{cluster}: {name}: {detail}; a file of this cluster is at most {limit} bytes")]
    TooLarge {
        cluster: ClusterId,
        name: WalFileName,
        detail: String,
        limit: u64,
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

/// A file as the client sent it, whole (see `push` for the streamed form).
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
pub(super) enum Existing {
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
    pub(super) storage: Arc<dyn Storage>,
    pub(super) catalog: Catalog,
    /// One lock per cluster: binding the system identifier and publishing a name are
    /// check-then-act steps.
    locks: Arc<Mutex<HashMap<ClusterId, Arc<Mutex<()>>>>>,
    /// WAL directories by cluster; mountpoints do not move while the server runs.
    wal_dirs: Arc<Mutex<HashMap<ClusterId, PathBuf>>>,
    /// Each cluster's continuity ledger, kept current by push, remove and damage.
    pub(super) continuity: Arc<Continuity>,
    /// Tenants' space as last read, so that pushes far from the quota do not each ask ZFS.
    spaces: Arc<Mutex<HashMap<TenantId, KnownSpace>>>,
}

/// How long a reading of a tenant's space may stand in for ZFS.
const SPACE_FRESH: Duration = Duration::from_secs(5);

/// A tenant's space as read from ZFS, and what pushes admitted on it since.
#[derive(Debug, Clone, Copy)]
struct KnownSpace {
    read: Instant,
    /// The quota in force when read: a reading is used only while the catalog's agrees, so
    /// `tenant set-quota` takes effect on the next push.
    quota: Option<u64>,
    available: u64,
    admitted: u64,
}

impl KnownSpace {
    /// Admits `needed` bytes if the reading is fresh, made under `quota`, and leaves
    /// [`WRITE_HEADROOM`] to spare after everything admitted on it.
    fn admit(&mut self, now: Instant, quota: Option<u64>, needed: u64) -> bool {
        let roomy = now.duration_since(self.read) < SPACE_FRESH
            && quota == self.quota
            && self
                .available
                .saturating_sub(self.admitted)
                .saturating_sub(needed)
                >= WRITE_HEADROOM;
        if roomy {
            self.admitted = self.admitted.saturating_add(needed);
        }
        roomy
    }
}

impl WalArchive {
    pub fn new(storage: Arc<dyn Storage>, catalog: Catalog) -> Self {
        Self {
            storage,
            catalog,
            locks: Default::default(),
            wal_dirs: Default::default(),
            continuity: Arc::default(),
            spaces: Arc::default(),
        }
    }

    pub(super) fn lock(&self, cluster: &ClusterId) -> Arc<Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(cluster.clone()).or_default().clone()
    }

    pub(super) fn storage_err(
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

    pub(super) fn io_err(
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

    pub(super) fn cluster_record(
        &self,
        cluster: &ClusterId,
    ) -> Result<ClusterRecord, ArchiveError> {
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

    pub(super) fn wal_dir(&self, cluster: &ClusterId) -> Result<PathBuf, ArchiveError> {
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

    /// Tells the continuity ledger about a file now in the archive. Call with the lock held.
    pub(super) fn published(
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

    pub(super) fn segment_size(&self, cluster: &ClusterId) -> Result<u32, ArchiveError> {
        Ok(self
            .cluster_record(cluster)?
            .binding
            .map(|b| b.wal_segment_size)
            .unwrap_or(0))
    }

    /// Catalogues a file found published but not catalogued, after checking its content
    /// against its name and the cluster. Call with the lock held.
    pub(super) fn adopt(
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

    /// `head` is the file's beginning (all of a text file), `len` its whole length.
    pub(super) fn check_content(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
        head: &[u8],
        len: u64,
    ) -> Result<Option<ClusterBinding>, ArchiveError> {
        let content = head;
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
        let h = LongPageHeader::check_segment_head(name, head, len).map_err(|source| {
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
    pub(super) fn bind(&self, cluster: &ClusterId, b: ClusterBinding) -> Result<(), ArchiveError> {
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
    pub(super) fn existing(
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
        match stored::verify(bytes, 0) {
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

    /// Refuses a file that would take `tenant` past its quota. Far from the quota and the
    /// pool's end, a reading of the space less than [`SPACE_FRESH`] old answers (a `zfs get`
    /// goes through the machine-wide ZFS lock, which twenty pushers at once queue on); nearer,
    /// every push reads it, as does the first push after `tenant set-quota`. ZFS accounts
    /// writes late either way; it enforces the quota itself on every write.
    pub(super) fn check_quota(
        &self,
        tenant: &TenantId,
        name: &WalFileName,
        needed: u64,
    ) -> Result<(), ArchiveError> {
        let spaces = || self.spaces.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(record) = self.catalog.tenant(tenant)? {
            let admitted = spaces()
                .get_mut(tenant)
                .is_some_and(|k| k.admit(Instant::now(), record.quota, needed));
            if admitted {
                return Ok(());
            }
        }
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
        spaces().insert(
            tenant.clone(),
            KnownSpace {
                read: Instant::now(),
                quota: space.quota,
                available: space.available,
                admitted: needed,
            },
        );
        Ok(())
    }

    /// The quota error for a write ZFS refused, with the tenant's figures when they can be read.
    pub(super) fn quota_refusal(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
        needed: u64,
    ) -> ArchiveError {
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

    /// Reads an archived file and checks it against what it was archived with; blocking. A
    /// damaged file is recorded and refused ([`ArchiveError::Corrupt`]); one the catalog
    /// lacks is catalogued first.
    pub fn fetch(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
    ) -> Result<FetchedWal, ArchiveError> {
        let v = self.read_verified(cluster, name, false)?;
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
        Ok(self.read_verified(cluster, name, true)?.plain)
    }

    /// Reads and checks a file; keeps all its original bytes with `whole`, else only what the
    /// header checks need (all of a small text file).
    pub(super) fn read_verified(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
        whole: bool,
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
        let keep = if whole {
            usize::MAX
        } else {
            match name.kind() {
                WalFileKind::History | WalFileKind::Backup => super::text::MAX_TEXT_FILE,
                _ => 8192,
            }
        };
        match stored::verify(bytes, keep) {
            Ok(v) => {
                if self.catalog.wal_file(cluster, name)?.is_none() {
                    let lock = self.lock(cluster);
                    let _guard = lock.lock().unwrap_or_else(|p| p.into_inner());
                    // Only what passes the checks of a push enters the catalog.
                    self.check_content(cluster, name, &v.plain, v.meta.size)?;
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
        match self.read_verified(cluster, name, false) {
            Ok(v) => {
                let size = v.meta.size;
                if let Err(e) = self.check_content(cluster, name, &v.plain, size) {
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
}

#[cfg(test)]
mod space_tests {
    use super::*;

    fn known(available: u64, quota: Option<u64>, read: Instant) -> KnownSpace {
        KnownSpace {
            read,
            quota,
            available,
            admitted: 0,
        }
    }

    #[test]
    fn a_fresh_roomy_reading_admits_and_counts() {
        let t = Instant::now();
        let mut k = known(WRITE_HEADROOM + 100, Some(10 << 30), t);
        assert!(k.admit(t, Some(10 << 30), 60));
        assert_eq!(k.admitted, 60);
        // What was admitted counts: 60 + 60 leaves less than the slack.
        assert!(!k.admit(t, Some(10 << 30), 60));
        assert!(k.admit(t, Some(10 << 30), 40));
    }

    #[test]
    fn an_old_reading_or_a_changed_quota_goes_back_to_zfs() {
        let t = Instant::now();
        let mut k = known(10 << 30, Some(20 << 30), t);
        assert!(!k.admit(t + SPACE_FRESH, Some(20 << 30), 1));
        assert!(
            !k.admit(t, Some(1 << 30), 1),
            "set-quota must be seen at once"
        );
        assert!(!k.admit(t, None, 1));
        assert_eq!(k.admitted, 0);
    }

    #[test]
    fn near_the_end_every_push_reads() {
        let t = Instant::now();
        let mut k = known(WRITE_HEADROOM, None, t);
        assert!(!k.admit(t, None, 1));
    }
}
