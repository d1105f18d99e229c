//! The Backup service: one bidirectional stream per base backup, and the listing.
//!
//! The stream is served by two blocking workers: one sends the manifest, the other applies
//! the client's messages to the session. They run side by side so that neither direction
//! waits on the other (the client sends changed blocks while it still reads the manifest).

use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use walvault_proto::manifest::{BlockHash, HASHES_PER_ENTRY};
use walvault_proto::pb::{self, backup_request, backup_response};
use walvault_proto::{Area, Lsn, RelPath, TimelineId};

use std::time::Duration;

use super::{
    blocking, cluster_ref, next_message, one_line, over_budget, principal, status, Domain,
};
use crate::backup::{BackupView, BeginRequest, FinishRequest, IncomingBlock, Session};
use crate::budget::Work;
use crate::catalog::{BackupRecord, ClusterBinding};

#[derive(Debug)]
pub struct BackupApi {
    domain: Domain,
}

impl BackupApi {
    pub fn new(domain: Domain) -> Self {
        Self { domain }
    }
}

type Tx = mpsc::Sender<Result<pb::BackupResponse, Status>>;
type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupResponse, Status>> + Send>>;

fn response(part: backup_response::Part) -> pb::BackupResponse {
    pb::BackupResponse { part: Some(part) }
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

fn binding(b: &pb::BeginBackup) -> Result<ClusterBinding, Status> {
    if b.system_identifier == 0 {
        return Err(invalid("begin: the system identifier is missing"));
    }
    let seg = b.wal_segment_size;
    if !seg.is_power_of_two() || !((1 << 20)..=(1 << 30)).contains(&seg) {
        return Err(invalid(format!(
            "begin: {seg} is not a WAL segment size (a power of two from 1 MiB to 1 GiB)"
        )));
    }
    if !(10..=99).contains(&b.pg_major) {
        return Err(invalid(format!(
            "begin: {} is not a PostgreSQL major version",
            b.pg_major
        )));
    }
    Ok(ClusterBinding {
        system_identifier: b.system_identifier,
        wal_segment_size: seg,
        pg_major: b.pg_major,
    })
}

fn area_path(area: &str, path: &str) -> Result<(Area, RelPath), Status> {
    let area = area.parse::<Area>().map_err(|e| invalid(e.to_string()))?;
    let path = path
        .parse::<RelPath>()
        .map_err(|e| invalid(e.to_string()))?;
    Ok((area, path))
}

pub(super) fn info(v: &BackupView) -> pb::BackupInfo {
    let r: &BackupRecord = &v.record;
    let s = &r.stats;
    pb::BackupInfo {
        id: r.id.clone(),
        kind: r.kind.as_str().to_owned(),
        label: r.label.clone(),
        start_lsn: r.start_lsn.0,
        stop_lsn: r.stop_lsn.0,
        timeline: r.timeline.0,
        start_unix: r.start_unix,
        stop_unix: r.stop_unix,
        bytes_read: s.bytes_read,
        bytes_sent: s.bytes_sent,
        bytes_written: s.bytes_written,
        blocks_written: s.blocks_written,
        files: s.files,
        files_changed: s.files_changed,
        files_deleted: s.files_deleted,
        duration_ms: s.duration_ms,
        snapshot_bytes: v.snapshot_bytes,
        host: r.host.clone(),
        state: if v.running { "running" } else { "complete" }.to_owned(),
        base: r.base.clone().unwrap_or_default(),
        verification: match &r.receipt {
            None => "pending",
            Some(x) if x.verified => "verified",
            Some(_) => "failed",
        }
        .to_owned(),
        receipt: r.receipt.as_ref().map(|x| pb::VerificationReceipt {
            verified: x.verified,
            checked_unix: x.checked_unix,
            checks: x.checks.clone(),
            first_query_ms: x.first_query_ms,
            duration_ms: x.duration_ms,
            tables: x.tables,
            indexes: x.indexes,
            errors: x.errors.clone(),
        }),
    }
}

/// Sends a message from a blocking thread, waiting at most `idle` for the client to take it:
/// false when it is gone or does not read.
fn send_within(
    rt: &tokio::runtime::Handle,
    tx: &Tx,
    msg: Result<pb::BackupResponse, Status>,
    idle: Duration,
) -> bool {
    matches!(
        rt.block_on(tokio::time::timeout(idle, tx.send(msg))),
        Ok(Ok(()))
    )
}

/// Sends the manifest, splitting long hash lists; stops quietly when the client is gone or
/// stops reading.
fn send_manifest(
    session_manifest: impl Iterator<
        Item = Result<crate::backup::ManifestItem, crate::backup::BackupError>,
    >,
    tx: &Tx,
    rt: &tokio::runtime::Handle,
    idle: Duration,
) {
    let mut entries = 0u64;
    for item in session_manifest {
        let item = match item {
            Ok(i) => i,
            Err(e) => {
                let _ = send_within(rt, tx, Err(status::backup(e)), idle);
                return;
            }
        };
        entries += 1;
        let hashes: &[BlockHash] = &item.entry.hashes;
        let mut first = 0usize;
        loop {
            let end = (first + HASHES_PER_ENTRY).min(hashes.len());
            let entry = pb::ManifestEntry {
                area: item.area.to_string(),
                path: item.path.to_string(),
                directory: item.entry.directory,
                mode: item.entry.mode,
                size: item.entry.size,
                first_block: first as u64,
                hashes: hashes[first..end].concat(),
            };
            if !send_within(
                rt,
                tx,
                Ok(response(backup_response::Part::Entry(entry))),
                idle,
            ) {
                return;
            }
            first = end;
            if first >= hashes.len() {
                break;
            }
        }
    }
    let _ = send_within(
        rt,
        tx,
        Ok(response(backup_response::Part::ManifestEnd(
            pb::ManifestEnd { entries },
        ))),
        idle,
    );
}

/// Applies the client's messages until it finishes; returns the finished backup, or `None`
/// when the client went away (the session is then abandoned).
fn apply(
    mut session: Session,
    inbound: &mut Streaming<pb::BackupRequest>,
    rt: &tokio::runtime::Handle,
    idle: Duration,
    max: Duration,
) -> Result<Option<BackupView>, Status> {
    use backup_request::Part;
    let began = std::time::Instant::now();
    loop {
        if began.elapsed() > max {
            tracing::warn!(cluster = %session.cluster(), backup = session.id(), "the backup ran longer than limits.stream_max_secs; abandoned");
            return Err(Status::deadline_exceeded(format!(
                "the backup ran longer than {} s (limits.stream_max_secs); abandoned",
                max.as_secs()
            )));
        }
        let msg = match rt.block_on(next_message(inbound, idle)) {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::warn!(cluster = %session.cluster(), backup = session.id(), "the client ended the stream before finishing; backup abandoned");
                return Ok(None);
            }
            Err(e) if e.code() == tonic::Code::DeadlineExceeded => {
                tracing::warn!(cluster = %session.cluster(), backup = session.id(), "{}; backup abandoned", e.message());
                return Err(e);
            }
            Err(e) => {
                tracing::warn!(cluster = %session.cluster(), backup = session.id(), "the client went away ({}); backup abandoned", e.message());
                return Ok(None);
            }
        };
        match msg.part {
            Some(Part::Started(s)) => {
                if s.timeline == 0 {
                    return Err(invalid("started: timeline 0"));
                }
                session.started(Lsn(s.start_lsn), TimelineId(s.timeline), s.start_unix);
            }
            Some(Part::File(f)) => {
                let (area, path) = area_path(&f.area, &f.path)?;
                session
                    .file(area, path, f.mode, f.directory)
                    .map_err(status::backup)?;
            }
            Some(Part::Blocks(b)) => {
                let mut wire = 0u64;
                let mut blocks = Vec::with_capacity(b.blocks.len());
                for block in b.blocks {
                    let blake3: BlockHash = block
                        .blake3
                        .as_slice()
                        .try_into()
                        .map_err(|_| invalid("a block's blake3 must be 32 bytes"))?;
                    let zstd = match pb::Compression::try_from(block.compression) {
                        Ok(pb::Compression::Zstd) => true,
                        Ok(pb::Compression::None) => false,
                        Err(_) => return Err(invalid("unknown compression")),
                    };
                    wire += block.data.len() as u64;
                    blocks.push(IncomingBlock {
                        index: block.index,
                        blake3,
                        zstd,
                        data: block.data,
                    });
                }
                session.blocks(blocks, wire).map_err(status::backup)?;
            }
            Some(Part::FileEnd(e)) => session.file_end(e.size).map_err(status::backup)?,
            Some(Part::Delete(d)) => {
                let (area, path) = area_path(&d.area, &d.path)?;
                session.delete(area, path).map_err(status::backup)?;
            }
            Some(Part::Finish(f)) => {
                let record = session
                    .finish(FinishRequest {
                        stop_lsn: Lsn(f.stop_lsn),
                        stop_unix: f.stop_unix,
                        backup_label: f.backup_label,
                        tablespace_map: f.tablespace_map,
                        bytes_read: f.bytes_read,
                        files: f.files,
                    })
                    .map_err(status::backup)?;
                return Ok(Some(BackupView {
                    record,
                    running: false,
                    snapshot_bytes: 0,
                }));
            }
            Some(Part::Progress(p)) => session.progress(p.bytes_read, p.files),
            Some(Part::Begin(_)) => return Err(invalid("begin may only come first")),
            None => return Err(invalid("an empty message")),
        }
    }
}

#[tonic::async_trait]
impl pb::backup_server::Backup for BackupApi {
    type RunBackupStream = BackupStream;

    async fn run_backup(
        &self,
        request: Request<Streaming<pb::BackupRequest>>,
    ) -> Result<Response<Self::RunBackupStream>, Status> {
        let who = principal(&request)?;
        let idle = self.domain.budget.limits().idle_timeout;
        let stream_max = self.domain.budget.limits().stream_max;
        let mut inbound = request.into_inner();
        let begin = match next_message(&mut inbound, idle).await? {
            Some(pb::BackupRequest {
                part: Some(backup_request::Part::Begin(b)),
            }) => b,
            _ => return Err(invalid("a backup must start with begin")),
        };
        let cluster = who
            .resolve_cluster(cluster_ref(begin.cluster.clone())?)
            .map_err(status::auth)?;
        who.may_back_up(&cluster).map_err(status::auth)?;
        let permit = self
            .domain
            .budget
            .take(Work::Backup, &cluster)
            .map_err(over_budget)?;
        let req = BeginRequest {
            binding: binding(&begin)?,
            cluster: cluster.clone(),
            label: one_line(&begin.label, 1024),
            tablespaces: begin.tablespaces.clone(),
            host: one_line(&begin.host, 255),
        };
        let backups = self.domain.backups.clone();
        let session = blocking(move || backups.begin(req).map_err(status::backup)).await?;

        let (tx, rx) = mpsc::channel(64);
        let accepted = pb::BackupAccepted {
            backup_id: session.id().to_owned(),
            block_size: session.block_size(),
            idle_timeout_secs: idle.as_secs().min(u64::from(u32::MAX)) as u32,
        };
        tx.send(Ok(response(backup_response::Part::Accepted(accepted))))
            .await
            .map_err(|_| Status::cancelled("the client went away"))?;

        let manifest = session.manifest();
        let manifest_tx = tx.clone();
        let rt = tokio::runtime::Handle::current();
        let manifest_rt = rt.clone();
        tokio::task::spawn_blocking(move || {
            send_manifest(manifest, &manifest_tx, &manifest_rt, idle)
        });

        let span = tracing::info_span!("backup", %cluster, backup = session.id());
        tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            let _permit = permit;
            match apply(session, &mut inbound, &rt, idle, stream_max) {
                Ok(Some(view)) => {
                    let _ = tx
                        .blocking_send(Ok(response(backup_response::Part::Finished(info(&view)))));
                }
                Ok(None) => {}
                Err(status) => {
                    let _ = tx.blocking_send(Err(status));
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_backups(
        &self,
        request: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        let who = principal(&request)?;
        let cluster = who
            .resolve_cluster(cluster_ref(request.into_inner().cluster)?)
            .map_err(status::auth)?;
        who.may_read(&cluster).map_err(status::auth)?;
        let backups = self.domain.backups.clone();
        let views = blocking(move || backups.list(&cluster).map_err(status::backup)).await?;
        Ok(Response::new(pb::ListBackupsResponse {
            backups: views.iter().map(info).collect(),
        }))
    }
}
