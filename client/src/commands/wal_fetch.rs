//! `walvault wal-fetch NAME DEST`: PostgreSQL's restore_command. Verifies size and blake3
//! before the file appears at DEST.

use std::io::Write;
use std::path::Path;

use walvault_proto::pb::{self, fetch_wal_response::Part};
use walvault_proto::{ClusterId, WalFileName, MAX_WAL_FILE_SIZE};

use crate::config::ClientConfig;
use crate::connect;
use crate::error::ClientError;

pub enum Fetched {
    Written,
    /// The archive does not have it: normal when PostgreSQL probes for the next file.
    Missing(String),
}

pub async fn run(
    config: &ClientConfig,
    cluster: Option<&ClusterId>,
    name: &str,
    dest: &Path,
) -> Result<Fetched, ClientError> {
    let name: WalFileName = name
        .parse()
        .map_err(|e| ClientError::Usage(format!("{e}")))?;
    let cluster = super::cluster_ref(config, cluster);
    let context = format!("fetch {name} for {}", super::describe(&cluster));
    let channel = connect::channel(config).await?;
    let mut client = pb::archive_client::ArchiveClient::new(channel);
    let request = pb::FetchWalRequest {
        cluster,
        name: name.to_string(),
    };
    let mut stream = match client.fetch_wal(request).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound => {
            return Ok(Fetched::Missing(s.message().to_owned()))
        }
        Err(s) => return Err(ClientError::server(context)(s)),
    };
    let header = match stream
        .message()
        .await
        .map_err(ClientError::server(context.clone()))?
    {
        Some(pb::FetchWalResponse {
            part: Some(Part::Header(h)),
        }) => h,
        _ => {
            return Err(ClientError::Integrity(format!(
                "{context}: the server sent no header"
            )))
        }
    };
    if header.size > MAX_WAL_FILE_SIZE {
        return Err(ClientError::Integrity(format!(
            "{context}: the server announced {} bytes",
            header.size
        )));
    }
    let mut compressed = Vec::new();
    while let Some(msg) = stream
        .message()
        .await
        .map_err(ClientError::server(context.clone()))?
    {
        if let Some(Part::Chunk(c)) = msg.part {
            compressed.extend_from_slice(&c);
        }
    }
    let content = match pb::Compression::try_from(header.compression) {
        Ok(pb::Compression::Zstd) => zstd::bulk::decompress(&compressed, header.size as usize)
            .map_err(|e| ClientError::Integrity(format!("{context}: cannot decompress: {e}")))?,
        _ => compressed,
    };
    if content.len() as u64 != header.size
        || blake3::hash(&content).as_bytes()[..] != header.blake3[..]
    {
        return Err(ClientError::Integrity(format!(
            "{context}: the content does not match its blake3; the archived copy may be damaged"
        )));
    }
    // Written beside DEST and renamed, so PostgreSQL never reads a half-written file.
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir, &name)?;
    tmp.1
        .write_all(&content)
        .map_err(ClientError::io(format!("write {}", tmp.0.display())))?;
    drop(tmp.1);
    std::fs::rename(&tmp.0, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp.0);
        ClientError::io(format!("write {}", dest.display()))(e)
    })?;
    Ok(Fetched::Written)
}

fn tempfile_in(
    dir: &Path,
    name: &WalFileName,
) -> Result<(std::path::PathBuf, std::fs::File), ClientError> {
    let path = dir.join(format!(".{name}.walvault.{}", std::process::id()));
    let f = std::fs::File::create(&path)
        .map_err(ClientError::io(format!("create {}", path.display())))?;
    Ok((path, f))
}
