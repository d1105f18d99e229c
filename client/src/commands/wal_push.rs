//! `walvault wal-push PATH`: PostgreSQL's archive_command. Succeeds only when the server
//! says the file is on stable storage. A server that cannot be reached, or that goes away
//! before it answers, is retried within the configuration's `retry_secs`: pushing the same
//! file again is always safe (the same content is accepted again).
//!
//! With `push_ahead = N` a call also pushes up to N of PostgreSQL's other `.ready` files,
//! `push_parallel` at a time over the same connection, and remembers in the spool those the
//! server acknowledged ([`crate::spool`]); PostgreSQL's call for one of them then returns
//! after a `stat`. Pushes ahead are tried once: whatever fails is pushed when PostgreSQL asks.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use futures::stream::{self, StreamExt};
use tonic::transport::Channel;

use walvault_proto::pb::{self, push_wal_request::Part};
use walvault_proto::{ClusterId, WalFileName, CHUNK_SIZE, MAX_WAL_FILE_SIZE};

use crate::config::{ClientConfig, Compression};
use crate::connect;
use crate::error::ClientError;
use crate::retry::retrying;
use crate::spool::{self, FileId, Spool};

/// Fast enough that PostgreSQL's pg_wal does not pile up; WAL compresses well even so.
const ZSTD_LEVEL: i32 = 1;

/// A WAL file read, hashed and (maybe) compressed, ready to send.
struct Prepared {
    size: u64,
    blake3: blake3::Hash,
    payload: Vec<u8>,
    compression: pb::Compression,
}

/// Reads the file once, then hashes and compresses it on two threads. Blocking.
fn prepare(
    path: &Path,
    name: &WalFileName,
    compression: Compression,
) -> Result<Prepared, ClientError> {
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
    let size = content.len() as u64;
    Ok(match compression {
        Compression::Zstd => {
            let (blake3, payload) = std::thread::scope(|s| {
                let hashing = s.spawn(|| blake3::hash(&content));
                let payload = zstd::bulk::compress(&content, ZSTD_LEVEL);
                (hashing.join(), payload)
            });
            Prepared {
                size,
                blake3: blake3.map_err(|_| {
                    ClientError::io(format!("hash {name}"))(std::io::Error::other("panicked"))
                })?,
                payload: payload.map_err(ClientError::io(format!("compress {name}")))?,
                compression: pb::Compression::Zstd,
            }
        }
        Compression::None => Prepared {
            size,
            blake3: blake3::hash(&content),
            payload: content,
            compression: pb::Compression::None,
        },
    })
}

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
    let spool = open_spool(config, path);
    if spool.as_ref().is_some_and(|s| s.take(&name, path)) {
        return Ok(true);
    }
    let pg_wal = path.parent().unwrap_or(Path::new(".")).to_owned();
    let ready = match &spool {
        Some(_) => spool::ready_files(&pg_wal).unwrap_or_else(|e| {
            eprintln!("walvault: no look-ahead: {e}");
            BTreeSet::new()
        }),
        None => BTreeSet::new(),
    };
    let ahead: Vec<WalFileName> = spool.as_ref().map_or_else(Vec::new, |s| {
        ready
            .iter()
            .filter(|n| **n != name.to_string() && !s.acknowledged(n))
            .filter_map(|n| n.parse().ok())
            .take(config.push.ahead as usize)
            .collect()
    });
    // The TLS handshake runs while the file is read, hashed and compressed: the two waits
    // overlap instead of adding up.
    let work = {
        let (path, name, compression): (PathBuf, _, _) =
            (path.to_owned(), name.clone(), config.compression);
        tokio::task::spawn_blocking(move || prepare(&path, &name, compression))
    };
    let (early, prepared) = tokio::join!(connect::channel(config), work);
    let p = prepared.map_err(|e| {
        ClientError::io(format!("read {}", path.display()))(std::io::Error::other(e))
    })??;
    let cluster = super::cluster_ref(config, cluster);
    let context = format!("archive {name} for {}", super::describe(&cluster));
    let header = header(&cluster, &name, &p);
    // Without a connection now there is no look-ahead: the asked-for file is retried alone.
    let mut early = early.ok();
    let lookahead = match (&spool, &early) {
        (Some(s), Some(ch)) if !ahead.is_empty() => {
            Some(push_ahead(s, ch.clone(), &pg_wal, &cluster, ahead, config))
        }
        _ => None,
    };
    let own = retrying(config.retry, || {
        let channel = early.take();
        let (header, payload, context) = (header.clone(), &p.payload, context.clone());
        async move {
            let channel = match channel {
                Some(c) => c,
                None => connect::channel(config).await?,
            };
            send(channel, header, payload, context).await
        }
    });
    let (own, errors) = match lookahead {
        Some(l) => tokio::join!(own, l),
        None => (own.await, Vec::new()),
    };
    if let Some(s) = &spool {
        note_status(s, &ready, &own, errors);
    }
    own
}

/// The spool, when look-ahead is on and the spool can be used; else the plain path.
fn open_spool(config: &ClientConfig, path: &Path) -> Option<Spool> {
    if config.push.ahead == 0 {
        return None;
    }
    let dir = config.push.spool_dir.clone().unwrap_or_else(|| {
        path.parent()
            .unwrap_or(Path::new("."))
            .join(spool::DEFAULT_DIR)
    });
    Spool::open(dir)
        .map_err(|e| eprintln!("walvault: no look-ahead: {e}"))
        .ok()
}

fn header(
    cluster: &Option<pb::ClusterRef>,
    name: &WalFileName,
    p: &Prepared,
) -> pb::PushWalRequest {
    pb::PushWalRequest {
        part: Some(Part::Header(pb::PushWalHeader {
            cluster: cluster.clone(),
            name: name.to_string(),
            size: p.size,
            blake3: p.blake3.as_bytes().to_vec(),
            compression: p.compression as i32,
        })),
    }
}

/// One push over `channel`; the server's answer says whether it held the file already.
async fn send(
    channel: Channel,
    header: pb::PushWalRequest,
    payload: &[u8],
    context: String,
) -> Result<bool, ClientError> {
    let chunks: Vec<_> = payload
        .chunks(CHUNK_SIZE)
        .map(|c| pb::PushWalRequest {
            part: Some(Part::Chunk(c.to_vec())),
        })
        .collect();
    let stream = tokio_stream::iter(std::iter::once(header).chain(chunks));
    let response = pb::archive_client::ArchiveClient::new(channel)
        .push_wal(stream)
        .await
        .map_err(ClientError::server(context))?;
    Ok(response.into_inner().already_archived)
}

/// Pushes `names` from `pg_wal`, `push_parallel` at a time, each once, and records in the
/// spool those the server acknowledged; returns the failures.
async fn push_ahead(
    spool: &Spool,
    channel: Channel,
    pg_wal: &Path,
    cluster: &Option<pb::ClusterRef>,
    names: Vec<WalFileName>,
    config: &ClientConfig,
) -> Vec<String> {
    stream::iter(names)
        .map(|name| {
            let channel = channel.clone();
            async move {
                let path = pg_wal.join(name.to_string());
                let context = format!("archive {name} ahead for {}", super::describe(cluster));
                let before = FileId::read(&path)?;
                let p = {
                    let (path, name, compression) =
                        (path.clone(), name.clone(), config.compression);
                    tokio::task::spawn_blocking(move || prepare(&path, &name, compression))
                        .await
                        .map_err(|e| ClientError::io(context.clone())(std::io::Error::other(e)))??
                };
                // A file that changed while it was read is not vouched for.
                if FileId::read(&path)? != before || p.size != before.size {
                    return Err(ClientError::Integrity(format!(
                        "{context}: {} changed while it was read",
                        path.display()
                    )));
                }
                send(channel, header(cluster, &name, &p), &p.payload, context).await?;
                spool.record(&name, before, &p.blake3)
            }
        })
        .buffer_unordered(config.push.parallel as usize)
        .filter_map(|r| async move { r.err().map(|e| e.to_string()) })
        .collect()
        .await
}

/// Leaves in the spool what this call saw, for operators and monitoring.
fn note_status(
    spool: &Spool,
    ready: &BTreeSet<String>,
    own: &Result<bool, ClientError>,
    mut errors: Vec<String>,
) {
    let now = crate::unix_now();
    let mut status = spool.status();
    if let Err(e) = own {
        errors.insert(0, e.to_string());
    }
    status.updated_unix = now;
    status.ready = ready.len();
    status.acknowledged_ahead = spool.forget_all_but(ready);
    if own.is_ok() {
        status.last_success_unix = Some(now);
    }
    if let Some(first) = errors.first() {
        status.last_error = Some(first.clone());
        status.last_error_unix = Some(now);
    } else if own.is_ok() {
        status.last_error = None;
        status.last_error_unix = None;
    }
    if let Err(e) = spool.write_status(&status) {
        eprintln!("walvault: {e}");
    }
}
