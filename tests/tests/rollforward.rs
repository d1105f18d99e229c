//! Roll-forward (issue 11): the server replays archived WAL on its own copy of the newest
//! backup and snapshots it, so that a point-in-time restore starts from a snapshot near its
//! target without another base backup from the host. Tested with real PostgreSQL 15,
//! zfs-fuse, TLS and the real binaries: a restore to a time after a roll-forward snapshot picks
//! it, replays only the WAL after it, and gives the source's data at that time, delivered as
//! an instance and to a directory; the snapshots survive a restart and a catalog rebuild; a new
//! backup starts a new chain; a server killed mid replay or between snapshot and catalogue
//! leaves nothing behind and the next job succeeds.

use std::time::Duration;

use walvault_proto::Lsn;
use walvault_tests::harness::{
    backup::{backup_ok, list_backups, BackupInfo},
    bench::zfs_get,
    file_tree,
    restore::{archive_now, stop_postgres_on_storage, wait_promoted, Lab, PointInTime},
    wait_until,
    wal::archive_conf,
    Pg, Storage,
};

const CLUSTER: &str = "acme/db1";

/// Looks every second; due after 1 MiB of WAL, so every stretch of pgbench rolls forward.
const EAGER: &str = "[rollforward]\ninterval_secs = 1\nevery_minutes = 0\nevery_mib = 1\n";

fn rolled(lab: &Lab) -> Vec<BackupInfo> {
    list_backups(&lab.operator, Some(CLUSTER))
        .into_iter()
        .filter(|b| b.kind == "rollforward")
        .collect()
}

/// Waits for a roll-forward snapshot of `base` consistent at or past `lsn`.
fn wait_rolled_past(lab: &Lab, base: &str, lsn: Lsn) -> BackupInfo {
    wait_until(
        &format!("a roll-forward snapshot of {base} consistent at {lsn} or later"),
        Duration::from_secs(240),
        || {
            rolled(lab)
                .into_iter()
                .rfind(|b| b.base.as_deref() == Some(base) && b.stop() >= lsn)
        },
    )
}

/// `restore --dry-run --json` as the operator.
fn dry_run(lab: &Lab, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["restore", "--dry-run", "--json"];
    all.extend_from_slice(args);
    let r = lab.op(&all);
    assert!(r.success(), "{}", r.describe());
    serde_json::from_str(r.stdout.trim()).expect("the dry run prints JSON")
}

/// Looks every second, but the server's own cadence (a GiB) is never due in a test.
const LAZY: &str = "[rollforward]\ninterval_secs = 1\nevery_minutes = 0\nevery_mib = 1024\n";

#[test]
fn a_snapshot_rolled_forward_without_a_backup_serves_pitr() {
    // Read-ahead on (it is off by default), so that this test checks it reads only.
    let config = format!("prefetch = true\n{LAZY}");
    let Some(mut lab) = Lab::start_with("rollforward", Some(3), &config) else {
        return;
    };
    // The cluster's policy sets the cadence, over the server's.
    let set = lab.op(&["policy", "set", "--rollforward-mib", "1"]);
    assert!(set.success(), "{}", set.describe());
    assert!(
        set.stdout
            .contains("roll forward     by age: server default; by WAL: every 1 MiB (cluster)"),
        "{}",
        set.stdout
    );
    let backup = backup_ok(&lab.d.agent, &lab.d.primary, &[]);
    lab.d.primary.pgbench(&["-n", "-t", "300"]);
    // A snapshot's redo point is the last checkpoint of the source it replayed, as a busy
    // source has between backups: from it, a restore replays less than from the backup.
    lab.d.primary.psql("CHECKPOINT");
    lab.d.primary.pgbench(&["-n", "-t", "50"]);
    let before = lab.d.primary.current_lsn();
    archive_now(&lab.d.primary);

    // No backup was asked for: the server rolled its copy forward by itself.
    let rf = wait_rolled_past(&lab, &backup.id, before);
    eprintln!(
        "roll-forward snapshot {} of {}: consistent at {}, redo from {}, took {} ms",
        rf.id,
        backup.id,
        rf.stop_lsn.as_deref().unwrap_or("?"),
        rf.start_lsn,
        rf.duration_ms
    );
    assert!(rf.stop() > backup.stop(), "{rf:?}");
    assert_eq!(rf.host, "walvault-server", "{rf:?}");
    assert_eq!(
        list_backups(&lab.operator, Some(CLUSTER))
            .iter()
            .filter(|b| b.kind != "rollforward")
            .count(),
        1,
        "only the one backup the host sent"
    );

    // A target after the snapshot.
    lab.d.primary.pgbench(&["-n", "-t", "100"]);
    let t = PointInTime::between_commits(&lab.d.primary);
    let at_t = lab.d.primary.checksums();
    lab.d.primary.pgbench(&["-n", "-t", "100"]);
    let last = lab.d.primary.checksums();
    assert_ne!(at_t, last, "pgbench after T changed nothing");
    archive_now(&lab.d.primary);
    lab.wait_window_covers(t.micros);

    // The plan starts from a roll-forward snapshot and replays only the WAL after it.
    let plan = dry_run(&lab, &["--time", &t.rfc3339]);
    let picked = plan["backup_id"].as_str().unwrap_or_default().to_owned();
    let snaps = rolled(&lab);
    let picked_rf = snaps
        .iter()
        .find(|s| s.id == picked)
        .unwrap_or_else(|| panic!("the plan picked {picked}, not a roll-forward snapshot: {plan}"));
    assert!(picked_rf.stop() >= rf.stop(), "{plan}");
    let from_backup = dry_run(&lab, &["--time", &t.rfc3339, "--backup", &backup.id]);
    let (wal_rf, wal_backup) = (
        plan["wal_bytes"].as_u64().unwrap_or(u64::MAX),
        from_backup["wal_bytes"].as_u64().unwrap_or(0),
    );
    eprintln!("WAL to replay to T: {wal_rf} bytes from {picked}, {wal_backup} from the backup");
    assert!(
        wal_rf < wal_backup,
        "from the roll-forward snapshot the plan replays {wal_rf} bytes, no less than the \
         {wal_backup} from the backup"
    );

    // Both deliveries hold exactly the source's data at T.
    let inst = lab.restore_instance(&["--time", &t.rfc3339]);
    assert_eq!(inst.info.backup_id, picked, "{:?}", inst.info);
    assert_eq!(inst.checksums(), at_t, "the instance restored to T differs");
    eprintln!(
        "instance from {picked}: first query {:.2?} after the request",
        inst.ready_after
    );
    // The server read ahead of that recovery the blocks its WAL changes (and the data is
    // still exactly the source's: read-ahead only reads).
    let log = lab.d.wv.server.log_text();
    let ahead = log
        .lines()
        .find(|l| {
            l.contains("read ahead of recovery") && l.contains(&format!("restore {}", inst.info.id))
        })
        .unwrap_or_else(|| panic!("no read-ahead logged for restore {}", inst.info.id));
    assert!(
        !ahead.contains(" blocks=0 ") && ahead.contains(" reads="),
        "the read-ahead read nothing: {ahead}"
    );
    lab.drop_restore(&inst.info.id);

    let (pg, dir) = lab.restore_and_start("from-rf", &["--time", &t.utc]);
    assert_eq!(dir.backup_id, picked, "{dir:?}");
    assert_eq!(pg.checksums(), at_t, "the directory restored to T differs");
    // The snapshot holds the source's own configuration, not the server's standby settings.
    let hba = std::fs::read_to_string(pg.data_dir().join("pg_hba.conf")).unwrap_or_default();
    assert!(
        !hba.contains("walvault"),
        "the delivered pg_hba.conf carries the server's rule:\n{hba}"
    );
    assert!(!pg.data_dir().join("standby.signal").exists());
    drop(pg);

    // The snapshots survive a restart and a catalog rebuild.
    let ids: Vec<String> = rolled(&lab).into_iter().map(|b| b.id).collect();
    lab.d.wv.server.stop();
    lab.d.wv.server.catalog_rebuild();
    lab.d.wv.server.restart();
    let after: Vec<String> = rolled(&lab).into_iter().map(|b| b.id).collect();
    for id in &ids {
        assert!(
            after.contains(id),
            "{id} is gone after a rebuild: {after:?}"
        );
    }

    // A new backup starts a new chain, rolled forward in turn.
    let second = backup_ok(&lab.d.agent, &lab.d.primary, &[]);
    lab.d.primary.pgbench(&["-n", "-t", "200"]);
    let before = lab.d.primary.current_lsn();
    let newest = lab.d.primary.checksums();
    archive_now(&lab.d.primary);
    let rf2 = wait_rolled_past(&lab, &second.id, before);
    let inst = lab.restore_instance(&["--latest"]);
    assert_eq!(inst.checksums(), newest);
    eprintln!(
        "--latest from {} (chain of {})",
        inst.info.backup_id, second.id
    );
    assert!(
        inst.info.backup_id == rf2.id
            || rolled(&lab)
                .iter()
                .any(|b| b.id == inst.info.backup_id && b.base.as_deref() == Some(&second.id)),
        "--latest did not start from the new chain: {:?}",
        inst.info
    );
    lab.drop_restore(&inst.info.id);
    // The first chain's snapshots are still restorable.
    let inst = lab.restore_instance(&["--time", &t.rfc3339, "--backup", &picked]);
    assert_eq!(inst.checksums(), at_t);
    lab.drop_restore(&inst.info.id);
    lab.d.wv.server.stop();
}

#[test]
fn a_server_killed_mid_roll_forward_leaves_nothing_behind() {
    const OFF: &str = "[rollforward]\ninterval_secs = 0\n";
    let Some(mut lab) = Lab::start_with("rollforward_crash", Some(1), OFF) else {
        return;
    };
    let backup = backup_ok(&lab.d.agent, &lab.d.primary, &[]);
    lab.d.primary.pgbench(&["-n", "-t", "200"]);
    let before = lab.d.primary.current_lsn();
    let last = lab.d.primary.checksums();
    archive_now(&lab.d.primary);

    // Roll-forward on from now, with the server killing itself once the standby replays.
    let config = lab.d.wv.server.config().to_owned();
    let text = std::fs::read_to_string(&config).expect("read the server's config");
    assert!(text.contains(OFF), "{text}");
    std::fs::write(&config, text.replace(OFF, EAGER)).expect("write the server's config");
    lab.d
        .wv
        .server
        .restart_with_fault(Some("rollforward-replaying"));
    assert!(
        lab.d.wv.server.wait_exit(Duration::from_secs(120)),
        "the server did not die at rollforward-replaying"
    );

    // The next start stops the standby the dead server left and puts the chain back; its job
    // then dies between taking the snapshot and cataloguing it.
    lab.d
        .wv
        .server
        .restart_with_fault(Some("rollforward-snapshotted"));
    assert!(
        lab.d.wv.server.wait_exit(Duration::from_secs(180)),
        "the server did not die at rollforward-snapshotted"
    );
    assert!(
        lab.d
            .wv
            .server
            .log_text()
            .contains("stopping a roll-forward standby left by an earlier server process"),
        "the restart did not find the standby the killed server left"
    );
    // That standby ran without fsync: its copy is not trusted, but rewound to the chain's
    // start (it has no snapshot yet).
    assert!(
        lab.d.wv.server.log_text().contains(&format!(
            "rewound an interrupted roll-forward chain to its base backup {}",
            backup.id
        )),
        "the interrupted chain was not rewound"
    );
    let dump = lab.d.wv.server.catalog_dump().to_string();
    assert!(
        !dump.contains("\"rollforward\""),
        "a roll-forward snapshot was catalogued before the crash: the fault point is misplaced"
    );

    lab.d.wv.server.restart_with_fault(None);
    let rf = wait_rolled_past(&lab, &backup.id, before);
    assert!(
        lab.d
            .wv
            .server
            .log_text()
            .contains("catalogued roll-forward snapshots the last stop left uncatalogued"),
        "the snapshot taken before the crash was not catalogued at start"
    );
    let inst = lab.restore_instance(&["--latest"]);
    assert_eq!(inst.checksums(), last, "{:?}", inst.info);
    assert_eq!(
        inst.info.backup_id, rf.id,
        "--latest did not start from the snapshot"
    );
    lab.drop_restore(&inst.info.id);

    // No standby, clone or configuration of the interrupted jobs is left.
    lab.d.wv.server.stop();
    let stray = stop_postgres_on_storage(&lab.d.storage, lab.d.td.log());
    assert!(
        stray.is_empty(),
        "PostgreSQL still ran on the storage: {stray:?}"
    );
}

#[test]
fn roll_forward_follows_a_promotion_to_timeline_2() {
    let Some(mut lab) = Lab::start_with("rollforward_tl2", Some(1), EAGER) else {
        return;
    };
    lab.d.primary.psql(
        "CREATE TABLE notes (id int PRIMARY KEY, tl int NOT NULL); \
         INSERT INTO notes SELECT g, 1 FROM generate_series(1, 1000) g",
    );
    let backup = backup_ok(&lab.d.agent, &lab.d.primary, &[]);

    // A streaming standby that archives into the same cluster once promoted.
    let mut conf = archive_conf(&lab.d.agent);
    conf.extend([
        format!(
            "restore_command = '{}'",
            lab.d.agent.shell_command("wal-fetch %f %p")
        ),
        format!("primary_conninfo = '{}'", lab.d.primary.conninfo()),
        "hot_standby = on".to_owned(),
    ]);
    let mut new_primary = Pg::basebackup(lab.td(), "standby", &lab.d.primary, &conf, true);
    new_primary.start();
    lab.d.primary.pgbench(&["-n", "-t", "100"]);
    let sent = lab.d.primary.current_lsn();
    wait_until(
        &format!("the standby to replay up to {sent}"),
        Duration::from_secs(120),
        || {
            let r = new_primary.psql(&format!(
                "SELECT coalesce(pg_last_wal_replay_lsn() >= '{sent}', false)"
            ));
            (r == "t").then_some(())
        },
    );
    archive_now(&lab.d.primary);
    lab.d.primary.stop();
    assert_eq!(new_primary.psql("SELECT pg_promote()"), "t");
    wait_promoted(&new_primary);
    new_primary.psql("INSERT INTO notes SELECT g, 2 FROM generate_series(2001, 2500) g");
    new_primary.pgbench(&["-n", "-t", "100"]);
    let before = new_primary.current_lsn();
    let last = new_primary.checksums();
    archive_now(&new_primary);

    let rf = wait_until(
        "a roll-forward snapshot on timeline 2",
        Duration::from_secs(240),
        || {
            rolled(&lab)
                .into_iter()
                .rfind(|b| b.timeline == 2 && b.stop() >= before)
        },
    );
    assert_eq!(rf.base.as_deref(), Some(backup.id.as_str()), "{rf:?}");
    let inst = lab.restore_instance(&["--latest"]);
    assert_eq!(inst.info.backup_id, rf.id, "{:?}", inst.info);
    assert_eq!(
        inst.checksums(),
        last,
        "--latest on timeline 2 from {}",
        rf.id
    );
    lab.drop_restore(&inst.info.id);
    drop(new_primary);
    lab.d.wv.server.stop();
}

#[test]
fn prune_with_roll_forward_snapshots_keeps_what_it_promises_and_frees_space() {
    let Some(lab) = Lab::start_with("rollforward_prune", Some(1), EAGER) else {
        return;
    };
    let r = lab.op(&[
        "policy",
        "set",
        "--window",
        "none",
        "--min-backups",
        "2",
        "--daily",
        "0",
    ]);
    assert!(r.success(), "{}", r.describe());
    let first = backup_ok(&lab.d.agent, &lab.d.primary, &[]);
    lab.d.primary.pgbench(&["-n", "-t", "300"]);
    let before = lab.d.primary.current_lsn();
    let at_second = lab.d.primary.checksums();
    archive_now(&lab.d.primary);
    let old_rf = wait_rolled_past(&lab, &first.id, before);
    let second = backup_ok(&lab.d.agent, &lab.d.primary, &[]);
    lab.d.primary.pgbench(&["-n", "-t", "300"]);
    let before = lab.d.primary.current_lsn();
    let last = lab.d.primary.checksums();
    archive_now(&lab.d.primary);
    let new_rf = wait_rolled_past(&lab, &second.id, before);
    let used = |lab: &Lab| match &lab.d.storage {
        Storage::Zfs(pool) => Some(
            zfs_get(
                lab.td().log(),
                "used",
                &format!("{}/walvault/{CLUSTER}", pool.name()),
            )
            .parse::<u64>()
            .expect("bytes"),
        ),
        Storage::Dir(_) => None,
    };
    let used_before = used(&lab);

    // The two newest stay; the old chain's snapshots go, its base stays while the chain does.
    let r = lab.op(&["prune"]);
    assert!(r.success(), "{}", r.describe());
    let ids = |lab: &Lab| -> Vec<String> {
        list_backups(&lab.operator, Some(CLUSTER))
            .into_iter()
            .map(|b| b.id)
            .collect()
    };
    let listed = ids(&lab);
    assert!(!listed.contains(&old_rf.id), "{listed:?}");
    assert!(
        listed.contains(&first.id),
        "the chain's base went first: {listed:?}"
    );
    assert!(
        listed.contains(&new_rf.id) && listed.contains(&second.id),
        "{listed:?}"
    );
    // The prune destroyed the emptied chain; the next prune takes its base.
    wait_until(
        &format!("the base {} to be prunable", first.id),
        Duration::from_secs(120),
        || {
            let r = lab.op(&["prune"]);
            assert!(r.success(), "{}", r.describe());
            (!ids(&lab).contains(&first.id)).then_some(())
        },
    );
    if let (Some(b), Some(a)) = (used_before, used(&lab)) {
        eprintln!("cluster datasets: {b} bytes used before the prunes, {a} after");
        assert!(a < b, "pruning freed nothing: {b} bytes before, {a} after");
    }

    // What the policy promises still restores: the oldest kept snapshot, and the latest.
    let inst = lab.restore_instance(&["--immediate", "--backup", &second.id]);
    assert_eq!(inst.checksums(), at_second, "the oldest kept snapshot");
    lab.drop_restore(&inst.info.id);
    let inst = lab.restore_instance(&["--latest"]);
    assert_eq!(inst.checksums(), last);
    lab.drop_restore(&inst.info.id);
    let mut lab = lab;
    lab.d.wv.server.stop();
}

/// A tablespace's files are rolled forward in the chain's own clone of it, and a restore
/// from a roll-forward snapshot gets its own copy of them: an instance, a directory and a
/// verification, each pointed at its own files rather than the chain's.
#[test]
fn a_cluster_with_a_tablespace_rolls_forward_and_restores_from_it() {
    let config = format!("{EAGER}[verify]\nsnapshots_interval_secs = 1\n");
    let Some(mut lab) = Lab::start_with("rollforward_ts", None, &config) else {
        return;
    };
    let source_ts = lab.td().mkdir_postgres("ts-one");
    let p = &lab.d.primary;
    p.psql(&format!(
        "CREATE TABLESPACE one LOCATION '{}'",
        source_ts.display()
    ));
    p.psql(
        "CREATE TABLE in_one (id int PRIMARY KEY, body text) TABLESPACE one; \
         INSERT INTO in_one SELECT g, md5(g::text) FROM generate_series(1, 20000) g; \
         CREATE TABLE in_default (id int, one_id int); \
         CREATE INDEX in_default_one ON in_default (one_id) TABLESPACE one",
    );
    let oid = p.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'one'");
    let backup = backup_ok(&lab.d.agent, p, &[]);
    p.psql(
        "INSERT INTO in_one SELECT g, repeat(md5(g::text), 4) FROM generate_series(20001, 50000) g; \
         INSERT INTO in_default SELECT g, g FROM generate_series(1, 5000) g",
    );
    let before = p.current_lsn();
    archive_now(p);
    let rf = wait_rolled_past(&lab, &backup.id, before);

    p.psql("UPDATE in_one SET body = 'later' WHERE id % 7 = 0");
    let t = PointInTime::between_commits(p);
    let at_t = p.checksums();
    p.psql("DELETE FROM in_one WHERE id % 3 = 0");
    assert_ne!(p.checksums(), at_t, "the changes after T changed nothing");
    archive_now(p);
    lab.wait_window_covers(t.micros);
    let picked = dry_run(&lab, &["--time", &t.rfc3339])["backup_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        rolled(&lab).iter().any(|s| s.id == picked),
        "the plan picked {picked}, not a roll-forward snapshot"
    );

    // An instance from the snapshot: its tablespace is in its own clone, and what it writes
    // there does not reach the chain (a second restore from the snapshot is still at T).
    for round in 0..2 {
        let inst = lab.restore_instance(&["--time", &t.rfc3339, "--backup", &picked]);
        assert_eq!(
            inst.checksums(),
            at_t,
            "round {round}: the instance differs at T"
        );
        let location = inst.psql(&format!("SELECT pg_tablespace_location({oid})"));
        assert!(
            location.contains(&format!("/restores/{}/", inst.info.id))
                && !location.contains("/rollforward/"),
            "round {round}: tablespace {oid} of restore {} is at {location}",
            inst.info.id
        );
        inst.psql("UPDATE in_one SET body = 'written by the restore'");
        lab.drop_restore(&inst.info.id);
    }

    // A directory from the snapshot, its tablespace moved.
    let moved = lab.td().mkdir_postgres("moved-one");
    let map = format!("{}={}", source_ts.display(), moved.display());
    let (pg, dir) = lab.restore_and_start("rf-ts", &["--time", &t.utc, "--tablespace-map", &map]);
    assert_eq!(dir.backup_id, picked, "{dir:?}");
    assert_eq!(pg.checksums(), at_t, "the directory restored to T differs");
    assert_eq!(
        std::fs::read_link(pg.data_dir().join("pg_tblspc").join(&oid)).ok(),
        Some(moved.clone()),
        "pg_tblspc/{oid} of the directory restore"
    );
    drop(pg);

    // Verification recovers its own clone of the snapshot, tablespace included.
    let checked = wait_until(
        &format!("roll-forward snapshot {} to be verified", rf.id),
        Duration::from_secs(240),
        || {
            list_backups(&lab.operator, Some(CLUSTER))
                .into_iter()
                .find(|b| b.id == rf.id && b.verification != "pending")
        },
    );
    assert_eq!(checked.verification, "verified", "{:?}", checked.receipt);
    lab.d.wv.server.stop();
}

/// CREATE TABLESPACE after the base backup: replaying it on the server would make the
/// tablespace's directory at the source's location on the server (here the source's own
/// directory, as the test runs both on one machine). The chain stops just before the record,
/// an instance restore that would replay it is refused by name, and nothing of the server's
/// touches the directory.
#[test]
fn a_tablespace_created_after_the_backup_stops_the_chain_before_it() {
    let Some(mut lab) = Lab::start_with("rollforward_late_ts", None, EAGER) else {
        return;
    };
    let p = &lab.d.primary;
    let backup = backup_ok(&lab.d.agent, p, &[]);
    p.psql(
        "CREATE TABLE early AS SELECT g AS id, md5(g::text) AS body \
         FROM generate_series(1, 40000) g",
    );
    let before = p.current_lsn();
    let late = lab.td().mkdir_postgres("late-ts");
    p.psql(&format!(
        "CREATE TABLESPACE late LOCATION '{}'",
        late.display()
    ));
    let after = p.current_lsn();
    let late_oid = p.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'late'");
    p.psql(
        "CREATE TABLE in_late TABLESPACE late AS SELECT g AS id FROM generate_series(1, 40000) g",
    );
    archive_now(p);
    lab.d.primary.stop();
    let untouched = file_tree(&late);

    let rf = wait_rolled_past(&lab, &backup.id, before);
    assert!(
        rf.stop() <= after,
        "the chain went past the tablespace's creation (before {after}): {rf:?}"
    );
    let log = wait_until(
        "the roll-forward to say it stops before the tablespace's creation",
        Duration::from_secs(120),
        || {
            let log = lab.d.wv.server.log_text();
            log.contains("stops before a tablespace's creation")
                .then_some(log)
        },
    );
    assert!(
        log.contains(&late.display().to_string()),
        "the log does not name {}",
        late.display()
    );
    // A few more rounds: the chain stays where it is.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        rolled(&lab).iter().all(|s| s.stop() <= after),
        "a snapshot past the creation: {:?}",
        rolled(&lab)
    );

    let r = lab.try_restore_instance(&["--latest"]);
    assert!(!r.success(), "{}", r.describe());
    // After the plan's line, one line that says why and what to do.
    let why = r.stderr.trim().lines().last().unwrap_or_default();
    assert!(
        why.contains(&format!("creates tablespace {late_oid}"))
            && why.contains(&late.display().to_string())
            && why.contains("--to dir:PATH"),
        "{}",
        r.describe()
    );
    assert!(
        file_tree(&late) == untouched,
        "something of the server's wrote into {}",
        late.display()
    );
    lab.d.wv.server.stop();
}
