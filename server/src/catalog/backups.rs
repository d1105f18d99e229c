//! Backups and the block manifest of each cluster's live PGDATA copy.
//!
//! The manifest describes what the cluster's `data` and `tblspc/<oid>` datasets hold right
//! now: per file, its size, mode and the blake3 of every block. A backup session records
//! that it is open (durably) before it writes anything, and the block ranges it is about to
//! write before it writes them; entries it changes are flushed lazily. If the session does not
//! finish, the next one re-hashes the blocks it touched (every file modified since it began,
//! after a reboot; see `backup::files::reconcile`), so a stale entry is never trusted.
//!
//! Keys: `tenant \0 cluster \0 area \0 path`, so one cluster's manifest iterates in the
//! (area, path) byte order both sides of the wire agree on. Values: the format byte, a
//! big-endian u32 length, the JSON of the entry without hashes, then the raw hashes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use walvault_proto::manifest::{split_hashes, BlockHash, HASH_LEN};
use walvault_proto::{Area, ClusterId, Lsn, RelPath, TimelineId};

use super::{cluster_key, decode, encode, Catalog, CatalogError, VALUE_V1};

/// One restorable snapshot: a completed backup (a recursive snapshot of the cluster's `db`
/// dataset), or a roll-forward of one (a snapshot of its chain, `rollforward/<base>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    pub id: String,
    pub kind: BackupKind,
    /// For a roll-forward snapshot: the backup its chain was cloned from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    pub label: String,
    pub host: String,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    pub timeline: TimelineId,
    pub start_unix: i64,
    pub stop_unix: i64,
    pub stats: BackupStats,
    /// The last verification of the snapshot; `None`: pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

/// What verifying a snapshot found: it was cloned, recovered to consistency and checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub verified: bool,
    pub checked_unix: i64,
    /// The checks that ran, in words ("page checksums", "amcheck", …).
    pub checks: Vec<String>,
    /// From the start of the clone to the first answered query.
    pub first_query_ms: u64,
    pub duration_ms: u64,
    pub tables: u64,
    pub indexes: u64,
    /// Why it failed (empty when verified).
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    /// The first complete backup of a cluster.
    Full,
    /// Only what changed since the cluster's copy was last written.
    Incremental,
    /// The server's own: a backup's copy replayed forward from the archive.
    Rollforward,
}

impl BackupKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Incremental => "incremental",
            BackupKind::Rollforward => "rollforward",
        }
    }
}

impl std::str::FromStr for BackupKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(BackupKind::Full),
            "incremental" => Ok(BackupKind::Incremental),
            "rollforward" => Ok(BackupKind::Rollforward),
            other => Err(format!("{other:?} is not a backup kind")),
        }
    }
}

/// What a backup cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupStats {
    /// Bytes the client read on the database host.
    pub bytes_read: u64,
    /// Block bytes that crossed the network, as sent (compressed).
    pub bytes_sent: u64,
    /// Uncompressed bytes written into the datasets.
    pub bytes_written: u64,
    pub blocks_written: u64,
    pub files: u64,
    pub files_changed: u64,
    pub files_deleted: u64,
    pub duration_ms: u64,
}

/// A backup session that has begun writing into the cluster's datasets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenSession {
    pub backup_id: String,
    pub started_unix: i64,
    /// The kernel's boot id when the session began. Within one boot every write the
    /// server made reached the kernel in order, so the session's touched ranges cover
    /// everything it wrote; after a reboot they may not.
    #[serde(default)]
    pub boot_id: Option<String>,
}

/// Block ranges of one file, `[start, end)`, keyed by start.
pub type Ranges = BTreeMap<u64, u64>;

/// What the open session recorded of one file before changing it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Touched {
    /// The session created the file: what it did not write is a hole.
    pub created: bool,
    pub ranges: Ranges,
}

/// The start under which a file's `created` mark is kept: never a block index.
const CREATED: u64 = u64::MAX;

/// What the manifest holds for one file or directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileEntry {
    pub directory: bool,
    pub mode: u32,
    pub size: u64,
    pub hashes: Vec<BlockHash>,
}

#[derive(Serialize, Deserialize)]
struct FileEntryHead {
    directory: bool,
    mode: u32,
    size: u64,
}

fn backup_key(c: &ClusterId, id: &str) -> Vec<u8> {
    let mut k = cluster_key(c);
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

fn cluster_prefix(c: &ClusterId) -> Vec<u8> {
    let mut k = cluster_key(c);
    k.push(0);
    k
}

fn manifest_key(c: &ClusterId, area: Area, path: &str) -> Vec<u8> {
    let mut k = cluster_prefix(c);
    k.extend_from_slice(area.to_string().as_bytes());
    k.push(0);
    k.extend_from_slice(path.as_bytes());
    k
}

fn encode_entry(e: &FileEntry) -> Vec<u8> {
    let head = serde_json::to_vec(&FileEntryHead {
        directory: e.directory,
        mode: e.mode,
        size: e.size,
    })
    .unwrap_or_default();
    let mut out = Vec::with_capacity(5 + head.len() + e.hashes.len() * HASH_LEN);
    out.push(VALUE_V1);
    out.extend_from_slice(&(head.len() as u32).to_be_bytes());
    out.extend_from_slice(&head);
    for h in &e.hashes {
        out.extend_from_slice(h);
    }
    out
}

fn decode_entry(key: &[u8], v: &[u8]) -> Result<FileEntry, CatalogError> {
    let damaged = |detail: &str| CatalogError::Damaged {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        detail: detail.to_owned(),
    };
    let (&format, rest) = v.split_first().ok_or_else(|| damaged("empty value"))?;
    if format != VALUE_V1 || rest.len() < 4 {
        return Err(damaged("unknown value format"));
    }
    let (len, rest) = rest.split_at(4);
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if rest.len() < len {
        return Err(damaged("truncated"));
    }
    let (head, hashes) = rest.split_at(len);
    let head: FileEntryHead = serde_json::from_slice(head).map_err(|e| damaged(&e.to_string()))?;
    let hashes = split_hashes(hashes).ok_or_else(|| damaged("hashes cut short"))?;
    Ok(FileEntry {
        directory: head.directory,
        mode: head.mode,
        size: head.size,
        hashes,
    })
}

fn touched_file_key(c: &ClusterId, area: Area, path: &RelPath) -> Vec<u8> {
    let mut k = manifest_key(c, area, path.as_str());
    k.push(0);
    k
}

fn decode_range(key: &[u8], value: &[u8]) -> Option<(u64, u64)> {
    let start = key.len().checked_sub(8).map(|n| &key[n..])?;
    let start = u64::from_be_bytes(start.try_into().ok()?);
    let end = u64::from_be_bytes(value.try_into().ok()?);
    Some((start, end))
}

fn add_touched(t: &mut Touched, key: &[u8], value: &[u8]) -> Result<(), CatalogError> {
    match decode_range(key, value).ok_or_else(|| damaged_range(key))? {
        (CREATED, _) => t.created = true,
        (start, end) => {
            t.ranges.insert(start, end);
        }
    }
    Ok(())
}

fn damaged_range(key: &[u8]) -> CatalogError {
    CatalogError::Damaged {
        key: String::from_utf8_lossy(key).replace('\0', "/"),
        detail: "not a touched block range".into(),
    }
}

fn split_manifest_key(prefix_len: usize, key: &[u8]) -> Option<(Area, RelPath)> {
    let rest = std::str::from_utf8(key.get(prefix_len..)?).ok()?;
    let (area, path) = rest.split_once('\0')?;
    Some((area.parse().ok()?, path.parse().ok()?))
}

impl Catalog {
    pub fn put_backup(&self, cluster: &ClusterId, b: &BackupRecord) -> Result<(), CatalogError> {
        self.backups.insert(backup_key(cluster, &b.id), encode(b))?;
        self.flush()
    }

    pub fn remove_backup(&self, cluster: &ClusterId, id: &str) -> Result<(), CatalogError> {
        self.backups.remove(backup_key(cluster, id))?;
        self.flush()
    }

    /// A cluster's backups, oldest first (ids sort by time).
    pub fn backups(&self, cluster: &ClusterId) -> Result<Vec<BackupRecord>, CatalogError> {
        self.backups
            .scan_prefix(cluster_prefix(cluster))
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    pub fn file_entry(
        &self,
        cluster: &ClusterId,
        area: Area,
        path: &RelPath,
    ) -> Result<Option<FileEntry>, CatalogError> {
        let key = manifest_key(cluster, area, path.as_str());
        self.manifest
            .get(&key)?
            .map(|v| decode_entry(&key, &v))
            .transpose()
    }

    /// Stores an entry; `durable` flushes before returning.
    pub fn put_file_entry(
        &self,
        cluster: &ClusterId,
        area: Area,
        path: &RelPath,
        entry: &FileEntry,
        durable: bool,
    ) -> Result<(), CatalogError> {
        self.manifest.insert(
            manifest_key(cluster, area, path.as_str()),
            encode_entry(entry),
        )?;
        if durable {
            self.flush()?;
        }
        Ok(())
    }

    /// Removes an entry and, for a directory, every entry inside it.
    pub fn remove_file_entries(
        &self,
        cluster: &ClusterId,
        area: Area,
        path: &RelPath,
    ) -> Result<(), CatalogError> {
        self.manifest
            .remove(manifest_key(cluster, area, path.as_str()))?;
        let inside = manifest_key(cluster, area, &format!("{path}/"));
        self.manifest.remove_prefix(&inside)?;
        Ok(())
    }

    /// The cluster's manifest in (area, path) order, lazily.
    pub fn file_entries(
        &self,
        cluster: &ClusterId,
    ) -> impl Iterator<Item = Result<(Area, RelPath, FileEntry), CatalogError>> {
        let prefix = cluster_prefix(cluster);
        let prefix_len = prefix.len();
        self.manifest.scan_prefix(prefix).map(move |kv| {
            let (k, v) = kv?;
            let (area, path) =
                split_manifest_key(prefix_len, &k).ok_or_else(|| CatalogError::Damaged {
                    key: String::from_utf8_lossy(&k).replace('\0', "/"),
                    detail: "not an area and path".into(),
                })?;
            Ok((area, path, decode_entry(&k, &v)?))
        })
    }

    /// Forgets a cluster's manifest (the next backup then re-sends everything).
    pub fn clear_file_entries(&self, cluster: &ClusterId) -> Result<(), CatalogError> {
        self.manifest.remove_prefix(cluster_prefix(cluster))?;
        self.flush()
    }

    /// Records (durably) that a backup session of the cluster has begun writing.
    pub fn open_session(&self, cluster: &ClusterId, s: &OpenSession) -> Result<(), CatalogError> {
        self.sessions.insert(cluster_key(cluster), encode(s))?;
        self.flush()
    }

    /// The session that began writing and has not finished, if any.
    pub fn open_session_of(
        &self,
        cluster: &ClusterId,
    ) -> Result<Option<OpenSession>, CatalogError> {
        let key = cluster_key(cluster);
        self.sessions
            .get(&key)?
            .map(|v| decode(&key, &v))
            .transpose()
    }

    pub fn close_session(&self, cluster: &ClusterId) -> Result<(), CatalogError> {
        self.sessions.remove(cluster_key(cluster))?;
        self.touched.remove_prefix(cluster_prefix(cluster))?;
        self.flush()
    }

    /// Records, before the open session writes them, block ranges of a file (`[start, end)`
    /// keyed by start; a range already recorded at the same start is replaced). Not flushed:
    /// a commit reaches the kernel before the blocks do, which is all a crash of the server
    /// needs (see [`OpenSession::boot_id`]).
    pub fn mark_touched(
        &self,
        cluster: &ClusterId,
        area: Area,
        path: &RelPath,
        ranges: &[(u64, u64)],
    ) -> Result<(), CatalogError> {
        let file = touched_file_key(cluster, area, path);
        self.touched.insert_all(ranges.iter().map(|(start, end)| {
            let mut key = file.clone();
            key.extend_from_slice(&start.to_be_bytes());
            (key, end.to_be_bytes().to_vec())
        }))?;
        Ok(())
    }

    /// Records, before the open session creates a file, that it does.
    pub fn mark_created(
        &self,
        cluster: &ClusterId,
        area: Area,
        path: &RelPath,
    ) -> Result<(), CatalogError> {
        let mut key = touched_file_key(cluster, area, path);
        key.extend_from_slice(&CREATED.to_be_bytes());
        self.touched.insert(key, 0u64.to_be_bytes())?;
        Ok(())
    }

    /// What the open session recorded for one file.
    pub fn touched_of(
        &self,
        cluster: &ClusterId,
        area: Area,
        path: &RelPath,
    ) -> Result<Touched, CatalogError> {
        let file = touched_file_key(cluster, area, path);
        let mut out = Touched::default();
        for kv in self.touched.scan_prefix(&file) {
            let (k, v) = kv?;
            add_touched(&mut out, &k, &v)?;
        }
        Ok(out)
    }

    /// What the open session of a cluster recorded, per file.
    pub fn touched(
        &self,
        cluster: &ClusterId,
    ) -> Result<BTreeMap<(Area, RelPath), Touched>, CatalogError> {
        let prefix = cluster_prefix(cluster);
        let mut out: BTreeMap<(Area, RelPath), Touched> = BTreeMap::new();
        for kv in self.touched.scan_prefix(&prefix) {
            let (k, v) = kv?;
            // The file's key ends with a NUL before the 8 bytes of the start.
            let file = k
                .len()
                .checked_sub(9)
                .and_then(|n| split_manifest_key(prefix.len(), &k[..n]))
                .ok_or_else(|| damaged_range(&k))?;
            add_touched(out.entry(file).or_default(), &k, &v)?;
        }
        Ok(out)
    }

    /// Forgets the ranges of a cluster's session (done with them, or starting another).
    pub fn clear_touched(&self, cluster: &ClusterId) -> Result<(), CatalogError> {
        self.touched.remove_prefix(cluster_prefix(cluster))?;
        Ok(())
    }

    /// Makes earlier non-durable writes durable.
    pub fn sync(&self) -> Result<(), CatalogError> {
        self.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_round_trips_in_wire_order() {
        let dir = tempfile::tempdir().unwrap();
        let cat = Catalog::open(&dir.path().join("cat")).unwrap();
        let c: ClusterId = "acme/db".parse().unwrap();
        let other: ClusterId = "acme/db2".parse().unwrap();
        let e = |n: u8| FileEntry {
            directory: false,
            mode: 0o600,
            size: 9000,
            hashes: vec![[n; 32], [n + 1; 32]],
        };
        let p = |s: &str| s.parse::<RelPath>().unwrap();
        cat.put_file_entry(&c, Area::Tablespace(16384), &p("PG_15/5/1"), &e(1), false)
            .unwrap();
        cat.put_file_entry(&c, Area::Data, &p("base/1/1259"), &e(2), true)
            .unwrap();
        cat.put_file_entry(
            &c,
            Area::Data,
            &p("base"),
            &FileEntry {
                directory: true,
                ..FileEntry::default()
            },
            true,
        )
        .unwrap();
        cat.put_file_entry(&other, Area::Data, &p("base"), &e(3), true)
            .unwrap();
        let got: Vec<_> = cat.file_entries(&c).map(|r| r.unwrap()).collect();
        let keys: Vec<_> = got
            .iter()
            .map(|(a, p, _)| (*a, p.as_str().to_owned()))
            .collect();
        assert_eq!(
            keys,
            vec![
                (Area::Data, "base".to_owned()),
                (Area::Data, "base/1/1259".to_owned()),
                (Area::Tablespace(16384), "PG_15/5/1".to_owned()),
            ]
        );
        assert_eq!(got[1].2, e(2));
        cat.remove_file_entries(&c, Area::Data, &p("base")).unwrap();
        assert_eq!(cat.file_entries(&c).count(), 1);
        assert_eq!(cat.file_entries(&other).count(), 1);
    }
}
