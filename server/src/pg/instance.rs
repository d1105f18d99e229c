//! A PostgreSQL instance started on a prepared data directory, and watching it: the server
//! polls over the private socket, and when the postmaster is gone reads its log to tell a
//! clean shutdown (`recovery_target_action = shutdown`) from a failure.

use std::fmt;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::process;

use super::conf::{check_spec, log_file};
use super::{data_major, io_error, running_pid, stop_postmaster, PgBinaries, PgError, RunAs};

/// How often [`Instance::wait_for`] looks.
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How long a postmaster may take to write its postmaster.pid before a missing one means it
/// died (a death it logs is noticed at once).
const STARTUP_GRACE: Duration = Duration::from_secs(60);
/// How long a failed query waits to see whether the postmaster is exiting.
const EXIT_GRACE: Duration = Duration::from_secs(10);
/// How long a promotion may take to finish.
const PROMOTE_WAIT_SECS: u32 = 120;
/// How often [`Instance::promote`] looks whether it finished: soon at first (a promotion
/// from a pause takes a few milliseconds), then less often (one that ends with a
/// checkpoint may take long, and every look is a psql process).
const PROMOTE_POLL: (Duration, Duration) = (Duration::from_millis(10), Duration::from_millis(400));
/// libpq's `connect_timeout` for our queries.
const CONNECT_TIMEOUT_SECS: u32 = 10;
/// Lines of the log an error quotes.
const LOG_TAIL_LINES: usize = 10;
/// At most this much of the end of the log is read for an error.
const LOG_READ_LIMIT: u64 = 256 * 1024;

/// What to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceSpec {
    pub pgdata: PathBuf,
    pub port: u16,
    pub listen_address: String,
    /// A private directory (created 0700, owned by the OS user) for the Unix socket; the caller
    /// keeps its path short (< 100 bytes).
    pub socket_dir: PathBuf,
    pub log_file: PathBuf,
    /// The unprivileged OS user PostgreSQL runs as.
    pub os_user: String,
    /// Role to connect as (RestoreConfig::superuser).
    pub superuser: String,
}

/// What [`Instance::wait_for`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Recovery paused at the target (`recovery_target_action = pause`).
    Paused,
    /// Out of recovery: promoted by `pg_promote()`, or by itself at the end of the archive
    /// (a `latest` target) or at the target with `recovery_target_action = promote`.
    Promoted,
    /// The postmaster exited cleanly by itself (`recovery_target_action = shutdown`).
    ShutDown,
    /// Still in recovery (a standby), having replayed up to this LSN at least.
    Replayed(walvault_proto::Lsn),
}

impl fmt::Display for Goal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Goal::Paused => "paused at the recovery target",
            Goal::Promoted => "promoted",
            Goal::ShutDown => "shut down",
            Goal::Replayed(l) => return write!(f, "replayed to {l} as a standby"),
        })
    }
}

/// Where the instance was when its goal was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reached {
    /// `pg_last_wal_replay_lsn()`, last seen.
    pub replay_lsn: Option<String>,
    /// `pg_last_xact_replay_timestamp()` in Unix microseconds, last seen.
    pub replay_micros: Option<i64>,
    pub in_recovery: bool,
    /// The current timeline once promoted; in recovery, that of the latest restartpoint.
    pub timeline: Option<u32>,
}

/// One look at a running instance.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Poll {
    in_recovery: bool,
    replay_lsn: Option<String>,
    paused: bool,
    timeline: Option<u32>,
    replay_micros: Option<i64>,
}

/// The query behind [`Poll`]: every function called only where it is allowed (in or out of
/// recovery), one row `in_recovery|replay_lsn|paused|timeline|replay_micros`.
fn poll_sql(major: u32) -> String {
    let paused = if major >= 14 {
        "pg_get_wal_replay_pause_state() = 'paused'"
    } else {
        "pg_is_wal_replay_paused()"
    };
    format!(
        "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), \
         CASE WHEN pg_is_in_recovery() THEN {paused} ELSE false END, \
         CASE WHEN pg_is_in_recovery() THEN (pg_control_checkpoint()).timeline_id \
         ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END, \
         (extract(epoch FROM pg_last_xact_replay_timestamp()) * 1000000)::bigint"
    )
}

fn parse_poll(output: &str) -> Option<Poll> {
    let fields: Vec<&str> = output.trim().split('|').collect();
    let [recovery, lsn, paused, timeline, micros] = fields[..] else {
        return None;
    };
    let flag = |f: &str| match f {
        "t" => Some(true),
        "f" => Some(false),
        _ => None,
    };
    Some(Poll {
        in_recovery: flag(recovery)?,
        replay_lsn: (!lsn.is_empty()).then(|| lsn.to_owned()),
        paused: flag(paused)?,
        timeline: if timeline.is_empty() {
            None
        } else {
            Some(timeline.parse().ok()?)
        },
        replay_micros: if micros.is_empty() {
            None
        } else {
            Some(micros.parse().ok()?)
        },
    })
}

/// Why a connection was refused, when the instance will accept it later (or is going away,
/// which the next look at the postmaster finds).
fn not_ready_reason(stderr: &str) -> Option<String> {
    const SERVER: [&str; 7] = [
        "the database system is starting up",
        "the database system is not yet accepting connections",
        "the database system is not accepting connections",
        "the database system is in recovery mode",
        "the database system is shutting down",
        "sorry, too many clients already",
        // pg_is_in_recovery() said yes and recovery ended before the next call.
        "recovery is not in progress",
    ];
    let no_socket = (stderr.contains("connection to server")
        || stderr.contains("could not connect to server"))
        && (stderr.contains("No such file or directory") || stderr.contains("Connection refused"));
    if no_socket || SERVER.iter().any(|m| stderr.contains(m)) {
        let line = stderr
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("connection refused");
        Some(line.trim_start_matches("psql: ").to_owned())
    } else {
        None
    }
}

/// How a postmaster ended, from what it logged since it was started.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ending {
    /// A clean shutdown.
    ShutDown,
    /// A failure, with the line that says why.
    Failed(String),
    /// Nothing logged says (yet).
    Unknown,
}

/// FATAL lines about one connection, not about the postmaster.
const CONNECTION_FATALS: [&str; 14] = [
    "the database system is starting up",
    "not yet accepting connections",
    "is not accepting connections",
    "the database system is in recovery mode",
    "the database system is shutting down",
    "too many clients",
    "terminating connection due to administrator command",
    "terminating walreceiver process",
    "terminating background worker",
    "terminating autovacuum process",
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "could not connect to the primary server",
];

fn ending(log: &str) -> Ending {
    const FAILURES: [&str; 5] = [
        "aborting startup due to startup process failure",
        "shutting down due to startup process failure",
        "shutting down because restart_after_crash is off",
        "abnormal database system shutdown",
        "PANIC:",
    ];
    let lines: Vec<&str> = log.lines().map(str::trim_end).collect();
    let is_fatal = |l: &str| l.contains("FATAL:") || l.contains("PANIC:");
    let own_fatal = |l: &&&str| is_fatal(l) && !CONNECTION_FATALS.iter().any(|m| l.contains(m));
    let failed = lines.iter().any(|l| FAILURES.iter().any(|m| l.contains(m)));
    let shut_down = lines
        .iter()
        .any(|l| l.contains("database system is shut down"));
    if shut_down && !failed {
        return Ending::ShutDown;
    }
    // The startup process's own FATAL comes just before the postmaster reports its exit.
    let startup_exit = lines
        .iter()
        .position(|l| l.contains("startup process (PID") && !l.contains("exited with exit code 0"));
    let reason = startup_exit
        .and_then(|i| lines[..i].iter().rev().find(|l| is_fatal(l)))
        .or_else(|| lines.iter().rev().find(|l| l.contains("PANIC:")))
        .or_else(|| lines.iter().rev().find(own_fatal));
    match reason {
        Some(line) => Ending::Failed(line.trim().to_owned()),
        None if failed || shut_down => Ending::Failed(
            lines
                .iter()
                .rev()
                .find(|l| FAILURES.iter().any(|m| l.contains(m)))
                .map_or("it shut down after a failure", |l| l.trim())
                .to_owned(),
        ),
        None => Ending::Unknown,
    }
}

/// The last `n` non-empty lines of `log`, joined into one line.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let start = lines.len().saturating_sub(n);
    if lines.is_empty() {
        "(empty)".to_owned()
    } else {
        lines[start..].join(" | ")
    }
}

/// A value for a libpq connection string, quoted when it needs to be.
fn conninfo_value(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return v.to_owned();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A PostgreSQL instance started by [`Instance::start`].
#[derive(Debug)]
pub struct Instance {
    bins: PgBinaries,
    spec: InstanceSpec,
    run_as: RunAs,
    major: u32,
    /// Where the log stood when we started the postmaster: what it wrote comes after.
    log_offset: u64,
    started: Instant,
}

impl Instance {
    /// `pg_ctl start` (without waiting: in recovery to a far target, connections only open
    /// after consistency), returns at once.
    pub fn start(bins: &PgBinaries, spec: InstanceSpec) -> Result<Self, PgError> {
        check_spec(&spec)?;
        let run_as = RunAs::resolve(&spec.os_user)?;
        let major = data_major(&spec.pgdata)?;
        if major != bins.major() {
            return Err(PgError::VersionMismatch {
                pgdata: spec.pgdata.display().to_string(),
                data: major.to_string(),
                bin_dir: bins.dir().display().to_string(),
                bins: bins.major(),
            });
        }
        if let Some(pid) = running_pid(&spec.pgdata) {
            return Err(PgError::AlreadyRunning {
                pgdata: spec.pgdata.display().to_string(),
                pid,
            });
        }
        log_file(&spec.log_file, run_as.owner())?;
        let log_offset = fs::metadata(&spec.log_file)
            .map_err(io_error("inspect", &spec.log_file))?
            .len();
        let mut cmd = run_as.command(&bins.program("pg_ctl"));
        cmd.arg("start")
            .arg("-D")
            .arg(&spec.pgdata)
            .arg("-l")
            .arg(&spec.log_file)
            .args(["-W", "-s"]);
        process::run(&mut cmd).map_err(|source| PgError::Command {
            what: format!(
                "start PostgreSQL on {} (port {})",
                spec.pgdata.display(),
                spec.port
            ),
            source,
        })?;
        tracing::info!(pgdata = %spec.pgdata.display(), port = spec.port, "started PostgreSQL");
        Ok(Self {
            bins: bins.clone(),
            spec,
            run_as,
            major,
            log_offset,
            started: Instant::now(),
        })
    }

    pub fn spec(&self) -> &InstanceSpec {
        &self.spec
    }

    /// The libpq connection string clients use:
    /// "host=<listen_address> port=<port> user=<superuser> dbname=postgres".
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user={} dbname=postgres",
            conninfo_value(&self.spec.listen_address),
            self.spec.port,
            conninfo_value(&self.spec.superuser)
        )
    }

    /// The server's own connection: the private socket, as the superuser.
    fn socket_conninfo(&self, dbname: &str) -> String {
        format!(
            "host={} port={} user={} dbname={} connect_timeout={CONNECT_TIMEOUT_SECS} \
             application_name=walvault",
            conninfo_value(&self.spec.socket_dir.to_string_lossy()),
            self.spec.port,
            conninfo_value(&self.spec.superuser),
            conninfo_value(dbname)
        )
    }

    /// Runs one SQL statement with psql -XAtq over the private socket as the superuser, as the
    /// OS user; returns trimmed stdout. [`PgError::NotReady`] when the instance does not accept
    /// connections yet.
    pub fn query(&self, sql: &str) -> Result<String, PgError> {
        self.query_in("postgres", sql)
    }

    /// [`Instance::query`] in database `dbname`.
    pub fn query_in(&self, dbname: &str, sql: &str) -> Result<String, PgError> {
        let mut cmd = self.run_as.command(&self.bins.program("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(self.socket_conninfo(dbname))
            .arg("-c")
            .arg(sql);
        match process::run_stdout(&mut cmd) {
            Ok(out) => Ok(out.trim().to_owned()),
            Err(source) => match not_ready_reason(source.stderr()) {
                Some(reason) => Err(PgError::NotReady {
                    port: self.spec.port,
                    reason,
                }),
                None => Err(PgError::Query {
                    port: self.spec.port,
                    source,
                }),
            },
        }
    }

    fn poll(&self) -> Result<Poll, PgError> {
        let sql = poll_sql(self.major);
        let out = self.query(&sql)?;
        let parsed = parse_poll(&out);
        parsed.ok_or(PgError::UnexpectedOutput {
            port: self.spec.port,
            sql,
            output: out,
            expected: "in_recovery|replay_lsn|paused|timeline|replay_micros",
        })
    }

    /// What the postmaster logged since we started it (at most the last [`LOG_READ_LIMIT`]
    /// bytes of that); all of the log's end if it shrank since.
    fn log_since_start(&self) -> String {
        let read = || -> std::io::Result<String> {
            let mut f = fs::File::open(&self.spec.log_file)?;
            let len = f.metadata()?.len();
            let from = if len >= self.log_offset {
                self.log_offset
            } else {
                0
            };
            let from = from.max(len.saturating_sub(LOG_READ_LIMIT));
            f.seek(SeekFrom::Start(from))?;
            let mut bytes = Vec::new();
            f.read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        read().unwrap_or_else(|e| format!("(could not read the log: {e})"))
    }

    fn exited_error(&self, reason: String, log: &str) -> PgError {
        PgError::PostmasterExited {
            pgdata: self.spec.pgdata.display().to_string(),
            port: self.spec.port,
            reason,
            log_file: self.spec.log_file.display().to_string(),
            tail: tail(log, LOG_TAIL_LINES),
        }
    }

    fn unreachable(&self, goal: Goal, state: String) -> PgError {
        PgError::GoalUnreachable {
            pgdata: self.spec.pgdata.display().to_string(),
            port: self.spec.port,
            goal,
            state,
            log_file: self.spec.log_file.display().to_string(),
            tail: tail(&self.log_since_start(), LOG_TAIL_LINES),
        }
    }

    /// Whether the postmaster is gone, or goes within [`EXIT_GRACE`]: after a failed query,
    /// a lost connection is how psql sees the postmaster die.
    fn exits_soon(&self) -> bool {
        let until = Instant::now() + EXIT_GRACE;
        while running_pid(&self.spec.pgdata).is_some() {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        true
    }

    /// `e`, or the postmaster's exit when it goes away (see [`Instance::exits_soon`]). For an
    /// instance that answered before: refusing connections is also how it goes away.
    fn explain(&self, e: PgError) -> PgError {
        if !matches!(e, PgError::Query { .. } | PgError::NotReady { .. }) || !self.exits_soon() {
            return e;
        }
        let log = self.log_since_start();
        let reason = match ending(&log) {
            Ending::Failed(line) => line,
            Ending::ShutDown => "it shut down".to_owned(),
            Ending::Unknown => "it exited without logging why".to_owned(),
        };
        self.exited_error(reason, &log)
    }

    /// Whether a signal file is left: PostgreSQL removes it when recovery ends.
    fn signal_left(&self) -> bool {
        ["recovery.signal", "standby.signal"]
            .iter()
            .any(|s| self.spec.pgdata.join(s).exists())
    }

    /// The postmaster is gone: a clean shutdown is `Ok` for [`Goal::ShutDown`]; anything else
    /// is an error quoting the log. `None`: it has not started yet, as far as we can tell.
    fn gone(
        &self,
        goal: Goal,
        seen_running: bool,
        last: &Reached,
    ) -> Option<Result<Reached, PgError>> {
        let log = self.log_since_start();
        match ending(&log) {
            Ending::ShutDown if goal == Goal::ShutDown => Some(Ok(Reached {
                in_recovery: self.signal_left(),
                ..last.clone()
            })),
            Ending::ShutDown => Some(Err(
                self.exited_error(format!("it shut down before it was {goal}"), &log)
            )),
            Ending::Failed(line) => Some(Err(self.exited_error(line, &log))),
            Ending::Unknown if seen_running || self.started.elapsed() > STARTUP_GRACE => Some(Err(
                self.exited_error("it exited without logging why".to_owned(), &log),
            )),
            Ending::Unknown => None,
        }
    }

    /// Polls (every ~200 ms) until `goal` holds, the deadline passes, or the postmaster exits.
    /// Before consistency the instance refuses connections: that is not an error. `progress`
    /// gets lines like "replayed to 0/5000060" when the replay LSN changes.
    pub fn wait_for(
        &self,
        goal: Goal,
        deadline: Instant,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Reached, PgError> {
        self.wait_for_unless(goal, deadline, progress, &|| false)
    }

    /// [`Instance::wait_for`], giving up ([`PgError::Cancelled`]) as soon as `cancelled` says
    /// so (the request that wanted the instance went away).
    pub fn wait_for_unless(
        &self,
        goal: Goal,
        deadline: Instant,
        progress: &mut dyn FnMut(&str),
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Reached, PgError> {
        let mut last = Reached {
            replay_lsn: None,
            replay_micros: None,
            in_recovery: true,
            timeline: None,
        };
        let mut seen_running = false;
        loop {
            if running_pid(&self.spec.pgdata).is_none() {
                if let Some(result) = self.gone(goal, seen_running, &last) {
                    return result;
                }
            } else {
                seen_running = true;
                match self.poll() {
                    Ok(p) => {
                        if p.replay_lsn.is_some() && p.replay_lsn != last.replay_lsn {
                            progress(&format!(
                                "replayed to {}",
                                p.replay_lsn.as_deref().unwrap_or_default()
                            ));
                        }
                        last = Reached {
                            replay_lsn: p.replay_lsn.clone(),
                            replay_micros: p.replay_micros.or(last.replay_micros),
                            in_recovery: p.in_recovery,
                            timeline: p.timeline.or(last.timeline),
                        };
                        if let Some(done) = self.judge(goal, &p, &last) {
                            return done;
                        }
                    }
                    Err(PgError::NotReady { .. }) => {}
                    // A failure as the postmaster goes away: its log says why (next round).
                    Err(PgError::Query { .. }) if self.exits_soon() => continue,
                    Err(e) => return Err(e),
                }
            }
            if cancelled() {
                return Err(PgError::Cancelled {
                    pgdata: self.spec.pgdata.display().to_string(),
                });
            }
            if Instant::now() >= deadline {
                return Err(PgError::Timeout {
                    pgdata: self.spec.pgdata.display().to_string(),
                    port: self.spec.port,
                    goal,
                    replayed: last
                        .replay_lsn
                        .clone()
                        .unwrap_or_else(|| "none yet (no connection before consistency)".into()),
                });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Whether one look at a running instance reaches `goal` (`Ok`), shows it never will
    /// (`Err`), or neither (`None`).
    fn judge(&self, goal: Goal, p: &Poll, last: &Reached) -> Option<Result<Reached, PgError>> {
        let at = last.replay_lsn.as_deref().unwrap_or("an unknown LSN");
        match goal {
            Goal::Paused if p.in_recovery && p.paused => Some(Ok(last.clone())),
            Goal::Promoted if !p.in_recovery => Some(Ok(last.clone())),
            Goal::Replayed(want)
                if p.in_recovery
                    && p.replay_lsn
                        .as_deref()
                        .and_then(|l| l.parse::<walvault_proto::Lsn>().ok())
                        .is_some_and(|l| l >= want) =>
            {
                Some(Ok(last.clone()))
            }
            Goal::Replayed(_) if !p.in_recovery => Some(Err(self.unreachable(
                goal,
                format!("it left recovery (promoted) after replaying to {at}"),
            ))),
            Goal::Paused | Goal::ShutDown if !p.in_recovery => Some(Err(self.unreachable(
                goal,
                format!("it left recovery (promoted) after replaying to {at}"),
            ))),
            Goal::Promoted | Goal::ShutDown | Goal::Replayed(_) if p.paused => Some(Err(self.unreachable(
                goal,
                format!("recovery is paused at {at} and waits for pg_wal_replay_resume() or pg_promote()"),
            ))),
            _ => None,
        }
    }

    /// Promotes and waits until the instance is out of recovery. When the postmaster exits
    /// instead (a recovery target not reached is FATAL), the error quotes its log.
    ///
    /// From PostgreSQL 14, recovery paused at its target sleeps on a condition variable for up
    /// to a second at a time, and the promotion signal does not wake it: `pg_promote()` alone
    /// costs up to a second. So after the signal the pause is lifted and requested again at
    /// once, which wakes the sleeper into a loop that sees the promotion. The target is
    /// reached already, so lifting the pause replays nothing more. Should the startup process
    /// look between the two calls, it leaves the loop without seeing the promotion and ends
    /// recovery with an immediate checkpoint (measured: 1.9 s instead of 0.1 s, one run in
    /// three); so it is stopped (SIGSTOP) for the two calls, see [`Frozen`].
    pub fn promote(&self) -> Result<(), PgError> {
        let out = self
            .query(
                "SELECT pg_promote(false), \
                 (SELECT pid FROM pg_stat_activity WHERE backend_type = 'startup')",
            )
            .map_err(|e| self.explain(e))?;
        let (signalled, startup) = out.split_once('|').unwrap_or((out.as_str(), ""));
        if signalled != "t" {
            return Err(self.promote_failed(out.clone()));
        }
        // Before 14 the pause loop sleeps in pg_usleep, which the signal interrupts.
        if self.major < 14 {
            return self.wait_out_of_recovery();
        }
        // The postmaster passes the signal on to the startup process: give it a moment.
        std::thread::sleep(Duration::from_millis(20));
        let frozen = startup.parse::<u32>().ok().and_then(Frozen::stop);
        crate::fault::point("instance-promote-frozen");
        if let Err(e) = self.query(
            "SELECT pg_wal_replay_resume(), pg_wal_replay_pause() \
             WHERE pg_is_in_recovery() AND pg_get_wal_replay_pause_state() = 'paused'",
        ) {
            // Promoted already, or not paused: the wait below tells.
            tracing::debug!(pgdata = %self.spec.pgdata.display(), "wake paused recovery: {e}");
        }
        drop(frozen);
        self.wait_out_of_recovery()
    }

    /// Polls until the instance is out of recovery, for at most [`PROMOTE_WAIT_SECS`].
    fn wait_out_of_recovery(&self) -> Result<(), PgError> {
        let deadline = Instant::now() + Duration::from_secs(PROMOTE_WAIT_SECS.into());
        let mut pause = PROMOTE_POLL.0;
        loop {
            let in_recovery = self
                .query("SELECT pg_is_in_recovery()")
                .map_err(|e| self.explain(e))?;
            if in_recovery == "f" {
                tracing::info!(pgdata = %self.spec.pgdata.display(), "promoted");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.promote_failed(format!("still in recovery ({in_recovery})")));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(PROMOTE_POLL.1);
        }
    }

    fn promote_failed(&self, output: String) -> PgError {
        PgError::PromoteFailed {
            pgdata: self.spec.pgdata.display().to_string(),
            port: self.spec.port,
            secs: PROMOTE_WAIT_SECS,
            output,
        }
    }

    /// `pg_ctl stop -m fast -w` (then immediate if fast fails within a bound); Ok if the
    /// postmaster is gone already.
    pub fn stop(&self) -> Result<(), PgError> {
        stop_postmaster(&self.bins, &self.spec.pgdata, &self.run_as)?;
        tracing::info!(pgdata = %self.spec.pgdata.display(), "stopped PostgreSQL");
        Ok(())
    }

    /// `pg_ctl stop -m immediate`: the server is going away and cannot wait for a
    /// restartpoint; the next start goes on recovering from the last one.
    pub fn stop_now(&self) -> Result<(), PgError> {
        super::stop_immediately(&self.bins, &self.spec.pgdata, &self.run_as)
    }

    /// The data directory.
    pub fn pgdata(&self) -> &Path {
        &self.spec.pgdata
    }
}

/// The startup process of an instance, stopped (SIGSTOP) while the pause is lifted and
/// requested again, so that it sees the pause requested again, never the lifted one; it
/// goes on (SIGCONT) when this is dropped, and after [`FROZEN_AT_MOST`] in any case: while
/// stopped it might hold a spinlock the two calls need, and then they wait for it.
struct Frozen {
    pid: u32,
}

/// The longest the startup process stays stopped, whatever the calls do.
const FROZEN_AT_MOST: Duration = Duration::from_millis(200);

impl Frozen {
    /// `None` when the signal cannot be sent (the server is not root, the process is gone):
    /// the promotion is then only slower in the rare case.
    fn stop(pid: u32) -> Option<Self> {
        process::signal(pid, "-STOP").then(|| {
            std::thread::spawn(move || {
                std::thread::sleep(FROZEN_AT_MOST);
                process::signal(pid, "-CONT");
            });
            Self { pid }
        })
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !process::signal(self.pid, "-CONT") {
            tracing::warn!(
                pid = self.pid,
                "could not resume the startup process; it resumes in {FROZEN_AT_MOST:?}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_output_is_parsed() {
        assert_eq!(
            parse_poll("t|0/5000060|f|1|1790000000123456\n"),
            Some(Poll {
                in_recovery: true,
                replay_lsn: Some("0/5000060".into()),
                paused: false,
                timeline: Some(1),
                replay_micros: Some(1_790_000_000_123_456),
            })
        );
        assert_eq!(
            parse_poll("f||f|2|"),
            Some(Poll {
                in_recovery: false,
                replay_lsn: None,
                paused: false,
                timeline: Some(2),
                replay_micros: None,
            })
        );
        assert_eq!(parse_poll("t|0/1|f|1"), None);
        assert_eq!(parse_poll("yes|0/1|f|1|"), None);
        assert_eq!(parse_poll("t|0/1|f|x|"), None);
        assert_eq!(parse_poll("t|0/1|f|1|soon"), None);
    }

    #[test]
    fn the_pause_check_follows_the_major_version() {
        assert!(poll_sql(15).contains("pg_get_wal_replay_pause_state() = 'paused'"));
        assert!(poll_sql(14).contains("pg_get_wal_replay_pause_state()"));
        assert!(poll_sql(13).contains("pg_is_wal_replay_paused()"));
        assert!(poll_sql(12).contains("pg_is_wal_replay_paused()"));
    }

    #[test]
    fn refused_connections_before_consistency_are_not_errors() {
        let starting = "psql: error: connection to server on socket \"/run/w/.s.PGSQL.54400\" failed: FATAL:  the database system is not yet accepting connections\nDETAIL:  Consistent recovery state has not been yet reached.";
        assert_eq!(
            not_ready_reason(starting).as_deref(),
            Some("error: connection to server on socket \"/run/w/.s.PGSQL.54400\" failed: FATAL:  the database system is not yet accepting connections")
        );
        let no_socket = "psql: error: connection to server on socket \"/run/w/.s.PGSQL.54400\" failed: No such file or directory\n\tIs the server running locally and accepting connections on that socket?";
        assert!(not_ready_reason(no_socket).is_some());
        assert!(not_ready_reason("psql: error: connection to server on socket \"/x/.s.PGSQL.1\" failed: FATAL:  the database system is starting up").is_some());
        // Errors that waiting does not cure.
        assert_eq!(not_ready_reason("psql: error: connection to server on socket \"/x/.s.PGSQL.1\" failed: FATAL:  role \"postgres\" does not exist"), None);
        assert_eq!(
            not_ready_reason("ERROR:  syntax error at or near \"SELEC\""),
            None
        );
    }

    const CONFIG_ERROR: &str = "\
2024-05-01 10:00:00.000 UTC [100] LOG:  invalid value for parameter \"shared_buffers\": \"lots\"
2024-05-01 10:00:00.001 UTC [100] FATAL:  configuration file \"/clone/postgresql.auto.conf\" contains errors
";

    const TARGET_NOT_REACHED: &str = "\
LOG:  starting point-in-time recovery to 2024-05-01 10:00:00+00
FATAL:  the database system is not yet accepting connections
DETAIL:  Consistent recovery state has not been yet reached.
LOG:  restored log file \"000000010000000000000003\" from archive
FATAL:  recovery ended before configured recovery target was reached
LOG:  startup process (PID 7) exited with exit code 1
LOG:  terminating any other active server processes
LOG:  shutting down due to startup process failure
LOG:  database system is shut down
";

    const SHUTDOWN_AT_TARGET: &str = "\
LOG:  recovery stopping after commit of transaction 742, time 2024-05-01 10:00:00+00
LOG:  shutdown at recovery target
LOG:  shutting down
FATAL:  terminating connection due to administrator command
LOG:  database system is shut down
";

    #[test]
    fn the_log_tells_a_clean_shutdown_from_a_failure() {
        assert_eq!(
            ending(CONFIG_ERROR),
            Ending::Failed("2024-05-01 10:00:00.001 UTC [100] FATAL:  configuration file \"/clone/postgresql.auto.conf\" contains errors".into())
        );
        assert_eq!(
            ending(TARGET_NOT_REACHED),
            Ending::Failed(
                "FATAL:  recovery ended before configured recovery target was reached".into()
            )
        );
        assert_eq!(ending(SHUTDOWN_AT_TARGET), Ending::ShutDown);
        assert_eq!(
            ending("LOG:  database system was interrupted\nFATAL:  the database system is starting up\n"),
            Ending::Unknown,
            "a refused connection is not the postmaster's death"
        );
        assert_eq!(ending(""), Ending::Unknown);
        assert_eq!(
            ending("PANIC:  could not locate a valid checkpoint record\nLOG:  startup process (PID 9) was terminated by signal 6: Aborted\nLOG:  aborting startup due to startup process failure\nLOG:  database system is shut down\n"),
            Ending::Failed("PANIC:  could not locate a valid checkpoint record".into())
        );
    }

    #[test]
    fn tails_are_one_line() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(tail("a\n", 10), "a");
        assert_eq!(tail("", 10), "(empty)");
    }

    #[test]
    fn conninfo_values_are_quoted_when_needed() {
        assert_eq!(conninfo_value("127.0.0.1"), "127.0.0.1");
        assert_eq!(conninfo_value("/run/walvault/r 1"), "'/run/walvault/r 1'");
        assert_eq!(conninfo_value("o'neil"), "'o\\'neil'");
        assert_eq!(conninfo_value(""), "''");
    }

    #[test]
    fn goals_read_well_in_errors() {
        assert_eq!(Goal::Paused.to_string(), "paused at the recovery target");
        assert_eq!(Goal::Promoted.to_string(), "promoted");
        assert_eq!(Goal::ShutDown.to_string(), "shut down");
    }
}
