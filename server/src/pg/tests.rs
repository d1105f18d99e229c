//! A real PostgreSQL 15 run as `postgres`: a fresh cluster, prepared as a standby (a fresh
//! cluster has no backup_label for archive recovery), started, watched, promoted and stopped;
//! then a clean stop seen as [`Goal::ShutDown`], and a bad setting seen as the log's FATAL.
//! Skipped with a note when PostgreSQL 15 is missing or we are not root (failed when `CI` is
//! set).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::backup::files::Owner;
use crate::process;

use super::*;

const PG15_BIN: &str = "/usr/lib/postgresql/15/bin";
const OS_USER: &str = "postgres";

fn skip_reason() -> Option<String> {
    if !Path::new(PG15_BIN).join("postgres").exists() {
        return Some(format!("{PG15_BIN}/postgres is missing (postgresql-15)"));
    }
    if !running_as_root() {
        return Some("not root: cannot run PostgreSQL as `postgres`".into());
    }
    if Owner::lookup(OS_USER).is_none() {
        return Some(format!("there is no `{OS_USER}` OS user"));
    }
    None
}

/// Stops the instance whatever happens, and shows its log when the test failed.
struct Cleanup {
    bins: PgBinaries,
    pgdata: PathBuf,
    log_file: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = stop_dir(&self.bins, &self.pgdata, OS_USER) {
            eprintln!("cleanup: {e}");
        }
        if std::thread::panicking() {
            let log = fs::read_to_string(&self.log_file).unwrap_or_default();
            eprintln!("--- {} ---\n{log}", self.log_file.display());
        }
    }
}

fn as_postgres(program: &str, args: &[&str]) -> String {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", OS_USER, "--"])
        .arg(Path::new(PG15_BIN).join(program))
        .args(args)
        .current_dir("/");
    process::run_stdout(&mut cmd).unwrap_or_else(|e| panic!("{e}"))
}

/// Queries until the instance accepts connections.
fn wait_ready(instance: &Instance) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match instance.query("SELECT 1") {
            Ok(_) => return,
            Err(PgError::NotReady { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("instance never became ready: {e}"),
        }
    }
}

/// A test directory postgres can enter.
fn test_dir() -> tempfile::TempDir {
    let tmp = tempfile::Builder::new()
        .prefix("walvault-pg-")
        .tempdir()
        .unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    tmp
}

/// An empty directory owned by postgres, mode 0700.
fn postgres_dir(path: &Path) -> PathBuf {
    fs::create_dir(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o700)).unwrap();
    Owner::apply(Owner::lookup(OS_USER), path).unwrap();
    path.to_path_buf()
}

fn initdb(pgdata: &Path) {
    as_postgres(
        "initdb",
        &[
            "-D",
            &pgdata.to_string_lossy(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ],
    );
}

fn skip(reason: String) {
    if std::env::var_os("CI").is_some() {
        panic!("{reason}");
    }
    eprintln!("skipping the real PostgreSQL test: {reason}");
}

fn settings(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

#[test]
fn a_real_postgresql_15_prepared_started_promoted_and_stopped() {
    if let Some(reason) = skip_reason() {
        return skip(reason);
    }
    let bins = PgBinaries::locate("/usr/lib/postgresql/{major}/bin", 15).unwrap();
    let owner = Owner::lookup(OS_USER);
    let tmp = test_dir();
    let pgdata = postgres_dir(&tmp.path().join("data"));
    let socket_dir = tmp.path().join("sock");
    let log_file = tmp.path().join("postgres.log");
    let _cleanup = Cleanup {
        bins: bins.clone(),
        pgdata: pgdata.clone(),
        log_file: log_file.clone(),
    };
    let port = free_port("127.0.0.1", (55900, 55949), &HashSet::new()).expect("a free port");
    let spec = InstanceSpec {
        pgdata: pgdata.clone(),
        port,
        listen_address: "127.0.0.1".into(),
        socket_dir: socket_dir.clone(),
        log_file: log_file.clone(),
        os_user: OS_USER.into(),
        superuser: "postgres".into(),
    };
    let data = pgdata.to_string_lossy().into_owned();
    initdb(&pgdata);

    // A normal start and stop: is_running sees it, prepare refuses it, stop_dir stops it.
    conf::private_dir(&socket_dir, owner).unwrap();
    conf::log_file(&log_file, owner).unwrap();
    let options = format!(
        "-p {port} -k {} -c listen_addresses=''",
        socket_dir.display()
    );
    let log = log_file.to_string_lossy().into_owned();
    as_postgres(
        "pg_ctl",
        &[
            "start", "-D", &data, "-l", &log, "-w", "-t", "60", "-s", "-o", &options,
        ],
    );
    assert!(is_running(&pgdata));
    let err = prepare(&spec, "t-0", &[], "standby.signal").unwrap_err();
    assert!(matches!(err, PgError::AlreadyRunning { .. }), "{err}");
    let err = Instance::start(&bins, spec.clone()).unwrap_err();
    assert!(matches!(err, PgError::AlreadyRunning { .. }), "{err}");
    stop_dir(&bins, &pgdata, OS_USER).unwrap();
    assert!(!is_running(&pgdata));
    stop_dir(&bins, &pgdata, OS_USER).unwrap();

    // As a standby with a recovery target it cannot reach (no WAL to replay): promoting ends
    // recovery before the target, which PostgreSQL makes FATAL.
    let recovery = settings(&[
        ("restore_command", "false"),
        ("recovery_target", "immediate"),
        ("recovery_target_action", "pause"),
    ]);
    prepare(&spec, "t-1", &recovery, "standby.signal").unwrap();
    let instance = Instance::start(&bins, spec.clone()).unwrap();
    wait_ready(&instance);
    let err = instance.promote().unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PgError::PostmasterExited { .. }), "{msg}");
    assert!(
        msg.contains("exited: ") && msg.contains("FATAL:  recovery ended before configured recovery target was reached; last lines of "),
        "{msg}"
    );
    let err = instance
        .wait_for(
            Goal::Promoted,
            Instant::now() + Duration::from_secs(30),
            &mut |_| {},
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("recovery ended before configured recovery target was reached"),
        "{err}"
    );
    assert!(!is_running(&pgdata));

    // As a standby without a target: up, in recovery, promoted, reachable over TCP.
    let recovery = settings(&[("restore_command", "false"), ("cluster_name", "it's a\\b")]);
    prepare(&spec, "t-2", &recovery, "standby.signal").unwrap();
    let sock_meta = fs::metadata(&socket_dir).unwrap();
    assert_eq!(sock_meta.mode() & 0o777, 0o700);
    assert_eq!(Some(sock_meta.uid()), owner.map(|o| o.uid));
    assert_eq!(
        fs::metadata(pgdata.join("standby.signal")).unwrap().uid(),
        sock_meta.uid()
    );
    let instance = Instance::start(&bins, spec.clone()).unwrap();
    wait_ready(&instance);
    assert_eq!(instance.query("SELECT pg_is_in_recovery()").unwrap(), "t");
    assert_eq!(instance.query("SHOW cluster_name").unwrap(), "it's a\\b");
    assert_eq!(instance.query("SHOW archive_mode").unwrap(), "off");
    assert_eq!(
        instance.query("SHOW unix_socket_directories").unwrap(),
        socket_dir.to_string_lossy()
    );
    let err = instance.query("SELEC 1").unwrap_err();
    assert!(matches!(err, PgError::Query { .. }), "{err}");
    assert!(err.to_string().contains("syntax error"), "{err}");

    let mut lines = Vec::new();
    let err = instance
        .wait_for(
            Goal::Paused,
            Instant::now() + Duration::from_millis(1500),
            &mut |l| lines.push(l.to_owned()),
        )
        .unwrap_err();
    assert!(matches!(err, PgError::Timeout { .. }), "{err}");
    assert!(
        err.to_string().contains("paused at the recovery target"),
        "{err}"
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("replayed to 0/"), "{lines:?}");

    instance.promote().unwrap();
    let reached = instance
        .wait_for(
            Goal::Promoted,
            Instant::now() + Duration::from_secs(60),
            &mut |_| {},
        )
        .unwrap();
    assert!(!reached.in_recovery);
    assert_eq!(reached.timeline, Some(2));
    assert!(!pgdata.join("standby.signal").exists());
    assert_eq!(
        instance.conninfo(),
        format!("host=127.0.0.1 port={port} user=postgres dbname=postgres")
    );
    let over_tcp = process::run_stdout(
        Command::new(bins.dir().join("psql"))
            .args(["-XAtq", "-d", &instance.conninfo(), "-c"])
            .arg("SELECT pg_is_in_recovery()"),
    )
    .unwrap();
    assert_eq!(over_tcp.trim(), "f");
    instance.stop().unwrap();
    assert!(!is_running(&pgdata));
    instance.stop().unwrap();

    // Prepared again (one block, one rule), started, then stopped from outside: a clean
    // shutdown, still in recovery.
    prepare(
        &spec,
        "t-3",
        &settings(&[("restore_command", "false")]),
        "standby.signal",
    )
    .unwrap();
    let auto = fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap();
    assert_eq!(auto.matches("# added by walvault").count(), 1, "{auto}");
    assert!(!auto.contains("cluster_name"), "{auto}");
    let hba = fs::read_to_string(pgdata.join("pg_hba.conf")).unwrap();
    assert_eq!(hba.matches("local all all trust").count(), 1);
    let instance = Instance::start(&bins, spec.clone()).unwrap();
    wait_ready(&instance);
    stop_dir(&bins, &pgdata, OS_USER).unwrap();
    let reached = instance
        .wait_for(
            Goal::ShutDown,
            Instant::now() + Duration::from_secs(30),
            &mut |_| {},
        )
        .unwrap();
    assert!(reached.in_recovery, "{reached:?}");
    // It stopped before wait_for could look: nothing was replayed while it watched.
    assert_eq!(reached.replay_lsn, None, "{reached:?}");

    // A setting PostgreSQL rejects: the postmaster exits, and the error quotes its log.
    prepare(
        &spec,
        "t-4",
        &settings(&[("shared_buffers", "lots")]),
        "standby.signal",
    )
    .unwrap();
    let instance = Instance::start(&bins, spec.clone()).unwrap();
    let err = instance
        .wait_for(
            Goal::Promoted,
            Instant::now() + Duration::from_secs(60),
            &mut |_| {},
        )
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PgError::PostmasterExited { .. }), "{msg}");
    assert!(
        msg.contains("exited: ") && msg.contains("FATAL:  configuration file"),
        "{msg}"
    );
    assert!(msg.contains("contains errors"), "{msg}");
    assert!(msg.contains("\"shared_buffers\": \"lots\""), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert!(!is_running(&pgdata));
}

/// A point-in-time recovery for real: a primary archiving into a directory, two copies made
/// with pg_basebackup, a restore point with a row written after it. One copy pauses at the
/// point (and is promoted), the other shuts down there.
#[test]
fn a_real_point_in_time_recovery_pauses_or_shuts_down_at_the_target() {
    if let Some(reason) = skip_reason() {
        return skip(reason);
    }
    let bins = PgBinaries::locate("/usr/lib/postgresql/{major}/bin", 15).unwrap();
    let owner = Owner::lookup(OS_USER);
    let tmp = test_dir();
    let archive = postgres_dir(&tmp.path().join("archive"));
    let primary = postgres_dir(&tmp.path().join("primary"));
    let socket_dir = tmp.path().join("sock");
    conf::private_dir(&socket_dir, owner).unwrap();
    let primary_log = tmp.path().join("primary.log");
    conf::log_file(&primary_log, owner).unwrap();
    let _primary_cleanup = Cleanup {
        bins: bins.clone(),
        pgdata: primary.clone(),
        log_file: primary_log.clone(),
    };
    let mut taken = HashSet::new();
    let port = free_port("127.0.0.1", (55950, 55999), &taken).expect("a free port");
    taken.insert(port);
    initdb(&primary);
    let conf = format!(
        "port = {port}\nlisten_addresses = ''\nunix_socket_directories = '{}'\n\
         archive_mode = on\narchive_command = 'cp %p {}/%f'\n",
        socket_dir.display(),
        archive.display()
    );
    let conf_path = primary.join("postgresql.conf");
    let mut text = fs::read_to_string(&conf_path).unwrap();
    text.push_str(&conf);
    fs::write(&conf_path, text).unwrap();
    let log = primary_log.to_string_lossy().into_owned();
    let data = primary.to_string_lossy().into_owned();
    as_postgres(
        "pg_ctl",
        &["start", "-D", &data, "-l", &log, "-w", "-t", "60", "-s"],
    );
    let sock = socket_dir.to_string_lossy().into_owned();
    let port_text = port.to_string();
    let psql = |sql: &str| {
        as_postgres(
            "psql",
            &[
                "-XAtq", "-h", &sock, "-p", &port_text, "-U", "postgres", "-d", "postgres", "-c",
                sql,
            ],
        )
        .trim()
        .to_owned()
    };
    psql("CREATE TABLE t AS SELECT 1 AS x");
    let clones: Vec<PathBuf> = ["pause", "shutdown"]
        .iter()
        .map(|name| {
            let clone = postgres_dir(&tmp.path().join(name));
            as_postgres(
                "pg_basebackup",
                &[
                    "-h",
                    &sock,
                    "-p",
                    &port_text,
                    "-U",
                    "postgres",
                    "-D",
                    &clone.to_string_lossy(),
                    "-X",
                    "none",
                    "-c",
                    "fast",
                    "--no-sync",
                ],
            );
            clone
        })
        .collect();
    psql("INSERT INTO t VALUES (2)");
    psql("SELECT pg_create_restore_point('before-3')");
    psql("INSERT INTO t VALUES (3)");
    let last = psql("SELECT pg_walfile_name(pg_switch_wal())");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !archive.join(&last).exists() {
        assert!(Instant::now() < deadline, "{last} never archived");
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_dir(&bins, &primary, OS_USER).unwrap();

    let recovery = |action: &str| {
        settings(&[
            (
                "restore_command",
                &format!("cp {}/%f %p", archive.display()),
            ),
            ("recovery_target_name", "before-3"),
            ("recovery_target_action", action),
        ])
    };
    let spec_for = |pgdata: &Path, port: u16| InstanceSpec {
        pgdata: pgdata.to_path_buf(),
        port,
        listen_address: "127.0.0.1".into(),
        socket_dir: socket_dir.clone(),
        log_file: pgdata.with_extension("log"),
        os_user: OS_USER.into(),
        superuser: "postgres".into(),
    };

    // Paused at the restore point: row 2 is there, row 3 is not; then promoted.
    let spec = spec_for(&clones[0], port);
    let _cleanup = Cleanup {
        bins: bins.clone(),
        pgdata: spec.pgdata.clone(),
        log_file: spec.log_file.clone(),
    };
    prepare(&spec, "pitr-pause", &recovery("pause"), "recovery.signal").unwrap();
    let instance = Instance::start(&bins, spec).unwrap();
    let mut lines = Vec::new();
    let reached = instance
        .wait_for(
            Goal::Paused,
            Instant::now() + Duration::from_secs(120),
            &mut |l| lines.push(l.to_owned()),
        )
        .unwrap();
    assert!(reached.in_recovery, "{reached:?}");
    assert!(reached.replay_lsn.is_some(), "{reached:?}");
    assert!(
        lines.iter().all(|l| l.starts_with("replayed to ")),
        "{lines:?}"
    );
    assert!(!lines.is_empty());
    assert_eq!(
        instance
            .query("SELECT string_agg(x::text, ',' ORDER BY x) FROM t")
            .unwrap(),
        "1,2"
    );
    instance.promote().unwrap();
    let promoted = instance
        .wait_for(
            Goal::Promoted,
            Instant::now() + Duration::from_secs(60),
            &mut |_| {},
        )
        .unwrap();
    assert!(!promoted.in_recovery);
    assert_eq!(promoted.timeline, Some(2));
    instance.query("INSERT INTO t VALUES (4)").unwrap();
    instance.stop().unwrap();

    // Shut down at the restore point by PostgreSQL itself.
    let spec = spec_for(&clones[1], port);
    let _cleanup = Cleanup {
        bins: bins.clone(),
        pgdata: spec.pgdata.clone(),
        log_file: spec.log_file.clone(),
    };
    prepare(
        &spec,
        "pitr-shutdown",
        &recovery("shutdown"),
        "recovery.signal",
    )
    .unwrap();
    let instance = Instance::start(&bins, spec).unwrap();
    let reached = instance
        .wait_for(
            Goal::ShutDown,
            Instant::now() + Duration::from_secs(120),
            &mut |_| {},
        )
        .unwrap();
    assert!(reached.in_recovery, "{reached:?}");
    assert!(!is_running(&clones[1]));
    let log = fs::read_to_string(clones[1].with_extension("log")).unwrap();
    assert!(log.contains("shutdown at recovery target"), "{log}");
}
