//! What the catalog knows about the archive's integrity: archived files found damaged (keyed
//! `tenant \0 cluster \0 name`), the segment ranges the retention policy pruned on purpose
//! (keyed by cluster; also a property of the WAL dataset, from which `rebuild` recovers them),
//! and each cluster's last verification.
//!
//! Damage is not rebuilt: the next fetch or verification finds it again.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use walvault_proto::{ClusterId, WalFileName};

use super::{cluster_key, decode, encode, Catalog, CatalogError};

/// An archived file that cannot be read back as it was archived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamageRecord {
    pub name: String,
    pub reason: String,
    pub found_unix: i64,
}

fn file_key(cluster: &ClusterId, name: &WalFileName) -> Vec<u8> {
    let mut k = cluster_key(cluster);
    k.push(0);
    k.extend_from_slice(name.as_str().as_bytes());
    k
}

impl Catalog {
    pub fn put_damage(&self, cluster: &ClusterId, d: &DamageRecord) -> Result<(), CatalogError> {
        let name: WalFileName = d.name.parse().map_err(|e| CatalogError::Damaged {
            key: d.name.clone(),
            detail: format!("{e}"),
        })?;
        self.damage.insert(file_key(cluster, &name), encode(d))?;
        self.flush()
    }

    pub fn remove_damage(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
    ) -> Result<(), CatalogError> {
        if self.damage.remove(file_key(cluster, name))?.is_some() {
            self.flush()?;
        }
        Ok(())
    }

    /// A cluster's damaged files, by name.
    pub fn damage(&self, cluster: &ClusterId) -> Result<Vec<DamageRecord>, CatalogError> {
        let mut prefix = cluster_key(cluster);
        prefix.push(0);
        self.damage
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn put_pruned<T: Serialize>(
        &self,
        cluster: &ClusterId,
        ranges: &T,
    ) -> Result<(), CatalogError> {
        self.pruned.insert(cluster_key(cluster), encode(ranges))?;
        self.flush()
    }

    pub fn pruned<T: DeserializeOwned>(
        &self,
        cluster: &ClusterId,
    ) -> Result<Option<T>, CatalogError> {
        let key = cluster_key(cluster);
        self.pruned.get(&key)?.map(|v| decode(&key, &v)).transpose()
    }

    pub fn put_verification<T: Serialize>(
        &self,
        cluster: &ClusterId,
        report: &T,
    ) -> Result<(), CatalogError> {
        self.verifications
            .insert(cluster_key(cluster), encode(report))?;
        self.flush()
    }

    pub fn verification<T: DeserializeOwned>(
        &self,
        cluster: &ClusterId,
    ) -> Result<Option<T>, CatalogError> {
        let key = cluster_key(cluster);
        self.verifications
            .get(&key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }
}
