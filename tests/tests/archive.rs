//! PostgreSQL archives through `walvault wal-push`; every archived segment comes back
//! byte-identical, by `wal-fetch` and straight from the WAL dataset.

use std::time::Duration;

use walvault_tests::harness::{
    e2e_ready,
    wal::{archive_conf, assert_archive_matches},
    Pg, Storage, TestDir, Walvault,
};

#[test]
fn archived_wal_is_byte_identical() {
    if !e2e_ready() {
        return;
    }
    let td = TestDir::new("archive");
    let Some(storage) = Storage::create(&td) else {
        return;
    };
    let wv = Walvault::start(&td, &storage);
    wv.tenant_create("acme", None);
    wv.cluster_create("acme/db1");
    let agent = wv.agent("acme/db1");

    let mut pg = Pg::init(&td, "primary", &archive_conf(&agent));
    pg.start();
    pg.pgbench(&["-i", "-s", "5", "-q"]);
    let mut last = String::new();
    for _ in 0..30 {
        pg.pgbench(&["-n", "-t", "100"]);
        last = pg.switch_wal();
    }
    pg.wait_archived(&last, Duration::from_secs(600));
    let (archived, count, failed) = pg.archiver();
    assert_eq!(archived, last);
    assert_eq!(failed, 0, "archive_command failed; see postgres.log");
    assert!(count >= 30, "only {count} files archived");

    let root = agent.as_user(None);
    let compared = assert_archive_matches(&td, &pg, &root, &storage.wal_dir("acme/db1"));
    assert!(compared >= 30, "compared only {compared} segments");

    // The restore_command contract: a file the archive does not have is a calm exit 1.
    let missing = "00000001000000FF000000FF";
    let dest = td.join("missing");
    let r = root.run(&["wal-fetch", missing, dest.to_str().expect("utf-8")]);
    assert_eq!(r.code, Some(1), "{}", r.describe());
    assert_eq!(
        r.stderr.trim().lines().count(),
        1,
        "one line: {}",
        r.describe()
    );
    assert!(
        !dest.exists(),
        "wal-fetch of a missing file created {}",
        dest.display()
    );

    // A listing piped into a reader that has gone (`head` done, here `true`, which reads
    // nothing) ends quietly.
    let r = walvault_tests::harness::run(
        td.log(),
        std::process::Command::new("bash").args([
            "-c",
            &format!(
                "set -o pipefail; {} wal-list | true",
                root.shell_command("")
            ),
        ]),
        Duration::from_secs(60),
    );
    assert!(r.success(), "`walvault wal-list | true`: {}", r.describe());
    assert!(
        !r.stderr.contains("panicked") && r.stderr.trim().is_empty(),
        "`walvault wal-list | true` complained: {}",
        r.describe()
    );
}
