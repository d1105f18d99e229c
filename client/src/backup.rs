//! A base backup from the database host: begin with the server (which takes the cluster's
//! lease and streams the manifest of what it holds), pg_backup_start, walk PGDATA and the
//! tablespaces in manifest order, send only blocks whose blake3 differs, pg_backup_stop, and
//! let the server finish (label, WAL wait, snapshot).
//!
//! The walk runs on a blocking thread that merges the local listing with the manifest as it
//! arrives; a reader task takes the server's messages off the stream so that neither side
//! ever waits for the other to drain.

use std::fs;
use std::io::{ErrorKind, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use walvault_proto::manifest::{hash_block, split_hashes, BlockHash};
use walvault_proto::pb::{self, backup_request, backup_response};
use walvault_proto::{Area, ClusterId, RelPath, BLOCK_SIZE};

use crate::config::ClientConfig;
use crate::connect;
use crate::error::ClientError;
use crate::pgdata::{self, LocalEntry};
use crate::postgres::Database;
use crate::progress::Progress;

/// Wire bytes per message of blocks: well under the 4 MiB message limit.
const BATCH_BYTES: usize = 1 << 20;
/// zstd level for blocks: fast, since the host is busy being a database.
const ZSTD_LEVEL: i32 = 1;
/// Bytes read at once from a file.
const READ_SIZE: usize = 1 << 20;

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub label: Option<String>,
    pub pgdata: Option<std::path::PathBuf>,
    pub conninfo: Option<String>,
    /// Bytes per second to read at most.
    pub max_rate: Option<u64>,
    /// Spread the start checkpoint (PostgreSQL's checkpoint_completion_target) instead of
    /// an immediate one.
    pub spread_checkpoint: bool,
    pub progress: bool,
}

/// What the server holds for one file.
#[derive(Debug)]
struct Remote {
    area: Area,
    path: RelPath,
    directory: bool,
    mode: u32,
    size: u64,
    hashes: Vec<BlockHash>,
}

impl Remote {
    fn key(&self) -> (Area, &RelPath) {
        (self.area, &self.path)
    }
}

type Outbound = mpsc::Sender<pb::BackupRequest>;

fn msg(part: backup_request::Part) -> pb::BackupRequest {
    pb::BackupRequest { part: Some(part) }
}

/// This host's name, for the server's listings.
pub(crate) fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

pub async fn run(
    config: &ClientConfig,
    cluster: Option<&ClusterId>,
    opts: Options,
) -> Result<pb::BackupInfo, ClientError> {
    let cluster_ref = crate::commands::cluster_ref(config, cluster);
    let describe = crate::commands::describe(&cluster_ref);
    let db = Database::connect(opts.conninfo.as_deref()).await?;
    let facts = db.facts().await?;
    let pgdata = opts.pgdata.clone().unwrap_or(facts.data_directory.clone());
    fs::metadata(pgdata.join("PG_VERSION")).map_err(|e| {
        ClientError::Usage(format!(
            "cannot read the data directory {}: {e}; run walvault backup as the PostgreSQL OS \
             user on the database host (or give --pgdata)",
            pgdata.display()
        ))
    })?;
    let label = opts
        .label
        .clone()
        .unwrap_or_else(|| format!("walvault {}", crate::output::utc_time(crate::unix_now())));

    let mut client = pb::backup_client::BackupClient::new(connect::channel(config).await?);
    let (out, out_rx) = mpsc::channel::<pb::BackupRequest>(16);
    let begin = pb::BeginBackup {
        cluster: cluster_ref,
        system_identifier: facts.system_identifier,
        pg_major: facts.major(),
        wal_segment_size: facts.wal_segment_size,
        label: label.clone(),
        tablespaces: facts.tablespaces.iter().map(|t| t.oid).collect(),
        host: hostname(),
    };
    out.send(msg(backup_request::Part::Begin(begin)))
        .await
        .map_err(|_| ClientError::Integrity("the request stream closed early".into()))?;
    let context = format!("back up {describe}");
    let mut inbound = client
        .run_backup(ReceiverStream::new(out_rx))
        .await
        .map_err(ClientError::server(context.clone()))?
        .into_inner();
    let accepted = match inbound
        .message()
        .await
        .map_err(ClientError::server(context.clone()))?
    {
        Some(pb::BackupResponse {
            part: Some(backup_response::Part::Accepted(a)),
        }) => a,
        _ => {
            return Err(ClientError::Integrity(format!(
                "{context}: the server did not accept the backup"
            )))
        }
    };
    if accepted.block_size != BLOCK_SIZE {
        return Err(ClientError::Integrity(format!(
            "{context}: the server uses {}-byte blocks, this client {BLOCK_SIZE}; update one of them",
            accepted.block_size
        )));
    }

    let (manifest_tx, manifest_rx) = mpsc::channel::<Remote>(256);
    let (done_tx, done_rx) = oneshot::channel();
    tokio::spawn(read_responses(inbound, manifest_tx, done_tx));

    let (start_lsn, timeline) = db
        .start_backup(&facts, &label, !opts.spread_checkpoint)
        .await?;
    out.send(msg(backup_request::Part::Started(pb::BackupStarted {
        start_lsn: start_lsn.0,
        timeline: timeline.0,
        start_unix: crate::unix_now(),
    })))
    .await
    .map_err(|_| ClientError::Integrity("the request stream closed early".into()))?;

    let tablespaces = facts.tablespaces.clone();
    let walk_root = pgdata.clone();
    let entries = tokio::task::spawn_blocking(move || pgdata::walk(&walk_root, &tablespaces))
        .await
        .map_err(|e| ClientError::Integrity(format!("the walk failed: {e}")))?
        .map_err(|e| ClientError::Io {
            context: "list the data directory".into(),
            source: std::io::Error::new(e.source.kind(), e.to_string()),
        })?;
    let total: u64 = entries.iter().map(|e| e.size).sum();
    let read = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(opts.progress, total, read.clone(), "read");

    let sender = Sender {
        out: out.clone(),
        read: read.clone(),
        max_rate: opts.max_rate,
        began: Instant::now(),
        files: 0,
        last_sent: std::cell::Cell::new(Instant::now()),
        heartbeat: match accepted.idle_timeout_secs {
            0 => HEARTBEAT,
            secs => HEARTBEAT.min(Duration::from_secs(u64::from(secs)) / 3),
        },
    };
    let sent = tokio::task::spawn_blocking(move || sender.run(entries, manifest_rx)).await;
    let sent = match sent {
        Ok(Ok(files)) => Ok(files),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(ClientError::Integrity(format!("the walk failed: {e}"))),
    };
    let files = match sent {
        Ok(f) => f,
        Err(e) => {
            progress.finish();
            // The server's reason beats our "stream closed".
            return Err(server_reason(done_rx, &context).await.unwrap_or(e));
        }
    };
    progress.finish();

    let stopped = db.stop_backup(&facts).await?;
    let finish = pb::FinishBackup {
        stop_lsn: stopped.lsn.0,
        stop_unix: crate::unix_now(),
        backup_label: stopped.backup_label,
        tablespace_map: stopped.tablespace_map,
        bytes_read: read.load(Ordering::Relaxed),
        files,
    };
    if out
        .send(msg(backup_request::Part::Finish(finish)))
        .await
        .is_err()
    {
        return Err(server_reason(done_rx, &context).await.unwrap_or_else(|| {
            ClientError::Integrity(format!("{context}: the server went away"))
        }));
    }
    drop(out);
    match done_rx.await {
        Ok(Ok(info)) => Ok(info),
        Ok(Err(status)) => Err(ClientError::server(context)(status)),
        Err(_) => Err(ClientError::Integrity(format!(
            "{context}: the server ended the backup without an answer"
        ))),
    }
}

async fn server_reason(
    done: oneshot::Receiver<Result<pb::BackupInfo, tonic::Status>>,
    context: &str,
) -> Option<ClientError> {
    match tokio::time::timeout(Duration::from_secs(10), done).await {
        Ok(Ok(Err(status))) => Some(ClientError::server(context)(status)),
        _ => None,
    }
}

/// Takes the server's messages off the stream: manifest entries (joined when a long file
/// comes in several) to the walk, the final answer or error to `done`.
async fn read_responses(
    mut inbound: tonic::Streaming<pb::BackupResponse>,
    manifest: mpsc::Sender<Remote>,
    done: oneshot::Sender<Result<pb::BackupInfo, tonic::Status>>,
) {
    let mut manifest = Some(manifest);
    let mut pending: Option<Remote> = None;
    let outcome = loop {
        match inbound.message().await {
            Ok(Some(pb::BackupResponse { part: Some(part) })) => match part {
                backup_response::Part::Entry(e) => {
                    let bad =
                        || tonic::Status::internal(format!("a bad manifest entry for {}", e.path));
                    let Some(hashes) = split_hashes(&e.hashes) else {
                        break Err(bad());
                    };
                    let (Ok(area), Ok(path)) = (e.area.parse::<Area>(), e.path.parse::<RelPath>())
                    else {
                        break Err(bad());
                    };
                    if let Some(p) = pending.as_mut() {
                        if e.first_block > 0 && p.area == area && p.path == path {
                            p.hashes.extend(hashes);
                            continue;
                        }
                    }
                    if let (Some(p), Some(tx)) = (pending.take(), manifest.as_ref()) {
                        if tx.send(p).await.is_err() {
                            manifest = None;
                        }
                    }
                    pending = Some(Remote {
                        area,
                        path,
                        directory: e.directory,
                        mode: e.mode,
                        size: e.size,
                        hashes,
                    });
                }
                backup_response::Part::ManifestEnd(_) => {
                    if let (Some(p), Some(tx)) = (pending.take(), manifest.as_ref()) {
                        let _ = tx.send(p).await;
                    }
                    // Closing the channel tells the walk the manifest is complete.
                    manifest = None;
                }
                backup_response::Part::Finished(info) => break Ok(info),
                backup_response::Part::Accepted(_) => {}
            },
            Ok(Some(_)) => {}
            Ok(None) => break Err(tonic::Status::unavailable("the server closed the stream")),
            Err(status) => break Err(status),
        }
    };
    let _ = done.send(outcome);
}

struct Sender {
    out: Outbound,
    read: Arc<AtomicU64>,
    max_rate: Option<u64>,
    began: Instant,
    files: u64,
    /// When the last message went out: a long read with nothing to send says it is alive.
    last_sent: std::cell::Cell<Instant>,
    /// How often to say so: well within the server's idle limit.
    heartbeat: Duration,
}

/// How often a backup that reads without sending tells the server so, at most.
const HEARTBEAT: Duration = Duration::from_secs(15);

fn closed() -> ClientError {
    ClientError::Integrity("the server closed the backup stream".into())
}

impl Sender {
    fn send(&self, part: backup_request::Part) -> Result<(), ClientError> {
        self.last_sent.set(Instant::now());
        self.out.blocking_send(msg(part)).map_err(|_| closed())
    }

    /// Says how far the read is, if nothing went out for a while.
    fn heartbeat(&self) -> Result<(), ClientError> {
        if self.last_sent.get().elapsed() < self.heartbeat {
            return Ok(());
        }
        self.send(backup_request::Part::Progress(pb::BackupProgress {
            bytes_read: self.read.load(Ordering::Relaxed),
            files: self.files,
        }))
    }

    fn delete(&self, r: &Remote) -> Result<(), ClientError> {
        self.send(backup_request::Part::Delete(pb::DeleteFile {
            area: r.area.to_string(),
            path: r.path.to_string(),
        }))
    }

    /// Merges the sorted local listing with the manifest; returns the number of entries.
    fn run(
        mut self,
        entries: Vec<LocalEntry>,
        mut manifest: mpsc::Receiver<Remote>,
    ) -> Result<u64, ClientError> {
        let mut next = manifest.blocking_recv();
        let mut deferred = None;
        // A directory deleted on the server takes its contents with it.
        let mut deleted_dir: Option<(Area, RelPath)> = None;
        let skip_deleted = |r: &Remote, deleted: &Option<(Area, RelPath)>| {
            deleted
                .as_ref()
                .is_some_and(|(a, d)| *a == r.area && r.path.is_inside(d))
        };
        for local in entries {
            let mut matched = None;
            while let Some(r) = next.take() {
                match r.key().cmp(&(local.area, &local.path)) {
                    std::cmp::Ordering::Less => {
                        if !skip_deleted(&r, &deleted_dir) {
                            self.delete(&r)?;
                            if r.directory {
                                deleted_dir = Some((r.area, r.path.clone()));
                            }
                        }
                        next = manifest.blocking_recv();
                    }
                    std::cmp::Ordering::Equal => {
                        matched = Some(r);
                        next = manifest.blocking_recv();
                        break;
                    }
                    std::cmp::Ordering::Greater => {
                        next = Some(r);
                        break;
                    }
                }
            }
            self.files += 1;
            self.heartbeat()?;
            if local.is_pg_control() {
                deferred = Some((local, matched));
                continue;
            }
            self.entry(&local, matched)?;
        }
        while let Some(r) = next.take() {
            if !skip_deleted(&r, &deleted_dir) {
                self.delete(&r)?;
                if r.directory {
                    deleted_dir = Some((r.area, r.path.clone()));
                }
            }
            next = manifest.blocking_recv();
        }
        if let Some((local, matched)) = deferred {
            self.entry(&local, matched)?;
        }
        Ok(self.files)
    }

    fn entry(&mut self, local: &LocalEntry, remote: Option<Remote>) -> Result<(), ClientError> {
        // A file that became a directory or the other way round: drop the old one first.
        let remote = match remote {
            Some(r) if r.directory != local.directory => {
                self.delete(&r)?;
                None
            }
            other => other,
        };
        let header = || {
            backup_request::Part::File(pb::FileHeader {
                area: local.area.to_string(),
                path: local.path.to_string(),
                mode: local.mode,
                directory: local.directory,
            })
        };
        if local.directory {
            if remote.is_none_or(|r| r.mode != local.mode) {
                self.send(header())?;
            }
            return Ok(());
        }
        let mut file = match fs::File::open(&local.abs) {
            Ok(f) => f,
            // Dropped while we walk: gone from the copy too.
            Err(e) if e.kind() == ErrorKind::NotFound => {
                if let Some(r) = &remote {
                    self.delete(r)?;
                }
                return Ok(());
            }
            Err(e) => {
                return Err(ClientError::io(format!("open {}", local.abs.display()))(e));
            }
        };
        let mut header_sent = false;
        let mut batch: Vec<pb::Block> = Vec::new();
        let mut batch_bytes = 0usize;
        let mut buf = vec![0u8; READ_SIZE];
        let mut size = 0u64;
        let mut index = 0u64;
        loop {
            let filled = read_full(&mut file, &mut buf)
                .map_err(|e| ClientError::io(format!("read {}", local.abs.display()))(e))?;
            if filled == 0 {
                break;
            }
            self.read.fetch_add(filled as u64, Ordering::Relaxed);
            self.throttle();
            self.heartbeat()?;
            for block in buf[..filled].chunks(BLOCK_SIZE as usize) {
                let hash = hash_block(block);
                let known = remote
                    .as_ref()
                    .and_then(|r| r.hashes.get(index as usize))
                    .is_some_and(|h| *h == hash);
                if !known {
                    if !header_sent {
                        self.send(header())?;
                        header_sent = true;
                    }
                    let (compression, data) = compress(block);
                    batch_bytes += data.len();
                    batch.push(pb::Block {
                        index,
                        blake3: hash.to_vec(),
                        compression: compression as i32,
                        data,
                    });
                    if batch_bytes >= BATCH_BYTES {
                        self.send(backup_request::Part::Blocks(pb::FileBlocks {
                            blocks: std::mem::take(&mut batch),
                        }))?;
                        batch_bytes = 0;
                    }
                }
                index += 1;
            }
            size += filled as u64;
            if filled < buf.len() {
                break;
            }
        }
        if !batch.is_empty() {
            self.send(backup_request::Part::Blocks(pb::FileBlocks {
                blocks: batch,
            }))?;
        }
        let same_shape = remote
            .as_ref()
            .is_some_and(|r| r.size == size && r.mode == local.mode);
        if !header_sent && !same_shape {
            self.send(header())?;
            header_sent = true;
        }
        if header_sent {
            self.send(backup_request::Part::FileEnd(pb::FileEnd { size }))?;
        }
        Ok(())
    }

    /// Sleeps as long as reading is ahead of --max-rate.
    fn throttle(&self) {
        if let Some(rate) = self.max_rate {
            let read = self.read.load(Ordering::Relaxed) as f64;
            let due = Duration::from_secs_f64(read / rate.max(1) as f64);
            let elapsed = self.began.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
    }
}

/// Reads until `buf` is full or the file ends.
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

/// zstd when it helps, the plain block otherwise.
fn compress(block: &[u8]) -> (pb::Compression, Vec<u8>) {
    match zstd::bulk::compress(block, ZSTD_LEVEL) {
        Ok(c) if c.len() < block.len() => (pb::Compression::Zstd, c),
        _ => (pb::Compression::None, block.to_vec()),
    }
}
