//! One backup session: the client's file operations applied to the cluster's copy, then the
//! finish (label, WAL wait, snapshot, catalog). Every method is blocking; an error abandons
//! the session (dropping it releases the lease and takes no snapshot).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use walvault_proto::manifest::{block_count, block_len, hash_block, BlockHash};
use walvault_proto::{Area, ClusterId, Lsn, RelPath, TimelineId, BLOCK_SIZE};

use super::files::{self, Owner};
use super::room::Room;
use super::{label, BackupError, Backups, BeginRequest, Lease, Running};
use crate::catalog::{BackupKind, BackupRecord, BackupStats, FileEntry, Ranges};
use crate::layout::ClusterLayout;

/// How often the WAL wait looks at the catalog.
const WAL_POLL: Duration = Duration::from_millis(200);
/// Touched ranges are recorded in chunks of this many blocks (128 KiB): what a crash makes
/// the next session re-hash, at most one chunk more per range than was written.
const TOUCH_CHUNK: u64 = 16;

/// A block as it arrived.
#[derive(Debug)]
pub struct IncomingBlock {
    pub index: u64,
    pub blake3: BlockHash,
    pub zstd: bool,
    pub data: Vec<u8>,
}

/// One manifest entry for the client.
#[derive(Debug, Clone)]
pub struct ManifestItem {
    pub area: Area,
    pub path: RelPath,
    pub entry: FileEntry,
}

/// What the client sends when pg_backup_stop has returned.
#[derive(Debug, Clone)]
pub struct FinishRequest {
    pub stop_lsn: Lsn,
    pub stop_unix: i64,
    pub backup_label: String,
    pub tablespace_map: String,
    pub bytes_read: u64,
    pub files: u64,
}

#[derive(Debug)]
struct OpenFile {
    area: Area,
    path: RelPath,
    abs: PathBuf,
    file: fs::File,
    mode: u32,
    old: Option<FileEntry>,
    received: BTreeMap<u64, (BlockHash, u64)>,
    /// Block ranges recorded in the catalog as touched by this session.
    marked: Ranges,
}

#[derive(Debug)]
pub struct Session {
    backups: Backups,
    cluster: ClusterId,
    id: String,
    kind: BackupKind,
    req: BeginRequest,
    dirs: BTreeMap<Area, PathBuf>,
    running: Arc<Running>,
    _lease: Lease,
    started: Option<(Lsn, TimelineId, i64)>,
    open: Option<OpenFile>,
    /// Files written and directories changed, fsynced before the snapshot.
    to_sync: BTreeSet<PathBuf>,
    /// How large writes may be (see `room`).
    room: Room,
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        backups: Backups,
        cluster: ClusterId,
        id: String,
        kind: BackupKind,
        req: BeginRequest,
        dirs: BTreeMap<Area, PathBuf>,
        running: Arc<Running>,
        lease: Lease,
    ) -> Self {
        Self {
            backups,
            cluster,
            id,
            kind,
            req,
            dirs,
            running,
            _lease: lease,
            started: None,
            open: None,
            to_sync: BTreeSet::new(),
            room: Room::default(),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn cluster(&self) -> &ClusterId {
        &self.cluster
    }

    pub fn block_size(&self) -> u32 {
        BLOCK_SIZE
    }

    /// The manifest in (area, path) order. It reads the catalog lazily and may run on another
    /// thread while this session writes: the client only changes a file after it has been
    /// given the file's entry.
    pub fn manifest(&self) -> impl Iterator<Item = Result<ManifestItem, BackupError>> + Send {
        self.backups.catalog.file_entries(&self.cluster).map(|r| {
            r.map(|(area, path, entry)| ManifestItem { area, path, entry })
                .map_err(BackupError::from)
        })
    }

    fn protocol(&self, detail: impl Into<String>) -> BackupError {
        BackupError::Protocol {
            cluster: self.cluster.clone(),
            backup: self.id.clone(),
            detail: detail.into(),
        }
    }

    fn io(&self, context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
        let cluster = self.cluster.clone();
        let backup = self.id.clone();
        let context = context.into();
        let storage = self.backups.storage.clone();
        move |source| io_error(storage.as_ref(), cluster, backup, context, source)
    }

    fn stats(&self, f: impl FnOnce(&mut BackupStats)) {
        f(&mut self.running.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// The root of an area; a tablespace announced at the start gets its dataset here, when
    /// its first file arrives.
    fn root(&mut self, area: Area) -> Result<PathBuf, BackupError> {
        if let Some(d) = self.dirs.get(&area) {
            return Ok(d.clone());
        }
        match area {
            Area::Tablespace(oid) if self.req.tablespaces.contains(&oid) => {
                let dir = self.backups.create_tablespace(&self.cluster, oid)?;
                self.dirs.insert(area, dir.clone());
                Ok(dir)
            }
            _ => Err(self.protocol(format!("{area} is not a tablespace announced at the start"))),
        }
    }

    /// Where `path` of `area` is, refusing the names the storage keeps for itself (a second
    /// line behind `RelPath`'s own check: the storage knows best what is its own).
    fn target(&mut self, area: Area, path: &RelPath) -> Result<PathBuf, BackupError> {
        let first = path.as_str().split('/').next().unwrap_or_default();
        if self.backups.storage.reserves(first) {
            return Err(self.protocol(format!(
                "{area}/{path}: {first} is the storage's own, never a file of the database"
            )));
        }
        Ok(self.root(area)?.join(path.as_str()))
    }

    /// The largest file a backup may send (limits.max_file_bytes).
    fn max_file(&self) -> u64 {
        self.backups.max_file_bytes
    }

    pub fn started(&mut self, start_lsn: Lsn, timeline: TimelineId, start_unix: i64) {
        *self.running.start.lock().unwrap_or_else(|p| p.into_inner()) = Some((start_lsn, timeline));
        self.started = Some((start_lsn, timeline, start_unix));
    }

    /// What the client has read so far (it says so while it has nothing to send).
    pub fn progress(&mut self, bytes_read: u64, files: u64) {
        self.stats(|s| {
            s.bytes_read = s.bytes_read.max(bytes_read);
            s.files = s.files.max(files);
        });
    }

    /// Starts a file (its blocks follow) or creates a directory.
    pub fn file(
        &mut self,
        area: Area,
        path: RelPath,
        mode: u32,
        directory: bool,
    ) -> Result<(), BackupError> {
        if let Some(open) = &self.open {
            return Err(self.protocol(format!(
                "{}/{} began before {}/{} ended",
                area, path, open.area, open.path
            )));
        }
        if area == Area::Data && files::SERVER_FILES.contains(&path.as_str()) {
            return Err(self.protocol(format!("{path} is written by the server, not sent")));
        }
        let abs = self.target(area, &path)?;
        let owner = self.backups.owner;
        if let Some(parent) = abs.parent() {
            files::make_dirs(parent, owner)
                .map_err(self.io(format!("create the directory of {area}/{path}")))?;
        }
        let mode = mode & 0o7777;
        if directory {
            match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => files::remove(&abs).map_err(self.io(format!("replace {area}/{path}")))?,
                Err(_) => {}
            }
            files::make_dirs(&abs, owner).map_err(self.io(format!("create {area}/{path}")))?;
            fs::set_permissions(&abs, files::permissions(mode))
                .map_err(self.io(format!("set the mode of {area}/{path}")))?;
            let entry = FileEntry {
                directory: true,
                mode,
                ..FileEntry::default()
            };
            self.backups
                .catalog
                .put_file_entry(&self.cluster, area, &path, &entry, false)?;
            self.to_sync.insert(abs);
            return Ok(());
        }
        let old = self
            .backups
            .catalog
            .file_entry(&self.cluster, area, &path)?;
        // Sent twice in one session: its ranges so far stay recorded.
        let touched = self
            .backups
            .catalog
            .touched_of(&self.cluster, area, &path)?;
        let existing = fs::symlink_metadata(&abs).ok();
        if existing.as_ref().is_some_and(|m| m.is_dir()) {
            files::remove(&abs).map_err(self.io(format!("replace the directory {area}/{path}")))?;
        }
        if !touched.created && !existing.is_some_and(|m| m.is_file()) {
            self.backups
                .catalog
                .mark_created(&self.cluster, area, &path)?;
        }
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&abs)
            .map_err(self.io(format!("open {area}/{path}")))?;
        Owner::apply(owner, &abs).map_err(self.io(format!("chown {area}/{path}")))?;
        self.open = Some(OpenFile {
            area,
            path,
            abs,
            file,
            mode,
            old: old.filter(|e| !e.directory),
            received: BTreeMap::new(),
            marked: touched.ranges,
        });
        Ok(())
    }

    /// Writes blocks of the open file in place, each checked against its blake3.
    pub fn blocks(
        &mut self,
        blocks: Vec<IncomingBlock>,
        wire_bytes: u64,
    ) -> Result<(), BackupError> {
        let Some(mut open) = self.open.take() else {
            return Err(self.protocol("blocks arrived outside a file"));
        };
        let result = self.write_blocks(&mut open, blocks, wire_bytes);
        self.open = Some(open);
        result
    }

    fn write_blocks(
        &mut self,
        open: &mut OpenFile,
        blocks: Vec<IncomingBlock>,
        wire_bytes: u64,
    ) -> Result<(), BackupError> {
        let max_blocks = self.backups.max_file_bytes.div_ceil(u64::from(BLOCK_SIZE));
        // Recorded before written: an error ends the session, so `marked` may run ahead.
        let new = mark_runs(&mut open.marked, blocks.iter().map(|b| b.index), max_blocks);
        if !new.is_empty() {
            self.backups
                .catalog
                .mark_touched(&self.cluster, open.area, &open.path, &new)?;
        }
        let mut written = 0u64;
        let mut count = 0u64;
        // Consecutive whole blocks go to disk in one write: zfs-fuse serves each write
        // request at a cost, so 8 KiB writes cost far more than large ones.
        let mut run_bytes = self.run_bytes();
        let mut run = Vec::with_capacity(run_bytes.min(blocks.len() * BLOCK_SIZE as usize));
        let mut run_start = 0u64;
        for b in blocks {
            let data = if b.zstd {
                decompress_block(&b.data).ok_or_else(|| BackupError::Protocol {
                    cluster: self.cluster.clone(),
                    backup: self.id.clone(),
                    detail: format!(
                        "block {} of {}/{} is not a zstd frame of at most {BLOCK_SIZE} bytes",
                        b.index, open.area, open.path
                    ),
                })?
            } else {
                b.data
            };
            let max_file = self.backups.max_file_bytes;
            let too_far = b.index >= max_file.div_ceil(u64::from(BLOCK_SIZE));
            if data.is_empty() || data.len() > BLOCK_SIZE as usize || too_far {
                return Err(BackupError::Protocol {
                    cluster: self.cluster.clone(),
                    backup: self.id.clone(),
                    detail: format!(
                        "block {} of {}/{} has {} bytes; blocks have 1 to {BLOCK_SIZE} bytes and \
                         files at most {max_file} (limits.max_file_bytes)",
                        b.index,
                        open.area,
                        open.path,
                        data.len()
                    ),
                });
            }
            if hash_block(&data) != b.blake3 {
                return Err(BackupError::BlockChecksumMismatch {
                    cluster: self.cluster.clone(),
                    backup: self.id.clone(),
                    file: format!("{}/{}", open.area, open.path),
                    index: b.index,
                });
            }
            let follows = run_start + (run.len() / BLOCK_SIZE as usize) as u64 == b.index
                && run.len().is_multiple_of(BLOCK_SIZE as usize);
            if !run.is_empty() && (!follows || run.len() >= run_bytes) {
                self.write_run(open, run_start, &run)?;
                run.clear();
                run_bytes = self.run_bytes();
            }
            if run.is_empty() {
                run_start = b.index;
            }
            run.extend_from_slice(&data);
            open.received.insert(b.index, (b.blake3, data.len() as u64));
            written += data.len() as u64;
            count += 1;
        }
        if !run.is_empty() {
            self.write_run(open, run_start, &run)?;
        }
        self.stats(|s| {
            s.bytes_sent += wire_bytes;
            s.bytes_written += written;
            s.blocks_written += count;
        });
        Ok(())
    }

    /// The largest run to write next, from the room the tenant has left.
    fn run_bytes(&mut self) -> usize {
        let storage = self.backups.storage.as_ref();
        let tenant = self.cluster.tenant();
        self.room.run_bytes(Instant::now(), || {
            crate::layout::tenant(tenant)
                .and_then(|ds| storage.space(&ds))
                .map(|s| s.available)
        })
    }

    /// Writes `data`, whole blocks from block `start` on (the last may be short), into the
    /// open file.
    fn write_run(&mut self, open: &OpenFile, start: u64, data: &[u8]) -> Result<(), BackupError> {
        self.room.wrote(Instant::now(), data.len() as u64);
        open.file
            .write_all_at(data, start * u64::from(BLOCK_SIZE))
            .map_err(|source| {
                let end = start + (data.len() as u64).div_ceil(u64::from(BLOCK_SIZE)) - 1;
                io_error(
                    self.backups.storage.as_ref(),
                    self.cluster.clone(),
                    self.id.clone(),
                    format!("write blocks {start}-{end} of {}/{}", open.area, open.path),
                    source,
                )
            })
    }

    /// Ends the open file at `size`: blocks not sent must be ones the manifest already held.
    pub fn file_end(&mut self, size: u64) -> Result<(), BackupError> {
        let Some(open) = self.open.take() else {
            return Err(self.protocol("a file ended that had not begun"));
        };
        let name = format!("{}/{}", open.area, open.path);
        if size > self.max_file() {
            return Err(self.protocol(format!(
                "{name} claims {size} bytes, more than limits.max_file_bytes ({})",
                self.max_file()
            )));
        }
        let count = block_count(size);
        let mut hashes = Vec::with_capacity(count as usize);
        for i in 0..count {
            let want = block_len(size, i);
            let hash = match open.received.get(&i) {
                Some((h, len)) if *len == want => *h,
                Some((_, len)) => {
                    return Err(self.protocol(format!(
                    "block {i} of {name} has {len} bytes, but a file of {size} bytes needs {want}"
                )))
                }
                None => match &open.old {
                    Some(old)
                        if (i as usize) < old.hashes.len() && block_len(old.size, i) == want =>
                    {
                        old.hashes[i as usize]
                    }
                    _ => {
                        return Err(self.protocol(format!(
                            "block {i} of {name} was not sent and the server does not hold it"
                        )))
                    }
                },
            };
            hashes.push(hash);
        }
        if let Some(i) = open.received.keys().find(|i| **i >= count) {
            return Err(self.protocol(format!(
                "block {i} of {name} lies past its end ({size} bytes)"
            )));
        }
        open.file
            .set_len(size)
            .and_then(|()| open.file.set_permissions(files::permissions(open.mode)))
            .map_err(self.io(format!("set the size of {name}")))?;
        let entry = FileEntry {
            directory: false,
            mode: open.mode,
            size,
            hashes,
        };
        self.backups
            .catalog
            .put_file_entry(&self.cluster, open.area, &open.path, &entry, false)?;
        if let Some(parent) = open.abs.parent() {
            if open.old.is_none() {
                self.to_sync.insert(parent.to_owned());
            }
        }
        self.to_sync.insert(open.abs);
        self.stats(|s| s.files_changed += 1);
        Ok(())
    }

    /// Removes a file or directory the database no longer has.
    pub fn delete(&mut self, area: Area, path: RelPath) -> Result<(), BackupError> {
        if self.open.is_some() {
            return Err(self.protocol(format!("{area}/{path} deleted while a file was open")));
        }
        let abs = self.target(area, &path)?;
        files::remove(&abs).map_err(self.io(format!("remove {area}/{path}")))?;
        self.backups
            .catalog
            .remove_file_entries(&self.cluster, area, &path)?;
        if let Some(parent) = abs.parent() {
            self.to_sync.insert(parent.to_owned());
        }
        self.stats(|s| s.files_deleted += 1);
        Ok(())
    }

    /// Completes the backup: label files, WAL wait, snapshot, catalog.
    pub fn finish(mut self, f: FinishRequest) -> Result<BackupRecord, BackupError> {
        if let Some(open) = &self.open {
            return Err(self.protocol(format!(
                "finished while {}/{} was open",
                open.area, open.path
            )));
        }
        let Some((start_lsn, timeline, start_unix)) = self.started else {
            return Err(self.protocol("finished without pg_backup_start's position"));
        };
        let lbl = label::parse(&f.backup_label).map_err(|e| self.protocol(e))?;
        if lbl.start_lsn != start_lsn || lbl.timeline != timeline {
            return Err(self.protocol(format!(
                "backup_label starts at {} on timeline {}, but pg_backup_start gave {} on {}",
                lbl.start_lsn, lbl.timeline, start_lsn, timeline
            )));
        }
        if f.stop_lsn < start_lsn {
            return Err(self.protocol(format!(
                "stop LSN {} lies before start LSN {start_lsn}",
                f.stop_lsn
            )));
        }
        self.sync_written()?;
        self.write_label_files(&f)?;
        self.wait_for_wal(timeline, &lbl, f.stop_lsn)?;

        let mut stats = *self.running.stats.lock().unwrap_or_else(|p| p.into_inner());
        stats.bytes_read = f.bytes_read;
        stats.files = f.files;
        stats.duration_ms = self.running.started.elapsed().as_millis() as u64;
        let record = BackupRecord {
            id: self.id.clone(),
            kind: self.kind,
            base: None,
            label: self.req.label.clone(),
            host: self.req.host.clone(),
            start_lsn,
            stop_lsn: f.stop_lsn,
            timeline,
            start_unix,
            stop_unix: f.stop_unix,
            stats,
            receipt: None,
        };
        self.snapshot(&record)?;
        self.backups.catalog.put_backup(&self.cluster, &record)?;
        self.backups.catalog.close_session(&self.cluster)?;
        tracing::info!(
            cluster = %self.cluster, backup = %self.id, kind = self.kind.as_str(),
            start_lsn = %start_lsn, stop_lsn = %f.stop_lsn,
            bytes_read = stats.bytes_read, bytes_sent = stats.bytes_sent,
            bytes_written = stats.bytes_written, duration_ms = stats.duration_ms,
            "backup complete"
        );
        Ok(record)
    }

    /// fsyncs what this session wrote, so the manifest entries become true on disk.
    fn sync_written(&mut self) -> Result<(), BackupError> {
        for path in std::mem::take(&mut self.to_sync) {
            match fs::File::open(&path) {
                Ok(f) => f
                    .sync_all()
                    .map_err(self.io(format!("fsync {}", path.display())))?,
                // Removed by a later delete of its directory.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.io(format!("open {}", path.display()))(e)),
            }
        }
        self.backups.catalog.sync()?;
        Ok(())
    }

    /// backup_label tells recovery where to start; tablespace_map where tablespaces live.
    fn write_label_files(&mut self, f: &FinishRequest) -> Result<(), BackupError> {
        let data = self.root(Area::Data)?;
        let owner = self.backups.owner;
        files::write_durably(&data.join("backup_label"), f.backup_label.as_bytes(), owner)
            .map_err(self.io("write backup_label"))?;
        let map = data.join("tablespace_map");
        if f.tablespace_map.trim().is_empty() {
            files::remove(&map).map_err(self.io("remove an old tablespace_map"))?;
        } else {
            files::write_durably(&map, f.tablespace_map.as_bytes(), owner)
                .map_err(self.io("write tablespace_map"))?;
        }
        Ok(())
    }

    fn wait_for_wal(
        &self,
        timeline: TimelineId,
        lbl: &label::BackupLabel,
        stop: Lsn,
    ) -> Result<(), BackupError> {
        let seg = self.req.binding.wal_segment_size;
        let needed = label::needed_segments(timeline, lbl.start_lsn, stop, seg);
        let began = Instant::now();
        for name in needed {
            loop {
                if self
                    .backups
                    .catalog
                    .wal_file(&self.cluster, &name)?
                    .is_some()
                {
                    break;
                }
                if began.elapsed() >= self.backups.wal_wait {
                    return Err(BackupError::WalMissing {
                        cluster: self.cluster.clone(),
                        backup: self.id.clone(),
                        segment: name,
                        stop_lsn: stop,
                        waited_secs: began.elapsed().as_secs(),
                    });
                }
                std::thread::sleep(WAL_POLL);
            }
        }
        tracing::debug!(cluster = %self.cluster, backup = %self.id, waited_ms = began.elapsed().as_millis(), "archive holds the backup's WAL");
        Ok(())
    }

    /// One atomic recursive snapshot of `db`, carrying what the catalog needs to be rebuilt.
    fn snapshot(&self, r: &BackupRecord) -> Result<(), BackupError> {
        let l = ClusterLayout::of(&self.cluster)
            .map_err(Backups::storage_err(&self.cluster, "name datasets"))?;
        let props = super::props::snapshot_properties(r);
        self.backups
            .storage
            .snapshot(&l.db, &r.id, true, &props)
            .map_err(Backups::storage_err(
                &self.cluster,
                format!("snapshot backup {}", r.id),
            ))
    }
}

/// Adds to `marked` the chunk-aligned ranges holding `indices` (below `max`) and returns the
/// ranges that changed, to record. A range that reaches the previous one extends it, so a file
/// written in order keeps one range, whose record is replaced rather than added to.
pub(super) fn mark_runs(
    marked: &mut Ranges,
    indices: impl Iterator<Item = u64>,
    max: u64,
) -> Vec<(u64, u64)> {
    let mut changed = BTreeMap::new();
    for i in indices.filter(|i| *i < max) {
        if marked.range(..=i).next_back().is_some_and(|(_, e)| *e > i) {
            continue;
        }
        let start = i - i % TOUCH_CHUNK;
        let end = (start + TOUCH_CHUNK).min(max);
        let (key, end) = match marked.range(..=start).next_back() {
            Some((s, e)) if *e >= start => (*s, end.max(*e)),
            _ => (start, end),
        };
        marked.insert(key, end);
        changed.insert(key, end);
    }
    changed.into_iter().collect()
}

/// A write the quota (EDQUOT) or a full pool (ENOSPC) refused is the tenant's quota problem.
/// A write error as the user should read it: the tenant's quota (EDQUOT, or ENOSPC when
/// the tenant is at its quota), a full pool (ENOSPC otherwise), or the error itself.
pub(super) fn io_error(
    storage: &dyn crate::storage::Storage,
    cluster: ClusterId,
    backup: String,
    context: String,
    source: std::io::Error,
) -> BackupError {
    let space = crate::layout::tenant(cluster.tenant())
        .and_then(|ds| storage.space(&ds))
        .ok();
    // Near enough: ZFS accounts a transaction group late.
    let at_quota = space
        .as_ref()
        .is_some_and(|s| s.quota.is_some_and(|q| s.used.saturating_add(1 << 20) >= q));
    match source.raw_os_error() {
        Some(libc::EDQUOT) => BackupError::QuotaExceeded {
            tenant: cluster.tenant().clone(),
            quota: space.and_then(|s| s.quota),
            cluster,
            backup,
        },
        Some(libc::ENOSPC) if at_quota => BackupError::QuotaExceeded {
            tenant: cluster.tenant().clone(),
            quota: space.and_then(|s| s.quota),
            cluster,
            backup,
        },
        Some(libc::ENOSPC) => BackupError::StorageFull {
            cluster,
            backup,
            context,
        },
        _ => BackupError::Io {
            cluster,
            backup,
            context,
            source,
        },
    }
}

/// Decompresses one block, refusing anything that would grow past a block.
fn decompress_block(data: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::with_capacity(BLOCK_SIZE as usize);
    let decoder = zstd::stream::read::Decoder::new(data).ok()?;
    decoder
        .take(u64::from(BLOCK_SIZE) + 1)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() <= BLOCK_SIZE as usize).then_some(out)
}
