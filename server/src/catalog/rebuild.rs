//! Rebuilding the catalog from the storage alone: datasets and their `walvault:*` properties
//! give tenants and clusters, the archived files' own metadata frames give the WAL entries,
//! the properties of `db` snapshots give the backups, and hashing the live PGDATA copy gives
//! the block manifest.
//! Datasets without our properties are left alone and reported.

use std::collections::BTreeMap;
use std::fs;

use walvault_proto::{ClusterId, TenantId, WalFileName};

use super::{Catalog, CatalogError, ClusterBinding, ClusterRecord, TenantRecord, WalRecord};
use crate::layout::{self, cluster_props, tenant_props, ClusterLayout, STORED_EXT};
use crate::storage::{DatasetPath, Storage, StorageError};
use crate::wal::stored::StoredMeta;

#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error("{context}: {source}")]
    Storage {
        context: String,
        #[source]
        source: StorageError,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

/// What a rebuild found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    pub tenants: usize,
    pub clusters: usize,
    pub wal_files: usize,
    pub backups: usize,
    pub restores: usize,
    /// Files hashed into block manifests.
    pub manifest_files: u64,
    /// Things that were skipped, one line each.
    pub skipped: Vec<String>,
}

fn st(context: impl Into<String>) -> impl FnOnce(StorageError) -> RebuildError {
    let context = context.into();
    move |source| RebuildError::Storage { context, source }
}

fn prop<T: std::str::FromStr>(props: &BTreeMap<String, String>, key: &str) -> Option<T> {
    props.get(key).and_then(|v| v.parse().ok())
}

/// Empties `catalog` and fills it again from `storage`.
pub fn rebuild(catalog: &Catalog, storage: &dyn Storage) -> Result<RebuildReport, RebuildError> {
    catalog.clear()?;
    let mut report = RebuildReport::default();
    for tenant_name in storage
        .children(&DatasetPath::root())
        .map_err(st("list tenants"))?
    {
        let ds = DatasetPath::root()
            .join(&tenant_name)
            .map_err(st("name tenant dataset"))?;
        let props = storage
            .properties(&ds)
            .map_err(st(format!("read properties of {ds}")))?;
        let Some(name) = prop::<TenantId>(&props, tenant_props::TENANT) else {
            report.skipped.push(format!(
                "dataset {ds}: no {}{} property",
                crate::storage::PROPERTY_PREFIX,
                tenant_props::TENANT
            ));
            continue;
        };
        let space = storage
            .space(&ds)
            .map_err(st(format!("read space of {ds}")))?;
        catalog.put_tenant(&TenantRecord {
            name: name.clone(),
            quota: space.quota,
            dedup: prop(&props, tenant_props::DEDUP).unwrap_or(false),
            created_unix: prop(&props, tenant_props::CREATED).unwrap_or(0),
        })?;
        report.tenants += 1;
        if let Some(p) = props
            .get(tenant_props::POLICY)
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        {
            catalog.put_tenant_policy(&name, &p)?;
        }
        rebuild_clusters(catalog, storage, &name, &mut report)?;
    }
    Ok(report)
}

fn rebuild_clusters(
    catalog: &Catalog,
    storage: &dyn Storage,
    tenant: &TenantId,
    report: &mut RebuildReport,
) -> Result<(), RebuildError> {
    let tds = layout::tenant(tenant).map_err(st("name tenant dataset"))?;
    for cname in storage
        .children(&tds)
        .map_err(st(format!("list clusters of {tenant}")))?
    {
        let ds = tds.join(&cname).map_err(st("name cluster dataset"))?;
        let props = storage
            .properties(&ds)
            .map_err(st(format!("read properties of {ds}")))?;
        let Some(id) = prop::<ClusterId>(&props, cluster_props::CLUSTER) else {
            report.skipped.push(format!(
                "dataset {ds}: no {}{} property",
                crate::storage::PROPERTY_PREFIX,
                cluster_props::CLUSTER
            ));
            continue;
        };
        let binding = match (
            prop(&props, cluster_props::SYSTEM_IDENTIFIER),
            prop(&props, cluster_props::WAL_SEGMENT_SIZE),
            prop(&props, cluster_props::PG_MAJOR),
        ) {
            (Some(system_identifier), Some(wal_segment_size), Some(pg_major)) => {
                Some(ClusterBinding {
                    system_identifier,
                    wal_segment_size,
                    pg_major,
                })
            }
            _ => None,
        };
        catalog.put_cluster(&ClusterRecord {
            id: id.clone(),
            created_unix: prop(&props, cluster_props::CREATED).unwrap_or(0),
            binding,
        })?;
        report.clusters += 1;
        if let Some(p) = props
            .get(cluster_props::POLICY_OVERRIDE)
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        {
            catalog.put_cluster_policy(&id, &p)?;
        }
        // What retention pruned on purpose, so that the ledger does not call it a hole.
        if let Some(text) = props.get(cluster_props::PRUNED_WAL) {
            let ranges = crate::wal::decode_pruned(text);
            if !ranges.is_empty() {
                catalog.put_pruned(&id, &ranges)?;
            }
        }
        rebuild_wal(catalog, storage, &id, report)?;
        rebuild_backups(catalog, storage, &id, report)?;
        rebuild_restores(catalog, storage, &id, report)?;
    }
    Ok(())
}

/// Restores from the record each clone's dataset carries.
fn rebuild_restores(
    catalog: &Catalog,
    storage: &dyn Storage,
    cluster: &ClusterId,
    report: &mut RebuildReport,
) -> Result<(), RebuildError> {
    let l = layout::ClusterLayout::of(cluster).map_err(st("name cluster datasets"))?;
    if !storage
        .exists(&l.restores)
        .map_err(st("look for restores"))?
    {
        return Ok(());
    }
    for id in storage
        .children(&l.restores)
        .map_err(st(format!("list the restores of {cluster}")))?
    {
        let ds = l.restores.join(&id).map_err(st("name a restore dataset"))?;
        let props = storage
            .properties(&ds)
            .map_err(st(format!("read properties of {ds}")))?;
        match props
            .get(layout::RESTORE_PROPERTY)
            .and_then(|j| serde_json::from_str::<super::RestoreRecord>(j).ok())
        {
            Some(r) if r.id == id && r.cluster == *cluster => {
                catalog.put_restore(&r)?;
                report.restores += 1;
            }
            _ => report.skipped.push(format!(
                "dataset {ds}: no valid {}{} property (destroy it by hand if it is a leftover clone)",
                crate::storage::PROPERTY_PREFIX,
                layout::RESTORE_PROPERTY
            )),
        }
    }
    Ok(())
}

fn rebuild_backups(
    catalog: &Catalog,
    storage: &dyn Storage,
    cluster: &ClusterId,
    report: &mut RebuildReport,
) -> Result<(), RebuildError> {
    use crate::backup::{files, props};
    use walvault_proto::Area;
    let l = ClusterLayout::of(cluster).map_err(st("name cluster datasets"))?;
    for snap in storage
        .snapshots(&l.db)
        .map_err(st(format!("list the backups of {cluster}")))?
    {
        match props::record_from_properties(&snap.properties) {
            Some(record) => {
                catalog.put_backup(cluster, &record)?;
                report.backups += 1;
            }
            None => report.skipped.push(format!(
                "snapshot {}@{}: not a walvault backup",
                l.db, snap.name
            )),
        }
    }
    // Roll-forward snapshots, one chain per base backup.
    if storage
        .exists(&l.rollforward)
        .map_err(st(format!("look for the roll-forward chains of {cluster}")))?
    {
        for base in storage
            .children(&l.rollforward)
            .map_err(st(format!("list the roll-forward chains of {cluster}")))?
        {
            let chain = l.chain(&base).map_err(st("name a roll-forward chain"))?;
            for snap in storage
                .snapshots(&chain)
                .map_err(st(format!("list the snapshots of {chain}")))?
            {
                match props::record_from_properties(&snap.properties) {
                    Some(record) => {
                        catalog.put_backup(cluster, &record)?;
                        report.backups += 1;
                    }
                    None => report.skipped.push(format!(
                        "snapshot {chain}@{}: not a walvault roll-forward snapshot",
                        snap.name
                    )),
                }
            }
        }
    }
    let mut areas = vec![(Area::Data, l.data.clone())];
    for child in storage
        .children(&l.tablespaces)
        .map_err(st(format!("list the tablespaces of {cluster}")))?
    {
        if let Ok(oid) = child.parse::<u32>() {
            let ds = l
                .tablespaces
                .join(&child)
                .map_err(st("name a tablespace dataset"))?;
            areas.push((Area::Tablespace(oid), ds));
        }
    }
    for (area, ds) in areas {
        let root = storage
            .mountpoint(&ds)
            .map_err(st(format!("find dataset {ds}")))?;
        let done =
            files::reconcile(catalog, cluster, area, &root, files::Changed::All).map_err(|e| {
                RebuildError::Io {
                    context: format!("hash the copy of {cluster} ({area})"),
                    source: std::io::Error::other(e.to_string()),
                }
            })?;
        report.manifest_files += done.rehashed;
    }
    Ok(())
}

fn rebuild_wal(
    catalog: &Catalog,
    storage: &dyn Storage,
    cluster: &ClusterId,
    report: &mut RebuildReport,
) -> Result<(), RebuildError> {
    let l = ClusterLayout::of(cluster).map_err(st("name cluster datasets"))?;
    let dir = storage
        .mountpoint(&l.wal)
        .map_err(st(format!("find the WAL dataset of {cluster}")))?;
    let io = |context: String| move |source| RebuildError::Io { context, source };
    let mut entries: Vec<_> = fs::read_dir(&dir)
        .map_err(io(format!("list {}", dir.display())))?
        .collect::<Result<_, _>>()
        .map_err(io(format!("list {}", dir.display())))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let Some(name) = file_name
            .strip_suffix(STORED_EXT)
            .and_then(|n| n.parse::<WalFileName>().ok())
        else {
            if !file_name.starts_with('.') {
                report
                    .skipped
                    .push(format!("{}: not an archived WAL file", e.path().display()));
            }
            continue;
        };
        let path = e.path();
        let mut f = fs::File::open(&path).map_err(io(format!("open {}", path.display())))?;
        let meta = match StoredMeta::read_from(&mut f) {
            Ok(m) => m,
            Err(err) => {
                report.skipped.push(format!("{}: {err}", path.display()));
                continue;
            }
        };
        let stored_size = f
            .metadata()
            .map_err(io(format!("stat {}", path.display())))?
            .len();
        catalog.put_wal(
            cluster,
            &WalRecord {
                name: name.to_string(),
                size: meta.size,
                stored_size,
                blake3: hex::encode(meta.blake3),
                archived_unix: meta.archived_unix,
            },
        )?;
        report.wal_files += 1;
    }
    Ok(())
}
