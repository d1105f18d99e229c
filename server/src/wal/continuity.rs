//! Keeping each cluster's continuity ledger current (DESIGN §5): the archive's view of its
//! own files (which segments, which histories, what is damaged or pruned) is built from the
//! catalog once, then updated by every push; a removal or a damage found makes it be built
//! again. Every change of the holes that are not the retention policy's doing is logged: a
//! new hole at WARN (restores across it are refused), a closed one at INFO.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use walvault_proto::{ClusterId, TimelineId, WalFileKind, WalFileName};

use super::ledger::{ArchiveView, HoleCause, Ledger, PrunedRange, SegKey};

/// A hole as compared between two ledgers.
type HoleKey = (SegKey, SegKey, bool);

#[derive(Debug, Default)]
struct State {
    /// `None` until built (or after `forget`).
    view: Option<ArchiveView>,
    /// The unexpected holes last logged; `None` before the first build.
    holes: Option<BTreeSet<HoleKey>>,
}

#[derive(Debug, Default)]
pub struct Continuity {
    states: Mutex<HashMap<ClusterId, State>>,
}

impl Continuity {
    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<ClusterId, State>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `f` of the cluster's view, if it is built.
    pub fn with_view<R>(
        &self,
        cluster: &ClusterId,
        f: impl FnOnce(&ArchiveView) -> R,
    ) -> Option<R> {
        self.states()
            .get(cluster)
            .and_then(|s| s.view.as_ref())
            .map(f)
    }

    /// Installs a freshly built view; logs how its holes differ from the last ones logged
    /// (all of them, the first time).
    pub fn install(&self, cluster: &ClusterId, view: ArchiveView) {
        let mut states = self.states();
        let state = states.entry(cluster.clone()).or_default();
        log_changes(cluster, &mut state.holes, &view);
        state.view = Some(view);
    }

    /// Drops the view, to be built again from the catalog on next use.
    pub fn forget(&self, cluster: &ClusterId) {
        if let Some(s) = self.states().get_mut(cluster) {
            s.view = None;
        }
    }

    /// A file was archived (or repaired). Call with the cluster's archive lock held.
    pub fn published(&self, cluster: &ClusterId, name: &WalFileName, content: &[u8], seg: u32) {
        let mut states = self.states();
        let Some(state) = states.get_mut(cluster) else {
            return;
        };
        let Some(view) = state.view.as_mut() else {
            return;
        };
        match name.kind() {
            WalFileKind::Segment => {
                let Some(s) = name.segment_number(seg) else {
                    return;
                };
                let key = (name.timeline(), s);
                let was_damaged = view.damaged.remove(&key).is_some();
                view.present.insert(key);
                // The common case, one more segment after the last: nothing can change.
                let tail = state.holes.as_ref().is_some_and(BTreeSet::is_empty)
                    && !was_damaged
                    && s > 0
                    && view.present.contains(&(name.timeline(), s - 1))
                    && view
                        .present
                        .range((name.timeline(), s + 1)..=(name.timeline(), u64::MAX))
                        .next()
                        .is_none();
                if tail {
                    return;
                }
            }
            WalFileKind::History => {
                if let Ok(entries) = super::history::parse_history(name.timeline(), content) {
                    view.histories.insert(
                        name.timeline(),
                        entries.iter().map(|e| (e.parent, e.switch_lsn)).collect(),
                    );
                }
            }
            _ => return,
        }
        let view = view.clone();
        log_changes(cluster, &mut state.holes, &view);
    }
}

fn log_changes(cluster: &ClusterId, logged: &mut Option<BTreeSet<HoleKey>>, view: &ArchiveView) {
    let ledger = Ledger::compute(view);
    let seg = ledger.segment_size;
    let now: Vec<_> = ledger.unexpected_holes();
    let keys: BTreeSet<HoleKey> = now
        .iter()
        .map(|h| (h.first, h.last, matches!(h.cause, HoleCause::Damaged(_))))
        .collect();
    let before = logged.take().unwrap_or_default();
    for h in &now {
        let key = (h.first, h.last, matches!(h.cause, HoleCause::Damaged(_)));
        if !before.contains(&key) {
            tracing::warn!(%cluster, hole = %h.files(seg), "WAL hole: {}; restores across it are refused", h.describe(seg));
        }
    }
    for (first, last, _) in before.difference(&keys) {
        let still = now
            .iter()
            .any(|h| h.first.1 <= first.1 && last.1 <= h.last.1);
        if !still {
            tracing::info!(%cluster, first = %super::ledger::segment_name(first.0, first.1, seg), last = %super::ledger::segment_name(last.0, last.1, seg), "WAL hole closed: the archive holds these segments now");
        }
    }
    *logged = Some(keys);
}

/// The pruned ranges as the `pruned_wal` property keeps them: `tli:first-last,…` with the
/// timeline in hex (as in file names) and segment numbers in decimal.
pub fn encode_pruned(ranges: &[PrunedRange]) -> String {
    ranges
        .iter()
        .map(|r| format!("{:08X}:{}-{}", r.timeline.0, r.first, r.last))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses [`encode_pruned`]'s text; entries that do not parse are skipped (they only make a
/// pruned range read as a hole).
pub fn decode_pruned(text: &str) -> Vec<PrunedRange> {
    text.split(',')
        .filter_map(|e| {
            let (t, range) = e.trim().split_once(':')?;
            let (a, b) = range.split_once('-')?;
            let timeline = TimelineId(u32::from_str_radix(t, 16).ok()?);
            let (first, last) = (a.parse().ok()?, b.parse().ok()?);
            (first <= last).then_some(PrunedRange {
                timeline,
                first,
                last,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pruned_ranges_round_trip_through_the_property() {
        let r = vec![
            PrunedRange {
                timeline: TimelineId(1),
                first: 3,
                last: 9,
            },
            PrunedRange {
                timeline: TimelineId(0x1A),
                first: 100,
                last: 100,
            },
        ];
        let text = encode_pruned(&r);
        assert_eq!(text, "00000001:3-9,0000001A:100-100");
        assert_eq!(decode_pruned(&text), r);
        assert_eq!(decode_pruned(""), vec![]);
        assert_eq!(decode_pruned("x:1-2,00000001:5-4,00000001:7-8").len(), 1);
    }
}
