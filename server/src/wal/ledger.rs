//! The WAL continuity ledger (DESIGN §5): for every timeline, the stretches of its history the
//! archive holds without a break, and every hole in between. Pure: it sees which segments are
//! archived, the timelines' histories, which archived files are damaged and which ranges the
//! retention policy pruned, so every shape is a unit or property test.
//!
//! A timeline's history is read the way PostgreSQL reads it: for each segment number, the
//! file of the newest timeline on the history that had begun by then ([`timeline_for`]).
//! Invariants:
//! - a hole is a run of segment numbers on a history that the archive cannot give, between
//!   the first archived segment of that history and its expected end: the last archived one,
//!   or, for a parent timeline, the segment before a child's switch (the child's history file
//!   proves the parent reached it);
//! - a damaged file is a hole (nothing can be replayed across it) until a good copy repairs
//!   it; a range the retention policy pruned is a hole too, but an expected one;
//! - the work is proportional to the archived files, never to the width of a hole: a hostile
//!   segment number far ahead costs one comparison.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use walvault_proto::{Lsn, TimelineId};

/// A segment: (timeline, segment number).
pub type SegKey = (TimelineId, u64);

/// Each timeline's history file: (parent, switch LSN), oldest first. Timeline 1 has none.
pub type Histories = BTreeMap<TimelineId, Vec<(TimelineId, Lsn)>>;

/// Timelines on `timeline`'s history, oldest first, with the segment number each begins at
/// and the LSN at which it was left (`None` for `timeline` itself).
pub fn ancestry(
    histories: &Histories,
    segment_size: u64,
    timeline: TimelineId,
) -> Vec<(TimelineId, u64, Option<Lsn>)> {
    let seg = segment_size.max(1);
    let entries = histories.get(&timeline).cloned().unwrap_or_default();
    let mut out = Vec::new();
    let mut begin = 0;
    for (parent, switch) in &entries {
        out.push((*parent, begin, Some(*switch)));
        begin = switch.0 / seg;
    }
    out.push((timeline, begin, None));
    out
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

/// A range of segment numbers of one timeline that the retention policy destroyed on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PrunedRange {
    pub timeline: TimelineId,
    pub first: u64,
    pub last: u64,
}

/// Adds `add` to `ranges`, merging neighbours; ranges stay sorted and disjoint.
pub fn merge_pruned(ranges: &mut Vec<PrunedRange>, add: impl IntoIterator<Item = PrunedRange>) {
    ranges.extend(add);
    ranges.sort();
    let mut out: Vec<PrunedRange> = Vec::with_capacity(ranges.len());
    for r in ranges.drain(..) {
        match out.last_mut() {
            Some(l) if l.timeline == r.timeline && r.first <= l.last.saturating_add(1) => {
                l.last = l.last.max(r.last);
            }
            _ => out.push(r),
        }
    }
    *ranges = out;
}

/// Pruned ranges of the segment numbers given (one timeline's), as maximal runs.
pub fn pruned_runs(timeline: TimelineId, segnos: &BTreeSet<u64>) -> Vec<PrunedRange> {
    let mut out: Vec<PrunedRange> = Vec::new();
    for &s in segnos {
        match out.last_mut() {
            Some(r) if r.last + 1 == s => r.last = s,
            _ => out.push(PrunedRange {
                timeline,
                first: s,
                last: s,
            }),
        }
    }
    out
}

/// What the ledger is computed from.
#[derive(Debug, Clone, Default)]
pub struct ArchiveView {
    pub segment_size: u64,
    /// Archived segments (damaged ones included).
    pub present: BTreeSet<SegKey>,
    pub histories: Histories,
    /// Archived segments that cannot be read back as archived, and why.
    pub damaged: BTreeMap<SegKey, String>,
    /// What retention destroyed on purpose.
    pub pruned: Vec<PrunedRange>,
}

/// Why a hole is there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoleCause {
    /// The archive never received these files (a failover, an archive_command outage).
    Missing,
    /// Archived, but damaged: the reason of the first.
    Damaged(String),
    /// Destroyed by the retention policy.
    Pruned,
}

/// A run of segment numbers on a timeline's history that the archive cannot give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hole {
    /// The timeline whose history this is.
    pub history: TimelineId,
    /// First and last missing segment, as (timeline of the file, segment number).
    pub first: SegKey,
    pub last: SegKey,
    pub cause: HoleCause,
}

impl Hole {
    pub fn count(&self) -> u64 {
        self.last.1 - self.first.1 + 1
    }

    /// The LSN where WAL stops before the hole.
    pub fn start_lsn(&self, segment_size: u64) -> Lsn {
        Lsn(self.first.1.saturating_mul(segment_size))
    }

    /// "00000001000000000000000B" or "00000001000000000000000B … 00000001000000000000000F
    /// (5 segments)".
    pub fn files(&self, segment_size: u64) -> String {
        let first = segment_name(self.first.0, self.first.1, segment_size);
        if self.first == self.last {
            first
        } else {
            format!(
                "{first} … {} ({} segments)",
                segment_name(self.last.0, self.last.1, segment_size),
                self.count()
            )
        }
    }

    /// The hole in words, with what to do about it.
    pub fn describe(&self, segment_size: u64) -> String {
        let files = self.files(segment_size);
        match &self.cause {
            HoleCause::Missing => format!(
                "the archive lacks {files} on the history of timeline {}; push them from a \
                 standby or host that still has them (walvault wal-push) to close the hole",
                self.history
            ),
            HoleCause::Damaged(why) => format!(
                "{files} on the history of timeline {} is damaged ({why}); push its good copy \
                 (walvault wal-push from a host that has it) to repair it",
                self.history
            ),
            HoleCause::Pruned => format!(
                "{files} on the history of timeline {} was pruned by the retention policy",
                self.history
            ),
        }
    }
}

impl fmt::Display for HoleCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("missing"),
            Self::Damaged(why) => write!(f, "damaged: {why}"),
            Self::Pruned => f.write_str("pruned"),
        }
    }
}

/// A run of consecutive segment numbers on a history that the archive holds intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stretch {
    pub first: SegKey,
    pub last: SegKey,
}

/// One timeline's view of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineLedger {
    pub timeline: TimelineId,
    /// Intact stretches along the history, oldest first.
    pub stretches: Vec<Stretch>,
    /// Holes between and after them, oldest first.
    pub holes: Vec<Hole>,
}

impl TimelineLedger {
    /// The hole that begins at or covers segment `segno`, if any.
    pub fn hole_at(&self, segno: u64) -> Option<&Hole> {
        self.holes
            .iter()
            .find(|h| h.first.1 <= segno && segno <= h.last.1)
    }

    /// Holes that are not the retention policy's doing.
    pub fn unexpected_holes(&self) -> impl Iterator<Item = &Hole> {
        self.holes.iter().filter(|h| h.cause != HoleCause::Pruned)
    }
}

/// The whole ledger: one entry per timeline the archive knows of, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    pub segment_size: u64,
    pub timelines: Vec<TimelineLedger>,
}

impl Ledger {
    pub fn compute(view: &ArchiveView) -> Self {
        let mut timelines: BTreeSet<TimelineId> = view.histories.keys().copied().collect();
        timelines.extend(view.present.iter().map(|(t, _)| *t));
        Ledger {
            segment_size: view.segment_size.max(1),
            timelines: timelines
                .into_iter()
                .map(|t| timeline_ledger(view, t))
                .collect(),
        }
    }

    pub fn timeline(&self, t: TimelineId) -> Option<&TimelineLedger> {
        self.timelines.iter().find(|l| l.timeline == t)
    }

    /// Holes that are not the retention policy's doing, each reported once even when several
    /// histories share it (the history named is the newest that has it).
    pub fn unexpected_holes(&self) -> Vec<&Hole> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for l in self.timelines.iter().rev() {
            for h in l.unexpected_holes() {
                if seen.insert((h.first, h.last)) {
                    out.push(h);
                }
            }
        }
        out.sort_by_key(|h| (h.first.1, h.first.0));
        out
    }
}

/// The segment a child's history file proves its parent reached: the one before the switch.
fn expected_end(view: &ArchiveView, timeline: TimelineId) -> Option<u64> {
    let seg = view.segment_size.max(1);
    view.histories
        .values()
        .filter_map(|h| h.last())
        .filter(|(parent, _)| *parent == timeline)
        .map(|(_, switch)| (switch.0 / seg).saturating_sub(1))
        .max()
}

fn timeline_ledger(view: &ArchiveView, timeline: TimelineId) -> TimelineLedger {
    let anc = ancestry(&view.histories, view.segment_size, timeline);
    // Segments read along this history, in order: each timeline's files from where it begins
    // up to where the next one takes over.
    let mut on_history: Vec<(u64, TimelineId)> = Vec::new();
    for (i, (t, begin, _)) in anc.iter().enumerate() {
        let end = anc.get(i + 1).map(|(_, b, _)| *b);
        let lo = (*t, *begin);
        for &(_, s) in view.present.range(lo..=(*t, u64::MAX)) {
            if end.is_some_and(|e| s >= e) {
                break;
            }
            on_history.push((s, *t));
        }
    }
    let mut out = TimelineLedger {
        timeline,
        stretches: Vec::new(),
        holes: Vec::new(),
    };
    let Some(&(first_segno, _)) = on_history.first() else {
        return out;
    };
    let last_archived = on_history.last().map(|(s, _)| *s).unwrap_or(first_segno);
    let end = expected_end(view, timeline)
        .unwrap_or(last_archived)
        .max(last_archived);

    let mut cur: Option<Stretch> = None;
    let mut next = first_segno;
    let emit_gap = |out: &mut TimelineLedger, from: u64, to: u64| {
        for h in gap_holes(view, &anc, timeline, from, to) {
            out.holes.push(h);
        }
    };
    for &(s, t) in &on_history {
        if s > next {
            if let Some(st) = cur.take() {
                out.stretches.push(st);
            }
            emit_gap(&mut out, next, s - 1);
        }
        if let Some(why) = view.damaged.get(&(t, s)) {
            if let Some(st) = cur.take() {
                out.stretches.push(st);
            }
            push_hole(
                &mut out.holes,
                Hole {
                    history: timeline,
                    first: (t, s),
                    last: (t, s),
                    cause: HoleCause::Damaged(why.clone()),
                },
            );
        } else {
            match &mut cur {
                Some(st) => st.last = (t, s),
                None => {
                    cur = Some(Stretch {
                        first: (t, s),
                        last: (t, s),
                    })
                }
            }
        }
        next = s + 1;
    }
    if let Some(st) = cur.take() {
        out.stretches.push(st);
    }
    if end >= next {
        emit_gap(&mut out, next, end);
    }
    out
}

/// Appends `h`, merging it into the previous hole when they touch and share a cause.
fn push_hole(holes: &mut Vec<Hole>, h: Hole) {
    if let Some(last) = holes.last_mut() {
        let same = match (&last.cause, &h.cause) {
            (HoleCause::Damaged(_), HoleCause::Damaged(_)) => true,
            (a, b) => a == b,
        };
        if same && last.last.1 + 1 == h.first.1 {
            last.last = h.last;
            return;
        }
    }
    holes.push(h);
}

/// The holes of the missing segment numbers `from..=to` on a history, split where the cause
/// changes (pruned or not) and where the file's timeline changes.
fn gap_holes(
    view: &ArchiveView,
    anc: &[(TimelineId, u64, Option<Lsn>)],
    history: TimelineId,
    from: u64,
    to: u64,
) -> Vec<Hole> {
    // Cut points: where a timeline of the history begins, and where pruned ranges start or end.
    let mut cuts: BTreeSet<u64> = BTreeSet::new();
    cuts.insert(from);
    for (_, begin, _) in anc {
        if *begin > from && *begin <= to {
            cuts.insert(*begin);
        }
    }
    for r in &view.pruned {
        for c in [r.first, r.last.saturating_add(1)] {
            if c > from && c <= to {
                cuts.insert(c);
            }
        }
    }
    let cuts: Vec<u64> = cuts.into_iter().collect();
    let mut out: Vec<Hole> = Vec::new();
    for (i, &lo) in cuts.iter().enumerate() {
        let hi = cuts.get(i + 1).map(|c| c - 1).unwrap_or(to);
        let t = timeline_for(anc, lo);
        let pruned = view
            .pruned
            .iter()
            .any(|r| r.timeline == t && r.first <= lo && hi <= r.last);
        let h = Hole {
            history,
            first: (t, lo),
            last: (t, hi),
            cause: if pruned {
                HoleCause::Pruned
            } else {
                HoleCause::Missing
            },
        };
        // One hole across a timeline switch reads better than two.
        match out.last_mut() {
            Some(prev) if prev.cause == h.cause && prev.last.1 + 1 == lo => prev.last = h.last,
            _ => out.push(h),
        }
    }
    out
}

#[cfg(test)]
mod tests;
