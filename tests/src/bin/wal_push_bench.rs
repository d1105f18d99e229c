//! Benchmark of `walvault wal-push` on real 16 MiB WAL segments, as PostgreSQL runs it: one
//! process per segment, timed from start to exit, against the real server on a zfs-fuse
//! pool over mutual TLS. Compares zstd on the wire with no compression and, when Debian's
//! `pgbackrest` is installed, `pgbackrest archive-push` into a repository on the same pool.
//! Then a backlog drain as PostgreSQL's archiver makes it (all segments `.ready`, one call per
//! segment, oldest first): walvault with look-ahead (`push_ahead = 8`, 3 at once) against
//! `pgbackrest archive-push --archive-async` (two processes), each into a fresh archive.
//! Then a fleet: [`FLEET`] clusters in [`FLEET_TENANTS`] tenants (stanzas of one pgbackrest
//! repository) each pushing [`FLEET_SEGMENTS`] segments one after the other, all at once,
//! after a first segment each pushed the same way but not counted (walvault binds a cluster
//! to its database system on its first segment, three `zfs set`s, as pgbackrest's
//! `stanza-create` does beforehand); seg/s over the whole, latency percentiles, and the
//! server's RSS at its peak and after the fleet has been idle for [`IDLE`].
//!
//! Run as root: `cargo build --release --workspace && cargo run --release -p walvault-tests
//! --bin wal-push-bench [SEGMENTS [fleet]]` (default 40; `fleet` runs only the fleet; the fleet, three interleaved rounds, needs a pool of 4 GiB or
//! more, `WALVAULT_TEST_POOL_GIB=4`, and is skipped on a smaller one). Bounded: it stops by itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use walvault_tests::harness::bench::{pgbackrest_conf, rss_kib};
use walvault_tests::harness::wal::local_archive_conf;
use walvault_tests::harness::{
    chmod, chown_postgres, e2e_ready, pool_gib, Client, Pg, Storage, TestDir, Walvault, PG_USER,
};

/// walvault's look-ahead in the drain: segments pushed ahead per call, and at once.
const AHEAD: u32 = 8;
const PARALLEL: u32 = 3;
/// The fleet: clusters pushing at once, the tenants they belong to, segments each.
const FLEET: usize = 20;
const FLEET_TENANTS: usize = 4;
const FLEET_SEGMENTS: usize = 5;
/// How long the fleet is left idle before the server's RSS is read again.
const IDLE: Duration = Duration::from_secs(10);

struct Figures {
    label: String,
    times: Vec<Duration>,
    bytes_in: u64,
    bytes_stored: u64,
}

impl Figures {
    fn print(&self) {
        let mut t = self.times.clone();
        t.sort();
        let total: Duration = t.iter().sum();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let n = t.len().max(1);
        println!(
            "{:<28} {:>4} {:>9.1} {:>9.1} {:>9.1} {:>8.2} {:>9.1} {:>8.1}x",
            self.label,
            t.len(),
            ms(total) / n as f64,
            ms(t[n / 2]),
            ms(t[(n * 95 / 100).min(n - 1)]),
            n as f64 / total.as_secs_f64(),
            self.bytes_in as f64 / (1 << 20) as f64 / total.as_secs_f64(),
            self.bytes_in as f64 / self.bytes_stored.max(1) as f64,
        );
    }
}

/// Real, full segments from a PostgreSQL 15 cluster under pgbench (no forced switches, so
/// every segment is filled by real records), copied out by a plain archive_command.
fn make_segments(td: &TestDir, n: usize) -> (Pg, Vec<PathBuf>) {
    let archive = td.mkdir_postgres("segments");
    let mut pg = Pg::init(td, "src", &local_archive_conf(&archive));
    pg.start();
    pg.pgbench(&["-i", "-s", "10", "-q"]);
    let segments = |dir: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|f| f.len() == 24))
            .collect();
        v.sort();
        v
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    while segments(&archive).len() < n && Instant::now() < deadline {
        pg.pgbench(&["-t", "5000", "-c", "2"]);
    }
    let mut all = segments(&archive);
    assert!(
        all.len() >= n,
        "only {} segments after 10 minutes of pgbench",
        all.len()
    );
    all.truncate(n);
    (pg, all)
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        total += if p.is_dir() { dir_bytes(&p) } else { size(&p) };
    }
    total
}

fn time_pushes(
    label: &str,
    segments: &[PathBuf],
    mut cmd: impl FnMut(&Path) -> Command,
) -> Vec<Duration> {
    let mut times = Vec::new();
    for s in segments {
        let start = Instant::now();
        let out = cmd(s).output().expect("start the push");
        times.push(start.elapsed());
        if !out.status.success() {
            panic!(
                "{label}: push of {} failed: {}",
                s.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    times
}

/// A backlog drained as PostgreSQL's archiver drains it: every segment sits in a `pg_wal`
/// of its own with an `archive_status/<name>.ready`; one process per segment, oldest first,
/// and `.ready` becomes `.done` after each success.
fn drain(
    td: &TestDir,
    label: &str,
    segments: &[PathBuf],
    mut cmd: impl FnMut(&Path) -> Command,
) -> Vec<Duration> {
    let pg_wal = td.mkdir_postgres(format!("drain-{label}/pg_wal"));
    let status = pg_wal.join("archive_status");
    std::fs::create_dir_all(&status).expect("archive_status");
    chown_postgres(&status);
    let mut copies = Vec::new();
    for s in segments {
        let name = s.file_name().expect("segment name");
        let copy = pg_wal.join(name);
        std::fs::copy(s, &copy).expect("copy a segment");
        chown_postgres(&copy);
        let ready = status.join(format!("{}.ready", name.to_string_lossy()));
        std::fs::write(&ready, b"").expect("write .ready");
        chown_postgres(&ready);
        copies.push(copy);
    }
    let mut times = Vec::new();
    for c in &copies {
        let ready = status.join(format!(
            "{}.ready",
            c.file_name().expect("name").to_string_lossy()
        ));
        times.extend(time_pushes(label, std::slice::from_ref(c), &mut cmd));
        std::fs::rename(&ready, ready.with_extension("done")).expect("mark .done");
    }
    times
}

fn walvault_ahead(wv: &Walvault, td: &TestDir, storage: &Storage, segments: &[PathBuf]) -> Figures {
    let cluster = "bench/ahead";
    wv.cluster_create(cluster);
    let agent = wv.agent_with(cluster, "zstd").as_user(None);
    let mut config = std::fs::read_to_string(agent.config()).expect("agent config");
    config.push_str(&format!(
        "push_ahead = {AHEAD}\npush_parallel = {PARALLEL}\n"
    ));
    std::fs::write(agent.config(), config).expect("write agent config");
    let times = drain(td, "walvault", segments, |s| {
        agent.command(&["wal-push", &s.to_string_lossy()])
    });
    Figures {
        label: format!("walvault drain, ahead {AHEAD}"),
        times,
        bytes_in: segments.iter().map(|s| size(s)).sum(),
        bytes_stored: dir_bytes(&storage.wal_dir(cluster)),
    }
}

fn walvault(wv: &Walvault, storage: &Storage, segments: &[PathBuf], compression: &str) -> Figures {
    let cluster = format!("bench/{compression}");
    wv.cluster_create(&cluster);
    let agent: Client = wv.agent_with(&cluster, compression).as_user(None);
    let times = time_pushes(&cluster, segments, |s| {
        agent.command(&["wal-push", &s.to_string_lossy()])
    });
    Figures {
        label: format!("walvault wal-push ({compression})"),
        times,
        bytes_in: segments.iter().map(|s| size(s)).sum(),
        bytes_stored: dir_bytes(&storage.wal_dir(&cluster)),
    }
}

/// pgbackrest 2.45 from Debian, archive-push into a repository on the same pool, zstd level 1
/// like walvault's client.
/// pgbackrest's rows: `archive-push` one segment at a time, then a drain with
/// `--archive-async` (its spool and two processes) into a second repository.
fn pgbackrest(td: &TestDir, storage: &Storage, pg: &Pg, segments: &[PathBuf]) -> Vec<Figures> {
    let mut rows = Vec::new();
    rows.extend(pgbackrest_with(td, storage, pg, segments, false));
    // A failing peer must not cost the rows already measured.
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pgbackrest_with(td, storage, pg, segments, true)
    })) {
        Ok(row) => rows.extend(row),
        Err(_) => println!("(pgbackrest --archive-async drain failed: see above)"),
    }
    rows
}

fn pgbackrest_with(
    td: &TestDir,
    storage: &Storage,
    pg: &Pg,
    segments: &[PathBuf],
    asynchronous: bool,
) -> Option<Figures> {
    if Command::new("pgbackrest").arg("version").output().is_err() {
        println!("(pgbackrest not installed: apt-get install pgbackrest to compare)");
        return None;
    }
    let name = if asynchronous {
        "pgbackrest-async"
    } else {
        "pgbackrest"
    };
    let repo = match storage {
        Storage::Zfs(pool) => pool.create_dataset(name),
        Storage::Dir(_) => td.mkdir(name),
    };
    chown_postgres(&repo);
    let conf = pgbackrest_conf(td, &repo, pg).expect("pgbackrest.conf");
    let pgbr = |args: &[&str]| {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_USER, "--", "pgbackrest"])
            .arg(format!("--config={}", conf.display()))
            .arg("--stanza=bench")
            .args(args);
        c
    };
    let out = pgbr(&["stanza-create"]).output().expect("run pgbackrest");
    if !out.status.success() {
        println!(
            "(pgbackrest stanza-create failed: {})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let times = if asynchronous {
        // pgbackrest wants the WAL inside pg1-path, with the cluster's pg_control.
        let base = td.join("drain-pgbackrest");
        let global = td.mkdir_postgres("drain-pgbackrest/global");
        std::fs::copy(
            pg.data_dir().join("global/pg_control"),
            global.join("pg_control"),
        )
        .expect("copy pg_control");
        chown_postgres(&global.join("pg_control"));
        let pg1 = format!("--pg1-path={}", base.display());
        drain(td, "pgbackrest", segments, |s| {
            let mut c = pgbr(&[&pg1, "--archive-async", "--process-max=2", "archive-push"]);
            c.arg(s);
            c
        })
    } else {
        time_pushes("pgbackrest", segments, |s| {
            let mut c = pgbr(&["archive-push"]);
            c.arg(s);
            c
        })
    };
    Some(Figures {
        label: if asynchronous {
            "pgbackrest drain, async".into()
        } else {
            "pgbackrest archive-push (zst)".into()
        },
        times,
        bytes_in: segments.iter().map(|s| size(s)).sum(),
        bytes_stored: dir_bytes(&repo.join("archive")),
    })
}

/// Runs `FLEET` pushers at once, each its segments in order; every push's latency. A failed
/// push panics with its output.
fn fleet_run(
    label: &str,
    segments: &[PathBuf],
    cmd: impl Fn(usize, &Path) -> Command + Sync,
) -> (Vec<Duration>, Duration) {
    let start = Instant::now();
    let times = std::thread::scope(|s| {
        let handles: Vec<_> = (0..FLEET)
            .map(|i| {
                let cmd = &cmd;
                s.spawn(move || time_pushes(&format!("{label} {i}"), segments, |p| cmd(i, p)))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a pusher panicked"))
            .collect::<Vec<_>>()
    });
    (times, start.elapsed())
}

struct FleetRow {
    label: String,
    times: Vec<Duration>,
    wall: Duration,
    /// The untimed first segments' wall time.
    first: Duration,
    /// Server RSS in MiB before, at the peak, after `IDLE`.
    rss: Option<(u64, u64, u64)>,
}

impl FleetRow {
    fn rate(&self) -> f64 {
        self.times.len() as f64 / self.wall.as_secs_f64()
    }

    /// The `p`th percentile of the push times, in ms.
    fn percentile(&self, p: usize) -> f64 {
        let mut t = self.times.clone();
        t.sort();
        let n = t.len().max(1);
        t.get((n * p / 100).min(n - 1))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    }

    fn print(&self) {
        let rss = self
            .rss
            .map_or_else(|| "-".to_owned(), |(b, p, a)| format!("{b} / {p} / {a}"));
        println!(
            "{:<28} {:>4} {:>8.2} {:>9.1} {:>9.1} {:>9.1} {:>9.2}   {rss}",
            self.label,
            self.times.len(),
            self.rate(),
            self.percentile(50),
            self.percentile(95),
            self.percentile(99),
            self.first.as_secs_f64(),
        );
    }
}

/// Peak VmRSS (MiB) of `pid` sampled every 50 ms until `done`.
fn sample_rss(pid: u32, done: &std::sync::atomic::AtomicBool) -> u64 {
    let mut peak = 0;
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        peak = peak.max(rss_kib(pid).0 >> 10);
        std::thread::sleep(Duration::from_millis(50));
    }
    peak.max(rss_kib(pid).0 >> 10)
}

fn walvault_fleet(wv: &Walvault, round: usize, segments: &[PathBuf]) -> FleetRow {
    let agents: Vec<Client> = (0..FLEET)
        .map(|i| {
            let tenant = format!("fleet{round}x{}", i % FLEET_TENANTS);
            if i < FLEET_TENANTS {
                wv.tenant_create(&tenant, None);
            }
            let cluster = format!("{tenant}/db{i}");
            wv.cluster_create(&cluster);
            wv.agent_with(&cluster, "zstd").as_user(None)
        })
        .collect();
    let (warm, segments) = segments.split_at(1);
    let (_, first) = fleet_run("walvault first", warm, |i, p| {
        agents[i].command(&["wal-push", &p.to_string_lossy()])
    });
    let pid = wv.server.pid().expect("the server runs");
    let before = rss_kib(pid).0 >> 10;
    let done = std::sync::atomic::AtomicBool::new(false);
    let (times, wall, peak) = std::thread::scope(|s| {
        let sampler = s.spawn(|| sample_rss(pid, &done));
        let (times, wall) = fleet_run("walvault", segments, |i, p| {
            agents[i].command(&["wal-push", &p.to_string_lossy()])
        });
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        (times, wall, sampler.join().expect("sampler"))
    });
    std::thread::sleep(IDLE);
    let after = rss_kib(pid).0 >> 10;
    FleetRow {
        label: format!("walvault, {FLEET} clusters"),
        times,
        wall,
        first,
        rss: Some((before, peak, after)),
    }
}

/// pgbackrest: one repository, a stanza per cluster (all of the same PostgreSQL, whose
/// segments these are), `archive-push` synchronous as PostgreSQL would call it.
fn pgbackrest_fleet(
    td: &TestDir,
    storage: &Storage,
    pg: &Pg,
    round: usize,
    segments: &[PathBuf],
) -> Option<FleetRow> {
    if Command::new("pgbackrest").arg("version").output().is_err() {
        return None;
    }
    let repo = match storage {
        Storage::Zfs(pool) => pool.create_dataset(&format!("pgbackrest-fleet{round}")),
        Storage::Dir(_) => td.mkdir(format!("pgbackrest-fleet{round}")),
    };
    chown_postgres(&repo);
    let locks = td.mkdir_postgres(format!("pgbackrest-fleet{round}-locks"));
    let mut text = format!(
        "[global]\nrepo1-path={}\ncompress-type=zst\ncompress-level=1\narchive-check=n\n\
         log-level-console=warn\nlog-level-file=off\nlock-path={}\nspool-path={}\n",
        repo.display(),
        locks.display(),
        locks.display()
    );
    for i in 0..FLEET {
        text.push_str(&format!(
            "\n[s{i}]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user=postgres\n",
            pg.data_dir().display(),
            pg.port(),
            pg.socket_dir()
        ));
    }
    let conf = td.join(format!("pgbackrest-fleet{round}.conf"));
    std::fs::write(&conf, text).expect("write pgbackrest-fleet.conf");
    chmod(&conf, 0o644);
    let pgbr = |stanza: usize| {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_USER, "--", "pgbackrest"])
            .arg(format!("--config={}", conf.display()))
            .arg(format!("--stanza=s{stanza}"));
        c
    };
    for i in 0..FLEET {
        let out = pgbr(i)
            .arg("stanza-create")
            .output()
            .expect("run pgbackrest");
        if !out.status.success() {
            println!(
                "(pgbackrest stanza-create s{i} failed: {})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
    }
    let push = |i: usize, p: &Path| {
        let mut c = pgbr(i);
        c.arg("archive-push").arg(p);
        c
    };
    let (warm, segments) = segments.split_at(1);
    let (_, first) = fleet_run("pgbackrest first", warm, push);
    let (times, wall) = fleet_run("pgbackrest", segments, push);
    Some(FleetRow {
        label: format!("pgbackrest, {FLEET} stanzas"),
        times,
        wall,
        first,
        rss: None,
    })
}

fn fleet(wv: &Walvault, td: &TestDir, storage: &Storage, pg: &Pg, segments: &[PathBuf]) {
    let segments = &segments[..(FLEET_SEGMENTS + 1).min(segments.len())];
    if segments.len() < 2 {
        println!("\n(fleet skipped: it needs 2 segments or more)");
        return;
    }
    if matches!(storage, Storage::Zfs(_)) && pool_gib() < 4 {
        println!(
            "\n(fleet skipped: {FLEET} x {} segments x 3 rounds need a pool of 4 GiB or more; set \
             WALVAULT_TEST_POOL_GIB=4)",
            segments.len()
        );
        return;
    }
    // Interleaved rounds, fresh clusters and stanzas each time.
    let mut rows = Vec::new();
    for round in 0..3 {
        rows.push(walvault_fleet(wv, round, segments));
        rows.extend(pgbackrest_fleet(td, storage, pg, round, segments));
    }
    println!(
        "\nfleet: {FLEET} clusters in {FLEET_TENANTS} tenants, {} segments each, all at once, \
         after a first one each (its wall time: `first s`)",
        segments.len() - 1
    );
    println!(
        "{:<28} {:>4} {:>8} {:>9} {:>9} {:>9} {:>9}   server RSS MiB: before / peak / after {}s idle",
        "",
        "n",
        "seg/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "first s",
        IDLE.as_secs()
    );
    for r in &rows {
        r.print();
    }
    let median = |tool: &str, f: &dyn Fn(&FleetRow) -> f64| {
        let mut v: Vec<f64> = rows
            .iter()
            .filter(|r| r.label.starts_with(tool))
            .map(f)
            .collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    let rate = FleetRow::rate;
    let p99 = |r: &FleetRow| r.percentile(99);
    if let (Some(w), Some(b), Some(wp), Some(bp)) = (
        median("walvault", &rate),
        median("pgbackrest", &rate),
        median("walvault", &p99),
        median("pgbackrest", &p99),
    ) {
        println!(
            "medians of 3: walvault {w:.2} seg/s (p99 {wp:.0} ms), pgbackrest {b:.2} seg/s \
             (p99 {bp:.0} ms): {:.2}x the seg/s (goal >= 1.5), p99 {:.2}x (goal <= 1)",
            w / b,
            wp / bp
        );
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(40)
        .clamp(1, 200);
    let only_fleet = std::env::args().nth(2).as_deref() == Some("fleet");
    if !e2e_ready() {
        std::process::exit(1);
    }
    let td = TestDir::new("wal-push-bench");
    let Some(storage) = Storage::create(&td) else {
        std::process::exit(1)
    };
    let wv = Walvault::start(&td, &storage);
    wv.tenant_create("bench", None);
    println!("generating {n} real WAL segments with pgbench…");
    let (pg, segments) = make_segments(&td, n);
    if only_fleet {
        fleet(&wv, &td, &storage, &pg, &segments);
        keep_server_log(&td);
        return;
    }

    let mut rows = vec![
        walvault(&wv, &storage, &segments, "zstd"),
        walvault(&wv, &storage, &segments, "none"),
        walvault_ahead(&wv, &td, &storage, &segments),
    ];
    rows.extend(pgbackrest(&td, &storage, &pg, &segments));

    println!(
        "\n{n} segments of 16 MiB, one process per push (drains: per call of the archiver), on {} ({} cores)",
        match &storage {
            Storage::Zfs(_) => "a zfs-fuse pool on a sparse file",
            Storage::Dir(_) => "plain directories",
        },
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<28} {:>4} {:>9} {:>9} {:>9} {:>8} {:>9} {:>9}",
        "", "n", "mean ms", "p50 ms", "p95 ms", "seg/s", "MiB/s", "stored"
    );
    for r in &rows {
        r.print();
    }
    fleet(&wv, &td, &storage, &pg, &segments);
    keep_server_log(&td);
    drop(pg);
}

/// Kept for a look at the server's own timings (WALVAULT_LOG=walvault_server::wal=debug).
fn keep_server_log(td: &TestDir) {
    let kept = std::env::temp_dir().join("wal-push-bench-server.log");
    if std::fs::copy(td.join("server.log"), &kept).is_ok() {
        println!("server log: {}", kept.display());
    }
}
