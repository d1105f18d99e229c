//! Restores handed out (clones of snapshots, and the instances started on them), and the WAL
//! time index.
//!
//! The time index is a cache of the archive's own content (`wal::timeindex` re-reads any
//! segment it lacks), so it is neither dumped nor rebuilt. Restores are keyed by their id,
//! which is unique across clusters.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use walvault_proto::{ClusterId, WalFileName};

use super::{cluster_key, decode, encode, Catalog, CatalogError};

/// A restore: a clone under `<cluster>/restores/<id>` and what was done with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRecord {
    pub id: String,
    pub cluster: ClusterId,
    pub backup_id: String,
    pub target: String,
    pub timeline: u32,
    /// "dir" or "instance".
    pub delivery: String,
    pub state: String,
    pub port: Option<u16>,
    pub conninfo: String,
    pub host: String,
    pub path: String,
    pub created_unix: i64,
    pub duration_ms: u64,
    pub detail: String,
    pub pg_major: u32,
    /// Where recovery got to: the last replayed LSN and commit time (instances).
    #[serde(default)]
    pub reached_lsn: Option<walvault_proto::Lsn>,
    #[serde(default)]
    pub reached_micros: Option<i64>,
}

fn index_key(cluster: &ClusterId, name: &WalFileName) -> Vec<u8> {
    let mut k = cluster_key(cluster);
    k.push(0);
    k.extend_from_slice(name.as_str().as_bytes());
    k
}

impl Catalog {
    pub fn put_index_entry<T: Serialize>(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
        entry: &T,
    ) -> Result<(), CatalogError> {
        // A cache: losing the last entries in a crash only means reading the segments again.
        self.wal_index
            .insert(index_key(cluster, name), encode(entry))?;
        Ok(())
    }

    pub fn index_entry<T: DeserializeOwned>(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
    ) -> Result<Option<T>, CatalogError> {
        let key = index_key(cluster, name);
        self.wal_index
            .get(&key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    pub fn remove_index_entry(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
    ) -> Result<(), CatalogError> {
        self.wal_index.remove(index_key(cluster, name))?;
        Ok(())
    }

    /// A cluster's index entries by file name.
    pub fn index_entries<T: DeserializeOwned>(
        &self,
        cluster: &ClusterId,
    ) -> Result<Vec<(String, T)>, CatalogError> {
        let mut prefix = cluster_key(cluster);
        prefix.push(0);
        self.wal_index
            .scan_prefix(&prefix)
            .map(|kv| {
                let (k, v) = kv?;
                let name = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((name, decode(&k, &v)?))
            })
            .collect()
    }

    pub fn put_restore(&self, r: &RestoreRecord) -> Result<(), CatalogError> {
        self.restores.insert(r.id.as_bytes(), encode(r))?;
        self.flush()
    }

    pub fn restore(&self, id: &str) -> Result<Option<RestoreRecord>, CatalogError> {
        self.restores
            .get(id.as_bytes())?
            .map(|v| decode(id.as_bytes(), &v))
            .transpose()
    }

    pub fn restores(&self) -> Result<Vec<RestoreRecord>, CatalogError> {
        self.restores
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn remove_restore(&self, id: &str) -> Result<(), CatalogError> {
        self.restores.remove(id.as_bytes())?;
        self.flush()
    }
}
