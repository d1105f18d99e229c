//! The wire contract of walvault and the small types both sides must agree on.
//!
//! Everything here is validated on construction (`TryFrom`/`FromStr`), so a value of one of
//! these types is always safe to use as a path component or a key.

mod ids;
mod lsn;
mod walname;

pub use ids::{ClusterId, IdError, TenantId};
pub use lsn::{Lsn, LsnParseError, TimelineId};
pub use walname::{WalFileKind, WalFileName, WalNameError};

/// Generated gRPC code (tonic + prost).
#[allow(clippy::all, clippy::unwrap_used, missing_docs)]
pub mod pb {
    tonic::include_proto!("walvault.v1");
}

/// Bytes per message chunk on the wire: well under tonic's 4 MiB default message limit.
pub const CHUNK_SIZE: usize = 1 << 20;

/// The largest WAL file we accept, compressed or not: PostgreSQL's maximum segment size.
pub const MAX_WAL_FILE_SIZE: u64 = 1 << 30;
