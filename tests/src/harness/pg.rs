//! PostgreSQL 15 instances run as the `postgres` OS user, each with its own port (listening
//! on 127.0.0.1 only) and its socket in the test directory. Dropped instances are stopped
//! with `-m immediate`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{free_port, run, run_ok, Log, Run, TestDir, PG_USER};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PG_TIMEOUT: Duration = Duration::from_secs(180);

/// `Err(reason)` when PostgreSQL 15, `runuser` or the `postgres` user are missing.
pub(super) fn check_postgres() -> Result<(), String> {
    for bin in [
        "initdb",
        "pg_ctl",
        "postgres",
        "psql",
        "pgbench",
        "pg_basebackup",
    ] {
        if !Path::new(PG_BIN).join(bin).exists() {
            return Err(format!("{PG_BIN}/{bin} is missing (postgresql-15)"));
        }
    }
    let ok = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ok("id", &["-u", PG_USER]) {
        return Err(format!("there is no `{PG_USER}` OS user"));
    }
    if !ok("runuser", &["-u", PG_USER, "--", "true"]) {
        return Err(format!(
            "cannot run commands as `{PG_USER}` with runuser (the tests must run as root)"
        ));
    }
    Ok(())
}

#[derive(Debug)]
pub struct Pg {
    name: String,
    /// The instance's directory (owned by postgres): `data/`, `postgres.log`, the socket.
    dir: PathBuf,
    data: PathBuf,
    port: u16,
    log: Log,
    running: bool,
}

impl Pg {
    fn new(td: &TestDir, name: &str) -> Self {
        let dir = td.mkdir_postgres(format!("pg-{name}"));
        Self {
            name: name.to_owned(),
            data: dir.join("data"),
            dir,
            port: free_port(),
            log: td.log().clone(),
            running: false,
        }
    }

    /// An instance directory whose data directory does not exist yet: for a data directory
    /// made by other means (such as a clone of a backup mounted at [`Pg::data_dir`]), which
    /// then gets our settings with [`Pg::append_conf`]. Nothing is started.
    pub fn empty(td: &TestDir, name: &str) -> Self {
        Self::new(td, name)
    }

    /// `initdb` a new cluster (trust auth, superuser `postgres`) and append `conf` lines to its
    /// `postgresql.conf` after our own port/socket settings.
    pub fn init(td: &TestDir, name: &str, conf: &[String]) -> Self {
        let pg = Self::new(td, name);
        pg.as_postgres(
            "initdb",
            &[
                "-D",
                &pg.data.to_string_lossy(),
                "--auth=trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        pg.append_conf(conf);
        pg
    }

    /// A copy of `primary` made with `pg_basebackup -X none` (so it carries no WAL of its
    /// own), with `conf` appended and, if `standby`, a `standby.signal`. Nothing is started.
    pub fn basebackup(
        td: &TestDir,
        name: &str,
        primary: &Pg,
        conf: &[String],
        standby: bool,
    ) -> Self {
        let pg = Self::new(td, name);
        pg.as_postgres(
            "pg_basebackup",
            &[
                "-h",
                &primary.socket_dir(),
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                &pg.data.to_string_lossy(),
                "-X",
                "none",
                "-c",
                "fast",
                "--no-sync",
            ],
        );
        // The primary's postgresql.conf came along: later lines win, so ours go last.
        pg.append_conf(conf);
        if standby {
            pg.write_file_in_data("standby.signal", "");
        }
        pg
    }

    /// Appends our port and socket settings, then `conf`, to `postgresql.conf` (later lines
    /// win over earlier ones).
    pub fn append_conf(&self, conf: &[String]) {
        let mut text = format!(
            "\n# walvault-tests\nport = {}\nlisten_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\nlogging_collector = off\n\
             log_line_prefix = '%m [%p] %b '\n",
            self.port,
            self.socket_dir()
        );
        for line in conf {
            text.push_str(line);
            text.push('\n');
        }
        let path = self.data.join("postgresql.conf");
        let mut old = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        old.push_str(&text);
        std::fs::write(&path, old).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self.log.line(&format!(
            "{}: appended to postgresql.conf:{text}",
            self.name
        ));
    }

    /// Writes a file in the data directory, owned by `postgres`, mode 0600.
    pub fn write_file_in_data(&self, rel: &str, content: &str) {
        let p = self.data.join(rel);
        std::fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        super::chown_postgres(&p);
        super::chmod(&p, 0o600);
    }

    /// Runs a PostgreSQL program as `postgres` from the instance's directory (so its cwd is
    /// readable by it).
    fn command(&self, bin: &str, args: &[&str]) -> Command {
        let mut c = Command::new("runuser");
        c.args(["-u", PG_USER, "--"])
            .arg(Path::new(PG_BIN).join(bin))
            .args(args)
            .current_dir(&self.dir)
            .env("PGCONNECT_TIMEOUT", "10");
        c
    }

    fn as_postgres(&self, bin: &str, args: &[&str]) -> String {
        run_ok(&self.log, &mut self.command(bin, args), PG_TIMEOUT)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn wal_dir(&self) -> PathBuf {
        self.data.join("pg_wal")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// The server's log (stderr of postgres, where archive_command's stderr also lands).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A libpq connection string for this instance, as `walvault backup --conninfo` takes it.
    pub fn conninfo(&self) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres",
            self.socket_dir(),
            self.port
        )
    }

    pub fn socket_dir(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    /// `pg_current_wal_lsn()`.
    pub fn current_lsn(&self) -> walvault_proto::Lsn {
        let text = self.psql("SELECT pg_current_wal_lsn()");
        text.parse()
            .unwrap_or_else(|e| panic!("{}: pg_current_wal_lsn() gave {text:?}: {e}", self.name))
    }

    /// `pg_ctl start -w`: returns once the instance accepts connections.
    pub fn start(&mut self) {
        self.pg_ctl_start(&["-w", "-t", "150"]);
    }

    fn pg_ctl_start(&mut self, wait: &[&str]) {
        let data = self.data.to_string_lossy().into_owned();
        let log = self.log_path().to_string_lossy().into_owned();
        let mut args = vec!["-D", &data, "-l", &log];
        args.extend_from_slice(wait);
        args.push("start");
        self.as_postgres("pg_ctl", &args);
        self.running = true;
    }

    /// `pg_ctl start` without waiting for connections: for a recovery the test watches (and
    /// that may fail). Returns once the postmaster runs (its pid file is there) or has already
    /// given up (its log says it shut down).
    pub fn start_no_wait(&mut self) {
        let log_before = self.server_log().len();
        self.pg_ctl_start(&["-W"]);
        super::wait_until(
            &format!("{} to start or give up", self.name),
            Duration::from_secs(60),
            || {
                let log = self.server_log();
                let gave_up = log
                    .get(log_before..)
                    .is_some_and(|l| l.contains("database system is shut down"));
                (self.data.join("postmaster.pid").exists() || gave_up).then_some(())
            },
        );
    }

    /// Moves the log aside (to `postgres.log.<n>`), so that what a next start logs can be read
    /// on its own.
    pub fn rotate_log(&self) {
        let path = self.log_path();
        for n in 1.. {
            let aside = path.with_extension(format!("log.{n}"));
            if !aside.exists() {
                if path.exists() {
                    std::fs::rename(&path, &aside)
                        .unwrap_or_else(|e| panic!("rename {}: {e}", path.display()));
                }
                return;
            }
        }
    }

    /// Whether a postmaster runs on the data directory (`pg_ctl status`).
    pub fn is_running(&self) -> bool {
        let r = run(
            &self.log,
            &mut self.command("pg_ctl", &["-D", &self.data.to_string_lossy(), "status"]),
            PG_TIMEOUT,
        );
        r.success()
    }

    /// Waits until the postmaster is gone (it gave up, say); false if it still runs after
    /// `timeout`.
    pub fn wait_stopped(&mut self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.is_running() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        self.running = false;
        true
    }

    /// `pg_ctl stop -w -m <mode>` (smart, fast or immediate).
    pub fn stop_mode(&mut self, mode: &str) {
        self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-w",
                "-t",
                "150",
                "-m",
                mode,
                "stop",
            ],
        );
        self.running = false;
    }

    pub fn stop(&mut self) {
        self.stop_mode("fast");
    }

    /// Turns data checksums on (`pg_checksums --enable` on the stopped cluster), then starts
    /// it again.
    pub fn enable_data_checksums(&mut self) {
        self.stop();
        let data = self.data.to_string_lossy().into_owned();
        self.as_postgres("pg_checksums", &["--enable", "-D", &data]);
        self.start();
        assert_eq!(self.psql("SHOW data_checksums"), "on");
    }

    /// `psql -XAtq` on database `postgres`, stopping at the first error; panics on failure.
    pub fn psql(&self, sql: &str) -> String {
        let r = self.try_psql(sql);
        assert!(
            r.success(),
            "psql on {} failed: {}",
            self.name,
            r.describe()
        );
        r.stdout.trim_end_matches('\n').to_owned()
    }

    pub fn try_psql(&self, sql: &str) -> Run {
        let port = self.port.to_string();
        let sock = self.socket_dir();
        run(
            &self.log,
            &mut self.command(
                "psql",
                &[
                    "-XAtq",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    &sock,
                    "-p",
                    &port,
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-c",
                    sql,
                ],
            ),
            PG_TIMEOUT,
        )
    }

    /// `pgbench <args> postgres`; returns its stdout.
    pub fn pgbench(&self, args: &[&str]) -> String {
        let port = self.port.to_string();
        let sock = self.socket_dir();
        let mut all = vec!["-h", &sock, "-p", &port, "-U", "postgres"];
        all.extend_from_slice(args);
        all.push("postgres");
        self.as_postgres("pgbench", &all)
    }

    /// Switches to a new WAL segment and returns the name of the segment it completed.
    pub fn switch_wal(&self) -> String {
        self.psql("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// `(last_archived_wal, archived_count, failed_count)` from `pg_stat_archiver`.
    pub fn archiver(&self) -> (String, u64, u64) {
        let row = self.psql(
            "SELECT coalesce(last_archived_wal, ''), archived_count, failed_count \
             FROM pg_stat_archiver",
        );
        let mut f = row.split('|');
        let name = f.next().unwrap_or_default().to_owned();
        let num = |s: Option<&str>| s.and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        (name, num(f.next()), num(f.next()))
    }

    /// Waits until the archiver reports `segment` (or a later one) archived.
    pub fn wait_archived(&self, segment: &str, timeout: Duration) {
        super::wait_until(
            &format!("{} to archive {segment} (see its postgres.log)", self.name),
            timeout,
            || {
                let (last, _, _) = self.archiver();
                (!last.is_empty() && last.len() == segment.len() && last.as_str() >= segment)
                    .then_some(())
            },
        );
    }

    /// Names of the files PostgreSQL considers archived: `pg_wal/archive_status/*.done`.
    pub fn done_files(&self) -> Vec<String> {
        self.archive_status(".done")
    }

    /// Segments the archiver has not managed to push yet: `pg_wal/archive_status/*.ready`
    /// (segments only).
    pub fn ready_segments(&self) -> Vec<String> {
        let mut names = self.archive_status(".ready");
        names.retain(|n| n.len() == 24);
        names
    }

    /// `pg_wal/archive_status/*<suffix>`, without the suffix, sorted.
    fn archive_status(&self, suffix: &str) -> Vec<String> {
        let status = self.wal_dir().join("archive_status");
        let mut names: Vec<String> = std::fs::read_dir(&status)
            .unwrap_or_else(|e| panic!("read {}: {e}", status.display()))
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(suffix))
                    .map(str::to_owned)
            })
            .collect();
        names.sort();
        names
    }

    /// `system_identifier` of `pg_control_system()`.
    pub fn system_identifier(&self) -> u64 {
        self.psql("SELECT system_identifier FROM pg_control_system()")
            .parse()
            .expect("a system identifier")
    }

    /// Every user table, as `schema.table`.
    pub fn tables(&self) -> Vec<String> {
        self.psql(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' \
             AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1",
        )
        .lines()
        .map(str::to_owned)
        .collect()
    }

    /// Per user table: `"<rows> rows, sum <sum(hashtext(t.*::text))>"`. Equal maps mean equal
    /// contents (the row count also lets a test check it compared non-empty tables).
    pub fn checksums(&self) -> BTreeMap<String, String> {
        self.tables()
            .into_iter()
            .map(|t| {
                let v = self.psql(&format!(
                    "SELECT count(*) || ' rows, sum ' || \
                     coalesce(sum(hashtext(t.*::text))::text, 'null') FROM {t} t"
                ));
                (t, v)
            })
            .collect()
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let r = run(
            &self.log,
            &mut self.command(
                "pg_ctl",
                &[
                    "-D",
                    &self.data.to_string_lossy(),
                    "-w",
                    "-m",
                    "immediate",
                    "stop",
                ],
            ),
            PG_TIMEOUT,
        );
        if !r.success() {
            eprintln!("could not stop PostgreSQL {}: {}", self.name, r.describe());
        }
    }
}
