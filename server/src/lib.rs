//! walvault-server: the central backup server. `run` serves the gRPC API over mutual TLS
//! until `shutdown` resolves; the binary (`main.rs`) only parses the command line.

pub mod api;
pub mod auth;
pub mod backup;
pub mod catalog;
pub mod config;
pub mod layout;
pub mod pg;
pub mod process;
pub mod restore;
pub mod retention;
pub mod storage;
pub mod tenancy;
pub mod tls;
pub mod wal;

pub use walvault_proto::human_bytes;

use std::future::Future;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::catalog::{Catalog, CatalogError};
use crate::config::{Config, StorageConfig};
use crate::storage::{dir::DirStorage, zfs::ZfsStorage, Storage, StorageError};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("set up TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("open storage: {0}")]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("clean up interrupted pushes: {0}")]
    Recover(#[from] wal::ArchiveError),
    #[error("serve: {0}")]
    Transport(#[source] tonic::transport::Error),
}

/// Seconds since the epoch.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Opens the configured storage backend.
pub fn open_storage(config: &StorageConfig) -> Result<Arc<dyn Storage>, StorageError> {
    Ok(match config {
        StorageConfig::Zfs { dataset } => Arc::new(ZfsStorage::open(dataset)?),
        StorageConfig::Dir { path } => Arc::new(DirStorage::open(path)?),
    })
}

/// Prunes every cluster by its policy every `every` (the first round one interval after the
/// start, so a restarted server does not prune before anyone could look).
async fn prune_on_schedule(domain: api::Domain, every: std::time::Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let d = domain.clone();
        let round = tokio::task::spawn_blocking(move || {
            let clusters = match d.tenancy.clusters(None) {
                Ok(c) => c,
                Err(e) => return tracing::error!("scheduled prune: list clusters: {e}"),
            };
            for c in clusters {
                let id = c.record.id;
                match d.pruner.prune(&id, unix_now(), false) {
                    Ok(o) if o.backups_dropped + o.wal_dropped > 0 || !o.skipped.is_empty() => {
                        tracing::info!(cluster = %id, backups = o.backups_dropped, wal = o.wal_dropped, skipped = ?o.skipped, "scheduled prune")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(cluster = %id, "scheduled prune: {e}"),
                }
            }
        });
        if let Err(e) = round.await {
            tracing::error!("scheduled prune: {e}");
        }
    }
}

/// Serves the API on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let tls = tls::server_config(&config.tls)?;
    let storage = tokio::task::spawn_blocking({
        let c = config.storage.clone();
        move || open_storage(&c)
    })
    .await
    .map_err(|e| StorageError::io("open storage", std::io::Error::other(e)))??;
    let catalog = Catalog::open(&config.catalog)?;
    let domain = api::Domain::new(storage.clone(), catalog, &config);
    let removed = domain.archive.discard_incomplete()?;
    if removed > 0 {
        tracing::info!(removed, "discarded files of interrupted pushes");
    }
    tracing::info!(
        backend = storage.backend(),
        location = %storage.location(),
        compression = %storage.compression(),
        "storage ready"
    );
    if let Some(every) = config.prune_interval {
        tokio::spawn(prune_on_schedule(domain.clone(), every));
    }
    let s = api::services(domain);
    Server::builder()
        .timeout(config.request_timeout)
        // A backup's stream can sit idle while the server waits for WAL; a peer that vanished
        // without closing its connection is found by keepalives instead.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .add_service(s.archive)
        .add_service(s.admin)
        .add_service(s.backup)
        .add_service(s.restore)
        .add_service(s.retention)
        .serve_with_incoming_shutdown(tls::incoming(listener, tls), shutdown)
        .await
        .map_err(ServeError::Transport)
}
