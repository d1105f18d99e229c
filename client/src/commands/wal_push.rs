//! `walvault wal-push PATH`: PostgreSQL's archive_command. Succeeds only when the server
//! says the file is on stable storage. A server that cannot be reached, or that goes away
//! before it answers, is retried within the configuration's `retry_secs`: pushing the same
//! file again is always safe (the same content is accepted again).

use std::path::Path;

use walvault_proto::pb::{self, push_wal_request::Part};
use walvault_proto::{ClusterId, WalFileName, CHUNK_SIZE, MAX_WAL_FILE_SIZE};

use crate::config::{ClientConfig, Compression};
use crate::connect;
use crate::error::ClientError;
use crate::retry::retrying;

/// Fast enough that PostgreSQL's pg_wal does not pile up; WAL compresses well even so.
const ZSTD_LEVEL: i32 = 1;

pub async fn run(
    config: &ClientConfig,
    cluster: Option<&ClusterId>,
    path: &Path,
) -> Result<bool, ClientError> {
    let name: WalFileName = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| ClientError::Usage(format!("{} does not name a file", path.display())))?
        .parse()
        .map_err(|e| ClientError::Usage(format!("{e}")))?;
    let meta =
        std::fs::metadata(path).map_err(ClientError::io(format!("read {}", path.display())))?;
    if meta.len() > MAX_WAL_FILE_SIZE {
        return Err(ClientError::Usage(format!(
            "{} is larger than any WAL file can be",
            path.display()
        )));
    }
    let content =
        std::fs::read(path).map_err(ClientError::io(format!("read {}", path.display())))?;
    let blake3 = blake3::hash(&content);
    let (payload, compression) = match config.compression {
        Compression::Zstd => (
            zstd::bulk::compress(&content, ZSTD_LEVEL)
                .map_err(ClientError::io(format!("compress {name}")))?,
            pb::Compression::Zstd,
        ),
        Compression::None => (content.clone(), pb::Compression::None),
    };
    let cluster = super::cluster_ref(config, cluster);
    let context = format!("archive {name} for {}", super::describe(&cluster));
    let header = pb::PushWalRequest {
        part: Some(Part::Header(pb::PushWalHeader {
            cluster,
            name: name.to_string(),
            size: content.len() as u64,
            blake3: blake3.as_bytes().to_vec(),
            compression: compression as i32,
        })),
    };
    drop(content);
    retrying(config.retry, || async {
        let chunks: Vec<pb::PushWalRequest> = payload
            .chunks(CHUNK_SIZE)
            .map(|c| pb::PushWalRequest {
                part: Some(Part::Chunk(c.to_vec())),
            })
            .collect();
        let stream = tokio_stream::iter(std::iter::once(header.clone()).chain(chunks));
        let channel = connect::channel(config).await?;
        let mut client = pb::archive_client::ArchiveClient::new(channel);
        let response = client
            .push_wal(stream)
            .await
            .map_err(ClientError::server(context.clone()))?;
        Ok(response.into_inner().already_archived)
    })
    .await
}
