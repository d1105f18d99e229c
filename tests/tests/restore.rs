//! Point-in-time restores (issue 4): to a time, an LSN, an xid, a restore point, the
//! backup's consistent point and the latest archived commit, delivered to a directory (the
//! client writes a PGDATA that the test starts) or as an instance the server starts; across a
//! failover (timeline 2), including the old primary rejoining as a standby with `--delta`; and
//! with two tablespaces remapped. Every restore is compared with what the source held at that
//! point, table by table.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use walvault_tests::harness::{
    backup::backup_ok,
    file_tree,
    restore::{archive_now, wait_in_recovery, wait_promoted, Lab, PointInTime},
    wait_until,
    wal::{archive_conf, fetch, wal_list},
    Pg, Storage,
};

type Sums = BTreeMap<String, String>;

/// The pgbench tables were compared, with rows.
fn assert_pgbench_rows(sums: &Sums, accounts: u64) {
    assert!(
        sums["public.pgbench_accounts"].starts_with(&format!("{accounts} rows")),
        "{sums:?}"
    );
    assert!(
        !sums["public.pgbench_history"].starts_with("0 rows"),
        "pgbench never ran: {sums:?}"
    );
}

/// `postgresql.auto.conf` of a restored PGDATA sets `name`.
fn assert_auto_conf_sets(data: &Path, name: &str) {
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf"))
        .expect("read postgresql.auto.conf");
    assert!(
        auto.lines().any(|l| l.trim_start().starts_with(name)),
        "postgresql.auto.conf of {} does not set {name}:\n{auto}",
        data.display()
    );
}

#[test]
fn time_target_both_deliveries() {
    let Some(mut lab) = Lab::start("restore_time", Some(3)) else {
        return;
    };
    let d = &lab.d;
    let backup = backup_ok(&d.agent, &d.primary, &[]);
    d.primary.pgbench(&["-n", "-t", "300"]);
    let at_t = d.primary.checksums();
    assert_pgbench_rows(&at_t, 300_000);
    let t = PointInTime::between_commits(&d.primary);
    d.primary.pgbench(&["-n", "-t", "300"]);
    let last = d.primary.checksums();
    assert_ne!(
        at_t, last,
        "pgbench after T changed nothing: the comparison would prove nothing"
    );
    archive_now(&d.primary);
    let window = lab.wait_window_covers(t.micros);
    eprintln!("window: {window:?}; T = {} ({} µs)", t.utc, t.micros);
    assert!(
        window.iter().any(|w| w.from_micros < t.micros),
        "T {} is not after the window's start: {window:?}",
        t.utc
    );

    // To a directory, as the database host's postgres user; the test starts PostgreSQL.
    let (pg, dir) = lab.restore_and_start("at-t", &["--time", &t.utc]);
    dir.report("dir delivery (time target)");
    assert_eq!(dir.backup_id, backup.id, "{dir:?}");
    assert_auto_conf_sets(pg.data_dir(), "recovery_target_time");
    let got = pg.checksums();
    assert_ne!(got, last, "the restore to T holds the data of after T");
    assert_eq!(got, at_t, "the restore to T differs from the source at T");
    drop(pg);

    // As an instance the server starts, with T in RFC 3339.
    let size = d.database_size();
    let inst = lab.restore_instance(&["--time", &t.rfc3339]);
    eprintln!(
        "instance delivery: restore {} answered its first query {:.2?} after the request \
         (database of {size} bytes, pgbench scale 3)",
        inst.info.id, inst.ready_after
    );
    assert_eq!(inst.info.backup_id, backup.id, "{:?}", inst.info);
    assert_eq!(
        inst.checksums(),
        at_t,
        "the instance restored to T differs from the source at T"
    );
    // Promoted from the pause by the promotion itself, which writes only an end-of-recovery
    // record, not by lifting the pause, which ends recovery with an immediate checkpoint.
    let pg_log = inst.psql("SELECT pg_read_file('walvault-restore.log')");
    assert!(
        pg_log.contains("received promote request")
            && !pg_log.contains("end-of-recovery immediate"),
        "the instance left the pause without the promotion:\n{pg_log}"
    );
    // On zfs-fuse PostgreSQL's prefetching advice would cost the daemon's CPU: it is off.
    let prefetch = inst.psql("SHOW recovery_prefetch");
    match &lab.d.storage {
        Storage::Zfs(_) => assert_eq!(prefetch, "off", "an instance on zfs-fuse prefetches"),
        Storage::Dir(_) => assert_eq!(prefetch, "try", "an instance on a local disk"),
    }
    // Its segments were unpacked ahead of recovery beside its local pg_wal, and that
    // directory is gone once recovery is over.
    let log = lab.d.wv.server.log_text();
    let staged = log
        .lines()
        .find(|l| l.contains("unpacked segments ahead of recovery") && l.contains(&inst.info.id))
        .unwrap_or_else(|| panic!("no segments unpacked ahead for {}:\n{log}", inst.info.id));
    assert!(
        !staged.contains("segments=0 "),
        "nothing was unpacked ahead: {staged}"
    );
    let local_wal = lab.td().join("local-wal");
    let leftovers: Vec<_> = walkdir_names(&local_wal)
        .into_iter()
        .filter(|p| p.contains("walvault.ahead"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "unpacked segments left after recovery: {leftovers:?}"
    );

    let listed = lab.restores();
    let entry = listed
        .iter()
        .find(|r| r.id == inst.info.id)
        .unwrap_or_else(|| panic!("`restores` does not list {}: {listed:?}", inst.info.id));
    assert_eq!(entry.delivery, "instance", "{entry:?}");
    assert_eq!(entry.port, inst.info.port, "{entry:?}");
    assert_eq!(entry.state, "ready", "{entry:?}");
    assert!(inst.port_open());

    // The instance outlives a server restart and a catalog rebuild, and is still listed.
    lab.d.wv.server.stop();
    lab.d.wv.server.catalog_rebuild();
    lab.d.wv.server.restart();
    let listed = lab.restores();
    assert!(
        listed
            .iter()
            .any(|r| r.id == inst.info.id && r.state == "ready"),
        "after a rebuild `restores` does not list {} as ready: {listed:?}",
        inst.info.id
    );
    assert!(inst.port_open());

    lab.drop_restore(&inst.info.id);
    let listed = lab.restores();
    assert!(
        listed.iter().all(|r| r.id != inst.info.id),
        "the dropped restore is still listed: {listed:?}"
    );
    wait_until(
        &format!("port {} to close after the drop", inst.info.port),
        Duration::from_secs(10),
        || (!inst.port_open()).then_some(()),
    );
    // The source went on undisturbed.
    assert_eq!(lab.d.primary.checksums(), last);
}

#[test]
fn lsn_xid_restore_point_immediate_latest() {
    let Some(lab) = Lab::start("restore_targets", Some(1)) else {
        return;
    };
    let pg = &lab.d.primary;
    pg.psql(
        "CREATE TABLE marks (id int PRIMARY KEY, stage text NOT NULL); \
         INSERT INTO marks VALUES (1, 'before the backup')",
    );
    pg.pgbench(&["-n", "-t", "50"]);
    // Nothing commits while the backup runs: its consistent point holds exactly this.
    let at_backup = pg.checksums();
    let backup = backup_ok(&lab.d.agent, pg, &[]);

    // Each point: pgbench moves the other tables on, then a marker row commits.
    pg.pgbench(&["-n", "-t", "50"]);
    pg.psql("INSERT INTO marks VALUES (2, 'lsn')");
    let lsn = pg.psql("SELECT pg_current_wal_lsn()");
    let at_lsn = pg.checksums();

    pg.pgbench(&["-n", "-t", "50"]);
    let xid = pg.psql("INSERT INTO marks VALUES (3, 'xid') RETURNING txid_current()");
    let at_xid = pg.checksums();

    pg.pgbench(&["-n", "-t", "50"]);
    pg.psql("INSERT INTO marks VALUES (4, 'restore point')");
    pg.psql("SELECT pg_create_restore_point('before_the_migration')");
    let at_name = pg.checksums();

    pg.pgbench(&["-n", "-t", "50"]);
    pg.psql("INSERT INTO marks VALUES (5, 'latest')");
    let latest = pg.checksums();
    archive_now(pg);

    let points = [&at_backup, &at_lsn, &at_xid, &at_name, &latest];
    for (i, a) in points.iter().enumerate() {
        assert_pgbench_rows(a, 100_000);
        for b in &points[i + 1..] {
            assert_ne!(
                a, b,
                "two points hold the same data: the test could not fail"
            );
        }
    }
    eprintln!("targets: lsn {lsn}, xid {xid}, backup {}", backup.id);

    // Immediate, to a directory: the backup's consistent point and not a commit further.
    let (imm, out) = lab.restore_and_start("immediate", &["--immediate"]);
    out.report("dir delivery (immediate)");
    assert_eq!(out.backup_id, backup.id, "{out:?}");
    assert!(
        imm.server_log()
            .contains("recovery stopping after reaching consistency"),
        "the immediate restore did not stop at consistency (see pg-immediate/postgres.log)"
    );
    assert_eq!(imm.checksums(), at_backup, "immediate restore");
    drop(imm);

    // LSN, as an instance.
    let size = lab.d.database_size();
    let inst = lab.restore_instance(&["--lsn", &lsn]);
    eprintln!(
        "instance delivery: restore {} answered its first query {:.2?} after the request \
         (database of {size} bytes, pgbench scale 1)",
        inst.info.id, inst.ready_after
    );
    assert_eq!(inst.checksums(), at_lsn, "restore to LSN {lsn}");
    lab.drop_restore(&inst.info.id);

    // xid, to a directory.
    let (at, out) = lab.restore_and_start("xid", &["--xid", &xid]);
    out.report("dir delivery (xid)");
    assert_auto_conf_sets(at.data_dir(), "recovery_target_xid");
    assert_eq!(at.checksums(), at_xid, "restore to xid {xid}");
    drop(at);

    // Restore point, as an instance.
    let inst = lab.restore_instance(&["--name", "before_the_migration"]);
    eprintln!(
        "instance delivery: restore {} answered its first query {:.2?} after the request",
        inst.info.id, inst.ready_after
    );
    assert_eq!(inst.checksums(), at_name, "restore to the restore point");
    lab.drop_restore(&inst.info.id);

    // Latest, to a directory.
    let (at, out) = lab.restore_and_start("latest", &["--latest"]);
    out.report("dir delivery (latest)");
    assert_eq!(at.checksums(), latest, "restore to the latest commit");
}

/// The timeline-2 history file as archived: `(parent, switch LSN)` of its last line.
fn history_switch(lab: &Lab) -> (u32, String) {
    // As root, with the agent's config: the fetched file lands in a directory of root's.
    let bytes = fetch(lab.td(), &lab.d.agent.as_user(None), "00000002.history");
    let text = String::from_utf8(bytes).expect("history files are text");
    let line = text
        .lines()
        .rfind(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .unwrap_or_else(|| panic!("empty history file: {text:?}"));
    let mut f = line.split_whitespace();
    let parent = f.next().and_then(|p| p.parse().ok()).expect("parent");
    let lsn = f.next().expect("switch LSN").to_owned();
    (parent, lsn)
}

#[test]
fn timelines_and_the_old_primary_rejoining_with_delta() {
    let Some(mut lab) = Lab::start("restore_timelines", Some(2)) else {
        return;
    };
    lab.d.primary.psql(
        "CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL, tl int NOT NULL); \
         INSERT INTO notes SELECT g, md5(g::text), 1 FROM generate_series(1, 1000) g",
    );
    let backup = backup_ok(&lab.d.agent, &lab.d.primary, &[]);

    // A streaming standby that archives into the same cluster once it is promoted.
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

    lab.d
        .primary
        .psql("INSERT INTO notes SELECT g, md5(g::text), 1 FROM generate_series(1001, 1100) g");
    let at_t1 = lab.d.primary.checksums();
    let t1 = PointInTime::between_commits(&lab.d.primary);
    lab.d
        .primary
        .psql("UPDATE notes SET body = 'after T1' WHERE id <= 10");
    let sent = lab.d.primary.psql("SELECT pg_current_wal_lsn()");
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

    // Failover. The old primary goes on for a moment: WAL the new one never sees.
    assert_eq!(new_primary.psql("SELECT pg_promote()"), "t");
    wait_promoted(&new_primary);
    lab.d
        .primary
        .psql("INSERT INTO notes VALUES (9999, 'diverged', 1)");
    archive_now(&lab.d.primary);
    lab.d.primary.stop();

    new_primary.psql(
        "INSERT INTO notes SELECT g, md5(g::text), 2 FROM generate_series(2001, 2200) g; \
         DELETE FROM notes WHERE id BETWEEN 500 AND 520",
    );
    let at_tl2 = new_primary.checksums();
    archive_now(&new_primary);
    assert_ne!(at_t1, at_tl2);
    assert!(
        at_tl2["public.notes"].starts_with("1279 rows"),
        "{at_tl2:?}"
    );

    // The window knows both timelines and where 2 branched off 1.
    let (parent, switch) = history_switch(&lab);
    assert_eq!(parent, 1);
    let window = lab.window();
    eprintln!("window after the failover: {window:?}");
    let tl = |n: u32| {
        window
            .iter()
            .find(|w| w.timeline == n)
            .unwrap_or_else(|| panic!("`window` has no timeline {n}: {window:?}"))
    };
    assert_eq!(tl(2).parent, Some(1), "{window:?}");
    assert_eq!(
        tl(2).switch().map(|l| l.to_string()),
        Some(switch.clone()),
        "timeline 2's switch LSN is not the one of 00000002.history"
    );
    assert!(tl(2).end() > tl(2).switch().expect("switch"), "{window:?}");
    assert!(tl(1).from_micros < t1.micros, "{window:?}");

    // A time on timeline 1 before the switch (default timeline: latest), as an instance.
    let inst = lab.restore_instance(&["--time", &t1.utc]);
    assert_eq!(
        inst.checksums(),
        at_t1,
        "the restore to T1 (timeline 1) differs from the source at T1"
    );
    lab.drop_restore(&inst.info.id);

    // Latest (timeline 2), into an empty directory: the full copy the delta is measured by.
    let (latest, full) = lab.restore_and_start("latest", &["--latest"]);
    full.report("full restore of --latest into an empty directory");
    assert_eq!(full.backup_id, backup.id, "{full:?}");
    assert_eq!(
        latest.checksums(),
        at_tl2,
        "the restore to latest differs from the new primary"
    );
    drop(latest);
    let archived = wal_list(&lab.d.agent, None);
    assert!(archived.contains_key("00000002.history"));
    assert!(
        !archived.keys().any(|n| n.starts_with("00000003")),
        "a restored copy archived into the source's archive: {:?}",
        archived.keys().collect::<Vec<_>>()
    );

    // The old primary rejoins as a standby of the new one, sent only what differs.
    let old_data = lab.d.primary.data_dir().to_owned();
    let conninfo = new_primary.conninfo();
    let delta = lab.restore_to_dir(
        &old_data,
        &[
            "--latest",
            "--delta",
            "--standby",
            "--primary-conninfo",
            &conninfo,
        ],
    );
    delta.report("delta restore into the old primary");
    eprintln!(
        "old primary rejoining: delta sent {} bytes, a full restore of the same backup {} bytes \
         ({:.1}%)",
        delta.bytes_sent,
        full.bytes_sent,
        100.0 * delta.bytes_sent as f64 / full.bytes_sent.max(1) as f64
    );
    assert_eq!(delta.backup_id, full.backup_id, "{delta:?}");
    assert!(delta.blocks_same > 0, "the delta reused nothing: {delta:?}");
    assert!(
        delta.bytes_sent * 2 < full.bytes_sent,
        "the delta sent {} bytes, not far below the full restore's {}",
        delta.bytes_sent,
        full.bytes_sent
    );
    assert_auto_conf_sets(&old_data, "primary_conninfo");
    lab.d.primary.start();
    wait_in_recovery(&lab.d.primary, true);
    new_primary.psql("INSERT INTO notes VALUES (5000, 'after the rejoin', 2)");
    let now = new_primary.checksums();
    wait_until(
        "the old primary to receive a row inserted on the new primary",
        Duration::from_secs(120),
        || {
            let n = lab
                .d
                .primary
                .psql("SELECT count(*) FROM notes WHERE id = 5000");
            (n == "1").then_some(())
        },
    );
    assert_eq!(
        lab.d
            .primary
            .psql("SELECT status FROM pg_stat_wal_receiver"),
        "streaming"
    );
    assert_eq!(lab.d.primary.psql("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(
        lab.d
            .primary
            .psql("SELECT count(*) FROM notes WHERE id = 9999"),
        "0",
        "the old primary kept the row the new primary never saw"
    );
    assert_eq!(lab.d.primary.checksums(), now);
}

#[test]
fn two_tablespaces_remapped() {
    let Some(mut lab) = Lab::start("restore_tablespaces", None) else {
        return;
    };
    let old = [
        lab.td().mkdir_postgres("ts-one"),
        lab.td().mkdir_postgres("elsewhere/ts-two"),
    ];
    for (name, dir) in ["one", "two"].iter().zip(&old) {
        lab.d.primary.psql(&format!(
            "CREATE TABLESPACE {name} LOCATION '{}'",
            dir.display()
        ));
    }
    lab.d.primary.psql(
        "CREATE TABLE in_one (id int PRIMARY KEY, body text) TABLESPACE one; \
         INSERT INTO in_one SELECT g, md5(g::text) FROM generate_series(1, 30000) g; \
         CREATE TABLE in_two (id int, body text) TABLESPACE two; \
         INSERT INTO in_two SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 20000) g; \
         CREATE INDEX in_two_id ON in_two (id) TABLESPACE one; \
         CREATE TABLE in_default AS SELECT g AS id FROM generate_series(1, 1000) g",
    );
    let backup = backup_ok(&lab.d.agent, &lab.d.primary, &[]);
    lab.d.primary.psql(
        "INSERT INTO in_one SELECT g, 'after' FROM generate_series(30001, 31000) g; \
         UPDATE in_two SET body = 'changed' WHERE id % 10 = 0; \
         DELETE FROM in_default WHERE id > 900",
    );
    let expected = lab.d.primary.checksums();
    assert!(
        expected["public.in_one"].starts_with("31000 rows"),
        "{expected:?}"
    );
    assert!(
        expected["public.in_two"].starts_with("20000 rows"),
        "{expected:?}"
    );
    let oids: Vec<String> = ["one", "two"]
        .iter()
        .map(|n| {
            lab.d.primary.psql(&format!(
                "SELECT oid FROM pg_tablespace WHERE spcname = '{n}'"
            ))
        })
        .collect();
    archive_now(&lab.d.primary);
    // The source stops so that its tablespaces can be shown untouched by the restore.
    lab.d.primary.stop();
    let untouched: Vec<_> = old.iter().map(|p| file_tree(p)).collect();
    assert!(untouched.iter().all(|t| !t.is_empty()));

    let new = [
        lab.td().mkdir_postgres("moved/one"),
        lab.td().mkdir_postgres("moved/two"),
    ];
    let maps: Vec<String> = old
        .iter()
        .zip(&new)
        .map(|(o, n)| format!("{}={}", o.display(), n.display()))
        .collect();
    let (pg, out) = lab.restore_and_start(
        "remapped",
        &[
            "--latest",
            "--tablespace-map",
            &maps[0],
            "--tablespace-map",
            &maps[1],
        ],
    );
    out.report("dir delivery (two tablespaces remapped)");
    assert_eq!(out.backup_id, backup.id, "{out:?}");
    assert_eq!(
        pg.checksums(),
        expected,
        "the restore with remapped tablespaces differs from the source"
    );
    for (oid, n) in oids.iter().zip(&new) {
        let link = std::fs::read_link(pg.data_dir().join("pg_tblspc").join(oid))
            .unwrap_or_else(|e| panic!("pg_tblspc/{oid} of the restore is not a link: {e}"));
        assert_eq!(&link, n, "pg_tblspc/{oid} points elsewhere");
        assert_eq!(
            pg.psql(&format!("SELECT pg_tablespace_location({oid})")),
            n.display().to_string()
        );
        let names: Vec<String> = std::fs::read_dir(n)
            .expect("read the new tablespace directory")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|x| x.starts_with("PG_15_")),
            "{} holds {names:?}, not a PG_15_* directory",
            n.display()
        );
    }
    drop(pg);
    for (dir, before) in old.iter().zip(&untouched) {
        assert!(
            file_tree(dir) == *before,
            "the source's tablespace {} changed during the restore",
            dir.display()
        );
    }
}

/// Every path under `dir`, as text (empty when it does not exist).
fn walkdir_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            out.push(e.path().display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(e.path());
            }
        }
    }
    out
}
