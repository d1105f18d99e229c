//! Tenants and clusters: creating them in the storage (datasets, quota, dedup, properties)
//! and in the catalog.
//!
//! The storage is written first and the catalog last, so a crash in between leaves datasets
//! that a retry adopts (or `catalog rebuild` finds), never a catalog entry without datasets.

use std::sync::Arc;

use walvault_proto::{ClusterId, TenantId};

use crate::catalog::{Catalog, CatalogError, ClusterRecord, TenantRecord};
use crate::layout::{self, cluster_props, tenant_props, ClusterLayout};
use crate::storage::{DatasetOptions, DatasetPath, Space, Storage, StorageError};
use crate::unix_now;

#[derive(Debug, thiserror::Error)]
pub enum TenancyError {
    #[error("tenant {0} already exists")]
    TenantExists(TenantId),
    #[error("tenant {0} does not exist")]
    TenantNotFound(TenantId),
    #[error("cluster {0} already exists")]
    ClusterExists(ClusterId),
    #[error("cluster {0} does not exist")]
    ClusterNotFound(ClusterId),
    #[error("{context}: {source}")]
    Storage {
        context: String,
        #[source]
        source: StorageError,
    },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

fn storage(context: impl Into<String>) -> impl FnOnce(StorageError) -> TenancyError {
    let context = context.into();
    move |source| TenancyError::Storage { context, source }
}

/// A tenant with its current space use.
#[derive(Debug, Clone)]
pub struct TenantView {
    pub record: TenantRecord,
    pub space: Space,
}

/// A cluster with its archive's size.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub record: ClusterRecord,
    pub wal_files: u64,
    pub used: u64,
}

#[derive(Debug, Clone)]
pub struct Tenancy {
    storage: Arc<dyn Storage>,
    catalog: Catalog,
}

impl Tenancy {
    pub fn new(storage: Arc<dyn Storage>, catalog: Catalog) -> Self {
        Self { storage, catalog }
    }

    pub fn create_tenant(
        &self,
        name: &TenantId,
        quota: Option<u64>,
        dedup: bool,
    ) -> Result<TenantRecord, TenancyError> {
        if self.catalog.tenant(name)?.is_some() {
            return Err(TenancyError::TenantExists(name.clone()));
        }
        let ds = layout::tenant(name).map_err(storage(format!("name tenant {name}")))?;
        let ctx = format!("create dataset for tenant {name}");
        let options = DatasetOptions {
            dedup: Some(dedup),
            quota,
            ..Default::default()
        };
        self.create_or_adopt(&ds, &options)
            .map_err(storage(ctx.clone()))?;
        let record = TenantRecord {
            name: name.clone(),
            quota,
            dedup,
            created_unix: unix_now(),
        };
        for (k, v) in [
            (tenant_props::TENANT, name.to_string()),
            (tenant_props::CREATED, record.created_unix.to_string()),
            (tenant_props::DEDUP, dedup.to_string()),
        ] {
            self.storage
                .set_property(&ds, k, &v)
                .map_err(storage(ctx.clone()))?;
        }
        self.catalog.put_tenant(&record)?;
        tracing::info!(tenant = %name, ?quota, dedup, "tenant created");
        Ok(record)
    }

    /// Creates `ds`, or leaves it if a previous, interrupted attempt already did.
    fn create_or_adopt(
        &self,
        ds: &DatasetPath,
        options: &DatasetOptions,
    ) -> Result<(), StorageError> {
        match self.storage.create(ds, options) {
            Err(StorageError::DatasetExists(_)) => {
                if let Some(q) = options.quota {
                    self.storage.set_quota(ds, Some(q))?;
                }
                Ok(())
            }
            other => other,
        }
    }

    pub fn set_quota(
        &self,
        name: &TenantId,
        quota: Option<u64>,
    ) -> Result<TenantRecord, TenancyError> {
        let mut record = self
            .catalog
            .tenant(name)?
            .ok_or_else(|| TenancyError::TenantNotFound(name.clone()))?;
        let ds = layout::tenant(name).map_err(storage(format!("name tenant {name}")))?;
        self.storage
            .set_quota(&ds, quota)
            .map_err(storage(format!("set quota of tenant {name}")))?;
        record.quota = quota;
        self.catalog.put_tenant(&record)?;
        tracing::info!(tenant = %name, ?quota, "quota changed");
        Ok(record)
    }

    pub fn tenant(&self, name: &TenantId) -> Result<TenantView, TenancyError> {
        let record = self
            .catalog
            .tenant(name)?
            .ok_or_else(|| TenancyError::TenantNotFound(name.clone()))?;
        let ds = layout::tenant(name).map_err(storage(format!("name tenant {name}")))?;
        let space = self
            .storage
            .space(&ds)
            .map_err(storage(format!("read space of tenant {name}")))?;
        Ok(TenantView { record, space })
    }

    pub fn tenants(&self) -> Result<Vec<TenantView>, TenancyError> {
        self.catalog
            .tenants()?
            .iter()
            .map(|t| self.tenant(&t.name))
            .collect()
    }

    pub fn create_cluster(&self, id: &ClusterId) -> Result<ClusterRecord, TenancyError> {
        if self.catalog.tenant(id.tenant())?.is_none() {
            return Err(TenancyError::TenantNotFound(id.tenant().clone()));
        }
        if self.catalog.cluster(id)?.is_some() {
            return Err(TenancyError::ClusterExists(id.clone()));
        }
        let l = ClusterLayout::of(id).map_err(storage(format!("name cluster {id}")))?;
        let ctx = format!("create datasets for cluster {id}");
        let data = DatasetOptions {
            recordsize: Some(layout::DATA_RECORDSIZE),
            ..Default::default()
        };
        let wal = DatasetOptions {
            recordsize: Some(layout::WAL_RECORDSIZE),
            ..Default::default()
        };
        let plain = DatasetOptions::default();
        for (ds, options) in [
            (&l.cluster, &plain),
            (&l.db, &plain),
            (&l.data, &data),
            (&l.tablespaces, &data),
            (&l.wal, &wal),
            (&l.restores, &plain),
        ] {
            self.create_or_adopt(ds, options)
                .map_err(storage(ctx.clone()))?;
        }
        let record = ClusterRecord {
            id: id.clone(),
            created_unix: unix_now(),
            binding: None,
        };
        for (k, v) in [
            (cluster_props::CLUSTER, id.to_string()),
            (cluster_props::CREATED, record.created_unix.to_string()),
        ] {
            self.storage
                .set_property(&l.cluster, k, &v)
                .map_err(storage(ctx.clone()))?;
        }
        self.catalog.put_cluster(&record)?;
        tracing::info!(cluster = %id, "cluster created");
        Ok(record)
    }

    pub fn clusters(&self, tenant: Option<&TenantId>) -> Result<Vec<ClusterView>, TenancyError> {
        let mut out = Vec::new();
        for record in self.catalog.clusters(tenant)? {
            let files = self.catalog.wal_files(&record.id)?;
            let used = files.iter().map(|w| w.stored_size).sum();
            out.push(ClusterView {
                wal_files: files.len() as u64,
                used,
                record,
            });
        }
        Ok(out)
    }
}
