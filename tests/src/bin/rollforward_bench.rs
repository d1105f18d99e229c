//! Benchmark of roll-forward and verification across a small fleet (issue 11: "choose between
//! a job that starts, replays and stops and a long-running standby per cluster with evidence:
//! memory and CPU per cluster at fleet size, time to fresh snapshot"; "the time from a
//! snapshot to its receipt").
//!
//! One server on a zfs-fuse pool, N clusters, each a PostgreSQL 15 source (`pgbench -i -s
//! SCALE`) archiving to it, one base backup each; the server rolls forward after every MiB of
//! WAL and verifies every snapshot. Then ROUNDS rounds: `pgbench -n -t TXNS` on every source in
//! turn, each archived at once, and for each cluster the time from its archive holding the WAL
//! to a roll-forward snapshot past it ("time to fresh snapshot"), and from that snapshot to
//! its verification receipt. A sampler reads /proc every 200 ms: CPU time and the summed PSS
//! of the PostgreSQL instances the server starts (roll-forward standbys and verification
//! clones, told apart by their data directory), of the server, and of the zfs-fuse daemon.
//! Last, the other design: one long-running standby (restore_command through `walvault
//! wal-fetch`, polling the archive every 5 s as PostgreSQL does by default) is left idle for
//! a minute and its memory and CPU measured; a standby per cluster pays that all the time.
//!
//! Run as root: `cargo build --release --workspace && cargo run --release -p walvault-tests
//! --bin rollforward-bench [N] [SCALE] [ROUNDS] [TXNS]` (default `4 2 3 3000`). Bounded: every
//! wait has a deadline, and everything it starts is removed on the way out.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walvault_proto::Lsn;
use walvault_tests::harness::backup::{backup_ok, list_backups, BackupInfo};
use walvault_tests::harness::bench::{cpu_model, meminfo_total, rss_kib};
use walvault_tests::harness::restore::{archive_now, Lab};
use walvault_tests::harness::{wait_until, wal::archive_conf, Client, Pg};

const CONFIG: &str = "[rollforward]\ninterval_secs = 1\nevery_minutes = 0\nevery_mib = 1\n\
                      [verify]\nsnapshots_interval_secs = 1\n";
const TICKS_PER_SEC: f64 = 100.0;

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

/// What one process looks like in /proc: parent, CPU ticks (its own, and its waited-for
/// children's), PSS in KiB, and its command line.
struct ProcInfo {
    ppid: u32,
    own_ticks: u64,
    child_ticks: u64,
    pss_kib: u64,
    cmdline: String,
}

fn proc_info(pid: u32) -> Option<ProcInfo> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the command: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
    let num = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok());
    let pss_kib = fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default();
    Some(ProcInfo {
        ppid: num(1)? as u32,
        own_ticks: num(11)? + num(12)?,
        child_ticks: num(13)? + num(14)?,
        pss_kib,
        cmdline,
    })
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// What the sampler found, per kind of process.
#[derive(Default, Debug)]
struct Usage {
    /// pid → the most CPU ticks seen (a process's own; a child of a postmaster also its
    /// waited-for children's, such as the startup process's restore_command runs).
    ticks: HashMap<u32, u64>,
    /// pid → its ticks at the first look, for processes older than the sampling.
    before: HashMap<u32, u64>,
    peak_pss_kib: u64,
}

impl Usage {
    /// CPU time spent while sampling.
    fn cpu_secs(&self) -> f64 {
        self.ticks
            .iter()
            .map(|(pid, t)| t - self.before.get(pid).copied().unwrap_or(0))
            .sum::<u64>() as f64
            / TICKS_PER_SEC
    }
}

/// Samples /proc until `stop`: the instances whose data directory contains one of `kinds`'
/// markers (postmaster and children), and the processes in `pids` by name.
fn sample(
    kinds: Vec<(&'static str, String)>,
    pids: Vec<(&'static str, u32)>,
    stop: Arc<AtomicBool>,
) -> BTreeMap<&'static str, Usage> {
    let mut out: BTreeMap<&'static str, Usage> = BTreeMap::new();
    let mut first = true;
    while !stop.load(Ordering::SeqCst) {
        let infos: HashMap<u32, ProcInfo> = all_pids()
            .into_iter()
            .filter_map(|p| Some((p, proc_info(p)?)))
            .collect();
        let mut pss: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut postmasters: HashMap<u32, &'static str> = HashMap::new();
        for (pid, info) in &infos {
            if !info.cmdline.contains("/bin/postgres ") {
                continue;
            }
            if let Some((kind, _)) = kinds
                .iter()
                .find(|(_, m)| info.cmdline.contains(m.as_str()))
            {
                postmasters.insert(*pid, kind);
            }
        }
        for (pid, info) in &infos {
            let (kind, ticks) = if let Some(kind) = postmasters.get(pid) {
                // Its children's time is counted with each child while it lives.
                (*kind, info.own_ticks)
            } else if let Some(kind) = postmasters.get(&info.ppid) {
                (*kind, info.own_ticks + info.child_ticks)
            } else if let Some((kind, _)) = pids.iter().find(|(_, p)| p == pid) {
                (*kind, info.own_ticks + info.child_ticks)
            } else {
                continue;
            };
            let u = out.entry(kind).or_default();
            if first {
                u.before.insert(*pid, ticks);
            }
            let t = u.ticks.entry(*pid).or_insert(0);
            *t = (*t).max(ticks);
            *pss.entry(kind).or_insert(0) += info.pss_kib;
        }
        for (kind, kib) in pss {
            let u = out.entry(kind).or_default();
            u.peak_pss_kib = u.peak_pss_kib.max(kib);
        }
        first = false;
        std::thread::sleep(Duration::from_millis(200));
    }
    out
}

struct Source<'a> {
    name: String,
    pg: &'a Pg,
    agent: &'a Client,
    backup: BackupInfo,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (n, scale, rounds, txns) = (arg(0, 4), arg(1, 2), arg(2, 3), arg(3, 3000));
    println!(
        "rollforward-bench: {n} clusters at pgbench scale {scale}, {rounds} rounds of {txns} \
         transactions each; {}, {}",
        cpu_model(),
        meminfo_total()
    );
    let Some(lab) = Lab::start_with("rf-bench", Some(scale as u32), CONFIG) else {
        std::process::exit(1)
    };
    let td = lab.td();
    let server_pid = lab.d.wv.server.pid().expect("the server runs");
    let zfs_fuse = all_pids().into_iter().find(|p| {
        proc_info(*p).is_some_and(|i| {
            i.cmdline
                .split_whitespace()
                .next()
                .is_some_and(|prog| prog.ends_with("zfs-fuse"))
        })
    });

    let mut others = Vec::new();
    for i in 2..=n {
        let name = format!("acme/db{i}");
        lab.d.wv.cluster_create(&name);
        let agent = lab.d.wv.agent(&name);
        let mut pg = Pg::init(td, &format!("primary{i}"), &archive_conf(&agent));
        pg.start();
        pg.pgbench(&["-i", "-s", &scale.to_string(), "-q"]);
        others.push((name, pg, agent));
    }
    let mut sources = vec![Source {
        name: "acme/db1".into(),
        backup: backup_ok(&lab.d.agent, &lab.d.primary, &["--quiet"]),
        pg: &lab.d.primary,
        agent: &lab.d.agent,
    }];
    for (name, pg, agent) in &others {
        sources.push(Source {
            name: name.clone(),
            backup: backup_ok(agent, pg, &["--quiet"]),
            pg,
            agent,
        });
    }
    let deadline = Duration::from_secs(600);
    let backups_of = |s: &Source| list_backups(&lab.operator, Some(&s.name));
    for s in &sources {
        wait_until(
            &format!("backup {} of {} verified", s.backup.id, s.name),
            deadline,
            || {
                backups_of(s)
                    .into_iter()
                    .find(|b| b.id == s.backup.id && b.verification != "pending")
            },
        );
    }
    println!("{n} backups taken and verified; rounds start");

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let mut pids = vec![("server", server_pid)];
        if let Some(z) = zfs_fuse {
            pids.push(("zfs-fuse", z));
        }
        let kinds = vec![
            ("roll-forward", "/rollforward/".to_owned()),
            ("verification", "/verify/".to_owned()),
        ];
        std::thread::spawn(move || sample(kinds, pids, stop))
    };
    let started = Instant::now();
    let (mut fresh, mut receipt, mut job_ms, mut verify_ms, mut first_query_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut snapshots = 0usize;
    for round in 1..=rounds {
        let mut archived: Vec<(Lsn, f64)> = Vec::new();
        for s in &sources {
            s.pg.pgbench(&["-n", "-t", &txns.to_string()]);
            let lsn = s.pg.current_lsn();
            archive_now(s.pg);
            archived.push((lsn, unix_now()));
        }
        let mut pending: Vec<usize> = (0..sources.len()).collect();
        // A snapshot's record is stamped when it is taken (whole seconds): the times below
        // are from that stamp, not from when this loop happened to look.
        let mut appeared: HashMap<usize, BackupInfo> = HashMap::new();
        let until = Instant::now() + deadline;
        while !pending.is_empty() {
            assert!(
                Instant::now() < until,
                "round {round}: no snapshot or receipt in time"
            );
            pending.retain(|&i| {
                let s = &sources[i];
                let list = backups_of(s);
                if let Some(rf) = appeared.get(&i) {
                    match list
                        .iter()
                        .find(|b| b.id == rf.id && b.verification != "pending")
                    {
                        Some(b) => {
                            receipt.push(unix_now() - rf.stop_unix.unwrap_or_default() as f64);
                            let r = b.receipt.as_ref().expect("a receipt");
                            assert!(r.verified, "{} failed verification: {r:?}", b.id);
                            verify_ms.push(r.duration_ms as f64);
                            first_query_ms.push(r.first_query_ms as f64);
                            false
                        }
                        None => true,
                    }
                } else {
                    let (lsn, at) = archived[i];
                    if let Some(rf) = list.into_iter().find(|b| {
                        b.kind == "rollforward"
                            && b.base.as_deref() == Some(&s.backup.id)
                            && b.stop() >= lsn
                    }) {
                        fresh.push(rf.stop_unix.unwrap_or_default() as f64 - at);
                        job_ms.push(rf.duration_ms as f64);
                        snapshots += 1;
                        appeared.insert(i, rf);
                    }
                    true
                }
            });
            std::thread::sleep(Duration::from_secs(1));
        }
        println!(
            "round {round} done after {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    let busy = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let usage = sampler.join().expect("the sampler");
    let all_rf = sources
        .iter()
        .map(|s| {
            backups_of(s)
                .iter()
                .filter(|b| b.kind == "rollforward")
                .count()
        })
        .sum::<usize>();

    // The other design: one standby left running, idle, polling the archive.
    let first = &sources[0];
    let mut standby = Pg::basebackup(
        td,
        "idle-standby",
        first.pg,
        &[
            "archive_mode = off".to_owned(),
            format!(
                "restore_command = '{}'",
                first.agent.shell_command("wal-fetch %f %p")
            ),
            "primary_conninfo = ''".to_owned(),
            "hot_standby = on".to_owned(),
        ],
        true,
    );
    standby.start();
    std::thread::sleep(Duration::from_secs(10));
    let marker = standby.data_dir().display().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let idle_sampler = {
        let stop = stop.clone();
        let kinds = vec![("standby", format!("-D {marker}"))];
        std::thread::spawn(move || sample(kinds, vec![("server", server_pid)], stop))
    };
    let idle_secs = 60.0;
    std::thread::sleep(Duration::from_secs_f64(idle_secs));
    stop.store(true, Ordering::SeqCst);
    let idle = idle_sampler.join().expect("the idle sampler");
    standby.stop();

    let (_, server_hwm) = rss_kib(server_pid);
    let kib = |k: &str| usage.get(k).map_or(0, |u| u.peak_pss_kib) as f64 / 1024.0;
    let cpu = |k: &str| usage.get(k).map_or(0.0, Usage::cpu_secs);
    println!("\n## rollforward-bench: {n} clusters, scale {scale}, {rounds} rounds");
    println!("wall time of the rounds: {busy:.0} s; roll-forward snapshots: {all_rf} in all, {snapshots} awaited");
    println!(
        "time to fresh snapshot (archived → snapshot taken, ±1 s): median {:.1} s, max {:.1} s",
        median(fresh.clone()),
        max(&fresh)
    );
    println!(
        "time from snapshot to receipt (seen, polled each second): median {:.1} s, max {:.1} s (verification itself: median {:.1} s, first query after {:.1} s)",
        median(receipt.clone()),
        max(&receipt),
        median(verify_ms.clone()) / 1000.0,
        median(first_query_ms.clone()) / 1000.0
    );
    println!(
        "roll-forward job: median {:.1} s",
        median(job_ms.clone()) / 1000.0
    );
    println!(
        "roll-forward instances: {:.1} CPU-s in all, {:.2} CPU-s per snapshot; peak PSS {:.0} MiB (one job at a time)",
        cpu("roll-forward"),
        cpu("roll-forward") / all_rf.max(1) as f64,
        kib("roll-forward")
    );
    println!(
        "verification instances: {:.1} CPU-s in all; peak PSS {:.0} MiB",
        cpu("verification"),
        kib("verification")
    );
    println!(
        "server: {:.1} CPU-s (with its children), peak RSS {:.0} MiB; zfs-fuse daemon: {:.1} CPU-s",
        cpu("server"),
        server_hwm as f64 / 1024.0,
        cpu("zfs-fuse")
    );
    let st = idle.get("standby");
    println!(
        "one idle standby polling the archive for {idle_secs:.0} s: PSS {:.0} MiB, {:.2} CPU-s \
         (its restore_command runs included), the server {:.2} CPU-s answering it",
        st.map_or(0, |u| u.peak_pss_kib) as f64 / 1024.0,
        st.map_or(0.0, Usage::cpu_secs),
        idle.get("server").map_or(0.0, Usage::cpu_secs),
    );
    drop(sources);
    drop(others);
    drop(lab);
}
