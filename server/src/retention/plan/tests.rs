use super::*;
use crate::restore::plan::{self as restore, Action, Request, SegmentFacts, Target};

const SEG: u64 = 16 << 20;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;
/// 2026-11-16 00:00:00 UTC, a Monday.
const T0: i64 = 1_794_787_200;

fn tl(n: u32) -> TimelineId {
    TimelineId(n)
}

fn lsn(seg: u64, off: u64) -> Lsn {
    Lsn(seg * SEG + off)
}

fn wal(t: u32, segno: u64) -> String {
    segment_name(tl(t), segno, SEG)
}

/// A policy with no rule; tests add the ones they exercise.
fn no_rules() -> Policy {
    Policy {
        recovery_window_days: None,
        keep_hourly: 0,
        keep_daily: 0,
        keep_weekly: 0,
        keep_monthly: 0,
        min_backups: 0,
        ..Policy::default()
    }
}

/// A cluster as the catalog would describe it to the planner.
#[derive(Debug, Clone, Default)]
struct Cluster {
    facts: Facts,
    times: BTreeMap<String, i64>,
    files: Vec<String>,
    in_use: BTreeSet<String>,
    held: BTreeMap<String, String>,
    running: Option<Lsn>,
}

impl Cluster {
    fn new() -> Self {
        Cluster {
            facts: Facts {
                segment_size: SEG,
                ..Facts::default()
            },
            ..Cluster::default()
        }
    }

    /// Segment `segno` of timeline `t`, archived, with one commit halfway through at `unix`.
    fn seg(&mut self, t: u32, segno: u64, unix: i64) {
        let c = (lsn(segno, SEG / 2), unix * 1_000_000);
        self.seg_facts(
            t,
            segno,
            SegmentFacts {
                end_lsn: lsn(segno, SEG - 100),
                last_commit: Some(c),
                max_micros: Some(c.1),
                restore_points: Vec::new(),
                tablespaces_created: Vec::new(),
            },
        );
    }

    fn seg_facts(&mut self, t: u32, segno: u64, f: SegmentFacts) {
        self.facts.segments.insert((tl(t), segno), f);
        self.files.push(wal(t, segno));
    }

    /// A backup of segment `segno` on `t`, consistent just before that segment's commit at
    /// `unix`, which is also its stop time; its `.backup` file is archived.
    fn backup(&mut self, id: &str, t: u32, segno: u64, unix: i64) {
        self.backup_from(id, t, lsn(segno, 40), segno, unix);
    }

    /// The same, starting at `start`.
    fn backup_from(&mut self, id: &str, t: u32, start: Lsn, segno: u64, unix: i64) {
        self.facts.backups.push(BackupPoint {
            id: id.into(),
            timeline: tl(t),
            start_lsn: start,
            stop_lsn: lsn(segno, 1000),
            consistent_micros: unix * 1_000_000 - 1,
        });
        self.times.insert(id.into(), unix);
        self.files.push(format!(
            "{}.{:08X}.backup",
            wal(t, start.0 / SEG),
            start.0 % SEG
        ));
    }

    fn plan(&self, now: i64, policy: Policy) -> PrunePlan {
        plan(&PruneInput {
            now_unix: now,
            policy,
            facts: &self.facts,
            backup_times: &self.times,
            wal_files: &self.files,
            in_use: &self.in_use,
            held: &self.held,
            running_backup_start: self.running,
        })
    }
}

/// Timeline 1, segments 1..=n, one every `step` seconds from T0 (segment s at T0 + s*step).
fn line(n: u64, step: i64) -> Cluster {
    let mut c = Cluster::new();
    for s in 1..=n {
        c.seg(1, s, T0 + s as i64 * step);
    }
    c
}

/// Backups `bNN` on timeline 1 at the given segments of a [`line`].
fn with_backups(mut c: Cluster, step: i64, at: &[u64]) -> Cluster {
    for s in at {
        c.backup(&format!("b{s:02}"), 1, *s, T0 + *s as i64 * step);
    }
    c
}

fn decision<'a>(p: &'a PrunePlan, item: &Item) -> &'a Decision {
    p.decision(item)
        .unwrap_or_else(|| panic!("no decision about {item:?}"))
}

fn kept_backup(p: &PrunePlan, id: &str) -> bool {
    decision(p, &Item::Backup(id.into())).keep
}

fn kept_file(p: &PrunePlan, name: &str) -> bool {
    decision(p, &Item::Wal(name.into())).keep
}

fn reasons(p: &PrunePlan, item: Item) -> String {
    decision(p, &item).reasons.join("; ")
}

/// The facts as they are after the plan ran: only kept backups and kept segments.
fn apply(f: &Facts, p: &PrunePlan) -> Facts {
    let backups: BTreeSet<&str> = p.kept_backups().collect();
    let files: BTreeSet<&str> = p.kept_wal().collect();
    Facts {
        segment_size: f.segment_size,
        backups: f
            .backups
            .iter()
            .filter(|b| backups.contains(b.id.as_str()))
            .cloned()
            .collect(),
        histories: f.histories.clone(),
        segments: f
            .segments
            .iter()
            .filter(|((t, s), _)| files.contains(segment_name(*t, *s, f.segment_size).as_str()))
            .map(|(k, v)| (*k, v.clone()))
            .collect(),
        ..Facts::default()
    }
}

fn request(target: Target, timeline: Option<TimelineId>, inclusive: bool) -> Request {
    Request {
        target,
        timeline,
        backup: None,
        action: Action::Promote,
        inclusive,
    }
}

/// Every time target on `timeline` in `[from, to]` (sampled at each commit and backup, either
/// side, and evenly) that `before` could restore, `after` still can.
fn assert_window_kept(
    before: &Facts,
    after: &Facts,
    timeline: Option<TimelineId>,
    from_micros: i64,
    to_micros: i64,
) -> Result<(), String> {
    let mut points: BTreeSet<i64> = [from_micros, to_micros].into();
    for f in before.segments.values() {
        points.extend(f.max_micros.iter().flat_map(|m| [m - 1, *m, m + 1]));
    }
    for b in &before.backups {
        let m = b.consistent_micros;
        points.extend([m - 1, m, m + 1]);
    }
    let span = (to_micros - from_micros).max(0);
    points.extend((0..=32).map(|i| from_micros + span / 32 * i));
    for t in points.range(from_micros..=to_micros) {
        for inclusive in [true, false] {
            let r = request(Target::Time(*t), timeline, inclusive);
            if let Ok(p) = restore::plan(before, &r) {
                if let Err(e) = restore::plan(after, &r) {
                    return Err(format!(
                        "time {} on {timeline:?} (inclusive {inclusive}) was restorable from \
                         backup {} and is no longer: {e}",
                        walvault_proto::utc_time_micros(*t),
                        p.backup.id
                    ));
                }
            }
        }
    }
    Ok(())
}

// ---- edge cases ----

#[test]
fn an_empty_cluster_drops_nothing() {
    let c = line(5, HOUR);
    let p = c.plan(T0 + 100 * DAY, Policy::default());
    assert_eq!(p.drops().count(), 0);
    assert_eq!(p.kept_wal().count(), 5);
    assert!(reasons(&p, Item::Wal(wal(1, 1))).contains("no backup yet"));
    // Nothing at all: an empty plan.
    assert!(Cluster::new()
        .plan(T0, Policy::default())
        .decisions
        .is_empty());
}

#[test]
fn a_policy_without_rules_drops_nothing() {
    let c = with_backups(line(10, HOUR), HOUR, &[2, 4, 6]);
    let p = c.plan(T0 + 100 * DAY, no_rules());
    assert_eq!(p.drops().count(), 0);
    assert_eq!(p.kept_backups().collect::<Vec<_>>(), ["b02", "b04", "b06"]);
    assert!(reasons(&p, Item::Backup("b02".into())).contains("no rule"));
}

#[test]
fn a_held_snapshot_stays_with_the_wal_it_needs_to_become_consistent() {
    let mut c = with_backups(line(10, HOUR), HOUR, &[2, 4, 6]);
    let newest_only = Policy {
        min_backups: 1,
        ..no_rules()
    };
    let p = c.plan(T0 + 100 * DAY, newest_only);
    assert!(!kept_backup(&p, "b02") && !kept_backup(&p, "b04"));
    c.held
        .insert("b02".into(), "the base of a roll-forward chain".into());
    let p = c.plan(T0 + 100 * DAY, newest_only);
    assert!(kept_backup(&p, "b02"));
    assert!(!kept_backup(&p, "b04"));
    assert!(reasons(&p, Item::Backup("b02".into())).contains("roll-forward chain"));
    assert!(reasons(&p, Item::Wal(wal(1, 2))).contains("needed by backup b02"));
    // Unlike a restore's clone, it holds no WAL past its consistent point.
    assert!(
        !kept_file(&p, &wal(1, 3)),
        "{:?}",
        decision(&p, &Item::Wal(wal(1, 3)))
    );
}

#[test]
fn one_backup_keeps_its_wal_and_drops_what_came_before() {
    let c = with_backups(line(10, HOUR), HOUR, &[2]);
    let p = c.plan(T0 + 30 * DAY, Policy::default());
    assert!(kept_backup(&p, "b02"));
    let why = reasons(&p, Item::Backup("b02".into()));
    assert!(
        why.contains("recovery window anchor on timeline 1"),
        "{why}"
    );
    assert!(why.contains("min_backups (2 newest)"), "{why}");
    assert!(
        why.contains("newest backup on the latest timeline 1"),
        "{why}"
    );
    assert_eq!(p.dropped_wal().collect::<Vec<_>>(), [wal(1, 1)]);
    assert!(reasons(&p, Item::Wal(wal(1, 1))).contains("no kept backup"));
    assert!(reasons(&p, Item::Wal(wal(1, 2))).contains("needed by backup b02"));
    assert!(reasons(&p, Item::Wal(wal(1, 9))).contains("latest on timeline 1"));
}

#[test]
fn the_plan_is_deterministic_and_in_order() {
    let mut c = with_backups(line(12, 6 * HOUR), 6 * HOUR, &[2, 5, 8, 11]);
    let policy = Policy {
        recovery_window_days: Some(1),
        keep_daily: 2,
        ..no_rules()
    };
    let p = c.plan(T0 + 4 * DAY, policy);
    c.files.reverse();
    c.files.push(wal(1, 3));
    assert_eq!(c.plan(T0 + 4 * DAY, policy), p);
    let items: Vec<Item> = p.decisions.iter().map(|d| d.item.clone()).collect();
    let backups = ["b02", "b05", "b08", "b11"].map(|id| Item::Backup(id.into()));
    assert_eq!(items[..4], backups[..]);
    let names: Vec<&str> = items[4..].iter().map(Item::name).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(names, sorted);
    assert!(p.decisions.iter().all(|d| !d.reasons.is_empty()));
}

// ---- the recovery window ----

/// Timeline 1 with a segment every 12 hours over 10 days and a backup every other segment.
fn daily() -> Cluster {
    with_backups(
        line(20, 12 * HOUR),
        12 * HOUR,
        &[2, 4, 6, 8, 10, 12, 14, 16, 18, 20],
    )
}

#[test]
fn the_window_keeps_its_anchor_and_the_wal_after_it() {
    let c = daily();
    let now = T0 + 10 * DAY + HOUR;
    let policy = Policy {
        recovery_window_days: Some(3),
        ..no_rules()
    };
    let p = c.plan(now, policy);
    // Cutoff T0 + 7 d + 1 h: b14 (T0 + 7 d) is the newest backup consistent by then.
    assert_eq!(p.kept_backups().collect::<Vec<_>>(), ["b14", "b20"]);
    let why = reasons(&p, Item::Backup("b14".into()));
    assert!(
        why.contains(
            "recovery window anchor on timeline 1 (consistent 2026-11-22 23:59:59.999999 UTC \
             <= now - 3 days)"
        ),
        "{why}"
    );
    assert_eq!(reasons(&p, Item::Backup("b12".into())), "no rule keeps it");
    let why = reasons(&p, Item::Backup("b16".into()));
    assert!(
        why.contains("after the window anchor on timeline 1"),
        "{why}"
    );
    for s in 1..=20 {
        assert_eq!(kept_file(&p, &wal(1, s)), s >= 14, "segment {s}");
    }
    let after = apply(&c.facts, &p);
    assert_window_kept(
        &c.facts,
        &after,
        None,
        (now - 3 * DAY) * 1_000_000,
        now * 1_000_000,
    )
    .unwrap();
}

#[test]
fn without_a_backup_old_enough_the_window_keeps_the_oldest() {
    let c = daily();
    let p = c.plan(
        T0 + 10 * DAY,
        Policy {
            recovery_window_days: Some(20),
            ..no_rules()
        },
    );
    assert_eq!(p.kept_backups().collect::<Vec<_>>(), ["b02", "b20"]);
    let why = reasons(&p, Item::Backup("b02".into()));
    assert!(why.contains("none is consistent by now - 20 days"), "{why}");
    assert!(
        why.contains("reaches back only to 2026-11-16 23:59:59"),
        "{why}"
    );
    assert_eq!(p.dropped_wal().collect::<Vec<_>>(), [wal(1, 1)]);
}

#[test]
fn a_gap_in_the_window_keeps_the_backups_past_it() {
    let mut c = daily();
    c.facts.segments.remove(&(tl(1), 17));
    c.files.retain(|f| f != &wal(1, 17));
    let now = T0 + 10 * DAY + HOUR;
    let policy = Policy {
        recovery_window_days: Some(3),
        ..no_rules()
    };
    let p = c.plan(now, policy);
    assert_eq!(
        p.kept_backups().collect::<Vec<_>>(),
        ["b14", "b16", "b18", "b20"]
    );
    let why = reasons(&p, Item::Backup("b18".into()));
    assert!(
        why.contains(&format!("lacks segment {}", wal(1, 17))),
        "{why}"
    );
    assert_window_kept(
        &c.facts,
        &apply(&c.facts, &p),
        None,
        (now - 3 * DAY) * 1_000_000,
        now * 1_000_000,
    )
    .unwrap();
}

// ---- the grid, min_backups, in use, running ----

/// Backups around a week and a month boundary: Sunday 29 November 2026 (ISO week 48) to
/// Tuesday 1 December (week 49).
fn boundary() -> Cluster {
    let times = [
        ("b2", 1_795_946_400), // 2026-11-29 10:00
        ("b3", 1_795_982_400), // 2026-11-29 20:00
        ("b4", 1_796_029_200), // 2026-11-30 09:00
        ("b5", 1_796_112_000), // 2026-12-01 08:00
        ("b6", 1_796_113_800), // 2026-12-01 08:30
        ("b7", 1_796_115_600), // 2026-12-01 09:00
    ];
    let mut c = Cluster::new();
    c.seg(1, 1, times[0].1 - HOUR);
    for (i, (id, t)) in times.iter().enumerate() {
        let s = i as u64 + 2;
        c.seg(1, s, *t);
        c.backup(id, 1, s, *t);
    }
    c
}

#[test]
fn grid_periods_cross_week_and_month_boundaries() {
    let c = boundary();
    assert_eq!(
        walvault_proto::utc_time(c.times["b3"]),
        "2026-11-29 20:00:00 UTC"
    );
    let now = 1_796_115_600 + HOUR;
    let kept = |policy: Policy| -> Vec<String> {
        let p = c.plan(now, policy);
        p.kept_backups().map(str::to_owned).collect()
    };
    let hourly = Policy {
        keep_hourly: 3,
        ..no_rules()
    };
    assert_eq!(kept(hourly), ["b4", "b6", "b7"]);
    let daily = Policy {
        keep_daily: 2,
        ..no_rules()
    };
    assert_eq!(kept(daily), ["b4", "b7"]);
    let weekly = Policy {
        keep_weekly: 2,
        ..no_rules()
    };
    assert_eq!(kept(weekly), ["b3", "b7"]);
    let monthly = Policy {
        keep_monthly: 2,
        ..no_rules()
    };
    assert_eq!(kept(monthly), ["b4", "b7"]);
    // More periods asked than there are: every period's newest.
    let many = Policy {
        keep_weekly: 10,
        ..no_rules()
    };
    assert_eq!(kept(many), ["b3", "b7"]);

    let p = c.plan(
        now,
        Policy {
            keep_hourly: 3,
            keep_daily: 2,
            keep_weekly: 2,
            keep_monthly: 2,
            ..no_rules()
        },
    );
    assert_eq!(reasons(&p, Item::Backup("b3".into())), "weekly 2026-W48");
    assert_eq!(
        reasons(&p, Item::Backup("b4".into())),
        "hourly 2026-11-30 09:00 UTC; daily 2026-11-30; monthly 2026-11"
    );
    let why = reasons(&p, Item::Backup("b7".into()));
    for r in [
        "hourly 2026-12-01 09:00 UTC",
        "daily 2026-12-01",
        "weekly 2026-W49",
    ] {
        assert!(why.contains(r), "{why}");
    }
    assert!(why.contains("monthly 2026-12"), "{why}");
    assert_eq!(reasons(&p, Item::Backup("b5".into())), "no rule keeps it");
    // b3 keeps only what it needs to become consistent.
    assert!(kept_file(&p, &wal(1, 3)));
    assert!(!kept_file(&p, &wal(1, 2)));
}

#[test]
fn iso_weeks_at_year_ends() {
    for (unix, want) in [
        (1_798_675_200, (2026, 53)), // Thursday 2026-12-31
        (1_798_761_600, (2026, 53)), // Friday 2027-01-01
        (1_799_020_800, (2027, 1)),  // Monday 2027-01-04
        (1_609_632_000, (2020, 53)), // Sunday 2021-01-03
        (1_609_718_400, (2021, 1)),  // Monday 2021-01-04
        (1_735_516_800, (2025, 1)),  // Monday 2024-12-30
        (1_735_430_400, (2024, 52)), // Sunday 2024-12-29
        (1_582_934_400, (2020, 9)),  // Saturday 2020-02-29
        (T0, (2026, 47)),
    ] {
        let (monday, y, w) = iso_week(unix);
        assert_eq!((y, w), want, "{}", walvault_proto::utc_time(unix));
        assert!(monday * DAY <= unix && unix < (monday + 7) * DAY);
        assert_eq!(iso_week(monday * DAY).0, monday);
    }
    assert_eq!(Grid::Weekly.period(1_798_761_600).1, "2026-W53");
    assert_eq!(Grid::Monthly.period(1_798_761_600).1, "2027-01");
}

#[test]
fn min_backups_keeps_the_newest_and_only_their_consistency_wal() {
    let c = with_backups(line(11, HOUR), HOUR, &[2, 4, 6, 8, 10]);
    let p = c.plan(
        T0 + DAY,
        Policy {
            min_backups: 3,
            ..no_rules()
        },
    );
    assert_eq!(p.kept_backups().collect::<Vec<_>>(), ["b06", "b08", "b10"]);
    assert_eq!(p.dropped_backups().collect::<Vec<_>>(), ["b02", "b04"]);
    assert!(reasons(&p, Item::Backup("b06".into())).contains("min_backups (3 newest)"));
    let kept: Vec<u64> = (1..=11).filter(|s| kept_file(&p, &wal(1, *s))).collect();
    assert_eq!(kept, [6, 8, 10, 11]);
    // Each kept backup still recovers to its consistent point.
    let after = apply(&c.facts, &p);
    for id in ["b06", "b08", "b10"] {
        let mut r = request(Target::Immediate, None, true);
        r.backup = Some(id.into());
        restore::plan(&after, &r).unwrap();
    }
}

#[test]
fn a_backup_in_use_keeps_itself_and_all_wal_after_it() {
    let mut c = with_backups(line(11, HOUR), HOUR, &[2, 4, 6, 8, 10]);
    c.in_use.insert("b04".into());
    c.in_use.insert("gone".into());
    let p = c.plan(
        T0 + DAY,
        Policy {
            min_backups: 1,
            ..no_rules()
        },
    );
    assert_eq!(p.kept_backups().collect::<Vec<_>>(), ["b04", "b10"]);
    assert!(reasons(&p, Item::Backup("b04".into())).contains("in use"));
    let kept: Vec<u64> = (1..=11).filter(|s| kept_file(&p, &wal(1, *s))).collect();
    assert_eq!(kept, [4, 5, 6, 7, 8, 9, 10, 11]);
    assert!(reasons(&p, Item::Wal(wal(1, 7))).contains("backup b04 is in use"));
}

#[test]
fn a_running_backup_keeps_wal_from_its_start() {
    let mut c = with_backups(line(11, HOUR), HOUR, &[2, 6]);
    c.running = Some(lsn(3, 512));
    let p = c.plan(
        T0 + DAY,
        Policy {
            min_backups: 1,
            ..no_rules()
        },
    );
    assert_eq!(p.kept_backups().collect::<Vec<_>>(), ["b06"]);
    let kept: Vec<u64> = (1..=11).filter(|s| kept_file(&p, &wal(1, *s))).collect();
    assert_eq!(kept, (3..=11).collect::<Vec<_>>());
    assert!(reasons(&p, Item::Wal(wal(1, 4))).contains("a running backup needs WAL from 0/3000200"));
}

// ---- timelines and other archive files ----

/// A promoted standby: timeline 1 (backup A at segment 2) switches to 2 inside segment 5 at
/// T0 + 24 h; the old primary wrote segments 6..=8 of timeline 1 in the next hours; timeline 2
/// runs to segment 10 (T0 + 84 h), with backup B at segment 7.
fn promoted() -> Cluster {
    let mut c = Cluster::new();
    for s in 1..=5 {
        c.seg(1, s, T0 + (s as i64 - 1) * 6 * HOUR);
    }
    c.backup("A", 1, 2, T0 + 6 * HOUR);
    for s in 6..=8 {
        c.seg(1, s, T0 + (s as i64 + 19) * HOUR);
    }
    c.facts
        .histories
        .insert(tl(2), vec![(tl(1), lsn(5, SEG / 4 * 3))]);
    c.files.push("00000002.history".into());
    c.files.push(format!("{}.partial", wal(1, 5)));
    c.seg_facts(
        2,
        5,
        SegmentFacts {
            end_lsn: lsn(5, SEG - 100),
            last_commit: Some((lsn(5, SEG / 8 * 7), (T0 + 24 * HOUR + 1800) * 1_000_000)),
            max_micros: Some((T0 + 24 * HOUR + 1800) * 1_000_000),
            restore_points: Vec::new(),
            tablespaces_created: Vec::new(),
        },
    );
    for s in 6..=10 {
        c.seg(2, s, T0 + s as i64 * 12 * HOUR - 36 * HOUR);
    }
    c.backup("B", 2, 7, T0 + 48 * HOUR);
    c
}

#[test]
fn a_promoted_standby_keeps_its_history_and_may_drop_the_old_branch() {
    let c = promoted();
    let now = T0 + 90 * HOUR;
    let policy = Policy {
        recovery_window_days: Some(2),
        ..no_rules()
    };
    let p = c.plan(now, policy);
    // Cutoff T0 + 42 h: B (T0 + 48 h) is too new, so A anchors timeline 2's window through its
    // history; timeline 1 has no commit inside the window.
    assert_eq!(p.kept_backups().collect::<Vec<_>>(), ["A", "B"]);
    assert!(reasons(&p, Item::Backup("A".into())).contains("anchor on timeline 2"));
    let kept1: Vec<u64> = (1..=8).filter(|s| kept_file(&p, &wal(1, *s))).collect();
    assert_eq!(kept1, [2, 3, 4]);
    assert!((5..=10).all(|s| kept_file(&p, &wal(2, s))));
    assert!(!kept_file(&p, &format!("{}.partial", wal(1, 5))));
    assert!(kept_file(&p, "00000002.history"));
    assert_eq!(
        reasons(&p, Item::Wal("00000002.history".into())),
        "timeline history"
    );
    let after = apply(&c.facts, &p);
    let window = ((now - 2 * DAY) * 1_000_000, now * 1_000_000);
    for t in [None, Some(tl(1)), Some(tl(2))] {
        assert_window_kept(&c.facts, &after, t, window.0, window.1).unwrap();
    }
    // A time on timeline 2 just inside the window restores from A through timeline 1's WAL.
    let r = request(Target::Time((T0 + 43 * HOUR) * 1_000_000), None, true);
    assert_eq!(restore::plan(&after, &r).unwrap().backup.id, "A");
}

#[test]
fn a_window_reaching_the_old_branch_keeps_it() {
    let c = promoted();
    let now = T0 + 90 * HOUR;
    let p = c.plan(
        now,
        Policy {
            recovery_window_days: Some(4),
            ..no_rules()
        },
    );
    let kept1: Vec<u64> = (1..=8).filter(|s| kept_file(&p, &wal(1, *s))).collect();
    assert_eq!(kept1, [2, 3, 4, 5, 6, 7, 8]);
    assert!(reasons(&p, Item::Wal(wal(1, 7))).contains("recovery window on timeline 1"));
    assert!(kept_file(&p, &format!("{}.partial", wal(1, 5))));
    let after = apply(&c.facts, &p);
    for t in [None, Some(tl(1)), Some(tl(2))] {
        assert_window_kept(
            &c.facts,
            &after,
            t,
            (now - 4 * DAY) * 1_000_000,
            now * 1_000_000,
        )
        .unwrap();
    }
}

#[test]
fn a_kept_backup_on_the_old_branch_keeps_its_wal() {
    let mut c = promoted();
    c.backup("C", 1, 7, T0 + 26 * HOUR);
    c.in_use.insert("C".into());
    let p = c.plan(
        T0 + 90 * HOUR,
        Policy {
            recovery_window_days: Some(2),
            ..no_rules()
        },
    );
    assert_eq!(p.kept_backups().collect::<Vec<_>>(), ["A", "C", "B"]);
    let kept1: Vec<u64> = (1..=8).filter(|s| kept_file(&p, &wal(1, *s))).collect();
    assert_eq!(kept1, [2, 3, 4, 7, 8]);
    assert!(kept_file(&p, &format!("{}.00000028.backup", wal(1, 7))));
}

#[test]
fn partial_history_and_backup_files_follow_their_segments() {
    let mut c = with_backups(line(6, HOUR), HOUR, &[2, 5]);
    c.files.extend([
        format!("{}.00000100.backup", wal(1, 3)),
        format!("{}.partial", wal(1, 6)),
        format!("{}.partial", wal(1, 1)),
        "00000002.history".into(),
        "README".into(),
        wal(3, 1),
    ]);
    let p = c.plan(
        T0 + DAY,
        Policy {
            min_backups: 1,
            ..no_rules()
        },
    );
    assert_eq!(p.kept_backups().collect::<Vec<_>>(), ["b05"]);
    assert!(!kept_file(&p, &format!("{}.00000028.backup", wal(1, 2))));
    assert!(kept_file(&p, &format!("{}.00000028.backup", wal(1, 5))));
    assert!(
        reasons(&p, Item::Wal(format!("{}.00000028.backup", wal(1, 5))))
            .contains("needed by backup b05")
    );
    // A backup the catalog does not know follows its start segment.
    assert!(!kept_file(&p, &format!("{}.00000100.backup", wal(1, 3))));
    assert!(kept_file(&p, &format!("{}.partial", wal(1, 6))));
    assert!(!kept_file(&p, &format!("{}.partial", wal(1, 1))));
    assert!(kept_file(&p, "00000002.history"));
    assert!(reasons(&p, Item::Wal("README".into())).contains("not a WAL file name"));
    assert!(reasons(&p, Item::Wal(wal(3, 1))).contains("newer than the catalog knows"));
    let dropped: Vec<&str> = p.dropped_wal().collect();
    assert_eq!(
        dropped,
        [
            wal(1, 1),
            format!("{}.partial", wal(1, 1)),
            wal(1, 2),
            format!("{}.00000028.backup", wal(1, 2)),
            wal(1, 3),
            format!("{}.00000100.backup", wal(1, 3)),
            wal(1, 4),
        ]
    );
    assert_eq!(
        p.drops().filter(|i| matches!(i, Item::Backup(_))).count(),
        1
    );
}

// ---- properties over generated histories ----

mod properties;
