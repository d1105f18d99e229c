//! The prune planner (DESIGN §9): from what the restore planner sees of a cluster, a policy and
//! the time, which snapshots to destroy and which archived WAL files to delete, with the reasons
//! each item is kept or dropped. Pure and clock-injected: `now` is an input, so every rule is a
//! unit test and the whole is checked against the restore planner by property tests.
//!
//! Invariants:
//! - nothing is dropped that a kept backup needs to become consistent, that the recovery window
//!   needs on any timeline, or that a restore in progress or a running backup may read;
//! - WAL is attributed to a timeline exactly as the restore planner reads it: along a
//!   timeline's history, segment by segment, the file of the newest timeline begun by then;
//! - the newest backup usable on the latest timeline, and all WAL after its start, are kept, so
//!   a restore to the latest point reaches as far after pruning as before;
//! - a policy with no rule, or a cluster with no backup yet, drops nothing;
//! - the output is deterministic and every decision carries at least one reason.

use std::collections::{BTreeMap, BTreeSet};

use walvault_proto::{utc_civil, utc_time, utc_time_micros, Lsn, TimelineId};
use walvault_proto::{WalFileKind, WalFileName};

use super::policy::Policy;
use crate::restore::plan::{
    ancestry, latest_timeline, on_history, segment_name, timeline_for, usable, BackupPoint, Facts,
};

/// Everything the planner looks at. Built by the caller from the catalog; the planner reads
/// no clock and no disk.
#[derive(Debug, Clone)]
pub struct PruneInput<'a> {
    /// The injected clock, Unix seconds.
    pub now_unix: i64,
    pub policy: Policy,
    /// Backups, timeline histories and the time index, as the restore planner sees them.
    pub facts: &'a Facts,
    /// Backup id -> stop time (Unix seconds), for the hourly/daily/weekly/monthly grid. A
    /// backup missing here is placed at its consistent time.
    pub backup_times: &'a BTreeMap<String, i64>,
    /// Every archived file name: segments, `.partial`, `.history` and `.backup` files.
    pub wal_files: &'a [String],
    /// Backup ids a restore clone or a running backup depends on.
    pub in_use: &'a BTreeSet<String>,
    /// Snapshots kept whatever the rules say, with why: a roll-forward chain's base (its
    /// clone depends on it) and the newest verified snapshot. Unlike `in_use`, they hold only
    /// the WAL they need to become consistent.
    pub held: &'a BTreeMap<String, String>,
    /// A backup in progress needs WAL from here on, on the latest timeline.
    pub running_backup_start: Option<Lsn>,
}

/// Something pruning may destroy.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Item {
    /// A backup (its snapshot and catalog entry), by id.
    Backup(String),
    /// An archived WAL file, by name.
    Wal(String),
}

impl Item {
    /// The backup id or the file name.
    pub fn name(&self) -> &str {
        match self {
            Item::Backup(s) | Item::Wal(s) => s,
        }
    }
}

/// Whether one item stays, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub item: Item,
    pub keep: bool,
    /// In words, never empty: every rule that keeps the item, or why none does.
    pub reasons: Vec<String>,
}

/// Backups oldest first, then WAL files in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrunePlan {
    pub decisions: Vec<Decision>,
}

impl PrunePlan {
    /// What the executor destroys.
    pub fn drops(&self) -> impl Iterator<Item = &Item> {
        self.decisions.iter().filter(|d| !d.keep).map(|d| &d.item)
    }

    /// Ids of the backups that stay, oldest first.
    pub fn kept_backups(&self) -> impl Iterator<Item = &str> {
        self.backups(true)
    }

    /// Ids of the backups to destroy, oldest first.
    pub fn dropped_backups(&self) -> impl Iterator<Item = &str> {
        self.backups(false)
    }

    /// Names of the WAL files that stay, in name order.
    pub fn kept_wal(&self) -> impl Iterator<Item = &str> {
        self.wal(true)
    }

    /// Names of the WAL files to delete, in name order.
    pub fn dropped_wal(&self) -> impl Iterator<Item = &str> {
        self.wal(false)
    }

    /// The decision about one item, if the plan has one.
    pub fn decision(&self, item: &Item) -> Option<&Decision> {
        self.decisions.iter().find(|d| &d.item == item)
    }

    fn backups(&self, keep: bool) -> impl Iterator<Item = &str> {
        self.decisions.iter().filter_map(move |d| match &d.item {
            Item::Backup(id) if d.keep == keep => Some(id.as_str()),
            _ => None,
        })
    }

    fn wal(&self, keep: bool) -> impl Iterator<Item = &str> {
        self.decisions.iter().filter_map(move |d| match &d.item {
            Item::Wal(n) if d.keep == keep => Some(n.as_str()),
            _ => None,
        })
    }
}

/// The periods of the snapshot grid, in UTC; weeks are ISO weeks (Monday to Sunday, numbered
/// in the year of their Thursday).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grid {
    Hourly,
    Daily,
    Weekly,
    Monthly,
}

impl Grid {
    const ALL: [Grid; 4] = [Grid::Hourly, Grid::Daily, Grid::Weekly, Grid::Monthly];

    fn count(self, p: &Policy) -> u32 {
        match self {
            Grid::Hourly => p.keep_hourly,
            Grid::Daily => p.keep_daily,
            Grid::Weekly => p.keep_weekly,
            Grid::Monthly => p.keep_monthly,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Grid::Hourly => "hourly",
            Grid::Daily => "daily",
            Grid::Weekly => "weekly",
            Grid::Monthly => "monthly",
        }
    }

    /// The period holding `unix`: a key that orders periods, and its label.
    fn period(self, unix: i64) -> (i64, String) {
        let (y, mo, d, h, _, _) = utc_civil(unix);
        match self {
            Grid::Hourly => (
                unix.div_euclid(3600),
                format!("{y:04}-{mo:02}-{d:02} {h:02}:00 UTC"),
            ),
            Grid::Daily => (unix.div_euclid(86_400), format!("{y:04}-{mo:02}-{d:02}")),
            Grid::Weekly => {
                let (monday, year, week) = iso_week(unix);
                (monday, format!("{year:04}-W{week:02}"))
            }
            Grid::Monthly => (y * 12 + mo - 1, format!("{y:04}-{mo:02}")),
        }
    }
}

/// The ISO week of a Unix time: (its Monday as days since the epoch, ISO year, week number).
fn iso_week(unix: i64) -> (i64, i64, i64) {
    let days = unix.div_euclid(86_400);
    // 1970-01-01 was a Thursday: day 3 of its ISO week, counting Monday as 0.
    let monday = days - (days + 3).rem_euclid(7);
    let thursday = monday + 3;
    // The week belongs to the year of its Thursday, and is numbered by that Thursday's day of
    // the year: week 1 holds the year's first Thursday.
    let (year, month, day, _, _, _) = utc_civil(thursday * 86_400);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    const BEFORE_MONTH: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let month_index = usize::try_from(month - 1).unwrap_or(0).min(11);
    let ordinal = BEFORE_MONTH[month_index] + i64::from(leap && month > 2) + day - 1;
    (monday, year, ordinal / 7 + 1)
}

/// WAL a kept item needs: the files read along `timeline`'s history for segments `from..=to`.
#[derive(Debug)]
struct Claim {
    timeline: TimelineId,
    from: u64,
    to: Option<u64>,
    reason: String,
}

/// The planner's working state for one call.
struct Planner<'a> {
    input: &'a PruneInput<'a>,
    facts: &'a Facts,
    segment_size: u64,
    /// Every timeline the facts know of, oldest first.
    timelines: Vec<TimelineId>,
    ancestries: BTreeMap<TimelineId, Vec<(TimelineId, u64, Option<Lsn>)>>,
    latest: Option<TimelineId>,
    /// Backup id -> why it is kept.
    keep: BTreeMap<String, Vec<String>>,
    claims: Vec<Claim>,
}

/// Plans a prune.
pub fn plan(input: &PruneInput) -> PrunePlan {
    let mut p = Planner::new(input);
    let order = p.oldest_first();
    let mut decisions = Vec::new();

    if !has_rule(&input.policy) {
        let why = "the policy has no rule, so nothing is pruned";
        for b in &order {
            decisions.push(keep(Item::Backup(b.id.clone()), why));
        }
        for name in wal_names(input.wal_files) {
            decisions.push(keep(Item::Wal(name.to_owned()), why));
        }
        return PrunePlan { decisions };
    }
    if order.is_empty() {
        for name in wal_names(input.wal_files) {
            decisions.push(keep(
                Item::Wal(name.to_owned()),
                "the cluster has no backup yet; its first one will need this WAL",
            ));
        }
        return PrunePlan { decisions };
    }

    let window = p.window();
    p.grid(&order);
    p.min_backups(&order);
    p.in_use();
    p.held();
    p.latest();
    p.running_backup();
    p.kept_backups_wal();

    for b in &order {
        let item = Item::Backup(b.id.clone());
        match p.keep.get(&b.id) {
            Some(reasons) => decisions.push(Decision {
                item,
                keep: true,
                reasons: dedup(reasons.clone()),
            }),
            None => {
                let mut reasons = vec!["no rule keeps it".to_owned()];
                if let Some(w) = &window {
                    reasons.extend(w.context(p.facts, b));
                }
                decisions.push(Decision {
                    item,
                    keep: false,
                    reasons,
                });
            }
        }
    }
    for name in wal_names(input.wal_files) {
        decisions.push(p.wal_decision(name));
    }
    PrunePlan { decisions }
}

fn has_rule(p: &Policy) -> bool {
    p.recovery_window_days.is_some()
        || p.keep_hourly > 0
        || p.keep_daily > 0
        || p.keep_weekly > 0
        || p.keep_monthly > 0
        || p.min_backups > 0
}

fn keep(item: Item, why: &str) -> Decision {
    Decision {
        item,
        keep: true,
        reasons: vec![why.to_owned()],
    }
}

/// The archive's names in order, each once.
fn wal_names(files: &[String]) -> Vec<&str> {
    let mut v: Vec<&str> = files.iter().map(String::as_str).collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn dedup(reasons: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    reasons
        .into_iter()
        .filter(|r| seen.insert(r.clone()))
        .collect()
}

/// The window's anchors, for explaining why a backup inside the window may go.
struct WindowAnchors {
    cutoff_micros: i64,
    /// Timeline -> its anchor's id.
    anchors: BTreeMap<TimelineId, String>,
}

impl WindowAnchors {
    fn context(&self, facts: &Facts, b: &BackupPoint) -> Option<String> {
        if b.consistent_micros <= self.cutoff_micros {
            return None;
        }
        self.anchors
            .iter()
            .find(|(t, _)| on_history(facts, **t, b.timeline, b.stop_lsn))
            .map(|(t, a)| {
                format!(
                    "after the window anchor on timeline {t}: backup {a} and the WAL after it \
                     serve the window"
                )
            })
    }
}

impl<'a> Planner<'a> {
    fn new(input: &'a PruneInput<'a>) -> Self {
        let facts = input.facts;
        let mut timelines: BTreeSet<TimelineId> = facts.histories.keys().copied().collect();
        timelines.extend(facts.segments.keys().map(|(t, _)| *t));
        timelines.extend(facts.backups.iter().map(|b| b.timeline));
        let ancestries = timelines
            .iter()
            .map(|t| (*t, ancestry(facts, *t)))
            .collect();
        Planner {
            input,
            facts,
            segment_size: facts.segment_size.max(1),
            timelines: timelines.into_iter().collect(),
            ancestries,
            latest: latest_timeline(facts),
            keep: BTreeMap::new(),
            claims: Vec::new(),
        }
    }

    fn stop_time(&self, b: &BackupPoint) -> i64 {
        self.input
            .backup_times
            .get(&b.id)
            .copied()
            .unwrap_or_else(|| b.consistent_micros.div_euclid(1_000_000))
    }

    fn oldest_first(&self) -> Vec<&'a BackupPoint> {
        let mut v: Vec<&BackupPoint> = self.facts.backups.iter().collect();
        v.sort_by(|a, b| {
            (self.stop_time(a), a.stop_lsn, &a.id).cmp(&(self.stop_time(b), b.stop_lsn, &b.id))
        });
        // An id listed twice is one backup.
        let mut seen = BTreeSet::new();
        v.retain(|b| seen.insert(b.id.as_str()));
        v
    }

    fn segno(&self, lsn: Lsn) -> u64 {
        lsn.0 / self.segment_size
    }

    fn keep_backup(&mut self, id: &str, reason: String) {
        self.keep.entry(id.to_owned()).or_default().push(reason);
    }

    fn claim(&mut self, timeline: TimelineId, from: Lsn, to: Option<Lsn>, reason: String) {
        self.claims.push(Claim {
            timeline,
            from: self.segno(from),
            to: to.map(|l| self.segno(l)),
            reason,
        });
    }

    /// Whether the indexed segment (tli, segno) is read along `timeline`'s history.
    fn on_timeline(&self, timeline: TimelineId, tli: TimelineId, segno: u64) -> bool {
        self.ancestries
            .get(&timeline)
            .map(|anc| timeline_for(anc, segno))
            == Some(tli)
    }

    /// The first segment number at or after `from` that `timeline`'s history lacks in the
    /// index while later WAL on it exists: a gap a restore cannot cross.
    fn gap(&self, timeline: TimelineId, from: u64) -> Option<(TimelineId, u64)> {
        let last = self
            .facts
            .segments
            .keys()
            .filter(|(t, s)| self.on_timeline(timeline, *t, *s))
            .map(|(_, s)| *s)
            .max()?;
        let anc = self.ancestries.get(&timeline)?;
        (from..last).find_map(|s| {
            let t = timeline_for(anc, s);
            (!self.facts.segments.contains_key(&(t, s))).then_some((t, s))
        })
    }

    /// The recovery window: on every timeline with commits inside it (and the latest), the
    /// newest backup consistent by its start, and all WAL from that backup on.
    fn window(&mut self) -> Option<WindowAnchors> {
        let days = self.input.policy.recovery_window_days?;
        let cutoff = self.input.now_unix.saturating_sub(i64::from(days) * 86_400);
        let cutoff_micros = cutoff.saturating_mul(1_000_000);
        let mut anchors = BTreeMap::new();
        for t in self.timelines.clone() {
            // A timeline whose last commit is older than the window holds no point in it: a
            // restore to a time needs a later commit to stop at.
            let has_points = Some(t) == self.latest
                || self.facts.segments.iter().any(|((tli, s), f)| {
                    f.max_micros.is_some_and(|m| m >= cutoff_micros)
                        && self.on_timeline(t, *tli, *s)
                });
            if !has_points {
                continue;
            }
            let usable = usable(self.facts, t);
            let (anchor, reason) = match usable
                .iter()
                .rev()
                .find(|b| b.consistent_micros <= cutoff_micros)
            {
                Some(b) => (
                    *b,
                    format!(
                        "recovery window anchor on timeline {t} (consistent {} <= now - {days} \
                         days)",
                        utc_time_micros(b.consistent_micros)
                    ),
                ),
                None => match usable.first() {
                    Some(b) => (
                        *b,
                        format!(
                            "recovery window on timeline {t}: the oldest backup; none is \
                             consistent by now - {days} days ({}), so the window reaches back \
                             only to {}",
                            utc_time(cutoff),
                            utc_time_micros(b.consistent_micros)
                        ),
                    ),
                    None => continue,
                },
            };
            self.keep_backup(&anchor.id, reason);
            self.claim(
                t,
                anchor.start_lsn,
                None,
                format!(
                    "recovery window on timeline {t} (from backup {})",
                    anchor.id
                ),
            );
            // Across a gap the restore planner picks the newest backup consistent by the
            // target, whose WAL must not cross the gap: keep every backup inside the window so
            // its choice does not change.
            if let Some((gt, gs)) = self.gap(t, self.segno(anchor.start_lsn)) {
                let name = segment_name(gt, gs, self.segment_size);
                for b in usable
                    .iter()
                    .filter(|b| b.consistent_micros > cutoff_micros)
                {
                    self.keep_backup(
                        &b.id,
                        format!(
                            "recovery window on timeline {t}: the archive lacks segment {name}, \
                             so every backup in the window serves part of it"
                        ),
                    );
                }
            }
            anchors.insert(t, anchor.id.clone());
        }
        Some(WindowAnchors {
            cutoff_micros,
            anchors,
        })
    }

    /// The newest backup of each of the N most recent periods that have backups.
    fn grid(&mut self, order: &[&BackupPoint]) {
        for g in Grid::ALL {
            let n = g.count(&self.input.policy) as usize;
            if n == 0 {
                continue;
            }
            // Oldest first, so the last backup seen in a period is its newest.
            let mut newest: BTreeMap<i64, (String, &str)> = BTreeMap::new();
            for b in order {
                let (key, label) = g.period(self.stop_time(b));
                newest.insert(key, (label, &b.id));
            }
            for (label, id) in newest.into_values().rev().take(n) {
                self.keep_backup(id, format!("{} {label}", g.name()));
            }
        }
    }

    fn min_backups(&mut self, order: &[&BackupPoint]) {
        let n = self.input.policy.min_backups as usize;
        for b in order.iter().rev().take(n) {
            self.keep_backup(&b.id, format!("min_backups ({n} newest)"));
        }
    }

    /// Backups a restore or a running backup depends on, and all WAL after them on every
    /// timeline through them: a restore's target is not known here.
    fn in_use(&mut self) {
        for b in &self.facts.backups {
            if !self.input.in_use.contains(&b.id) {
                continue;
            }
            self.keep_backup(&b.id, "in use by a restore or a running backup".into());
            for t in self.timelines.clone() {
                if on_history(self.facts, t, b.timeline, b.stop_lsn) {
                    self.claim(
                        t,
                        b.start_lsn,
                        None,
                        format!(
                            "backup {} is in use: a restore from it may replay this",
                            b.id
                        ),
                    );
                }
            }
        }
    }

    /// The newest backup usable on the latest timeline, and all WAL after its start: a restore
    /// to the latest point then reaches as far as before.
    fn latest(&mut self) {
        let Some(t) = self.latest else { return };
        let Some(b) = usable(self.facts, t).last().copied() else {
            return;
        };
        self.keep_backup(
            &b.id,
            format!("newest backup on the latest timeline {t} (latest must stay restorable)"),
        );
        self.claim(
            t,
            b.start_lsn,
            None,
            format!("latest on timeline {t} (from backup {})", b.id),
        );
    }

    fn running_backup(&mut self) {
        let (Some(start), Some(t)) = (self.input.running_backup_start, self.latest) else {
            return;
        };
        self.claim(
            t,
            start,
            None,
            format!("a running backup needs WAL from {start} on"),
        );
    }

    /// Each kept backup keeps what it needs to become consistent.
    fn held(&mut self) {
        for b in &self.facts.backups {
            if let Some(why) = self.input.held.get(&b.id) {
                self.keep_backup(&b.id, why.clone());
            }
        }
    }

    fn kept_backups_wal(&mut self) {
        let kept: Vec<&BackupPoint> = self
            .facts
            .backups
            .iter()
            .filter(|b| self.keep.contains_key(&b.id))
            .collect();
        for b in kept {
            self.claim(
                b.timeline,
                b.start_lsn,
                Some(b.stop_lsn),
                format!(
                    "needed by backup {} ({}..{})",
                    b.id, b.start_lsn, b.stop_lsn
                ),
            );
        }
    }

    /// Why the file (tli, segno) is kept; empty when nothing needs it.
    fn covering(&self, tli: TimelineId, segno: u64) -> Vec<String> {
        self.claims
            .iter()
            .filter(|c| c.from <= segno && c.to.is_none_or(|to| segno <= to))
            .filter(|c| self.on_timeline(c.timeline, tli, segno))
            .map(|c| c.reason.clone())
            .collect()
    }

    fn wal_decision(&self, name: &str) -> Decision {
        let item = Item::Wal(name.to_owned());
        let Ok(file) = name.parse::<WalFileName>() else {
            return keep(item, "not a WAL file name; left alone");
        };
        if file.kind() == WalFileKind::History {
            return keep(item, "timeline history");
        }
        if self.latest.is_none_or(|l| file.timeline() > l) {
            return keep(
                item,
                "on a timeline newer than the catalog knows; kept until it is indexed",
            );
        }
        let size = u32::try_from(self.facts.segment_size)
            .ok()
            .filter(|s| *s > 0);
        let Some(segno) = size.and_then(|s| file.segment_number(s)) else {
            return keep(
                item,
                "its segment number is unknown for this cluster's segment size; left alone",
            );
        };
        let reasons = match file.kind() {
            WalFileKind::Backup => self.backup_file_reasons(&file, segno),
            _ => self.covering(file.timeline(), segno),
        };
        if reasons.is_empty() {
            Decision {
                item,
                keep: false,
                reasons: vec![
                    "no kept backup, the recovery window, a restore or a running backup needs it"
                        .into(),
                ],
            }
        } else {
            Decision {
                item,
                keep: true,
                reasons: dedup(reasons),
            }
        }
    }

    /// A `.backup` file stays iff the WAL of its backup's range stays (for a backup the facts
    /// do not know, its start segment).
    fn backup_file_reasons(&self, file: &WalFileName, segno: u64) -> Vec<String> {
        let offset = file
            .as_str()
            .get(25..33)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .unwrap_or(0);
        let start = Lsn(segno * self.segment_size + offset);
        let backup = self
            .facts
            .backups
            .iter()
            .find(|b| b.timeline == file.timeline() && b.start_lsn == start);
        let Some(b) = backup else {
            return self.covering(file.timeline(), segno);
        };
        let anc = ancestry(self.facts, b.timeline);
        let mut reasons = Vec::new();
        for s in self.segno(b.start_lsn)..=self.segno(b.stop_lsn) {
            let t = timeline_for(&anc, s);
            let r = self.covering(t, s);
            if r.is_empty() {
                return Vec::new();
            }
            reasons.extend(r);
        }
        reasons
    }
}

#[cfg(test)]
mod tests;
