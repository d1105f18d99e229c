//! Names of the files PostgreSQL archives: WAL segments (`000000010000000A000000FF`),
//! partial segments (`….partial`), timeline history files (`00000002.history`) and backup
//! history files (`….00000028.backup`). Anything else is refused, which also keeps `/` and
//! `..` out of the archive's paths.

use std::fmt;
use std::str::FromStr;

use crate::{Lsn, TimelineId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0} is not a WAL file name (expected a segment like 000000010000000000000001, \
     or a .partial, .history or .backup file)"
)]
pub struct WalNameError(String);

/// What kind of file a [`WalFileName`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WalFileKind {
    Segment,
    Partial,
    History,
    Backup,
}

/// A validated WAL archive file name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalFileName(String);

fn is_upper_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
}

fn hex_u32(s: &str) -> u32 {
    // Only called on 8 validated hex digits.
    u32::from_str_radix(s, 16).unwrap_or(0)
}

impl WalFileName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn kind(&self) -> WalFileKind {
        let n = &self.0;
        if n.len() == 24 {
            WalFileKind::Segment
        } else if n.ends_with(".partial") {
            WalFileKind::Partial
        } else if n.ends_with(".history") {
            WalFileKind::History
        } else {
            WalFileKind::Backup
        }
    }

    /// True for files that hold WAL pages (segments and partial segments).
    pub fn holds_wal_pages(&self) -> bool {
        matches!(self.kind(), WalFileKind::Segment | WalFileKind::Partial)
    }

    /// The timeline the name belongs to.
    pub fn timeline(&self) -> TimelineId {
        TimelineId(hex_u32(&self.0[0..8]))
    }

    /// For segment-based names, the segment number given a segment size; `None` for history
    /// files, or when the name's low part is out of range for that segment size.
    pub fn segment_number(&self, wal_segment_size: u32) -> Option<u64> {
        if self.kind() == WalFileKind::History || wal_segment_size == 0 {
            return None;
        }
        let per_xlogid = 0x1_0000_0000u64 / u64::from(wal_segment_size);
        let log = u64::from(hex_u32(&self.0[8..16]));
        let seg = u64::from(hex_u32(&self.0[16..24]));
        (seg < per_xlogid).then_some(log * per_xlogid + seg)
    }

    /// The LSN at which the named segment starts.
    pub fn start_lsn(&self, wal_segment_size: u32) -> Option<Lsn> {
        self.segment_number(wal_segment_size)
            .map(|n| Lsn(n * u64::from(wal_segment_size)))
    }

    /// Whether this names a segment at or before the segment `through` (on any timeline):
    /// one a restore that must replay through `through` cannot do without. Names compare
    /// by their fixed-width position part, whatever the segment size.
    pub fn is_needed_through(&self, through: &WalFileName) -> bool {
        self.kind() == WalFileKind::Segment
            && through.kind() == WalFileKind::Segment
            && self.0[8..] <= through.0[8..]
    }

    /// The segment file name PostgreSQL uses for `segno` on `timeline`.
    pub fn segment(timeline: TimelineId, segno: u64, wal_segment_size: u32) -> Self {
        let per_xlogid = 0x1_0000_0000u64 / u64::from(wal_segment_size.max(1));
        Self(format!(
            "{:08X}{:08X}{:08X}",
            timeline.0,
            segno / per_xlogid,
            segno % per_xlogid
        ))
    }
}

impl FromStr for WalFileName {
    type Err = WalNameError;
    fn from_str(s: &str) -> Result<Self, WalNameError> {
        let ok = match s.len() {
            24 => is_upper_hex(s),
            // 00000002.history
            16 => s.ends_with(".history") && is_upper_hex(&s[..8]),
            // <segment>.partial
            32 => s.ends_with(".partial") && is_upper_hex(&s[..24]),
            // <segment>.<offset>.backup
            40 => {
                s.ends_with(".backup")
                    && is_upper_hex(&s[..24])
                    && s.as_bytes()[24] == b'.'
                    && is_upper_hex(&s[25..33])
            }
            _ => false,
        };
        // Timeline 0 does not exist.
        if ok && &s[..8] != "00000000" {
            Ok(Self(s.to_owned()))
        } else {
            Err(WalNameError(crate::echo(s)))
        }
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MB16: u32 = 16 << 20;

    #[test]
    fn kinds() {
        let k = |s: &str| s.parse::<WalFileName>().unwrap().kind();
        assert_eq!(k("000000010000000A000000FF"), WalFileKind::Segment);
        assert_eq!(k("000000010000000A000000FF.partial"), WalFileKind::Partial);
        assert_eq!(k("00000002.history"), WalFileKind::History);
        assert_eq!(
            k("000000010000000000000002.00000028.backup"),
            WalFileKind::Backup
        );
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "",
            "../../etc/passwd",
            "00000001/000000000000000001",
            "000000010000000a000000ff",
            "00000000000000000000000A",
            "0000000100000000000000011",
            "00000002.History",
            "000000010000000000000002.backup",
            "000000010000000000000002.0000002G.backup",
            "RECOVERYXLOG",
            "00000001000000000000000 ",
        ] {
            assert!(bad.parse::<WalFileName>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn segments_needed_through_a_segment() {
        let through: WalFileName = "00000002000000010000000A".parse().unwrap();
        let n = |s: &str| s.parse::<WalFileName>().unwrap();
        assert!(n("00000002000000010000000A").is_needed_through(&through));
        assert!(n("000000010000000100000009").is_needed_through(&through));
        assert!(n("0000000100000000000000FF").is_needed_through(&through));
        assert!(!n("00000002000000010000000B").is_needed_through(&through));
        assert!(!n("000000030000000200000000").is_needed_through(&through));
        assert!(!n("00000003.history").is_needed_through(&through));
        assert!(!n("000000010000000100000009.partial").is_needed_through(&through));
    }

    #[test]
    fn segment_numbers_and_lsns() {
        let n: WalFileName = "000000010000000A000000FF".parse().unwrap();
        assert_eq!(n.timeline(), TimelineId(1));
        assert_eq!(n.segment_number(MB16), Some(0xA * 256 + 0xFF));
        assert_eq!(n.start_lsn(MB16), Some(Lsn(0xA_FF00_0000)));
        // With 1 GiB segments only 4 segments fit in one xlogid.
        assert_eq!(n.segment_number(1 << 30), None);
        let h: WalFileName = "00000002.history".parse().unwrap();
        assert_eq!(h.segment_number(MB16), None);
    }

    proptest! {
        #[test]
        fn segment_names_round_trip(tli in 1u32.., segno in 0u64..(1 << 40), shift in 20u32..=30) {
            let size = 1u32 << shift;
            let segno = segno % ((u64::MAX / u64::from(size)) >> 1);
            let name = WalFileName::segment(TimelineId(tli), segno, size);
            let parsed: WalFileName = name.as_str().parse().unwrap();
            prop_assert_eq!(parsed.segment_number(size), Some(segno));
            prop_assert_eq!(parsed.timeline(), TimelineId(tli));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,48}") {
            let _ = s.parse::<WalFileName>();
        }
    }
}
