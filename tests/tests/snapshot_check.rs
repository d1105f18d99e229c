//! Every snapshot verified (issue 11): the server clones each new snapshot, recovers it to
//! consistency, reads every table, runs amcheck and pg_checksums, checks the WAL to the next
//! snapshot, and records a receipt. Tested with real PostgreSQL 15 (data checksums on),
//! zfs-fuse and the real binaries: a good backup is verified; a backup whose copy holds a
//! flipped byte fails, loudly, naming the page; a snapshot whose following WAL is gone fails,
//! naming the hole; `walvault verify --snapshot` checks one on demand.

use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

use walvault_tests::harness::{
    backup::{backup_ok, list_backups, BackupInfo},
    restore::{archive_now, stop_postgres_on_storage, Lab},
    wait_until,
};

const CLUSTER: &str = "acme/db1";
const CHECKS: &str = "[verify]\nsnapshots_interval_secs = 1\n[rollforward]\ninterval_secs = 0\n";

/// Waits until snapshot `id` is verified or failed.
fn wait_checked(lab: &Lab, id: &str) -> BackupInfo {
    wait_until(
        &format!("snapshot {id} to be verified or to fail"),
        Duration::from_secs(240),
        || {
            list_backups(&lab.operator, Some(CLUSTER))
                .into_iter()
                .find(|b| b.id == id && b.verification != "pending")
        },
    )
}

#[test]
fn snapshots_are_verified_and_damage_fails_loudly() {
    let Some(mut lab) = Lab::start_with("snapshot_check", Some(2), CHECKS) else {
        return;
    };
    lab.d.primary.enable_data_checksums();
    // A table nothing writes after the first backup (frozen now, never vacuumed again), so
    // that the next incremental backup does not rewrite a block broken in the server's copy.
    lab.d.primary.psql(
        "CREATE TABLE stable WITH (autovacuum_enabled = false) AS \
         SELECT g, md5(g::text) AS h FROM generate_series(1, 10000) g",
    );
    lab.d.primary.psql("VACUUM (FREEZE) stable");
    lab.d.primary.psql("CHECKPOINT");
    let good = backup_ok(&lab.d.agent, &lab.d.primary, &[]);
    let checked = wait_checked(&lab, &good.id);
    let receipt = checked.receipt.clone().expect("a receipt");
    eprintln!("receipt of {}: {receipt:?}", good.id);
    assert_eq!(checked.verification, "verified", "{receipt:?}");
    for check in [
        "recovered to consistency",
        "a query per table",
        "amcheck: every table and B-tree index",
        "page checksums of every relation block",
        "WAL to the next snapshot",
    ] {
        assert!(
            receipt.checks.iter().any(|c| c == check),
            "{check:?} did not run: {receipt:?}"
        );
    }
    assert!(receipt.tables >= 4, "{receipt:?}");
    assert!(receipt.indexes >= 3, "{receipt:?}");
    assert!(receipt.first_query_ms > 0 && receipt.first_query_ms <= receipt.duration_ms);

    // WAL after the good backup, then a byte flipped in the server's copy of a table the
    // next (incremental) backup does not rewrite: its snapshot holds a broken page.
    lab.d.primary.pgbench(&["-n", "-t", "200"]);
    archive_now(&lab.d.primary);
    let rel = lab.d.primary.psql("SELECT pg_relation_filepath('stable')");
    let file = lab.d.storage.data_copy_dir(CLUSTER).join(&rel);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
        f.seek(SeekFrom::Start(8192 + 5000)).unwrap();
        f.write_all(&[0xA5]).unwrap();
        f.sync_all().unwrap();
    }
    lab.d.wv.server.allow_errors("FAILED its verification");
    lab.d
        .primary
        .psql("CREATE TABLE after_damage AS SELECT 1 AS one");
    let damaged = backup_ok(&lab.d.agent, &lab.d.primary, &[]);
    let checked = wait_checked(&lab, &damaged.id);
    let receipt = checked.receipt.clone().expect("a receipt");
    eprintln!("receipt of {}: {receipt:?}", damaged.id);
    assert_eq!(checked.verification, "failed", "{receipt:?}");
    let errors = receipt.errors.join("\n");
    assert!(
        errors.contains("stable") || errors.contains(&rel),
        "the errors do not name the damaged table or file {rel}:\n{errors}"
    );
    assert!(
        lab.d
            .wv
            .server
            .log_text()
            .contains("FAILED its verification"),
        "the failure was not logged"
    );
    let r = lab.op(&["backups"]);
    assert!(
        r.stdout
            .contains(&format!("{} FAILED its verification", damaged.id)),
        "{}",
        r.stdout
    );
    let r = lab.op(&["verify"]);
    assert!(!r.success(), "verify passed with a failed snapshot");
    assert!(r.stdout.contains(&damaged.id), "{}", r.describe());

    // The receipts are on the snapshots too: a catalog rebuilt from the pool still has them.
    let receipts = |lab: &Lab| {
        list_backups(&lab.operator, Some(CLUSTER))
            .into_iter()
            .map(|b| (b.id, b.verification, b.receipt))
            .collect::<Vec<_>>()
    };
    let before = receipts(&lab);
    lab.d.wv.server.stop();
    lab.d.wv.server.catalog_rebuild();
    lab.d.wv.server.restart();
    assert_eq!(receipts(&lab), before, "receipts lost in a catalog rebuild");

    // A segment between the two backups goes missing: the first no longer reaches the second.
    let seg_size: u64 = 16 << 20;
    let missing = good.stop().0 / seg_size + 1;
    assert!(
        missing < damaged.start().0 / seg_size,
        "no whole segment lies between the backups"
    );
    let name = format!("00000001{:08X}{:08X}", missing >> 8, missing & 0xFF);
    let path = lab.d.storage.wal_dir(CLUSTER).join(format!("{name}.zst"));
    std::fs::remove_file(&path).unwrap_or_else(|e| panic!("remove {}: {e}", path.display()));
    lab.d
        .wv
        .server
        .allow_errors("archived file is damaged: catalogued, but gone");
    lab.d.wv.server.restart();
    let r = lab.op(&["verify", "--snapshot", &good.id]);
    assert!(!r.success(), "{}", r.describe());
    let backups = list_backups(&lab.operator, Some(CLUSTER));
    let again = backups.iter().find(|b| b.id == good.id).expect("listed");
    assert_eq!(again.verification, "failed", "{again:?}");
    let errors = again
        .receipt
        .as_ref()
        .map(|r| r.errors.join("\n"))
        .unwrap_or_default();
    assert!(
        errors.contains("not all archived") && errors.contains(&name),
        "the failure does not name the missing segment {name}:\n{errors}"
    );
    lab.d.wv.server.stop();
}

#[test]
fn a_server_killed_mid_verification_leaves_nothing_behind() {
    let Some(mut lab) = Lab::start_with("snapshot_check_killed", Some(1), CHECKS) else {
        return;
    };
    lab.d
        .wv
        .server
        .restart_with_fault(Some("verify-recovering"));
    let backup = backup_ok(&lab.d.agent, &lab.d.primary, &[]);
    assert!(
        lab.d.wv.server.wait_exit(Duration::from_secs(120)),
        "the server did not die at verify-recovering"
    );
    // The next start destroys the clone (stopping its PostgreSQL) and verifies again.
    lab.d.wv.server.restart_with_fault(None);
    let checked = wait_checked(&lab, &backup.id);
    assert_eq!(checked.verification, "verified", "{checked:?}");
    assert!(
        lab.d
            .wv
            .server
            .log_text()
            .contains("destroyed verification clones the last stop left"),
        "the restart did not find the clone the killed server left"
    );
    lab.d.wv.server.stop();
    let stray = stop_postgres_on_storage(&lab.d.storage, lab.d.td.log());
    assert!(
        stray.is_empty(),
        "PostgreSQL still ran on the storage: {stray:?}"
    );
}
