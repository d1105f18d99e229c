//! Benchmark of point-in-time restores of one PostgreSQL 15 database, per pgbench scale:
//!
//! - `walvault restore --time T --to instance` (as an operator): wall-clock time from
//!   starting the command to the first answered query (`SELECT 1`; then `count(*)` of
//!   `pgbench_accounts` is checked) on the connection string it prints (the server clones the backup's snapshot, starts
//!   PostgreSQL on the clone, replays the archived WAL up to T and promotes it), and the
//!   `duration_ms` the server recorded for it;
//! - `walvault restore --latest --to dir:PATH` (as the `postgres` OS user, into an empty
//!   directory on the local disk): wall-clock time, bytes written and sent, MiB/s; then at
//!   once the same with `--delta` into the same PATH, where nothing changed;
//! - side by side, Debian's `pgbackrest` 2.45: a `--type=full` backup of the same database
//!   (zst level 1, repository on a dataset of the same zfs-fuse pool, `archive-check=n`, so
//!   its archive holds no WAL), then `pgbackrest restore --type=immediate` into an empty
//!   directory on the local disk. Only the file restore is timed; that PostgreSQL is never
//!   started (it could not reach consistency without WAL).
//!
//! Per scale: a new deployment ([`Lab`]: zfs-fuse pool, server with a `[restore]` port
//! range, PostgreSQL 15 archiving to walvault with `archive_command = walvault wal-push`),
//! `pgbench -i -s SCALE`, a full `walvault backup`, 20 s of `pgbench -c 2`, a recorded time T
//! between two marker commits a second apart, 5 s more of pgbench, a WAL switch and a wait
//! until the archive and its time index cover T.
//!
//! Run as root: `cargo build --release --workspace && cargo run --release -p walvault-tests
//! --bin restore-bench [SCALE...]` (default `5 25`). Bounded: every step has a deadline, and
//! instances, pools, PostgreSQL and the server are removed on the way out, failure included.
//! The harness's pool is a 1 GiB sparse file, so SCALE is capped at 40.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use walvault_tests::harness::backup::{backup_ok, BackupInfo};
use walvault_tests::harness::bench::{
    cpu_model, dir_bytes, meminfo_total, mib, pgbench, timed, Pgbackrest,
};
use walvault_tests::harness::restore::{archive_now, psql_conninfo, DirRestore, Lab, PointInTime};
use walvault_tests::harness::{e2e_ready, Log, Storage};

const DEFAULT_SCALES: [u32; 2] = [5, 25];
const MAX_SCALE: u32 = 40;
const PGBENCH_CLIENTS: &str = "2";
/// pgbench before T, and after it (so that the archive holds commits past T).
/// Transactions per client before and after T: a fixed count, so that every size replays
/// about the same amount of WAL and the instance's time shows what size itself costs.
const PGBENCH_BEFORE_T: &str = "3000";
const PGBENCH_AFTER_T: &str = "500";

/// The figures of one scale.
struct Row {
    scale: u32,
    /// `pg_database_size('postgres')` when the walvault backup ran.
    db_size: u64,
    /// The source's PGDATA without pg_wal when the walvault backup ran.
    pgdata_size: u64,
    /// WAL from the backup's start to T: what the instance replays at least.
    wal_to_t: u64,
    /// `--to instance`: the command's wall-clock time, and until the first answered query.
    inst_returned: f64,
    inst_first_query: f64,
    /// The `duration_ms` the server recorded for the instance restore.
    inst_server_ms: u64,
    /// Queries tried until the first answered one (1: it answered as the command returned).
    inst_attempts: u32,
    dir_secs: f64,
    dir: DirRestore,
    /// What the restored directory holds on disk (pg_wal excluded).
    dir_on_disk: u64,
    delta_secs: f64,
    delta: DirRestore,
    pgbackrest: Option<PgbackrestRun>,
}

struct PgbackrestRun {
    backup_secs: f64,
    restore_secs: f64,
    /// The restored PGDATA's size (pg_wal excluded).
    restored: u64,
}

/// A pgbackrest full backup and then its file restore into `dir` (empty, owned by postgres).
fn backup_and_restore(b: &Pgbackrest, log: &Log, dir: &Path) -> PgbackrestRun {
    let (backup_secs, _) = b.backup("full");
    let _ = Command::new("sync").status();
    let pg1 = format!("--pg1-path={}", dir.display());
    let (_, restore_secs) = timed(
        log,
        &mut b.command(&[&pg1, "restore", "--type=immediate"]),
        Duration::from_secs(900),
    );
    PgbackrestRun {
        backup_secs,
        restore_secs,
        restored: dir_bytes(dir, &["pg_wal"]),
    }
}

/// `walvault restore … --to dir:PATH --json --quiet` as the agent (the `postgres` OS user);
/// its wall-clock seconds and what it printed.
fn restore_to_dir(lab: &Lab, path: &Path, args: &[&str]) -> (f64, DirRestore) {
    let start = Instant::now();
    let r = lab.try_restore_to_dir(path, args);
    let secs = start.elapsed().as_secs_f64();
    assert!(
        r.success(),
        "walvault restore {args:?} --to dir: failed: {}",
        r.describe()
    );
    let out: DirRestore = serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "`walvault restore --to dir: --json` printed no restore ({e}):\n{}",
            r.stdout
        )
    });
    (secs, out)
}

fn bench(scale: u32) -> Row {
    let Some(lab) = Lab::start(&format!("restore-bench-s{scale}"), None) else {
        std::process::exit(1)
    };
    let Storage::Zfs(pool) = &lab.d.storage else {
        panic!("restore-bench needs ZFS storage");
    };
    let log = lab.td().log().clone();
    let pg = &lab.d.primary;

    println!("scale {scale}: pgbench -i -s {scale}…");
    pgbench(
        &log,
        pg,
        &["-i", "-s", &scale.to_string(), "-q"],
        Duration::from_secs(120 + 20 * u64::from(scale)),
    );
    archive_now(pg);
    let db_size: u64 = pg
        .psql("SELECT pg_database_size('postgres')")
        .parse()
        .expect("pg_database_size");
    let pgdata_size = dir_bytes(pg.data_dir(), &["pg_wal"]);

    println!("scale {scale}: walvault backup…");
    let backup: BackupInfo = backup_ok(&lab.d.agent, pg, &["--quiet"]);
    println!(
        "  backup {}: read {:.1} MiB, sent {:.1} MiB in {} ms, LSN {} -> {}",
        backup.id,
        mib(backup.bytes_read),
        mib(backup.bytes_sent),
        backup.duration_ms,
        backup.start_lsn,
        backup.stop_lsn.as_deref().unwrap_or("?"),
    );

    println!(
        "scale {scale}: pgbench -c {PGBENCH_CLIENTS} -t {PGBENCH_BEFORE_T}, T, \
         pgbench -t {PGBENCH_AFTER_T}…"
    );
    pgbench(
        &log,
        pg,
        &["-n", "-c", PGBENCH_CLIENTS, "-t", PGBENCH_BEFORE_T],
        Duration::from_secs(120),
    );
    pg.psql("CREATE TABLE bench_mark (at text); INSERT INTO bench_mark VALUES ('before')");
    let t = PointInTime::between_commits(pg);
    let wal_to_t: u64 = pg
        .psql(&format!(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{}')::bigint",
            backup.start_lsn
        ))
        .parse()
        .expect("pg_wal_lsn_diff");
    pg.psql("INSERT INTO bench_mark VALUES ('after')");
    pgbench(
        &log,
        pg,
        &["-n", "-c", PGBENCH_CLIENTS, "-t", PGBENCH_AFTER_T],
        Duration::from_secs(120),
    );
    archive_now(pg);
    lab.wait_window_covers(t.micros);
    let accounts = u64::from(scale) * 100_000;

    println!(
        "scale {scale}: walvault restore --time '{}' --to instance…",
        t.utc
    );
    let _ = Command::new("sync").status();
    let start = Instant::now();
    let r = lab.try_restore_instance(&["--time", &t.utc]);
    let inst_returned = start.elapsed().as_secs_f64();
    assert!(
        r.success(),
        "walvault restore --to instance failed: {}",
        r.describe()
    );
    let info: Value = serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "`walvault restore --to instance --json` printed no restore ({e}):\n{}",
            r.stdout
        )
    });
    let id = info["id"].as_str().unwrap_or_default().to_owned();
    let conninfo = info["conninfo"].as_str().unwrap_or_default().to_owned();
    let deadline = start + Duration::from_secs(120);
    let mut inst_attempts = 0;
    let inst_first_query = loop {
        inst_attempts += 1;
        let q = psql_conninfo(&log, &conninfo, "SELECT 1");
        if q.success() {
            break start.elapsed().as_secs_f64();
        }
        assert!(
            Instant::now() < deadline,
            "restore {id} returned, but its instance did not answer within 120 s: {}",
            q.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let count = psql_conninfo(&log, &conninfo, "SELECT count(*) FROM pgbench_accounts");
    assert_eq!(
        count.stdout.trim(),
        accounts.to_string(),
        "pgbench_accounts of restore {id}: {}",
        count.describe()
    );
    let marks = psql_conninfo(
        &log,
        &conninfo,
        "SELECT string_agg(at, ',' ORDER BY at) FROM bench_mark",
    );
    assert!(
        marks.success() && marks.stdout.trim() == "before",
        "restore {id} to T should hold the commit before T and not the one after: {}",
        marks.describe()
    );
    let inst_server_ms = info["duration_ms"].as_u64().unwrap_or(0);
    println!(
        "  restore {id} of backup {}: command {inst_returned:.2} s, first answered query at \
         {inst_first_query:.2} s ({inst_attempts} tries), server duration {inst_server_ms} ms, \
         {conninfo}",
        info["backup_id"].as_str().unwrap_or("?"),
    );
    lab.drop_restore(&id);

    println!("scale {scale}: walvault restore --latest --to dir:…");
    let target = lab.empty_instance("dir");
    let path = target.data_dir().to_owned();
    let _ = Command::new("sync").status();
    let (dir_secs, dir) = restore_to_dir(&lab, &path, &["--latest"]);
    dir.report("  dir");
    let dir_on_disk = dir_bytes(&path, &["pg_wal"]);
    let (delta_secs, delta) = restore_to_dir(&lab, &path, &["--latest", "--delta"]);
    delta.report("  dir --delta");

    let pgbackrest = match Pgbackrest::setup(lab.td(), pool.name(), &lab.d.primary) {
        Ok(b) => {
            println!("scale {scale}: pgbackrest backup --type=full, restore --type=immediate…");
            let dest = lab.td().mkdir_postgres("pgbackrest-restore");
            let run = backup_and_restore(&b, lab.td().log(), &dest);
            println!(
                "  pgbackrest: backup {:.1} s, restore {:.1} s, restored {:.1} MiB",
                run.backup_secs,
                run.restore_secs,
                mib(run.restored)
            );
            Some(run)
        }
        Err(why) => {
            println!("(pgbackrest skipped: {why})");
            None
        }
    };
    drop(target);
    Row {
        scale,
        db_size,
        pgdata_size,
        wal_to_t,
        inst_returned,
        inst_first_query,
        inst_server_ms,
        inst_attempts,
        dir_secs,
        dir,
        dir_on_disk,
        delta_secs,
        delta,
        pgbackrest,
    }
}

/// The file system type under the test directories (where `--to dir:` writes).
fn local_fs() -> String {
    let base = std::env::var("WALVAULT_TEST_DIR").unwrap_or_else(|_| "/tmp/walvault-tests".into());
    Command::new("stat")
        .args(["-f", "-c", "%T", &base])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| format!("{} ({base})", String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let mut scales: Vec<u32> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse::<u32>()
                .unwrap_or_else(|_| panic!("SCALE must be a number, not {a:?}"))
                .clamp(1, MAX_SCALE)
        })
        .collect();
    if scales.is_empty() {
        scales = DEFAULT_SCALES.to_vec();
    }
    if !e2e_ready() {
        std::process::exit(1);
    }
    if Storage::dir_requested() {
        eprintln!("restore-bench restores from ZFS clones: unset WALVAULT_TEST_STORAGE");
        std::process::exit(1);
    }
    let began = Instant::now();
    let rows: Vec<Row> = scales.iter().map(|&s| bench(s)).collect();

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let version = Command::new("pgbackrest")
        .arg("version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!(
        "\nmachine: {cores} cores ({}), {} RAM; walvault server on a zfs-fuse pool on a 1 GiB \
         sparse file; --to dir: and pgbackrest restore write to {}; PostgreSQL 15, {version}; \
         whole run {:.0} s",
        cpu_model(),
        meminfo_total(),
        local_fs(),
        began.elapsed().as_secs_f64()
    );
    println!(
        "\n{:>5} {:>7} {:>8} {:>8} {:>8} {:>8} {:>7} {:>9} {:>7} {:>9} {:>7} {:>10} {:>6}",
        "scale",
        "DB MiB",
        "WAL->T",
        "inst s",
        "1st q s",
        "srv ms",
        "dir s",
        "dir MiB/s",
        "delta s",
        "delta B",
        "pgbr s",
        "pgbr MiB/s",
        "ratio"
    );
    for r in &rows {
        let (pgbr_s, pgbr_rate, ratio) = match &r.pgbackrest {
            Some(b) => (
                format!("{:.1}", b.restore_secs),
                format!("{:.1}", mib(b.restored) / b.restore_secs),
                format!("{:.2}x", r.dir_secs / b.restore_secs),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:>5} {:>7.1} {:>8.1} {:>8.2} {:>8.2} {:>8} {:>7.1} {:>9.1} {:>7.2} {:>9} {:>7} {:>10} {:>6}",
            r.scale,
            mib(r.db_size),
            mib(r.wal_to_t),
            r.inst_returned,
            r.inst_first_query,
            r.inst_server_ms,
            r.dir_secs,
            r.dir.mib_per_s(),
            r.delta_secs,
            r.delta.bytes_sent,
            pgbr_s,
            pgbr_rate,
            ratio,
        );
    }
    println!("\ndetails:");
    for r in &rows {
        println!(
            "  scale {}: pg_database_size {:.1} MiB, PGDATA (without pg_wal) {:.1} MiB; \
             instance: first query after {} tries; dir: {} files, {:.1} MiB written, \
             {:.1} MiB sent, {} ms by the client's clock, {:.1} MiB on disk; delta: {} bytes \
             sent, {} bytes written, {} blocks sent, {} blocks already there, {} ms",
            r.scale,
            mib(r.db_size),
            mib(r.pgdata_size),
            r.inst_attempts,
            r.dir.files,
            mib(r.dir.bytes_written),
            mib(r.dir.bytes_sent),
            r.dir.duration_ms,
            mib(r.dir_on_disk),
            r.delta.bytes_sent,
            r.delta.bytes_written,
            r.delta.blocks_sent,
            r.delta.blocks_same,
            r.delta.duration_ms,
        );
        if let Some(b) = &r.pgbackrest {
            println!(
                "    pgbackrest: full backup {:.1} s; restore {:.1} s of {:.1} MiB (restored \
                 PGDATA without pg_wal); walvault dir at the same yardstick {:.1} MiB/s",
                b.backup_secs,
                b.restore_secs,
                mib(b.restored),
                mib(r.dir_on_disk) / r.dir_secs,
            );
        }
    }
    println!(
        "\nDB MiB: pg_database_size when the walvault backup ran. WAL->T: WAL from the backup's \
         start to T (what the instance replays at least).\n\
         inst s: wall-clock time of `walvault restore --time T --to instance --json` (operator); \
         1st q s: from its start to the first answered `SELECT 1` (psql as postgres on the \
         printed conninfo); srv ms: the duration_ms the server recorded.\n\
         dir s: wall-clock time of `walvault restore --latest --to dir:PATH --json --quiet` as \
         postgres into an empty directory; dir MiB/s: bytes_written / the client's duration_ms.\n\
         delta s / delta B: the same at once with --delta into the same PATH (nothing \
         changed): wall-clock time and bytes_sent (bytes).\n\
         pgbr s: wall-clock time of `pgbackrest restore --type=immediate` (zst level 1, \
         repository on the same pool, default process-max) of a full backup taken after the \
         walvault restores; pgbr MiB/s: restored PGDATA (without pg_wal) / pgbr s.\n\
         ratio: dir s / pgbr s (below 1: walvault is faster). Both read from zfs-fuse, whose \
         cache may hold what was just written."
    );
}
