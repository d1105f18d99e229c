//! Base backups (issue 3): full and incremental block-level backups into the cluster's
//! datasets, one atomic snapshot each, that PostgreSQL can start from with `restore_command`
//! reading the archive; tablespaces in their own datasets; a killed client leaves nothing
//! that claims to be a backup, and the next run sends only what is missing.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use walvault_tests::harness::{
    backup::{
        backup_args, backup_ok, changed_blocks, list_backups, parse_info, BackupInfo, Deployment,
        Target, BLOCK, CLUSTER,
    },
    bench::{write_calls, zfs_get},
    wait_until, Log, Storage,
};

const MIB: u64 = 1 << 20;

/// Sets a flag when dropped, so that a background load stops even when the test panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// The comparison must be worth something: the pgbench tables, with rows.
fn assert_pgbench_compared(checksums: &std::collections::BTreeMap<String, String>) {
    assert!(
        checksums["public.pgbench_accounts"].starts_with("1000000 rows"),
        "{checksums:?}"
    );
    let non_empty = checksums
        .values()
        .filter(|v| !v.starts_with("0 rows"))
        .count();
    assert!(
        non_empty >= 3,
        "only {non_empty} non-empty tables: {checksums:?}"
    );
}

fn assert_complete(info: &BackupInfo, kind: &str) {
    assert_eq!(info.state, "complete", "{info:?}");
    assert_eq!(info.kind, kind, "{info:?}");
    assert!(
        info.start() < info.stop(),
        "start_lsn {} is not before stop_lsn {:?}: {info:?}",
        info.start_lsn,
        info.stop_lsn
    );
    assert_eq!(info.timeline, 1, "{info:?}");
    assert!(!info.id.is_empty() && info.files > 0, "{info:?}");
    let stop = info.stop_unix.expect("stop_unix of a complete backup");
    assert!(stop >= info.start_unix, "{info:?}");
}

#[test]
fn full_backup_under_load_restores_to_consistency_and_to_a_restore_point() {
    let Some(d) = Deployment::start("backup_full", Some(10)) else {
        return;
    };
    let db_size = d.database_size();
    assert!(db_size > 100 * MIB, "pgbench -s 10 is only {db_size} bytes");

    let stop = AtomicBool::new(false);
    let (run, server_writes, rounds) = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let mut rounds = 0;
            while !stop.load(Ordering::SeqCst) {
                d.primary.pgbench(&["-n", "-c", "2", "-T", "2"]);
                rounds += 1;
            }
            rounds
        });
        let _stop = StopOnDrop(&stop);
        // The load must be running before the backup starts.
        wait_until("pgbench to write", Duration::from_secs(60), || {
            (d.primary.psql("SELECT count(*) > 0 FROM pgbench_history") == "t").then_some(())
        });
        let started = Instant::now();
        // Write calls as the kernel counts them, not as the server reports them.
        let server_writes = || {
            let pid = d.wv.server.pid().expect("the server runs");
            write_calls(pid).unwrap_or_else(|| panic!("cannot read /proc/{pid}/io"))
        };
        let writes_before = server_writes();
        let args = backup_args(&d.primary, &["--label", "under load"]);
        let run = d
            .agent
            .run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        eprintln!("full backup under load took {:?}", started.elapsed());
        let writes = server_writes() - writes_before;
        stop.store(true, Ordering::SeqCst);
        (run, writes, load.join().expect("pgbench thread"))
    });
    assert!(run.success(), "walvault backup failed: {}", run.describe());
    let info = parse_info(&run.stdout);
    eprintln!("full backup: {info:?}; pgbench ran {rounds} rounds of 2 s");
    let expected = d.primary.checksums();
    assert_pgbench_compared(&expected);
    d.restore_point_archived("after");

    assert_complete(&info, "full");
    assert_eq!(info.label, "under load");
    // Consecutive blocks go to disk in large writes while the tenant has room: fewer write
    // calls than blocks, although the catalog (a few per file) and WAL pushes write too.
    eprintln!(
        "{} blocks written in {server_writes} server write calls",
        info.blocks_written
    );
    assert!(
        server_writes < info.blocks_written,
        "the server made {server_writes} write calls for {} blocks: are blocks written one \
         by one?",
        info.blocks_written
    );
    assert!(
        info.bytes_read >= db_size,
        "bytes_read {} is less than the database's {db_size} bytes",
        info.bytes_read
    );
    // pgbench wrote while the backup ran: WAL between start and stop.
    let wal = info.stop().0 - info.start().0;
    assert!(
        wal > MIB,
        "only {wal} bytes of WAL between start and stop: was pgbench running?"
    );

    let listed = list_backups(&d.agent, None);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, info.id);
    assert_eq!(listed[0].state, "complete");
    assert_eq!(listed[0].kind, "full");
    let table = d.agent.ok(&["backups"]);
    assert!(
        table.contains(&info.id),
        "`walvault backups` does not show {}:\n{table}",
        info.id
    );

    let snaps = d.snapshots();
    if let Some(db) = d.storage.db_dataset(CLUSTER) {
        for want in [
            format!("{db}@{}", info.id),
            format!("{db}/data@{}", info.id),
        ] {
            assert!(snaps.contains(&want), "no snapshot {want}: {snaps:?}");
        }
        // 32 KiB records: an 8 KiB one never stores below a 4 KiB sector (README).
        let log = Log::new(PathBuf::from("/dev/null"));
        let rs = zfs_get(&log, "recordsize", &format!("{db}/data"));
        assert_eq!(rs, "32768", "recordsize of {db}/data");
    }

    // (a) As soon as it is consistent: every table reads.
    {
        let r = d.restore(&info.id, "immediate", &Target::Immediate);
        for t in d.primary.tables() {
            r.pg.psql(&format!("SELECT count(*) FROM {t}"));
        }
        assert_eq!(
            r.pg.psql("SELECT count(*) FROM pgbench_accounts"),
            "1000000"
        );
    }
    // (b) Up to the restore point after the backup: the same contents as the source.
    let r = d.restore(&info.id, "after", &Target::Name("after".into()));
    assert_eq!(
        r.pg.checksums(),
        expected,
        "the restored backup differs from the source"
    );
}

#[test]
fn incremental_backup_sends_only_changed_blocks_and_restores() {
    let Some(d) = Deployment::start("backup_incremental", Some(10)) else {
        return;
    };
    let full = backup_ok(&d.agent, &d.primary, &[]);
    assert_complete(&full, "full");

    // About 2% of pgbench_accounts' pages: every row of every 50th page.
    let where_ = "(ctid::text::point)[0]::int % 50 = 0";
    let pages: u64 = d
        .primary
        .psql(&format!(
            "SELECT count(DISTINCT (ctid::text::point)[0]) FROM pgbench_accounts WHERE {where_}"
        ))
        .parse()
        .expect("number");
    let total_pages: u64 = d
        .primary
        .psql("SELECT pg_relation_size('pgbench_accounts') / 8192")
        .parse()
        .expect("number");
    d.primary.psql(&format!(
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE {where_}"
    ));
    d.primary.psql("CHECKPOINT");
    let incr = backup_ok(&d.agent, &d.primary, &["--label", "second"]);
    let expected = d.primary.checksums();
    assert_pgbench_compared(&expected);
    d.restore_point_archived("after");
    eprintln!("full: {full:?}\nincremental: {incr:?}");

    assert_complete(&incr, "incremental");
    assert!(incr.start() >= full.stop(), "{full:?} {incr:?}");
    assert_ne!(incr.id, full.id);
    let listed = list_backups(&d.agent, None);
    let ids: Vec<(&str, &str)> = listed
        .iter()
        .map(|b| (b.id.as_str(), b.kind.as_str()))
        .collect();
    assert_eq!(
        ids,
        [
            (full.id.as_str(), "full"),
            (incr.id.as_str(), "incremental")
        ],
        "{listed:?}"
    );

    // The full backup's snapshot now holds the blocks the incremental replaced (ZFS updates
    // a snapshot's space at the next transaction group sync).
    if let Storage::Zfs(_) = d.storage {
        let held = wait_until(
            "the full backup's snapshot_bytes to show the replaced blocks",
            Duration::from_secs(60),
            || {
                let b = &list_backups(&d.agent, None)[0];
                (b.snapshot_bytes > 0).then_some(b.snapshot_bytes)
            },
        );
        eprintln!("the full backup's snapshot holds {held} bytes");
    }

    let changed = {
        let a = d.clone_backup(&full.id, "diff-full");
        let b = d.clone_backup(&incr.id, "diff-incr");
        changed_blocks(&a, &b)
    };
    eprintln!(
        "{pages} of {total_pages} pages updated; {changed} blocks differ between the snapshots; \
         incremental sent {} bytes, wrote {} bytes ({} blocks); full sent {} bytes",
        incr.bytes_sent, incr.bytes_written, incr.blocks_written, full.bytes_sent
    );
    assert!(
        pages * 60 > total_pages && pages * 40 < total_pages,
        "the update touched {pages} of {total_pages} pages, not about 2%"
    );
    // Every updated page is in the new snapshot.
    assert!(
        changed >= pages,
        "only {changed} blocks differ between the snapshots, but {pages} pages were updated"
    );
    let budget = 3 * changed * BLOCK as u64;
    assert!(
        incr.bytes_sent <= budget,
        "the incremental sent {} bytes, more than 3 x {changed} changed blocks ({budget} bytes)",
        incr.bytes_sent
    );
    assert!(
        incr.bytes_sent * 5 < full.bytes_sent,
        "the incremental sent {} bytes, not far below the full backup's {}",
        incr.bytes_sent,
        full.bytes_sent
    );
    // The server wrote the changed blocks and not much else.
    assert!(
        incr.blocks_written <= changed + 64,
        "the incremental wrote {} blocks, but only {changed} differ",
        incr.blocks_written
    );
    assert!(incr.files_changed < incr.files, "{incr:?}");

    let r = d.restore(&incr.id, "after", &Target::Name("after".into()));
    assert_eq!(
        r.pg.checksums(),
        expected,
        "the restored incremental differs from the source"
    );
    assert_eq!(
        r.pg.psql(&format!(
            "SELECT count(*) FILTER (WHERE abalance = 1) = count(*) \
             FROM pgbench_accounts WHERE aid IN (SELECT aid FROM pgbench_accounts WHERE {where_})"
        )),
        "t"
    );
}

#[test]
fn tablespaces_get_their_own_datasets_in_one_atomic_snapshot() {
    let Some(d) = Deployment::start("backup_tablespaces", None) else {
        return;
    };
    let one = d.td.mkdir_postgres("ts-one");
    let two = d.td.mkdir_postgres("elsewhere/ts-two");
    d.primary.psql(&format!(
        "CREATE TABLESPACE one LOCATION '{}'",
        one.display()
    ));
    d.primary.psql(&format!(
        "CREATE TABLESPACE two LOCATION '{}'",
        two.display()
    ));
    d.primary.psql(
        "CREATE TABLE in_one (id int PRIMARY KEY, body text) TABLESPACE one; \
         INSERT INTO in_one SELECT g, md5(g::text) FROM generate_series(1, 50000) g; \
         CREATE TABLE in_two (id int, body text) TABLESPACE two; \
         INSERT INTO in_two SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 30000) g; \
         CREATE INDEX in_two_id ON in_two (id) TABLESPACE one; \
         CREATE TABLE in_default AS SELECT g AS id FROM generate_series(1, 1000) g",
    );
    let oids: Vec<u32> = d
        .primary
        .psql("SELECT oid FROM pg_tablespace WHERE spcname IN ('one', 'two') ORDER BY oid")
        .lines()
        .map(|l| l.parse().expect("oid"))
        .collect();
    assert_eq!(oids.len(), 2);

    let info = backup_ok(&d.agent, &d.primary, &[]);
    assert_complete(&info, "full");
    let expected = d.primary.checksums();
    assert!(
        expected["public.in_one"].starts_with("50000 rows"),
        "{expected:?}"
    );
    assert!(
        expected["public.in_two"].starts_with("30000 rows"),
        "{expected:?}"
    );
    d.restore_point_archived("after");

    assert_eq!(
        d.storage.tablespace_datasets(d.td.log(), CLUSTER),
        oids,
        "one dataset per tablespace under db/tblspc"
    );
    if let Storage::Zfs(_) = d.storage {
        let txg = |rel: &str| {
            d.storage
                .snapshot_createtxg(d.td.log(), CLUSTER, rel, &info.id)
        };
        let mut rels = vec!["".to_owned(), "data".to_owned(), "tblspc".to_owned()];
        rels.extend(oids.iter().map(|o| format!("tblspc/{o}")));
        let txgs: Vec<(String, u64)> = rels.iter().map(|r| (r.clone(), txg(r))).collect();
        assert!(
            txgs.iter().all(|(_, t)| *t == txgs[0].1),
            "the snapshots of backup {} were not taken at once: createtxg {txgs:?}",
            info.id
        );
    }

    let r = d.restore(&info.id, "after", &Target::Name("after".into()));
    // Each tablespace dataset holds what the tablespace's directory holds.
    for oid in &oids {
        let dir = &r.clone.tablespaces[oid];
        let names: Vec<String> = std::fs::read_dir(dir)
            .expect("read the cloned tablespace")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names.iter().any(|n| n.starts_with("PG_15_")),
            "the dataset of tablespace {oid} holds {names:?}, not a PG_15_* directory"
        );
        // The restored instance uses the clone, not the source's directory.
        assert_eq!(
            r.pg.psql(&format!("SELECT pg_tablespace_location({oid})")),
            dir.display().to_string()
        );
    }
    assert_eq!(
        r.pg.checksums(),
        expected,
        "the restored backup differs from the source"
    );
}

/// A rate-limited `walvault backup` in the background, as its own process (so that killing
/// it kills the client); killed when dropped.
struct SlowBackup {
    child: std::process::Child,
    out: std::path::PathBuf,
    err: std::path::PathBuf,
}

impl SlowBackup {
    fn start(d: &Deployment, max_rate: &str) -> Self {
        let out = d.td.join("slow-backup.out");
        let err = d.td.join("slow-backup.err");
        let args = backup_args(&d.primary, &["--max-rate", max_rate, "--quiet"]);
        let child = d
            .agent
            .direct_command(&args.iter().map(String::as_str).collect::<Vec<_>>())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("create"))
            .stderr(std::fs::File::create(&err).expect("create"))
            .spawn()
            .expect("spawn walvault backup");
        Self { child, out, err }
    }

    fn output(&self) -> String {
        format!(
            "stdout: {}\nstderr: {}",
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    /// Polls `walvault backups --json` until the running backup has written `at_least` bytes;
    /// returns the bytes_written seen then.
    fn wait_written(&mut self, d: &Deployment, at_least: u64) -> u64 {
        wait_until(
            &format!("the running backup to have written {at_least} bytes"),
            Duration::from_secs(150),
            || {
                if let Some(status) = self.child.try_wait().expect("try_wait") {
                    panic!(
                        "walvault backup ended ({status}) before it could be interrupted:\n{}",
                        self.output()
                    );
                }
                let list = list_backups(&d.agent, None);
                assert!(list.len() <= 1, "{list:?}");
                let running = list.first()?;
                assert_eq!(running.state, "running", "{list:?}");
                (running.bytes_written >= at_least).then_some(running.bytes_written)
            },
        )
    }
}

impl Drop for SlowBackup {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// After an interrupted first backup that had written `written` bytes: nothing claims to be a
/// backup, the next run writes only what the server still lacks, and its restore matches the
/// source.
fn next_run_sends_what_is_missing(d: &Deployment, written: u64) {
    wait_until(
        "the server to forget the interrupted backup",
        Duration::from_secs(30),
        || list_backups(&d.agent, None).is_empty().then_some(()),
    );
    let snaps = d.snapshots();
    assert!(
        snaps.is_empty(),
        "snapshots after the interrupted backup: {snaps:?}"
    );

    let info = backup_ok(&d.agent, &d.primary, &[]);
    let expected = d.primary.checksums();
    assert_pgbench_compared(&expected);
    d.restore_point_archived("after");
    eprintln!("next run: {info:?}");
    assert_complete(&info, "full");
    assert!(
        info.bytes_written + written <= info.bytes_read + 8 * MIB,
        "the next run wrote {} bytes, though {written} of its {} bytes read were already \
         written by the interrupted run",
        info.bytes_written,
        info.bytes_read
    );
    let listed = list_backups(&d.agent, None);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].id, info.id);

    let r = d.restore(&info.id, "after", &Target::Name("after".into()));
    assert_eq!(
        r.pg.checksums(),
        expected,
        "the restored backup differs from the source"
    );
}

#[test]
fn killed_client_leaves_no_backup_and_the_next_run_sends_what_is_missing() {
    let Some(d) = Deployment::start("backup_killed", Some(10)) else {
        return;
    };
    let db_size = d.database_size();
    let started = Instant::now();
    let mut slow = SlowBackup::start(&d, "8M");
    let written = slow.wait_written(&d, db_size * 4 / 10);
    slow.child.kill().expect("SIGKILL walvault backup");
    let status = slow.child.wait().expect("wait");
    eprintln!(
        "killed the client ({status}) after {:?}, at {written} of {db_size} bytes",
        started.elapsed()
    );
    next_run_sends_what_is_missing(&d, written);
}

#[test]
fn server_killed_during_a_backup_leaves_no_backup_and_the_next_run_sends_what_is_missing() {
    let Some(mut d) = Deployment::start("backup_server_killed", Some(10)) else {
        return;
    };
    let db_size = d.database_size();
    let mut slow = SlowBackup::start(&d, "8M");
    let written = slow.wait_written(&d, db_size * 4 / 10);
    d.wv.server.kill();
    // The client notices and fails with an error, in bounded time.
    let status = wait_until(
        "the client to fail after the server died",
        Duration::from_secs(120),
        || slow.child.try_wait().expect("try_wait"),
    );
    let output = slow.output();
    eprintln!("server killed at {written} of {db_size} bytes; client: {status}\n{output}");
    assert_eq!(status.code(), Some(1), "{output}");
    let stderr = std::fs::read_to_string(&slow.err).unwrap_or_default();
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "not a one-line error: {output}"
    );
    d.wv.server.restart();
    next_run_sends_what_is_missing(&d, written);
}

#[test]
fn backup_skips_what_pg_basebackup_skips() {
    let Some(d) = Deployment::start("backup_skips", None) else {
        return;
    };
    d.primary.psql(
        "CREATE TABLE kept AS SELECT g AS id, md5(g::text) AS body FROM generate_series(1, 20000) g; \
         CREATE UNLOGGED TABLE scratch AS SELECT g AS id FROM generate_series(1, 20000) g; \
         SELECT pg_create_physical_replication_slot('standby1', true)",
    );
    // pg_internal.init files appear once backends read the catalog.
    d.primary.psql("SELECT count(*) FROM pg_class");
    let scratch = d.primary.psql("SELECT pg_relation_filepath('scratch')");
    let kept = d.primary.psql("SELECT pg_relation_filepath('kept')");
    let data = d.primary.data_dir();
    for must in [
        "postmaster.pid",
        "postmaster.opts",
        "pg_replslot/standby1/state",
        &scratch,
        &format!("{scratch}_init"),
    ] {
        assert!(data.join(must).exists(), "the source has no {must}");
    }

    let info = backup_ok(&d.agent, &d.primary, &[]);
    assert_complete(&info, "full");
    let mut expected = d.primary.checksums();
    d.restore_point_archived("after");
    {
        let c = d.clone_backup(&info.id, "look");
        for skipped in [
            "postmaster.pid",
            "postmaster.opts",
            "pg_replslot/standby1",
            &scratch,
        ] {
            assert!(
                !c.data.join(skipped).exists(),
                "the backup holds {skipped}, which a base backup must skip"
            );
        }
        for present in [&format!("{scratch}_init"), &kept, "global/pg_control"] {
            assert!(c.data.join(present).is_file(), "the backup lacks {present}");
        }
        for empty in ["pg_wal", "pg_replslot"] {
            let entries: Vec<_> = std::fs::read_dir(c.data.join(empty))
                .unwrap_or_else(|e| panic!("the backup has no {empty}/: {e}"))
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| n != "archive_status")
                .collect();
            assert!(
                entries.is_empty(),
                "{empty}/ of the backup holds {entries:?}"
            );
        }
        let mut stack = vec![c.data.clone()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).expect("read").flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    name != "pg_internal.init" && !name.starts_with("pgsql_tmp"),
                    "the backup holds {}",
                    e.path().display()
                );
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }

    // The unlogged table comes back empty, as after a crash; everything else as it was.
    let r = d.restore(&info.id, "after", &Target::Name("after".into()));
    assert_eq!(r.pg.psql("SELECT count(*) FROM scratch"), "0");
    let mut got = r.pg.checksums();
    assert!(expected.remove("public.scratch").is_some());
    got.remove("public.scratch");
    assert!(
        expected["public.kept"].starts_with("20000 rows"),
        "{expected:?}"
    );
    assert_eq!(got, expected, "the restored backup differs from the source");
    assert_eq!(
        r.pg.psql("SELECT count(*) FROM pg_replication_slots"),
        "0",
        "the source's replication slot came back with the backup"
    );
}
