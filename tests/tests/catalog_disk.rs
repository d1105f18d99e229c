//! A full catalog disk degrades, never hangs (issue 10): the catalog on a small file system of
//! its own, filled up while PostgreSQL archives. Pushes fail with a clear error (PostgreSQL
//! keeps its segments and retries), reads and status keep answering, the running server takes
//! writes again by itself once space returns, SIGTERM stops it within seconds while the disk
//! is full, and after a restart everything PostgreSQL retried is archived, the catalog equal to
//! one rebuilt from the storage.

use std::time::{Duration, Instant};

use walvault_tests::harness::{
    backup::Deployment,
    wait_until,
    wal::{assert_archive_matches, wal_list},
};

/// Completes segments (a little WAL in each) until archive_command fails on one; returns it.
/// A full file system may still take a write or two (blocks a file had reserved).
fn push_until_it_fails(d: &Deployment) -> String {
    let (_, _, failed) = d.primary.archiver();
    for _ in 0..20 {
        d.primary
            .psql("INSERT INTO t SELECT generate_series(1, 1000)");
        let seg = d.primary.switch_wal();
        let fails = wait_until(
            &format!("{seg} to be archived or refused"),
            Duration::from_secs(60),
            || {
                let (last, _, now_failed) = d.primary.archiver();
                if now_failed > failed {
                    Some(true)
                } else {
                    (last == seg).then_some(false)
                }
            },
        );
        if fails {
            return seg;
        }
    }
    panic!("archiving never failed with the catalog's disk full");
}

/// Switches segments (each completed one wakes the archiver) until `name` is archived.
fn wait_archived_again(d: &Deployment, name: &str) {
    wait_until(
        &format!("{name} to be archived after the disk has room again"),
        Duration::from_secs(240),
        || {
            d.primary.switch_wal();
            std::thread::sleep(Duration::from_millis(500));
            wal_list(&d.agent, None).contains_key(name).then_some(())
        },
    );
}

#[test]
fn a_full_catalog_disk_fails_pushes_clearly_and_recovers() {
    let Some(mut d) = Deployment::start_custom("catalog_full", None, "", false, Some(24)) else {
        return;
    };
    d.wv.server.allow_errors("catalog's disk is full");
    d.wv.server.allow_errors("time index");
    d.primary
        .psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS x");
    let first = d.primary.switch_wal();
    d.primary.wait_archived(&first, Duration::from_secs(120));
    let disk = d.catalog_disk.as_ref().expect("a catalog disk");

    // Full: pushes fail, and say why.
    disk.fill();
    let stuck = push_until_it_fails(&d);
    let log = d.primary.server_log();
    assert!(
        log.contains("catalog's disk is full"),
        "PostgreSQL's log does not say why archiving fails:\n{log}"
    );
    // Reads and status answer meanwhile.
    assert!(wal_list(&d.agent, None).contains_key(&first));
    d.wv.admin.ok(&["cluster", "list"]);

    // Room again: the running server takes writes by itself.
    disk.free();
    wait_archived_again(&d, &stuck);

    // Full again, and a SIGTERM: the server stops within seconds.
    disk.fill();
    let stuck = push_until_it_fails(&d);
    let t = Instant::now();
    d.wv.server.stop();
    let took = t.elapsed();
    eprintln!("SIGTERM with a full catalog disk: the server stopped in {took:.2?}");
    assert!(took < Duration::from_secs(10), "stopping took {took:?}");

    // Room again, a restart, and PostgreSQL's retries archive everything.
    disk.free();
    d.wv.server.restart();
    wait_archived_again(&d, &stuck);
    let last = d.primary.switch_wal();
    d.primary.wait_archived(&last, Duration::from_secs(120));
    let compared = assert_archive_matches(
        &d.td,
        &d.primary,
        &d.agent.as_user(None),
        &d.storage.wal_dir("acme/db1"),
    );
    assert!(compared >= 3, "compared only {compared} segments");

    d.wv.server.stop();
    let before = d.wv.server.catalog_dump();
    d.wv.server.catalog_rebuild();
    assert_eq!(
        d.wv.server.catalog_dump(),
        before,
        "the catalog differs from a fresh rebuild"
    );
}
