//! The Archive service: WAL push, fetch and list.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;
use walvault_proto::pb::{self, fetch_wal_response, push_wal_request};
use walvault_proto::{WalFileKind, WalFileName, CHUNK_SIZE, MAX_WAL_FILE_SIZE};

use super::{blocking, cluster_ref, principal, status, Domain};
use crate::wal::ledger::{Hole, HoleCause};
use crate::wal::{IncomingWal, PushOutcome};

/// A compressed stream may be a little larger than its content.
const MAX_PAYLOAD: u64 = MAX_WAL_FILE_SIZE + (1 << 20);

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
        let mut stream = request.into_inner();
        let header = match stream.message().await? {
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
            let mut payload = Vec::with_capacity(header.size.min(MAX_WAL_FILE_SIZE) as usize);
            while let Some(msg) = stream.message().await? {
                match msg.part {
                    Some(push_wal_request::Part::Chunk(c)) => {
                        if payload.len() as u64 + c.len() as u64 > MAX_PAYLOAD {
                            return Err(Status::invalid_argument(format!(
                                "{name} is larger than any WAL file can be"
                            )));
                        }
                        payload.extend_from_slice(&c);
                    }
                    _ => {
                        return Err(Status::invalid_argument(
                            "only chunks may follow the header",
                        ))
                    }
                }
            }
            let incoming = IncomingWal {
                name,
                size: header.size,
                blake3,
                zstd,
                payload,
            };
            let archive = self.domain.archive.clone();
            let pushed = incoming.name.clone();
            let c = cluster.clone();
            let outcome =
                blocking(move || archive.push(&c, incoming).map_err(status::archive)).await?;
            // Index the new segment's records in the background: PostgreSQL should not wait
            // for it, and a planner finds any segment left unindexed anyway.
            let new_content = matches!(outcome, PushOutcome::Archived | PushOutcome::Repaired);
            if new_content && pushed.kind() == WalFileKind::Segment {
                let index = self.domain.restores.time_index().clone();
                tokio::task::spawn_blocking(move || {
                    if let Err(e) = index.index_one(&cluster, &pushed) {
                        tracing::warn!(cluster = %cluster, file = %pushed, "time index: {e}");
                    }
                });
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
        let chunks: Vec<_> = fetched
            .zstd
            .chunks(CHUNK_SIZE)
            .map(|c| {
                Ok(pb::FetchWalResponse {
                    part: Some(fetch_wal_response::Part::Chunk(c.to_vec())),
                })
            })
            .collect();
        let all = std::iter::once(Ok(header)).chain(chunks);
        Ok(Response::new(Box::pin(tokio_stream::iter(all))))
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
