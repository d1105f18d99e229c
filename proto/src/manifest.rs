//! The block manifest both sides agree on: where a file lives (its [`Area`] and [`RelPath`]),
//! how it is cut into fixed-size blocks, and how blocks are hashed.
//!
//! A block is [`BLOCK_SIZE`] bytes, PostgreSQL's page size, so that a changed page costs one
//! block on the wire and one record in the PGDATA dataset (recordsize 8K). Only a file's last
//! block may be shorter.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

/// Bytes per block.
pub const BLOCK_SIZE: u32 = 8192;
/// Length of a block hash (blake3).
pub const HASH_LEN: usize = 32;
/// Hashes per manifest message: 1 MiB of hashes, well under the 4 MiB message limit.
pub const HASHES_PER_ENTRY: usize = 32 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{0} is not an area (data or tblspc/<oid>)")]
    BadArea(String),
    #[error("{0} is not a relative path inside a data directory")]
    BadPath(String),
    #[error(
        "{0} begins with {1}, a name the server's storage keeps for itself (ZFS's .zfs, \
         walvault's own .walvault-* files); no PostgreSQL file is named so"
    )]
    Reserved(String, String),
}

/// Whether a name at the top of a data directory or tablespace belongs to the storage the
/// server keeps it on: ZFS's snapshot directory, or the `dir` backend's own files. No path a
/// client names may begin with one, and no walk of a copy hands one out.
pub fn is_reserved_name(name: &str) -> bool {
    name == ".zfs" || name.starts_with(".walvault-")
}

/// Where a file lives: PGDATA, or the directory of one tablespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Area {
    Data,
    Tablespace(u32),
}

impl Area {
    /// The key both sides sort by: the same order as the displayed name's bytes.
    fn key(&self) -> String {
        self.to_string()
    }
}

impl Ord for Area {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialOrd for Area {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Area::Data => f.write_str("data"),
            Area::Tablespace(oid) => write!(f, "tblspc/{oid}"),
        }
    }
}

impl FromStr for Area {
    type Err = ManifestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "data" {
            return Ok(Area::Data);
        }
        s.strip_prefix("tblspc/")
            .filter(|oid| !oid.is_empty() && !oid.starts_with('0') && oid.len() <= 10)
            .and_then(|oid| oid.parse::<u32>().ok())
            .map(Area::Tablespace)
            .ok_or_else(|| ManifestError::BadArea(crate::echo(s)))
    }
}

/// A path relative to an area: `/`-separated, no empty, `.` or `..` components, no NUL, at
/// most 1024 bytes. Safe to join to the area's directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

impl RelPath {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The file name (last component).
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// True when `self` lies inside the directory `dir`.
    pub fn is_inside(&self, dir: &RelPath) -> bool {
        self.0.len() > dir.0.len()
            && self.0.starts_with(&dir.0)
            && self.0.as_bytes()[dir.0.len()] == b'/'
    }
}

impl FromStr for RelPath {
    type Err = ManifestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = !s.is_empty()
            && s.len() <= 1024
            && !s.contains('\0')
            && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        if !ok {
            return Err(ManifestError::BadPath(crate::echo(s)));
        }
        let first = s.split('/').next().unwrap_or_default();
        if is_reserved_name(first) {
            return Err(ManifestError::Reserved(crate::echo(s), crate::echo(first)));
        }
        Ok(RelPath(s.to_owned()))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The blake3 hash of one block.
pub type BlockHash = [u8; HASH_LEN];

pub fn hash_block(data: &[u8]) -> BlockHash {
    *blake3::hash(data).as_bytes()
}

/// Number of blocks of a file of `size` bytes.
pub fn block_count(size: u64) -> u64 {
    size.div_ceil(u64::from(BLOCK_SIZE))
}

/// Length of block `index` of a file of `size` bytes (0 past the end).
pub fn block_len(size: u64, index: u64) -> u64 {
    let start = index.saturating_mul(u64::from(BLOCK_SIZE));
    size.saturating_sub(start).min(u64::from(BLOCK_SIZE))
}

/// Splits concatenated hashes as they travel in a manifest entry.
pub fn split_hashes(bytes: &[u8]) -> Option<Vec<BlockHash>> {
    if !bytes.len().is_multiple_of(HASH_LEN) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(HASH_LEN)
            .map(|c| {
                let mut h = [0u8; HASH_LEN];
                h.copy_from_slice(c);
                h
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn areas_parse_and_print() {
        assert_eq!("data".parse::<Area>().unwrap(), Area::Data);
        assert_eq!(
            "tblspc/16384".parse::<Area>().unwrap(),
            Area::Tablespace(16384)
        );
        for bad in [
            "",
            "tblspc/",
            "tblspc/0",
            "tblspc/012",
            "tblspc/x",
            "base",
            "tblspc/1/2",
        ] {
            assert!(bad.parse::<Area>().is_err(), "{bad}");
        }
    }

    #[test]
    fn names_the_storage_keeps_for_itself_are_refused() {
        for bad in [
            ".zfs",
            ".zfs/snapshot/b1/PG_VERSION",
            ".walvault-snapshots",
            ".walvault-snapshots/20261201T000000Z/data/PG_VERSION",
            ".walvault-dataset.json",
        ] {
            let e = bad.parse::<RelPath>().unwrap_err();
            assert!(matches!(e, ManifestError::Reserved(..)), "{bad}: {e}");
            assert!(e.to_string().contains("keeps for itself"), "{e}");
        }
        // Only at the top: PostgreSQL's own names are never refused.
        for ok in [
            "base/.zfs",
            "pg_stat/.walvault-x",
            ".walvault",
            "zfs",
            "..zfs",
        ] {
            assert!(ok.parse::<RelPath>().is_ok(), "{ok}");
        }
    }

    #[test]
    fn paths_stay_inside() {
        for ok in [
            "base/1/1259",
            "global/pg_control",
            "PG_15_202209061/5/16390",
        ] {
            assert_eq!(ok.parse::<RelPath>().unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "/etc/passwd",
            "a//b",
            "a/../b",
            "..",
            "./a",
            "a/",
            "a\0b",
        ] {
            assert!(bad.parse::<RelPath>().is_err(), "{bad:?}");
        }
        let dir: RelPath = "base/1".parse().unwrap();
        assert!("base/1/2".parse::<RelPath>().unwrap().is_inside(&dir));
        assert!(!"base/12".parse::<RelPath>().unwrap().is_inside(&dir));
        assert!(!dir.is_inside(&dir));
    }

    #[test]
    fn blocks_cover_the_file() {
        assert_eq!(block_count(0), 0);
        assert_eq!(block_count(1), 1);
        assert_eq!(block_count(8192), 1);
        assert_eq!(block_count(8193), 2);
        assert_eq!(block_len(8193, 0), 8192);
        assert_eq!(block_len(8193, 1), 1);
        assert_eq!(block_len(8193, 2), 0);
    }

    proptest! {
        // Both sides sort by (area, path); the server's store sorts by the bytes of
        // "area \0 path". The two orders must agree or the manifest merge goes wrong.
        #[test]
        fn tuple_order_is_byte_order(
            a in prop_oneof![Just(Area::Data), (1u32..100_000).prop_map(Area::Tablespace)],
            b in prop_oneof![Just(Area::Data), (1u32..100_000).prop_map(Area::Tablespace)],
            p in "[a-z0-9_./]{1,12}", q in "[a-z0-9_./]{1,12}",
        ) {
            let key = |a: &Area, p: &str| { let mut k = a.to_string().into_bytes(); k.push(0); k.extend_from_slice(p.as_bytes()); k };
            prop_assert_eq!((a, p.as_str()).cmp(&(b, q.as_str())), key(&a, &p).cmp(&key(&b, &q)));
        }
    }
}
