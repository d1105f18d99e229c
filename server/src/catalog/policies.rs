//! Retention policies: a tenant's, keyed `tenant`, and a cluster's override, keyed
//! `tenant \0 cluster`. Both are also kept as properties of the datasets, from which
//! `rebuild` recovers them. And the prune job of a cluster while it runs: what it set out to
//! destroy, so that a killed prune is finished by the next one.

use serde::{de::DeserializeOwned, Serialize};
use walvault_proto::{ClusterId, TenantId};

use super::{cluster_key, decode, encode, Catalog, CatalogError};

impl Catalog {
    pub fn put_tenant_policy<T: Serialize>(&self, t: &TenantId, p: &T) -> Result<(), CatalogError> {
        self.policies.insert(t.as_str().as_bytes(), encode(p))?;
        self.flush()
    }

    pub fn tenant_policy<T: DeserializeOwned>(
        &self,
        t: &TenantId,
    ) -> Result<Option<T>, CatalogError> {
        let key = t.as_str().as_bytes();
        self.policies.get(key)?.map(|v| decode(key, &v)).transpose()
    }

    pub fn put_cluster_policy<T: Serialize>(
        &self,
        c: &ClusterId,
        p: &T,
    ) -> Result<(), CatalogError> {
        self.policies.insert(cluster_key(c), encode(p))?;
        self.flush()
    }

    pub fn remove_cluster_policy(&self, c: &ClusterId) -> Result<(), CatalogError> {
        self.policies.remove(cluster_key(c))?;
        self.flush()
    }

    pub fn cluster_policy<T: DeserializeOwned>(
        &self,
        c: &ClusterId,
    ) -> Result<Option<T>, CatalogError> {
        let key = cluster_key(c);
        self.policies
            .get(&key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }
}

impl Catalog {
    pub fn put_prune_job<T: Serialize>(&self, c: &ClusterId, job: &T) -> Result<(), CatalogError> {
        self.prune_jobs.insert(cluster_key(c), encode(job))?;
        self.flush()
    }

    pub fn prune_job<T: DeserializeOwned>(&self, c: &ClusterId) -> Result<Option<T>, CatalogError> {
        let key = cluster_key(c);
        self.prune_jobs
            .get(&key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    pub fn remove_prune_job(&self, c: &ClusterId) -> Result<(), CatalogError> {
        self.prune_jobs.remove(cluster_key(c))?;
        self.flush()
    }
}
