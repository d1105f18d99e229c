//! The wire contract of walvault and the small types both sides must agree on.
//!
//! Everything here is validated on construction (`TryFrom`/`FromStr`), so a value of one of
//! these types is always safe to use as a path component or a key.

mod ids;
mod lsn;
pub mod manifest;
mod walname;

pub use ids::{ClusterId, IdError, TenantId};
pub use lsn::{Lsn, LsnParseError, TimelineId};
pub use manifest::{Area, RelPath, BLOCK_SIZE};
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

/// Civil UTC date and time of a Unix time: (year, month, day, hour, minute, second).
pub fn utc_civil(unix: i64) -> (i64, i64, i64, i64, i64, i64) {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day, secs / 3600, secs / 60 % 60, secs % 60)
}

/// A time in microseconds since the Unix epoch as people read it, to the microsecond:
/// `2026-11-22 09:34:56.123456 UTC` (PostgreSQL's commit timestamps have this precision).
pub fn utc_time_micros(micros: i64) -> String {
    let (y, mo, d, h, mi, s) = utc_civil(micros.div_euclid(1_000_000));
    let frac = micros.rem_euclid(1_000_000);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{frac:06} UTC")
}

/// A Unix time as people read it: `2026-11-22 09:34:56 UTC`.
pub fn utc_time(unix: i64) -> String {
    let (y, mo, d, h, mi, s) = utc_civil(unix);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} UTC")
}

/// A string someone sent, as it may appear in an error or a log: quoted and escaped (no line
/// break or control character gets through to a log line or a table) and cut to 64
/// characters, its length said when cut. Every refusal that names client input uses it.
pub fn echo(s: &str) -> String {
    const MAX: usize = 64;
    let cut: String = s.chars().take(MAX).collect();
    if cut.len() < s.len() {
        format!("{cut:?}… ({} bytes)", s.len())
    } else {
        format!("{cut:?}")
    }
}

/// Bytes per message chunk on the wire: well under tonic's 4 MiB default message limit.
pub const CHUNK_SIZE: usize = 1 << 20;

/// HTTP/2 flow-control window of one stream, both ways: four chunks and their framing, so that
/// a sender has the next chunks on the wire while the receiver writes the last one, and a 16 MiB
/// segment compressed by zstd (about 4 MiB) goes out without waiting. hyper's server default of
/// 1 MiB is less than one chunk with its framing: every chunk of a push waited for the
/// server's window updates, and the push alternated between the wire and the disk.
pub const STREAM_WINDOW: u32 = 4 * CHUNK_SIZE as u32 + (64 << 10);

/// HTTP/2 flow-control window of one connection: two streams' worth, for look-ahead pushes
/// and restores that run several streams over one connection.
pub const CONNECTION_WINDOW: u32 = 2 * STREAM_WINDOW;

/// The largest WAL file we accept, compressed or not: PostgreSQL's maximum segment size.
pub const MAX_WAL_FILE_SIZE: u64 = 1 << 30;

/// The exit status of `walvault wal-fetch` and `walvault-server wal-unpack` for every failure
/// but "the archive does not have this file" (1): the server unreachable after retries, a
/// refused identity, damaged content, a segment the restore needs that is missing, a local
/// write error. PostgreSQL stops recovery with a FATAL when restore_command exits above 125,
/// where any other non-zero status would make it end recovery and promote early.
pub const RESTORE_FATAL_EXIT: u8 = 200;
// PostgreSQL's threshold for a fatal restore_command status.
const _: () = assert!(RESTORE_FATAL_EXIT > 125);

#[cfg(test)]
mod tests {
    #[test]
    fn echoed_input_is_short_and_has_no_line_breaks() {
        assert_eq!(super::echo("db1"), "\"db1\"");
        let e = super::echo(&format!("a\nb{}", "x".repeat(100_000)));
        assert!(e.starts_with("\"a\\nb"), "{e}");
        assert!(e.ends_with("… (100003 bytes)"), "{e}");
        assert!(e.len() < 100, "{e}");
        assert!(!e.contains('\n'));
    }

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(8 << 20), "8.0 MiB");
        assert_eq!(super::human_bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn utc_times() {
        assert_eq!(super::utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc_time(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
