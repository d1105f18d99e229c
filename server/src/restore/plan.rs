//! The point-in-time planner (DESIGN §8): which snapshot to clone, and which recovery
//! settings bring it to the target. Pure: it sees the backups, the timelines' histories and
//! the time index as plain values, so every edge case is a unit test.
//!
//! The rules PostgreSQL imposes, and how the planner keeps them:
//! - recovery checks its target on every record it replays from the backup's redo point; a
//!   target met before the backup is consistent (its stop LSN) is a fatal error, so the
//!   snapshot's stop LSN must be at or before the target's LSN, and for a time target no commit
//!   up to the stop LSN may be later than the target;
//! - a recovery that runs out of WAL before its target fails (PostgreSQL 13+), so a target
//!   must lie before the end of the archived WAL (for a time: before the last archived
//!   commit's timestamp);
//! - WAL is read along the target timeline's history: for each segment number, the file of
//!   the newest timeline on that history that had begun by then.

use std::collections::BTreeMap;
use std::fmt;

use walvault_proto::{utc_time_micros, Lsn, TimelineId};

/// A backup as the planner needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupPoint {
    pub id: String,
    pub timeline: TimelineId,
    pub start_lsn: Lsn,
    /// Where recovery of this snapshot becomes consistent.
    pub stop_lsn: Lsn,
    /// The latest commit (or abort) time the consistent snapshot can contain: no commit
    /// before `stop_lsn` is later. Microseconds since the Unix epoch.
    pub consistent_micros: i64,
}

/// What the time index holds for one archived segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentFacts {
    /// End of the last valid record that starts in the segment.
    pub end_lsn: Lsn,
    /// The last commit or abort in LSN order: (LSN, time).
    pub last_commit: Option<(Lsn, i64)>,
    /// The latest commit or abort time in the segment.
    pub max_micros: Option<i64>,
    pub restore_points: Vec<(String, Lsn)>,
}

/// Everything the planner looks at for one cluster.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub segment_size: u64,
    pub backups: Vec<BackupPoint>,
    /// Each timeline's history file: (parent, switch LSN), oldest first. Timeline 1 has none.
    pub histories: BTreeMap<TimelineId, Vec<(TimelineId, Lsn)>>,
    /// The time index, by (timeline, segment number).
    pub segments: BTreeMap<(TimelineId, u64), SegmentFacts>,
}

/// A target with everything resolved to what the planner compares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Microseconds since the Unix epoch.
    Time(i64),
    Lsn(Lsn),
    /// A transaction, with the LSN of its commit or abort record (found by the caller).
    Xid {
        xid: u32,
        lsn: Lsn,
    },
    RestorePoint(String),
    Immediate,
    Latest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Promote,
    Pause,
    Shutdown,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Pause => "pause",
            Action::Shutdown => "shutdown",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub target: Target,
    /// `None`: the latest timeline.
    pub timeline: Option<TimelineId>,
    /// Use this snapshot instead of choosing one.
    pub backup: Option<String>,
    pub action: Action,
    pub inclusive: bool,
}

/// What to restore and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub backup: BackupPoint,
    pub timeline: TimelineId,
    /// `recovery_target*` settings, in the order they are written; values unquoted.
    pub settings: Vec<(String, String)>,
    /// The target in words.
    pub target: String,
    /// Archived WAL between the snapshot's consistent point and the target (or the end).
    pub wal_bytes: u64,
}

/// One timeline's restorable window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub timeline: TimelineId,
    pub parent: Option<(TimelineId, Lsn)>,
    /// The oldest backup usable on this timeline.
    pub oldest: Option<BackupPoint>,
    pub last_commit: Option<(Lsn, i64)>,
    /// The latest commit time on the history from the oldest backup.
    pub max_micros: Option<i64>,
    pub end_lsn: Option<Lsn>,
    pub backups: usize,
    pub segments: usize,
}

impl Window {
    /// `from … to …`, for errors.
    pub fn describe(&self) -> String {
        let Some(oldest) = &self.oldest else {
            return format!("timeline {} has no backup to restore from", self.timeline);
        };
        let to = match (self.max_micros, self.last_commit, self.end_lsn) {
            (Some(t), Some((lsn, _)), Some(end)) => format!(
                "{} (the last archived commit, LSN {lsn}; WAL up to {end})",
                utc_time_micros(t)
            ),
            (_, _, Some(end)) => format!("LSN {end} (no commit archived yet)"),
            _ => "its consistent point (no WAL archived after it)".into(),
        };
        format!(
            "timeline {} is restorable from {} (backup {}, LSN {}) to {to}",
            self.timeline,
            utc_time_micros(oldest.consistent_micros),
            oldest.id,
            oldest.stop_lsn
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the cluster has no backup yet; run `walvault backup` on its host first")]
    NoBackup,
    #[error("timeline {0} is not in the archive (no history file and no WAL)")]
    UnknownTimeline(TimelineId),
    #[error("backup {0} does not exist")]
    UnknownBackup(String),
    #[error("backup {backup} is not on the history of timeline {timeline}")]
    BackupOffHistory {
        backup: String,
        timeline: TimelineId,
    },
    #[error("{target} is outside the window: {window}")]
    OutsideWindow { target: String, window: String },
    #[error("{target} comes before backup {backup} is consistent (LSN {stop_lsn}, {time}); choose an older backup or a later target")]
    BeforeBackup {
        target: String,
        backup: String,
        stop_lsn: Lsn,
        time: String,
    },
    #[error("restore point {name:?} is not in the archived WAL of timeline {timeline}{known}")]
    UnknownRestorePoint {
        name: String,
        timeline: TimelineId,
        known: String,
    },
    #[error("restore point {name:?} was created more than once (at {lsns}) after backup {backup} began; give --lsn instead")]
    AmbiguousRestorePoint {
        name: String,
        lsns: String,
        backup: String,
    },
    #[error("the archive lacks WAL segment {segment} on timeline {timeline}, which the restore from backup {backup} needs to reach {target}")]
    Gap {
        segment: String,
        timeline: TimelineId,
        backup: String,
        target: String,
    },
}

/// Timelines on `timeline`'s history, oldest first, with the segment number each begins at
/// and the LSN at which it was left (`None` for `timeline` itself).
pub fn ancestry(facts: &Facts, timeline: TimelineId) -> Vec<(TimelineId, u64, Option<Lsn>)> {
    let seg = facts.segment_size.max(1);
    let entries = facts.histories.get(&timeline).cloned().unwrap_or_default();
    let mut out = Vec::new();
    let mut begin = 0;
    for (parent, switch) in &entries {
        out.push((*parent, begin, Some(*switch)));
        begin = switch.0 / seg;
    }
    out.push((timeline, begin, None));
    out
}

/// Whether the point (tli, lsn) lies on `timeline`'s history.
pub fn on_history(facts: &Facts, timeline: TimelineId, tli: TimelineId, lsn: Lsn) -> bool {
    ancestry(facts, timeline)
        .iter()
        .any(|(t, _, end)| *t == tli && end.is_none_or(|e| lsn <= e))
}

/// The timeline whose segment file holds segment number `segno` on a history (`ancestry`).
pub fn timeline_for(ancestry: &[(TimelineId, u64, Option<Lsn>)], segno: u64) -> TimelineId {
    ancestry
        .iter()
        .rev()
        .find(|(_, begin, _)| *begin <= segno)
        .map(|(t, _, _)| *t)
        .unwrap_or(ancestry[0].0)
}

/// The segment file name of (timeline, segno).
pub fn segment_name(timeline: TimelineId, segno: u64, segment_size: u64) -> String {
    let per_xlogid = 0x1_0000_0000 / segment_size.max(1);
    format!(
        "{:08X}{:08X}{:08X}",
        timeline.0,
        segno / per_xlogid,
        segno % per_xlogid
    )
}

/// The archived segments readable in order from `from` along `timeline`'s history, up to
/// the first missing one.
struct Chain<'a> {
    segments: Vec<(TimelineId, u64, &'a SegmentFacts)>,
    /// The first segment the archive lacks: (timeline, segno).
    missing: (TimelineId, u64),
}

fn chain<'a>(facts: &'a Facts, timeline: TimelineId, from: Lsn) -> Chain<'a> {
    let anc = ancestry(facts, timeline);
    let mut segno = from.0 / facts.segment_size.max(1);
    let mut segments = Vec::new();
    loop {
        let tli = timeline_for(&anc, segno);
        match facts.segments.get(&(tli, segno)) {
            Some(s) => segments.push((tli, segno, s)),
            None => {
                return Chain {
                    segments,
                    missing: (tli, segno),
                }
            }
        }
        segno += 1;
    }
}

impl Chain<'_> {
    /// Whether the archive holds WAL on this history beyond the first missing segment.
    fn more_beyond(&self, facts: &Facts, timeline: TimelineId) -> bool {
        let anc = ancestry(facts, timeline);
        facts
            .segments
            .keys()
            .any(|(t, s)| *s > self.missing.1 && timeline_for(&anc, *s) == *t)
    }

    fn end_lsn(&self) -> Option<Lsn> {
        self.segments.last().map(|(_, _, s)| s.end_lsn)
    }
    fn max_micros(&self) -> Option<i64> {
        self.segments
            .iter()
            .filter_map(|(_, _, s)| s.max_micros)
            .max()
    }
    fn last_commit(&self) -> Option<(Lsn, i64)> {
        self.segments
            .iter()
            .rev()
            .find_map(|(_, _, s)| s.last_commit)
    }
}

/// The newest timeline the archive knows of.
pub fn latest_timeline(facts: &Facts) -> Option<TimelineId> {
    let from_history = facts.histories.keys().max().copied();
    let from_wal = facts.segments.keys().map(|(t, _)| *t).max();
    let from_backups = facts.backups.iter().map(|b| b.timeline).max();
    [from_history, from_wal, from_backups]
        .into_iter()
        .flatten()
        .max()
}

fn known_timeline(facts: &Facts, t: TimelineId) -> bool {
    facts.histories.contains_key(&t)
        || facts.segments.keys().any(|(tl, _)| *tl == t)
        || facts.backups.iter().any(|b| b.timeline == t)
}

/// Backups usable on `timeline`, oldest first (by stop LSN).
pub fn usable(facts: &Facts, timeline: TimelineId) -> Vec<&BackupPoint> {
    let mut v: Vec<_> = facts
        .backups
        .iter()
        .filter(|b| on_history(facts, timeline, b.timeline, b.stop_lsn))
        .collect();
    v.sort_by_key(|b| (b.stop_lsn, b.id.clone()));
    v
}

/// Every timeline's window, oldest timeline first.
pub fn windows(facts: &Facts) -> Vec<Window> {
    let mut timelines: Vec<TimelineId> = facts
        .histories
        .keys()
        .copied()
        .chain(facts.segments.keys().map(|(t, _)| *t))
        .chain(facts.backups.iter().map(|b| b.timeline))
        .collect();
    timelines.sort();
    timelines.dedup();
    timelines.into_iter().map(|t| window(facts, t)).collect()
}

pub fn window(facts: &Facts, timeline: TimelineId) -> Window {
    let backups = usable(facts, timeline);
    let parent = facts
        .histories
        .get(&timeline)
        .and_then(|h| h.last().copied());
    let oldest = backups.first().map(|b| (*b).clone());
    let (last_commit, max_micros, end_lsn, segments) = match &oldest {
        Some(b) => {
            let c = chain(facts, timeline, b.start_lsn);
            (
                c.last_commit(),
                c.max_micros(),
                c.end_lsn(),
                c.segments.len(),
            )
        }
        None => (None, None, None, 0),
    };
    Window {
        timeline,
        parent,
        oldest,
        last_commit,
        max_micros,
        end_lsn,
        backups: backups.len(),
        segments,
    }
}

/// PostgreSQL's input format for a UTC timestamp with microseconds.
pub fn pg_timestamp(micros: i64) -> String {
    let s = utc_time_micros(micros);
    format!("{}+00", s.trim_end_matches(" UTC"))
}

fn describe_target(t: &Target) -> String {
    match t {
        Target::Time(m) => format!("time {}", utc_time_micros(*m)),
        Target::Lsn(l) => format!("LSN {l}"),
        Target::Xid { xid, lsn } => format!("transaction {xid} (ends at LSN {lsn})"),
        Target::RestorePoint(n) => format!("restore point {n:?}"),
        Target::Immediate => "the backup's consistent point".into(),
        Target::Latest => "the end of the archived WAL".into(),
    }
}

/// Plans a restore.
pub fn plan(facts: &Facts, req: &Request) -> Result<Plan, PlanError> {
    if facts.backups.is_empty() {
        return Err(PlanError::NoBackup);
    }
    let timeline = match req.timeline {
        Some(t) if !known_timeline(facts, t) => return Err(PlanError::UnknownTimeline(t)),
        Some(t) => t,
        None => latest_timeline(facts).ok_or(PlanError::NoBackup)?,
    };
    let win = window(facts, timeline);
    let target_text = describe_target(&req.target);
    let outside = || PlanError::OutsideWindow {
        target: target_text.clone(),
        window: win.describe(),
    };
    let candidates = usable(facts, timeline);
    if candidates.is_empty() {
        return Err(outside());
    }
    if let Some(id) = &req.backup {
        if !facts.backups.iter().any(|b| &b.id == id) {
            return Err(PlanError::UnknownBackup(id.clone()));
        }
        if !candidates.iter().any(|b| &b.id == id) {
            return Err(PlanError::BackupOffHistory {
                backup: id.clone(),
                timeline,
            });
        }
    }
    // The target as an LSN the snapshot must not pass, where it has one.
    let target_lsn = match &req.target {
        Target::Lsn(l) => Some(*l),
        Target::Xid { lsn, .. } => Some(*lsn),
        Target::RestorePoint(name) => Some(restore_point_lsn(facts, timeline, name, &candidates)?),
        _ => None,
    };
    // Candidates that may serve, newest last.
    let fits = |b: &BackupPoint| match &req.target {
        Target::Time(t) => b.consistent_micros <= *t,
        Target::Immediate | Target::Latest => true,
        _ => target_lsn.is_some_and(|l| b.stop_lsn <= l),
    };
    let chosen = match &req.backup {
        Some(id) => {
            let b = candidates
                .iter()
                .find(|b| &b.id == id)
                .copied()
                .ok_or_else(|| PlanError::UnknownBackup(id.clone()))?;
            if !fits(b) {
                return Err(PlanError::BeforeBackup {
                    target: target_text,
                    backup: b.id.clone(),
                    stop_lsn: b.stop_lsn,
                    time: utc_time_micros(b.consistent_micros),
                });
            }
            b
        }
        None => match candidates.iter().rev().find(|b| fits(b)) {
            Some(b) => *b,
            None => return Err(outside()),
        },
    };
    // The WAL from the chosen snapshot must reach the target.
    let c = chain(facts, timeline, chosen.start_lsn);
    let gap = || PlanError::Gap {
        segment: segment_name(c.missing.0, c.missing.1, facts.segment_size),
        timeline: c.missing.0,
        backup: chosen.id.clone(),
        target: target_text.clone(),
    };
    let end = c.end_lsn();
    if end.is_none_or(|e| e < chosen.stop_lsn) {
        return Err(gap());
    }
    let end = end.unwrap_or(chosen.stop_lsn);
    let reach = match &req.target {
        Target::Time(t) => {
            // Recovery stops at the first commit later than the target (or, exclusive, at the
            // first not earlier); without one it runs out of WAL and fails.
            let last = c.max_micros();
            let beyond = last.is_some_and(|m| if req.inclusive { m > *t } else { m >= *t });
            if !beyond {
                // Later WAL exists but the chain breaks first: name the gap.
                return Err(if c.more_beyond(facts, timeline) {
                    gap()
                } else {
                    outside()
                });
            }
            end
        }
        Target::Lsn(l) | Target::Xid { lsn: l, .. } => {
            if *l >= end {
                return Err(if c.more_beyond(facts, timeline) {
                    gap()
                } else {
                    outside()
                });
            }
            *l
        }
        Target::RestorePoint(_) => target_lsn.unwrap_or(end),
        Target::Immediate => chosen.stop_lsn,
        Target::Latest => end,
    };
    let mut settings = Vec::new();
    let mut set = |k: &str, v: String| settings.push((k.to_owned(), v));
    match &req.target {
        Target::Time(t) => set("recovery_target_time", pg_timestamp(*t)),
        Target::Lsn(l) => set("recovery_target_lsn", l.to_string()),
        Target::Xid { xid, .. } => set("recovery_target_xid", xid.to_string()),
        Target::RestorePoint(n) => set("recovery_target_name", n.clone()),
        Target::Immediate => set("recovery_target", "immediate".into()),
        Target::Latest => {}
    }
    let has_target = req.target != Target::Latest;
    if has_target && !req.inclusive {
        set("recovery_target_inclusive", "off".into());
    }
    set("recovery_target_timeline", timeline.0.to_string());
    if has_target {
        set("recovery_target_action", req.action.as_str().into());
    }
    Ok(Plan {
        backup: chosen.clone(),
        timeline,
        settings,
        target: target_text,
        wal_bytes: reach.0.saturating_sub(chosen.stop_lsn.0),
    })
}

/// The LSN of a restore point on `timeline`'s history, refusing names PostgreSQL would stop
/// at ambiguously.
fn restore_point_lsn(
    facts: &Facts,
    timeline: TimelineId,
    name: &str,
    candidates: &[&BackupPoint],
) -> Result<Lsn, PlanError> {
    let from = candidates.first().map(|b| b.start_lsn).unwrap_or(Lsn(0));
    let c = chain(facts, timeline, from);
    let all: Vec<(&str, Lsn)> = c
        .segments
        .iter()
        .flat_map(|(_, _, s)| s.restore_points.iter().map(|(n, l)| (n.as_str(), *l)))
        .collect();
    let hits: Vec<Lsn> = all
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, l)| *l)
        .collect();
    let Some(last) = hits.last().copied() else {
        let mut known: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
        known.dedup();
        return Err(PlanError::UnknownRestorePoint {
            name: name.to_owned(),
            timeline,
            known: if known.is_empty() {
                String::new()
            } else {
                format!("; it holds {}", known.join(", "))
            },
        });
    };
    // Recovery from the snapshot chosen for the last one would stop at an earlier one
    // created after that snapshot began.
    if let Some(b) = candidates.iter().rev().find(|b| b.stop_lsn <= last) {
        let after: Vec<String> = hits
            .iter()
            .filter(|l| **l >= b.start_lsn)
            .map(|l| l.to_string())
            .collect();
        if after.len() > 1 {
            return Err(PlanError::AmbiguousRestorePoint {
                name: name.to_owned(),
                lsns: after.join(", "),
                backup: b.id.clone(),
            });
        }
    }
    Ok(last)
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&describe_target(self))
    }
}

#[cfg(test)]
mod tests;
