//! The one mapping of domain errors to gRPC statuses. Refusals of bad input are logged as
//! warnings (the caller is told why); failures of our own are errors.

use tonic::{Code, Status};

use crate::auth::AuthError;
use crate::backup::BackupError;
use crate::catalog::CatalogError;
use crate::restore::RestoreError;
use crate::retention::RetentionError;
use crate::tenancy::TenancyError;
use crate::verify::VerifyError;
use crate::wal::ArchiveError;

fn refuse(code: Code, msg: String) -> Status {
    tracing::warn!(code = ?code, "refused: {msg}");
    Status::new(code, msg)
}

fn fail(msg: String) -> Status {
    tracing::error!("{msg}");
    Status::internal(msg)
}

/// A catalog that could not take a write: a full disk is the operator's to fix and the
/// request's to retry (PostgreSQL retries archive_command), not an internal error.
fn catalog(msg: String, e: &CatalogError) -> Status {
    match e {
        CatalogError::DiskFull => {
            tracing::error!("{msg}");
            Status::resource_exhausted(msg)
        }
        _ if e.is_retryable() => {
            tracing::warn!("{msg}");
            Status::unavailable(format!("{msg}; retry later"))
        }
        _ => fail(msg),
    }
}

pub fn auth(e: AuthError) -> Status {
    match e {
        AuthError::Forbidden { .. } => refuse(Code::PermissionDenied, e.to_string()),
        _ => refuse(Code::Unauthenticated, e.to_string()),
    }
}

/// The metadata key a fetch's NotFound carries when the archive definitively lacks the file
/// (as opposed to an unknown cluster): restore_command may then exit 1.
pub const WAL_MISSING: &str = "walvault-wal-missing";

pub fn archive(e: ArchiveError) -> Status {
    use ArchiveError as E;
    let msg = e.to_string();
    match e {
        E::ClusterNotFound(_) => refuse(Code::NotFound, msg),
        // Not an alarm: PostgreSQL probes for files that do not exist.
        E::NotFound { .. } => {
            let mut s = Status::not_found(msg);
            s.metadata_mut().insert(
                WAL_MISSING,
                tonic::metadata::MetadataValue::from_static("1"),
            );
            s
        }
        // The archive logged it (at ERROR when it first found it).
        E::Corrupt { .. } => Status::data_loss(msg),
        E::SizeMismatch { .. }
        | E::TooLarge { .. }
        | E::Undecodable { .. }
        | E::ChecksumMismatch { .. }
        | E::BadSegment { .. }
        | E::BadTextFile { .. } => refuse(Code::InvalidArgument, msg),
        E::SystemIdentifierMismatch { .. } | E::SegmentSizeMismatch { .. } => {
            refuse(Code::FailedPrecondition, msg)
        }
        E::ContentConflict { .. } => refuse(Code::AlreadyExists, msg),
        E::QuotaExceeded { .. } | E::StorageFull { .. } => refuse(Code::ResourceExhausted, msg),
        E::Catalog(c) => catalog(msg, &c),
        E::Damaged { .. } | E::Storage { .. } | E::TenantSpace { .. } | E::Io { .. } => fail(msg),
    }
}

pub fn tenancy(e: TenancyError) -> Status {
    use TenancyError as E;
    let msg = e.to_string();
    match e {
        E::TenantExists(_) | E::ClusterExists(_) => refuse(Code::AlreadyExists, msg),
        E::TenantNotFound(_) | E::ClusterNotFound(_) => refuse(Code::NotFound, msg),
        E::Catalog(c) => catalog(msg, &c),
        E::Storage { .. } => fail(msg),
    }
}

pub fn backup(e: BackupError) -> Status {
    use BackupError as E;
    let msg = e.to_string();
    match e {
        E::ClusterNotFound(_) => refuse(Code::NotFound, msg),
        E::AlreadyRunning { .. } => refuse(Code::FailedPrecondition, msg),
        E::SystemIdentifierMismatch { .. } | E::BindingMismatch { .. } => {
            refuse(Code::FailedPrecondition, msg)
        }
        E::Protocol { .. } | E::BlockChecksumMismatch { .. } | E::TooManyTablespaces { .. } => {
            refuse(Code::InvalidArgument, msg)
        }
        E::WalMissing { .. } => refuse(Code::DeadlineExceeded, msg),
        E::QuotaExceeded { .. } | E::StorageFull { .. } => refuse(Code::ResourceExhausted, msg),
        E::Archive(a) => archive(*a),
        E::Catalog(c) => catalog(msg, &c),
        E::Io { .. } | E::Storage { .. } | E::Reconcile { .. } => fail(msg),
    }
}

pub fn restore(e: RestoreError) -> Status {
    use RestoreError as E;
    let msg = e.to_string();
    match e {
        E::ClusterNotFound(_) | E::NotFound(_) => refuse(Code::NotFound, msg),
        E::Plan { .. } | E::UnknownXid { .. } | E::CreatesTablespace { .. } => {
            refuse(Code::FailedPrecondition, msg)
        }
        E::Invalid(_) => refuse(Code::InvalidArgument, msg),
        E::NoPort { .. } | E::TooManyClones { .. } => refuse(Code::ResourceExhausted, msg),
        E::Archive(a) => archive(a),
        E::Catalog(c) => catalog(msg, &c),
        E::Instance { .. } | E::Index(_) | E::Storage { .. } | E::Io { .. } => fail(msg),
    }
}

pub fn retention(e: RetentionError) -> Status {
    use RetentionError as E;
    let msg = e.to_string();
    match e {
        E::TenantNotFound(_) | E::ClusterNotFound(_) => refuse(Code::NotFound, msg),
        E::Invalid(_) => refuse(Code::InvalidArgument, msg),
        E::Busy(_) => refuse(Code::FailedPrecondition, msg),
        E::Restore(r) => restore(*r),
        E::Archive(a) => archive(*a),
        E::Catalog(c) => catalog(msg, &c),
        E::Storage { .. } | E::Io { .. } | E::RollForward(_) => fail(msg),
    }
}

pub fn verify(e: VerifyError) -> Status {
    match e {
        VerifyError::ClusterNotFound(_) | VerifyError::SnapshotNotFound { .. } => {
            refuse(Code::NotFound, e.to_string())
        }
        VerifyError::Archive(a) => archive(a),
        VerifyError::Restore(r) => restore(*r),
        VerifyError::Catalog(c) => catalog(c.to_string(), &c),
        VerifyError::Storage { .. } => fail(e.to_string()),
    }
}
