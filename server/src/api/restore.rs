//! The Restore service: windows, plans, directory deliveries (one bidirectional stream each),
//! instances on the server, and their listing.

use std::pin::Pin;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use walvault_proto::manifest::split_hashes;
use walvault_proto::pb::{self, restore_dir_request, restore_dir_response, restore_target};
use walvault_proto::{Area, ClusterId, Lsn, RelPath, TimelineId};

use super::{
    blocking, cluster_ref, next_message, one_line, over_budget, principal, status, Domain,
};
use crate::budget::Work;
use crate::restore::deliver::{self, Item, LocalFile, LocalManifest};
use crate::restore::{instance, Action, Planned, RestoreSpec, RestoreView, TargetSpec, Window};

/// Bound on the local manifest a delta restore sends (files and directories); its bytes are
/// bounded by limits.max_local_manifest_bytes.
const MAX_LOCAL_ENTRIES: usize = 20_000_000;

#[derive(Debug)]
pub struct RestoreApi {
    domain: Domain,
}

impl RestoreApi {
    pub fn new(domain: Domain) -> Self {
        Self { domain }
    }
}

fn invalid(msg: impl Into<String>) -> Status {
    Status::invalid_argument(msg.into())
}

/// The request's cluster and what to restore, checked.
fn spec(p: &crate::auth::Principal, r: pb::RestoreRequest) -> Result<RestoreSpec, Status> {
    let cluster = p
        .resolve_cluster(cluster_ref(r.cluster)?)
        .map_err(status::auth)?;
    use restore_target::Kind;
    let target = match r.target.and_then(|t| t.kind) {
        None | Some(Kind::Latest(_)) => TargetSpec::Latest,
        Some(Kind::TimeMicros(t)) => TargetSpec::Time(t),
        Some(Kind::Lsn(l)) => TargetSpec::Lsn(Lsn(l)),
        Some(Kind::Xid(x)) => TargetSpec::Xid(x),
        Some(Kind::RestorePoint(n)) => {
            if n.is_empty() || n.len() > 63 || n.contains('\0') {
                return Err(invalid(format!(
                    "{n:?} is not a restore point name (1 to 63 bytes)"
                )));
            }
            TargetSpec::RestorePoint(n)
        }
        Some(Kind::Immediate(_)) => TargetSpec::Immediate,
    };
    let action = match pb::RecoveryAction::try_from(r.action) {
        Ok(pb::RecoveryAction::Promote) => Action::Promote,
        Ok(pb::RecoveryAction::Pause) => Action::Pause,
        Ok(pb::RecoveryAction::Shutdown) => Action::Shutdown,
        Err(_) => return Err(invalid(format!("unknown recovery action {}", r.action))),
    };
    let backup = (!r.backup.is_empty()).then_some(r.backup);
    if let Some(b) = &backup {
        if b.len() > 64
            || !b
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c))
        {
            return Err(invalid(format!("{b:?} is not a backup id")));
        }
    }
    Ok(RestoreSpec {
        cluster,
        target,
        timeline: (r.timeline != 0).then_some(TimelineId(r.timeline)),
        backup,
        action,
        inclusive: !r.exclusive,
    })
}

fn cluster_pb(c: &ClusterId) -> pb::ClusterRef {
    pb::ClusterRef {
        tenant: c.tenant().to_string(),
        cluster: c.name().to_owned(),
    }
}

fn plan_pb(
    p: &Planned,
    areas: Vec<pb::Area>,
    bytes_total: u64,
    files_total: u64,
) -> pb::RestorePlan {
    pb::RestorePlan {
        restore_id: p.id.clone(),
        backup_id: p.plan.backup.id.clone(),
        backup_timeline: p.plan.backup.timeline.0,
        backup_stop_lsn: p.plan.backup.stop_lsn.0,
        backup_consistent_micros: p.plan.backup.consistent_micros,
        timeline: p.plan.timeline.0,
        settings: p
            .plan
            .settings
            .iter()
            .map(|(name, value)| pb::Setting {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        target: p.plan.target.clone(),
        areas,
        wal_bytes: p.plan.wal_bytes,
        bytes_total,
        files_total,
        pg_major: p.pg_major,
        reach_lsn: p.plan.reach.0,
        reach_micros: p.plan.reach_micros.unwrap_or(0),
        through_segment: p.through_name(),
    }
}

fn window_pb(w: &Window) -> pb::TimelineWindow {
    let seg = w.segment_size;
    let oldest = w.oldest();
    pb::TimelineWindow {
        timeline: w.timeline.0,
        parent: w.parent.map(|(t, _)| t.0).unwrap_or(0),
        switch_lsn: w.parent.map(|(_, l)| l.0).unwrap_or(0),
        oldest_backup: oldest.map(|b| b.id.clone()).unwrap_or_default(),
        from_lsn: oldest.map(|b| b.stop_lsn.0).unwrap_or(0),
        from_micros: oldest.map(|b| b.consistent_micros).unwrap_or(0),
        last_commit_lsn: w.last_commit().map(|(l, _)| l.0).unwrap_or(0),
        last_commit_micros: w.max_micros().unwrap_or(0),
        end_lsn: w.end_lsn().map(|l| l.0).unwrap_or(0),
        backups: w.backups as u32,
        segments: w.segments as u32,
        spans: w
            .spans
            .iter()
            .map(|s| pb::RestorableSpan {
                from_backup: s.from.id.clone(),
                from_lsn: s.from.stop_lsn.0,
                from_micros: s.from.consistent_micros,
                last_commit_lsn: s.last_commit.map(|(l, _)| l.0).unwrap_or(0),
                last_commit_micros: s.max_micros.unwrap_or(0),
                end_lsn: s.end_lsn.0,
                backups: s.backups as u32,
                segments: s.segments as u32,
                until_hole: s
                    .until
                    .as_ref()
                    .map(|h| crate::wal::ledger::segment_name(h.first.0, h.first.1, seg))
                    .unwrap_or_default(),
            })
            .collect(),
        holes: w
            .holes
            .iter()
            .map(|h| super::archive::hole_pb(h, seg))
            .collect(),
        unreadable: w
            .unreadable
            .iter()
            .map(|((t, s), why)| pb::UnreadableSegment {
                name: crate::wal::ledger::segment_name(*t, *s, seg),
                reason: why.clone(),
            })
            .collect(),
    }
}

pub(super) fn info(v: &RestoreView) -> pb::RestoreInfo {
    let r = &v.record;
    pb::RestoreInfo {
        id: r.id.clone(),
        cluster: Some(cluster_pb(&r.cluster)),
        backup_id: r.backup_id.clone(),
        target: r.target.clone(),
        delivery: r.delivery.clone(),
        state: r.state.clone(),
        conninfo: r.conninfo.clone(),
        port: r.port.map(u32::from).unwrap_or(0),
        created_unix: r.created_unix,
        duration_ms: r.duration_ms,
        clone_bytes: v.clone_bytes,
        host: r.host.clone(),
        path: r.path.clone(),
        detail: r.detail.clone(),
        timeline: r.timeline,
        reached_lsn: r.reached_lsn.map(|l| l.0).unwrap_or(0),
        reached_micros: r.reached_micros.unwrap_or(0),
    }
}

type DirTx = mpsc::Sender<Result<pb::RestoreDirResponse, Status>>;
type DirStream = Pin<Box<dyn Stream<Item = Result<pb::RestoreDirResponse, Status>> + Send>>;
type InstanceStream =
    Pin<Box<dyn Stream<Item = Result<pb::RestoreInstanceResponse, Status>> + Send>>;

fn dir_msg(part: restore_dir_response::Part) -> pb::RestoreDirResponse {
    pb::RestoreDirResponse { part: Some(part) }
}

/// The client's manifest of what the target directory holds, until `local_end`: at most
/// [`MAX_LOCAL_ENTRIES`] entries, `max_bytes` of hashes, and no file longer than a backup may
/// send.
async fn receive_local(
    inbound: &mut Streaming<pb::RestoreDirRequest>,
    limits: &crate::config::Limits,
) -> Result<LocalManifest, Status> {
    let mut local = LocalManifest::new();
    let mut bytes = 0u64;
    let max_hashes = limits
        .max_file_bytes
        .div_ceil(u64::from(walvault_proto::BLOCK_SIZE));
    loop {
        let msg = next_message(inbound, limits.idle_timeout).await?;
        match msg.and_then(|m| m.part) {
            Some(restore_dir_request::Part::Local(e)) => {
                let area = e.area.parse::<Area>().map_err(|x| invalid(x.to_string()))?;
                let path = e
                    .path
                    .parse::<RelPath>()
                    .map_err(|x| invalid(x.to_string()))?;
                bytes += e.hashes.len() as u64 + e.path.len() as u64;
                if bytes > limits.max_local_manifest_bytes {
                    return Err(invalid(format!(
                        "the local manifest passes {} bytes (limits.max_local_manifest_bytes)",
                        limits.max_local_manifest_bytes
                    )));
                }
                let hashes = split_hashes(&e.hashes).ok_or_else(|| {
                    invalid(format!("{area}/{path}: hashes are not 32-byte values"))
                })?;
                let entry = local.entry((area, path)).or_insert_with(|| LocalFile {
                    directory: e.directory,
                    size: e.size,
                    hashes: Vec::new(),
                });
                if e.first_block != entry.hashes.len() as u64 {
                    return Err(invalid(format!(
                        "{}/{}: hashes from block {} after {}",
                        e.area,
                        e.path,
                        e.first_block,
                        entry.hashes.len()
                    )));
                }
                entry.hashes.extend(hashes);
                if entry.hashes.len() as u64 > max_hashes {
                    return Err(invalid(format!(
                        "{}/{}: more blocks than a file may have ({} bytes, \
                         limits.max_file_bytes)",
                        e.area, e.path, limits.max_file_bytes
                    )));
                }
                if local.len() > MAX_LOCAL_ENTRIES {
                    return Err(invalid("the local manifest has too many entries"));
                }
            }
            Some(restore_dir_request::Part::LocalEnd(_)) => return Ok(local),
            Some(restore_dir_request::Part::Start(_)) => return Err(invalid("start sent twice")),
            None => return Err(Status::cancelled("the client ended the stream")),
        }
    }
}

impl RestoreApi {
    /// One directory delivery; the clone is destroyed however it ends.
    async fn serve_dir(
        domain: Domain,
        p: crate::auth::Principal,
        mut inbound: Streaming<pb::RestoreDirRequest>,
        tx: DirTx,
    ) -> Result<(), Status> {
        let limits = domain.budget.limits().clone();
        let first = next_message(&mut inbound, limits.idle_timeout).await?;
        let Some(restore_dir_request::Part::Start(start)) = first.and_then(|m| m.part) else {
            return Err(invalid("a directory restore begins with start"));
        };
        let request = start.request.ok_or_else(|| invalid("start: no request"))?;
        let spec = spec(&p, request)?;
        p.may_restore_to_dir(&spec.cluster).map_err(status::auth)?;
        let _permit = domain
            .budget
            .take(Work::Restore, &spec.cluster)
            .map_err(over_budget)?;
        let restores = domain.restores.clone();
        let (host, path) = (one_line(&start.host, 255), one_line(&start.path, 4096));
        let (planned, clone, entries, areas) = blocking(move || {
            let planned = restores.plan(&spec).map_err(status::restore)?;
            let clone = restores
                .open_clone(&planned, "dir", &host, &path)
                .map_err(status::restore)?;
            let walked = (|| {
                let areas = clone.areas(restores.storage())?;
                let entries = deliver::walk(&areas)?;
                Ok::<_, crate::restore::RestoreError>((areas, entries))
            })();
            match walked {
                Ok((areas, entries)) => Ok((planned, clone, entries, areas)),
                Err(e) => {
                    let _ = restores.close_clone(&clone);
                    Err(status::restore(e))
                }
            }
        })
        .await?;
        let restores = domain.restores.clone();
        let result = async {
            let areas_pb = areas
                .iter()
                .map(|a| pb::Area {
                    area: a.area.to_string(),
                    location: a.location.clone(),
                })
                .collect();
            let bytes_total = entries.iter().map(|e| e.size).sum();
            let plan = plan_pb(&planned, areas_pb, bytes_total, entries.len() as u64);
            if tx
                .send(Ok(dir_msg(restore_dir_response::Part::Planned(plan))))
                .await
                .is_err()
            {
                return Ok(());
            }
            let local = receive_local(&mut inbound, &limits).await?;
            let tx2 = tx.clone();
            let rt = tokio::runtime::Handle::current();
            let idle = limits.idle_timeout;
            let max = limits.stream_max;
            let began = std::time::Instant::now();
            let stats = blocking(move || {
                // A client that stops reading is cut off after the idle limit, and any after
                // the longest a stream may last: the clone, the thread and the permit are
                // released.
                let mut stalled = false;
                let r = deliver::send(&entries, &local, &mut |item| {
                    if began.elapsed() > max {
                        tracing::warn!("a directory restore ran longer than limits.stream_max_secs; cut off");
                        return false;
                    }
                    let sent = rt.block_on(tokio::time::timeout(
                        idle,
                        tx2.send(Ok(dir_msg(item_pb(item)))),
                    ));
                    stalled = sent.is_err();
                    matches!(sent, Ok(Ok(())))
                })
                .map_err(status::restore);
                if stalled {
                    tracing::warn!("a directory restore's client read nothing for {} s (limits.idle_timeout_secs); cut off", idle.as_secs());
                }
                r
            })
            .await?;
            if let Some(s) = stats {
                tracing::info!(restore = %planned.id, cluster = %planned.cluster, files = s.files, bytes_sent = s.bytes_sent, blocks_same = s.blocks_same, "delivered to a directory");
                let _ = tx
                    .send(Ok(dir_msg(restore_dir_response::Part::Done(pb::RestoreDirDone {
                        files: s.files,
                        bytes_sent: s.bytes_sent,
                        bytes_written: s.bytes_written,
                        blocks_sent: s.blocks_sent,
                        blocks_same: s.blocks_same,
                        duration_ms: s.duration_ms,
                    }))))
                    .await;
            }
            Ok(())
        }
        .await;
        let c = clone.clone();
        blocking(move || restores.close_clone(&c).map_err(status::restore)).await?;
        result
    }
}

fn item_pb(item: Item) -> restore_dir_response::Part {
    match item {
        Item::File {
            area,
            path,
            mode,
            directory,
        } => restore_dir_response::Part::File(pb::FileHeader {
            area: area.to_string(),
            path: path.to_string(),
            mode,
            directory,
        }),
        Item::Blocks(blocks) => restore_dir_response::Part::Blocks(pb::FileBlocks {
            blocks: blocks
                .into_iter()
                .map(|b| pb::Block {
                    index: b.index,
                    blake3: b.hash.to_vec(),
                    compression: if b.zstd {
                        pb::Compression::Zstd
                    } else {
                        pb::Compression::None
                    } as i32,
                    data: b.data,
                })
                .collect(),
        }),
        Item::FileEnd { size } => restore_dir_response::Part::FileEnd(pb::FileEnd { size }),
    }
}

#[tonic::async_trait]
impl pb::restore_server::Restore for RestoreApi {
    async fn window(
        &self,
        req: Request<pb::WindowRequest>,
    ) -> Result<Response<pb::WindowResponse>, Status> {
        let p = principal(&req)?;
        let cluster = p
            .resolve_cluster(cluster_ref(req.into_inner().cluster)?)
            .map_err(status::auth)?;
        p.may_read(&cluster).map_err(status::auth)?;
        let restores = self.domain.restores.clone();
        let windows = blocking(move || restores.window(&cluster).map_err(status::restore)).await?;
        Ok(Response::new(pb::WindowResponse {
            timelines: windows.iter().map(window_pb).collect(),
        }))
    }

    async fn plan(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<pb::RestorePlan>, Status> {
        let p = principal(&req)?;
        let spec = spec(&p, req.into_inner())?;
        p.may_restore_to_dir(&spec.cluster).map_err(status::auth)?;
        let restores = self.domain.restores.clone();
        let planned = blocking(move || restores.plan(&spec).map_err(status::restore)).await?;
        Ok(Response::new(plan_pb(&planned, Vec::new(), 0, 0)))
    }

    type RestoreToDirStream = DirStream;

    async fn restore_to_dir(
        &self,
        req: Request<Streaming<pb::RestoreDirRequest>>,
    ) -> Result<Response<Self::RestoreToDirStream>, Status> {
        let p = principal(&req)?;
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let domain = self.domain.clone();
        tokio::spawn(async move {
            if let Err(s) = Self::serve_dir(domain, p, inbound, tx.clone()).await {
                let _ = tx.send(Err(s)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type RestoreToInstanceStream = InstanceStream;

    async fn restore_to_instance(
        &self,
        req: Request<pb::RestoreRequest>,
    ) -> Result<Response<Self::RestoreToInstanceStream>, Status> {
        use pb::restore_instance_response::Part;
        let p = principal(&req)?;
        let spec = spec(&p, req.into_inner())?;
        p.may_run_instances(&spec.cluster).map_err(status::auth)?;
        let permit = self
            .domain
            .budget
            .take(Work::Restore, &spec.cluster)
            .map_err(over_budget)?;
        let restores = self.domain.restores.clone();
        let planned = {
            let restores = restores.clone();
            blocking(move || restores.plan(&spec).map_err(status::restore)).await?
        };
        let (tx, rx) = mpsc::channel(64);
        let msg = |part| Ok(pb::RestoreInstanceResponse { part: Some(part) });
        let _ = tx
            .send(msg(Part::Planned(plan_pb(&planned, Vec::new(), 0, 0))))
            .await;
        let rt = tokio::runtime::Handle::current();
        let idle = self.domain.budget.limits().idle_timeout;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut progress = |line: &str| {
                let _ = tx.try_send(msg(Part::Progress(line.to_owned())));
            };
            // Work started for a request stops when the request goes away.
            let gone = tx.clone();
            let cancelled = move || gone.is_closed();
            let result = instance::start(&restores, &planned, &mut progress, &cancelled);
            let last = match result {
                Ok(v) => msg(Part::Ready(info(&v))),
                Err(e) => Err(status::restore(e)),
            };
            let _ = rt.block_on(tokio::time::timeout(idle, tx.send(last)));
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_restores(
        &self,
        req: Request<pb::ListRestoresRequest>,
    ) -> Result<Response<pb::ListRestoresResponse>, Status> {
        let p = principal(&req)?;
        let named = cluster_ref(req.into_inner().cluster)?;
        if let Some(c) = &named {
            p.may_read(c).map_err(status::auth)?;
        }
        let restores = self.domain.restores.clone();
        let views =
            blocking(move || restores.list(named.as_ref()).map_err(status::restore)).await?;
        Ok(Response::new(pb::ListRestoresResponse {
            restores: views
                .iter()
                .filter(|v| p.may_read(&v.record.cluster).is_ok())
                .map(info)
                .collect(),
        }))
    }

    async fn drop_restore(
        &self,
        req: Request<pb::DropRestoreRequest>,
    ) -> Result<Response<pb::RestoreInfo>, Status> {
        let p = principal(&req)?;
        let id = req.into_inner().id;
        let restores = self.domain.restores.clone();
        let view = blocking(move || {
            let r = restores.restore(&id).map_err(status::restore)?;
            p.may_run_instances(&r.cluster).map_err(status::auth)?;
            restores.drop_restore(&id).map_err(status::restore)
        })
        .await?;
        Ok(Response::new(info(&view)))
    }
}
