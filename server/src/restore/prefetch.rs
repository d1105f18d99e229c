//! Reads ahead of recovery on a clone. While PostgreSQL replays a plan's WAL, a thread decodes
//! the same segments from the archive, picks the blocks replay will read (those a record
//! changes without a full-page image to restore, nor initialising them), and reads them, in
//! WAL order one segment at a time, as few large sequential reads, so that they are in the page
//! cache when PostgreSQL asks.
//!
//! Why: on zfs-fuse every 8 KiB read is one FUSE request served on the daemon's CPU, and replay
//! waits on one such read per block it touches; a 1 MiB read costs little more than one of
//! them, and the kernel keeps the pages it brought in. PostgreSQL's own prefetching
//! (`recovery_prefetch`) advises the kernel block by block, which on FUSE costs the daemon's
//! CPU for blocks mostly restored from full-page images anyway: the server turns it off on
//! FUSE (`RestoreConfig::tuning`). On a local disk or OpenZFS this costs a little read-ahead
//! and changes nothing else.
//!
//! Off by default (`[restore] prefetch`): on this kind of machine it did not pay. With
//! pgbench's WAL (full-page images after every checkpoint, so replay reads few blocks) replay
//! took 1.33 s with it against 1.19 s without; with `full_page_writes = off` at the source,
//! 0.84 s against 0.87 s. What replay waits for on zfs-fuse is mostly not reads.
//!
//! It only ever reads: a wrong guess (a timeline PostgreSQL does not take, a block size other
//! than 8 KiB) wastes reads, never changes what recovery does. It stops when told, when the
//! WAL of the plan is read, or after [`MAX_BYTES`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use walvault_proto::{ClusterId, TimelineId, WalFileName};

use crate::wal::records::{read_block_refs, BlockRef};
use crate::wal::WalArchive;

/// PostgreSQL's default block size, and blocks per 1 GiB relation segment file.
const BLOCK: u64 = 8192;
const SEGMENT_BLOCKS: u32 = 131_072;
/// Blocks closer than this are read together with what lies between them.
const GAP_BLOCKS: u32 = 16;
/// The longest read.
const RUN_BLOCKS: u32 = 128;
/// What one replay may read ahead at most.
const MAX_BYTES: u64 = 8 << 30;

const DEFAULT_TABLESPACE: u32 = 1663;
const GLOBAL_TABLESPACE: u32 = 1664;

/// Where the copy PostgreSQL recovers keeps its relation files.
#[derive(Debug, Clone)]
pub struct CopyDirs {
    pub data: PathBuf,
    /// Tablespaces by OID: the directory holding `PG_<major>_<catversion>/`.
    pub tablespaces: Vec<(u32, PathBuf)>,
}

/// What to read ahead of: the segments of one plan, oldest first.
#[derive(Debug, Clone)]
pub struct Ahead {
    pub cluster: ClusterId,
    /// The first segment replay reads and the last one it needs.
    pub from: (TimelineId, u64),
    pub through: (TimelineId, u64),
    pub segment_size: u32,
    pub pg_major: u32,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub segments: u64,
    pub blocks: u64,
    pub reads: u64,
    pub bytes: u64,
}

/// A running read-ahead; stopped (and its thread joined) on [`Prefetch::finish`] or drop.
#[derive(Debug)]
pub struct Prefetch {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Stats>>,
    label: String,
    started: Instant,
}

impl Prefetch {
    pub fn start(archive: WalArchive, ahead: Ahead, dirs: CopyDirs, label: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("wv-prefetch".into())
            .spawn(move || run(&archive, &ahead, &dirs, &flag))
            .map_err(|e| tracing::warn!("no read-ahead for recovery: {e}"))
            .ok();
        Self {
            stop,
            handle,
            label: label.to_owned(),
            started: Instant::now(),
        }
    }

    /// Stops reading ahead and logs what was read (on drop: recovery is done with it).
    fn stop_and_join(&mut self) -> Stats {
        self.stop.store(true, Ordering::SeqCst);
        let Some(h) = self.handle.take() else {
            return Stats::default();
        };
        let s = h.join().unwrap_or_default();
        tracing::info!(
            what = %self.label, segments = s.segments, blocks = s.blocks, reads = s.reads,
            mib = s.bytes >> 20, ms = self.started.elapsed().as_millis() as u64,
            "read ahead of recovery"
        );
        s
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

fn run(archive: &WalArchive, ahead: &Ahead, dirs: &CopyDirs, stop: &AtomicBool) -> Stats {
    let mut stats = Stats::default();
    let mut seen: HashSet<BlockRef> = HashSet::new();
    let mut files = Files::new(dirs, ahead.pg_major);
    let mut next_bytes: Option<Vec<u8>> = None;
    let (from, through) = (ahead.from.1, ahead.through.1);
    for segno in from..=through {
        if stop.load(Ordering::Relaxed) || stats.bytes >= MAX_BYTES {
            break;
        }
        let bytes = match next_bytes.take() {
            Some(b) => b,
            None => match segment(archive, ahead, segno) {
                Some(b) => b,
                None => continue,
            },
        };
        // A record may continue into the next segment: read that one now, keep it for later.
        next_bytes = (segno < through)
            .then(|| segment(archive, ahead, segno + 1))
            .flatten();
        let Ok(refs) = read_block_refs(&bytes, next_bytes.as_deref()) else {
            continue;
        };
        stats.segments += 1;
        let fresh: Vec<BlockRef> = refs.into_iter().filter(|b| seen.insert(*b)).collect();
        stats.blocks += fresh.len() as u64;
        for (key, runs) in runs(&fresh) {
            for (first, count) in runs {
                if stop.load(Ordering::Relaxed) {
                    return stats;
                }
                if let Some(n) = files.read(&key, first, count) {
                    stats.reads += 1;
                    stats.bytes += n;
                }
            }
        }
    }
    stats
}

/// The plain bytes of segment `segno`, as [`planned_segment`] names it.
fn segment(archive: &WalArchive, ahead: &Ahead, segno: u64) -> Option<Vec<u8>> {
    let dir = archive.wal_dir_path(&ahead.cluster).ok()?;
    let name = planned_segment(&dir, ahead, segno)?;
    archive.read_plain(&ahead.cluster, &name).ok()
}

/// The file recovery of `ahead` reads for segment `segno`, as PostgreSQL picks it: on the
/// newest timeline of the plan that the archive directory `dir` has it on. Only files that
/// are there: asking the archive for a missing one would record it as damage.
pub(crate) fn planned_segment(dir: &Path, ahead: &Ahead, segno: u64) -> Option<WalFileName> {
    let (low, high) = (ahead.from.0 .0, ahead.through.0 .0);
    (low..=high).rev().find_map(|tl| {
        let name = WalFileName::segment(TimelineId(tl), segno, ahead.segment_size);
        dir.join(format!("{name}{}", crate::layout::STORED_EXT))
            .exists()
            .then_some(name)
    })
}

/// A relation segment file: tablespace, database, relation, fork, segment number.
type FileKey = (u32, u32, u32, u8, u32);

/// Reads of `blocks`, per file: (first block within the file, count), in block order,
/// neighbours within [`GAP_BLOCKS`] merged, none longer than [`RUN_BLOCKS`].
fn runs(blocks: &[BlockRef]) -> BTreeMap<FileKey, Vec<(u32, u32)>> {
    let mut by_file: BTreeMap<FileKey, Vec<u32>> = BTreeMap::new();
    for b in blocks {
        let key = (b.spc, b.db, b.rel, b.fork, b.block / SEGMENT_BLOCKS);
        by_file
            .entry(key)
            .or_default()
            .push(b.block % SEGMENT_BLOCKS);
    }
    by_file
        .into_iter()
        .map(|(key, mut blocks)| {
            blocks.sort_unstable();
            blocks.dedup();
            let mut out: Vec<(u32, u32)> = Vec::new();
            for b in blocks {
                match out.last_mut() {
                    Some((first, count))
                        if b < *first + *count + GAP_BLOCKS && b - *first < RUN_BLOCKS =>
                    {
                        *count = b - *first + 1;
                    }
                    _ => out.push((b, 1)),
                }
            }
            (key, out)
        })
        .collect()
}

/// Open relation files of the copy, by key; `None` for one that does not exist (yet).
struct Files<'d> {
    dirs: &'d CopyDirs,
    pg_major: u32,
    open: HashMap<FileKey, Option<File>>,
    /// `PG_<major>_<catversion>` of each tablespace, once found.
    version_dirs: HashMap<u32, Option<PathBuf>>,
    buf: Vec<u8>,
}

impl<'d> Files<'d> {
    fn new(dirs: &'d CopyDirs, pg_major: u32) -> Self {
        Self {
            dirs,
            pg_major,
            open: HashMap::new(),
            version_dirs: HashMap::new(),
            buf: vec![0; (RUN_BLOCKS as u64 * BLOCK) as usize],
        }
    }

    /// Reads `count` blocks from `first`; the bytes read, if any.
    fn read(&mut self, key: &FileKey, first: u32, count: u32) -> Option<u64> {
        if !self.open.contains_key(key) {
            let file = self.path(key).and_then(|p| File::open(p).ok());
            self.open.insert(*key, file);
        }
        let file = self.open.get(key)?.as_ref()?;
        let len = (u64::from(count) * BLOCK) as usize;
        let buf = &mut self.buf[..len];
        file.read_at(buf, u64::from(first) * BLOCK)
            .ok()
            .map(|n| n as u64)
    }

    fn path(&mut self, &(spc, db, rel, fork, seg): &FileKey) -> Option<PathBuf> {
        let dir = match spc {
            GLOBAL_TABLESPACE => self.dirs.data.join("global"),
            DEFAULT_TABLESPACE => self.dirs.data.join("base").join(db.to_string()),
            oid => self.version_dir(oid)?.join(db.to_string()),
        };
        let fork = match fork {
            0 => "",
            1 => "_fsm",
            2 => "_vm",
            3 => "_init",
            _ => return None,
        };
        let seg = if seg == 0 {
            String::new()
        } else {
            format!(".{seg}")
        };
        Some(dir.join(format!("{rel}{fork}{seg}")))
    }

    fn version_dir(&mut self, oid: u32) -> Option<PathBuf> {
        let (dirs, major) = (self.dirs, self.pg_major);
        self.version_dirs
            .entry(oid)
            .or_insert_with(|| {
                let (_, root) = dirs.tablespaces.iter().find(|(o, _)| *o == oid)?;
                version_dir_in(root, major)
            })
            .clone()
    }
}

/// The `PG_<major>_<catversion>` directory of a tablespace's directory.
fn version_dir_in(root: &Path, major: u32) -> Option<PathBuf> {
    let prefix = format!("PG_{major}_");
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(rel: u32, block: u32) -> BlockRef {
        BlockRef {
            spc: DEFAULT_TABLESPACE,
            db: 5,
            rel,
            fork: 0,
            block,
        }
    }

    #[test]
    fn near_blocks_are_read_together_and_runs_stay_bounded() {
        let blocks = [b(1, 40), b(1, 3), b(1, 10), b(1, 3), b(2, 0), b(1, 200)];
        let r = runs(&blocks);
        assert_eq!(r[&(1663, 5, 1, 0, 0)], [(3, 8), (40, 1), (200, 1)]);
        assert_eq!(r[&(1663, 5, 2, 0, 0)], [(0, 1)]);
        let dense: Vec<_> = (0..300).map(|i| b(1, i)).collect();
        assert_eq!(
            runs(&dense)[&(1663, 5, 1, 0, 0)],
            [(0, 128), (128, 128), (256, 44)]
        );
        // Blocks past 1 GiB live in the relation's next segment file.
        let far = runs(&[b(1, SEGMENT_BLOCKS + 2)]);
        assert_eq!(far[&(1663, 5, 1, 0, 1)], [(2, 1)]);
    }

    #[test]
    fn blocks_map_to_postgresql_file_names() {
        let dir = tempfile::tempdir().unwrap();
        let ts = dir.path().join("ts");
        std::fs::create_dir_all(ts.join("PG_15_202209061")).unwrap();
        let dirs = CopyDirs {
            data: dir.path().join("data"),
            tablespaces: vec![(16390, ts.clone())],
        };
        let mut f = Files::new(&dirs, 15);
        let data = dir.path().join("data");
        assert_eq!(
            f.path(&(1663, 5, 16384, 0, 0)),
            Some(data.join("base/5/16384"))
        );
        assert_eq!(
            f.path(&(1663, 5, 16384, 2, 3)),
            Some(data.join("base/5/16384_vm.3"))
        );
        assert_eq!(
            f.path(&(1664, 0, 1262, 1, 0)),
            Some(data.join("global/1262_fsm"))
        );
        assert_eq!(
            f.path(&(16390, 5, 16400, 0, 0)),
            Some(ts.join("PG_15_202209061/5/16400"))
        );
        assert_eq!(f.path(&(16391, 5, 16400, 0, 0)), None, "unknown tablespace");
        // Reading a file that is not there reads nothing.
        assert_eq!(f.read(&(1663, 5, 16384, 0, 0), 0, 1), None);
        std::fs::create_dir_all(data.join("base/5")).unwrap();
        std::fs::write(data.join("base/5/777"), vec![1u8; 3 * 8192]).unwrap();
        assert_eq!(f.read(&(1663, 5, 777, 0, 0), 1, 4), Some(2 * 8192));
    }
}
