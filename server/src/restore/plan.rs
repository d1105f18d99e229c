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
//!   the newest timeline on that history that had begun by then;
//! - no plan crosses a hole of the continuity ledger (a missing or damaged segment): a target
//!   beyond one is refused with the hole and what is restorable, `latest` included;
//! - every plan says which LSN recovery must reach at least and the last segment it needs,
//!   so that a delivery can prove it got there (and fail rather than promote early).

use std::collections::BTreeMap;
use std::fmt;

use walvault_proto::{utc_time_micros, Lsn, TimelineId};

use crate::wal::ledger::{self, ArchiveView, Hole, Ledger, PrunedRange, SegKey};
pub use crate::wal::ledger::{segment_name, timeline_for};

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
    /// Tablespaces created in the segment: (LSN, OID, location).
    pub tablespaces_created: Vec<(Lsn, u32, String)>,
}

/// A tablespace the WAL a restore replays creates. Replay makes its directory at the
/// source's location on the machine that replays (and points `pg_tblspc` there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablespaceCreation {
    pub lsn: Lsn,
    pub oid: u32,
    pub location: String,
}

/// Everything the planner looks at for one cluster.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub segment_size: u64,
    pub backups: Vec<BackupPoint>,
    /// Each timeline's history file: (parent, switch LSN), oldest first. Timeline 1 has none.
    pub histories: BTreeMap<TimelineId, Vec<(TimelineId, Lsn)>>,
    /// The time index, by (timeline, segment number): every archived segment.
    pub segments: BTreeMap<(TimelineId, u64), SegmentFacts>,
    /// Archived segments that cannot be read back as archived, and why: nothing is replayed
    /// across them until a good copy repairs them.
    pub damaged: BTreeMap<SegKey, String>,
    /// What the retention policy pruned on purpose.
    pub pruned: Vec<PrunedRange>,
    /// Segments whose records the time index could not decode, and why (they are archived
    /// and intact; only what they say about commits is unknown).
    pub unreadable: BTreeMap<SegKey, String>,
}

impl Facts {
    /// The continuity ledger of these facts.
    pub fn ledger(&self) -> Ledger {
        Ledger::compute(&ArchiveView {
            segment_size: self.segment_size,
            present: self.segments.keys().copied().collect(),
            histories: self.histories.clone(),
            damaged: self.damaged.clone(),
            pruned: self.pruned.clone(),
        })
    }
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
    /// Archived WAL recovery replays: from the snapshot's redo point (where PostgreSQL
    /// starts, its last checkpoint's) to the target (or the end).
    pub wal_bytes: u64,
    /// The LSN recovery must replay to at least: the end of the archive for `latest`, the
    /// target itself, or the last commit a time target must include.
    pub reach: Lsn,
    /// The commit time recovery reaches, where the plan knows it.
    pub reach_micros: Option<i64>,
    /// The last segment the restore needs: a file up to it that the archive cannot give must
    /// stop recovery, never end it.
    pub through: SegKey,
    /// The first tablespace the replayed WAL creates, if any.
    pub creates_tablespace: Option<TablespaceCreation>,
}

/// A stretch of a timeline that can be restored to any point of: from the consistent point of
/// its oldest backup to the end of the WAL that follows without a hole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub from: BackupPoint,
    /// Backups whose WAL leads into this span.
    pub backups: usize,
    pub last_commit: Option<(Lsn, i64)>,
    /// The latest commit time in the span.
    pub max_micros: Option<i64>,
    pub end_lsn: Lsn,
    pub segments: usize,
    /// The hole that ends the span; `None`: it runs to the end of the archive.
    pub until: Option<Hole>,
}

/// One timeline's restorable window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub timeline: TimelineId,
    pub parent: Option<(TimelineId, Lsn)>,
    /// Restorable stretches, oldest first.
    pub spans: Vec<Span>,
    /// Every hole of the timeline's history (the ledger's), oldest first.
    pub holes: Vec<Hole>,
    /// Segments on the history whose records could not be decoded, and why.
    pub unreadable: Vec<(SegKey, String)>,
    pub segment_size: u64,
    /// Backups on this timeline's history.
    pub backups: usize,
    /// Segments inside the spans.
    pub segments: usize,
}

impl Window {
    /// The oldest backup a restore on this timeline can start from.
    pub fn oldest(&self) -> Option<&BackupPoint> {
        self.spans.first().map(|s| &s.from)
    }

    fn newest(&self) -> Option<&Span> {
        self.spans.last()
    }

    pub fn end_lsn(&self) -> Option<Lsn> {
        self.newest().map(|s| s.end_lsn)
    }

    pub fn max_micros(&self) -> Option<i64> {
        self.newest().and_then(|s| s.max_micros)
    }

    pub fn last_commit(&self) -> Option<(Lsn, i64)> {
        self.newest().and_then(|s| s.last_commit)
    }

    /// `restorable from … to …`, for errors: every span, then the holes that are not the
    /// retention policy's doing.
    pub fn describe(&self) -> String {
        let mut out = if self.spans.is_empty() {
            if self.backups == 0 {
                format!("timeline {} has no backup to restore from", self.timeline)
            } else {
                format!(
                    "timeline {} has no backup whose WAL is complete in the archive",
                    self.timeline
                )
            }
        } else {
            let spans: Vec<String> = self.spans.iter().map(describe_span).collect();
            format!(
                "timeline {} is restorable {}",
                self.timeline,
                spans.join("; and ")
            )
        };
        for h in self
            .holes
            .iter()
            .filter(|h| h.cause != ledger::HoleCause::Pruned)
        {
            out.push_str("; ");
            out.push_str(&h.describe(self.segment_size));
        }
        out
    }
}

fn describe_span(s: &Span) -> String {
    let to = match (s.max_micros, s.last_commit) {
        (Some(t), Some((lsn, _))) => format!(
            "{} (the last archived commit, LSN {lsn}; WAL up to {})",
            utc_time_micros(t),
            s.end_lsn
        ),
        _ if s.end_lsn > s.from.stop_lsn => {
            format!("LSN {} (no commit archived after the backup)", s.end_lsn)
        }
        _ => "its consistent point (no WAL archived after it)".into(),
    };
    let until = if s.until.is_some() {
        ", where a hole begins"
    } else {
        ""
    };
    format!(
        "from {} (backup {}, LSN {}) to {to}{until}",
        utc_time_micros(s.from.consistent_micros),
        s.from.id,
        s.from.stop_lsn
    )
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
    #[error("{target} cannot be reached from backup {backup}: {hole}; {window}")]
    Gap {
        target: String,
        backup: String,
        /// The hole (or the missing end of the archive) in words.
        hole: String,
        window: String,
    },
}

/// Timelines on `timeline`'s history, oldest first, with the segment number each begins at
/// and the LSN at which it was left (`None` for `timeline` itself).
pub fn ancestry(facts: &Facts, timeline: TimelineId) -> Vec<(TimelineId, u64, Option<Lsn>)> {
    ledger::ancestry(&facts.histories, facts.segment_size, timeline)
}

/// Whether the point (tli, lsn) lies on `timeline`'s history.
pub fn on_history(facts: &Facts, timeline: TimelineId, tli: TimelineId, lsn: Lsn) -> bool {
    ancestry(facts, timeline)
        .iter()
        .any(|(t, _, end)| *t == tli && end.is_none_or(|e| lsn <= e))
}

/// The archived, intact segments readable in order from `from` along `timeline`'s history,
/// up to the first one the archive cannot give (missing or damaged).
struct Chain<'a> {
    segments: Vec<(TimelineId, u64, &'a SegmentFacts)>,
    /// The first segment the archive cannot give: (timeline, segno).
    missing: SegKey,
}

fn chain<'a>(facts: &'a Facts, timeline: TimelineId, from: Lsn) -> Chain<'a> {
    let anc = ancestry(facts, timeline);
    let mut segno = from.0 / facts.segment_size.max(1);
    let mut segments = Vec::new();
    loop {
        let tli = timeline_for(&anc, segno);
        match facts.segments.get(&(tli, segno)) {
            Some(s) if !facts.damaged.contains_key(&(tli, segno)) => segments.push((tli, segno, s)),
            _ => {
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
    fn last_key(&self) -> Option<SegKey> {
        self.segments.last().map(|(t, s, _)| (*t, *s))
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
    let ledger = facts.ledger();
    timelines
        .into_iter()
        .map(|t| window_in(facts, &ledger, t))
        .collect()
}

pub fn window(facts: &Facts, timeline: TimelineId) -> Window {
    window_in(facts, &facts.ledger(), timeline)
}

fn window_in(facts: &Facts, ledger: &Ledger, timeline: TimelineId) -> Window {
    let backups = usable(facts, timeline);
    let parent = facts
        .histories
        .get(&timeline)
        .and_then(|h| h.last().copied());
    let holes: Vec<Hole> = ledger
        .timeline(timeline)
        .map(|l| l.holes.clone())
        .unwrap_or_default();
    let anc = ancestry(facts, timeline);
    let unreadable = facts
        .unreadable
        .iter()
        .filter(|((t, s), _)| timeline_for(&anc, *s) == *t)
        .map(|(k, why)| (*k, why.clone()))
        .collect();
    // Backups by start; one span per run of WAL they lead into. A backup whose own WAL is
    // incomplete never becomes consistent and starts nothing.
    let mut by_start = backups.clone();
    by_start.sort_by_key(|b| (b.start_lsn, b.stop_lsn, b.id.clone()));
    let seg = facts.segment_size.max(1);
    let mut spans: Vec<Span> = Vec::new();
    let mut current: Option<(u64, SegKey)> = None;
    for b in by_start {
        let start = b.start_lsn.0 / seg;
        if let (Some((last, _)), Some(span)) = (current, spans.last_mut()) {
            if start <= last {
                let reaches = span.end_lsn >= b.stop_lsn;
                if reaches {
                    span.backups += 1;
                    if b.stop_lsn < span.from.stop_lsn {
                        span.from = b.clone();
                    }
                }
                continue;
            }
        }
        let c = chain(facts, timeline, b.start_lsn);
        let Some(end) = c.end_lsn() else {
            continue;
        };
        if end < b.stop_lsn {
            continue;
        }
        let last = c.last_key().map(|(_, s)| s).unwrap_or(start);
        current = Some((last, c.missing));
        spans.push(Span {
            from: b.clone(),
            backups: 1,
            last_commit: c.last_commit(),
            max_micros: c.max_micros(),
            end_lsn: end,
            segments: c.segments.len(),
            until: holes.iter().find(|h| h.first.1 == c.missing.1).cloned(),
        });
    }
    let segments = spans.iter().map(|s| s.segments).sum();
    Window {
        timeline,
        parent,
        spans,
        holes,
        unreadable,
        segment_size: seg,
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
    let ledger = facts.ledger();
    let win = window_in(facts, &ledger, timeline);
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
    // The WAL from the chosen snapshot must reach the target without crossing a hole.
    let seg = facts.segment_size.max(1);
    let c = chain(facts, timeline, chosen.start_lsn);
    let hole = ledger
        .timeline(timeline)
        .and_then(|l| l.hole_at(c.missing.1))
        .cloned();
    let gap = || PlanError::Gap {
        target: target_text.clone(),
        backup: chosen.id.clone(),
        hole: match &hole {
            Some(h) => h.describe(seg),
            None => format!(
                "the archive ends before WAL segment {} of timeline {} (not archived yet?)",
                segment_name(c.missing.0, c.missing.1, seg),
                c.missing.0
            ),
        },
        window: win.describe(),
    };
    // Past the end of the chain: a hole is named, the plain end of the archive is the window.
    let beyond = || if hole.is_some() { gap() } else { outside() };
    let end = match c.end_lsn() {
        Some(e) if e >= chosen.stop_lsn => e,
        _ => return Err(gap()),
    };
    let anc = ancestry(facts, timeline);
    let key_of = |lsn: Lsn| {
        let s = lsn.0 / seg;
        (timeline_for(&anc, s), s)
    };
    let (reach, reach_micros, through) = match &req.target {
        Target::Time(t) => {
            // Recovery stops at the first commit later than the target (or, exclusive, at the
            // first not earlier); without one it runs out of WAL and fails.
            let stops = |m: i64| if req.inclusive { m > *t } else { m >= *t };
            let Some(i) = c
                .segments
                .iter()
                .position(|(_, _, s)| s.max_micros.is_some_and(stops))
            else {
                return Err(beyond());
            };
            // Every commit before that segment is earlier than the target: it is replayed.
            let included = c.segments[..i]
                .iter()
                .rev()
                .find_map(|(_, _, s)| s.last_commit)
                .map(|(l, _)| l);
            let (tli, segno, _) = c.segments[i];
            (
                included.unwrap_or(chosen.stop_lsn).max(chosen.stop_lsn),
                Some(*t),
                (tli, segno),
            )
        }
        Target::Lsn(l) | Target::Xid { lsn: l, .. } => {
            if *l >= end {
                return Err(beyond());
            }
            let reach = if req.inclusive { *l } else { chosen.stop_lsn };
            (reach.max(chosen.stop_lsn), None, key_of(*l))
        }
        Target::RestorePoint(_) => {
            let l = target_lsn.unwrap_or(end);
            if l >= end {
                return Err(beyond());
            }
            (l.max(chosen.stop_lsn), None, key_of(l))
        }
        Target::Immediate => (
            chosen.stop_lsn,
            Some(chosen.consistent_micros),
            key_of(Lsn(chosen.stop_lsn.0.saturating_sub(1))),
        ),
        Target::Latest => {
            // Latest means everything archived: WAL beyond a hole would be lost silently.
            if hole.is_some() {
                return Err(gap());
            }
            (
                end,
                c.max_micros(),
                c.last_key().unwrap_or_else(|| key_of(end)),
            )
        }
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
    let replay_to = match &req.target {
        Target::Latest => end,
        _ => reach.max(target_lsn.unwrap_or(reach)),
    };
    let creates_tablespace = first_tablespace_created(facts, timeline, chosen.start_lsn, replay_to);
    Ok(Plan {
        backup: chosen.clone(),
        timeline,
        settings,
        target: target_text,
        wal_bytes: replay_to.0.saturating_sub(chosen.start_lsn.0),
        reach,
        reach_micros,
        through,
        creates_tablespace,
    })
}

/// The first tablespace created in [`from`, `to`) along `timeline`'s history.
fn first_tablespace_created(
    facts: &Facts,
    timeline: TimelineId,
    from: Lsn,
    to: Lsn,
) -> Option<TablespaceCreation> {
    let anc = ancestry(facts, timeline);
    let seg = facts.segment_size.max(1);
    (from.0 / seg..=to.0 / seg)
        .filter_map(|n| facts.segments.get(&(timeline_for(&anc, n), n)))
        .flat_map(|s| s.tablespaces_created.iter())
        .find(|(lsn, _, _)| *lsn >= from && *lsn < to)
        .map(|(lsn, oid, location)| TablespaceCreation {
            lsn: *lsn,
            oid: *oid,
            location: location.clone(),
        })
}

/// The LSN of a restore point on `timeline`'s history (in every archived segment of it, so
/// that one beyond a hole is refused as such), refusing names PostgreSQL would stop at
/// ambiguously.
fn restore_point_lsn(
    facts: &Facts,
    timeline: TimelineId,
    name: &str,
    candidates: &[&BackupPoint],
) -> Result<Lsn, PlanError> {
    let from = candidates.first().map(|b| b.start_lsn.0).unwrap_or(0) / facts.segment_size.max(1);
    let anc = ancestry(facts, timeline);
    let all: Vec<(&str, Lsn)> = facts
        .segments
        .iter()
        .filter(|((t, s), _)| *s >= from && timeline_for(&anc, *s) == *t)
        .flat_map(|(_, s)| s.restore_points.iter().map(|(n, l)| (n.as_str(), *l)))
        .collect();
    let mut all = all;
    all.sort_by_key(|(_, l)| *l);
    let hits: Vec<Lsn> = all
        .iter()
        .filter(|(n, _)| *n == name)
        .map(|(_, l)| *l)
        .collect();
    let Some(last) = hits.last().copied() else {
        let mut known: Vec<&str> = all.iter().map(|(n, _)| *n).collect();
        known.sort();
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
