//! Pruning by policy (issue 5) on zfs-fuse with real PostgreSQL: what the policy does not
//! keep is destroyed in ZFS and in the catalog, and what it keeps still restores.

use std::time::Duration;

use serde_json::Value;
use walvault_tests::harness::backup::{
    backup_ok, list_backups, Deployment, CLUSTER, ZFS_FUSE_LOCK,
};
use walvault_tests::harness::restore::{archive_now, Lab, PointInTime};
use walvault_tests::harness::{wait_until, Storage};

/// Holds an exclusive flock on `path` in a child `flock` process until it is killed (its
/// shell then reads end of input and exits too).
fn hold_lock(path: &str) -> std::process::Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new("flock")
        .args(["-x", "-o", path, "-c", "echo held; read _"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn flock");
    let out = child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(out)
        .read_line(&mut line)
        .expect("read flock");
    assert_eq!(line.trim(), "held", "flock did not take {path}");
    child
}

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// `policy set <args…>` for the lab's cluster, as its operator.
fn set_policy(lab: &Lab, args: &[&str]) {
    let mut all = vec!["policy", "set"];
    all.extend_from_slice(args);
    let r = lab.op(&all);
    assert!(r.success(), "{}", r.describe());
}

fn decisions(v: &Value, kind: &str, keep: bool) -> Vec<String> {
    v["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .filter(|d| d["kind"] == kind && d["keep"] == keep)
        .map(|d| d["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn prune_by_min_backups_destroys_the_oldest_and_keeps_what_restores() {
    let Some(mut lab) = Lab::start("prune", Some(1)) else {
        return;
    };
    let d = &lab.d;
    set_policy(
        &lab,
        &["--window", "none", "--min-backups", "2", "--daily", "0"],
    );
    let mut ids = Vec::new();
    let mut at_backup = Vec::new();
    for _ in 0..3 {
        d.primary.pgbench(&["-n", "-t", "200"]);
        archive_now(&d.primary);
        ids.push(backup_ok(&d.agent, &d.primary, &[]).id);
        at_backup.push(d.primary.checksums());
    }
    d.primary.pgbench(&["-n", "-t", "200"]);
    archive_now(&d.primary);
    let last = d.primary.checksums();
    let files_before = d.storage.archive_files(CLUSTER);

    // The plan: the oldest backup and the WAL only it needed go; nothing is touched yet.
    let plan = json(&lab.op(&["prune", "--dry-run", "--json"]).stdout);
    assert_eq!(plan["executed"], false, "{plan}");
    assert_eq!(
        decisions(&plan, "backup", false),
        [ids[0].clone()],
        "{plan}"
    );
    assert_eq!(
        decisions(&plan, "backup", true),
        ids[1..].to_vec(),
        "{plan}"
    );
    let wal_drops = decisions(&plan, "wal", false);
    assert!(
        !wal_drops.is_empty(),
        "nothing before backup 2 would go: {plan}"
    );
    assert_eq!(d.storage.archive_files(CLUSTER), files_before);
    assert_eq!(list_backups(&d.agent, None).len(), 3);

    // Another tenant's operator may not prune it.
    let globex = d.wv.operator("globex", None);
    globex
        .run(&["--cluster", CLUSTER, "prune", "--dry-run"])
        .assert_refused(walvault_tests::harness::NOT_ALLOWED);

    // The prune: gone from ZFS, the archive directory and the catalog.
    let done = json(&lab.op(&["prune", "--json"]).stdout);
    assert_eq!(done["executed"], true, "{done}");
    assert_eq!(done["backups_dropped"], 1, "{done}");
    assert_eq!(done["wal_dropped"], wal_drops.len(), "{done}");
    let snaps = d.snapshots();
    assert!(
        snaps.iter().all(|s| !s.ends_with(&format!("@{}", ids[0]))),
        "backup {} still has snapshots: {snaps:?}",
        ids[0]
    );
    let listed: Vec<String> = list_backups(&d.agent, None)
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(listed, ids[1..].to_vec());
    let files = d.storage.archive_files(CLUSTER);
    let listed_wal = walvault_tests::harness::wal::wal_list(&d.agent, None);
    for w in &wal_drops {
        assert!(
            !files.contains(&format!("{w}.zst")),
            "{w} is still archived"
        );
        assert!(
            !listed_wal.contains_key(w.as_str()),
            "{w} is still catalogued"
        );
    }
    // What retention dropped between kept backups is an expected hole, not a missing one.
    for (first, last, cause) in walvault_tests::harness::wal::wal_list_holes(&d.agent, None, 1) {
        assert_eq!(cause, "pruned", "a hole {first} … {last} after the prune");
    }
    // A second prune finds nothing more to do.
    let again = json(&lab.op(&["prune", "--json"]).stdout);
    assert_eq!(again["backups_dropped"], 0, "{again}");
    assert_eq!(again["wal_dropped"], 0, "{again}");

    // What was kept restores: the oldest kept backup to its consistent point, and the
    // newest to the end of the archive.
    let oldest = lab.restore_instance(&["--backup", &ids[1], "--immediate"]);
    assert_eq!(
        oldest.checksums(),
        at_backup[1],
        "backup {} after the prune",
        ids[1]
    );
    lab.drop_restore(&oldest.info.id);
    let latest = lab.restore_instance(&["--latest"]);
    assert_eq!(latest.checksums(), last, "the latest state after the prune");
    lab.drop_restore(&latest.info.id);

    // A rebuilt catalog still knows what was pruned on purpose.
    let holes = walvault_tests::harness::wal::wal_list_holes(&lab.d.agent, None, 1);
    lab.d.wv.server.stop();
    lab.d.wv.server.catalog_rebuild();
    lab.d.wv.server.restart();
    assert_eq!(
        walvault_tests::harness::wal::wal_list_holes(&lab.d.agent, None, 1),
        holes,
        "the holes differ after a catalog rebuild"
    );
}

#[test]
fn the_window_keeps_every_point_since_its_anchor_restorable() {
    let Some(lab) = Lab::start("prune_window", Some(1)) else {
        return;
    };
    let d = &lab.d;
    // A day's window with no backup that old: the oldest backup anchors it; the middle one
    // is kept by no rule, but the WAL through it stays.
    set_policy(
        &lab,
        &["--window", "1", "--min-backups", "1", "--daily", "0"],
    );
    d.primary.pgbench(&["-n", "-t", "200"]);
    archive_now(&d.primary);
    let first = backup_ok(&d.agent, &d.primary, &[]).id;
    d.primary.pgbench(&["-n", "-t", "200"]);
    let t1 = PointInTime::between_commits(&d.primary);
    let at_t1 = d.primary.checksums();
    d.primary.pgbench(&["-n", "-t", "200"]);
    archive_now(&d.primary);
    let middle = backup_ok(&d.agent, &d.primary, &[]).id;
    d.primary.pgbench(&["-n", "-t", "200"]);
    let t2 = PointInTime::between_commits(&d.primary);
    let at_t2 = d.primary.checksums();
    d.primary.pgbench(&["-n", "-t", "200"]);
    archive_now(&d.primary);
    let newest = backup_ok(&d.agent, &d.primary, &[]).id;
    d.primary.pgbench(&["-n", "-t", "50"]);
    archive_now(&d.primary);
    lab.wait_window_covers(t2.micros);

    let done = json(&lab.op(&["prune", "--json"]).stdout);
    assert_eq!(done["backups_dropped"], 1, "{done}");
    assert_eq!(decisions(&done, "backup", false), [middle], "{done}");
    assert_eq!(
        decisions(&done, "backup", true),
        [first.clone(), newest],
        "{done}"
    );
    // Only WAL from before the first backup goes: the window needs every segment since.
    let kept_wal = decisions(&done, "wal", true);
    let first_kept = kept_wal.iter().min().expect("kept WAL");
    for w in decisions(&done, "wal", false) {
        assert!(&w < first_kept, "{w} dropped inside the window: {done}");
    }

    // The oldest point the window promises, and one whose nearest snapshot is gone.
    for (t, expected) in [(&t1, &at_t1), (&t2, &at_t2)] {
        let inst = lab.restore_instance(&["--time", &t.utc]);
        assert_eq!(inst.info.backup_id, first, "{:?}", inst.info);
        assert_eq!(
            &inst.checksums(),
            expected,
            "restored to {} after the prune",
            t.utc
        );
        lab.drop_restore(&inst.info.id);
    }
}

#[test]
fn a_prune_killed_halfway_is_finished_by_the_next() {
    let Some(mut lab) = Lab::start("prune_killed", Some(1)) else {
        return;
    };
    set_policy(
        &lab,
        &["--window", "none", "--min-backups", "1", "--daily", "0"],
    );
    let mut ids = Vec::new();
    for _ in 0..5 {
        lab.d.primary.pgbench(&["-n", "-t", "100"]);
        archive_now(&lab.d.primary);
        ids.push(backup_ok(&lab.d.agent, &lab.d.primary, &[]).id);
    }
    let last = lab.d.primary.checksums();

    // Hold the lock the server takes around every mutating zfs command: the prune records
    // its job, takes the first backup out of the catalog, and then waits to destroy its
    // snapshot. That is where the server is killed.
    let zfs = matches!(lab.d.storage, Storage::Zfs(_));
    let mut held = zfs.then(|| hold_lock(ZFS_FUSE_LOCK));
    let mut prune = lab.op_spawn(&["prune", "--json"]);
    if zfs {
        wait_until(
            "the prune to take the oldest backup out of the catalog",
            Duration::from_secs(120),
            || {
                let listed = list_backups(&lab.d.agent, None);
                (listed.len() == 4).then_some(())
            },
        );
    } else {
        let _ = prune.wait();
    }
    lab.d.wv.server.kill();
    let _ = prune.wait();
    if let Some(h) = held.as_mut() {
        drop(h.stdin.take());
        let _ = h.kill();
        let _ = h.wait();
    }
    lab.d.wv.server.restart();
    // Whatever the kill left, the catalog points at nothing that is gone.
    assert_consistent(&lab, &ids, false);

    let done = json(&lab.op(&["prune", "--json"]).stdout);
    if zfs {
        assert!(
            done["resumed"].as_u64().unwrap_or(0) > 0,
            "the interrupted job was not finished: {done}"
        );
    }
    let listed: Vec<String> = list_backups(&lab.d.agent, None)
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(listed, [ids[4].clone()], "{done}");
    // And the rerun finished the job: nothing is left that the catalog does not know.
    assert_consistent(&lab, &ids, true);
    let inst = lab.restore_instance(&["--latest"]);
    assert_eq!(inst.checksums(), last);
    lab.drop_restore(&inst.info.id);
}

/// Every catalogued backup has its snapshot, every catalogued WAL file its file; with
/// `both_ways`, also every snapshot and archived file is catalogued.
fn assert_consistent(lab: &Lab, ids: &[String], both_ways: bool) {
    let d = &lab.d;
    let snaps = d.snapshots();
    for b in list_backups(&d.agent, None) {
        assert!(
            snaps.iter().any(|s| s.ends_with(&format!("/db@{}", b.id))),
            "backup {} is catalogued without its snapshot: {snaps:?}",
            b.id
        );
    }
    assert!(ids.iter().any(|id| snaps.iter().any(|s| s.ends_with(id))));
    let files = d.storage.archive_files(CLUSTER);
    let v = json(&d.agent.ok(&["wal-list", "--json"]));
    let catalogued: Vec<String> = v["files"]
        .as_array()
        .expect("wal-list --json has files")
        .iter()
        .map(|w| format!("{}.zst", w["name"].as_str().unwrap_or_default()))
        .collect();
    for name in &catalogued {
        assert!(files.contains(name), "{name} is catalogued but gone");
    }
    if both_ways {
        for f in &files {
            assert!(catalogued.contains(f), "{f} is archived but not catalogued");
        }
        let backups: Vec<String> = list_backups(&d.agent, None)
            .into_iter()
            .map(|b| format!("/db@{}", b.id))
            .collect();
        for s in snaps.iter().filter(|s| s.contains("/db@")) {
            assert!(
                backups.iter().any(|b| s.ends_with(b.as_str())),
                "snapshot {s} is left without a catalogued backup"
            );
        }
    }
}

#[test]
fn the_server_prunes_on_its_schedule() {
    let Some(d) = Deployment::start_with(
        "prune_scheduled",
        Some(1),
        "\n[retention]\nprune_interval_secs = 2\n",
    ) else {
        return;
    };
    let op = d.wv.operator("acme", None);
    let set = op.run(&[
        "--cluster",
        CLUSTER,
        "policy",
        "set",
        "--window",
        "none",
        "--min-backups",
        "1",
        "--daily",
        "0",
    ]);
    assert!(set.success(), "{}", set.describe());
    let first = backup_ok(&d.agent, &d.primary, &[]).id;
    d.primary.pgbench(&["-n", "-t", "100"]);
    archive_now(&d.primary);
    let second = backup_ok(&d.agent, &d.primary, &[]).id;
    wait_until(
        "the scheduled prune to destroy the older backup",
        Duration::from_secs(120),
        || {
            let ids: Vec<String> = list_backups(&d.agent, None)
                .into_iter()
                .map(|b| b.id)
                .collect();
            (ids == [second.clone()]).then_some(())
        },
    );
    wait_until("its snapshot to go", Duration::from_secs(60), || {
        d.snapshots()
            .iter()
            .all(|s| !s.ends_with(&format!("@{first}")))
            .then_some(())
    });
}
