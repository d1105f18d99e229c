//! Where each tenant's and cluster's data lives in the storage (DESIGN §4), and the names of
//! the `walvault:*` properties that let the catalog be rebuilt from the storage alone.

use walvault_proto::{ClusterId, TenantId};

use crate::storage::{DatasetPath, StorageError};

/// Properties of a tenant's dataset.
pub mod tenant_props {
    pub const TENANT: &str = "tenant";
    pub const CREATED: &str = "created";
    pub const DEDUP: &str = "dedup";
    /// The tenant's retention policy, as JSON.
    pub const POLICY: &str = "policy";
}

/// Properties of a cluster's dataset.
pub mod cluster_props {
    pub const CLUSTER: &str = "cluster";
    pub const CREATED: &str = "created";
    pub const SYSTEM_IDENTIFIER: &str = "system_identifier";
    pub const WAL_SEGMENT_SIZE: &str = "wal_segment_size";
    pub const PG_MAJOR: &str = "pg_major";
    /// The cluster's changes to its tenant's retention policy, as JSON (empty: none).
    pub const POLICY_OVERRIDE: &str = "policy_override";
    /// Segment ranges the retention policy pruned on purpose: `tli:first-last,…` (hex
    /// timeline, decimal segment numbers), so that a rebuilt catalog does not call them holes.
    pub const PRUNED_WAL: &str = "pruned_wal";
}

/// Properties of a backup's snapshots (set on every snapshot of `db` and its descendants).
pub mod backup_props {
    pub const BACKUP: &str = "backup";
    pub const KIND: &str = "kind";
    pub const LABEL: &str = "label";
    pub const HOST: &str = "host";
    pub const START_LSN: &str = "start_lsn";
    pub const STOP_LSN: &str = "stop_lsn";
    pub const TIMELINE: &str = "timeline";
    pub const START_TIME: &str = "start_time";
    pub const STOP_TIME: &str = "stop_time";
    /// Whether recovery has replayed this copy past its stop LSN.
    pub const CONSISTENT: &str = "consistent";
    pub const VERIFIED: &str = "verified";
    /// bytes read, sent, written, blocks written, files, changed, deleted, duration ms.
    pub const STATS: &str = "stats";
    /// A roll-forward snapshot's base backup (absent on backups).
    pub const BASE: &str = "base";
    /// Its verification's receipt, as JSON: set once the snapshot was checked.
    pub const RECEIPT: &str = "receipt";
}

/// Property of a restore's dataset (`restores/<id>`): the catalog's record, as JSON.
pub const RESTORE_PROPERTY: &str = "restore";

/// Record size of PGDATA datasets. On 4 KiB-sector pools an 8 KiB record (PostgreSQL's page)
/// never stores below 4 KiB, capping compression at 2x; 32 KiB halves the footprint at no
/// measured cost to replay (README). Applies to datasets created from now on; ZFS keeps each
/// existing record as it was written.
pub const DATA_RECORDSIZE: u32 = 32 << 10;
/// Record size of the WAL archive: whole compressed files are written once and read whole.
pub const WAL_RECORDSIZE: u32 = 1 << 20;

pub fn tenant(t: &TenantId) -> Result<DatasetPath, StorageError> {
    DatasetPath::new([t.as_str()])
}

/// The datasets of one cluster.
#[derive(Debug, Clone)]
pub struct ClusterLayout {
    pub cluster: DatasetPath,
    /// Parent of everything a backup snapshots.
    pub db: DatasetPath,
    pub data: DatasetPath,
    pub tablespaces: DatasetPath,
    pub wal: DatasetPath,
    pub restores: DatasetPath,
    /// Parent of the roll-forward chains, one per base backup: `rollforward/<backup>`.
    pub rollforward: DatasetPath,
    /// Parent of the clones snapshot verification makes (and destroys).
    pub verify: DatasetPath,
}

impl ClusterLayout {
    pub fn of(c: &ClusterId) -> Result<Self, StorageError> {
        let cluster = DatasetPath::new([c.tenant().as_str(), c.name()])?;
        let db = cluster.join("db")?;
        Ok(Self {
            data: db.join("data")?,
            tablespaces: db.join("tblspc")?,
            wal: cluster.join("wal")?,
            restores: cluster.join("restores")?,
            rollforward: cluster.join("rollforward")?,
            verify: cluster.join("verify")?,
            db,
            cluster,
        })
    }

    /// The roll-forward chain cloned from backup `base`.
    pub fn chain(&self, base: &str) -> Result<DatasetPath, StorageError> {
        self.rollforward.join(base)
    }

    /// Where snapshot `id` lives: the datasets holding the PGDATA and the tablespaces at
    /// `@id`. A backup's are `db/data` and `db/tblspc`; a roll-forward snapshot's are its
    /// chain's (`rollforward/<base>/data`, `…/tblspc`).
    pub fn snapshot_of(&self, base: Option<&str>) -> Result<SnapshotDatasets, StorageError> {
        Ok(match base {
            None => SnapshotDatasets {
                parent: self.db.clone(),
                data: self.data.clone(),
                tablespaces: self.tablespaces.clone(),
            },
            Some(b) => {
                let chain = self.chain(b)?;
                SnapshotDatasets {
                    data: chain.join("data")?,
                    tablespaces: chain.join("tblspc")?,
                    parent: chain,
                }
            }
        })
    }
}

/// The datasets a restorable snapshot is taken of, recursively from `parent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDatasets {
    pub parent: DatasetPath,
    pub data: DatasetPath,
    pub tablespaces: DatasetPath,
}

/// Directory inside the WAL dataset where files are written before they are renamed into
/// place; never listed as archive content, emptied at start-up.
pub const INCOMING_DIR: &str = ".incoming";
/// Extension of archived files (they are zstd files).
pub const STORED_EXT: &str = ".zst";
