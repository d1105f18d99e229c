//! The Archive service: WAL push, fetch and list.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use walvault_proto::pb::{self, fetch_wal_response, push_wal_request};
use walvault_proto::{WalFileKind, WalFileName, CHUNK_SIZE};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{blocking, cluster_ref, next_message, over_budget, principal, status, Domain};
use crate::budget::Work;
use crate::wal::ledger::{Hole, HoleCause};
use crate::wal::{Begun, PushHeader, PushOutcome};

#[derive(Debug)]
pub struct ArchiveApi {
    domain: Domain,
}

impl ArchiveApi {
    pub fn new(domain: Domain) -> Self {
        Self { domain }
    }
}

fn wal_name(s: &str) -> Result<WalFileName, Status> {
    s.parse()
        .map_err(|e| Status::invalid_argument(format!("{e}")))
}

/// A hole of the continuity ledger on the wire.
pub(super) fn hole_pb(h: &Hole, segment_size: u64) -> pb::WalHole {
    let name = |(t, s)| crate::wal::ledger::segment_name(t, s, segment_size);
    let (cause, detail) = match &h.cause {
        HoleCause::Missing => ("missing", String::new()),
        HoleCause::Damaged(why) => ("damaged", why.clone()),
        HoleCause::Pruned => ("pruned", String::new()),
    };
    pb::WalHole {
        history: h.history.0,
        first: name(h.first),
        last: name(h.last),
        segments: h.count(),
        cause: cause.into(),
        detail,
        start_lsn: h.start_lsn(segment_size).0,
        message: h.describe(segment_size),
    }
}

type FetchStream = Pin<Box<dyn Stream<Item = Result<pb::FetchWalResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::archive_server::Archive for ArchiveApi {
    async fn push_wal(
        &self,
        request: Request<Streaming<pb::PushWalRequest>>,
    ) -> Result<Response<pb::PushWalResponse>, Status> {
        let who = principal(&request)?;
        let idle = self.domain.budget.limits().idle_timeout;
        let mut stream = request.into_inner();
        let header = match next_message(&mut stream, idle).await? {
            Some(pb::PushWalRequest {
                part: Some(push_wal_request::Part::Header(h)),
            }) => h,
            _ => return Err(Status::invalid_argument("a push must start with a header")),
        };
        let name = wal_name(&header.name)?;
        let cluster = who
            .resolve_cluster(cluster_ref(header.cluster)?)
            .map_err(status::auth)?;
        who.may_push(&cluster).map_err(status::auth)?;
        let _permit = self
            .domain
            .budget
            .take(Work::Push, &cluster)
            .map_err(over_budget)?;
        let span = tracing::info_span!("push_wal", %cluster, %name);
        async move {
            let blake3: [u8; 32] = header
                .blake3
                .as_slice()
                .try_into()
                .map_err(|_| Status::invalid_argument("blake3 must be 32 bytes"))?;
            let zstd = match pb::Compression::try_from(header.compression) {
                Ok(pb::Compression::Zstd) => true,
                Ok(pb::Compression::None) => false,
                Err(_) => return Err(Status::invalid_argument("unknown compression")),
            };
            let archive = self.domain.archive.clone();
            let c = cluster.clone();
            let head = PushHeader {
                name: name.clone(),
                size: header.size,
                blake3,
                zstd,
            };
            let begun =
                blocking(move || archive.begin_push(&c, head).map_err(status::archive)).await?;
            let mut push = match begun {
                Begun::AlreadyArchived => {
                    return Ok(Response::new(pb::PushWalResponse {
                        already_archived: true,
                    }))
                }
                Begun::Receiving(p) => p,
            };
            // Each piece goes to disk as it arrives; the push is held across the awaits, the
            // piece only until it is written.
            while let Some(msg) = next_message(&mut stream, idle).await? {
                let Some(push_wal_request::Part::Chunk(c)) = msg.part else {
                    return Err(Status::invalid_argument(
                        "only chunks may follow the header",
                    ));
                };
                push = blocking(move || {
                    push.write(&c).map_err(status::archive)?;
                    Ok(push)
                })
                .await?;
            }
            let outcome = blocking(move || push.finish().map_err(status::archive)).await?;
            // Index the new segment's records in the background: PostgreSQL should not wait
            // for it, and a planner finds any segment left unindexed anyway.
            let new_content = matches!(outcome, PushOutcome::Archived | PushOutcome::Repaired);
            if new_content && name.kind() == WalFileKind::Segment {
                self.domain.restores.time_index().index_soon(cluster, name);
            }
            Ok(Response::new(pb::PushWalResponse {
                already_archived: outcome == PushOutcome::AlreadyArchived,
            }))
        }
        .instrument(span)
        .await
    }

    type FetchWalStream = FetchStream;

    async fn fetch_wal(
        &self,
        request: Request<pb::FetchWalRequest>,
    ) -> Result<Response<Self::FetchWalStream>, Status> {
        let who = principal(&request)?;
        let req = request.into_inner();
        let name = wal_name(&req.name)?;
        let cluster = who
            .resolve_cluster(cluster_ref(req.cluster)?)
            .map_err(status::auth)?;
        who.may_read(&cluster).map_err(status::auth)?;
        let permit = self
            .domain
            .budget
            .take(Work::Fetch, &cluster)
            .map_err(over_budget)?;
        let archive = self.domain.archive.clone();
        let fetched =
            blocking(move || archive.fetch(&cluster, &name).map_err(status::archive)).await?;
        let header = pb::FetchWalResponse {
            part: Some(fetch_wal_response::Part::Header(pb::FetchWalHeader {
                size: fetched.meta.size,
                blake3: fetched.meta.blake3.to_vec(),
                compression: pb::Compression::Zstd as i32,
            })),
        };
        // Sent piece by piece, each within the idle limit: a client that stops reading lets
        // go of the file (and of its permit) instead of holding it for as long as it likes.
        let idle = self.domain.budget.limits().idle_timeout;
        let (tx, rx) = mpsc::channel(2);
        tokio::spawn(async move {
            let _permit = permit;
            let chunks = fetched
                .zstd
                .chunks(CHUNK_SIZE)
                .map(|c| pb::FetchWalResponse {
                    part: Some(fetch_wal_response::Part::Chunk(c.to_vec())),
                });
            for msg in std::iter::once(header).chain(chunks) {
                match tokio::time::timeout(idle, tx.send(Ok(msg))).await {
                    Ok(Ok(())) => {}
                    // Gone, or not reading: the client's check of size and blake3 fails.
                    _ => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_wal(
        &self,
        request: Request<pb::ListWalRequest>,
    ) -> Result<Response<pb::ListWalResponse>, Status> {
        let who = principal(&request)?;
        let cluster = who
            .resolve_cluster(cluster_ref(request.into_inner().cluster)?)
            .map_err(status::auth)?;
        who.may_read(&cluster).map_err(status::auth)?;
        let archive = self.domain.archive.clone();
        let (files, ledger) = blocking(move || {
            let files = archive.list(&cluster).map_err(status::archive)?;
            let ledger = archive.ledger(&cluster).map_err(status::archive)?;
            Ok((files, ledger))
        })
        .await?;
        let seg = ledger.segment_size;
        let name =
            |(t, s): (walvault_proto::TimelineId, u64)| crate::wal::ledger::segment_name(t, s, seg);
        Ok(Response::new(pb::ListWalResponse {
            timelines: ledger
                .timelines
                .iter()
                .map(|t| pb::TimelineLedger {
                    timeline: t.timeline.0,
                    stretches: t
                        .stretches
                        .iter()
                        .map(|s| pb::WalStretch {
                            first: name(s.first),
                            last: name(s.last),
                            segments: s.last.1 - s.first.1 + 1,
                        })
                        .collect(),
                    holes: t.holes.iter().map(|h| hole_pb(h, seg)).collect(),
                })
                .collect(),
            files: files
                .into_iter()
                .map(|w| pb::WalFile {
                    blake3: hex::decode(&w.blake3).unwrap_or_default(),
                    name: w.name,
                    size: w.size,
                    stored_size: w.stored_size,
                    archived_at_unix: w.archived_unix,
                })
                .collect(),
        }))
    }
}
