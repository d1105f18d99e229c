//! Properties over generated histories.

use super::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Scenario {
    start: i64,
    /// Seconds between successive segments on the main line.
    steps: Vec<i64>,
    /// (where timeline 2 branches, how many segments the old primary wrote after it).
    branch: Option<(usize, usize)>,
    backups: Vec<usize>,
    jitter: Vec<i64>,
    old_branch_backup: bool,
    in_use: Vec<bool>,
    running: Option<usize>,
    gap: Option<usize>,
    policy: Policy,
    later: i64,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let policy = (
        prop::option::of(0u32..5),
        0u32..5,
        0u32..4,
        0u32..3,
        0u32..3,
        0u32..4,
    )
        .prop_map(|(w, h, d, wk, m, min)| Policy {
            recovery_window_days: w,
            keep_hourly: h,
            keep_daily: d,
            keep_weekly: wk,
            keep_monthly: m,
            min_backups: min,
            ..Policy::default()
        });
    (
        (
            0i64..400 * DAY,
            prop::collection::vec(300i64..14 * HOUR, 4..40),
            prop::option::of((any::<usize>(), 0usize..4)),
            prop::collection::vec(any::<usize>(), 0..14),
            prop::collection::vec(0i64..60, 16),
            any::<bool>(),
        ),
        (
            prop::collection::vec(prop::bool::weighted(0.15), 16),
            prop::option::weighted(0.3, any::<usize>()),
            prop::option::weighted(0.25, any::<usize>()),
            policy,
            0i64..3 * DAY,
        ),
    )
        .prop_map(
            |(
                (start, steps, branch, backups, jitter, old_branch_backup),
                (in_use, running, gap, policy, later),
            )| Scenario {
                start,
                steps,
                branch,
                backups,
                jitter,
                old_branch_backup,
                in_use,
                running,
                gap,
                policy,
                later,
            },
        )
}

/// The cluster a scenario describes, and its clock.
fn build(s: &Scenario) -> (Cluster, i64) {
    let n = s.steps.len() as u64 + 1;
    let mut t = vec![0, T0 + s.start];
    for step in &s.steps {
        let last = t[t.len() - 1];
        t.push(last + step);
    }
    let at = |segno: u64| t[segno as usize];
    let branch = s.branch.map(|(k, a)| (2 + (k as u64) % (n - 2), a as u64));
    let mut c = Cluster::new();
    let main_end = branch.map_or(n, |(k, _)| k);
    for segno in 1..=main_end {
        c.seg(1, segno, at(segno));
    }
    if let Some((k, a)) = branch {
        // The old primary goes on for a few minutes on timeline 1.
        for i in 1..=a {
            c.seg(1, k + i, at(k) + i as i64 * 60);
        }
        c.facts
            .histories
            .insert(tl(2), vec![(tl(1), lsn(k, SEG / 4 * 3))]);
        c.files.push("00000002.history".into());
        c.files.push(format!("{}.partial", wal(1, k)));
        let first = (at(k) + 30) * 1_000_000;
        c.seg_facts(
            2,
            k,
            SegmentFacts {
                end_lsn: lsn(k, SEG - 100),
                last_commit: Some((lsn(k, SEG / 8 * 7), first)),
                max_micros: Some(first),
                restore_points: Vec::new(),
                tablespaces_created: Vec::new(),
            },
        );
        for segno in k + 1..=n {
            c.seg(2, segno, at(segno));
        }
    }
    let mut picks: Vec<u64> = s
        .backups
        .iter()
        .map(|b| 2 + (*b as u64) % (n - 1))
        .collect();
    picks.sort_unstable();
    picks.dedup();
    let mut ids = Vec::new();
    for (i, segno) in picks.into_iter().enumerate() {
        let timeline = match branch {
            Some((k, _)) if segno > k => 2,
            _ => 1,
        };
        let id = format!("b{timeline}-{segno:04}");
        // Consistent up to a minute before the segment's commit, after the previous one.
        let stop = at(segno) - s.jitter[i % s.jitter.len()];
        // Some backups start in the segment before (after timeline 2's first commit).
        let start = if s.jitter[i % s.jitter.len()] % 2 == 1 {
            lsn(segno - 1, SEG / 8 * 7 + 64)
        } else {
            lsn(segno, 40)
        };
        c.backup_from(&id, timeline, start, segno, stop);
        ids.push(id);
    }
    if let Some((k, a)) = branch {
        if a > 0 && s.old_branch_backup {
            let id = format!("b1-{:04}", k + 1);
            c.backup(&id, 1, k + 1, at(k) + 60);
            ids.push(id);
        }
    }
    for (i, id) in ids.iter().enumerate() {
        if s.in_use[i % s.in_use.len()] {
            c.in_use.insert(id.clone());
        }
    }
    c.running = s.running.map(|r| match branch {
        Some((k, _)) => lsn(k + 1 + (r as u64) % (n - k), 100),
        None => lsn(1 + (r as u64) % n, 100),
    });
    if let Some(g) = s.gap {
        let keys: Vec<(TimelineId, u64)> = c.facts.segments.keys().copied().collect();
        let (gt, gs) = keys[g % keys.len()];
        c.facts.segments.remove(&(gt, gs));
        let name = segment_name(gt, gs, SEG);
        c.files.retain(|f| *f != name);
    }
    let last = c
        .facts
        .segments
        .values()
        .filter_map(|f| f.max_micros)
        .max()
        .unwrap_or(0)
        .div_euclid(1_000_000);
    (c, last + s.later)
}

/// Backups oldest first, as the grid sees them.
fn by_time(c: &Cluster) -> Vec<&BackupPoint> {
    let mut v: Vec<&BackupPoint> = c.facts.backups.iter().collect();
    v.sort_by_key(|b| (c.times[&b.id], b.stop_lsn, b.id.clone()));
    v
}

fn check(s: &Scenario) -> Result<(), TestCaseError> {
    let (c, now) = build(s);
    let p = c.plan(now, s.policy);
    let kept: BTreeSet<&str> = p.kept_backups().collect();
    let dropped: BTreeSet<&str> = p.dropped_backups().collect();
    prop_assert_eq!(kept.len() + dropped.len(), c.facts.backups.len());
    let files: BTreeSet<&String> = c.files.iter().collect();
    prop_assert_eq!(
        p.decisions.len(),
        c.facts.backups.len() + files.len(),
        "one decision per item"
    );

    // (1) The window, latest and each kept backup's consistency survive.
    let after = apply(&c.facts, &p);
    if let Some(days) = s.policy.recovery_window_days {
        let from = (now - i64::from(days) * DAY) * 1_000_000;
        for t in [None, Some(tl(1)), Some(tl(2))] {
            if let Err(e) = assert_window_kept(&c.facts, &after, t, from, now * 1_000_000) {
                return Err(TestCaseError::fail(e));
            }
        }
    }
    let latest = request(Target::Latest, None, true);
    if let Ok(before) = restore::plan(&c.facts, &latest) {
        let now_plan = restore::plan(&after, &latest);
        prop_assert!(now_plan.is_ok(), "latest: {:?}", now_plan);
        if let Ok(a) = now_plan {
            prop_assert_eq!(
                a.backup.stop_lsn.0 + a.wal_bytes,
                before.backup.stop_lsn.0 + before.wal_bytes,
                "latest reaches as far"
            );
        }
    }
    for b in after.backups.iter() {
        let mut r = request(Target::Immediate, Some(b.timeline), true);
        r.backup = Some(b.id.clone());
        if restore::plan(&c.facts, &r).is_ok() {
            let e = restore::plan(&after, &r);
            prop_assert!(e.is_ok(), "backup {} no longer recovers: {:?}", b.id, e);
        }
    }

    // (2) The grid counts.
    let order = by_time(&c);
    let month = |t: i64| {
        let (y, m, ..) = utc_civil(t);
        y * 12 + m
    };
    let grids: [(u32, &dyn Fn(i64) -> i64); 4] = [
        (s.policy.keep_hourly, &|t| t.div_euclid(HOUR)),
        (s.policy.keep_daily, &|t| t.div_euclid(DAY)),
        (s.policy.keep_weekly, &|t| {
            (t.div_euclid(DAY) + 3).div_euclid(7)
        }),
        (s.policy.keep_monthly, &month),
    ];
    for (n, period) in grids {
        let mut newest: BTreeMap<i64, &str> = BTreeMap::new();
        for b in &order {
            newest.insert(period(c.times[&b.id]), &b.id);
        }
        let held = newest
            .values()
            .rev()
            .take(n as usize)
            .filter(|id| kept.contains(**id))
            .count();
        prop_assert_eq!(held, (n as usize).min(newest.len()));
    }

    // (3) min_backups, (4) in use.
    for b in order.iter().rev().take(s.policy.min_backups as usize) {
        prop_assert!(kept.contains(b.id.as_str()), "min_backups: {}", b.id);
    }
    for id in &c.in_use {
        prop_assert!(kept.contains(id.as_str()), "in use: {}", id);
    }

    // (5) Reasons: always some, and no kept item leans on a dropped backup.
    for d in &p.decisions {
        prop_assert!(!d.reasons.is_empty(), "{:?}", d);
        if d.keep {
            for r in &d.reasons {
                for gone in &dropped {
                    prop_assert!(!r.contains(gone), "{:?} relies on dropped {}", d, gone);
                }
            }
        }
    }
    // Nothing is pruned without a rule.
    if s.policy == no_rules() {
        prop_assert_eq!(p.drops().count(), 0);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn pruning_never_breaks_a_promised_restore(s in scenario()) {
        check(&s)?;
    }
}
