//! Retention policies (DESIGN §9): what a tenant, or one of its clusters, keeps.
//!
//! A tenant has one policy; a cluster may override any of its fields. The quota is not part
//! of it: it lives on the tenant (`walvault tenant set-quota`) because ZFS enforces it there.

use serde::{Deserialize, Serialize};

/// What to keep. Every rule keeps; nothing in a policy ever asks for deletion by itself:
/// what no rule keeps is pruned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Any point in the last N days must stay restorable; `None`: no window.
    pub recovery_window_days: Option<u32>,
    /// The newest backup of each of the N most recent hours (days, ISO weeks, months) that
    /// have backups.
    pub keep_hourly: u32,
    pub keep_daily: u32,
    pub keep_weekly: u32,
    pub keep_monthly: u32,
    /// The N newest backups, whatever their age.
    pub min_backups: u32,
    /// Roll-forward cadence: a new snapshot once the newest is N minutes old and commits
    /// followed it (0: never by age); `None`: the server's `[rollforward] every_minutes`.
    #[serde(default)]
    pub rollforward_minutes: Option<u32>,
    /// … or once N MiB of WAL followed it (0: never by size); `None`: `every_mib`.
    #[serde(default)]
    pub rollforward_mib: Option<u32>,
}

impl Default for Policy {
    /// Keeps a week restorable, a backup of each of the last 7 days with backups (so a
    /// restore inside the window replays at most about a day of WAL), and at least two.
    fn default() -> Self {
        Self {
            recovery_window_days: Some(7),
            keep_hourly: 0,
            keep_daily: 7,
            keep_weekly: 0,
            keep_monthly: 0,
            min_backups: 2,
            rollforward_minutes: None,
            rollforward_mib: None,
        }
    }
}

/// A cluster's changes to its tenant's policy: `None` inherits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyOverride {
    pub recovery_window_days: Option<u32>,
    /// The cluster keeps no window, whatever its tenant's (wins over `recovery_window_days`).
    #[serde(default)]
    pub no_recovery_window: bool,
    pub keep_hourly: Option<u32>,
    pub keep_daily: Option<u32>,
    pub keep_weekly: Option<u32>,
    pub keep_monthly: Option<u32>,
    pub min_backups: Option<u32>,
    #[serde(default)]
    pub rollforward_minutes: Option<u32>,
    #[serde(default)]
    pub rollforward_mib: Option<u32>,
}

impl PolicyOverride {
    /// The policy a cluster lives by.
    pub fn apply(&self, base: Policy) -> Policy {
        Policy {
            recovery_window_days: if self.no_recovery_window {
                None
            } else {
                self.recovery_window_days.or(base.recovery_window_days)
            },
            keep_hourly: self.keep_hourly.unwrap_or(base.keep_hourly),
            keep_daily: self.keep_daily.unwrap_or(base.keep_daily),
            keep_weekly: self.keep_weekly.unwrap_or(base.keep_weekly),
            keep_monthly: self.keep_monthly.unwrap_or(base.keep_monthly),
            min_backups: self.min_backups.unwrap_or(base.min_backups),
            rollforward_minutes: self.rollforward_minutes.or(base.rollforward_minutes),
            rollforward_mib: self.rollforward_mib.or(base.rollforward_mib),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_recorded_before_the_cadence_existed_still_read() {
        let old = r#"{"recovery_window_days":7,"keep_hourly":0,"keep_daily":7,"keep_weekly":0,"keep_monthly":0,"min_backups":2}"#;
        let p: Policy = serde_json::from_str(old).unwrap();
        assert_eq!(p, Policy::default());
        let o: PolicyOverride = serde_json::from_str(r#"{"min_backups":3}"#).unwrap();
        assert_eq!(o.rollforward_mib, None);
    }

    #[test]
    fn overrides_change_only_what_they_name() {
        let base = Policy {
            keep_daily: 7,
            ..Policy::default()
        };
        let o = PolicyOverride {
            no_recovery_window: true,
            min_backups: Some(5),
            ..PolicyOverride::default()
        };
        let p = o.apply(base);
        assert_eq!(p.recovery_window_days, None);
        assert_eq!(p.min_backups, 5);
        assert_eq!(p.keep_daily, 7);
        assert_eq!(p.rollforward_minutes, None);
        let every_15 = PolicyOverride {
            rollforward_minutes: Some(15),
            ..PolicyOverride::default()
        }
        .apply(base);
        assert_eq!(every_15.rollforward_minutes, Some(15));
        assert_eq!(every_15.rollforward_mib, None);
        assert!(PolicyOverride::default().is_empty());
        assert_eq!(PolicyOverride::default().apply(base), base);
    }
}
