//! The gRPC layer: authenticate the caller from its certificate, convert and validate the
//! request, call the domain, convert the answer. Nothing here decides policy; `status`
//! holds the one mapping of domain errors to gRPC codes.

mod admin;
mod archive;
mod backup;
mod restore;
mod retention;
mod status;

use std::sync::Arc;

use tonic::{Request, Status, Streaming};
use walvault_proto::pb;

use crate::auth::Principal;
use crate::backup::Backups;
use crate::budget::Budget;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::restore::Restores;
use crate::retention::prune::Pruner;
use crate::retention::Policies;
use crate::rollforward::RollForward;
use crate::storage::Storage;
use crate::tenancy::Tenancy;
use crate::verify::Verifier;
use crate::wal::WalArchive;

pub use admin::AdminApi;
pub use archive::ArchiveApi;
pub use backup::BackupApi;
pub use restore::RestoreApi;
pub use retention::RetentionApi;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct Domain {
    pub archive: WalArchive,
    pub tenancy: Tenancy,
    pub backups: Backups,
    pub restores: Restores,
    pub policies: Policies,
    pub pruner: Pruner,
    pub verifier: Verifier,
    pub rollforward: RollForward,
    /// How much work may run at once, per cluster, tenant and server.
    pub budget: Budget,
}

impl Domain {
    pub fn new(storage: Arc<dyn Storage>, catalog: Catalog, config: &Config) -> Self {
        let archive = WalArchive::new(storage.clone(), catalog.clone());
        let backups = Backups::new(
            storage.clone(),
            catalog.clone(),
            archive.clone(),
            &config.pg_user,
            config.backup_wal_wait,
            &config.limits,
        );
        let restores = Restores::new(
            storage.clone(),
            catalog.clone(),
            archive.clone(),
            config.restore.clone(),
            &config.pg_user,
            config.limits.clones_per_tenant,
        );
        let policies = Policies::new(storage.clone(), catalog.clone());
        let rollforward = RollForward::new(
            storage.clone(),
            catalog.clone(),
            restores.clone(),
            backups.clone(),
            policies.clone(),
            config.rollforward.clone(),
            config.restore.clone(),
            &config.pg_user,
        );
        let pruner = Pruner::new(
            storage.clone(),
            catalog.clone(),
            archive.clone(),
            backups.clone(),
            restores.clone(),
            policies.clone(),
            rollforward.clone(),
        );
        let verifier = Verifier::new(
            storage.clone(),
            catalog.clone(),
            archive.clone(),
            restores.clone(),
        );
        Self {
            archive,
            backups,
            restores,
            policies,
            pruner,
            verifier,
            rollforward,
            budget: Budget::new(config.limits.clone()),
            tenancy: Tenancy::new(storage, catalog),
        }
    }
}

/// The caller, from the client certificate the TLS layer verified.
fn principal<T>(req: &Request<T>) -> Result<Principal, Status> {
    let certs = req
        .peer_certs()
        .ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no client certificate was presented"))?;
    Principal::from_certificate(leaf.as_ref()).map_err(status::auth)
}

/// A cluster named in a request, validated; `None` when the request left it empty.
fn cluster_ref(r: Option<pb::ClusterRef>) -> Result<Option<walvault_proto::ClusterId>, Status> {
    match r {
        None => Ok(None),
        Some(r) if r.tenant.is_empty() && r.cluster.is_empty() => Ok(None),
        Some(r) => {
            let tenant = r
                .tenant
                .parse()
                .map_err(|e| Status::invalid_argument(format!("{e}")))?;
            walvault_proto::ClusterId::new(tenant, &r.cluster)
                .map(Some)
                .map_err(|e| Status::invalid_argument(format!("{e}")))
        }
    }
}

/// The next message of a client's stream, or the stream cut off when nothing arrives within
/// `idle` (limits.idle_timeout_secs): a peer that stops sending holds nothing for long.
async fn next_message<T>(
    stream: &mut Streaming<T>,
    idle: std::time::Duration,
) -> Result<Option<T>, Status> {
    match tokio::time::timeout(idle, stream.message()).await {
        Ok(r) => r,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "the client sent nothing for {} s (limits.idle_timeout_secs); cut off",
            idle.as_secs()
        ))),
    }
}

/// A free-text field a client sends for the listings (a host, a path, a label): control
/// characters (line breaks among them) become spaces and it is cut to `max` characters, so
/// it can never break a table or a log line.
fn one_line(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A refusal by the budget: retryable, and says which limit.
fn over_budget(e: crate::budget::BudgetError) -> Status {
    tracing::warn!("refused: {e}");
    Status::unavailable(e.to_string())
}

/// Runs blocking domain code off the async workers.
async fn blocking<T, F>(f: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, Status> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

/// Every gRPC service, ready to be added to the server.
pub struct Services {
    pub archive: pb::archive_server::ArchiveServer<ArchiveApi>,
    pub admin: pb::admin_server::AdminServer<AdminApi>,
    pub backup: pb::backup_server::BackupServer<BackupApi>,
    pub restore: pb::restore_server::RestoreServer<RestoreApi>,
    pub retention: pb::retention_server::RetentionServer<RetentionApi>,
}

pub fn services(domain: Domain) -> Services {
    Services {
        archive: pb::archive_server::ArchiveServer::new(ArchiveApi::new(domain.clone())),
        admin: pb::admin_server::AdminServer::new(AdminApi::new(domain.clone())),
        backup: pb::backup_server::BackupServer::new(BackupApi::new(domain.clone())),
        restore: pb::restore_server::RestoreServer::new(RestoreApi::new(domain.clone())),
        retention: pb::retention_server::RetentionServer::new(RetentionApi::new(domain)),
    }
}
