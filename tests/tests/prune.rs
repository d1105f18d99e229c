//! Pruning by policy (issue 5) on zfs-fuse with real PostgreSQL: what the policy does not
//! keep is destroyed in ZFS and in the catalog, and what it keeps still restores.

use serde_json::Value;
use walvault_tests::harness::backup::{backup_ok, list_backups, CLUSTER};
use walvault_tests::harness::restore::{archive_now, Lab};

fn json(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
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
    let Some(lab) = Lab::start("prune", Some(1)) else {
        return;
    };
    let d = &lab.d;
    let set = lab.op(&["policy", "set", "--window", "none", "--min-backups", "2"]);
    assert!(set.success(), "{}", set.describe());
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
    let listed_wal = d.agent.ok(&["wal-list"]);
    for w in &wal_drops {
        assert!(
            !files.contains(&format!("{w}.zst")),
            "{w} is still archived"
        );
        assert!(!listed_wal.contains(w.as_str()), "{w} is still catalogued");
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
}
