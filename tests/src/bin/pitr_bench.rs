//! Benchmark of point-in-time restores to the first answered query, side by side with
//! pgBackRest (issue 11: "cluster C as of 10:03" in seconds, whatever its size and however
//! much WAL lies since the last base backup).
//!
//! One deployment ([`Lab`]: a zfs-fuse pool, the server rolling forward by itself, PostgreSQL
//! 15 archiving every segment to walvault and to Debian's `pgbackrest` 2.45, whose repository
//! is a dataset of the same pool, zst level 1): `pgbench -i -s SCALE`, a full `walvault
//! backup` and a full `pgbackrest backup` of the same state, then pgbench (`-c 2`, the primary
//! checkpointing every minute, so that its WAL carries full-page images as a busy database's
//! does) until each amount of WAL in WAL_MIB lies after the backups, with a time T_n between
//! two marker commits there. No base backup follows: walvault's nearest snapshot is one it
//! rolled forward itself (the cluster's policy: every CADENCE MiB). Then, per T_n,
//! interleaved, three times each:
//! - **walvault**: `walvault restore --time T_n --to instance` as the operator, from the
//!   command's start to the first answered query on the connection string it prints (the
//!   server clones the nearest snapshot, replays the WAL after it and promotes);
//! - **pgBackRest**: `pgbackrest restore --type=time --target=T_n --target-action=promote`
//!   into an empty directory on the local disk, then `pg_ctl start`, to the first answered
//!   query once it is read-write.
//!
//! Both answers must be the marker row committed before T_n. Reported: medians, ratios, the
//! WAL each tool replayed, the snapshot walvault picked, and the server's memory. The goal:
//! walvault ≤ 0.3× pgBackRest, and growing < 10% from the smallest to the largest amount of
//! WAL (and, across runs, from scale 10 to 100).
//!
//! Run as root: `cargo build --release --workspace && cargo run --release -p walvault-tests
//! --bin pitr-bench [SCALE] [WAL_MIB,…] [CADENCE]` (default `10 300,3000 256`). The pool is a
//! sparse file sized for the data (`WALVAULT_TEST_POOL_GIB` overrides it). Bounded: every step
//! has a deadline, and everything it starts is removed on the way out.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use walvault_proto::Lsn;
use walvault_tests::harness::backup::{backup_ok, list_backups};
use walvault_tests::harness::bench::{cpu_model, meminfo_total, mib, pgbench, rss_kib, Pgbackrest};
use walvault_tests::harness::restore::{archive_now, psql_conninfo, Lab, PointInTime};
use walvault_tests::harness::{chown_postgres, run, wait_until, Pg, Storage};

const CLUSTER: &str = "acme/db1";
const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// One target: its time, and its LSN's distance from the backups.
struct Target {
    t: PointInTime,
    lsn: Lsn,
    wal_since_backup: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let scale: u32 = args.first().and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut wal_mib: Vec<u64> = args
        .get(1)
        .map(|s| s.split(',').filter_map(|m| m.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![300, 3000]);
    wal_mib.sort_unstable();
    let cadence: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(256);
    let largest = wal_mib.last().copied().unwrap_or(300);
    if std::env::var_os("WALVAULT_TEST_POOL_GIB").is_none() {
        // The database twice (the backups, the chain), the WAL in both archives, headroom.
        let gib = 4 + (u64::from(scale) * 32 + largest * 2) / 1024;
        std::env::set_var("WALVAULT_TEST_POOL_GIB", gib.to_string());
    }
    println!(
        "pitr-bench: scale {scale}, WAL after the backups {wal_mib:?} MiB, roll-forward every \
         {cadence} MiB; {}, {}",
        cpu_model(),
        meminfo_total()
    );
    let Some(mut lab) = Lab::start_with(
        &format!("pitr-bench-s{scale}"),
        None,
        "[rollforward]\ninterval_secs = 2\n",
    ) else {
        std::process::exit(1)
    };
    let log = lab.td().log().clone();
    let set = lab.op(&["policy", "set", "--rollforward-mib", &cadence.to_string()]);
    assert!(set.success(), "{}", set.describe());

    let Storage::Zfs(pool) = &lab.d.storage else {
        panic!("pitr-bench needs the ZFS backend")
    };
    let pgbr = Pgbackrest::setup(lab.td(), pool.name(), &lab.d.primary)
        .unwrap_or_else(|e| panic!("pgbackrest: {e}"));
    {
        let pg = &mut lab.d.primary;
        let walvault_push = lab.d.agent.shell_command("wal-push %p");
        pg.append_conf(&[
            format!(
                "archive_command = '{walvault_push} && pgbackrest --config={} --stanza=bench archive-push %p'",
                pgbr.conf.display()
            ),
            "checkpoint_timeout = '1min'".into(),
            "max_wal_size = '4GB'".into(),
            "wal_keep_size = '0'".into(),
        ]);
        pg.psql("SELECT pg_reload_conf()");
    }
    let pg = &lab.d.primary;
    let init = Instant::now();
    pgbench(
        &log,
        pg,
        &["-i", "-s", &scale.to_string(), "-q"],
        Duration::from_secs(300 + 20 * u64::from(scale)),
    );
    println!("pgbench -i: {:.0} s", init.elapsed().as_secs_f64());
    archive_now(pg);
    let backup = backup_ok(&lab.d.agent, pg, &["--quiet"]);
    let (pgbr_secs, pgbr_backup) = pgbr.backup("full");
    println!(
        "walvault backup {} in {:.1} s; pgbackrest backup {} in {pgbr_secs:.1} s",
        backup.id,
        backup.duration_ms as f64 / 1000.0,
        pgbr_backup["label"].as_str().unwrap_or("?"),
    );
    let from: Lsn = backup.stop();
    pg.psql("CREATE TABLE bench_mark (n int, at text)");

    // WAL until each amount lies after the backups; a target in each.
    let mut targets = Vec::new();
    let generate = Instant::now();
    for (n, want) in wal_mib.iter().enumerate() {
        loop {
            let since = pg.current_lsn().0.saturating_sub(from.0);
            if since >= want << 20 {
                break;
            }
            pgbench(
                &log,
                pg,
                &["-n", "-c", "2", "-T", "15"],
                Duration::from_secs(300),
            );
        }
        pg.psql(&format!("INSERT INTO bench_mark VALUES ({n}, 'before')"));
        let t = PointInTime::between_commits(pg);
        let lsn = pg.current_lsn();
        pg.psql(&format!("INSERT INTO bench_mark VALUES ({n}, 'after')"));
        let wal_since_backup = lsn.0 - from.0;
        println!(
            "T{n} = {} at {lsn}: {:.0} MiB of WAL after the backups ({:.0} s of pgbench so far)",
            t.utc,
            mib(wal_since_backup),
            generate.elapsed().as_secs_f64()
        );
        targets.push(Target {
            t,
            lsn,
            wal_since_backup,
        });
    }
    pgbench(
        &log,
        pg,
        &["-n", "-c", "2", "-T", "5"],
        Duration::from_secs(300),
    );
    archive_now(pg);
    let last = targets.last().map(|t| t.lsn).unwrap_or(from);
    lab.wait_window_covers(targets.last().map(|t| t.t.micros).unwrap_or(0));
    // Roll-forward keeps up with the archive by itself; the benchmark only waits for it.
    let caught_up = Instant::now();
    wait_until(
        "roll-forward to come within its cadence of the last target",
        Duration::from_secs(3600),
        || {
            list_backups(&lab.operator, Some(CLUSTER))
                .iter()
                .any(|b| b.kind == "rollforward" && b.stop().0 + (cadence << 20) >= last.0)
                .then_some(())
        },
    );
    let snapshots: Vec<_> = list_backups(&lab.operator, Some(CLUSTER))
        .into_iter()
        .filter(|b| b.kind == "rollforward")
        .collect();
    println!(
        "{} roll-forward snapshots of {}; the last came {:.0} s after the WAL ended",
        snapshots.len(),
        backup.id,
        caught_up.elapsed().as_secs_f64()
    );
    // Where each snapshot's replay starts against where it is consistent: a restartpoint
    // cannot be newer than the last checkpoint record replayed, and the source's spread
    // checkpoints put that record's redo point far behind it.
    for s in &snapshots {
        println!(
            "  {}: redo {} ({:.0} MiB after the backup), consistent at {} ({:.0} MiB): \
             replay starts {:.0} MiB before it",
            s.id,
            s.start(),
            mib(s.start().0.saturating_sub(from.0)),
            s.stop(),
            mib(s.stop().0.saturating_sub(from.0)),
            mib(s.stop().0.saturating_sub(s.start().0)),
        );
    }

    let mut report = Vec::new();
    for (n, target) in targets.iter().enumerate() {
        let (mut wv, mut br) = (Vec::new(), Vec::new());
        let mut picked = String::new();
        // The planner's WAL from the snapshot's redo point (where replay starts) to T.
        let plan = lab.op(&["restore", "--dry-run", "--json", "--time", &target.t.utc]);
        assert!(plan.success(), "{}", plan.describe());
        let plan: Value = serde_json::from_str(plan.stdout.trim()).expect("dry-run JSON");
        let replayed = plan["wal_bytes"].as_u64().unwrap_or(0);
        for round in 0..ROUNDS {
            let _ = Command::new("sync").status();
            let start = Instant::now();
            let r = lab.try_restore_instance(&["--time", &target.t.utc]);
            assert!(r.success(), "restore to T{n} failed: {}", r.describe());
            let info: Value = serde_json::from_str(r.stdout.trim()).expect("restore JSON");
            let conninfo = info["conninfo"].as_str().unwrap_or_default();
            let q = psql_conninfo(
                &log,
                conninfo,
                &format!("SELECT string_agg(at, ',') FROM bench_mark WHERE n = {n}"),
            );
            let secs = start.elapsed().as_secs_f64();
            assert_eq!(
                q.stdout.trim(),
                "before",
                "walvault at T{n}: {}",
                q.describe()
            );
            picked = info["backup_id"].as_str().unwrap_or("?").to_owned();
            if round == 0 {
                // Where the time went: the instance's recovery, and the server's steps.
                let pg_log = psql_conninfo(
                    &log,
                    conninfo,
                    "SELECT pg_read_file('walvault-restore.log')",
                )
                .stdout;
                print_milestones(&pg_log);
                let id = info["id"].as_str().unwrap_or_default();
                for l in lab
                    .d
                    .wv
                    .server
                    .log_text()
                    .lines()
                    .filter(|l| l.contains(id))
                {
                    println!("    server: {}", l.chars().take(150).collect::<String>());
                }
            }
            lab.drop_restore(info["id"].as_str().unwrap_or_default());
            println!("  T{n} round {round}: walvault {secs:.2} s (from {picked})");
            wv.push(secs);

            let secs = pgbackrest_pitr(&lab, &pgbr, target, n, round);
            println!("  T{n} round {round}: pgbackrest {secs:.2} s");
            br.push(secs);
        }
        let (w, b) = (median(wv), median(br));
        report.push((n, w, b, picked, replayed));
    }
    if let Some(pid) = lab.d.wv.server.pid() {
        let (rss, peak) = rss_kib(pid);
        println!("server: RSS {} MiB, peak {} MiB", rss / 1024, peak / 1024);
    }
    println!("medians of {ROUNDS}, scale {scale}, time to the first answered query at T:");
    for (n, w, b, picked, replayed) in &report {
        let t = &targets[*n];
        println!(
            "  T{n}: {:.0} MiB of WAL after the backups: walvault {w:.2} s (from {picked}, \
             {:.0} MiB from its redo point), pgbackrest {b:.2} s (replaying {:.0} MiB): \
             {:.2}× (goal ≤ 0.3)",
            mib(t.wal_since_backup),
            mib(*replayed),
            mib(t.wal_since_backup),
            w / b
        );
    }
    if let (Some(first), Some(last)) = (report.first(), report.last()) {
        if report.len() > 1 {
            println!(
                "  walvault grew {:+.0}% from {:.0} to {:.0} MiB of WAL (goal < 10%); pgbackrest {:+.0}%",
                (last.1 / first.1 - 1.0) * 100.0,
                mib(targets[first.0].wal_since_backup),
                mib(targets[last.0].wal_since_backup),
                (last.2 / first.2 - 1.0) * 100.0
            );
        }
    }
}

/// `pgbackrest restore --type=time` to T into an empty local directory, then PostgreSQL
/// started on it: seconds from the restore's start to the first answered query once it is
/// read-write at T.
fn pgbackrest_pitr(lab: &Lab, pgbr: &Pgbackrest, target: &Target, n: usize, round: usize) -> f64 {
    let log = lab.td().log().clone();
    let mut pg = Pg::empty(lab.td(), &format!("pgbr-{n}-{round}"));
    let data = pg.data_dir().to_owned();
    std::fs::create_dir(&data).unwrap_or_else(|e| panic!("create {}: {e}", data.display()));
    chown_postgres(&data);
    walvault_tests::harness::chmod(&data, 0o700);
    let start = Instant::now();
    let r = run(
        &log,
        pgbr.command(&[
            "restore",
            &format!("--pg1-path={}", data.display()),
            "--type=time",
            &format!("--target={}+00", target.t.utc),
            "--target-action=promote",
        ])
        .current_dir("/"),
        Duration::from_secs(1800),
    );
    assert!(r.success(), "pgbackrest restore: {}", r.describe());
    // Our port and socket; the restored copy must not archive into either repository.
    pg.append_conf(&["archive_mode = off".into()]);
    pg.start();
    wait_until(
        &format!("the pgbackrest copy to be read-write at T{n}"),
        Duration::from_secs(3600),
        || (pg.try_psql("SELECT pg_is_in_recovery()").stdout.trim() == "f").then_some(()),
    );
    let got = pg.psql(&format!(
        "SELECT string_agg(at, ',') FROM bench_mark WHERE n = {n}"
    ));
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got, "before", "pgbackrest at T{n}");
    pg.stop();
    let _ = std::fs::remove_dir_all(&data);
    secs
}

/// The milestones of an instance's recovery in its PostgreSQL log.
fn print_milestones(pg_log: &str) {
    let keys = [
        "starting PostgreSQL",
        "redo starts",
        "consistent recovery state",
        "recovery stopping",
        "redo done",
        "selected new timeline",
        "ready to accept connections",
    ];
    for l in pg_log
        .lines()
        .filter(|l| keys.iter().any(|k| l.contains(k)))
    {
        println!("    pg: {}", l.chars().take(150).collect::<String>());
    }
    let restored = pg_log.matches("restored log file").count();
    println!("    pg: {restored} segments restored");
}
