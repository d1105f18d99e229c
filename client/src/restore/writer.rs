//! Applies the server's stream of a directory restore to the target directories: a header
//! creates a directory or opens a file (never truncating it: with `--delta` the blocks the
//! server does not send are the ones already there), blocks are checked against their blake3
//! and written in place, and the file's end sets its size and mode and makes it durable.
//! At the end, what the local manifest had and the snapshot never named is deleted, and every
//! directory touched is fsynced.
//!
//! Invariants: nothing is written outside the areas' directories (paths are validated, links
//! met on the way are replaced, not followed, except the top-level `pg_wal` link); a block
//! reaches the disk only after its hash matched. Contiguous blocks are gathered into one
//! write, so a full restore costs one system call per megabyte, not per block.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions, Permissions};
use std::io::ErrorKind;
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use walvault_proto::manifest::hash_block;
use walvault_proto::{pb, Area, RelPath, BLOCK_SIZE};

use super::local::LocalManifest;
use super::tablespace::AreaDirs;
use crate::error::ClientError;

/// Bytes of contiguous blocks gathered before one write.
const RUN_BYTES: usize = 1 << 20;

/// What a restore wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub files: u64,
    pub dirs: u64,
    pub blocks: u64,
    /// Block bytes as received (compressed) and as written.
    pub bytes_received: u64,
    pub bytes_written: u64,
    /// Local paths the snapshot does not have, deleted (delta).
    pub deleted: u64,
}

/// The file being written.
struct OpenFile {
    area: Area,
    path: RelPath,
    abs: PathBuf,
    file: fs::File,
    mode: u32,
    written: u64,
}

impl OpenFile {
    fn name(&self) -> String {
        format!("{}:{}", self.area, self.path)
    }
}

pub struct Writer {
    dirs: AreaDirs,
    local: Option<LocalManifest>,
    current: Option<OpenFile>,
    /// Directories whose entries changed: fsynced at the end.
    touched: BTreeSet<PathBuf>,
    decompressor: zstd::bulk::Decompressor<'static>,
    /// Contiguous blocks not written yet, and the file offset of the first.
    run: Vec<u8>,
    run_offset: u64,
    stats: Written,
    progress: Arc<AtomicU64>,
}

fn protocol(message: String) -> ClientError {
    ClientError::Integrity(message)
}

impl Writer {
    /// A writer into `dirs`; `local` is the manifest of what was there (delta), whose paths
    /// the snapshot does not name are deleted by [`Writer::finish`]. `progress` counts the
    /// bytes of files done (written or already there).
    pub fn new(
        dirs: AreaDirs,
        local: Option<LocalManifest>,
        progress: Arc<AtomicU64>,
    ) -> Result<Self, ClientError> {
        let decompressor = zstd::bulk::Decompressor::new()
            .map_err(ClientError::io("start a zstd decompressor"))?;
        Ok(Self {
            dirs,
            local,
            current: None,
            touched: BTreeSet::new(),
            decompressor,
            run: Vec::with_capacity(RUN_BYTES + BLOCK_SIZE as usize),
            run_offset: 0,
            stats: Written::default(),
            progress,
        })
    }

    /// Where a (area, path) of the stream goes; refuses anything that is not a path inside
    /// one of this restore's areas.
    fn locate(&self, area: &str, path: &str) -> Result<(Area, RelPath, PathBuf), ClientError> {
        let bad = |why: String| {
            protocol(format!(
                "the server named {area:?}:{path:?}, not a path this restore writes ({why}); \
                 nothing outside the target directories was touched"
            ))
        };
        let a: Area = area.parse().map_err(|e| bad(format!("{e}")))?;
        let p: RelPath = path.parse().map_err(|e| bad(format!("{e}")))?;
        let root = self
            .dirs
            .dir_of(a)
            .ok_or_else(|| bad(format!("the plan has no area {a}")))?;
        let abs = root.join(p.as_str());
        Ok((a, p, abs))
    }

    /// A file or directory of the snapshot: creates the directory, or opens the file for the
    /// blocks that follow. Whatever else is at the path (a file where a directory belongs, a
    /// link) is removed first.
    pub fn apply_file(&mut self, h: &pb::FileHeader) -> Result<(), ClientError> {
        if let Some(open) = &self.current {
            return Err(protocol(format!(
                "the server began {}:{} before ending {}",
                h.area,
                h.path,
                open.name()
            )));
        }
        let (area, path, abs) = self.locate(&h.area, &h.path)?;
        if let Some(local) = self.local.as_mut() {
            local.name(area, &path);
        }
        let existing = match fs::symlink_metadata(&abs) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(ClientError::io(format!("look at {}", abs.display()))(e)),
        };
        let mode = h.mode & 0o7777;
        if h.directory {
            let linked_wal = area == Area::Data
                && path.as_str() == "pg_wal"
                && existing
                    .as_ref()
                    .is_some_and(|m| m.file_type().is_symlink())
                && fs::metadata(&abs).is_ok_and(|m| m.is_dir());
            match &existing {
                Some(m) if m.is_dir() => {}
                // pg_wal on another disk stays there.
                Some(_) if linked_wal => {}
                Some(m) => {
                    self.remove(&abs, m)?;
                    self.create_dir(&abs)?;
                }
                None => self.create_dir(&abs)?,
            }
            if !linked_wal {
                // Owner rwx whatever the source said: we write inside it next.
                fs::set_permissions(&abs, Permissions::from_mode(mode | 0o700)).map_err(
                    ClientError::io(format!("set the mode of {}", abs.display())),
                )?;
            }
            self.touched.insert(abs);
            self.stats.dirs += 1;
            return Ok(());
        }
        match &existing {
            Some(m) if m.is_file() => {
                if m.permissions().mode() & 0o200 == 0 {
                    let writable = (m.permissions().mode() & 0o7777) | 0o600;
                    fs::set_permissions(&abs, Permissions::from_mode(writable))
                        .map_err(ClientError::io(format!("make {} writable", abs.display())))?;
                }
            }
            Some(m) => self.remove(&abs, m)?,
            None => {
                if let Some(parent) = abs.parent().filter(|p| !p.exists()) {
                    self.create_dir(parent)?;
                }
            }
        }
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&abs)
            .map_err(ClientError::io(format!("open {}", abs.display())))?;
        if existing.is_none() {
            if let Some(parent) = abs.parent() {
                self.touched.insert(parent.to_owned());
            }
        }
        self.current = Some(OpenFile {
            area,
            path,
            abs,
            file,
            mode,
            written: 0,
        });
        Ok(())
    }

    /// Blocks of the open file: each decompressed, checked against its blake3, and written at
    /// `index * BLOCK_SIZE`.
    pub fn apply_blocks(&mut self, blocks: &pb::FileBlocks) -> Result<(), ClientError> {
        let Self {
            current,
            decompressor,
            run,
            run_offset,
            stats,
            progress,
            ..
        } = self;
        let Some(open) = current.as_mut() else {
            return Err(protocol(
                "the server sent blocks outside of a file".to_owned(),
            ));
        };
        let block_size = BLOCK_SIZE as usize;
        for b in &blocks.blocks {
            let bad = |why: &str| protocol(format!("block {} of {}: {why}", b.index, open.name()));
            let offset = b
                .index
                .checked_mul(u64::from(BLOCK_SIZE))
                .filter(|o| o.checked_add(u64::from(BLOCK_SIZE)).is_some())
                .ok_or_else(|| bad("an impossible block number"))?;
            let contiguous = *run_offset + run.len() as u64 == offset;
            if !run.is_empty() && (!contiguous || run.len() >= RUN_BYTES) {
                flush(run, *run_offset, open)?;
            }
            if run.is_empty() {
                *run_offset = offset;
            }
            let start = run.len();
            match pb::Compression::try_from(b.compression) {
                Ok(pb::Compression::None) => {
                    if b.data.len() > block_size {
                        return Err(bad("longer than a block"));
                    }
                    run.extend_from_slice(&b.data);
                }
                Ok(pb::Compression::Zstd) => {
                    run.resize(start + block_size, 0);
                    let n = decompressor
                        .decompress_to_buffer(&b.data, &mut run[start..])
                        .map_err(|e| bad(&format!("cannot decompress: {e}")))?;
                    run.truncate(start + n);
                }
                Err(_) => return Err(bad(&format!("unknown compression {}", b.compression))),
            }
            let len = run.len() - start;
            if len == 0 {
                run.truncate(start);
                return Err(bad("empty"));
            }
            if b.blake3.as_slice() != hash_block(&run[start..]) {
                run.truncate(start);
                return Err(bad(
                    "does not match its blake3 (damaged on the way or in the server's copy); \
                     nothing of it was written",
                ));
            }
            open.written += len as u64;
            stats.blocks += 1;
            stats.bytes_received += b.data.len() as u64;
            stats.bytes_written += len as u64;
            progress.fetch_add(len as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The end of the open file: its size (truncating or extending what was there), its
    /// mode, and an fsync.
    pub fn apply_file_end(&mut self, end: &pb::FileEnd) -> Result<(), ClientError> {
        let Some(open) = self.current.take() else {
            return Err(protocol(
                "the server ended a file it never began".to_owned(),
            ));
        };
        if !self.run.is_empty() {
            flush(&mut self.run, self.run_offset, &open)?;
        }
        let io = |what: &str| ClientError::io(format!("{what} {}", open.abs.display()));
        open.file.set_len(end.size).map_err(io("set the size of"))?;
        open.file
            .set_permissions(Permissions::from_mode(open.mode))
            .map_err(io("set the mode of"))?;
        open.file.sync_all().map_err(io("fsync"))?;
        self.stats.files += 1;
        self.progress
            .fetch_add(end.size.saturating_sub(open.written), Ordering::Relaxed);
        Ok(())
    }

    /// After the last file: deletes what the local manifest had and the snapshot never named
    /// (files, then directories deepest first), and fsyncs every directory touched.
    pub fn finish(mut self) -> Result<Written, ClientError> {
        if let Some(open) = &self.current {
            return Err(protocol(format!(
                "the restore ended in the middle of {}",
                open.name()
            )));
        }
        if let Some(local) = self.local.take() {
            let (files, dirs, foreign) = local.unnamed();
            for f in files {
                self.delete(&f, false)?;
            }
            for d in dirs {
                self.delete(&d, true)?;
            }
            for f in foreign {
                match fs::symlink_metadata(&f) {
                    Ok(m) => self.remove(&f, &m)?,
                    Err(e) if gone(&e) => {}
                    Err(e) => return Err(ClientError::io(format!("look at {}", f.display()))(e)),
                }
            }
        }
        for a in self.dirs.iter() {
            self.touched.insert(a.dir.clone());
            if let Some(parent) = a.dir.parent() {
                self.touched.insert(parent.to_owned());
            }
        }
        for d in &self.touched {
            match fs::File::open(d) {
                Ok(f) => f
                    .sync_all()
                    .map_err(ClientError::io(format!("fsync {}", d.display())))?,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(ClientError::io(format!("open {}", d.display()))(e)),
            }
        }
        Ok(self.stats)
    }

    fn create_dir(&mut self, abs: &Path) -> Result<(), ClientError> {
        fs::create_dir_all(abs).map_err(ClientError::io(format!("create {}", abs.display())))?;
        if let Some(parent) = abs.parent() {
            self.touched.insert(parent.to_owned());
        }
        Ok(())
    }

    /// Removes what is at `abs` (a directory with its contents; a link, not its target).
    fn remove(&mut self, abs: &Path, m: &fs::Metadata) -> Result<(), ClientError> {
        let r = if m.is_dir() {
            fs::remove_dir_all(abs)
        } else {
            fs::remove_file(abs)
        };
        match r {
            Ok(()) => {}
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(ClientError::io(format!("remove {}", abs.display()))(e)),
        }
        self.stats.deleted += 1;
        if let Some(parent) = abs.parent() {
            self.touched.insert(parent.to_owned());
        }
        Ok(())
    }

    /// Deletes one unnamed path of the local manifest. A directory that is not empty (it
    /// holds another area's directory) is kept, with a word.
    fn delete(&mut self, abs: &Path, dir: bool) -> Result<(), ClientError> {
        let r = if dir {
            fs::remove_dir(abs)
        } else {
            fs::remove_file(abs)
        };
        match r {
            Ok(()) => {
                self.stats.deleted += 1;
                if let Some(parent) = abs.parent() {
                    self.touched.insert(parent.to_owned());
                }
                Ok(())
            }
            Err(e) if gone(&e) => Ok(()),
            Err(e) if dir && e.kind() == ErrorKind::DirectoryNotEmpty => {
                eprintln!(
                    "walvault: kept {}: not part of the backup, but not empty",
                    abs.display()
                );
                Ok(())
            }
            Err(e) => Err(ClientError::io(format!("delete {}", abs.display()))(e)),
        }
    }
}

/// The path is not there (or its parent became a file): nothing to delete.
fn gone(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

fn flush(run: &mut Vec<u8>, offset: u64, open: &OpenFile) -> Result<(), ClientError> {
    open.file
        .write_all_at(run, offset)
        .map_err(ClientError::io(format!("write {}", open.abs.display())))?;
    run.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restore::local;

    const B: usize = BLOCK_SIZE as usize;

    fn header(area: &str, path: &str, mode: u32, directory: bool) -> pb::FileHeader {
        pb::FileHeader {
            area: area.into(),
            path: path.into(),
            mode,
            directory,
        }
    }

    fn block(index: u64, data: &[u8], zstd: bool) -> pb::Block {
        let (compression, bytes) = if zstd {
            (
                pb::Compression::Zstd,
                zstd::bulk::compress(data, 1).unwrap(),
            )
        } else {
            (pb::Compression::None, data.to_vec())
        };
        pb::Block {
            index,
            blake3: hash_block(data).to_vec(),
            compression: compression as i32,
            data: bytes,
        }
    }

    fn blocks(b: Vec<pb::Block>) -> pb::FileBlocks {
        pb::FileBlocks { blocks: b }
    }

    fn end(size: u64) -> pb::FileEnd {
        pb::FileEnd { size }
    }

    fn writer(data: &Path, local: Option<LocalManifest>) -> (Writer, Arc<AtomicU64>) {
        let progress = Arc::new(AtomicU64::new(0));
        let dirs = AreaDirs::from_dirs(vec![(Area::Data, data.to_owned())]);
        fs::create_dir_all(data).unwrap();
        (
            Writer::new(dirs, local, progress.clone()).unwrap(),
            progress,
        )
    }

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn writes_directories_files_and_blocks() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let (mut w, progress) = writer(&data, None);
        let b0 = vec![1u8; B];
        let b1 = (0..B).map(|i| (i % 251) as u8).collect::<Vec<u8>>();
        let b2 = vec![3u8; 100];
        w.apply_file(&header("data", "base", 0o700, true)).unwrap();
        w.apply_file(&header("data", "base/1", 0o750, true))
            .unwrap();
        w.apply_file(&header("data", "base/1/1259", 0o640, false))
            .unwrap();
        w.apply_blocks(&blocks(vec![block(0, &b0, true), block(1, &b1, false)]))
            .unwrap();
        w.apply_blocks(&blocks(vec![block(2, &b2, true)])).unwrap();
        w.apply_file_end(&end((2 * B + 100) as u64)).unwrap();
        // A sparse file: only its second block sent, the first a hole.
        w.apply_file(&header("data", "base/1/sparse", 0o600, false))
            .unwrap();
        w.apply_blocks(&blocks(vec![block(1, &b1, true)])).unwrap();
        w.apply_file_end(&end(2 * B as u64)).unwrap();
        w.apply_file(&header("data", "PG_VERSION", 0o600, false))
            .unwrap();
        w.apply_blocks(&blocks(vec![block(0, b"15\n", false)]))
            .unwrap();
        w.apply_file_end(&end(3)).unwrap();
        let written = w.finish().unwrap();

        let got = fs::read(data.join("base/1/1259")).unwrap();
        assert_eq!(got, [b0.clone(), b1.clone(), b2.clone()].concat());
        let sparse = fs::read(data.join("base/1/sparse")).unwrap();
        assert_eq!(sparse, [vec![0u8; B], b1.clone()].concat());
        assert_eq!(fs::read(data.join("PG_VERSION")).unwrap(), b"15\n");
        assert_eq!(mode_of(&data.join("base/1")), 0o750);
        assert_eq!(mode_of(&data.join("base/1/1259")), 0o640);
        assert_eq!(
            written,
            Written {
                files: 3,
                dirs: 2,
                blocks: 5,
                bytes_received: written.bytes_received,
                bytes_written: (3 * B + 100 + 3) as u64,
                deleted: 0,
            }
        );
        assert!(written.bytes_received < written.bytes_written);
        assert_eq!(
            progress.load(Ordering::Relaxed),
            (2 * B + 100 + 2 * B + 3) as u64
        );
    }

    #[test]
    fn delta_keeps_unsent_blocks_truncates_and_deletes_the_unnamed() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let old = [vec![1u8; B], vec![2u8; B], vec![3u8; B], vec![4u8; 10]].concat();
        fs::create_dir_all(data.join("base/1")).unwrap();
        fs::create_dir_all(data.join("gone/deeper")).unwrap();
        fs::write(data.join("base/1/1259"), &old).unwrap();
        fs::write(data.join("base/1/dropped"), b"x").unwrap();
        fs::write(data.join("gone/deeper/f"), b"x").unwrap();
        fs::write(data.join("recovery.signal"), b"").unwrap();
        fs::write(data.join("was_a_file"), b"x").unwrap();
        fs::create_dir_all(data.join("was_a_dir/sub")).unwrap();
        fs::write(data.join("was_a_dir/sub/f"), b"x").unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"untouched").unwrap();
        std::os::unix::fs::symlink(&outside, data.join("linked")).unwrap();

        let dirs = AreaDirs::from_dirs(vec![(Area::Data, data.clone())]);
        let (manifest, _) = local::scan(&dirs, |_| Ok(())).unwrap();
        let (mut w, progress) = writer(&data, Some(manifest));
        w.apply_file(&header("data", "base", 0o700, true)).unwrap();
        w.apply_file(&header("data", "base/1", 0o700, true))
            .unwrap();
        w.apply_file(&header("data", "base/1/1259", 0o600, false))
            .unwrap();
        let new1 = vec![9u8; B];
        w.apply_blocks(&blocks(vec![block(1, &new1, true)]))
            .unwrap();
        w.apply_file_end(&end(2 * B as u64 + 5)).unwrap();
        w.apply_file(&header("data", "linked", 0o600, false))
            .unwrap();
        w.apply_blocks(&blocks(vec![block(0, b"mine", false)]))
            .unwrap();
        w.apply_file_end(&end(4)).unwrap();
        w.apply_file(&header("data", "was_a_file", 0o700, true))
            .unwrap();
        w.apply_file(&header("data", "was_a_dir", 0o600, false))
            .unwrap();
        w.apply_file_end(&end(0)).unwrap();
        let written = w.finish().unwrap();

        let got = fs::read(data.join("base/1/1259")).unwrap();
        assert_eq!(
            got,
            [vec![1u8; B], new1, vec![3u8; 5]].concat(),
            "unsent blocks kept, sent ones rewritten, the tail cut"
        );
        assert_eq!(fs::read(&outside).unwrap(), b"untouched");
        assert_eq!(fs::read(data.join("linked")).unwrap(), b"mine");
        assert!(data.join("was_a_file").is_dir());
        assert!(data.join("was_a_dir").is_file());
        for gone in ["base/1/dropped", "gone", "recovery.signal"] {
            assert!(!data.join(gone).exists(), "{gone} survived");
        }
        let mut left: Vec<String> = walk_names(&data);
        left.sort();
        assert_eq!(
            left,
            [
                "base",
                "base/1",
                "base/1/1259",
                "linked",
                "was_a_dir",
                "was_a_file"
            ]
        );
        // Replaced: the link, was_a_file, was_a_dir; unnamed: dropped, gone/deeper/f,
        // recovery.signal, gone/deeper, gone.
        assert_eq!(written.deleted, 3 + 5);
        assert_eq!(progress.load(Ordering::Relaxed), (2 * B + 5 + 4) as u64);
    }

    fn walk_names(root: &Path) -> Vec<String> {
        let dirs = AreaDirs::from_dirs(vec![(Area::Data, root.to_owned())]);
        local::walk(&dirs)
            .unwrap()
            .0
            .into_iter()
            .map(|f| f.path.to_string())
            .collect()
    }

    #[test]
    fn a_damaged_block_is_never_written() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let (mut w, _) = writer(&data, None);
        w.apply_file(&header("data", "f", 0o600, false)).unwrap();
        let mut b = block(0, &[5u8; B], true);
        b.blake3[0] ^= 1;
        let e = w.apply_blocks(&blocks(vec![b])).unwrap_err().to_string();
        assert!(
            e.contains("block 0 of data:f") && e.contains("blake3"),
            "{e}"
        );
        let mut b = block(0, &[5u8; B], false);
        b.data.push(0);
        assert!(w.apply_blocks(&blocks(vec![b])).is_err());
        let mut b = block(0, &[5u8; B], false);
        b.compression = 7;
        assert!(w.apply_blocks(&blocks(vec![b])).is_err());
        assert_eq!(fs::metadata(data.join("f")).unwrap().len(), 0);
    }

    #[test]
    fn paths_outside_the_areas_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let (mut w, _) = writer(&data, None);
        for (area, path) in [
            ("data", "../escape"),
            ("data", "/etc/passwd"),
            ("data", ""),
            ("tblspc/16400", "PG_15/1"),
            ("base", "x"),
        ] {
            let e = w
                .apply_file(&header(area, path, 0o600, false))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("{path:?}")), "{area}:{path}: {e}");
        }
        assert!(!tmp.path().join("escape").exists());
    }

    #[test]
    fn the_stream_must_keep_files_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let (mut w, _) = writer(&data, None);
        assert!(w
            .apply_blocks(&blocks(vec![block(0, b"x", false)]))
            .is_err());
        assert!(w.apply_file_end(&end(1)).is_err());
        w.apply_file(&header("data", "a", 0o600, false)).unwrap();
        let e = w
            .apply_file(&header("data", "b", 0o600, false))
            .unwrap_err()
            .to_string();
        assert!(e.contains("before ending data:a"), "{e}");
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("middle of data:a"), "{e}");
    }

    #[test]
    fn large_files_are_written_in_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let (mut w, _) = writer(&data, None);
        w.apply_file(&header("data", "big", 0o600, false)).unwrap();
        let n = RUN_BYTES / B * 3 + 7;
        let content: Vec<u8> = (0..n * B).map(|i| (i / B % 256) as u8).collect();
        let sent: Vec<pb::Block> = content
            .chunks(B)
            .enumerate()
            .filter(|(i, _)| i % 97 != 5)
            .map(|(i, c)| block(i as u64, c, i % 2 == 0))
            .collect();
        for chunk in sent.chunks(50) {
            w.apply_blocks(&blocks(chunk.to_vec())).unwrap();
        }
        w.apply_file_end(&end(content.len() as u64)).unwrap();
        w.finish().unwrap();
        let got = fs::read(data.join("big")).unwrap();
        assert_eq!(got.len(), content.len());
        for (i, (g, c)) in got.chunks(B).zip(content.chunks(B)).enumerate() {
            if i % 97 == 5 {
                assert!(g.iter().all(|b| *b == 0), "block {i} is a hole");
            } else {
                assert_eq!(g, c, "block {i}");
            }
        }
    }
}
