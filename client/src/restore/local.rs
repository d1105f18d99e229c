//! What the target directories already hold, for `--delta`: every file and directory of
//! every area (no skip rules: whatever the snapshot does not name is deleted at the end),
//! with the blake3 of each 8 KiB block, in (area, path) byte order, the order the server
//! merges in.
//!
//! Symbolic links are not followed, with two exceptions kept apart: `pg_tblspc/*` in PGDATA
//! (recovery recreates them from `tablespace_map`) is left alone, and a `pg_wal` link at the
//! top of PGDATA is walked through, so that the old WAL it holds is deleted like any other
//! file the snapshot does not have, while the link (and the disk it points to) stays. A
//! directory that is another area's is not descended into.

use std::collections::BTreeMap;
use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use walvault_proto::manifest::{hash_block, HASHES_PER_ENTRY, HASH_LEN};
use walvault_proto::{pb, Area, RelPath, BLOCK_SIZE};

use super::tablespace::AreaDirs;
use crate::error::ClientError;

/// Bytes read at once when hashing.
const READ_SIZE: usize = 1 << 20;

/// What kind of thing a local path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    /// A symbolic link or special file: never sent, deleted unless the snapshot names it.
    Other,
}

/// One path found in a target directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub area: Area,
    pub path: RelPath,
    pub abs: PathBuf,
    pub kind: Kind,
    pub mode: u32,
}

/// The local side of a delta restore: what was there before, so that what the snapshot does
/// not name can be deleted at the end.
#[derive(Debug, Default)]
pub struct LocalManifest {
    entries: BTreeMap<(Area, RelPath), (PathBuf, Kind)>,
    /// Paths the wire cannot carry (not UTF-8, too long): never in a snapshot.
    foreign: Vec<PathBuf>,
}

impl LocalManifest {
    /// The snapshot names this path: it stays.
    pub fn name(&mut self, area: Area, path: &RelPath) {
        self.entries.remove(&(area, path.clone()));
    }

    pub fn len(&self) -> usize {
        self.entries.len() + self.foreign.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// What was never named: files (and links) first, then directories deepest first, then
    /// paths the wire could not carry.
    pub fn unnamed(self) -> (Vec<PathBuf>, Vec<PathBuf>, Vec<PathBuf>) {
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for ((_, path), (abs, kind)) in self.entries {
            match kind {
                Kind::Dir => dirs.push((path.as_str().matches('/').count(), abs)),
                Kind::File | Kind::Other => files.push(abs),
            }
        }
        dirs.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(&a.1)));
        (
            files,
            dirs.into_iter().map(|(_, d)| d).collect(),
            self.foreign,
        )
    }
}

/// Lists every area's directory (absent ones are empty), sorted by (area, path).
pub fn walk(dirs: &AreaDirs) -> Result<(Vec<Found>, Vec<PathBuf>), ClientError> {
    let mut found = Vec::new();
    let mut foreign = Vec::new();
    for a in dirs.iter() {
        walk_dir(dirs, a.area, &a.dir, &a.dir, &mut found, &mut foreign)?;
    }
    found.sort_by(|a, b| (a.area, &a.path).cmp(&(b.area, &b.path)));
    Ok((found, foreign))
}

fn walk_dir(
    dirs: &AreaDirs,
    area: Area,
    root: &Path,
    dir: &Path,
    found: &mut Vec<Found>,
    foreign: &mut Vec<PathBuf>,
) -> Result<(), ClientError> {
    let listing = match fs::read_dir(dir) {
        Ok(l) => l,
        Err(e) if e.kind() == ErrorKind::NotFound && dir == root => return Ok(()),
        Err(e) => return Err(ClientError::io(format!("list {}", dir.display()))(e)),
    };
    let rel_dir = dir.strip_prefix(root).unwrap_or(Path::new(""));
    for item in listing {
        let item = item.map_err(ClientError::io(format!("list {}", dir.display())))?;
        let abs = item.path();
        let meta = fs::symlink_metadata(&abs)
            .map_err(ClientError::io(format!("look at {}", abs.display())))?;
        let rel = rel_dir.join(item.file_name());
        let Some(path) = rel.to_str().and_then(|r| r.parse::<RelPath>().ok()) else {
            foreign.push(abs);
            continue;
        };
        let top = area == Area::Data && rel_dir.as_os_str().is_empty();
        let in_pg_tblspc = area == Area::Data && rel_dir == Path::new("pg_tblspc");
        let mode = meta.mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_symlink() {
            if in_pg_tblspc {
                continue;
            }
            let linked_dir = fs::metadata(&abs).is_ok_and(|m| m.is_dir());
            if top && path.as_str() == "pg_wal" && linked_dir {
                found.push(Found {
                    area,
                    path,
                    abs: abs.clone(),
                    kind: Kind::Dir,
                    mode: 0o700,
                });
                walk_dir(dirs, area, root, &abs, found, foreign)?;
                continue;
            }
            found.push(Found {
                area,
                path,
                abs,
                kind: Kind::Other,
                mode,
            });
        } else if ft.is_dir() {
            if dirs.is_other_area(area, &abs) {
                continue;
            }
            found.push(Found {
                area,
                path,
                abs: abs.clone(),
                kind: Kind::Dir,
                mode,
            });
            walk_dir(dirs, area, root, &abs, found, foreign)?;
        } else {
            found.push(Found {
                area,
                path,
                abs,
                kind: if ft.is_file() {
                    Kind::File
                } else {
                    Kind::Other
                },
                mode,
            });
        }
    }
    Ok(())
}

/// Walks, hashes and hands each manifest entry to `send` in order; returns what was found.
pub fn scan(
    dirs: &AreaDirs,
    mut send: impl FnMut(pb::ManifestEntry) -> Result<(), ClientError>,
) -> Result<(LocalManifest, u64), ClientError> {
    let (found, foreign) = walk(dirs)?;
    let mut manifest = LocalManifest {
        entries: BTreeMap::new(),
        foreign,
    };
    let mut sent = 0u64;
    let mut buf = vec![0u8; READ_SIZE];
    for f in found {
        match f.kind {
            Kind::Dir => {
                send(pb::ManifestEntry {
                    area: f.area.to_string(),
                    path: f.path.to_string(),
                    directory: true,
                    mode: f.mode,
                    ..Default::default()
                })?;
                sent += 1;
            }
            Kind::File => {
                let (size, hashes) = hash_file(&f.abs, &mut buf)?;
                for entry in file_entries(&f, size, &hashes) {
                    send(entry)?;
                    sent += 1;
                }
            }
            Kind::Other => {}
        }
        manifest.entries.insert((f.area, f.path), (f.abs, f.kind));
    }
    Ok((manifest, sent))
}

/// The manifest entries of one file: its hashes split so that each message stays small.
pub fn file_entries(f: &Found, size: u64, hashes: &[u8]) -> Vec<pb::ManifestEntry> {
    let entry = |first_block: u64, hashes: &[u8]| pb::ManifestEntry {
        area: f.area.to_string(),
        path: f.path.to_string(),
        directory: false,
        mode: f.mode,
        size,
        first_block,
        hashes: hashes.to_vec(),
    };
    if hashes.is_empty() {
        return vec![entry(0, &[])];
    }
    hashes
        .chunks(HASHES_PER_ENTRY * HASH_LEN)
        .enumerate()
        .map(|(i, chunk)| entry((i * HASHES_PER_ENTRY) as u64, chunk))
        .collect()
}

/// Size and concatenated block hashes of a file.
fn hash_file(abs: &Path, buf: &mut [u8]) -> Result<(u64, Vec<u8>), ClientError> {
    let err = || ClientError::io(format!("read {}", abs.display()));
    let mut file = fs::File::open(abs).map_err(err())?;
    let mut hashes = Vec::new();
    let mut size = 0u64;
    loop {
        let filled = read_full(&mut file, buf).map_err(err())?;
        for block in buf[..filled].chunks(BLOCK_SIZE as usize) {
            hashes.extend_from_slice(&hash_block(block));
        }
        size += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    Ok((size, hashes))
}

fn read_full(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match f.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use walvault_proto::manifest::{split_hashes, BLOCK_SIZE};

    fn write(root: &Path, rel: &str, data: &[u8]) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    }

    #[test]
    fn walks_everything_in_area_and_path_order() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let ts = tmp.path().join("ts");
        let walsink = tmp.path().join("waldisk");
        for f in [
            "PG_VERSION",
            "postmaster.pid",
            "base/1/1259",
            "base/1.x",
            "base/1/pgsql_tmp/t",
            "pg_wal_old/x",
            "global/pg_control",
        ] {
            write(&data, f, f.as_bytes());
        }
        write(&walsink, "000000010000000000000001", b"wal");
        std::os::unix::fs::symlink(&walsink, data.join("pg_wal")).unwrap();
        fs::create_dir_all(data.join("pg_tblspc")).unwrap();
        std::os::unix::fs::symlink(&ts, data.join("pg_tblspc/16400")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", data.join("stray_link")).unwrap();
        write(&ts, "PG_15_1/1/16401", b"t");
        // A tablespace kept inside PGDATA is its own area.
        let inner = data.join("inner_ts");
        write(&inner, "PG_15_1/1/16500", b"i");

        let dirs = AreaDirs::from_dirs(vec![
            (Area::Data, data.clone()),
            (Area::Tablespace(16400), ts.clone()),
            (Area::Tablespace(16500), inner.clone()),
            (Area::Tablespace(16600), tmp.path().join("absent")),
        ]);
        let (found, foreign) = walk(&dirs).unwrap();
        assert!(foreign.is_empty());
        let names: Vec<String> = found
            .iter()
            .map(|f| {
                let suffix = match f.kind {
                    Kind::Dir => "/",
                    Kind::File => "",
                    Kind::Other => "@",
                };
                format!("{}:{}{suffix}", f.area, f.path)
            })
            .collect();
        assert_eq!(
            names,
            [
                "data:PG_VERSION",
                "data:base/",
                "data:base/1/",
                "data:base/1.x",
                "data:base/1/1259",
                "data:base/1/pgsql_tmp/",
                "data:base/1/pgsql_tmp/t",
                "data:global/",
                "data:global/pg_control",
                "data:pg_tblspc/",
                "data:pg_wal/",
                "data:pg_wal/000000010000000000000001",
                "data:pg_wal_old/",
                "data:pg_wal_old/x",
                "data:postmaster.pid",
                "data:stray_link@",
                "tblspc/16400:PG_15_1/",
                "tblspc/16400:PG_15_1/1/",
                "tblspc/16400:PG_15_1/1/16401",
                "tblspc/16500:PG_15_1/",
                "tblspc/16500:PG_15_1/1/",
                "tblspc/16500:PG_15_1/1/16500",
            ]
        );
        // The byte order of (area, path) is the server's.
        let mut sorted = names.clone();
        sorted.sort_by(|a, b| {
            let key = |s: &str| {
                let (a, p) = s.split_once(':').unwrap();
                (a.to_owned(), p.trim_end_matches(['/', '@']).to_owned())
            };
            key(a).cmp(&key(b))
        });
        assert_eq!(names, sorted);
    }

    #[test]
    fn manifest_entries_carry_block_hashes_and_split_long_files() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut big = vec![7u8; BLOCK_SIZE as usize * 2 + 10];
        big[BLOCK_SIZE as usize] = 1;
        write(&data, "base/1/1259", &big);
        write(&data, "empty", b"");
        let dirs = AreaDirs::from_dirs(vec![(Area::Data, data.clone())]);
        let mut sent = Vec::new();
        let (manifest, n) = scan(&dirs, |e| {
            sent.push(e);
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 4);
        assert_eq!(manifest.len(), 4);
        let file = &sent[2];
        assert_eq!(
            (file.path.as_str(), file.size, file.directory),
            ("base/1/1259", big.len() as u64, false)
        );
        let hashes = split_hashes(&file.hashes).unwrap();
        assert_eq!(hashes.len(), 3);
        assert_eq!(hashes[0], hash_block(&big[..8192]));
        assert_eq!(hashes[1], hash_block(&big[8192..16384]));
        assert_eq!(hashes[2], hash_block(&big[16384..]));
        assert!(sent[0].directory && sent[1].directory);
        assert_eq!((sent[3].path.as_str(), sent[3].size), ("empty", 0));

        let found = Found {
            area: Area::Data,
            path: "x".parse().unwrap(),
            abs: "/x".into(),
            kind: Kind::File,
            mode: 0o600,
        };
        let many = vec![0u8; (HASHES_PER_ENTRY * 2 + 1) * HASH_LEN];
        let entries = file_entries(&found, 1 << 40, &many);
        let firsts: Vec<u64> = entries.iter().map(|e| e.first_block).collect();
        assert_eq!(
            firsts,
            [0, HASHES_PER_ENTRY as u64, 2 * HASHES_PER_ENTRY as u64]
        );
        assert_eq!(entries[2].hashes.len(), HASH_LEN);
    }

    #[test]
    fn unnamed_paths_come_out_files_first_then_deepest_directories() {
        let mut m = LocalManifest::default();
        for (p, kind) in [
            ("a", Kind::Dir),
            ("a/b", Kind::Dir),
            ("a/b/c", Kind::File),
            ("a/z", Kind::Other),
            ("keep", Kind::File),
            ("a.d", Kind::Dir),
        ] {
            m.entries.insert(
                (Area::Data, p.parse().unwrap()),
                (PathBuf::from("/r").join(p), kind),
            );
        }
        m.name(Area::Data, &"keep".parse().unwrap());
        let (files, dirs, foreign) = m.unnamed();
        assert_eq!(files, [PathBuf::from("/r/a/b/c"), PathBuf::from("/r/a/z")]);
        assert_eq!(
            dirs,
            [
                PathBuf::from("/r/a/b"),
                PathBuf::from("/r/a.d"),
                PathBuf::from("/r/a")
            ]
        );
        assert!(foreign.is_empty());
    }
}
