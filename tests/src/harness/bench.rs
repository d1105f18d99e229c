//! Small pieces the benchmark binaries share: sizes, timed commands, pgbench with a
//! deadline, and the machine facts a report names.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::{run, Log, Pg, Run, PG_USER};

const MIB: f64 = (1u64 << 20) as f64;

/// Bytes in MiB.
pub fn mib(b: u64) -> f64 {
    b as f64 / MIB
}

/// Bytes of the regular files under `dir`, skipping paths that end with one of `skip`.
pub fn dir_bytes(dir: &Path, skip: &[&str]) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if skip.iter().any(|s| p.ends_with(s)) {
            continue;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() => total += dir_bytes(&p, skip),
            Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => {}
        }
    }
    total
}

/// Runs a command, panicking with its output unless it exits 0 within `timeout`; returns the
/// run and its wall-clock time.
pub fn timed(log: &Log, cmd: &mut Command, timeout: Duration) -> (Run, f64) {
    let start = Instant::now();
    let r = run(log, cmd, timeout);
    let secs = start.elapsed().as_secs_f64();
    assert!(r.success(), "{}", r.describe());
    (r, secs)
}

/// `pgbench <args>` as postgres, with a deadline that suits the work (the harness's own is
/// three minutes).
pub fn pgbench(log: &Log, pg: &Pg, args: &[&str], timeout: Duration) -> f64 {
    let mut c = Command::new("runuser");
    c.args(["-u", PG_USER, "--"])
        .arg("/usr/lib/postgresql/15/bin/pgbench")
        .args(["-h", &pg.socket_dir(), "-p", &pg.port().to_string()])
        .args(["-U", "postgres"])
        .args(args)
        .arg("postgres")
        .current_dir("/");
    timed(log, &mut c, timeout).1
}

/// The machine's memory, for reports.
pub fn meminfo_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb as f64 / (1u64 << 20) as f64))
        .unwrap_or_else(|| "?".into())
}

/// The CPU model, for reports.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_else(|| "?".into())
}
