use super::*;

const SEG: u64 = 16 << 20;

fn tl(n: u32) -> TimelineId {
    TimelineId(n)
}

fn view(present: &[(u32, u64)]) -> ArchiveView {
    ArchiveView {
        segment_size: SEG,
        present: present.iter().map(|(t, s)| (tl(*t), *s)).collect(),
        ..ArchiveView::default()
    }
}

fn range(t: u32, segs: std::ops::RangeInclusive<u64>) -> Vec<(u32, u64)> {
    segs.map(|s| (t, s)).collect()
}

#[test]
fn a_contiguous_archive_has_no_hole() {
    let v = view(&range(1, 3..=9));
    let l = Ledger::compute(&v);
    let t = l.timeline(tl(1)).unwrap();
    assert_eq!(
        t.stretches,
        vec![Stretch {
            first: (tl(1), 3),
            last: (tl(1), 9)
        }]
    );
    assert!(t.holes.is_empty());
    assert!(l.unexpected_holes().is_empty());
}

#[test]
fn a_missing_run_between_archived_segments_is_a_hole() {
    let mut p = range(1, 1..=10);
    p.extend(range(1, 16..=20));
    let l = Ledger::compute(&view(&p));
    let t = l.timeline(tl(1)).unwrap();
    assert_eq!(t.stretches.len(), 2);
    assert_eq!(
        t.holes,
        vec![Hole {
            history: tl(1),
            first: (tl(1), 11),
            last: (tl(1), 15),
            cause: HoleCause::Missing
        }]
    );
    let h = &t.holes[0];
    assert_eq!(h.count(), 5);
    assert_eq!(
        h.files(SEG),
        "00000001000000000000000B … 00000001000000000000000F (5 segments)"
    );
    assert!(h.describe(SEG).contains("wal-push"), "{}", h.describe(SEG));
    assert_eq!(t.hole_at(13), Some(h));
    assert_eq!(t.hole_at(10), None);
}

/// The failover of issue 9: timeline 1 lost segments 11..=16 (its archiver failed), the
/// promoted standby's timeline 2 begins in segment 16 and is archived from there.
fn failover() -> ArchiveView {
    let mut p = range(1, 1..=10);
    p.extend(range(2, 16..=37));
    let mut v = view(&p);
    v.histories
        .insert(tl(2), vec![(tl(1), Lsn(16 * SEG + 0x60))]);
    v
}

#[test]
fn a_failover_that_lost_wal_shows_on_both_timelines() {
    let l = Ledger::compute(&failover());
    // Timeline 2 reads timeline 1's files up to segment 15.
    let t2 = l.timeline(tl(2)).unwrap();
    assert_eq!(
        t2.holes,
        vec![Hole {
            history: tl(2),
            first: (tl(1), 11),
            last: (tl(1), 15),
            cause: HoleCause::Missing
        }]
    );
    assert_eq!(
        t2.stretches,
        vec![
            Stretch {
                first: (tl(1), 1),
                last: (tl(1), 10)
            },
            Stretch {
                first: (tl(2), 16),
                last: (tl(2), 37)
            }
        ]
    );
    // Timeline 1 itself ends early: its child proves it reached segment 15.
    let t1 = l.timeline(tl(1)).unwrap();
    assert_eq!(t1.holes.len(), 1);
    assert_eq!(t1.holes[0].first, (tl(1), 11));
    assert_eq!(t1.holes[0].last, (tl(1), 15));
    // Reported once.
    assert_eq!(l.unexpected_holes().len(), 1);

    // A backfill from the standby's pg_wal closes it.
    let mut v = failover();
    v.present.extend((11..=15).map(|s| (tl(1), s)));
    let l = Ledger::compute(&v);
    assert!(l.unexpected_holes().is_empty(), "{l:?}");
    assert_eq!(l.timeline(tl(2)).unwrap().stretches.len(), 1);
}

#[test]
fn a_hole_across_a_timeline_switch_is_one_hole() {
    let mut p = range(1, 1..=13);
    p.extend(range(2, 18..=20));
    let mut v = view(&p);
    v.histories.insert(tl(2), vec![(tl(1), Lsn(16 * SEG + 8))]);
    let l = Ledger::compute(&v);
    let t2 = l.timeline(tl(2)).unwrap();
    assert_eq!(t2.holes.len(), 1, "{t2:?}");
    assert_eq!(t2.holes[0].first, (tl(1), 14));
    assert_eq!(t2.holes[0].last, (tl(2), 17));
    assert_eq!(t2.holes[0].count(), 4);
}

#[test]
fn damaged_files_are_holes_and_pruned_ranges_are_expected_ones() {
    let mut v = view(&range(1, 1..=20));
    v.damaged
        .insert((tl(1), 7), "its content does not match its blake3".into());
    v.present.retain(|(_, s)| !(12..=14).contains(s));
    v.pruned.push(PrunedRange {
        timeline: tl(1),
        first: 12,
        last: 14,
    });
    let l = Ledger::compute(&v);
    let t = l.timeline(tl(1)).unwrap();
    assert_eq!(t.holes.len(), 2, "{t:?}");
    assert!(matches!(t.holes[0].cause, HoleCause::Damaged(_)));
    assert_eq!(t.holes[0].first, (tl(1), 7));
    assert_eq!(t.holes[1].cause, HoleCause::Pruned);
    assert_eq!(t.stretches.len(), 3);
    let unexpected = l.unexpected_holes();
    assert_eq!(unexpected.len(), 1);
    assert!(unexpected[0].describe(SEG).contains("repair"));
}

#[test]
fn a_gap_partly_pruned_keeps_the_rest_as_missing() {
    let mut p = range(1, 1..=3);
    p.extend(range(1, 10..=12));
    let mut v = view(&p);
    v.pruned.push(PrunedRange {
        timeline: tl(1),
        first: 4,
        last: 6,
    });
    let l = Ledger::compute(&v);
    let causes: Vec<_> = l
        .timeline(tl(1))
        .unwrap()
        .holes
        .iter()
        .map(|h| (h.first.1, h.last.1, h.cause.clone()))
        .collect();
    assert_eq!(
        causes,
        vec![(4, 6, HoleCause::Pruned), (7, 9, HoleCause::Missing)]
    );
}

#[test]
fn a_segment_far_ahead_costs_nothing() {
    let mut p = range(1, 1..=3);
    p.push((1, u64::MAX / SEG));
    let l = Ledger::compute(&view(&p));
    let t = l.timeline(tl(1)).unwrap();
    assert_eq!(t.holes.len(), 1);
    assert_eq!(t.holes[0].first.1, 4);
}

#[test]
fn pruned_ranges_merge() {
    let mut r = vec![PrunedRange {
        timeline: tl(1),
        first: 5,
        last: 7,
    }];
    merge_pruned(
        &mut r,
        pruned_runs(tl(1), &[1u64, 2, 3, 4, 9].into_iter().collect()),
    );
    assert_eq!(
        r,
        vec![
            PrunedRange {
                timeline: tl(1),
                first: 1,
                last: 7
            },
            PrunedRange {
                timeline: tl(1),
                first: 9,
                last: 9
            }
        ]
    );
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    /// Per segment number of the history: present and intact, damaged, pruned or missing.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Is {
        Intact,
        Damaged,
        Pruned,
        Missing,
    }

    fn classify(v: &ArchiveView, anc: &[(TimelineId, u64, Option<Lsn>)], s: u64) -> Is {
        let t = timeline_for(anc, s);
        if v.present.contains(&(t, s)) {
            if v.damaged.contains_key(&(t, s)) {
                Is::Damaged
            } else {
                Is::Intact
            }
        } else if v
            .pruned
            .iter()
            .any(|r| r.timeline == t && r.first <= s && s <= r.last)
        {
            Is::Pruned
        } else {
            Is::Missing
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Every segment number between a history's first archived segment and its expected
        /// end is in exactly one stretch or one hole, and each says truly what it is.
        #[test]
        fn stretches_and_holes_partition_every_history(
            tl1 in proptest::collection::btree_set(0u64..48, 0..40),
            tl2 in proptest::collection::btree_set(0u64..64, 0..30),
            switch in 4u64..40,
            damaged in proptest::collection::btree_set(0u64..64, 0..4),
            pruned in proptest::collection::vec((0u64..48, 0u64..6), 0..3),
            second_timeline in any::<bool>(),
        ) {
            let mut v = ArchiveView { segment_size: SEG, ..ArchiveView::default() };
            v.present.extend(tl1.iter().map(|s| (tl(1), *s)));
            if second_timeline {
                v.histories.insert(tl(2), vec![(tl(1), Lsn(switch * SEG + 40))]);
                v.present.extend(tl2.iter().filter(|s| **s >= switch).map(|s| (tl(2), *s)));
            }
            for d in &damaged {
                for t in [1, 2] {
                    if v.present.contains(&(tl(t), *d)) {
                        v.damaged.insert((tl(t), *d), "bad".into());
                    }
                }
            }
            for (first, len) in &pruned {
                let r: BTreeSet<u64> = (*first..first + len).filter(|s| !tl1.contains(s)).collect();
                merge_pruned(&mut v.pruned, pruned_runs(tl(1), &r));
            }
            let l = Ledger::compute(&v);
            for tline in &l.timelines {
                let anc = ancestry(&v.histories, SEG, tline.timeline);
                let on: Vec<u64> = (0u64..64)
                    .filter(|s| v.present.contains(&(timeline_for(&anc, *s), *s)))
                    .collect();
                let (Some(first), Some(last)) = (on.first(), on.last()) else {
                    prop_assert!(tline.stretches.is_empty() && tline.holes.is_empty());
                    continue;
                };
                let end = if tline.timeline == tl(1) && second_timeline {
                    (*last).max(switch.saturating_sub(1))
                } else {
                    *last
                };
                // Nothing outside [first, end].
                for st in &tline.stretches {
                    prop_assert!(st.first.1 >= *first && st.last.1 <= end);
                }
                for h in &tline.holes {
                    prop_assert!(h.first.1 >= *first && h.last.1 <= end);
                }
                let mut prev_end: Option<u64> = None;
                let mut items: Vec<(u64, u64, Option<&HoleCause>)> = tline
                    .stretches
                    .iter()
                    .map(|s| (s.first.1, s.last.1, None))
                    .chain(tline.holes.iter().map(|h| (h.first.1, h.last.1, Some(&h.cause))))
                    .collect();
                items.sort_by_key(|i| i.0);
                for (lo, hi, cause) in items {
                    prop_assert!(lo <= hi);
                    // Ordered, disjoint and without gaps between them.
                    prop_assert_eq!(prev_end.map_or(*first, |p| p + 1), lo);
                    prev_end = Some(hi);
                    for s in lo..=hi {
                        let is = classify(&v, &anc, s);
                        let fits = match cause {
                            None => is == Is::Intact,
                            Some(HoleCause::Missing) => is == Is::Missing,
                            Some(HoleCause::Pruned) => is == Is::Pruned,
                            Some(HoleCause::Damaged(_)) => is == Is::Damaged,
                        };
                        prop_assert!(fits, "segment {} is {:?} but listed as {:?}", s, is, cause);
                    }
                }
                prop_assert_eq!(prev_end, Some(end));
            }
        }
    }
}
