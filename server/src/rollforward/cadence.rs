//! When a cluster is due for a roll-forward: pure, so the rule is a unit test.

use std::time::Duration;

use crate::config::RollForwardConfig;
use crate::retention::Policy;

/// How often a cluster gets a new snapshot: its policy's cadence, the server's where the
/// policy names none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    /// Due once the newest snapshot is this old and commits followed it (zero: never).
    pub every: Duration,
    /// … or once this much WAL followed it (zero: never).
    pub every_bytes: u64,
}

impl Cadence {
    pub fn of(policy: &Policy, server: &RollForwardConfig) -> Self {
        Self {
            every: policy
                .rollforward_minutes
                .map_or(server.every, |m| Duration::from_secs(u64::from(m) * 60)),
            every_bytes: policy
                .rollforward_mib
                .map_or(server.every_bytes, |m| u64::from(m) << 20),
        }
    }
}

/// What followed a cluster's newest snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since {
    /// Archived WAL between the snapshot's consistent point and the end of the archive.
    pub wal_bytes: u64,
    /// Seconds since the snapshot was taken.
    pub secs: u64,
    /// Whether a commit (or abort) followed it.
    pub commits: bool,
}

/// Why the cluster is due (`Ok`), or why not (`Err`).
pub fn due(c: &Cadence, s: Since) -> Result<String, String> {
    let every = c.every.as_secs();
    if every == 0 && c.every_bytes == 0 {
        return Err(
            "the cluster's policy turns roll-forward off (every 0 minutes and 0 MiB)".into(),
        );
    }
    if c.every_bytes > 0 && s.wal_bytes >= c.every_bytes {
        return Ok(format!(
            "{} of WAL since the newest snapshot (every {})",
            crate::human_bytes(s.wal_bytes),
            crate::human_bytes(c.every_bytes)
        ));
    }
    if every > 0 && s.secs >= every && s.commits {
        return Ok(format!(
            "commits in the {} min since the newest snapshot (every {} min)",
            s.secs / 60,
            every / 60
        ));
    }
    Err(if s.wal_bytes == 0 {
        "no WAL since the newest snapshot".to_owned()
    } else {
        format!(
            "{} of WAL and {} min since the newest snapshot",
            crate::human_bytes(s.wal_bytes),
            s.secs / 60
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(minutes: u64, mib: u64) -> Cadence {
        Cadence {
            every: Duration::from_secs(minutes * 60),
            every_bytes: mib << 20,
        }
    }

    #[test]
    fn the_policy_wins_over_the_server_rule_by_rule() {
        let server = RollForwardConfig::default();
        assert_eq!(
            Cadence::of(&Policy::default(), &server),
            config(60, 1024),
            "no cadence in the policy: the server's"
        );
        let p = Policy {
            rollforward_minutes: Some(15),
            ..Policy::default()
        };
        assert_eq!(Cadence::of(&p, &server), config(15, 1024));
        let off = Policy {
            rollforward_minutes: Some(0),
            rollforward_mib: Some(0),
            ..Policy::default()
        };
        let busy = Since {
            wal_bytes: 100 << 30,
            secs: 1 << 20,
            commits: true,
        };
        assert!(due(&Cadence::of(&off, &server), busy)
            .unwrap_err()
            .contains("turns roll-forward off"));
    }

    #[test]
    fn due_by_size_or_by_time_with_commits() {
        let c = config(60, 1024);
        let quiet = Since {
            wal_bytes: 16 << 20,
            secs: 59 * 60,
            commits: true,
        };
        assert!(due(&c, quiet).is_err());
        assert!(due(
            &c,
            Since {
                secs: 3600,
                ..quiet
            }
        )
        .is_ok());
        assert!(due(
            &c,
            Since {
                wal_bytes: 1 << 30,
                secs: 1,
                commits: false
            }
        )
        .unwrap()
        .contains("1.0 GiB"));
        // Time alone, with nothing committed, makes no new restore point worth having.
        assert!(due(
            &c,
            Since {
                secs: 7200,
                commits: false,
                ..quiet
            }
        )
        .is_err());
    }

    #[test]
    fn a_zero_turns_a_rule_off() {
        let by_time_only = config(60, 0);
        let huge = Since {
            wal_bytes: 100 << 30,
            secs: 10,
            commits: true,
        };
        assert!(due(&by_time_only, huge).is_err());
        let by_size_only = config(0, 64);
        assert!(due(
            &by_size_only,
            Since {
                wal_bytes: 1 << 20,
                secs: 1 << 30,
                commits: true
            }
        )
        .is_err());
        assert!(due(&by_size_only, huge).is_ok());
    }
}
