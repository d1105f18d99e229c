//! Benchmark of base backups, full then incremental, of one PostgreSQL 15 database: `walvault
//! backup` (block-level: the client reads all of PGDATA and sends only blocks whose hash
//! changed, zstd level 1, to the real server on a zfs-fuse pool over mutual TLS, which
//! snapshots the dataset) side by side with Debian's `pgbackrest` 2.45 (`--type=full`, then
//! `--type=incr`, zst level 1, repository on a dataset of the same pool) and Debian's
//! `barman` 3.4 (`backup_method = postgres`, i.e. pg_basebackup, zstd level 1, full only: see
//! [`BARMAN`]). All back up the same database after `pgbench -i -s SCALE`, then again after
//! one and the same round of `pgbench` transactions and a checkpoint. Reports wall-clock
//! time, bytes read, bytes sent (walvault), bytes stored (growth of each tool's dataset on the
//! pool), CPU seconds of the tool, the walvault server and zfs-fuse, and walvault/pgbackrest
//! and walvault/barman ratios.
//!
//! PostgreSQL archives to walvault throughout (`archive_command = walvault wal-push`);
//! pgbackrest backs up with `archive-check=n`, so its backups are measured, not restorable;
//! barman gets WAL by streaming (`receive-wal` on a replication slot), as its checks demand.
//!
//! Run as root: `cargo build --release --workspace && cargo run --release -p walvault-tests
//! --bin backup-bench [SCALE [TRANSACTIONS]]` (defaults 30 and 20000 per client, 2 clients).
//! Bounded: every step has a deadline, and pools, PostgreSQL and the server are removed on
//! the way out, failure included. The harness's pool is a sparse file of 1 GiB (or
//! `WALVAULT_TEST_POOL_GIB`), so SCALE is capped at 40 per GiB.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use walvault_tests::harness::backup::zfs_mutate;
use walvault_tests::harness::bench::{
    cpu_model, dir_bytes, ensure_installed, meminfo_total, mib, peer_dataset, pgbench, timed,
    write_calls, zfs_get, Pgbackrest,
};
use walvault_tests::harness::wal::archive_conf;
use walvault_tests::harness::{
    chmod, e2e_ready, pool_gib, run, Client, Log, Pg, Run, Storage, TestDir, Walvault, PG_USER,
};

/// Why barman has no incremental row.
const BARMAN: &str = "barman 3.4 with backup_method = postgres runs pg_basebackup, which on \
     PostgreSQL 15 makes full backups only (block-level incremental needs PostgreSQL 17); \
     its file-level incremental (backup_method = rsync, reuse_backup = link) needs ssh to the \
     database host and is not set up here.";

const CLUSTER: &str = "bench/pg";
const PGBENCH_CLIENTS: &str = "2";
/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`, 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// One backup of one tool.
struct Row {
    tool: &'static str,
    kind: &'static str,
    seconds: f64,
    /// What the tool read from PGDATA.
    bytes_read: u64,
    /// On the wire (walvault only).
    bytes_sent: Option<u64>,
    /// Growth of the tool's datasets on the pool (compressed, ZFS `used`).
    bytes_stored: u64,
    /// The tool's own account of what it wrote: walvault's bytes_written (blocks, before ZFS
    /// compression), pgbackrest's repository delta (zst-compressed files).
    written: u64,
    /// PGDATA's size (without pg_wal) when the backup ran.
    pgdata: u64,
    /// CPU seconds the backup took.
    cpu: Cpu,
}

/// CPU seconds (user + system) used so far by the backup tool (children of this process:
/// `runuser` and what it runs), the walvault server, and the zfs-fuse daemon (which
/// compresses and checksums what either tool writes). This process holds the harness's zfs
/// turn, so no other test writes through zfs-fuse meanwhile.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    tool: f64,
    server: f64,
    zfs: f64,
}

impl Cpu {
    /// Fields of `/proc/<pid>/stat` after the command name, from the state (field 3) on.
    fn stat(pid: &str) -> Vec<f64> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = text.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
        after
            .split_whitespace()
            .map(|f| f.parse::<f64>().unwrap_or(0.0) / CLK_TCK)
            .collect()
    }

    /// utime + stime (fields 14, 15) or cutime + cstime (16, 17).
    fn of(pid: &str, children: bool) -> f64 {
        let f = Self::stat(pid);
        let i = if children { 13 } else { 11 };
        f.get(i).copied().unwrap_or(0.0) + f.get(i + 1).copied().unwrap_or(0.0)
    }

    fn now(server_pid: &str, zfs_pid: &str) -> Self {
        Self {
            tool: Self::of("self", true),
            server: Self::of(server_pid, false),
            zfs: Self::of(zfs_pid, false),
        }
    }

    fn since(self, start: Self) -> Self {
        Self {
            tool: self.tool - start.tool,
            server: self.server - start.server,
            zfs: self.zfs - start.zfs,
        }
    }
}

/// The pid of the process whose command line contains every one of `parts`.
fn find_pid(parts: &[&str]) -> String {
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == std::process::id().to_string() {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if parts.iter().all(|p| cmdline.contains(p)) {
            return name;
        }
    }
    // No such process: its CPU reads as 0.
    "0".into()
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

/// `used` of a dataset (with its descendants and snapshots) once ZFS has written everything
/// out: space is accounted when a transaction group syncs, seconds after the writes. Setting a
/// user property waits for a sync; then the value must hold still for a few seconds.
fn settled_used(log: &Log, dataset: &str) -> u64 {
    let _ = Command::new("sync").status();
    let stamp = format!(
        "walvault-bench:synced={}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let r = zfs_mutate(log, &["set", &stamp, dataset]);
    assert!(r.success(), "{}", r.describe());
    let get = || -> u64 { zfs_get(log, "used", dataset).parse().unwrap_or(0) };
    let mut last = get();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = get();
        if now == last || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Switches WAL and waits until the archiver has pushed everything to walvault, so that no
/// archiving runs during the timed backups.
fn archive_all(pg: &Pg) {
    pg.psql("CHECKPOINT");
    let seg = pg.switch_wal();
    pg.wait_archived(&seg, Duration::from_secs(900));
}

fn walvault_backup(log: &Log, agent: &Client, pg: &Pg) -> (Value, f64) {
    let conninfo = pg.conninfo();
    let mut cmd = agent.command(&["backup", "--json", "--quiet", "--conninfo", &conninfo]);
    let (r, secs) = timed(log, &mut cmd, Duration::from_secs(1800));
    let v: Value = serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "`walvault backup --json` printed no JSON ({e}):\n{}",
            r.stdout
        )
    });
    (v, secs)
}

fn num(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or(0)
}

/// Barman 3.4 from Debian, `backup_method = postgres` (pg_basebackup, zstd level 1 on the
/// client side), WAL by its own streaming (`receive-wal` on a replication slot, which its
/// checks require before a backup), barman_home on a dataset of the same pool. Full backups
/// only: on PostgreSQL 15 that method has no incremental.
struct Barman {
    conf: PathBuf,
    home: PathBuf,
    dataset: String,
    log: Log,
    /// `barman receive-wal` (and its pg_receivewal), in its own process group.
    receiver: Option<std::process::Child>,
}

impl Barman {
    fn setup(td: &TestDir, pool: &str, pg: &Pg) -> Result<Self, String> {
        use std::os::unix::process::CommandExt;
        ensure_installed("barman", "barman")?;
        let (dataset, home) = peer_dataset(td.log(), pool, "barman")?;
        let conf = td.join("barman.conf");
        let conninfo = pg.conninfo();
        std::fs::write(
            &conf,
            format!(
                "[barman]\nbarman_home = {home}\nbarman_user = {PG_USER}\n\
                 log_file = {home}/barman.log\nlog_level = INFO\n\n[pg]\n\
                 description = backup-bench\nconninfo = {conninfo}\n\
                 streaming_conninfo = {conninfo}\nbackup_method = postgres\n\
                 streaming_archiver = on\nslot_name = barman\n\
                 path_prefix = /usr/lib/postgresql/15/bin\nbackup_compression = zstd\n\
                 backup_compression_level = 1\nbackup_compression_location = client\n\
                 backup_compression_format = tar\n",
                home = home.display(),
            ),
        )
        .expect("write barman.conf");
        chmod(&conf, 0o644);
        let mut me = Self {
            conf,
            home,
            dataset,
            log: td.log().clone(),
            receiver: None,
        };
        let ok = |r: Run| {
            if r.success() {
                Ok(())
            } else {
                Err(format!(
                    "`{}` failed: {} {}",
                    r.argv,
                    r.stdout.trim(),
                    r.stderr.trim()
                ))
            }
        };
        let short = Duration::from_secs(120);
        ok(run(
            &me.log,
            &mut me.command(&["receive-wal", "--create-slot", "pg"]),
            short,
        ))?;
        let out = std::fs::File::create(td.join("barman-receive-wal.log"))
            .map_err(|e| format!("barman-receive-wal.log: {e}"))?;
        let child = me
            .command(&["receive-wal", "pg"])
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("start barman receive-wal: {e}"))?;
        me.receiver = Some(child);
        // A WAL switch before pg_receivewal streams would close a segment it never gets.
        let deadline = Instant::now() + Duration::from_secs(60);
        while pg.psql(
            "SELECT count(*) FROM pg_stat_replication r JOIN pg_replication_slots s \
             ON s.active_pid = r.pid WHERE s.slot_name = 'barman' AND r.state = 'streaming'",
        ) != "1"
        {
            if Instant::now() > deadline {
                return Err("barman receive-wal is not streaming after 60 s".into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        ok(run(
            &me.log,
            &mut me.command(&[
                "switch-wal",
                "--force",
                "--archive",
                "--archive-timeout",
                "120",
                "pg",
            ]),
            Duration::from_secs(180),
        ))?;
        ok(run(&me.log, &mut me.command(&["check", "pg"]), short))?;
        Ok(me)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_USER, "--", "barman", "-c"])
            .arg(&self.conf)
            .args(args)
            .current_dir("/");
        c
    }

    /// `barman backup pg`: its wall-clock seconds and `show-backup` of it.
    fn backup(&self) -> (f64, String) {
        let (_, secs) = timed(
            &self.log,
            &mut self.command(&["backup", "pg"]),
            Duration::from_secs(1800),
        );
        let (r, _) = timed(
            &self.log,
            &mut self.command(&["show-backup", "pg", "latest"]),
            Duration::from_secs(120),
        );
        (secs, r.stdout)
    }
}

impl Drop for Barman {
    fn drop(&mut self) {
        if let Some(mut c) = self.receiver.take() {
            // Its whole process group: barman and the pg_receivewal it started.
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", c.id())])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if c.try_wait().ok().flatten().is_none() {
                let _ = Command::new("kill")
                    .args(["-KILL", "--", &format!("-{}", c.id())])
                    .status();
                let _ = c.wait();
            }
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let scale: u32 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(30)
        .clamp(1, 40 * u32::try_from(pool_gib()).unwrap_or(1));
    let txns: u32 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(20000)
        .clamp(1, 200_000);
    if !e2e_ready() {
        std::process::exit(1);
    }
    let td = TestDir::new("backup-bench");
    let Some(storage) = Storage::create(&td) else {
        std::process::exit(1)
    };
    let Storage::Zfs(pool) = &storage else {
        eprintln!("backup-bench measures bytes stored on ZFS: unset WALVAULT_TEST_STORAGE");
        std::process::exit(1);
    };
    let log = td.log().clone();
    let wv = Walvault::start(&td, &storage);
    let server_pid = find_pid(&["walvault-server", &wv.server.config().to_string_lossy()]);
    let zfs_pid = find_pid(&["zfs-fuse"]);
    wv.tenant_create("bench", None);
    wv.cluster_create(CLUSTER);
    let agent = wv.agent(CLUSTER);
    let mut pg = Pg::init(&td, "src", &archive_conf(&agent));
    pg.start();

    let compression = zfs_get(&log, "compression", &format!("{}/walvault", pool.name()));
    let db_dataset = storage.db_dataset(CLUSTER).expect("zfs");
    let wal_dataset = format!("{}/walvault/{CLUSTER}/wal", pool.name());

    println!("pgbench -i -s {scale}…");
    let init_secs = pgbench(
        &log,
        &pg,
        &["-i", "-s", &scale.to_string(), "-q"],
        Duration::from_secs(120 + 20 * u64::from(scale)),
    );
    archive_all(&pg);
    let pgbr = match Pgbackrest::setup(&td, pool.name(), &pg) {
        Ok(p) => Some(p),
        Err(why) => {
            println!("(pgbackrest skipped: {why})");
            None
        }
    };
    let barman = match Barman::setup(&td, pool.name(), &pg) {
        Ok(b) => Some(b),
        Err(why) => {
            println!("(barman skipped: {why})");
            None
        }
    };
    let mut bm_used = barman
        .as_ref()
        .map(|b| settled_used(&log, &b.dataset))
        .unwrap_or(0);
    let db_size: u64 = pg
        .psql("SELECT pg_database_size('postgres')")
        .parse()
        .expect("pg_database_size");
    let pgdata_size = dir_bytes(pg.data_dir(), &["pg_wal"]);
    println!(
        "database {:.1} MiB (pg_database_size), PGDATA without pg_wal {:.1} MiB, loaded in {init_secs:.1} s",
        mib(db_size),
        mib(pgdata_size)
    );

    let mut rows = Vec::new();
    let mut wv_used = settled_used(&log, &db_dataset);
    let mut br_used = pgbr
        .as_ref()
        .map(|b| settled_used(&log, &b.dataset))
        .unwrap_or(0);
    let mut pgbench_secs = 0.0;
    let mut pgdata_sizes = vec![pgdata_size];
    let mut wal_grew = 0;
    for (round, kind) in [("full", "full"), ("incremental", "incr")] {
        if kind == "incr" {
            let wal_used_before = settled_used(&log, &wal_dataset);
            println!("pgbench -n -t {txns} -c {PGBENCH_CLIENTS}…");
            pgbench_secs = pgbench(
                &log,
                &pg,
                &["-n", "-t", &txns.to_string(), "-c", PGBENCH_CLIENTS],
                Duration::from_secs(1200),
            );
            archive_all(&pg);
            wal_grew = settled_used(&log, &wal_dataset).saturating_sub(wal_used_before);
            pgdata_sizes.push(dir_bytes(pg.data_dir(), &["pg_wal"]));
        }
        let _ = Command::new("sync").status();

        println!("walvault {round} backup…");
        let cpu0 = Cpu::now(&server_pid, &zfs_pid);
        let writes0 = write_calls(server_pid.parse().unwrap_or(0)).unwrap_or(0);
        let (info, secs) = walvault_backup(&log, &agent, &pg);
        let cpu = Cpu::now(&server_pid, &zfs_pid).since(cpu0);
        let server_writes = write_calls(server_pid.parse().unwrap_or(0))
            .unwrap_or(0)
            .saturating_sub(writes0);
        let used = settled_used(&log, &db_dataset);
        rows.push(Row {
            tool: "walvault",
            kind: round,
            seconds: secs,
            bytes_read: num(&info, "bytes_read"),
            bytes_sent: Some(num(&info, "bytes_sent")),
            bytes_stored: used.saturating_sub(wv_used),
            written: num(&info, "bytes_written"),
            pgdata: *pgdata_sizes.last().expect("one size"),
            cpu,
        });
        wv_used = used;
        println!(
            "  {} {}: read {:.1} MiB, sent {:.1} MiB, written {:.1} MiB ({} blocks in {} \
             server write calls), files {} ({} changed), {} ms by its own clock, snapshot \
             {:.1} MiB, LSN {} -> {}",
            info["kind"].as_str().unwrap_or("?"),
            info["id"].as_str().unwrap_or("?"),
            mib(num(&info, "bytes_read")),
            mib(num(&info, "bytes_sent")),
            mib(num(&info, "bytes_written")),
            num(&info, "blocks_written"),
            server_writes,
            num(&info, "files"),
            num(&info, "files_changed"),
            num(&info, "duration_ms"),
            mib(num(&info, "snapshot_bytes")),
            info["start_lsn"].as_str().unwrap_or("?"),
            info["stop_lsn"].as_str().unwrap_or("?"),
        );
        // Backups generate a little WAL of their own: keep it out of the next tool's run.
        archive_all(&pg);

        if let Some(b) = &pgbr {
            println!("pgbackrest {round} backup…");
            let _ = Command::new("sync").status();
            let cpu0 = Cpu::now(&server_pid, &zfs_pid);
            let (secs, entry) = b.backup(kind);
            let cpu = Cpu::now(&server_pid, &zfs_pid).since(cpu0);
            let used = settled_used(&log, &b.dataset);
            let info = &entry["info"];
            let delta = info["delta"].as_u64().unwrap_or(0);
            rows.push(Row {
                tool: "pgbackrest",
                kind: round,
                seconds: secs,
                bytes_read: delta,
                bytes_sent: None,
                bytes_stored: used.saturating_sub(br_used),
                written: info["repository"]["delta"].as_u64().unwrap_or(0),
                pgdata: *pgdata_sizes.last().expect("one size"),
                cpu,
            });
            br_used = used;
            println!(
                "  {}: size {:.1} MiB, copied (delta) {:.1} MiB, repository size {:.1} MiB, \
                 repository delta {:.1} MiB",
                entry["label"].as_str().unwrap_or("?"),
                mib(info["size"].as_u64().unwrap_or(0)),
                mib(delta),
                mib(info["repository"]["size"].as_u64().unwrap_or(0)),
                mib(info["repository"]["delta"].as_u64().unwrap_or(0)),
            );
            archive_all(&pg);
        }

        if let (Some(b), "full") = (&barman, kind) {
            println!("barman {round} backup…");
            let _ = Command::new("sync").status();
            let cpu0 = Cpu::now(&server_pid, &zfs_pid);
            let (secs, shown) = b.backup();
            let cpu = Cpu::now(&server_pid, &zfs_pid).since(cpu0);
            let used = settled_used(&log, &b.dataset);
            let pgdata = *pgdata_sizes.last().expect("one size");
            rows.push(Row {
                tool: "barman",
                kind: round,
                seconds: secs,
                // pg_basebackup streams all of PGDATA.
                bytes_read: pgdata,
                bytes_sent: None,
                bytes_stored: used.saturating_sub(bm_used),
                written: dir_bytes(&b.home.join("pg").join("base"), &[]),
                pgdata,
                cpu,
            });
            bm_used = used;
            // The backup's own lines (the WAL section comes after its heading).
            for l in shown
                .lines()
                .take_while(|l| !l.contains("WAL information"))
                .filter(|l| {
                    ["Backup ", "Status", "Disk usage", "Compression", "Size"]
                        .iter()
                        .any(|k| l.trim_start().starts_with(k))
                })
            {
                println!("  {}", l.trim());
            }
            archive_all(&pg);
        }
    }

    // Snapshots as ZFS sees them (zfs-fuse has no `written` property, and `used` of a
    // snapshot is what later states no longer share with it: 0 for the newest).
    let snaps = run(
        &log,
        Command::new("zfs").args([
            "list",
            "-H",
            "-t",
            "snapshot",
            "-o",
            "name",
            "-r",
            &db_dataset,
        ]),
        Duration::from_secs(60),
    );
    let snaps: Vec<(String, String, String, String)> = snaps
        .stdout
        .lines()
        .map(|name| {
            (
                name.to_owned(),
                zfs_get(&log, "used", name),
                zfs_get(&log, "referenced", name),
                zfs_get(&log, "compressratio", name),
            )
        })
        .collect();
    let listed = run(
        &log,
        &mut agent.command(&["backups", "--json"]),
        Duration::from_secs(120),
    );

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "\nmachine: {cores} cores ({}), {} RAM; zfs-fuse pool on a {} GiB sparse file, \
         dataset compression {compression}",
        cpu_model(),
        meminfo_total(),
        pool_gib()
    );
    println!(
        "database: pgbench scale {scale}, pg_database_size {:.1} MiB, PGDATA (without pg_wal) \
         {:.1} MiB before the full backups, {:.1} MiB before the incrementals",
        mib(db_size),
        mib(pgdata_sizes[0]),
        mib(*pgdata_sizes.last().expect("one size")),
    );
    println!(
        "change between full and incremental: pgbench -n -t {txns} -c {PGBENCH_CLIENTS} \
         ({pgbench_secs:.1} s), CHECKPOINT; WAL archived by walvault meanwhile: dataset grew \
         {:.1} MiB",
        mib(wal_grew),
    );
    println!();
    println!(
        "{:<11} {:<12} {:>8} {:>9} {:>10} {:>9} {:>9} {:>10} {:>11} {:>17}",
        "tool",
        "kind",
        "seconds",
        "MiB read",
        "read MiB/s",
        "PGDATA/s",
        "MiB sent",
        "MiB stored",
        "MiB written",
        "CPU s tool/srv/zfs"
    );
    for r in &rows {
        println!(
            "{:<11} {:<12} {:>8.1} {:>9.1} {:>10.1} {:>9.1} {:>9} {:>10.1} {:>11.1} {:>17}",
            r.tool,
            r.kind,
            r.seconds,
            mib(r.bytes_read),
            mib(r.bytes_read) / r.seconds,
            mib(r.pgdata) / r.seconds,
            r.bytes_sent
                .map(|b| format!("{:.1}", mib(b)))
                .unwrap_or_else(|| "-".into()),
            mib(r.bytes_stored),
            mib(r.written),
            format!("{:.1}/{:.1}/{:.1}", r.cpu.tool, r.cpu.server, r.cpu.zfs),
        );
    }
    for other in ["pgbackrest", "barman"] {
        if !rows.iter().any(|r| r.tool == other) {
            continue;
        }
        println!("\nwalvault / {other}:");
        for kind in ["full", "incremental"] {
            let find = |tool: &str| rows.iter().find(|r| r.tool == tool && r.kind == kind);
            if let (Some(w), Some(b)) = (find("walvault"), find(other)) {
                println!(
                    "  {kind:<12} time {}, read {}, stored {}, CPU (tool + server + zfs-fuse) {}",
                    ratio(w.seconds, b.seconds),
                    ratio(w.bytes_read as f64, b.bytes_read as f64),
                    ratio(w.bytes_stored as f64, b.bytes_stored as f64),
                    ratio(
                        w.cpu.tool + w.cpu.server + w.cpu.zfs,
                        b.cpu.tool + b.cpu.server + b.cpu.zfs
                    ),
                );
            }
        }
    }
    println!(
        "\nMiB read: walvault's bytes_read (all of PGDATA, every time); pgbackrest's `delta` \
         (the files it copied: all for full, only files whose size or mtime changed for incr); \
         barman: PGDATA (pg_basebackup streams all of it).\n\
         PGDATA/s: PGDATA size (without pg_wal) / seconds, the same yardstick for both.\n\
         MiB stored: growth of the tool's datasets (ZFS `used`, with snapshots) over the \
         backup, after a ZFS sync.\n\
         MiB written: walvault's bytes_written (8 KiB blocks, before ZFS compression); \
         pgbackrest's repository delta (zst files); barman: its base/ directory (tar.zst).\n\
         CPU s: user + system seconds of the tool (walvault client / pgbackrest, as postgres), \
         the walvault server, and the zfs-fuse daemon, over the backup."
    );
    println!("\nwalvault snapshots: name, used, referenced, compressratio");
    for (name, used, referenced, cr) in &snaps {
        println!("  {name} {used} {referenced} {cr}");
    }
    if listed.success() {
        if let Ok(Value::Array(list)) = serde_json::from_str::<Value>(listed.stdout.trim()) {
            for b in list {
                println!(
                    "  backups --json: {} {} snapshot_bytes {} (the snapshot's `used` now)",
                    b["id"].as_str().unwrap_or("?"),
                    b["kind"].as_str().unwrap_or("?"),
                    num(&b, "snapshot_bytes")
                );
            }
        }
    }
    if let Some(b) = &pgbr {
        println!(
            "pgbackrest repository: {:.1} MiB of files under {}",
            mib(dir_bytes(&b.repo.join("backup"), &[])),
            b.repo.join("backup").display()
        );
    }
    if barman.is_some() {
        println!("\nbarman incremental: none. {BARMAN}");
    }
    drop(pg);
}
