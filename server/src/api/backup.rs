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

use super::{blocking, cluster_ref, principal, status, Domain};
use crate::backup::{BackupView, BeginRequest, FinishRequest, IncomingBlock, Session};
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
    }
}

/// Sends the manifest, splitting long hash lists; stops quietly when the client is gone.
fn send_manifest(
    session_manifest: impl Iterator<
        Item = Result<crate::backup::ManifestItem, crate::backup::BackupError>,
    >,
    tx: &Tx,
) {
    let mut entries = 0u64;
    for item in session_manifest {
        let item = match item {
            Ok(i) => i,
            Err(e) => {
                let _ = tx.blocking_send(Err(status::backup(e)));
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
            if tx
                .blocking_send(Ok(response(backup_response::Part::Entry(entry))))
                .is_err()
            {
                return;
            }
            first = end;
            if first >= hashes.len() {
                break;
            }
        }
    }
    let _ = tx.blocking_send(Ok(response(backup_response::Part::ManifestEnd(
        pb::ManifestEnd { entries },
    ))));
}

/// Applies the client's messages until it finishes; returns the finished backup, or `None`
/// when the client went away (the session is then abandoned).
fn apply(
    mut session: Session,
    inbound: &mut Streaming<pb::BackupRequest>,
    rt: &tokio::runtime::Handle,
) -> Result<Option<BackupView>, Status> {
    use backup_request::Part;
    loop {
        let msg = match rt.block_on(inbound.message()) {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::warn!(cluster = %session.cluster(), backup = session.id(), "the client ended the stream before finishing; backup abandoned");
                return Ok(None);
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
        let mut inbound = request.into_inner();
        let begin = match inbound.message().await? {
            Some(pb::BackupRequest {
                part: Some(backup_request::Part::Begin(b)),
            }) => b,
            _ => return Err(invalid("a backup must start with begin")),
        };
        let cluster = who
            .resolve_cluster(cluster_ref(begin.cluster.clone())?)
            .map_err(status::auth)?;
        who.may_back_up(&cluster).map_err(status::auth)?;
        let req = BeginRequest {
            binding: binding(&begin)?,
            cluster: cluster.clone(),
            label: begin.label.chars().take(1024).collect(),
            tablespaces: begin.tablespaces.clone(),
            host: begin.host.chars().take(255).collect(),
        };
        let backups = self.domain.backups.clone();
        let session = blocking(move || backups.begin(req).map_err(status::backup)).await?;

        let (tx, rx) = mpsc::channel(64);
        let accepted = pb::BackupAccepted {
            backup_id: session.id().to_owned(),
            block_size: session.block_size(),
        };
        tx.send(Ok(response(backup_response::Part::Accepted(accepted))))
            .await
            .map_err(|_| Status::cancelled("the client went away"))?;

        let manifest = session.manifest();
        let manifest_tx = tx.clone();
        tokio::task::spawn_blocking(move || send_manifest(manifest, &manifest_tx));

        let rt = tokio::runtime::Handle::current();
        let span = tracing::info_span!("backup", %cluster, backup = session.id());
        tokio::task::spawn_blocking(move || {
            let _enter = span.enter();
            match apply(session, &mut inbound, &rt) {
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
