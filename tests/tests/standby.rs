//! A standby fed only by `restore_command = 'walvault wal-fetch %f %p'` (no streaming)
//! follows its primary: same rows in every table.

use std::time::Duration;

use walvault_tests::harness::{
    e2e_ready, wait_until,
    wal::{archive_conf, segment_end},
    Pg, Storage, TestDir, Walvault,
};

#[test]
fn standby_replays_from_the_archive() {
    if !e2e_ready() {
        return;
    }
    let td = TestDir::new("standby");
    let Some(storage) = Storage::create(&td) else {
        return;
    };
    let wv = Walvault::start(&td, &storage);
    wv.tenant_create("acme", None);
    wv.cluster_create("acme/db1");
    let agent = wv.agent("acme/db1");

    let mut primary = Pg::init(&td, "primary", &archive_conf(&agent));
    primary.start();
    primary.pgbench(&["-i", "-s", "2", "-q"]);
    primary.psql(
        "CREATE TABLE notes (id int PRIMARY KEY, body text); \
         INSERT INTO notes SELECT g, md5(g::text) FROM generate_series(1, 5000) g",
    );

    // -X none: the standby must get even the backup's own WAL from the archive.
    let mut standby = Pg::basebackup(
        &td,
        "standby",
        &primary,
        &[
            "archive_mode = off".to_owned(),
            format!(
                "restore_command = '{}'",
                agent.shell_command("wal-fetch %f %p")
            ),
            "primary_conninfo = ''".to_owned(),
            // Poll the archive often: the test waits for the standby to catch up.
            "wal_retrieve_retry_interval = '500ms'".to_owned(),
            "hot_standby = on".to_owned(),
        ],
        true,
    );
    standby.start();

    for i in 0..10 {
        primary.pgbench(&["-n", "-t", "200"]);
        primary.psql(&format!(
            "INSERT INTO notes SELECT g, md5(g::text) FROM generate_series({}, {}) g",
            10_000 + i * 100,
            10_000 + i * 100 + 99
        ));
        primary.switch_wal();
    }
    primary.psql("UPDATE notes SET body = 'changed' WHERE id % 7 = 0");
    let last = primary.switch_wal();
    primary.wait_archived(&last, Duration::from_secs(600));
    let expected = primary.checksums();

    let end = segment_end(&last);
    wait_until(
        &format!("the standby to replay up to {end} (end of {last})"),
        Duration::from_secs(600),
        || {
            let behind = standby.psql(&format!(
                "SELECT pg_wal_lsn_diff('{end}', pg_last_wal_replay_lsn()) > 0"
            ));
            (behind == "f").then_some(())
        },
    );
    assert_eq!(standby.psql("SELECT pg_is_in_recovery()"), "t");
    let got = standby.checksums();
    assert_eq!(got, expected, "standby and primary differ");

    // The comparison must be worth something: several tables, with rows.
    let non_empty = expected
        .values()
        .filter(|v| !v.starts_with("0 rows"))
        .count();
    assert!(
        non_empty >= 4,
        "only {non_empty} non-empty tables compared: {expected:?}"
    );
    assert!(
        expected["public.notes"].starts_with("6000 rows"),
        "{expected:?}"
    );
    let (_, _, failed) = primary.archiver();
    assert_eq!(
        failed, 0,
        "archive_command failed; see pg-primary/postgres.log"
    );
}
