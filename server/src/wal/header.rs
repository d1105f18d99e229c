//! The long page header at the start of every WAL segment, and what it must agree with.
//!
//! Layout (little-endian on every platform PostgreSQL ships for; `access/xlog_internal.h`):
//! `xlp_magic u16 | xlp_info u16 | xlp_tli u32 | xlp_pageaddr u64 | xlp_rem_len u32 | pad 4 |
//!  xlp_sysid u64 | xlp_seg_size u32 | xlp_xlog_blcksz u32` = 40 bytes.

use walvault_proto::{Lsn, TimelineId, WalFileName};

/// `XLP_LONG_HEADER` in `xlp_info`: set on the first page of every segment.
const XLP_LONG_HEADER: u16 = 0x0002;
pub const LONG_HEADER_SIZE: usize = 40;

/// `XLOG_PAGE_MAGIC` of each supported major version; it changes whenever the WAL format does.
const MAGICS: &[(u16, u32)] = &[
    (0xD101, 12),
    (0xD106, 13),
    (0xD10D, 14),
    (0xD110, 15),
    (0xD113, 16),
    (0xD116, 17),
];

/// The fields of a segment's long page header that we check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    pub magic: u16,
    pub pg_major: u32,
    pub timeline: TimelineId,
    pub page_address: Lsn,
    pub system_identifier: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("is {0} bytes, too short for a WAL page header")]
    TooShort(usize),
    #[error("has page magic {0:#06X}, which is no WAL format of PostgreSQL 12 to 17")]
    UnknownMagic(u16),
    #[error("does not start with a long page header (xlp_info {0:#06X})")]
    NotLongHeader(u16),
    #[error("declares a segment size of {0} bytes, which PostgreSQL cannot have")]
    BadSegmentSize(u32),
    #[error("declares a WAL block size of {0} bytes, which PostgreSQL cannot have")]
    BadBlockSize(u32),
    #[error("is {actual} bytes but its header says segments are {expected} bytes (truncated?)")]
    WrongSize { actual: u64, expected: u64 },
    #[error("starts at {actual} but its name says it starts at {expected}")]
    WrongPageAddress { actual: Lsn, expected: Lsn },
    #[error("its name does not fit a segment size of {0} bytes")]
    NameOutOfRange(u32),
    #[error("its first page is on timeline {header} but its name says timeline {name}")]
    FutureTimeline {
        header: TimelineId,
        name: TimelineId,
    },
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl LongPageHeader {
    pub fn parse(bytes: &[u8]) -> Result<Self, HeaderError> {
        if bytes.len() < LONG_HEADER_SIZE {
            return Err(HeaderError::TooShort(bytes.len()));
        }
        let magic = u16_at(bytes, 0);
        let pg_major = MAGICS
            .iter()
            .find(|(m, _)| *m == magic)
            .map(|(_, v)| *v)
            .ok_or(HeaderError::UnknownMagic(magic))?;
        let info = u16_at(bytes, 2);
        if info & XLP_LONG_HEADER == 0 {
            return Err(HeaderError::NotLongHeader(info));
        }
        let segment_size = u32_at(bytes, 32);
        // PostgreSQL allows powers of two from 1 MiB to 1 GiB.
        if !segment_size.is_power_of_two() || !((1 << 20)..=(1 << 30)).contains(&segment_size) {
            return Err(HeaderError::BadSegmentSize(segment_size));
        }
        let block_size = u32_at(bytes, 36);
        if !block_size.is_power_of_two() || !(1024..=65536).contains(&block_size) {
            return Err(HeaderError::BadBlockSize(block_size));
        }
        Ok(Self {
            magic,
            pg_major,
            timeline: TimelineId(u32_at(bytes, 4)),
            page_address: Lsn(u64_at(bytes, 8)),
            system_identifier: u64_at(bytes, 24),
            segment_size,
            block_size,
        })
    }

    /// Checks a whole segment (or `.partial`) file against its name.
    pub fn check_segment(name: &WalFileName, content: &[u8]) -> Result<Self, HeaderError> {
        Self::check_segment_head(name, content, content.len() as u64)
    }

    /// [`LongPageHeader::check_segment`] of a file of `len` bytes that begins with `head`:
    /// only the long header and the length are looked at, so a streamed file need not be held.
    pub fn check_segment_head(
        name: &WalFileName,
        head: &[u8],
        len: u64,
    ) -> Result<Self, HeaderError> {
        let h = Self::parse(head)?;
        let expected = u64::from(h.segment_size);
        if len != expected {
            return Err(HeaderError::WrongSize {
                actual: len,
                expected,
            });
        }
        let start = name
            .start_lsn(h.segment_size)
            .ok_or(HeaderError::NameOutOfRange(h.segment_size))?;
        if h.page_address != start {
            return Err(HeaderError::WrongPageAddress {
                actual: h.page_address,
                expected: start,
            });
        }
        // The first segment of a new timeline begins with pages copied from its parent, so
        // the header's timeline may be older than the name's, never newer.
        if h.timeline > name.timeline() || h.timeline.0 == 0 {
            return Err(HeaderError::FutureTimeline {
                header: h.timeline,
                name: name.timeline(),
            });
        }
        Ok(h)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A synthetic segment whose first page carries a valid long header.
    pub(crate) fn segment(name: &str, sysid: u64, seg_size: u32) -> Vec<u8> {
        let n: WalFileName = name.parse().unwrap();
        let mut b = vec![0u8; seg_size as usize];
        b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        b[2..4].copy_from_slice(&XLP_LONG_HEADER.to_le_bytes());
        b[4..8].copy_from_slice(&n.timeline().0.to_le_bytes());
        b[8..16].copy_from_slice(&n.start_lsn(seg_size).unwrap().0.to_le_bytes());
        b[24..32].copy_from_slice(&sysid.to_le_bytes());
        b[32..36].copy_from_slice(&seg_size.to_le_bytes());
        b[36..40].copy_from_slice(&8192u32.to_le_bytes());
        // Something that is not all zeros, so compression has work to do.
        for (i, x) in b.iter_mut().enumerate().skip(64).take(8192) {
            *x = (i % 251) as u8;
        }
        b
    }

    const MB: u32 = 1 << 20;

    #[test]
    fn accepts_a_well_formed_segment() {
        let name: WalFileName = "000000010000000000000003".parse().unwrap();
        let h = LongPageHeader::check_segment(&name, &segment(name.as_str(), 42, MB)).unwrap();
        assert_eq!(h.pg_major, 15);
        assert_eq!(h.system_identifier, 42);
        assert_eq!(h.page_address, Lsn(3 * u64::from(MB)));
    }

    #[test]
    fn refuses_mismatches() {
        let name: WalFileName = "000000010000000000000003".parse().unwrap();
        let good = segment(name.as_str(), 42, MB);

        let err = LongPageHeader::check_segment(&name, &good[..good.len() - 1]).unwrap_err();
        assert!(matches!(err, HeaderError::WrongSize { .. }), "{err}");

        let other: WalFileName = "000000010000000000000004".parse().unwrap();
        let err = LongPageHeader::check_segment(&other, &good).unwrap_err();
        assert!(matches!(err, HeaderError::WrongPageAddress { .. }), "{err}");

        let mut bad = good.clone();
        bad[0] = 0x99;
        assert!(matches!(
            LongPageHeader::check_segment(&name, &bad),
            Err(HeaderError::UnknownMagic(_))
        ));

        let mut bad = good.clone();
        bad[2] = 0;
        assert!(matches!(
            LongPageHeader::check_segment(&name, &bad),
            Err(HeaderError::NotLongHeader(_))
        ));

        // A timeline-2 header in a timeline-1 file cannot be.
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            LongPageHeader::check_segment(&name, &bad),
            Err(HeaderError::FutureTimeline { .. })
        ));
        // But a timeline-2 file may start with timeline-1 pages.
        let tl2: WalFileName = "000000020000000000000003".parse().unwrap();
        assert!(LongPageHeader::check_segment(&tl2, &good).is_ok());

        assert!(matches!(
            LongPageHeader::check_segment(&name, &good[..20]),
            Err(HeaderError::TooShort(20))
        ));
    }
}
