//! walvault-server: the central backup server. `run` serves the gRPC API over mutual TLS
//! until `shutdown` resolves; the binary (`main.rs`) only parses the command line.

pub mod api;
pub mod auth;
pub mod backup;
pub mod budget;
pub mod catalog;
pub mod config;
pub mod fault;
pub mod layout;
pub mod mounts;
pub mod pg;
pub mod process;
pub mod restore;
pub mod retention;
pub mod rollforward;
pub mod storage;
pub mod tenancy;
pub mod tls;
pub mod verify;
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
    #[error("clean up interrupted restores: {0}")]
    Restores(#[from] restore::RestoreError),
    #[error("clean up interrupted verifications: {0}")]
    Verify(#[from] verify::VerifyError),
    #[error("clean up interrupted roll-forwards: {0}")]
    RollForward(#[from] rollforward::RollForwardError),
    #[error("list clusters: {0}")]
    Tenancy(#[from] tenancy::TenancyError),
    #[error("{0}")]
    Fault(String),
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

/// A job the server runs on every cluster at an interval (the first round one interval after
/// the start, so a restarted server does not act before anyone could look). A round runs on
/// one blocking thread; a cluster's failure is logged and the round goes on.
async fn on_schedule(
    domain: api::Domain,
    every: std::time::Duration,
    what: &'static str,
    job: fn(&api::Domain, &walvault_proto::ClusterId),
) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tick.tick().await;
        let d = domain.clone();
        let round = tokio::task::spawn_blocking(move || match d.tenancy.clusters(None) {
            Ok(clusters) => clusters.iter().for_each(|c| job(&d, &c.record.id)),
            Err(e) => tracing::error!("scheduled {what}: list clusters: {e}"),
        });
        if let Err(e) = round.await {
            tracing::error!("scheduled {what}: {e}");
        }
    }
}

/// Prunes a cluster by its policy.
fn scheduled_prune(d: &api::Domain, id: &walvault_proto::ClusterId) {
    match d.pruner.prune(id, unix_now(), false) {
        Ok(o) if o.backups_dropped + o.wal_dropped > 0 || !o.skipped.is_empty() => {
            tracing::info!(cluster = %id, backups = o.backups_dropped, wal = o.wal_dropped, skipped = ?o.skipped, "scheduled prune")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(cluster = %id, "scheduled prune: {e}"),
    }
}

/// Verifies a cluster (the verifier logs what it finds).
fn scheduled_verify(d: &api::Domain, id: &walvault_proto::ClusterId) {
    if let Err(e) = d.verifier.verify(id) {
        tracing::error!(cluster = %id, "scheduled verification: {e}");
    }
}

/// Verifies a cluster's newest snapshot not verified yet (the checker logs what it finds).
fn scheduled_snapshot_check(d: &api::Domain, id: &walvault_proto::ClusterId) {
    if let Err(e) = d.verifier.check_next(id) {
        tracing::error!(cluster = %id, "scheduled snapshot verification: {e}");
    }
}

/// Rolls a cluster forward if it is due.
fn scheduled_rollforward(d: &api::Domain, id: &walvault_proto::ClusterId) {
    use rollforward::Outcome;
    match d.rollforward.run(id) {
        Ok(Outcome::Snapshot { record, replayed }) => {
            tracing::info!(cluster = %id, snapshot = %record.id, replayed = %human_bytes(replayed), "scheduled roll-forward")
        }
        Ok(Outcome::Skipped(why)) => {
            tracing::info!(cluster = %id, "scheduled roll-forward skipped: {why}")
        }
        Ok(Outcome::NotDue(_)) => {}
        Err(rollforward::RollForwardError::Busy(_)) => {}
        // A hole or a missing backup: the ledger and the planner say so elsewhere already.
        Err(e @ rollforward::RollForwardError::Restore { .. }) => {
            tracing::warn!(cluster = %id, "scheduled roll-forward: {e}")
        }
        Err(e) => tracing::error!(cluster = %id, "scheduled roll-forward: {e}"),
    }
}

/// What a start-up makes good after a crash: the archive's leftovers of interrupted pushes,
/// each WAL directory reconciled with the catalog (files published but not catalogued are
/// catalogued, files gone are recorded as damaged), and restores a dead process left half
/// done. Holes in the archive are logged as each cluster's ledger is built.
fn recover(domain: &api::Domain) -> Result<(), ServeError> {
    let removed = domain.archive.discard_incomplete()?;
    if removed > 0 {
        tracing::info!(removed, "discarded files of interrupted pushes");
    }
    for c in domain.tenancy.clusters(None)? {
        let id = &c.record.id;
        let r = domain.archive.reconcile(id)?;
        if !r.catalogued.is_empty() {
            tracing::warn!(cluster = %id, files = ?r.catalogued, "catalogued archived files the catalog lacked (pushes interrupted between publishing and cataloguing)");
        }
        for (name, why) in &r.refused {
            tracing::error!(cluster = %id, %name, "a file in the WAL directory fails its checks and was not catalogued: {why}");
        }
        domain.archive.ledger(id)?;
        let discarded = domain.verifier.clean_up_checks(id)?;
        if discarded > 0 {
            tracing::warn!(cluster = %id, clones = discarded, "destroyed verification clones the last stop left; their snapshots are verified again");
        }
        let catalogued = domain.rollforward.clean_up_interrupted(id)?;
        if !catalogued.is_empty() {
            tracing::warn!(cluster = %id, snapshots = ?catalogued, "catalogued roll-forward snapshots the last stop left uncatalogued");
        }
    }
    let cleaned = domain.restores.clean_up_interrupted()?;
    if !cleaned.is_empty() {
        tracing::warn!(restores = ?cleaned, "cleaned up restores interrupted by the last stop");
    }
    Ok(())
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
    fault::check().map_err(ServeError::Fault)?;
    let domain = api::Domain::new(storage.clone(), catalog, &config);
    {
        let d = domain.clone();
        tokio::task::spawn_blocking(move || recover(&d))
            .await
            .map_err(|e| StorageError::io("recover", std::io::Error::other(e)))??;
    }
    tracing::info!(
        backend = storage.backend(),
        location = %storage.location(),
        compression = %storage.compression(),
        "storage ready"
    );
    if let Some(every) = config.prune_interval {
        tokio::spawn(on_schedule(domain.clone(), every, "prune", scheduled_prune));
    }
    if let Some(every) = config.verify_interval {
        tokio::spawn(on_schedule(
            domain.clone(),
            every,
            "verification",
            scheduled_verify,
        ));
    }
    if let Some(every) = config.snapshot_check_interval {
        tokio::spawn(on_schedule(
            domain.clone(),
            every,
            "snapshot verification",
            scheduled_snapshot_check,
        ));
    }
    if let Some(every) = config.rollforward.interval {
        tokio::spawn(on_schedule(
            domain.clone(),
            every,
            "roll-forward",
            scheduled_rollforward,
        ));
    }
    // A roll-forward stops its standby at once when the server stops.
    let shutdown = {
        let rf = domain.rollforward.clone();
        async move {
            shutdown.await;
            rf.stop();
        }
    };
    let s = api::services(domain);
    Server::builder()
        .timeout(config.request_timeout)
        // A backup's stream can sit idle while the server waits for WAL; a peer that vanished
        // without closing its connection is found by keepalives instead.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        // A push keeps the wire and the disk busy at once (see STREAM_WINDOW); what the windows
        // let clients buffer is bounded by the streams the budget admits.
        .initial_stream_window_size(Some(walvault_proto::STREAM_WINDOW))
        .initial_connection_window_size(Some(walvault_proto::CONNECTION_WINDOW))
        .add_service(s.archive)
        .add_service(s.admin)
        .add_service(s.backup)
        .add_service(s.restore)
        .add_service(s.retention)
        .serve_with_incoming_shutdown(tls::incoming(listener, tls), shutdown)
        .await
        .map_err(ServeError::Transport)
}
