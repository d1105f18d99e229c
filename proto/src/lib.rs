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

/// A byte count as people read it (`1.5 GiB`), the same on both sides of the wire.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Bytes per message chunk on the wire: well under tonic's 4 MiB default message limit.
pub const CHUNK_SIZE: usize = 1 << 20;

/// The largest WAL file we accept, compressed or not: PostgreSQL's maximum segment size.
pub const MAX_WAL_FILE_SIZE: u64 = 1 << 30;

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(8 << 20), "8.0 MiB");
        assert_eq!(super::human_bytes(3 << 29), "1.5 GiB");
    }
}
