//! Benchmark of WAL replay on the server's clones against replay of the same WAL on a copy of
//! the same snapshot on the local disk (issue 11: replay on a clone at local-disk speed).
//!
//! One deployment ([`Lab`]: zfs-fuse pool, server, PostgreSQL 15 archiving to it):
//! `pgbench -i -s SCALE`, a full `walvault backup`, `pgbench -c 2 -t TXNS`, a time T between two
//! marker commits, a little more pgbench, a WAL switch, and a wait until the time index covers
//! T. Then, interleaved, three times each:
//! - **clone**: `walvault restore --time T --backup B --to instance` (B: the backup the ext4
//!   copy starts from too); the server's recorded duration
//!   (clone, start, replay to T, promotion) and the command's time to the first answered query;
//! - **ext4**: the backup's snapshot copied (`cp -a`, not timed) to the local ext4 disk,
//!   PostgreSQL started on it with the recovery settings the server writes (`restore_command =
//!   walvault-server wal-unpack` on the same archive, `recovery_target_time = T`, pause), then
//!   promoted as the server promotes (no wait for the pause loop's one-second sleep), polled as
//!   often as the server polls: from `pg_ctl start` to the first answered query after it.
//!
//! Reported: medians, MiB of WAL replayed per second, and the ratio ext4/clone (the goal is
//! at least 0.8). `REPLAY_BENCH_RESTORE` adds lines to the server's `[restore]` section, to
//! compare variants, and `REPLAY_BENCH_SOURCE` lines to the source's configuration;
//! `REPLAY_BENCH_ROLLFORWARD=1` lets the server roll forward (every 32 MiB)
//! and adds a third measurement: `--time T` from the nearest snapshot the planner picks. Run
//! as root: `cargo build --release --workspace && cargo run --release -p
//! walvault-tests --bin replay-bench [SCALE] [TXNS]` (default 10 and 4000). Bounded: every step
//! has a deadline, and everything it starts is removed on the way out.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use walvault_tests::harness::backup::backup_ok;
use walvault_tests::harness::bench::{cpu_model, meminfo_total, mib, pgbench};
use walvault_tests::harness::restore::{archive_now, psql_conninfo, Lab, PointInTime};
use walvault_tests::harness::{binary, run, Pg};

const CLUSTER: &str = "acme/db1";
const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scale: u32 = args.first().and_then(|s| s.parse().ok()).unwrap_or(10);
    let txns: u32 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(4000);
    println!(
        "replay-bench: scale {scale}, pgbench -c 2 -t {txns}; {}, {}",
        cpu_model(),
        meminfo_total()
    );
    // More `[restore]` settings for the server, to compare variants (such as
    // `local_wal_dir = ""` or `shared_buffers = "1GB"`).
    let restore = std::env::var("REPLAY_BENCH_RESTORE").unwrap_or_default();
    if !restore.is_empty() {
        println!("[restore] {restore}");
    }
    // REPLAY_BENCH_ROLLFORWARD=1: the server rolls forward every 32 MiB of WAL, and a third
    // measurement restores to T from the nearest snapshot the planner picks.
    let rolling = std::env::var("REPLAY_BENCH_ROLLFORWARD").is_ok_and(|v| v == "1");
    let extra = if rolling {
        format!("{restore}\n[rollforward]\ninterval_secs = 1\nevery_minutes = 0\nevery_mib = 32\n")
    } else {
        restore.clone()
    };
    let Some(lab) = Lab::start_with(&format!("replay-bench-s{scale}"), None, &extra) else {
        std::process::exit(1)
    };
    let log = lab.td().log().clone();
    // REPLAY_BENCH_SOURCE: settings for the source, one per line (such as
    // `full_page_writes = off`, common on ZFS, whose WAL then makes replay read every page).
    let source = std::env::var("REPLAY_BENCH_SOURCE").unwrap_or_default();
    if !source.is_empty() {
        println!("source: {}", source.replace('\n', "; "));
        lab.d
            .primary
            .append_conf(&source.lines().map(str::to_owned).collect::<Vec<_>>());
        lab.d.primary.psql("SELECT pg_reload_conf()");
    }
    let pg = &lab.d.primary;
    pgbench(
        &log,
        pg,
        &["-i", "-s", &scale.to_string(), "-q"],
        Duration::from_secs(120 + 20 * u64::from(scale)),
    );
    archive_now(pg);
    let backup = backup_ok(&lab.d.agent, pg, &["--quiet"]);
    pgbench(
        &log,
        pg,
        &["-n", "-c", "2", "-t", &txns.to_string()],
        Duration::from_secs(1800),
    );
    pg.psql("CREATE TABLE bench_mark (at text); INSERT INTO bench_mark VALUES ('before')");
    let t = PointInTime::between_commits(pg);
    let wal: u64 = pg
        .psql(&format!(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{}')::bigint",
            backup.stop_lsn.as_deref().unwrap_or("0/0")
        ))
        .parse()
        .expect("pg_wal_lsn_diff");
    pg.psql("INSERT INTO bench_mark VALUES ('after')");
    pgbench(
        &log,
        pg,
        &["-n", "-c", "2", "-t", "200"],
        Duration::from_secs(300),
    );
    archive_now(pg);
    lab.wait_window_covers(t.micros);
    println!(
        "backup {}; {:.1} MiB of WAL from its consistent point to T",
        backup.id,
        mib(wal)
    );

    let (mut clone_server, mut clone_query, mut ext4) = (Vec::new(), Vec::new(), Vec::new());
    let mut nearest = Vec::new();
    for round in 0..ROUNDS {
        let _ = Command::new("sync").status();
        let (info, first) = restore_at_t(&lab, &["--time", &t.utc, "--backup", &backup.id]);
        let server = info["duration_ms"].as_f64().unwrap_or(0.0) / 1000.0;
        if round == 0 {
            let clone_log = lab
                .d
                .storage
                .data_copy_dir(CLUSTER)
                .parent()
                .and_then(|db| db.parent())
                .map(|c| {
                    c.join("restores")
                        .join(info["id"].as_str().unwrap_or_default())
                        .join("data/walvault-restore.log")
                })
                .and_then(|p| std::fs::read_to_string(p).ok())
                .unwrap_or_default();
            print_milestones("clone", &clone_log);
        }
        lab.drop_restore(info["id"].as_str().unwrap_or_default());
        println!("  round {round}: clone: server {server:.2} s, first query {first:.2} s");
        clone_server.push(server);
        clone_query.push(first);

        let secs = ext4_replay(&lab, &backup.id, &t, round);
        println!("  round {round}: ext4: {secs:.2} s");
        ext4.push(secs);

        if rolling {
            let (info, first) = restore_at_t(&lab, &["--time", &t.utc]);
            println!(
                "  round {round}: nearest snapshot {}: first query {first:.2} s",
                info["backup_id"].as_str().unwrap_or("?")
            );
            nearest.push(first);
            lab.drop_restore(info["id"].as_str().unwrap_or_default());
        }
    }
    if rolling {
        println!(
            "median of {ROUNDS}: --time T from the nearest roll-forward snapshot: {:.2} s to the first query",
            median(nearest)
        );
    }
    // Where the clone's time went, from the server's log.
    for line in lab.d.wv.server.log_text().lines().filter(|l| {
        [
            " cloned",
            "prepared data directory",
            "started PostgreSQL",
            "promoted",
            "restore ready",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        println!("  server: {}", line.chars().take(140).collect::<String>());
    }
    let (cs, cq, e) = (median(clone_server), median(clone_query), median(ext4));
    println!(
        "medians of {ROUNDS}: clone {cs:.2} s (server; {cq:.2} s to the first query), ext4 {e:.2} s; \
         {:.1} MiB of WAL: {:.1} MiB/s on the clone, {:.1} MiB/s on ext4; clone speed = {:.2}× ext4's \
         (goal ≥ 0.8)",
        mib(wal),
        mib(wal) / cs,
        mib(wal) / e,
        e / cs
    );
}

/// `walvault restore <args> --to instance`: its JSON answer and the seconds from the command's
/// start to the first answered query, which must see the marker committed before T.
fn restore_at_t(lab: &Lab, args: &[&str]) -> (Value, f64) {
    let start = Instant::now();
    let r = lab.try_restore_instance(args);
    assert!(r.success(), "restore failed: {}", r.describe());
    let info: Value = serde_json::from_str(r.stdout.trim()).expect("restore JSON");
    let conninfo = info["conninfo"].as_str().unwrap_or_default().to_owned();
    let q = psql_conninfo(
        lab.td().log(),
        &conninfo,
        "SELECT string_agg(at, ',') FROM bench_mark",
    );
    let first = start.elapsed().as_secs_f64();
    assert_eq!(q.stdout.trim(), "before", "{}", q.describe());
    (info, first)
}

/// The recovery milestones of a PostgreSQL log, with their times.
fn print_milestones(what: &str, log: &str) {
    for l in log.lines().filter(|l| {
        [
            "starting PostgreSQL",
            "redo starts",
            "consistent recovery state",
            "recovery stopping",
            "pausing at the end",
            "redo done",
            "selected new timeline",
            "ready to accept",
            "restored log file",
        ]
        .iter()
        .any(|k| l.contains(k))
    }) {
        println!("  {what}: {}", l.chars().take(160).collect::<String>());
    }
}

/// Copies backup `id`'s snapshot to the local disk and times PostgreSQL's recovery of it to T
/// (from `pg_ctl start` to the first answered query after the promotion).
fn ext4_replay(lab: &Lab, id: &str, t: &PointInTime, round: usize) -> f64 {
    let log = lab.td().log().clone();
    let clone = lab.d.clone_backup(id, &format!("ext4-src-{round}"));
    let mut pg = Pg::empty(lab.td(), &format!("ext4-{round}"));
    let r = run(
        &log,
        Command::new("cp")
            .arg("-a")
            .arg(&clone.data)
            .arg(pg.data_dir()),
        Duration::from_secs(900),
    );
    assert!(r.success(), "{}", r.describe());
    drop(clone);
    for f in ["postmaster.pid", "postmaster.opts"] {
        let _ = std::fs::remove_file(pg.data_dir().join(f));
    }
    let wal_dir = lab.d.storage.wal_dir(CLUSTER);
    pg.append_conf(&[
        format!(
            "restore_command = '{} wal-unpack {} %f %p'",
            binary("walvault-server").display(),
            wal_dir.display()
        ),
        format!("recovery_target_time = '{}+00'", t.utc),
        "recovery_target_action = 'pause'".into(),
        "archive_mode = off".into(),
        "hot_standby = on".into(),
    ]);
    pg.write_file_in_data("recovery.signal", "");
    let _ = Command::new("sync").status();
    let start = Instant::now();
    pg.start();
    // Looked at every 200 ms, as the server looks at its instances.
    let deadline = Instant::now() + Duration::from_secs(1800);
    while pg
        .try_psql("SELECT pg_get_wal_replay_pause_state()")
        .stdout
        .trim()
        != "paused"
    {
        assert!(Instant::now() < deadline, "the ext4 copy never paused at T");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Promoted the way the server promotes its instances (`Instance::promote`): a plain
    // pg_promote() from a pause waits out PostgreSQL's one-second pause sleep, which would
    // charge the local copy for something the server avoids.
    pg.psql("SELECT pg_promote(false)");
    std::thread::sleep(Duration::from_millis(20));
    pg.try_psql(
        "SELECT pg_wal_replay_resume(), pg_wal_replay_pause() \
         WHERE pg_is_in_recovery() AND pg_get_wal_replay_pause_state() = 'paused'",
    );
    walvault_tests::harness::wait_until(
        "the ext4 copy to be promoted",
        Duration::from_secs(120),
        || (pg.try_psql("SELECT pg_is_in_recovery()").stdout.trim() == "f").then_some(()),
    );
    let got = pg.psql("SELECT string_agg(at, ',') FROM bench_mark");
    let secs = start.elapsed().as_secs_f64();
    if round == 0 {
        print_milestones("ext4", &pg.server_log());
    }
    assert_eq!(got, "before");
    pg.stop();
    secs
}
