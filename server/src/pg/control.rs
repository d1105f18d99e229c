//! What `pg_controldata` says of a stopped data directory: its state, where its last
//! checkpoint (or restartpoint) begins redo, and how far recovery must replay before the copy
//! is consistent. A roll-forward reads it after stopping its standby, because only the
//! control file knows where the shutdown restartpoint left the copy.

use std::path::Path;

use walvault_proto::{Lsn, TimelineId};

use super::{PgBinaries, PgError, RunAs};
use crate::process;

/// The fields of `pg_controldata` walvault reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlData {
    /// "shut down", "shut down in recovery", "in archive recovery", …
    pub state: String,
    pub checkpoint_lsn: Lsn,
    pub redo_lsn: Lsn,
    pub checkpoint_timeline: TimelineId,
    /// 0/0 when the copy needs no replay to be consistent.
    pub min_recovery_lsn: Lsn,
    pub min_recovery_timeline: TimelineId,
}

impl ControlData {
    /// Where a copy shut down in recovery is consistent: its minimum recovery point, or its
    /// last checkpoint when it has none. With its timeline.
    pub fn consistent_at(&self) -> (Lsn, TimelineId) {
        if self.min_recovery_lsn.0 == 0 {
            (self.checkpoint_lsn, self.checkpoint_timeline)
        } else {
            (self.min_recovery_lsn, self.min_recovery_timeline)
        }
    }
}

/// Parses `pg_controldata`'s output (run with `LC_ALL=C`).
pub fn parse(text: &str) -> Result<ControlData, String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
            .ok_or_else(|| format!("pg_controldata printed no {name:?}"))
    };
    let lsn = |name: &str| {
        let v = field(name)?;
        v.parse::<Lsn>()
            .map_err(|e| format!("pg_controldata's {name:?}: {e}"))
    };
    let tli = |name: &str| {
        let v = field(name)?;
        v.parse::<u32>()
            .map(TimelineId)
            .map_err(|_| format!("pg_controldata's {name:?} is {v:?}, not a timeline"))
    };
    Ok(ControlData {
        state: field("Database cluster state")?,
        checkpoint_lsn: lsn("Latest checkpoint location")?,
        redo_lsn: lsn("Latest checkpoint's REDO location")?,
        checkpoint_timeline: tli("Latest checkpoint's TimeLineID")?,
        min_recovery_lsn: lsn("Minimum recovery ending location")?,
        min_recovery_timeline: tli("Min recovery ending loc's timeline")?,
    })
}

/// Runs `pg_controldata` on `pgdata` as `os_user`.
pub fn read(bins: &PgBinaries, pgdata: &Path, os_user: &str) -> Result<ControlData, PgError> {
    let run_as = RunAs::resolve(os_user)?;
    let mut cmd = run_as.command(&bins.program("pg_controldata"));
    cmd.arg("-D").arg(pgdata).env("LC_ALL", "C");
    let what = || format!("read the control file of {}", pgdata.display());
    let out = process::run_stdout(&mut cmd).map_err(|source| PgError::Command {
        what: what(),
        source,
    })?;
    parse(&out).map_err(|detail| PgError::Control {
        pgdata: pgdata.display().to_string(),
        detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STANDBY: &str = "\
pg_control version number:            1300
Catalog version number:               202209061
Database system identifier:           7441210573473810511
Database cluster state:               shut down in recovery
pg_control last modified:             Tue 01 Dec 2026 13:50:01 UTC
Latest checkpoint location:           0/9000060
Latest checkpoint's REDO location:    0/9000028
Latest checkpoint's REDO WAL file:    000000010000000000000009
Latest checkpoint's TimeLineID:       1
Latest checkpoint's PrevTimeLineID:   1
Minimum recovery ending location:     0/A0001B8
Min recovery ending loc's timeline:   2
Backup start location:                0/0
";

    #[test]
    fn a_standby_shut_down_in_recovery_is_read() {
        let c = parse(STANDBY).unwrap();
        assert_eq!(c.state, "shut down in recovery");
        assert_eq!(c.redo_lsn, Lsn(0x9000028));
        assert_eq!(c.checkpoint_lsn, Lsn(0x9000060));
        assert_eq!(c.checkpoint_timeline, TimelineId(1));
        assert_eq!(c.consistent_at(), (Lsn(0xA0001B8), TimelineId(2)));
    }

    #[test]
    fn without_a_minimum_recovery_point_the_checkpoint_is_consistent() {
        let text = STANDBY
            .replace("0/A0001B8", "0/0")
            .replace("timeline:   2", "timeline:   0");
        let c = parse(&text).unwrap();
        assert_eq!(c.consistent_at(), (Lsn(0x9000060), TimelineId(1)));
    }

    #[test]
    fn a_missing_field_is_named() {
        let text = STANDBY.replace("Latest checkpoint's REDO location", "Something else");
        assert_eq!(
            parse(&text).unwrap_err(),
            "pg_controldata printed no \"Latest checkpoint's REDO location\""
        );
        assert!(
            parse("Database cluster state: x\nLatest checkpoint location: nope\n")
                .unwrap_err()
                .contains("Latest checkpoint location")
        );
    }
}
