//! `walvault wal-fetch NAME DEST`: PostgreSQL's restore_command. Verifies size and blake3
//! before the file appears at DEST.
//!
//! The restore_command contract, exactly: exit 0 when the file is delivered; 1 only when the
//! archive definitively does not have it (PostgreSQL probes for files past the end of WAL and
//! for timelines that do not exist); and for every other failure — the server unreachable
//! after retries, the identity refused, content that fails its checks, a local write error, or
//! a segment the restore needs (`--require-through`) that the archive lacks — status
//! [`RESTORE_FATAL_EXIT`], above 125, on which PostgreSQL stops recovery with a FATAL instead
//! of ending it early and promoting a copy that lacks data.
//!
//! A standby (`standby.signal` in the directory PostgreSQL runs us in, its data directory)
//! never ends recovery on a missing file; it retries and streams meanwhile. There an
//! unreachable server is reported after a short retry and exits 1, so that a backup server's
//! outage does not take standbys down; damage still exits with the fatal status.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use walvault_proto::pb::{self, fetch_wal_response::Part};
use walvault_proto::{ClusterId, WalFileName, MAX_WAL_FILE_SIZE, RESTORE_FATAL_EXIT};

use crate::config::ClientConfig;
use crate::connect;
use crate::error::ClientError;
use crate::retry::retrying;

/// The server's mark on a NotFound that means "no such file" (not "no such cluster").
const WAL_MISSING: &str = "walvault-wal-missing";
/// How long a standby retries before it answers "not available now".
const STANDBY_RETRY: Duration = Duration::from_secs(5);

pub enum Fetched {
    Written,
    /// The archive does not have it: normal when PostgreSQL probes for the next file.
    Missing(String),
}

/// Whether PostgreSQL runs us as a standby's restore_command (its cwd is the data directory).
pub fn standby_mode() -> bool {
    Path::new("standby.signal").is_file()
}

/// The exit status for a failed fetch (see the module's documentation).
pub fn exit_status(e: &ClientError, standby: bool) -> u8 {
    if standby && e.is_transient() {
        1
    } else {
        RESTORE_FATAL_EXIT
    }
}

pub async fn run(
    config: &ClientConfig,
    cluster: Option<&ClusterId>,
    name: &str,
    dest: &Path,
    require_through: Option<&str>,
) -> Result<Fetched, ClientError> {
    let name: WalFileName = name
        .parse()
        .map_err(|e| ClientError::Usage(format!("{e}")))?;
    let through: Option<WalFileName> = require_through
        .map(|t| {
            t.parse()
                .map_err(|e| ClientError::Usage(format!("--require-through: {e}")))
        })
        .transpose()?;
    let cluster = super::cluster_ref(config, cluster);
    let context = format!("fetch {name} for {}", super::describe(&cluster));
    let budget = if standby_mode() {
        config.retry.min(STANDBY_RETRY)
    } else {
        config.retry
    };
    let content = retrying(budget, || fetch_once(config, &cluster, &name, &context)).await?;
    let Some(content) = content else {
        return match through.filter(|t| name.is_needed_through(t)) {
            Some(t) => Err(ClientError::Integrity(format!(
                "{context}: the archive does not have {name}, but this restore needs every \
                 segment through {t}; stopping recovery instead of ending it early (see \
                 `walvault window` for holes)"
            ))),
            None => Ok(Fetched::Missing(format!("{context}: not in the archive"))),
        };
    };
    // Written beside DEST and renamed, so PostgreSQL never reads a half-written file. No
    // fsync: PostgreSQL reads it at once and fetches it again after a crash.
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir, &name)?;
    tmp.1.write_all(&content).map_err(|e| {
        let _ = std::fs::remove_file(&tmp.0);
        ClientError::io(format!("write {}", tmp.0.display()))(e)
    })?;
    drop(tmp.1);
    std::fs::rename(&tmp.0, dest).map_err(|e| {
        let _ = std::fs::remove_file(&tmp.0);
        ClientError::io(format!("write {}", dest.display()))(e)
    })?;
    Ok(Fetched::Written)
}

/// One attempt: the file's checked content, or `None` when the archive does not have it.
async fn fetch_once(
    config: &ClientConfig,
    cluster: &Option<pb::ClusterRef>,
    name: &WalFileName,
    context: &str,
) -> Result<Option<Vec<u8>>, ClientError> {
    let channel = connect::channel(config).await?;
    let mut client = pb::archive_client::ArchiveClient::new(channel);
    let request = pb::FetchWalRequest {
        cluster: cluster.clone(),
        name: name.to_string(),
    };
    let mut stream = match client.fetch_wal(request).await {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::NotFound && s.metadata().get(WAL_MISSING).is_some() => {
            return Ok(None)
        }
        Err(s) => return Err(ClientError::server(context)(s)),
    };
    let header = match stream
        .message()
        .await
        .map_err(ClientError::server(context))?
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
        .map_err(ClientError::server(context))?
    {
        if let Some(Part::Chunk(c)) = msg.part {
            if compressed.len() as u64 + c.len() as u64 > MAX_WAL_FILE_SIZE + (1 << 20) {
                return Err(ClientError::Integrity(format!(
                    "{context}: the server sent more than any WAL file can be"
                )));
            }
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
            "{context}: the content does not match its blake3; the archived copy may be damaged \
             (walvault verify names damaged files)"
        )));
    }
    Ok(Some(content))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_file_exits_1() {
        let unreachable = ClientError::Connect {
            server: "https://b:7400".into(),
            detail: "connection refused".into(),
        };
        let damaged = ClientError::Server {
            context: "fetch".into(),
            code: tonic::Code::DataLoss,
            message: "damaged".into(),
        };
        let refused = ClientError::Server {
            context: "fetch".into(),
            code: tonic::Code::PermissionDenied,
            message: "no".into(),
        };
        for e in [&unreachable, &damaged, &refused] {
            assert_eq!(exit_status(e, false), RESTORE_FATAL_EXIT, "{e}");
        }
        // A standby waits and streams instead.
        assert_eq!(exit_status(&unreachable, true), 1);
        assert_eq!(exit_status(&damaged, true), RESTORE_FATAL_EXIT);
    }
}
