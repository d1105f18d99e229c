//! `backup_label` as `pg_backup_stop` returns it, and the WAL a backup needs.
//!
//! Recovery starts from the label's checkpoint and must replay through the stop LSN before the
//! copy is consistent, so the archive must hold every segment from the label's start segment
//! through the one holding the last byte before the stop LSN, on the start timeline.

use walvault_proto::{Lsn, TimelineId, WalFileName};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupLabel {
    pub start_lsn: Lsn,
    pub checkpoint_lsn: Lsn,
    pub timeline: TimelineId,
    pub start_file: WalFileName,
}

/// Reads the lines recovery depends on; the error says which one is missing or wrong.
pub fn parse(text: &str) -> Result<BackupLabel, String> {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).map(str::trim))
            .ok_or_else(|| format!("backup_label has no {key:?} line"))
    };
    let lsn = |key: &str, v: &str| {
        v.parse::<Lsn>()
            .map_err(|e| format!("backup_label {key}: {e}"))
    };
    // "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)"
    let start = field("START WAL LOCATION:")?;
    let (start_lsn, rest) = start
        .split_once(' ')
        .ok_or_else(|| format!("backup_label START WAL LOCATION {start:?} names no file"))?;
    let start_file = rest
        .trim()
        .strip_prefix("(file ")
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| format!("backup_label START WAL LOCATION {start:?} names no file"))?
        .parse::<WalFileName>()
        .map_err(|e| format!("backup_label START WAL LOCATION: {e}"))?;
    let timeline = field("START TIMELINE:")?;
    let timeline = timeline
        .parse::<u32>()
        .ok()
        .filter(|t| *t > 0)
        .map(TimelineId)
        .ok_or_else(|| format!("backup_label START TIMELINE {timeline:?} is not a timeline"))?;
    Ok(BackupLabel {
        start_lsn: lsn("START WAL LOCATION", start_lsn)?,
        checkpoint_lsn: lsn("CHECKPOINT LOCATION", field("CHECKPOINT LOCATION:")?)?,
        timeline,
        start_file,
    })
}

/// The segments from `start` through the one holding the byte before `stop`.
pub fn needed_segments(
    timeline: TimelineId,
    start: Lsn,
    stop: Lsn,
    wal_segment_size: u32,
) -> Vec<WalFileName> {
    let seg = u64::from(wal_segment_size.max(1));
    let first = start.0 / seg;
    let last = stop.0.saturating_sub(1).max(start.0) / seg;
    (first..=last)
        .map(|n| WalFileName::segment(timeline, n, wal_segment_size))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LABEL: &str = "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)
CHECKPOINT LOCATION: 0/2000060
BACKUP METHOD: streamed
BACKUP FROM: primary
START TIME: 2026-11-22 10:00:00 UTC
LABEL: nightly
START TIMELINE: 1
";

    #[test]
    fn reads_what_recovery_needs() {
        let l = parse(LABEL).unwrap();
        assert_eq!(l.start_lsn, Lsn(0x2000028));
        assert_eq!(l.checkpoint_lsn, Lsn(0x2000060));
        assert_eq!(l.timeline, TimelineId(1));
        assert_eq!(l.start_file.as_str(), "000000010000000000000002");
    }

    #[test]
    fn names_the_broken_line() {
        let e = parse(&LABEL.replace("START TIMELINE: 1", "START TIMELINE: x")).unwrap_err();
        assert!(e.contains("START TIMELINE"), "{e}");
        let e = parse("LABEL: x\n").unwrap_err();
        assert!(e.contains("START WAL LOCATION"), "{e}");
        let e = parse(&LABEL.replace(" (file 000000010000000000000002)", "")).unwrap_err();
        assert!(e.contains("names no file"), "{e}");
    }

    #[test]
    fn needs_segments_through_the_byte_before_stop() {
        let seg = 16 << 20;
        let names = |a: u64, b: u64| -> Vec<String> {
            needed_segments(TimelineId(1), Lsn(a), Lsn(b), seg)
                .iter()
                .map(|n| n.as_str().to_owned())
                .collect()
        };
        assert_eq!(
            names(0x2000028, 0x2000138),
            vec!["000000010000000000000002"]
        );
        // Stopping exactly at a boundary needs nothing of the next segment.
        assert_eq!(
            names(0x2000028, 0x4000000),
            vec!["000000010000000000000002", "000000010000000000000003"]
        );
        assert_eq!(names(0x2000028, 0x4000001).len(), 3);
    }
}
