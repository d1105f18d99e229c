//! The catalog: tenants, clusters, archived WAL files, backups and the block manifest, in one
//! SQLite database (`store`).
//!
//! SQLite appears nowhere else. Keys are `tenant \0 cluster \0 name` so one tenant's or one
//! cluster's entries form a contiguous, sorted range; values are a format byte followed by
//! JSON. The catalog is a cache of the storage: everything in it can be rebuilt from datasets,
//! `walvault:*` properties and the archived files themselves (see `rebuild`). Writes are
//! flushed before they are acknowledged; a write the disk cannot take (full, failing) fails
//! its request with [`CatalogError::DiskFull`] or [`CatalogError::Db`] and changes nothing,
//! and writes work again once it can.

mod backups;
mod integrity;
mod policies;
pub mod rebuild;
mod restores;
mod store;

pub use backups::{
    BackupKind, BackupRecord, BackupStats, FileEntry, OpenSession, Ranges, Receipt, Touched,
};
pub use integrity::DamageRecord;
pub use restores::RestoreRecord;

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use walvault_proto::{ClusterId, TenantId, WalFileName};

/// Bumped when the layout changes; `open` refuses a catalog of another version with advice.
const FORMAT_VERSION: u32 = 1;
const FORMAT_KEY: &str = "format_version";
/// First byte of every value.
pub(super) const VALUE_V1: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("open catalog {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: Box<store::OpenError>,
    },
    #[error(
        "catalog {path} has format version {found}, this walvault-server reads {FORMAT_VERSION}; \
         run `walvault-server catalog rebuild`"
    )]
    WrongFormat { path: String, found: u32 },
    #[error(
        "catalog {path} was written by an older walvault-server (sled); run \
         `walvault-server catalog rebuild`, which moves it aside and rebuilds it from the storage"
    )]
    OldStore { path: String },
    #[error(
        "the catalog's disk is full, so this was not recorded; free space where the catalog \
         lives and retry (no restart needed)"
    )]
    DiskFull,
    #[error("catalog: {0}")]
    Db(Box<rusqlite::Error>),
    #[error("catalog {path}: {context}: {source}")]
    Io {
        path: String,
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("catalog entry {key} is damaged: {detail}")]
    Damaged { key: String, detail: String },
}

impl From<rusqlite::Error> for CatalogError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => CatalogError::DiskFull,
            _ => CatalogError::Db(Box::new(e)),
        }
    }
}

impl CatalogError {
    /// Whether the request may succeed later without anyone changing it (the disk filled up,
    /// the database was busy).
    pub fn is_retryable(&self) -> bool {
        match self {
            CatalogError::DiskFull => true,
            CatalogError::Db(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    pub name: TenantId,
    pub quota: Option<u64>,
    pub dedup: bool,
    pub created_unix: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub id: ClusterId,
    pub created_unix: i64,
    /// Bound by the first archived segment; every later one must agree.
    pub binding: Option<ClusterBinding>,
}

/// What the first archived segment tells about a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterBinding {
    pub system_identifier: u64,
    pub wal_segment_size: u32,
    pub pg_major: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WalRecord {
    pub name: String,
    pub size: u64,
    pub stored_size: u64,
    pub blake3: String,
    pub archived_unix: i64,
}

/// A snapshot of the whole catalog, for `catalog dump` and for comparing rebuilds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogDump {
    pub tenants: Vec<TenantRecord>,
    pub clusters: Vec<ClusterRecord>,
    pub wal: Vec<(String, WalRecord)>,
    #[serde(default)]
    pub backups: Vec<(String, BackupRecord)>,
}

/// The trees (tables) of the catalog.
const TREES: [&str; 14] = [
    "tenants",
    "clusters",
    "wal",
    "backups",
    "manifest",
    "sessions",
    "wal_index",
    "restores",
    "policies",
    "prune_jobs",
    "damage",
    "pruned",
    "verifications",
    "touched",
];

#[derive(Clone)]
pub struct Catalog {
    store: std::sync::Arc<store::Store>,
    tenants: store::Tree,
    clusters: store::Tree,
    wal: store::Tree,
    backups: store::Tree,
    manifest: store::Tree,
    sessions: store::Tree,
    /// The WAL time index: a cache of what each archived segment's records say.
    wal_index: store::Tree,
    restores: store::Tree,
    policies: store::Tree,
    prune_jobs: store::Tree,
    /// Archived files found damaged.
    damage: store::Tree,
    /// Segment ranges pruned on purpose, per cluster.
    pruned: store::Tree,
    /// Each cluster's last verification.
    verifications: store::Tree,
    /// Block ranges the open backup session of a cluster has written into.
    touched: store::Tree,
}

/// Whether `dir` holds a sled database (the catalog of walvault-server before SQLite).
fn is_sled(dir: &Path) -> bool {
    dir.join("conf").is_file() && dir.join("db").is_file()
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

pub(super) fn cluster_key(c: &ClusterId) -> Vec<u8> {
    let mut k = c.tenant().as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(c.name().as_bytes());
    k
}

fn wal_prefix(c: &ClusterId) -> Vec<u8> {
    let mut k = cluster_key(c);
    k.push(0);
    k
}

pub(super) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![VALUE_V1];
    // Serialising our own plain records cannot fail.
    out.extend(serde_json::to_vec(v).unwrap_or_default());
    out
}

pub(super) fn decode<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, CatalogError> {
    let damaged = |detail: String| CatalogError::Damaged {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        detail,
    };
    match v.split_first() {
        Some((&VALUE_V1, json)) => serde_json::from_slice(json).map_err(|e| damaged(e.to_string())),
        Some((other, _)) => Err(damaged(format!("unknown value format {other}"))),
        None => Err(damaged("empty value".into())),
    }
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Self, CatalogError> {
        if is_sled(path) {
            return Err(CatalogError::OldStore {
                path: path.display().to_string(),
            });
        }
        let open_err = |source| CatalogError::Open {
            path: path.display().to_string(),
            source: Box::new(source),
        };
        std::fs::create_dir_all(path).map_err(|source| CatalogError::Io {
            path: path.display().to_string(),
            context: "create the directory",
            source,
        })?;
        let store = store::Store::open(path, &TREES).map_err(open_err)?;
        match store.meta(FORMAT_KEY)? {
            None => {
                store.set_meta(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())?;
                store.flush()?;
            }
            Some(v) => {
                let found = <[u8; 4]>::try_from(v.as_slice())
                    .map(u32::from_be_bytes)
                    .unwrap_or(0);
                if found != FORMAT_VERSION {
                    return Err(CatalogError::WrongFormat {
                        path: path.display().to_string(),
                        found,
                    });
                }
            }
        }
        let t = |name| store.tree(name);
        Ok(Self {
            tenants: t("tenants"),
            clusters: t("clusters"),
            wal: t("wal"),
            backups: t("backups"),
            manifest: t("manifest"),
            sessions: t("sessions"),
            wal_index: t("wal_index"),
            restores: t("restores"),
            policies: t("policies"),
            prune_jobs: t("prune_jobs"),
            damage: t("damage"),
            pruned: t("pruned"),
            verifications: t("verifications"),
            touched: t("touched"),
            store,
        })
    }

    /// Opens the catalog for `catalog rebuild`: an older store found there (sled) is moved
    /// aside to `<path>.sled-<unix time>` first, and reported.
    pub fn open_for_rebuild(path: &Path) -> Result<(Self, Option<PathBuf>), CatalogError> {
        if !is_sled(path) {
            return Ok((Self::open(path)?, None));
        }
        let aside = PathBuf::from(format!("{}.sled-{}", path.display(), crate::unix_now()));
        std::fs::rename(path, &aside).map_err(|source| CatalogError::Io {
            path: path.display().to_string(),
            context: "move the old catalog aside",
            source,
        })?;
        Ok((Self::open(path)?, Some(aside)))
    }

    fn flush(&self) -> Result<(), CatalogError> {
        self.store.flush()?;
        Ok(())
    }

    pub fn put_tenant(&self, t: &TenantRecord) -> Result<(), CatalogError> {
        self.tenants.insert(t.name.as_str().as_bytes(), encode(t))?;
        self.flush()
    }

    pub fn tenant(&self, name: &TenantId) -> Result<Option<TenantRecord>, CatalogError> {
        let key = name.as_str().as_bytes();
        self.tenants.get(key)?.map(|v| decode(key, &v)).transpose()
    }

    pub fn tenants(&self) -> Result<Vec<TenantRecord>, CatalogError> {
        self.tenants
            .iter()
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn put_cluster(&self, c: &ClusterRecord) -> Result<(), CatalogError> {
        self.clusters.insert(cluster_key(&c.id), encode(c))?;
        self.flush()
    }

    pub fn cluster(&self, id: &ClusterId) -> Result<Option<ClusterRecord>, CatalogError> {
        let key = cluster_key(id);
        self.clusters
            .get(&key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    /// Clusters of one tenant, or of all with `None`.
    pub fn clusters(&self, tenant: Option<&TenantId>) -> Result<Vec<ClusterRecord>, CatalogError> {
        let prefix = tenant.map(|t| {
            let mut p = t.as_str().as_bytes().to_vec();
            p.push(0);
            p
        });
        self.clusters
            .scan_prefix(prefix.unwrap_or_default())
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn put_wal(&self, cluster: &ClusterId, w: &WalRecord) -> Result<(), CatalogError> {
        let mut key = wal_prefix(cluster);
        key.extend_from_slice(w.name.as_bytes());
        self.wal.insert(key, encode(w))?;
        self.flush()
    }

    pub fn remove_wal(&self, cluster: &ClusterId, name: &WalFileName) -> Result<(), CatalogError> {
        let mut key = wal_prefix(cluster);
        key.extend_from_slice(name.as_str().as_bytes());
        self.wal.remove(key)?;
        self.flush()
    }

    pub fn wal_file(
        &self,
        cluster: &ClusterId,
        name: &WalFileName,
    ) -> Result<Option<WalRecord>, CatalogError> {
        let mut key = wal_prefix(cluster);
        key.extend_from_slice(name.as_str().as_bytes());
        self.wal.get(&key)?.map(|v| decode(&key, &v)).transpose()
    }

    /// The cluster's WAL file last in name order: the newest of its newest timeline.
    pub fn last_wal(&self, cluster: &ClusterId) -> Result<Option<WalRecord>, CatalogError> {
        self.wal
            .last_with_prefix(wal_prefix(cluster))?
            .map(|(k, v)| decode(&k, &v))
            .transpose()
    }

    /// A cluster's WAL files in name order (= timeline, then LSN order).
    pub fn wal_files(&self, cluster: &ClusterId) -> Result<Vec<WalRecord>, CatalogError> {
        self.wal
            .scan_prefix(wal_prefix(cluster))
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn dump(&self) -> Result<CatalogDump, CatalogError> {
        let clusters = self.clusters(None)?;
        let mut wal = Vec::new();
        let mut backups = Vec::new();
        for c in &clusters {
            for w in self.wal_files(&c.id)? {
                wal.push((c.id.to_string(), w));
            }
            for b in self.backups(&c.id)? {
                backups.push((c.id.to_string(), b));
            }
        }
        Ok(CatalogDump {
            tenants: self.tenants()?,
            clusters,
            wal,
            backups,
        })
    }

    /// Removes every entry (the format key stays); used by `rebuild`.
    pub fn clear(&self) -> Result<(), CatalogError> {
        self.tenants.clear()?;
        self.clusters.clear()?;
        self.wal.clear()?;
        self.backups.clear()?;
        self.manifest.clear()?;
        self.sessions.clear()?;
        self.wal_index.clear()?;
        self.restores.clear()?;
        self.policies.clear()?;
        self.prune_jobs.clear()?;
        self.damage.clear()?;
        self.pruned.clear()?;
        self.verifications.clear()?;
        self.touched.clear()?;
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_ranges_do_not_bleed() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("cat")).unwrap();
        let a: ClusterId = "acme/db".parse().unwrap();
        // "acme/db" must not see "acme/db2"'s files: the separator ends the prefix.
        let b: ClusterId = "acme/db2".parse().unwrap();
        for c in [&a, &b] {
            cat.put_cluster(&ClusterRecord {
                id: c.clone(),
                created_unix: 1,
                binding: None,
            })
            .unwrap();
        }
        let w = |name: &str| WalRecord {
            name: name.into(),
            size: 16,
            stored_size: 3,
            blake3: "00".into(),
            archived_unix: 5,
        };
        cat.put_wal(&a, &w("000000010000000000000001")).unwrap();
        cat.put_wal(&b, &w("000000010000000000000002")).unwrap();
        assert_eq!(
            cat.wal_files(&a).unwrap(),
            vec![w("000000010000000000000001")]
        );
        cat.put_wal(&a, &w("00000002.history")).unwrap();
        cat.put_wal(&a, &w("000000020000000000000001")).unwrap();
        assert_eq!(
            cat.last_wal(&a).unwrap().map(|r| r.name),
            Some("000000020000000000000001".into())
        );
        assert_eq!(
            cat.last_wal(&b).unwrap().map(|r| r.name),
            Some("000000010000000000000002".into())
        );
        assert_eq!(
            cat.clusters(Some(&"acme".parse().unwrap())).unwrap().len(),
            2
        );
        assert_eq!(
            cat.clusters(Some(&"acm".parse().unwrap())).unwrap().len(),
            0
        );
        drop(cat);
        // Reopening keeps everything.
        let cat = Catalog::open(&dir.path().join("cat")).unwrap();
        assert_eq!(cat.dump().unwrap().wal.len(), 4);
    }

    #[test]
    fn refuses_another_format() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = store::Store::open(dir.path(), &TREES).unwrap();
            s.set_meta(FORMAT_KEY, &99u32.to_be_bytes()).unwrap();
            s.flush().unwrap();
            drop(s);
        }
        let err = Catalog::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("format version 99"), "{err}");
    }

    #[test]
    fn an_old_sled_catalog_is_moved_aside_by_a_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog");
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("conf"), "segment_size: 524288").unwrap();
        std::fs::write(path.join("db"), [0u8; 16]).unwrap();
        let err = Catalog::open(&path).unwrap_err().to_string();
        assert!(err.contains("catalog rebuild"), "{err}");
        let (cat, aside) = Catalog::open_for_rebuild(&path).unwrap();
        let aside = aside.expect("moved aside");
        assert!(aside.join("conf").is_file());
        assert!(cat.tenants().unwrap().is_empty());
    }
}
