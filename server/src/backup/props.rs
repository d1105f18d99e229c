//! A backup's `walvault:*` snapshot properties (DESIGN §4): written in the same atomic
//! `zfs snapshot -r -o` that makes the backup, read back by `catalog rebuild`.

use std::collections::BTreeMap;

use walvault_proto::{Lsn, TimelineId};

use crate::catalog::{BackupRecord, BackupStats, Receipt};
use crate::layout::backup_props as p;

/// The `walvault:*` properties of a backup's snapshots (DESIGN §4).
pub fn snapshot_properties(r: &BackupRecord) -> BTreeMap<String, String> {
    let label: String = r
        .label
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let s = &r.stats;
    let mut props: BTreeMap<String, String> = [
        (p::BACKUP, r.id.clone()),
        (p::KIND, r.kind.as_str().to_owned()),
        (p::LABEL, label),
        (
            p::HOST,
            r.host
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect(),
        ),
        (p::START_LSN, r.start_lsn.to_string()),
        (p::STOP_LSN, r.stop_lsn.to_string()),
        (p::TIMELINE, r.timeline.to_string()),
        (p::START_TIME, r.start_unix.to_string()),
        (p::STOP_TIME, r.stop_unix.to_string()),
        // A backup is consistent once recovery passes its stop LSN; a roll-forward snapshot
        // was shut down by PostgreSQL itself at a consistent point.
        (
            p::CONSISTENT,
            (r.kind == crate::catalog::BackupKind::Rollforward).to_string(),
        ),
        (p::VERIFIED, "false".to_owned()),
        (
            p::STATS,
            format!(
                "{},{},{},{},{},{},{},{}",
                s.bytes_read,
                s.bytes_sent,
                s.bytes_written,
                s.blocks_written,
                s.files,
                s.files_changed,
                s.files_deleted,
                s.duration_ms
            ),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(base) = &r.base {
        props.insert(p::BASE.to_owned(), base.clone());
    }
    props
}

/// A receipt as a snapshot property: JSON, with its error lines cut until it fits in one.
pub fn receipt_property(r: &Receipt) -> String {
    let max = crate::storage::zfs::PROPERTY_VALUE_MAX;
    let mut r = r.clone();
    loop {
        let json = serde_json::to_string(&r).unwrap_or_default();
        let longest = r.errors.iter().map(String::len).max().unwrap_or(0);
        if json.len() <= max || longest <= 80 && r.errors.len() <= 1 {
            return json;
        }
        if r.errors.len() > 1 {
            r.errors.pop();
        } else if let Some(e) = r.errors.first_mut() {
            *e = e.chars().take(e.chars().count() / 2).collect();
        }
    }
}

/// The backup a snapshot's properties describe; `None` for a snapshot that is no backup.
pub fn record_from_properties(props: &BTreeMap<String, String>) -> Option<BackupRecord> {
    let get = |k: &str| props.get(k).map(String::as_str);
    let num = |k: &str| get(k).and_then(|v| v.parse::<i64>().ok());
    let stats: Vec<u64> = get(p::STATS)
        .unwrap_or("")
        .split(',')
        .filter_map(|v| v.parse().ok())
        .collect();
    let stat = |i: usize| stats.get(i).copied().unwrap_or(0);
    Some(BackupRecord {
        id: get(p::BACKUP)?.to_owned(),
        kind: get(p::KIND)?.parse().ok()?,
        base: get(p::BASE).map(str::to_owned),
        label: get(p::LABEL).unwrap_or("").to_owned(),
        host: get(p::HOST).unwrap_or("").to_owned(),
        start_lsn: get(p::START_LSN)?.parse::<Lsn>().ok()?,
        stop_lsn: get(p::STOP_LSN)?.parse::<Lsn>().ok()?,
        timeline: TimelineId(get(p::TIMELINE)?.parse().ok()?),
        start_unix: num(p::START_TIME)?,
        stop_unix: num(p::STOP_TIME)?,
        stats: BackupStats {
            bytes_read: stat(0),
            bytes_sent: stat(1),
            bytes_written: stat(2),
            blocks_written: stat(3),
            files: stat(4),
            files_changed: stat(5),
            files_deleted: stat(6),
            duration_ms: stat(7),
        },
        receipt: get(p::RECEIPT).and_then(|j| serde_json::from_str(j).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::BackupKind;

    #[test]
    fn properties_round_trip() {
        let r = BackupRecord {
            id: "20261122T101500Z".into(),
            kind: BackupKind::Incremental,
            base: None,
            label: "nightly".into(),
            host: "db1".into(),
            start_lsn: Lsn(0x2000028),
            stop_lsn: Lsn(0x2000100),
            timeline: TimelineId(3),
            start_unix: 1_795_350_896,
            stop_unix: 1_795_350_900,
            stats: BackupStats {
                bytes_read: 1,
                bytes_sent: 2,
                bytes_written: 3,
                blocks_written: 4,
                files: 5,
                files_changed: 6,
                files_deleted: 7,
                duration_ms: 8,
            },
            receipt: None,
        };
        assert_eq!(
            record_from_properties(&snapshot_properties(&r)).as_ref(),
            Some(&r)
        );
        let rolled = BackupRecord {
            id: "rf-20261122T111500Z".into(),
            kind: BackupKind::Rollforward,
            base: Some(r.id.clone()),
            ..r
        };
        let props = snapshot_properties(&rolled);
        assert_eq!(props.get(p::CONSISTENT).map(String::as_str), Some("true"));
        assert_eq!(record_from_properties(&props), Some(rolled));
        assert_eq!(record_from_properties(&BTreeMap::new()), None);
    }

    #[test]
    fn receipts_come_back_from_the_snapshot_and_always_fit() {
        let mut r = BackupRecord {
            id: "20261122T101500Z".into(),
            kind: BackupKind::Full,
            base: None,
            label: String::new(),
            host: "db1".into(),
            start_lsn: Lsn(0x2000028),
            stop_lsn: Lsn(0x2000100),
            timeline: TimelineId(1),
            start_unix: 1,
            stop_unix: 2,
            stats: BackupStats::default(),
            receipt: None,
        };
        let receipt = Receipt {
            verified: false,
            checked_unix: 3,
            checks: vec!["page checksums".into(), "amcheck".into()],
            first_query_ms: 800,
            duration_ms: 2000,
            tables: 4,
            indexes: 3,
            errors: vec!["ERROR:  invalid page in block 0 of relation base/5/16384".into()],
        };
        let mut props = snapshot_properties(&r);
        props.insert(p::RECEIPT.into(), receipt_property(&receipt));
        r.receipt = Some(receipt.clone());
        assert_eq!(record_from_properties(&props), Some(r));

        let noisy = Receipt {
            errors: vec!["é".repeat(3000); 10],
            ..receipt
        };
        let json = receipt_property(&noisy);
        assert!(
            json.len() <= crate::storage::zfs::PROPERTY_VALUE_MAX,
            "{}",
            json.len()
        );
        let back: Receipt = serde_json::from_str(&json).unwrap();
        assert!(!back.verified && !back.errors.is_empty());
    }
}
