//! The WAL continuity ledger (issue 9), built the way it happens: a primary whose
//! archive_command fails for a while (six segments pile up as `.ready`), its streaming
//! standby promoted after the primary is lost, archiving timeline 2 into the same cluster.
//! The archive then lacks the six timeline-1 segments: `window` and `wal-list` show the hole,
//! and every restore into or across it (a time, an LSN, `--latest`, dry runs and both
//! deliveries) is refused naming the missing segments. A backfill of the standby's `pg_wal`
//! closes the hole, and restores to a time inside the former hole and to the latest point on
//! timeline 2 give exactly the source's data at those points.

use std::collections::BTreeMap;
use std::time::Duration;

use walvault_tests::harness::{
    backup::backup_ok,
    restore::{archive_now, wait_promoted, Lab, PointInTime},
    wait_until,
    wal::{archive_conf, wal_list_holes},
    Pg,
};

/// The part of a refusal a user reads: it must name the first and last missing segment.
fn assert_names_hole(stderr: &str, first: &str, last: &str) {
    assert!(
        stderr.contains(first) && stderr.contains(last),
        "the refusal does not name the missing segments {first} … {last}: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
}

#[test]
fn a_failover_that_lost_wal_is_a_hole_until_a_standby_fills_it() {
    let Some(mut lab) = Lab::start("continuity_failover", Some(1)) else {
        return;
    };
    lab.d.primary.psql(
        "CREATE TABLE events (id serial PRIMARY KEY, stage text NOT NULL, at timestamptz \
         DEFAULT clock_timestamp())",
    );
    let backup = backup_ok(&lab.d.agent, &lab.d.primary, &[]);
    lab.d
        .primary
        .psql("INSERT INTO events (stage) VALUES ('archived before the outage')");
    archive_now(&lab.d.primary);

    // A streaming standby that archives into the same cluster once promoted, and keeps its
    // received WAL around (wal_keep_size in archive_conf).
    let mut conf = archive_conf(&lab.d.agent);
    conf.extend([
        format!("primary_conninfo = '{}'", lab.d.primary.conninfo()),
        "hot_standby = on".to_owned(),
    ]);
    let mut standby = Pg::basebackup(lab.td(), "standby", &lab.d.primary, &conf, true);
    standby.start();

    // The archive_command starts failing: segments pile up on the primary.
    let primary = &lab.d.primary;
    primary.psql("ALTER SYSTEM SET archive_command = 'false'");
    primary.psql("SELECT pg_reload_conf()");
    let mut at_hole: Option<(BTreeMap<String, String>, PointInTime)> = None;
    for i in 0..6 {
        primary.psql(&format!(
            "INSERT INTO events (stage) SELECT 'during the outage {i}' FROM generate_series(1, 100)"
        ));
        if i == 2 {
            at_hole = Some((primary.checksums(), PointInTime::between_commits(primary)));
            primary.psql("INSERT INTO events (stage) VALUES ('right after T')");
        }
        primary.switch_wal();
    }
    let (at_hole, t_hole) = at_hole.expect("recorded");
    let lsn_in_hole = primary.psql("SELECT pg_current_wal_lsn()");
    wait_until(
        &format!("the standby to replay up to {lsn_in_hole}"),
        Duration::from_secs(120),
        || {
            let r = standby.psql(&format!(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= '{lsn_in_hole}', false)"
            ));
            (r == "t").then_some(())
        },
    );
    let lost = primary.ready_segments();
    assert!(
        lost.len() >= 6,
        "the primary should hold at least six unarchived segments: {lost:?}"
    );
    eprintln!("segments the primary never archived: {lost:?}");

    // The primary is lost; the standby takes over and archives timeline 2.
    lab.d.primary.stop_mode("immediate");
    assert_eq!(standby.psql("SELECT pg_promote()"), "t");
    wait_promoted(&standby);
    standby.psql("INSERT INTO events (stage) SELECT 'timeline 2' FROM generate_series(1, 50)");
    let at_tl2 = standby.checksums();
    archive_now(&standby);
    assert_ne!(at_hole, at_tl2);
    let (first, last) = (lost[0].clone(), lost[lost.len() - 1].clone());

    // `window` and `wal-list` show the hole, on timeline 2's history and on timeline 1.
    let window = lab.window();
    eprintln!("window with the hole: {window:?}");
    let tl2 = window
        .iter()
        .find(|w| w.timeline == 2)
        .unwrap_or_else(|| panic!("no timeline 2 in the window: {window:?}"));
    let holes: Vec<(String, String)> = tl2
        .holes
        .iter()
        .map(|h| (h.first.clone(), h.last.clone()))
        .collect();
    assert_eq!(
        holes,
        vec![(first.clone(), last.clone())],
        "timeline 2's holes in `window`"
    );
    assert!(tl2.holes.iter().all(|h| h.cause == "missing"), "{tl2:?}");
    assert_eq!(tl2.spans.len(), 1, "{tl2:?}");
    assert!(
        tl2.spans[0].until_hole.as_deref() == Some(first.as_str()),
        "{tl2:?}"
    );
    let tl1 = window.iter().find(|w| w.timeline == 1).expect("timeline 1");
    assert_eq!(
        tl1.holes.len(),
        1,
        "timeline 1 also ends before its child's switch: {tl1:?}"
    );
    for t in [1, 2] {
        assert_eq!(
            wal_list_holes(&lab.d.agent, None, t),
            vec![(first.clone(), last.clone(), "missing".to_owned())],
            "`wal-list` of timeline {t}"
        );
    }
    assert!(
        lab.d.wv.server.log_text().contains("WAL hole"),
        "the server's log does not report the hole"
    );

    // Every restore into or across it is refused, naming the missing segments; nothing is
    // left behind.
    let time = t_hole.utc.as_str();
    for args in [
        vec!["--latest", "--dry-run"],
        vec!["--time", time, "--dry-run"],
        vec!["--lsn", lsn_in_hole.as_str(), "--dry-run"],
        vec!["--latest", "--to", "instance"],
        vec!["--time", time, "--to", "instance"],
    ] {
        let mut all = vec!["restore"];
        all.extend_from_slice(&args);
        let r = lab.op(&all);
        assert!(
            !r.success(),
            "restore {args:?} was not refused: {}",
            r.describe()
        );
        assert_names_hole(&r.stderr, &first, &last);
    }
    let dir = lab.empty_instance("refused");
    let r = lab.try_restore_to_dir(dir.data_dir(), &["--latest"]);
    assert!(
        !r.success(),
        "a directory restore across the hole: {}",
        r.describe()
    );
    assert_names_hole(&r.stderr, &first, &last);
    assert!(
        lab.restores().is_empty(),
        "a refused restore left {:?}",
        lab.restores()
    );

    // Backfill: the standby still has the segments in its pg_wal.
    for name in &lost {
        let path = standby.wal_dir().join(name);
        assert!(path.is_file(), "the standby lacks {name}");
        lab.d.agent.ok(&["wal-push", path.to_str().expect("utf-8")]);
    }
    assert!(
        wal_list_holes(&lab.d.agent, None, 2).is_empty(),
        "the hole is still there after the backfill"
    );
    let window = lab.window();
    assert!(
        window.iter().all(|w| w.holes.is_empty()),
        "holes after the backfill: {window:?}"
    );
    assert!(lab.d.wv.server.log_text().contains("WAL hole closed"));

    // Restores inside the former hole and to the end of timeline 2 are exact.
    let (at_t, out) = lab.restore_and_start("in-the-hole", &["--time", time]);
    assert_eq!(out.backup_id, backup.id);
    assert_eq!(
        at_t.checksums(),
        at_hole,
        "restore to a time inside the former hole"
    );
    drop(at_t);
    let inst = lab.restore_instance(&["--latest"]);
    assert_eq!(
        inst.checksums(),
        at_tl2,
        "--latest on timeline 2 after the backfill"
    );
    lab.drop_restore(&inst.info.id);
}

#[test]
fn a_standby_archiving_always_pushes_the_same_segments_without_a_conflict() {
    let Some(lab) = Lab::start("continuity_always", Some(1)) else {
        return;
    };
    backup_ok(&lab.d.agent, &lab.d.primary, &[]);
    let mut conf = archive_conf(&lab.d.agent);
    conf.extend([
        "archive_mode = always".to_owned(),
        format!("primary_conninfo = '{}'", lab.d.primary.conninfo()),
        "hot_standby = on".to_owned(),
    ]);
    let mut standby = Pg::basebackup(lab.td(), "always", &lab.d.primary, &conf, true);
    standby.start();
    let mut last = String::new();
    for _ in 0..4 {
        lab.d.primary.pgbench(&["-n", "-t", "100"]);
        last = lab.d.primary.switch_wal();
    }
    lab.d.primary.wait_archived(&last, Duration::from_secs(120));
    // The standby archives what it received, the same names with the same content.
    standby.wait_archived(&last, Duration::from_secs(120));
    let (_, archived, failed) = standby.archiver();
    assert!(archived >= 4, "the standby archived {archived} files");
    assert_eq!(
        failed, 0,
        "a standby's push of a segment the primary archived failed"
    );
    assert!(
        !lab.d.wv.server.log_text().contains("different content"),
        "the archive refused the standby's copy as other content"
    );
    assert!(wal_list_holes(&lab.d.agent, None, 1).is_empty());
}
