//! Directory delivery: every file and directory of a clone, in (area, path) order, with the
//! blocks the client does not already hold. Without a local manifest that is every block;
//! with one (`--delta`) only blocks whose blake3 differs, which is how an old primary
//! rejoins without a full copy.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use walvault_proto::manifest::{hash_block, BlockHash};
use walvault_proto::{Area, RelPath, BLOCK_SIZE};

use super::clone::CloneArea;
use super::RestoreError;

/// zstd level for blocks on the way out: fast, the client is waiting.
const ZSTD_LEVEL: i32 = 1;
/// Compressed bytes per blocks message.
const BATCH_BYTES: usize = 1 << 20;
/// Blocks read per read call.
const READ_BLOCKS: usize = 128;

/// What the client already has of one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalFile {
    pub directory: bool,
    pub size: u64,
    pub hashes: Vec<BlockHash>,
}

pub type LocalManifest = HashMap<(Area, RelPath), LocalFile>;

/// A file or directory of the clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub area: Area,
    pub path: RelPath,
    pub abs: PathBuf,
    pub mode: u32,
    pub directory: bool,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutBlock {
    pub index: u64,
    pub hash: BlockHash,
    pub zstd: bool,
    pub data: Vec<u8>,
}

/// What goes to the client, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    File {
        area: Area,
        path: RelPath,
        mode: u32,
        directory: bool,
    },
    Blocks(Vec<OutBlock>),
    FileEnd {
        size: u64,
    },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    pub files: u64,
    pub bytes_sent: u64,
    pub bytes_written: u64,
    pub blocks_sent: u64,
    pub blocks_same: u64,
    pub duration_ms: u64,
}

/// Every file and directory of the areas, sorted by (area, path) like manifests. Symbolic
/// links are not followed (a clone has none PostgreSQL needs: `tablespace_map` recreates
/// `pg_tblspc`).
pub fn walk(areas: &[CloneArea]) -> Result<Vec<Entry>, RestoreError> {
    let mut out = Vec::new();
    for a in areas {
        walk_dir(a, &a.dir, "", &mut out)?;
    }
    out.sort_by(|x, y| (&x.area, x.path.as_str()).cmp(&(&y.area, y.path.as_str())));
    Ok(out)
}

fn walk_dir(
    area: &CloneArea,
    dir: &Path,
    rel: &str,
    out: &mut Vec<Entry>,
) -> Result<(), RestoreError> {
    let rd = fs::read_dir(dir).map_err(RestoreError::io(format!("list {}", dir.display())))?;
    for e in rd {
        let e = e.map_err(RestoreError::io(format!("list {}", dir.display())))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else {
            return Err(RestoreError::Invalid(format!(
                "{}: a file name is not UTF-8",
                dir.display()
            )));
        };
        // The storage's own names (.zfs, .walvault-*) are no part of the copy.
        if rel.is_empty() && walvault_proto::manifest::is_reserved_name(name) {
            continue;
        }
        let path = if rel.is_empty() {
            name.to_owned()
        } else {
            format!("{rel}/{name}")
        };
        let meta = e
            .metadata()
            .map_err(RestoreError::io(format!("stat {}", e.path().display())))?;
        if meta.file_type().is_symlink() || !(meta.is_dir() || meta.is_file()) {
            continue;
        }
        let relpath: RelPath = path
            .parse()
            .map_err(|err| RestoreError::Invalid(format!("{}: {err}", e.path().display())))?;
        out.push(Entry {
            area: area.area,
            path: relpath,
            abs: e.path(),
            mode: meta.permissions().mode() & 0o7777,
            directory: meta.is_dir(),
            size: if meta.is_dir() { 0 } else { meta.len() },
        });
        if meta.is_dir() {
            walk_dir(area, &e.path(), &path, out)?;
        }
    }
    Ok(())
}

/// Sends `entries` to `sink`, skipping blocks `local` already has. `sink` returns false when
/// the client has gone; the delivery then stops with `Ok(None)`.
pub fn send(
    entries: &[Entry],
    local: &LocalManifest,
    sink: &mut dyn FnMut(Item) -> bool,
) -> Result<Option<DirStats>, RestoreError> {
    let started = Instant::now();
    let mut stats = DirStats::default();
    let mut zstd =
        zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(RestoreError::io("set up zstd"))?;
    let mut buf = vec![0u8; READ_BLOCKS * BLOCK_SIZE as usize];
    for e in entries {
        stats.files += 1;
        if !sink(Item::File {
            area: e.area,
            path: e.path.clone(),
            mode: e.mode,
            directory: e.directory,
        }) {
            return Ok(None);
        }
        if e.directory {
            continue;
        }
        let have = local
            .get(&(e.area, e.path.clone()))
            .filter(|l| !l.directory);
        let mut f =
            File::open(&e.abs).map_err(RestoreError::io(format!("open {}", e.abs.display())))?;
        let mut index = 0u64;
        let mut batch = Vec::new();
        let mut batch_bytes = 0usize;
        let mut size = 0u64;
        loop {
            let n = read_full(&mut f, &mut buf)
                .map_err(RestoreError::io(format!("read {}", e.abs.display())))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            for block in buf[..n].chunks(BLOCK_SIZE as usize) {
                let hash = hash_block(block);
                if have.and_then(|l| l.hashes.get(index as usize)) == Some(&hash) {
                    stats.blocks_same += 1;
                } else {
                    let packed = zstd
                        .compress(block)
                        .map_err(RestoreError::io(format!("compress {}", e.abs.display())))?;
                    let (zstd, data) = if packed.len() < block.len() {
                        (true, packed)
                    } else {
                        (false, block.to_vec())
                    };
                    stats.blocks_sent += 1;
                    stats.bytes_sent += data.len() as u64;
                    stats.bytes_written += block.len() as u64;
                    batch_bytes += data.len();
                    batch.push(OutBlock {
                        index,
                        hash,
                        zstd,
                        data,
                    });
                    if batch_bytes >= BATCH_BYTES {
                        if !sink(Item::Blocks(std::mem::take(&mut batch))) {
                            return Ok(None);
                        }
                        batch_bytes = 0;
                    }
                }
                index += 1;
            }
            if n < buf.len() {
                break;
            }
        }
        if !batch.is_empty() && !sink(Item::Blocks(batch)) {
            return Ok(None);
        }
        if !sink(Item::FileEnd { size }) {
            return Ok(None);
        }
    }
    stats.duration_ms = started.elapsed().as_millis() as u64;
    Ok(Some(stats))
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(dir: &Path) -> CloneArea {
        CloneArea {
            area: Area::Data,
            dir: dir.to_owned(),
            location: String::new(),
        }
    }

    fn collect(entries: &[Entry], local: &LocalManifest) -> (Vec<Item>, DirStats) {
        let mut items = Vec::new();
        let stats = send(entries, local, &mut |i| {
            items.push(i);
            true
        })
        .unwrap()
        .unwrap();
        (items, stats)
    }

    #[test]
    fn sends_everything_without_a_manifest_and_only_differences_with_one() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir(d.path().join("base")).unwrap();
        let mut content = vec![7u8; 3 * BLOCK_SIZE as usize + 100];
        content[BLOCK_SIZE as usize] = 1;
        fs::write(d.path().join("base/1"), &content).unwrap();
        fs::write(d.path().join("PG_VERSION"), "15\n").unwrap();
        let entries = walk(&[area(d.path())]).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.path.to_string()).collect();
        assert_eq!(names, ["PG_VERSION", "base", "base/1"]);
        let (items, stats) = collect(&entries, &LocalManifest::new());
        assert_eq!(stats.blocks_sent, 5);
        assert_eq!(stats.bytes_written, content.len() as u64 + 3);
        assert_eq!(stats.files, 3);
        assert!(
            matches!(items.last(), Some(Item::FileEnd { size }) if *size == content.len() as u64)
        );

        // The client has the file with block 2 changed and one block too many.
        let mut theirs = content.clone();
        theirs[2 * BLOCK_SIZE as usize] = 9;
        theirs.extend(vec![0u8; BLOCK_SIZE as usize]);
        let mut local = LocalManifest::new();
        local.insert(
            (Area::Data, "base/1".parse().unwrap()),
            LocalFile {
                directory: false,
                size: theirs.len() as u64,
                hashes: theirs.chunks(BLOCK_SIZE as usize).map(hash_block).collect(),
            },
        );
        let (items, stats) = collect(&entries, &local);
        assert_eq!(stats.blocks_same, 2);
        let sent: Vec<u64> = items
            .iter()
            .filter_map(|i| match i {
                Item::Blocks(b) => Some(b.iter().map(|b| b.index)),
                _ => None,
            })
            .flatten()
            .collect();
        // PG_VERSION's block, then block 2 and the short last block of base/1.
        assert_eq!(sent, [0, 2, 3]);
    }

    #[test]
    fn a_client_that_goes_away_stops_the_delivery() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("a"), "x").unwrap();
        fs::write(d.path().join("b"), "y").unwrap();
        let entries = walk(&[area(d.path())]).unwrap();
        let mut n = 0;
        let r = send(&entries, &LocalManifest::new(), &mut |_| {
            n += 1;
            n < 2
        })
        .unwrap();
        assert!(r.is_none());
    }
}
