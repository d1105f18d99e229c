//! Base backups (DESIGN §6): a session receives the blocks that changed since the cluster's
//! copy was last written, writes them in place into the `data` and `tblspc/<oid>` datasets,
//! writes `backup_label` and `tablespace_map`, waits until the archive holds the WAL the copy
//! needs, and takes one recursive snapshot of `db` with the backup's properties.
//!
//! Invariants:
//! - at most one session per cluster; its [`Lease`] ends when the session is dropped, so a
//!   client that dies releases the cluster;
//! - a snapshot named after a backup exists only once the backup is complete: it is the last
//!   step, and its properties are set in the same atomic `zfs snapshot -r -o`;
//! - the manifest never vouches for a block the disk does not hold: a session records that it
//!   is open before writing and the blocks it touches before writing them, and the next
//!   session re-hashes those blocks (after a reboot, every file changed since it began).

pub mod files;
pub mod label;
pub mod props;
mod room;
mod session;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use walvault_proto::{ClusterId, Lsn, TimelineId, WalFileName};

use crate::catalog::{
    BackupKind, BackupRecord, BackupStats, Catalog, CatalogError, ClusterBinding,
};
use crate::layout::{ClusterLayout, DATA_RECORDSIZE};
use crate::storage::{DatasetOptions, Storage, StorageError};
use crate::wal::{ArchiveError, WalArchive};
use files::{Owner, ReconcileError};

pub use session::{FinishRequest, IncomingBlock, ManifestItem, Session};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cluster {0} does not exist")]
    ClusterNotFound(ClusterId),
    #[error(
        "{cluster}: backup {running} is already running (began {since} from {host}); \
         wait for it to finish"
    )]
    AlreadyRunning {
        cluster: ClusterId,
        running: String,
        since: String,
        host: String,
    },
    #[error(
        "{cluster}: this database has system identifier {actual}, but the cluster's archive \
         holds system {expected}; is the client configured for the right cluster?"
    )]
    SystemIdentifierMismatch {
        cluster: ClusterId,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{cluster}: this database has {what} {actual}, but the cluster's archive holds {expected}"
    )]
    BindingMismatch {
        cluster: ClusterId,
        what: &'static str,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{cluster}: the backup announces {announced} tablespaces, more than \
         limits.max_tablespaces ({limit}); raise it in the server's configuration if the \
         database really has that many"
    )]
    TooManyTablespaces {
        cluster: ClusterId,
        announced: usize,
        limit: u32,
    },
    #[error("{cluster}: backup {backup}: {detail}")]
    Protocol {
        cluster: ClusterId,
        backup: String,
        detail: String,
    },
    #[error(
        "{cluster}: backup {backup}: block {index} of {file} does not match the blake3 the \
         client sent (damaged in transit); the backup is abandoned"
    )]
    BlockChecksumMismatch {
        cluster: ClusterId,
        backup: String,
        /// `area/path`.
        file: String,
        index: u64,
    },
    #[error(
        "{cluster}: backup {backup}: the archive still lacks {segment} (WAL through the stop \
         LSN {stop_lsn} is needed) after {waited_secs} s; check archive_command on the database \
         host (walvault wal-push)"
    )]
    WalMissing {
        cluster: ClusterId,
        backup: String,
        segment: WalFileName,
        stop_lsn: Lsn,
        waited_secs: u64,
    },
    #[error(
        "tenant {tenant} is over its quota{} while backup {backup} of {cluster} writes; raise \
         it with `walvault tenant set-quota {tenant} SIZE` or prune",
        quota.map(|q| format!(" of {}", crate::human_bytes(q))).unwrap_or_default()
    )]
    QuotaExceeded {
        tenant: walvault_proto::TenantId,
        /// `None`: the pool itself is full.
        quota: Option<u64>,
        cluster: ClusterId,
        backup: String,
    },
    #[error(
        "{cluster}: the pool is full while {}{context}; make room in the pool (zpool list) or \
         prune old backups",
        backup_prefix(backup)
    )]
    StorageFull {
        cluster: ClusterId,
        backup: String,
        context: String,
    },
    #[error("{cluster}: {}{context}: {source}", backup_prefix(backup))]
    Io {
        cluster: ClusterId,
        backup: String,
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{cluster}: {context}: {source}")]
    Storage {
        cluster: ClusterId,
        context: String,
        #[source]
        source: Box<StorageError>,
    },
    #[error("{cluster}: bring the manifest in line with the files: {source}")]
    Reconcile {
        cluster: ClusterId,
        #[source]
        source: ReconcileError,
    },
    #[error(transparent)]
    Archive(Box<ArchiveError>),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// "backup <id>: " in messages, nothing before a session has an id.
fn backup_prefix(backup: &str) -> String {
    if backup.is_empty() {
        String::new()
    } else {
        format!("backup {backup}: ")
    }
}

impl From<ArchiveError> for BackupError {
    fn from(e: ArchiveError) -> Self {
        BackupError::Archive(Box::new(e))
    }
}

/// What the client says when it begins.
#[derive(Debug, Clone)]
pub struct BeginRequest {
    pub cluster: ClusterId,
    pub binding: ClusterBinding,
    pub label: String,
    pub tablespaces: Vec<u32>,
    pub host: String,
}

/// A backup in progress, as the listing shows it.
#[derive(Debug)]
pub struct Running {
    pub id: String,
    pub kind: BackupKind,
    pub label: String,
    pub host: String,
    pub started_unix: i64,
    pub started: std::time::Instant,
    /// Start LSN and timeline, once the client has called pg_backup_start.
    pub start: Mutex<Option<(Lsn, TimelineId)>>,
    pub stats: Mutex<BackupStats>,
}

/// A backup as listed: complete ones from the catalog, the running one live.
#[derive(Debug, Clone)]
pub struct BackupView {
    pub record: BackupRecord,
    pub running: bool,
    /// Bytes held only by this backup's snapshots.
    pub snapshot_bytes: u64,
}

type Registry = Arc<Mutex<HashMap<ClusterId, Arc<Running>>>>;

/// The hold a session has on its cluster; dropping it lets the next backup begin.
#[derive(Debug)]
pub struct Lease {
    registry: Registry,
    cluster: ClusterId,
    id: String,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut map = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&self.cluster).is_some_and(|r| r.id == self.id) {
            map.remove(&self.cluster);
        }
    }
}

#[derive(Debug, Clone)]
pub struct Backups {
    storage: Arc<dyn Storage>,
    catalog: Catalog,
    archive: WalArchive,
    owner: Option<Owner>,
    wal_wait: Duration,
    /// Tablespaces a backup may announce, and the largest file it may send.
    max_tablespaces: u32,
    max_file_bytes: u64,
    running: Registry,
}

/// `YYYYMMDDTHHMMSSZ` of a Unix time (UTC): backup ids sort by time.
pub fn utc_stamp(unix: i64) -> String {
    let (y, mo, d, h, mi, s) = walvault_proto::utc_civil(unix);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

impl Backups {
    pub fn new(
        storage: Arc<dyn Storage>,
        catalog: Catalog,
        archive: WalArchive,
        pg_user: &str,
        wal_wait: Duration,
        limits: &crate::config::Limits,
    ) -> Self {
        let owner = Owner::lookup(pg_user);
        if owner.is_none() {
            tracing::info!(
                pg_user,
                "backup files keep the server's own owner (not root, or no such user)"
            );
        }
        Self {
            storage,
            catalog,
            archive,
            owner,
            wal_wait,
            max_tablespaces: limits.max_tablespaces,
            max_file_bytes: limits.max_file_bytes,
            running: Arc::default(),
        }
    }

    fn storage_err(
        cluster: &ClusterId,
        context: impl Into<String>,
    ) -> impl FnOnce(StorageError) -> BackupError {
        let cluster = cluster.clone();
        let context = context.into();
        move |e| BackupError::Storage {
            cluster,
            context,
            source: Box::new(e),
        }
    }

    /// Starts a session: takes the cluster's lease, checks the database against the archive,
    /// prepares the datasets, and re-hashes what an unfinished session left behind.
    /// Blocking.
    pub fn begin(&self, req: BeginRequest) -> Result<Session, BackupError> {
        let cluster = req.cluster.clone();
        if self.catalog.cluster(&cluster)?.is_none() {
            return Err(BackupError::ClusterNotFound(cluster));
        }
        let mut announced = req.tablespaces.clone();
        announced.sort_unstable();
        announced.dedup();
        if announced.len() > self.max_tablespaces as usize {
            return Err(BackupError::TooManyTablespaces {
                cluster,
                announced: announced.len(),
                limit: self.max_tablespaces,
            });
        }
        let previous = self.catalog.backups(&cluster)?;
        let kind = if previous.is_empty() {
            BackupKind::Full
        } else {
            BackupKind::Incremental
        };
        let now = crate::unix_now();
        let mut id = utc_stamp(now);
        // Two backups begun within one second get distinct ids.
        let mut n = 1;
        while previous.iter().any(|b| b.id == id) {
            n += 1;
            id = format!("{}-{n}", utc_stamp(now));
        }
        let lease = self.lease(&cluster, &id, kind, &req, now)?;
        let running = lease.1;
        let lease = lease.0;

        self.check_binding(&cluster, req.binding)?;
        // Datasets only of what exists: an announced tablespace gets one when the backup
        // first sends a file of it (`Session::root`), so announcing costs nothing.
        let dirs = self.area_dirs(&cluster)?;

        if let Some(open) = self.catalog.open_session_of(&cluster)? {
            self.adopt_snapshot(&cluster, &open.backup_id)?;
            // The clock may have been a little behind when the files were written.
            let since = open.started_unix - 2;
            let touched = self.catalog.touched(&cluster)?;
            let same_boot = open.boot_id.is_some() && open.boot_id == boot_id();
            let changed = if same_boot {
                files::Changed::Touched {
                    since,
                    touched: &touched,
                }
            } else {
                files::Changed::Since(since)
            };
            for (area, root) in &dirs {
                let done = files::reconcile(&self.catalog, &cluster, *area, root, changed)
                    .map_err(|source| BackupError::Reconcile {
                        cluster: cluster.clone(),
                        source,
                    })?;
                tracing::info!(%cluster, interrupted = %open.backup_id, %area, same_boot, rehashed = done.rehashed, bytes_hashed = done.bytes_hashed, removed = done.removed, "re-hashed what an unfinished backup touched");
            }
            self.catalog.clear_touched(&cluster)?;
        }
        self.catalog.open_session(
            &cluster,
            &crate::catalog::OpenSession {
                backup_id: id.clone(),
                started_unix: now,
                boot_id: boot_id(),
            },
        )?;
        tracing::info!(%cluster, backup = %id, kind = kind.as_str(), host = %req.host, "backup began");
        Ok(Session::new(
            self.clone(),
            cluster,
            id,
            kind,
            req,
            dirs,
            running,
            lease,
        ))
    }

    /// A session that took its snapshot but stopped before cataloguing it (the server died
    /// in between) still made a complete backup: the snapshot's properties say so.
    fn adopt_snapshot(&self, cluster: &ClusterId, id: &str) -> Result<(), BackupError> {
        let l = ClusterLayout::of(cluster).map_err(Self::storage_err(cluster, "name datasets"))?;
        let snapshots = self
            .storage
            .snapshots(&l.db)
            .map_err(Self::storage_err(cluster, "list backups"))?;
        let record = snapshots
            .iter()
            .filter(|s| s.name == id)
            .find_map(|s| props::record_from_properties(&s.properties));
        if let Some(record) = record {
            tracing::info!(%cluster, backup = id, "catalogued a backup whose snapshot was taken before the server stopped");
            self.catalog.put_backup(cluster, &record)?;
        }
        Ok(())
    }

    fn lease(
        &self,
        cluster: &ClusterId,
        id: &str,
        kind: BackupKind,
        req: &BeginRequest,
        now: i64,
    ) -> Result<(Lease, Arc<Running>), BackupError> {
        let mut map = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = map.get(cluster) {
            return Err(BackupError::AlreadyRunning {
                cluster: cluster.clone(),
                running: r.id.clone(),
                since: format!("{} s ago", r.started.elapsed().as_secs()),
                host: if r.host.is_empty() {
                    "an unnamed host".into()
                } else {
                    r.host.clone()
                },
            });
        }
        let running = Arc::new(Running {
            id: id.to_owned(),
            kind,
            label: req.label.clone(),
            host: req.host.clone(),
            started_unix: now,
            started: std::time::Instant::now(),
            start: Mutex::new(None),
            stats: Mutex::new(BackupStats::default()),
        });
        map.insert(cluster.clone(), running.clone());
        Ok((
            Lease {
                registry: self.running.clone(),
                cluster: cluster.clone(),
                id: id.to_owned(),
            },
            running,
        ))
    }

    fn check_binding(&self, cluster: &ClusterId, b: ClusterBinding) -> Result<(), BackupError> {
        let Some(held) = self.archive.ensure_binding(cluster, b)? else {
            return Ok(());
        };
        if held.system_identifier != b.system_identifier {
            return Err(BackupError::SystemIdentifierMismatch {
                cluster: cluster.clone(),
                expected: held.system_identifier,
                actual: b.system_identifier,
            });
        }
        let mismatch = |what, expected: u32, actual: u32| BackupError::BindingMismatch {
            cluster: cluster.clone(),
            what,
            expected: expected.into(),
            actual: actual.into(),
        };
        if held.wal_segment_size != b.wal_segment_size {
            return Err(mismatch(
                "WAL segment size",
                held.wal_segment_size,
                b.wal_segment_size,
            ));
        }
        if held.pg_major != b.pg_major {
            return Err(mismatch(
                "PostgreSQL major version",
                held.pg_major,
                b.pg_major,
            ));
        }
        Ok(())
    }

    /// The root directory of every area the cluster has a dataset for: PGDATA and each
    /// tablespace an earlier backup sent (a tablespace dropped since keeps its dataset, which
    /// older snapshots hold; the client empties it through the manifest).
    fn area_dirs(
        &self,
        cluster: &ClusterId,
    ) -> Result<BTreeMap<walvault_proto::Area, std::path::PathBuf>, BackupError> {
        use walvault_proto::Area;
        let l = ClusterLayout::of(cluster).map_err(Self::storage_err(cluster, "name datasets"))?;
        let mut dirs = BTreeMap::new();
        dirs.insert(
            Area::Data,
            self.storage
                .mountpoint(&l.data)
                .map_err(Self::storage_err(cluster, "find the data dataset"))?,
        );
        let existing = self
            .storage
            .children(&l.tablespaces)
            .map_err(Self::storage_err(cluster, "list tablespace datasets"))?;
        for oid in existing.iter().filter_map(|n| n.parse::<u32>().ok()) {
            let ds = l
                .tablespaces
                .join(&oid.to_string())
                .map_err(Self::storage_err(cluster, "name a tablespace dataset"))?;
            dirs.insert(
                Area::Tablespace(oid),
                self.storage
                    .mountpoint(&ds)
                    .map_err(Self::storage_err(cluster, "find a tablespace dataset"))?,
            );
        }
        for dir in dirs.values() {
            self.prepare_root(cluster, dir)?;
        }
        Ok(dirs)
    }

    /// Creates the dataset of a tablespace the backup announced and now sends; its root.
    pub(super) fn create_tablespace(
        &self,
        cluster: &ClusterId,
        oid: u32,
    ) -> Result<std::path::PathBuf, BackupError> {
        let l = ClusterLayout::of(cluster).map_err(Self::storage_err(cluster, "name datasets"))?;
        let ds = l
            .tablespaces
            .join(&oid.to_string())
            .map_err(Self::storage_err(cluster, "name a tablespace dataset"))?;
        if !self
            .storage
            .exists(&ds)
            .map_err(Self::storage_err(cluster, "look for a tablespace dataset"))?
        {
            self.storage
                .create(
                    &ds,
                    &DatasetOptions {
                        recordsize: Some(DATA_RECORDSIZE),
                        ..DatasetOptions::default()
                    },
                )
                .map_err(Self::storage_err(
                    cluster,
                    format!("create the dataset of tablespace {oid}"),
                ))?;
            tracing::info!(%cluster, oid, "created a tablespace dataset");
        }
        let dir = self
            .storage
            .mountpoint(&ds)
            .map_err(Self::storage_err(cluster, "find a tablespace dataset"))?;
        self.prepare_root(cluster, &dir)?;
        Ok(dir)
    }

    /// PostgreSQL refuses a data directory others can read.
    fn prepare_root(&self, cluster: &ClusterId, dir: &std::path::Path) -> Result<(), BackupError> {
        std::fs::set_permissions(dir, files::permissions(0o700))
            .and_then(|()| Owner::apply(self.owner, dir))
            .map_err(|source| {
                session::io_error(
                    self.storage.as_ref(),
                    cluster.clone(),
                    String::new(),
                    format!("prepare {}", dir.display()),
                    source,
                )
            })
    }

    /// The cluster's backups, oldest first, with the running one last.
    /// The backup running on `cluster`: `Some(None)` before it has its start LSN.
    pub fn running_start(&self, cluster: &ClusterId) -> Option<Option<Lsn>> {
        let map = self.running.lock().unwrap_or_else(|p| p.into_inner());
        map.get(cluster).map(|r| {
            r.start
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|(lsn, _)| lsn)
        })
    }

    pub fn list(&self, cluster: &ClusterId) -> Result<Vec<BackupView>, BackupError> {
        if self.catalog.cluster(cluster)?.is_none() {
            return Err(BackupError::ClusterNotFound(cluster.clone()));
        }
        let held = self.snapshot_bytes(cluster)?;
        let mut out: Vec<BackupView> = self
            .catalog
            .backups(cluster)?
            .into_iter()
            .map(|record| BackupView {
                snapshot_bytes: held.get(&record.id).copied().unwrap_or(0),
                record,
                running: false,
            })
            .collect();
        let running = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(cluster)
            .cloned();
        if let Some(r) = running {
            let (start_lsn, timeline) = r
                .start
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .unwrap_or((Lsn(0), TimelineId(0)));
            let mut stats = *r.stats.lock().unwrap_or_else(|p| p.into_inner());
            stats.duration_ms = r.started.elapsed().as_millis() as u64;
            out.push(BackupView {
                record: BackupRecord {
                    id: r.id.clone(),
                    kind: r.kind,
                    base: None,
                    label: r.label.clone(),
                    host: r.host.clone(),
                    start_lsn,
                    stop_lsn: Lsn(0),
                    timeline,
                    start_unix: r.started_unix,
                    stop_unix: 0,
                    stats,
                    receipt: None,
                },
                running: true,
                snapshot_bytes: 0,
            });
        }
        Ok(out)
    }

    /// Bytes each backup's snapshots hold alone, summed over `db` and its descendants.
    fn snapshot_bytes(&self, cluster: &ClusterId) -> Result<HashMap<String, u64>, BackupError> {
        let l = ClusterLayout::of(cluster).map_err(Self::storage_err(cluster, "name datasets"))?;
        let mut datasets = vec![l.db.clone(), l.data.clone(), l.tablespaces.clone()];
        for child in self
            .storage
            .children(&l.tablespaces)
            .map_err(Self::storage_err(cluster, "list tablespace datasets"))?
        {
            datasets.push(
                l.tablespaces
                    .join(&child)
                    .map_err(Self::storage_err(cluster, "name a tablespace dataset"))?,
            );
        }
        // Roll-forward snapshots are held by their chains.
        if self
            .storage
            .exists(&l.rollforward)
            .map_err(Self::storage_err(cluster, "look for roll-forward chains"))?
        {
            for base in self
                .storage
                .children(&l.rollforward)
                .map_err(Self::storage_err(cluster, "list roll-forward chains"))?
            {
                let chain = l
                    .snapshot_of(Some(&base))
                    .map_err(Self::storage_err(cluster, "name a roll-forward chain"))?;
                datasets.extend([chain.parent, chain.data]);
            }
        }
        let mut out = HashMap::new();
        for ds in datasets {
            let snapshots = match self.storage.snapshots(&ds) {
                // A roll-forward chain created or destroyed meanwhile.
                Err(StorageError::DatasetNotFound(_)) => continue,
                r => r.map_err(Self::storage_err(
                    cluster,
                    format!("list snapshots of {ds}"),
                ))?,
            };
            for s in snapshots {
                *out.entry(s.name).or_insert(0) += s.used;
            }
        }
        Ok(out)
    }
}

/// The kernel's id of this boot (Linux), which tells a crash of the server from a reboot.
fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}
