use super::*;

const SEG: u64 = 16 << 20;
const T0: i64 = 1_790_000_000_000_000;

fn tl(n: u32) -> TimelineId {
    TimelineId(n)
}

fn lsn(seg: u64, off: u64) -> Lsn {
    Lsn(seg * SEG + off)
}

fn backup(id: &str, t: u32, start: Lsn, stop: Lsn, micros: i64) -> BackupPoint {
    BackupPoint {
        id: id.into(),
        timeline: tl(t),
        start_lsn: start,
        stop_lsn: stop,
        consistent_micros: micros,
    }
}

/// Segment `segno` of timeline `t`, with a commit at second `secs` after T0 halfway through.
fn seg(f: &mut Facts, t: u32, segno: u64, secs: i64) {
    let c = (lsn(segno, SEG / 2), T0 + secs * 1_000_000);
    f.segments.insert(
        (tl(t), segno),
        SegmentFacts {
            end_lsn: lsn(segno, SEG - 100),
            last_commit: Some(c),
            max_micros: Some(c.1),
            restore_points: Vec::new(),
            tablespaces_created: Vec::new(),
        },
    );
}

/// Timeline 1, segments 1..=10 with a commit each at 10 s per segment; backups A (segment 2)
/// and B (segment 6).
fn one_timeline() -> Facts {
    let mut f = Facts {
        segment_size: SEG,
        ..Facts::default()
    };
    for s in 1..=10 {
        seg(&mut f, 1, s, s as i64 * 10);
    }
    f.backups.push(backup(
        "A",
        1,
        lsn(2, 40),
        lsn(2, 1000),
        T0 + 20_000_000 - 1,
    ));
    f.backups.push(backup(
        "B",
        1,
        lsn(6, 40),
        lsn(6, 1000),
        T0 + 60_000_000 - 1,
    ));
    f
}

fn req(target: Target) -> Request {
    Request {
        target,
        timeline: None,
        backup: None,
        action: Action::Promote,
        inclusive: true,
    }
}

fn setting<'a>(p: &'a Plan, k: &str) -> Option<&'a str> {
    p.settings
        .iter()
        .find(|(n, _)| n == k)
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_time_picks_the_newest_snapshot_consistent_before_it() {
    let f = one_timeline();
    let p = plan(&f, &req(Target::Time(T0 + 75_000_000))).unwrap();
    assert_eq!(p.backup.id, "B");
    assert_eq!(
        setting(&p, "recovery_target_time"),
        Some("2026-09-21 14:14:35.000000+00")
    );
    assert_eq!(setting(&p, "recovery_target_timeline"), Some("1"));
    assert_eq!(setting(&p, "recovery_target_action"), Some("promote"));
    // Between A's and B's consistent points: A.
    let p = plan(&f, &req(Target::Time(T0 + 45_000_000))).unwrap();
    assert_eq!(p.backup.id, "A");
    // Exactly B's consistent time: B serves.
    let p = plan(&f, &req(Target::Time(T0 + 60_000_000 - 1))).unwrap();
    assert_eq!(p.backup.id, "B");
}

#[test]
fn times_outside_the_window_are_refused_with_the_window() {
    let f = one_timeline();
    for t in [T0, T0 + 100_000_000, T0 + 500_000_000] {
        let e = plan(&f, &req(Target::Time(t))).unwrap_err().to_string();
        assert!(e.contains("outside the window"), "{e}");
        assert!(e.contains("backup A"), "{e}");
        assert!(e.contains("last archived commit"), "{e}");
    }
    // Just before the last commit is fine; exclusive may name the last commit itself.
    assert!(plan(&f, &req(Target::Time(T0 + 100_000_000 - 1))).is_ok());
    let mut r = req(Target::Time(T0 + 100_000_000));
    r.inclusive = false;
    let p = plan(&f, &r).unwrap();
    assert_eq!(setting(&p, "recovery_target_inclusive"), Some("off"));
}

#[test]
fn lsn_and_xid_targets_need_a_snapshot_consistent_at_or_before_them() {
    let f = one_timeline();
    let p = plan(&f, &req(Target::Lsn(lsn(6, 1000)))).unwrap();
    assert_eq!(p.backup.id, "B");
    assert_eq!(setting(&p, "recovery_target_lsn"), Some("0/60003E8"));
    let p = plan(&f, &req(Target::Lsn(lsn(6, 999)))).unwrap();
    assert_eq!(p.backup.id, "A");
    let p = plan(
        &f,
        &req(Target::Xid {
            xid: 777,
            lsn: lsn(3, 5),
        }),
    )
    .unwrap();
    assert_eq!(p.backup.id, "A");
    assert_eq!(setting(&p, "recovery_target_xid"), Some("777"));
    // Before the oldest snapshot, and past the archive's end.
    for l in [lsn(2, 999), lsn(10, SEG - 100), lsn(11, 0)] {
        let e = plan(&f, &req(Target::Lsn(l))).unwrap_err();
        assert!(matches!(e, PlanError::OutsideWindow { .. }), "{l}: {e}");
    }
}

#[test]
fn immediate_and_latest_take_the_newest_snapshot() {
    let f = one_timeline();
    let p = plan(&f, &req(Target::Immediate)).unwrap();
    assert_eq!(p.backup.id, "B");
    assert_eq!(setting(&p, "recovery_target"), Some("immediate"));
    let p = plan(&f, &req(Target::Latest)).unwrap();
    assert_eq!(p.backup.id, "B");
    assert_eq!(setting(&p, "recovery_target_action"), None);
    // From B's redo point, where recovery starts.
    assert_eq!(p.wal_bytes, lsn(10, SEG - 100).0 - lsn(6, 40).0);
    // A chosen backup.
    let mut r = req(Target::Immediate);
    r.backup = Some("A".into());
    assert_eq!(plan(&f, &r).unwrap().backup.id, "A");
    r.backup = Some("Z".into());
    assert_eq!(
        plan(&f, &r).unwrap_err(),
        PlanError::UnknownBackup("Z".into())
    );
    // A chosen backup that is too new for the target.
    let mut r = req(Target::Time(T0 + 45_000_000));
    r.backup = Some("B".into());
    assert!(matches!(
        plan(&f, &r).unwrap_err(),
        PlanError::BeforeBackup { .. }
    ));
}

#[test]
fn restore_points_resolve_and_ambiguity_is_refused() {
    let mut f = one_timeline();
    let s = f.segments.get_mut(&(tl(1), 7)).unwrap();
    s.restore_points.push(("before-upgrade".into(), lsn(7, 10)));
    let p = plan(&f, &req(Target::RestorePoint("before-upgrade".into()))).unwrap();
    assert_eq!(p.backup.id, "B");
    assert_eq!(setting(&p, "recovery_target_name"), Some("before-upgrade"));
    let e = plan(&f, &req(Target::RestorePoint("nope".into())))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"nope\"") && e.contains("before-upgrade"),
        "{e}"
    );
    // The same name twice after B began.
    let s = f.segments.get_mut(&(tl(1), 8)).unwrap();
    s.restore_points.push(("before-upgrade".into(), lsn(8, 10)));
    let e = plan(&f, &req(Target::RestorePoint("before-upgrade".into()))).unwrap_err();
    assert!(matches!(e, PlanError::AmbiguousRestorePoint { .. }), "{e}");
    // Names are quoted for PostgreSQL.
    let s = f.segments.get_mut(&(tl(1), 9)).unwrap();
    s.restore_points.push(("it's".into(), lsn(9, 10)));
    let p = plan(&f, &req(Target::RestorePoint("it's".into()))).unwrap();
    assert_eq!(setting(&p, "recovery_target_name"), Some("it's"));
}

#[test]
fn a_gap_in_the_archive_is_named() {
    let mut f = one_timeline();
    f.segments.remove(&(tl(1), 8));
    let e = plan(&f, &req(Target::Lsn(lsn(9, 0))))
        .unwrap_err()
        .to_string();
    assert!(e.contains("000000010000000000000008"), "{e}");
    // The window ends at the gap.
    let w = window(&f, tl(1));
    assert_eq!(w.end_lsn(), Some(lsn(7, SEG - 100)));
    // A snapshot whose own WAL is missing.
    f.segments.remove(&(tl(1), 6));
    let e = plan(&f, &req(Target::Immediate)).unwrap_err().to_string();
    assert!(e.contains("000000010000000000000006"), "{e}");
}

/// Timeline 2 branched off timeline 1 in segment 5; timeline 1 went on to segment 7 (the old
/// primary's last WAL). Backups: A on 1 (segment 2), C on 1 after the switch (segment 6),
/// D on 2 (segment 8).
fn two_timelines() -> Facts {
    let mut f = Facts {
        segment_size: SEG,
        ..Facts::default()
    };
    for s in 1..=7 {
        seg(&mut f, 1, s, s as i64 * 10);
    }
    for s in 5..=9 {
        seg(&mut f, 2, s, s as i64 * 10 + 5);
    }
    f.histories.insert(tl(2), vec![(tl(1), lsn(5, 5000))]);
    f.backups
        .push(backup("A", 1, lsn(2, 40), lsn(2, 1000), T0 + 19_000_000));
    f.backups
        .push(backup("C", 1, lsn(6, 40), lsn(6, 1000), T0 + 59_000_000));
    f.backups
        .push(backup("D", 2, lsn(8, 40), lsn(8, 1000), T0 + 84_000_000));
    f
}

#[test]
fn timelines_follow_their_history() {
    let f = two_timelines();
    assert_eq!(latest_timeline(&f), Some(tl(2)));
    // Latest on timeline 2 takes D; on timeline 1 the old primary's C.
    assert_eq!(plan(&f, &req(Target::Latest)).unwrap().backup.id, "D");
    let mut r = req(Target::Latest);
    r.timeline = Some(tl(1));
    let p = plan(&f, &r).unwrap();
    assert_eq!(p.backup.id, "C");
    assert_eq!(setting(&p, "recovery_target_timeline"), Some("1"));
    // C is not on timeline 2's history (it is past the switch).
    let mut r = req(Target::Immediate);
    r.backup = Some("C".into());
    assert!(matches!(
        plan(&f, &r).unwrap_err(),
        PlanError::BackupOffHistory { .. }
    ));
    // A time on timeline 1 before the switch, planned on timeline 2: A, replaying through
    // timeline 2's copy of segment 5.
    let p = plan(&f, &req(Target::Time(T0 + 45_000_000))).unwrap();
    assert_eq!(p.backup.id, "A");
    assert_eq!(setting(&p, "recovery_target_timeline"), Some("2"));
    // Timeline 2 reads segment 5 from its own file, so timeline 1's 6 and 7 never matter.
    let w = window(&f, tl(2));
    assert_eq!(w.parent, Some((tl(1), lsn(5, 5000))));
    assert_eq!(w.segments, 8);
    assert_eq!(w.end_lsn(), Some(lsn(9, SEG - 100)));
    assert_eq!(w.max_micros(), Some(T0 + 95_000_000));
    let ws = windows(&f);
    assert_eq!(ws.len(), 2);
    assert_eq!(ws[0].backups, 2);
    assert_eq!(ws[1].backups, 2);
    assert_eq!(
        plan(
            &f,
            &Request {
                timeline: Some(tl(7)),
                ..req(Target::Latest)
            }
        )
        .unwrap_err(),
        PlanError::UnknownTimeline(tl(7))
    );
}

#[test]
fn no_backup_says_so() {
    let mut f = one_timeline();
    f.backups.clear();
    assert_eq!(
        plan(&f, &req(Target::Latest)).unwrap_err(),
        PlanError::NoBackup
    );
}

#[test]
fn segment_names() {
    assert_eq!(segment_name(tl(1), 1, SEG), "000000010000000000000001");
    assert_eq!(segment_name(tl(2), 256, SEG), "000000020000000100000000");
    assert_eq!(segment_name(tl(3), 5, 1 << 30), "000000030000000100000001");
}

/// The failover of issue 9: timeline 1 has segments 1..=10 and a backup in segment 2; its
/// archiver failed for segments 11..=16, the promoted standby's timeline 2 begins in segment
/// 16 and is archived through 37.
fn failover() -> Facts {
    let mut f = Facts {
        segment_size: SEG,
        ..Facts::default()
    };
    for s in 1..=10 {
        seg(&mut f, 1, s, s as i64 * 10);
    }
    for s in 16..=37 {
        seg(&mut f, 2, s, s as i64 * 10 + 5);
    }
    f.histories.insert(tl(2), vec![(tl(1), lsn(16, 96))]);
    f.backups
        .push(backup("A", 1, lsn(2, 40), lsn(2, 1000), T0 + 19_000_000));
    f
}

#[test]
fn a_failover_that_lost_wal_refuses_latest_and_targets_across_the_hole() {
    let f = failover();
    for target in [
        Target::Latest,
        Target::Time(T0 + 125_000_000),
        Target::Time(T0 + 300_000_000),
        Target::Lsn(lsn(20, 0)),
    ] {
        let e = plan(&f, &req(target.clone())).unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, PlanError::Gap { .. }), "{target}: {text}");
        assert!(
            text.contains("00000001000000000000000B … 00000001000000000000000F (5 segments)"),
            "{text}"
        );
        assert!(text.contains("restorable from"), "{text}");
        assert!(!text.contains('\n'));
    }
    // Timeline 1 itself ends early too: timeline 2's history proves it went on to 15.
    let e = plan(
        &f,
        &Request {
            timeline: Some(tl(1)),
            ..req(Target::Latest)
        },
    )
    .unwrap_err();
    assert!(matches!(e, PlanError::Gap { .. }), "{e}");
    // Before the hole, on either timeline, is fine.
    let p = plan(&f, &req(Target::Time(T0 + 75_000_000))).unwrap();
    assert_eq!(p.backup.id, "A");
    assert_eq!(p.through, (tl(1), 8));
    let p = plan(&f, &req(Target::Lsn(lsn(9, 5)))).unwrap();
    assert_eq!(p.reach, lsn(9, 5));
    // The window shows where the hole is.
    let w = window(&f, tl(2));
    assert_eq!(w.spans.len(), 1);
    assert_eq!(w.end_lsn(), Some(lsn(10, SEG - 100)));
    assert!(w.spans[0].until.is_some());
    assert_eq!(w.holes.len(), 1);
    assert!(
        w.describe().contains("the archive lacks"),
        "{}",
        w.describe()
    );

    // A backfill from the standby closes it: latest is restorable again, on timeline 2.
    let mut f = failover();
    for s in 11..=15 {
        seg(&mut f, 1, s, s as i64 * 10);
    }
    let p = plan(&f, &req(Target::Latest)).unwrap();
    assert_eq!(p.reach, lsn(37, SEG - 100));
    assert_eq!(p.through, (tl(2), 37));
    assert!(plan(&f, &req(Target::Time(T0 + 125_000_000))).is_ok());
    assert!(window(&f, tl(2)).holes.is_empty());
}

#[test]
fn a_backup_after_a_hole_starts_a_span_of_its_own() {
    let mut f = failover();
    f.backups
        .push(backup("B", 2, lsn(20, 40), lsn(20, 1000), T0 + 200_000_000));
    // Latest takes B, whose WAL is complete.
    let p = plan(&f, &req(Target::Latest)).unwrap();
    assert_eq!(p.backup.id, "B");
    let w = window(&f, tl(2));
    assert_eq!(w.spans.len(), 2, "{w:?}");
    assert_eq!(w.spans[1].from.id, "B");
    assert!(w.spans[1].until.is_none());
    assert_eq!(w.oldest().map(|b| b.id.as_str()), Some("A"));
    // Inside the hole: no backup serves it.
    assert!(plan(&f, &req(Target::Time(T0 + 125_000_000))).is_err());
    assert!(plan(&f, &req(Target::Time(T0 + 250_000_000))).is_ok());
}

#[test]
fn a_damaged_segment_is_a_hole_until_repaired() {
    let mut f = one_timeline();
    f.damaged
        .insert((tl(1), 8), "does not match its blake3".into());
    let e = plan(&f, &req(Target::Latest)).unwrap_err().to_string();
    assert!(e.contains("000000010000000000000008"), "{e}");
    assert!(e.contains("damaged") && e.contains("repair"), "{e}");
    // Up to it is fine.
    assert!(plan(&f, &req(Target::Lsn(lsn(7, 8)))).is_ok());
}

#[test]
fn plans_say_how_far_recovery_must_get() {
    let f = one_timeline();
    let p = plan(&f, &req(Target::Latest)).unwrap();
    assert_eq!(p.reach, lsn(10, SEG - 100));
    assert_eq!(p.through, (tl(1), 10));
    assert_eq!(p.reach_micros, Some(T0 + 100_000_000));
    // A time between the commits of segments 7 (70 s) and 8 (80 s): the commit of segment 7
    // must be replayed, segment 8 holds the commit recovery stops at.
    let p = plan(&f, &req(Target::Time(T0 + 75_000_000))).unwrap();
    assert_eq!(p.reach, lsn(7, SEG / 2));
    assert_eq!(p.through, (tl(1), 8));
    let p = plan(&f, &req(Target::Immediate)).unwrap();
    assert_eq!(p.reach, lsn(6, 1000));
    assert_eq!(p.through, (tl(1), 6));
    let mut r = req(Target::Lsn(lsn(8, 3)));
    assert_eq!(plan(&f, &r).unwrap().reach, lsn(8, 3));
    r.inclusive = false;
    let p = plan(&f, &r).unwrap();
    assert_eq!(p.reach, lsn(6, 1000));
    assert_eq!(p.through, (tl(1), 8));
}

#[test]
fn an_unreadable_segment_is_reported_and_planned_across() {
    let mut f = one_timeline();
    f.segments.insert(
        (tl(1), 8),
        SegmentFacts {
            end_lsn: lsn(8, 0),
            ..SegmentFacts::default()
        },
    );
    f.unreadable
        .insert((tl(1), 8), "record at 0/8000028 cannot be decoded".into());
    let w = window(&f, tl(1));
    assert_eq!(w.unreadable.len(), 1);
    assert!(w.holes.is_empty());
    assert_eq!(
        plan(&f, &req(Target::Latest)).unwrap().reach,
        lsn(10, SEG - 100)
    );
    assert!(plan(&f, &req(Target::Time(T0 + 85_000_000))).is_ok());
}

mod properties {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// Whether every segment a plan reads (from its backup's start through its last one,
    /// along its timeline's history) is archived and intact.
    fn crosses_no_hole(f: &Facts, p: &Plan) -> bool {
        let anc = ancestry(f, p.timeline);
        (p.backup.start_lsn.0 / SEG..=p.through.1).all(|s| {
            let key = (timeline_for(&anc, s), s);
            f.segments.contains_key(&key) && !f.damaged.contains_key(&key)
        })
    }

    fn history(
        lost: &BTreeSet<u64>,
        damaged: &BTreeSet<u64>,
        branch: Option<u64>,
        backups: &BTreeSet<u64>,
    ) -> Facts {
        let mut f = Facts {
            segment_size: SEG,
            ..Facts::default()
        };
        let tl1_end = branch.map_or(40, |b| b + 3);
        for s in 1..=tl1_end {
            if !lost.contains(&s) {
                seg(&mut f, 1, s, s as i64 * 10);
            }
        }
        if let Some(b) = branch {
            f.histories.insert(tl(2), vec![(tl(1), lsn(b, 4096))]);
            for s in b..=50 {
                if !lost.contains(&s) {
                    seg(&mut f, 2, s, s as i64 * 10 + 5);
                }
            }
        }
        for d in damaged {
            for t in [1, 2] {
                if f.segments.contains_key(&(tl(t), *d)) {
                    f.damaged.insert((tl(t), *d), "bad".into());
                }
            }
        }
        for (i, s) in backups.iter().enumerate() {
            let t = match branch {
                Some(b) if *s > b => 2,
                _ => 1,
            };
            f.backups.push(backup(
                &format!("b{i}"),
                t,
                lsn(*s, 40),
                lsn(*s, 1000),
                T0 + *s as i64 * 10 * 1_000_000 - 1,
            ));
        }
        f
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Over histories with holes, damaged files, a second timeline and backfills: a point
        /// inside a span of the window always plans, and no plan ever reads across a hole.
        #[test]
        fn no_plan_crosses_a_hole_and_every_restorable_point_plans(
            lost in proptest::collection::btree_set(2u64..50, 0..5),
            damaged in proptest::collection::btree_set(2u64..50, 0..2),
            backfilled in proptest::collection::btree_set(2u64..50, 0..3),
            branch in proptest::option::of(8u64..30),
            backups in proptest::collection::btree_set(1u64..48, 1..5),
            probes in proptest::collection::vec((0u64..50, 0u64..(SEG - 200), 0i64..520), 8),
        ) {
            let lost: BTreeSet<u64> = lost.difference(&backfilled).copied().collect();
            let f = history(&lost, &damaged, branch, &backups);
            for w in windows(&f) {
                let on = |target| Request { timeline: Some(w.timeline), ..req(target) };
                // Every point of every span plans, without crossing a hole.
                for span in &w.spans {
                    let mid = Lsn(span.from.stop_lsn.0 + (span.end_lsn.0 - span.from.stop_lsn.0) / 2);
                    for l in [span.from.stop_lsn, mid] {
                        let p = plan(&f, &on(Target::Lsn(l)));
                        prop_assert!(p.is_ok(), "LSN {} in a span of {:?}: {:?}", l, w.timeline, p);
                        prop_assert!(crosses_no_hole(&f, &p.unwrap()));
                    }
                    if let Some(max) = span.max_micros {
                        if max - 1 > span.from.consistent_micros {
                            let p = plan(&f, &on(Target::Time(max - 1)));
                            prop_assert!(p.is_ok(), "time in a span: {:?}", p);
                            prop_assert!(crosses_no_hole(&f, &p.unwrap()));
                        }
                    }
                }
                // Latest plans exactly when the newest span runs to the end of the history.
                let latest = plan(&f, &on(Target::Latest));
                if let Ok(p) = &latest {
                    prop_assert!(crosses_no_hole(&f, p));
                    let last = w.spans.last().expect("a plan means a span");
                    prop_assert!(last.until.is_none());
                    prop_assert_eq!(p.reach, last.end_lsn);
                }
                // Any target at all: a plan never crosses a hole.
                for (s, off, secs) in &probes {
                    for t in [Target::Lsn(lsn(*s, *off)), Target::Time(T0 + secs * 1_000_000)] {
                        if let Ok(p) = plan(&f, &on(t.clone())) {
                            prop_assert!(crosses_no_hole(&f, &p), "{} crosses a hole: {:?}", t, p);
                            prop_assert!(p.reach >= p.backup.stop_lsn);
                        }
                    }
                }
            }
        }
    }

    proptest! {
        /// Whatever the backups and the target, a plan's snapshot is consistent no later than
        /// the target, and no newer snapshot would have been.
        #[test]
        fn the_chosen_snapshot_is_the_newest_that_fits(
            stops in proptest::collection::btree_set(2u64..60, 1..6),
            target in 0i64..700,
            by_lsn in any::<bool>(),
        ) {
            let mut f = Facts { segment_size: SEG, ..Facts::default() };
            for s in 1..=60 {
                seg(&mut f, 1, s, s as i64 * 10);
            }
            for (i, s) in stops.iter().enumerate() {
                f.backups.push(backup(&format!("b{i}"), 1, lsn(*s, 40), lsn(*s, 1000),
                    T0 + *s as i64 * 10 * 1_000_000 - 1));
            }
            let t = if by_lsn {
                Target::Lsn(lsn((target / 10) as u64, 2000))
            } else {
                Target::Time(T0 + target * 1_000_000)
            };
            let fits = |b: &BackupPoint| match &t {
                Target::Lsn(l) => b.stop_lsn <= *l,
                Target::Time(m) => b.consistent_micros <= *m,
                _ => unreachable!(),
            };
            match plan(&f, &req(t.clone())) {
                Ok(p) => {
                    prop_assert!(fits(&p.backup));
                    prop_assert!(!f.backups.iter().any(|b| fits(b) && b.stop_lsn > p.backup.stop_lsn));
                }
                Err(PlanError::OutsideWindow { window, .. }) => {
                    // Refused only when no snapshot fits or the archive ends first.
                    let none_fits = !f.backups.iter().any(fits);
                    let past_end = match &t {
                        Target::Lsn(l) => *l >= lsn(60, SEG - 100),
                        Target::Time(m) => *m >= T0 + 600_000_000,
                        _ => false,
                    };
                    prop_assert!(none_fits || past_end, "{window}");
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }
    }
}

#[test]
fn a_tablespace_created_in_the_replayed_wal_is_named() {
    let mut f = one_timeline();
    let at = lsn(8, 4096);
    if let Some(s) = f.segments.get_mut(&(tl(1), 8)) {
        s.tablespaces_created.push((at, 16400, "/srv/ts".into()));
    }
    let created = TablespaceCreation {
        lsn: at,
        oid: 16400,
        location: "/srv/ts".into(),
    };
    assert_eq!(
        plan(&f, &req(Target::Latest)).unwrap().creates_tablespace,
        Some(created.clone())
    );
    // From backup A too: its replay crosses segment 8 on the way.
    let mut r = req(Target::Lsn(lsn(9, 0)));
    r.backup = Some("A".into());
    assert_eq!(plan(&f, &r).unwrap().creates_tablespace, Some(created));
    // A target before the creation, or a snapshot whose redo point is past it, replays none.
    assert_eq!(
        plan(&f, &req(Target::Lsn(lsn(7, 0))))
            .unwrap()
            .creates_tablespace,
        None
    );
    f.backups
        .push(backup("C", 1, lsn(8, 8192), lsn(8, 9000), T0 + 80_000_000));
    assert_eq!(
        plan(&f, &req(Target::Latest)).unwrap().creates_tablespace,
        None
    );
}
