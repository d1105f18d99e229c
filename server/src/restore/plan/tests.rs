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
    assert_eq!(p.wal_bytes, lsn(10, SEG - 100).0 - lsn(6, 1000).0);
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
    assert_eq!(w.end_lsn, Some(lsn(7, SEG - 100)));
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
    assert_eq!(w.end_lsn, Some(lsn(9, SEG - 100)));
    assert_eq!(w.max_micros, Some(T0 + 95_000_000));
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

mod properties {
    use super::*;
    use proptest::prelude::*;

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
