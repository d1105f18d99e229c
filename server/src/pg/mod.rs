//! Running PostgreSQL on the server (DESIGN §3, §8): the binaries of the right major version,
//! a restored clone prepared to start here ([`prepare`]), and an [`Instance`] started on it,
//! watched until recovery pauses, promotes or shuts down, then stopped.
//!
//! Invariants:
//! - PostgreSQL never runs as root. When the server is root, `pg_ctl` and `psql` run through
//!   `runuser -u <pg_user>`; otherwise directly, and then `pg_user` must be the server's user.
//! - Every program runs through [`crate::process`], so failures carry argv, status and stderr.
//! - The server talks to an instance only over a private socket directory (0700, owned by the
//!   OS user); that is what makes the `local all all trust` rule [`prepare`] adds safe.
//! - A `postmaster.pid` counts as live only when its process exists, is not a zombie, and works
//!   in that data directory: a clone carries the pid of a process on the source host.

pub(crate) mod conf;
pub mod control;
mod instance;
pub mod localwal;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::backup::files::Owner;
use crate::process::{self, ProcessError};

pub use conf::prepare;
pub use instance::{Goal, Instance, InstanceSpec, Reached};

/// Programs [`PgBinaries::locate`] requires.
const REQUIRED_PROGRAMS: [&str; 3] = ["pg_ctl", "postgres", "psql"];

/// How long `pg_ctl stop -m fast` may take before the immediate mode is used.
const STOP_FAST_SECS: u32 = 60;
/// How long `pg_ctl stop -m immediate` may take.
const STOP_IMMEDIATE_SECS: u32 = 30;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("the request went away while PostgreSQL on {pgdata} recovered; it was stopped")]
    Cancelled { pgdata: String },
    #[error(
        "PostgreSQL {major} binaries not found in {dir}: no {missing} \
         (install postgresql-{major} on the server, or set restore.pg_bin)"
    )]
    BinariesNotFound {
        major: u32,
        dir: String,
        missing: &'static str,
    },
    #[error("{pgdata} is not a PostgreSQL data directory (no readable PG_VERSION)")]
    NotADataDirectory { pgdata: String },
    #[error("{pgdata} holds a PostgreSQL {data} cluster, but the binaries in {bin_dir} are PostgreSQL {bins}")]
    VersionMismatch {
        pgdata: String,
        data: String,
        bin_dir: String,
        bins: u32,
    },
    #[error("a postmaster (pid {pid}) is already running on {pgdata}; stop it first")]
    AlreadyRunning { pgdata: String, pid: u32 },
    #[error("OS user {user:?} does not exist on this server (set pg_user to the user PostgreSQL runs as)")]
    UnknownOsUser { user: String },
    #[error("PostgreSQL cannot run as root: set pg_user to an unprivileged OS user")]
    RootOsUser,
    #[error(
        "PostgreSQL must run as {user:?}, but the server runs as {current:?} (not root), so it \
         cannot switch users: run the server as root, or set pg_user = {current:?}"
    )]
    NotTheOsUser { user: String, current: String },
    #[error("{what} must be an absolute path, not {path}")]
    RelativePath { what: &'static str, path: String },
    #[error("invalid setting {name:?} for {pgdata}: {reason}")]
    InvalidSetting {
        pgdata: String,
        name: String,
        reason: &'static str,
    },
    #[error("invalid signal file {signal:?}: use recovery.signal or standby.signal")]
    InvalidSignal { signal: String },
    #[error(
        "socket path {path} is {len} bytes, more than Unix sockets allow ({max}): \
         use a shorter socket directory"
    )]
    SocketPathTooLong {
        path: String,
        len: usize,
        max: usize,
    },
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Command {
        what: String,
        #[source]
        source: ProcessError,
    },
    #[error("{pgdata}: unexpected control file contents: {detail}")]
    Control { pgdata: String, detail: String },
    #[error("PostgreSQL on port {port} does not accept connections yet: {reason}")]
    NotReady { port: u16, reason: String },
    #[error("query PostgreSQL on port {port}: {source}")]
    Query {
        port: u16,
        #[source]
        source: ProcessError,
    },
    #[error("PostgreSQL on port {port} answered {output:?} to {sql:?}, expected {expected}")]
    UnexpectedOutput {
        port: u16,
        sql: String,
        output: String,
        expected: &'static str,
    },
    #[error(
        "PostgreSQL on {pgdata} (port {port}) exited: {reason}; last lines of {log_file}: {tail}"
    )]
    PostmasterExited {
        pgdata: String,
        port: u16,
        reason: String,
        log_file: String,
        tail: String,
    },
    #[error(
        "PostgreSQL on {pgdata} (port {port}) was not {goal} by the deadline \
         (last replayed LSN: {replayed})"
    )]
    Timeout {
        pgdata: String,
        port: u16,
        goal: Goal,
        replayed: String,
    },
    #[error("PostgreSQL on {pgdata} (port {port}) will not get {goal}: {state}; last lines of {log_file}: {tail}")]
    GoalUnreachable {
        pgdata: String,
        port: u16,
        goal: Goal,
        state: String,
        log_file: String,
        tail: String,
    },
    #[error("promoting {pgdata} (port {port}) did not finish within {secs} s: {output}")]
    PromoteFailed {
        pgdata: String,
        port: u16,
        secs: u32,
        output: String,
    },
}

pub(crate) fn io_error(
    context: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> PgError {
    let path = path.display().to_string();
    move |source| PgError::Io {
        context,
        path,
        source,
    }
}

/// The directory holding one major version's `pg_ctl`, `postgres` and `psql`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgBinaries {
    dir: PathBuf,
    major: u32,
}

impl PgBinaries {
    /// `template` like "/usr/lib/postgresql/{major}/bin"; checks that pg_ctl, postgres and
    /// psql exist there.
    pub fn locate(template: &str, major: u32) -> Result<Self, PgError> {
        let dir = PathBuf::from(template.replace("{major}", &major.to_string()));
        for program in REQUIRED_PROGRAMS {
            if !dir.join(program).is_file() {
                return Err(PgError::BinariesNotFound {
                    major,
                    dir: dir.display().to_string(),
                    missing: program,
                });
            }
        }
        Ok(Self { dir, major })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn major(&self) -> u32 {
        self.major
    }

    fn program(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The major version of the cluster in `pgdata`, from its `PG_VERSION` ("15", or "9.6" → 9).
pub fn data_major(pgdata: &Path) -> Result<u32, PgError> {
    let not_a_data_dir = || PgError::NotADataDirectory {
        pgdata: pgdata.display().to_string(),
    };
    let text = fs::read_to_string(pgdata.join("PG_VERSION")).map_err(|_| not_a_data_dir())?;
    text.trim()
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(not_a_data_dir)
}

fn running_as_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// How programs get to run as the OS user PostgreSQL runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RunAs {
    /// We are root: switch with `runuser`, and give what we create to `owner`.
    Switch { user: String, owner: Owner },
    /// We are that user already.
    Direct,
}

impl RunAs {
    fn resolve(user: &str) -> Result<Self, PgError> {
        if user == "root" {
            return Err(PgError::RootOsUser);
        }
        if running_as_root() {
            let owner = Owner::lookup(user).ok_or_else(|| PgError::UnknownOsUser {
                user: user.to_owned(),
            })?;
            return Ok(RunAs::Switch {
                user: user.to_owned(),
                owner,
            });
        }
        let current = process::run_stdout(Command::new("id").arg("-un")).map_err(|source| {
            PgError::Command {
                what: "find the user the server runs as".into(),
                source,
            }
        })?;
        let current = current.trim();
        if current != user {
            return Err(PgError::NotTheOsUser {
                user: user.to_owned(),
                current: current.to_owned(),
            });
        }
        Ok(RunAs::Direct)
    }

    /// Who should own what we create for PostgreSQL (`None`: leave it to us).
    fn owner(&self) -> Option<Owner> {
        match self {
            RunAs::Switch { owner, .. } => Some(*owner),
            RunAs::Direct => None,
        }
    }

    /// `program` to run as the OS user, from `/` (a directory every user may enter), with
    /// messages in English: the server reads them.
    fn command(&self, program: &Path) -> Command {
        let mut cmd = match self {
            RunAs::Switch { user, .. } => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(program);
                c
            }
            RunAs::Direct => Command::new(program),
        };
        cmd.current_dir("/")
            .env_remove("LC_ALL")
            .env("LC_MESSAGES", "C");
        cmd
    }
}

/// The pid of the live postmaster of `pgdata`, if any.
fn running_pid(pgdata: &Path) -> Option<u32> {
    let text = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    // A negative pid marks a single-user backend; it holds the directory just the same.
    let pid: i64 = text.lines().next()?.trim().parse().ok()?;
    let pid = u32::try_from(pid.unsigned_abs()).ok().filter(|&p| p > 0)?;
    works_in(pid, pgdata).then_some(pid)
}

/// Whether process `pid` exists, is not a zombie, and has `dir` as its working directory (a
/// postmaster changes into its data directory at start).
fn works_in(pid: u32, dir: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // "pid (comm) state …": comm may hold spaces and parentheses, so split at the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    if !matches!(state, Some(s) if s != "Z" && s != "X") {
        return false;
    }
    // Unreadable as root means gone; as another user, not a postmaster we could be running.
    let Ok(cwd) = fs::read_link(proc_dir.join("cwd")) else {
        return false;
    };
    let dir = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    cwd == dir
}

/// Whether postmaster.pid in `pgdata` names a live process.
pub fn is_running(pgdata: &Path) -> bool {
    running_pid(pgdata).is_some()
}

/// The first port in `range` not in `taken` that can be bound on `address` right now.
pub fn free_port(address: &str, range: (u16, u16), taken: &HashSet<u16>) -> Option<u16> {
    (range.0..=range.1)
        .filter(|p| !taken.contains(p))
        .find(|&p| std::net::TcpListener::bind((address, p)).is_ok())
}

/// Stops whatever postmaster runs on `pgdata` (for dropping a restore after a server
/// restart): pg_ctl stop -m fast as the OS user, Ok if none runs.
pub fn stop_dir(bins: &PgBinaries, pgdata: &Path, os_user: &str) -> Result<(), PgError> {
    if !is_running(pgdata) {
        return Ok(());
    }
    let run_as = RunAs::resolve(os_user)?;
    stop_postmaster(bins, pgdata, &run_as)
}

/// Resumes the children of the postmaster on `pgdata`, should one be stopped (SIGSTOP): a
/// server killed while it promoted an instance leaves its startup process stopped (see
/// `Instance::promote`), and a stopped process heeds no shutdown signal, so a fast shutdown
/// would wait out its timeout and an immediate one the postmaster's SIGKILL of its children.
fn resume_children(pgdata: &Path) {
    if let Some(pid) = running_pid(pgdata) {
        process::signal_children(pid, "CONT");
    }
}

/// `pg_ctl stop -m immediate -w`; Ok if none runs.
fn stop_immediately(bins: &PgBinaries, pgdata: &Path, run_as: &RunAs) -> Result<(), PgError> {
    if !is_running(pgdata) {
        return Ok(());
    }
    resume_children(pgdata);
    let mut cmd = run_as.command(&bins.program("pg_ctl"));
    cmd.arg("stop").arg("-D").arg(pgdata).args([
        "-m",
        "immediate",
        "-w",
        "-t",
        &STOP_IMMEDIATE_SECS.to_string(),
        "-s",
    ]);
    match process::run(&mut cmd) {
        Err(source) if is_running(pgdata) => Err(PgError::Command {
            what: format!("stop PostgreSQL on {} at once", pgdata.display()),
            source,
        }),
        _ => Ok(()),
    }
}

/// Stops at once a postmaster an earlier server process left on `pgdata` (binaries of the
/// major version the directory holds); Ok if none runs.
pub fn stop_left_behind(pg_bin: &str, pgdata: &Path, os_user: &str) -> Result<(), PgError> {
    if !is_running(pgdata) {
        return Ok(());
    }
    let bins = PgBinaries::locate(pg_bin, data_major(pgdata)?)?;
    stop_dir_now(&bins, pgdata, os_user)
}

/// A fresh private socket directory for an instance the server starts, short enough for a
/// Unix socket path: `/tmp/walvault-<kind>-<pid>-<n>`.
pub fn socket_dir(kind: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    PathBuf::from(format!(
        "/tmp/walvault-{kind}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ))
}

/// A command running PostgreSQL program `name` of `bins` as `os_user` (through runuser when
/// the server is root).
pub fn program_command(bins: &PgBinaries, os_user: &str, name: &str) -> Result<Command, PgError> {
    Ok(RunAs::resolve(os_user)?.command(&bins.program(name)))
}

/// Stops whatever postmaster runs on `pgdata` at once (a job a dead server left running).
pub fn stop_dir_now(bins: &PgBinaries, pgdata: &Path, os_user: &str) -> Result<(), PgError> {
    if !is_running(pgdata) {
        return Ok(());
    }
    let run_as = RunAs::resolve(os_user)?;
    stop_immediately(bins, pgdata, &run_as)
}

/// `pg_ctl stop -m fast -w`, then `-m immediate` if that fails while the postmaster still runs.
fn stop_postmaster(bins: &PgBinaries, pgdata: &Path, run_as: &RunAs) -> Result<(), PgError> {
    if !is_running(pgdata) {
        return Ok(());
    }
    resume_children(pgdata);
    let stop = |mode: &str, secs: u32| {
        let mut cmd = run_as.command(&bins.program("pg_ctl"));
        cmd.arg("stop").arg("-D").arg(pgdata).args([
            "-m",
            mode,
            "-w",
            "-t",
            &secs.to_string(),
            "-s",
        ]);
        process::run(&mut cmd).map(|_| ())
    };
    let fast = match stop("fast", STOP_FAST_SECS) {
        Ok(()) => return Ok(()),
        Err(e) => e,
    };
    if !is_running(pgdata) {
        return Ok(());
    }
    tracing::warn!(pgdata = %pgdata.display(), error = %fast, "fast shutdown failed; stopping immediately");
    stop("immediate", STOP_IMMEDIATE_SECS).or_else(|source| {
        if is_running(pgdata) {
            Err(PgError::Command {
                what: format!("stop PostgreSQL on {}", pgdata.display()),
                source,
            })
        } else {
            Ok(())
        }
    })
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn locate_names_the_missing_binaries_and_the_fix() {
        let err = PgBinaries::locate("/nonexistent/pg/{major}/bin", 14).unwrap_err();
        assert_eq!(
            err.to_string(),
            "PostgreSQL 14 binaries not found in /nonexistent/pg/14/bin: no pg_ctl \
             (install postgresql-14 on the server, or set restore.pg_bin)"
        );
    }

    #[test]
    fn locate_finds_a_directory_with_all_three_programs() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("13");
        fs::create_dir(&bin).unwrap();
        for p in ["pg_ctl", "postgres"] {
            fs::write(bin.join(p), "").unwrap();
        }
        let template = format!("{}/{{major}}", dir.path().display());
        let err = PgBinaries::locate(&template, 13).unwrap_err();
        assert!(err.to_string().contains("no psql"), "{err}");
        fs::write(bin.join("psql"), "").unwrap();
        let bins = PgBinaries::locate(&template, 13).unwrap();
        assert_eq!(bins.dir(), bin);
        assert_eq!(bins.major(), 13);
    }

    #[test]
    fn data_major_reads_pg_version() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            data_major(dir.path()),
            Err(PgError::NotADataDirectory { .. })
        ));
        fs::write(dir.path().join("PG_VERSION"), "15\n").unwrap();
        assert_eq!(data_major(dir.path()).unwrap(), 15);
        fs::write(dir.path().join("PG_VERSION"), "9.6\n").unwrap();
        assert_eq!(data_major(dir.path()).unwrap(), 9);
    }

    #[test]
    fn free_port_skips_taken_and_bound_ports() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        // The held port cannot be bound; a port in `taken` is not even tried.
        assert_eq!(free_port("127.0.0.1", (port, port), &HashSet::new()), None);
        let taken: HashSet<u16> = [port].into();
        assert_eq!(free_port("127.0.0.1", (port, port), &taken), None);
        drop(held);
        assert_eq!(
            free_port("127.0.0.1", (port, port), &HashSet::new()),
            Some(port)
        );
        assert_eq!(free_port("127.0.0.1", (port, port), &taken), None);
    }

    #[test]
    fn is_running_needs_a_live_process_in_the_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let pgdata = dir.path();
        assert!(!is_running(pgdata), "no postmaster.pid");
        // Our own pid: alive, but working elsewhere (as a pid from the source host would be).
        fs::write(
            pgdata.join("postmaster.pid"),
            format!("{}\n{}\n", std::process::id(), pgdata.display()),
        )
        .unwrap();
        assert!(!is_running(pgdata));
        let mut child = Command::new("sleep")
            .arg("30")
            .current_dir(pgdata)
            .spawn()
            .unwrap();
        fs::write(
            pgdata.join("postmaster.pid"),
            format!("{}\n{}\n", child.id(), pgdata.display()),
        )
        .unwrap();
        assert!(is_running(pgdata));
        assert_eq!(running_pid(pgdata), Some(child.id()));
        child.kill().unwrap();
        // Not yet reaped: a zombie is not running either.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!is_running(pgdata));
        child.wait().unwrap();
        assert!(!is_running(pgdata));
        fs::write(pgdata.join("postmaster.pid"), "garbage\n").unwrap();
        assert!(!is_running(pgdata));
    }

    #[test]
    fn stop_dir_with_nothing_running_is_ok() {
        let dir = tempfile::tempdir().unwrap();
        let bins = PgBinaries {
            dir: PathBuf::from("/nonexistent"),
            major: 15,
        };
        stop_dir(&bins, dir.path(), "nobody-at-all").unwrap();
    }

    #[test]
    fn errors_stay_small_enough_to_return_by_value() {
        // clippy's result_large_err starts at 128 bytes; callers wrap PgError in their own.
        assert!(
            std::mem::size_of::<PgError>() <= 120,
            "{}",
            std::mem::size_of::<PgError>()
        );
    }

    #[test]
    fn run_as_refuses_root_and_users_it_cannot_become() {
        assert!(matches!(RunAs::resolve("root"), Err(PgError::RootOsUser)));
        let err = RunAs::resolve("walvault-no-such-user").unwrap_err();
        if running_as_root() {
            assert!(matches!(err, PgError::UnknownOsUser { .. }), "{err}");
        } else {
            assert!(matches!(err, PgError::NotTheOsUser { .. }), "{err}");
            assert!(err.to_string().contains("set pg_user = "), "{err}");
        }
    }
}
