//! Making a restored data directory start on this server: the clone comes from a base backup
//! whose configuration was written for another host (its ports, archive_command, replication
//! partners, maybe configuration files kept in /etc). [`prepare`] appends our settings to
//! `postgresql.auto.conf` (appended lines win), lets the server in over its private socket,
//! and leaves the signal file that starts recovery.
//!
//! Each block we add is marked, and a second `prepare` replaces it rather than stacking a copy.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::backup::files::{make_dirs, permissions, write_durably, Owner};

use super::instance::InstanceSpec;
use super::{io_error, running_pid, PgError, RunAs};

/// The longest path of a Unix socket (`sun_path` holds 108 bytes with the final NUL).
const MAX_SOCKET_PATH: usize = 107;

const AUTO_CONF_BEGIN: &str = "# added by walvault for restore";
const AUTO_CONF_END: &str = "# end of walvault settings";
const HBA_BEGIN: &str = "# added by walvault for restore";
const HBA_END: &str = "# end of walvault rules";

/// Signal files PostgreSQL 12+ knows; a clone keeps exactly the one asked for.
const SIGNALS: [&str; 2] = ["recovery.signal", "standby.signal"];

/// A value as a PostgreSQL configuration-file string: in quotes, with quotes doubled and
/// backslashes escaped (the file's lexer reads `\` escapes), line breaks as `\n`/`\r`.
pub(crate) fn guc_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A setting name PostgreSQL accepts: a letter or `_`, then letters, digits, `_`, `$`, and
/// dots for extension settings (`auto_explain.log_min_duration`).
fn valid_guc_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '.'))
}

/// Settings the server itself decides for the instances it starts: recovery, where it
/// listens, what it archives and replicates, and the log it reads.
const OWNED_SETTINGS: &[&str] = &[
    "port",
    "listen_addresses",
    "unix_socket_directories",
    "hot_standby",
    "logging_collector",
    "log_destination",
    "lc_messages",
    "synchronous_standby_names",
    "restore_command",
    "hba_file",
    "ident_file",
    "config_file",
    "data_directory",
    "external_pid_file",
    "shared_buffers",
    "recovery_end_command",
    "recovery_min_apply_delay",
];

/// Why an operator may not set `name` for the instances the server starts (`None`: they may).
pub(crate) fn refused_setting(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if !valid_guc_name(name) {
        Some("is not a setting name")
    } else if lower == "shared_buffers" {
        Some("has its own key: restore.shared_buffers")
    } else if OWNED_SETTINGS.contains(&lower.as_str())
        || ["recovery_target", "archive_", "primary_"]
            .iter()
            .any(|p| lower.starts_with(p))
    {
        Some("is set by the server for every instance it starts; remove it")
    } else {
        None
    }
}

/// One line for a comment: no line breaks or other control characters.
fn comment_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The block [`prepare`] appends to `postgresql.auto.conf`.
pub(crate) struct SettingsBlock<'a> {
    pub label: &'a str,
    pub port: u16,
    pub listen_address: &'a str,
    pub socket_dir: &'a Path,
    /// Set when the configuration points at files outside the data directory.
    pub hba_file: Option<&'a Path>,
    pub ident_file: Option<&'a Path>,
    pub settings: &'a [(String, String)],
}

impl SettingsBlock<'_> {
    pub(crate) fn render(&self) -> String {
        let mut lines = vec![
            format!("{AUTO_CONF_BEGIN} {}", comment_text(self.label)),
            "# This copy runs on the backup server: it must not archive into, replicate from or"
                .to_owned(),
            "# hold up the source, and the server watches its recovery over a private socket."
                .to_owned(),
            format!("port = {}", self.port),
            format!("listen_addresses = {}", guc_quote(self.listen_address)),
            format!(
                "unix_socket_directories = {}",
                guc_quote(&self.socket_dir.to_string_lossy())
            ),
            "archive_mode = off".to_owned(),
            "hot_standby = on".to_owned(),
            "logging_collector = off".to_owned(),
            "log_destination = 'stderr'".to_owned(),
            // The server reads the log to tell a clean shutdown from a failure.
            "lc_messages = 'C'".to_owned(),
            "primary_conninfo = ''".to_owned(),
            "primary_slot_name = ''".to_owned(),
            "synchronous_standby_names = ''".to_owned(),
            "archive_cleanup_command = ''".to_owned(),
            "recovery_end_command = ''".to_owned(),
        ];
        if let Some(hba) = self.hba_file {
            lines.push(format!("hba_file = {}", guc_quote(&hba.to_string_lossy())));
        }
        if let Some(ident) = self.ident_file {
            lines.push(format!(
                "ident_file = {}",
                guc_quote(&ident.to_string_lossy())
            ));
        }
        for (name, value) in self.settings {
            lines.push(format!("{name} = {}", guc_quote(value)));
        }
        lines.push(AUTO_CONF_END.to_owned());
        let mut text = lines.join("\n");
        text.push('\n');
        text
    }
}

/// `text` without the lines from a line starting with `begin` through the line `end` (to the
/// end of the text if `end` is missing): a block an earlier `prepare` added.
fn strip_block(text: &str, begin: &str, end: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut inside = false;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end();
        if !inside && bare.starts_with(begin) {
            inside = true;
        }
        if !inside {
            out.push_str(line);
        } else if bare == end {
            inside = false;
        }
    }
    out
}

/// `postgresql.auto.conf` with `block` appended (replacing one an earlier `prepare` added).
pub(crate) fn auto_conf_with(existing: &str, block: &str) -> String {
    let mut text = strip_block(existing, AUTO_CONF_BEGIN, AUTO_CONF_END);
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(block);
    text
}

/// `pg_hba.conf` with our `local all all trust` rule first (rules match top down).
pub(crate) fn hba_with_local_trust(existing: &str, label: &str, os_user: &str) -> String {
    let rest = strip_block(existing, HBA_BEGIN, HBA_END);
    format!(
        "{HBA_BEGIN} {label}: the server watches recovery over a private socket\n\
         # directory (mode 0700) that only it and the OS user {os_user:?} can enter, so local\n\
         # connections are trusted; TCP connections keep the rules below.\n\
         local all all trust\n\
         {HBA_END}\n{rest}",
        label = comment_text(label),
        os_user = comment_text(os_user),
    )
}

/// The value of the last line setting `name` in a configuration file's text (names are
/// case-insensitive; `name = value` or `name value`; quoted values unescaped).
pub(crate) fn conf_value(text: &str, name: &str) -> Option<String> {
    let mut found = None;
    for line in text.lines() {
        let line = line.trim_start();
        let key_len = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '$')))
            .unwrap_or(line.len());
        if key_len == 0 || !line[..key_len].eq_ignore_ascii_case(name) {
            continue;
        }
        let rest = line[key_len..].trim_start();
        let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
        found = Some(match rest.strip_prefix('\'') {
            Some(quoted) => unquote(quoted),
            None => rest
                .split(|c: char| c.is_whitespace() || c == '#')
                .next()
                .unwrap_or("")
                .to_owned(),
        });
    }
    found
}

/// The inside of a quoted configuration value, after its opening quote.
fn unquote(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' if chars.peek() == Some(&'\'') => {
                chars.next();
                out.push('\'');
            }
            '\'' => break,
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    out
}

/// The standard `file` of the data directory, if the configuration (`conf`, the concatenated
/// configuration files) points `setting` somewhere else.
fn redirected(conf: &str, setting: &str, pgdata: &Path, file: &str) -> Option<PathBuf> {
    let ours = pgdata.join(file);
    let value = conf_value(conf, setting)?;
    if value.is_empty() {
        return None;
    }
    // Relative paths are taken from the data directory, the postmaster's working directory.
    (pgdata.join(&value) != ours).then_some(ours)
}

fn check_absolute(what: &'static str, path: &Path) -> Result<(), PgError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(PgError::RelativePath {
            what,
            path: path.display().to_string(),
        })
    }
}

/// Checks what an [`InstanceSpec`] must hold before anything is written or started.
pub(crate) fn check_spec(spec: &InstanceSpec) -> Result<(), PgError> {
    check_absolute("the data directory", &spec.pgdata)?;
    check_absolute("the socket directory", &spec.socket_dir)?;
    check_absolute("the log file", &spec.log_file)?;
    let socket = spec.socket_dir.join(format!(".s.PGSQL.{}", spec.port));
    let len = socket.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(PgError::SocketPathTooLong {
            path: socket.display().to_string(),
            len,
            max: MAX_SOCKET_PATH,
        });
    }
    Ok(())
}

fn read_optional(path: &Path) -> Result<Option<String>, PgError> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error("read", path)(e)),
    }
}

fn remove_optional(path: &Path) -> Result<(), PgError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("remove", path)(e)),
    }
}

fn write_file(path: &Path, text: &str, owner: Option<Owner>) -> Result<(), PgError> {
    write_durably(path, text.as_bytes(), owner).map_err(io_error("write", path))
}

/// `dir` exists, is a real directory, mode 0700 and owned by `owner`.
/// One that exists already must belong to us or to the OS user: in a shared place like /tmp,
/// someone else's directory of that name is not private, whatever we chmod it to.
pub(crate) fn private_dir(dir: &Path, owner: Option<Owner>) -> Result<(), PgError> {
    make_dirs(dir, owner).map_err(io_error("create directory", dir))?;
    let meta = fs::symlink_metadata(dir).map_err(io_error("inspect", dir))?;
    let refuse = |why: String| {
        Err(io_error("use as a private directory", dir)(
            std::io::Error::new(ErrorKind::AlreadyExists, why),
        ))
    };
    if !meta.is_dir() {
        return refuse("it exists and is not a directory".into());
    }
    let ours = fs::metadata("/proc/self").map(|m| m.uid()).ok();
    if Some(meta.uid()) != ours && owner.is_none_or(|o| o.uid != meta.uid()) {
        return refuse(format!("it exists and belongs to uid {}", meta.uid()));
    }
    fs::set_permissions(dir, permissions(0o700)).map_err(io_error("set permissions of", dir))?;
    Owner::apply(owner, dir).map_err(io_error("change owner of", dir))
}

/// The log file exists and the OS user can append to it.
pub(crate) fn log_file(path: &Path, owner: Option<Owner>) -> Result<(), PgError> {
    if let Some(parent) = path.parent() {
        make_dirs(parent, owner).map_err(io_error("create directory", parent))?;
    }
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error("create", path))?;
    Owner::apply(owner, path).map_err(io_error("change owner of", path))
}

/// Gives everything under `dir` (not following symlinks) to `owner`.
fn chown_tree(dir: &Path, owner: Owner) -> Result<(), PgError> {
    Owner::apply(Some(owner), dir).map_err(io_error("change owner of", dir))?;
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(io_error("inspect", &path))?;
        if kind.is_dir() {
            chown_tree(&path, owner)?;
        } else {
            Owner::apply(Some(owner), &path).map_err(io_error("change owner of", &path))?;
        }
    }
    Ok(())
}

/// The data directory is owned by the OS user and mode 0700 (PostgreSQL refuses others).
fn own_data_dir(pgdata: &Path, owner: Option<Owner>) -> Result<(), PgError> {
    let meta = fs::metadata(pgdata).map_err(io_error("inspect", pgdata))?;
    if let Some(o) = owner {
        if meta.uid() != o.uid || meta.gid() != o.gid {
            tracing::warn!(pgdata = %pgdata.display(), uid = o.uid, "data directory had another owner; changing the owner of all its files");
            chown_tree(pgdata, o)?;
        }
    }
    if meta.mode() & 0o777 != 0o700 {
        fs::set_permissions(pgdata, permissions(0o700))
            .map_err(io_error("set permissions of", pgdata))?;
    }
    Ok(())
}

const MINIMAL_CONF: &str = "\
# written by walvault: the backup held no postgresql.conf (the source keeps its configuration
# outside the data directory). PostgreSQL's defaults apply, with the settings for this copy
# in postgresql.auto.conf.
";

const MINIMAL_HBA: &str = "\
# written by walvault: the backup held no pg_hba.conf (the source keeps its configuration
# outside the data directory). Over TCP, every role needs its password.
host all all all md5
";

const MINIMAL_IDENT: &str = "\
# written by walvault: the backup held no pg_ident.conf.
";

/// Prepares a restored data directory to start on this server:
/// - removes a stale postmaster.pid / postmaster.opts (refuses if postmaster.pid names a live
///   process),
/// - appends to postgresql.auto.conf a block starting with `# added by walvault for restore
///   <label>` with our port, addresses, private socket directory, no archiving, hot standby,
///   logging to the log file, no ties to the source's replication, then `settings` (name,
///   value), and creates `signal` ("recovery.signal" or "standby.signal", removing the other),
/// - writes a minimal postgresql.conf / pg_hba.conf / pg_ident.conf when missing (Debian keeps
///   them in /etc), and points hba_file / ident_file at the data directory's files when the
///   configuration points elsewhere,
/// - puts `local all all trust` first in pg_hba.conf (see [`hba_with_local_trust`]),
/// - gives what it creates, and the data directory (0700), to the OS user.
pub fn prepare(
    spec: &InstanceSpec,
    label: &str,
    settings: &[(String, String)],
    signal: &str,
) -> Result<(), PgError> {
    check_spec(spec)?;
    let pgdata_text = || spec.pgdata.display().to_string();
    if !SIGNALS.contains(&signal) {
        return Err(PgError::InvalidSignal {
            signal: signal.to_owned(),
        });
    }
    for (name, value) in settings {
        let reason = if !valid_guc_name(name) {
            Some("not a setting name")
        } else if value.contains('\0') {
            Some("the value holds a NUL byte")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(PgError::InvalidSetting {
                pgdata: pgdata_text(),
                name: name.clone(),
                reason,
            });
        }
    }
    let run_as = RunAs::resolve(&spec.os_user)?;
    let owner = run_as.owner();
    let pgdata = spec.pgdata.as_path();
    super::data_major(pgdata)?;
    if let Some(pid) = running_pid(pgdata) {
        return Err(PgError::AlreadyRunning {
            pgdata: pgdata_text(),
            pid,
        });
    }
    remove_optional(&pgdata.join("postmaster.pid"))?;
    remove_optional(&pgdata.join("postmaster.opts"))?;
    own_data_dir(pgdata, owner)?;
    private_dir(&spec.socket_dir, owner)?;
    log_file(&spec.log_file, owner)?;

    let conf_path = pgdata.join("postgresql.conf");
    let conf = match read_optional(&conf_path)? {
        Some(text) => text,
        None => {
            write_file(&conf_path, MINIMAL_CONF, owner)?;
            MINIMAL_CONF.to_owned()
        }
    };
    let auto_path = pgdata.join("postgresql.auto.conf");
    let auto = read_optional(&auto_path)?.unwrap_or_default();
    let effective = format!(
        "{conf}\n{}",
        strip_block(&auto, AUTO_CONF_BEGIN, AUTO_CONF_END)
    );
    let hba_file = redirected(&effective, "hba_file", pgdata, "pg_hba.conf");
    let ident_file = redirected(&effective, "ident_file", pgdata, "pg_ident.conf");
    let block = SettingsBlock {
        label,
        port: spec.port,
        listen_address: &spec.listen_address,
        socket_dir: &spec.socket_dir,
        hba_file: hba_file.as_deref(),
        ident_file: ident_file.as_deref(),
        settings,
    };
    write_file(&auto_path, &auto_conf_with(&auto, &block.render()), owner)?;

    let hba_path = pgdata.join("pg_hba.conf");
    let hba = read_optional(&hba_path)?.unwrap_or_else(|| MINIMAL_HBA.to_owned());
    write_file(
        &hba_path,
        &hba_with_local_trust(&hba, label, &spec.os_user),
        owner,
    )?;
    let ident_path = pgdata.join("pg_ident.conf");
    if !ident_path.exists() {
        write_file(&ident_path, MINIMAL_IDENT, owner)?;
    }

    for other in SIGNALS.iter().filter(|s| **s != signal) {
        remove_optional(&pgdata.join(other))?;
    }
    write_file(&pgdata.join(signal), "", owner)?;
    tracing::info!(pgdata = %pgdata.display(), label, signal, port = spec.port, "prepared data directory");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guc_values_are_quoted_for_the_configuration_lexer() {
        assert_eq!(guc_quote("plain"), "'plain'");
        assert_eq!(guc_quote(""), "''");
        assert_eq!(guc_quote("it's"), "'it''s'");
        assert_eq!(
            guc_quote("cp %p /x\\y 'z'"),
            "'cp %p /x\\\\y ''z'''",
            "backslashes doubled, quotes doubled"
        );
        assert_eq!(guc_quote("a\nb"), "'a\\nb'");
        // What we quote reads back the same.
        for v in [
            "it's",
            "a\\b",
            "x\ny",
            "walvault restore-command --fetch %f %p",
        ] {
            let line = format!("restore_command = {}", guc_quote(v));
            assert_eq!(conf_value(&line, "restore_command").as_deref(), Some(v));
        }
    }

    #[test]
    fn operators_cannot_set_what_the_server_owns() {
        assert_eq!(refused_setting("maintenance_io_concurrency"), None);
        assert_eq!(refused_setting("auto_explain.log_min_duration"), None);
        assert_eq!(refused_setting("recovery_prefetch"), None);
        for owned in [
            "port",
            "Restore_Command",
            "recovery_target_time",
            "archive_mode",
        ] {
            assert!(
                refused_setting(owned)
                    .unwrap()
                    .contains("set by the server"),
                "{owned}"
            );
        }
        assert!(refused_setting("shared_buffers")
            .unwrap()
            .contains("restore.shared_buffers"));
        assert!(refused_setting("a = 1")
            .unwrap()
            .contains("not a setting name"));
    }

    #[test]
    fn setting_names_are_checked() {
        assert!(valid_guc_name("recovery_target_time"));
        assert!(valid_guc_name("auto_explain.log_min_duration"));
        assert!(!valid_guc_name(""));
        assert!(!valid_guc_name("1abc"));
        assert!(!valid_guc_name("port = 1\nshared_buffers"));
        assert!(!valid_guc_name("a b"));
    }

    fn block(settings: &[(String, String)], hba: Option<&Path>) -> String {
        SettingsBlock {
            label: "r-42\nsneaky",
            port: 54401,
            listen_address: "127.0.0.1",
            socket_dir: Path::new("/run/walvault/r-42"),
            hba_file: hba,
            ident_file: None,
            settings,
        }
        .render()
    }

    #[test]
    fn the_appended_block_overrides_the_source_and_ends_with_the_settings() {
        let settings = vec![
            (
                "restore_command".to_owned(),
                "walvault fetch %f %p".to_owned(),
            ),
            (
                "recovery_target_name".to_owned(),
                "before 'drop'".to_owned(),
            ),
        ];
        let text = block(&settings, None);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "# added by walvault for restore r-42 sneaky");
        for expected in [
            "port = 54401",
            "listen_addresses = '127.0.0.1'",
            "unix_socket_directories = '/run/walvault/r-42'",
            "archive_mode = off",
            "hot_standby = on",
            "logging_collector = off",
            "primary_conninfo = ''",
        ] {
            assert!(lines.contains(&expected), "{expected} missing in\n{text}");
        }
        assert!(!text.contains("hba_file"));
        let n = lines.len();
        assert_eq!(lines[n - 3], "restore_command = 'walvault fetch %f %p'");
        assert_eq!(lines[n - 2], "recovery_target_name = 'before ''drop'''");
        assert_eq!(lines[n - 1], AUTO_CONF_END);
        // Every line is a comment or a setting PostgreSQL reads back as written.
        assert_eq!(
            conf_value(&text, "recovery_target_name").as_deref(),
            Some("before 'drop'")
        );
        let with_hba = block(&[], Some(Path::new("/clone/pg_hba.conf")));
        assert!(with_hba.contains("\nhba_file = '/clone/pg_hba.conf'\n"));
    }

    #[test]
    fn a_second_prepare_replaces_the_block() {
        let source = "# Do not edit this file manually!\nwork_mem = '64MB'";
        let once = auto_conf_with(source, &block(&[], None));
        assert!(once.starts_with("# Do not edit this file manually!\nwork_mem = '64MB'\n# added"));
        let settings = vec![("recovery_target".to_owned(), "immediate".to_owned())];
        let twice = auto_conf_with(&once, &block(&settings, None));
        assert_eq!(twice.matches(AUTO_CONF_BEGIN).count(), 1, "{twice}");
        assert!(twice.contains("work_mem = '64MB'\n"));
        assert!(twice.ends_with("recovery_target = 'immediate'\n# end of walvault settings\n"));
        // Settings ALTER SYSTEM wrote after our block survive.
        let altered = format!("{once}max_connections = '200'\n");
        let again = auto_conf_with(&altered, &block(&[], None));
        assert!(again.contains("max_connections = '200'\n# added by walvault"));
    }

    #[test]
    fn hba_trusts_local_connections_first_and_keeps_the_source_rules() {
        let source = "# TYPE DATABASE USER ADDRESS METHOD\nlocal all all peer\nhost all all 10.0.0.0/8 scram-sha-256\n";
        let hba = hba_with_local_trust(source, "r-7", "postgres");
        let rules: Vec<&str> = hba
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .collect();
        assert_eq!(
            rules,
            [
                "local all all trust",
                "local all all peer",
                "host all all 10.0.0.0/8 scram-sha-256"
            ]
        );
        assert!(hba.starts_with("# added by walvault for restore r-7: "));
        assert!(hba.contains("0700"));
        assert!(hba.ends_with(source));
        let again = hba_with_local_trust(&hba, "r-8", "postgres");
        assert_eq!(again.matches("local all all trust").count(), 1, "{again}");
        assert!(again.starts_with("# added by walvault for restore r-8: "));
        assert!(again.ends_with(source));
    }

    #[test]
    fn conf_values_are_read_like_postgresql_does() {
        let conf = "\
#hba_file = '/commented/out'
data_directory = '/var/lib/postgresql/15/main'
HBA_FILE = '/etc/postgresql/15/main/pg_hba.conf'   # the real one
ident_file '/etc/postgresql/15/main/pg_ident.conf'
port = 5433 # comment
hba_file_x = 'not it'
";
        assert_eq!(
            conf_value(conf, "hba_file").as_deref(),
            Some("/etc/postgresql/15/main/pg_hba.conf")
        );
        assert_eq!(
            conf_value(conf, "ident_file").as_deref(),
            Some("/etc/postgresql/15/main/pg_ident.conf")
        );
        assert_eq!(conf_value(conf, "port").as_deref(), Some("5433"));
        assert_eq!(conf_value(conf, "listen_addresses"), None);
        // The last line wins.
        assert_eq!(
            conf_value("port = 1\nport = 2\n", "port").as_deref(),
            Some("2")
        );
    }

    #[test]
    fn hba_and_ident_files_are_redirected_only_when_elsewhere() {
        let pgdata = Path::new("/clone");
        let conf = "hba_file = '/etc/postgresql/15/main/pg_hba.conf'\n";
        assert_eq!(
            redirected(conf, "hba_file", pgdata, "pg_hba.conf"),
            Some(PathBuf::from("/clone/pg_hba.conf"))
        );
        assert_eq!(
            redirected(conf, "ident_file", pgdata, "pg_ident.conf"),
            None
        );
        for same in [
            "hba_file = 'pg_hba.conf'",
            "hba_file = '/clone/pg_hba.conf'",
        ] {
            assert_eq!(redirected(same, "hba_file", pgdata, "pg_hba.conf"), None);
        }
        assert_eq!(
            redirected("hba_file = 'conf/hba'", "hba_file", pgdata, "pg_hba.conf"),
            Some(PathBuf::from("/clone/pg_hba.conf"))
        );
    }

    fn spec(dir: &Path, port: u16) -> InstanceSpec {
        InstanceSpec {
            pgdata: dir.join("data"),
            port,
            listen_address: "127.0.0.1".into(),
            socket_dir: dir.join("sock"),
            log_file: dir.join("log/postgres.log"),
            os_user: String::new(),
            superuser: "postgres".into(),
        }
    }

    #[test]
    fn socket_paths_must_fit_and_paths_be_absolute() {
        let long = PathBuf::from(format!("/{}", "d".repeat(95)));
        let err = check_spec(&spec(&long, 5432)).unwrap_err();
        assert!(matches!(err, PgError::SocketPathTooLong { .. }), "{err}");
        let err = check_spec(&spec(Path::new("relative"), 5432)).unwrap_err();
        assert!(
            err.to_string().contains("must be an absolute path"),
            "{err}"
        );
        check_spec(&spec(Path::new("/run/walvault/r-1"), 5432)).unwrap();
    }

    #[test]
    fn private_dirs_are_0700_and_never_someone_elses() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("a/sock");
        private_dir(&sock, None).unwrap();
        assert_eq!(fs::metadata(&sock).unwrap().mode() & 0o777, 0o700);
        fs::set_permissions(&sock, permissions(0o777)).unwrap();
        private_dir(&sock, None).unwrap();
        assert_eq!(fs::metadata(&sock).unwrap().mode() & 0o777, 0o700);
        let file = dir.path().join("file");
        fs::write(&file, "").unwrap();
        let err = private_dir(&file, None).unwrap_err();
        assert!(err.to_string().contains("File exists"), "{err}");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        let err = private_dir(&link, None).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
        if super::super::running_as_root() {
            let theirs = dir.path().join("theirs");
            fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::lchown(&theirs, Some(65534), Some(65534)).unwrap();
            let err = private_dir(&theirs, None).unwrap_err();
            assert!(err.to_string().contains("belongs to uid 65534"), "{err}");
        }
    }

    #[test]
    fn prepare_refuses_bad_input_before_touching_anything() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path(), 5432);
        let err = prepare(&s, "r", &[], "recovery.conf").unwrap_err();
        assert!(matches!(err, PgError::InvalidSignal { .. }), "{err}");
        let bad = vec![("port = 1\nx".to_owned(), "1".to_owned())];
        let err = prepare(&s, "r", &bad, "recovery.signal").unwrap_err();
        assert!(matches!(err, PgError::InvalidSetting { .. }), "{err}");
        assert!(!dir.path().join("sock").exists());
    }

    /// The OS user `prepare` can hand files to here: `postgres` as root, else ourselves.
    fn local_os_user() -> Option<String> {
        if super::super::running_as_root() {
            return Owner::lookup("postgres").map(|_| "postgres".to_owned());
        }
        let out = std::process::Command::new("id").arg("-un").output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    #[test]
    fn prepare_rewrites_a_clone_from_another_host() {
        let Some(user) = local_os_user() else {
            eprintln!("skipping: no `postgres` OS user to hand the files to");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let mut s = spec(dir.path(), 54400);
        s.os_user = user;
        let pgdata = s.pgdata.clone();
        fs::create_dir(&pgdata).unwrap();
        fs::set_permissions(&pgdata, permissions(0o750)).unwrap();
        fs::write(pgdata.join("PG_VERSION"), "15\n").unwrap();
        // A Debian source: configuration in /etc, so only the auto.conf came along, pointing
        // at files there; plus the source's pid file and a signal we do not want.
        fs::write(
            pgdata.join("postgresql.auto.conf"),
            "# Do not edit this file manually!\nhba_file = '/etc/postgresql/15/main/pg_hba.conf'\n",
        )
        .unwrap();
        fs::write(
            pgdata.join("postmaster.pid"),
            "999999999\n/var/lib/postgresql/15/main\n",
        )
        .unwrap();
        fs::write(
            pgdata.join("postmaster.opts"),
            "/usr/lib/postgresql/15/bin/postgres\n",
        )
        .unwrap();
        fs::write(pgdata.join("standby.signal"), "").unwrap();
        let settings = vec![("recovery_target".to_owned(), "immediate".to_owned())];
        prepare(&s, "r-1", &settings, "recovery.signal").unwrap();

        assert!(!pgdata.join("postmaster.pid").exists());
        assert!(!pgdata.join("postmaster.opts").exists());
        assert!(!pgdata.join("standby.signal").exists());
        assert!(pgdata.join("recovery.signal").is_file());
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&pgdata), 0o700);
        assert_eq!(mode(&s.socket_dir), 0o700);
        assert!(s.log_file.is_file());
        let conf = fs::read_to_string(pgdata.join("postgresql.conf")).unwrap();
        assert!(conf.starts_with("# written by walvault"), "{conf}");
        assert!(pgdata.join("pg_ident.conf").is_file());
        let auto = fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap();
        let hba_path = pgdata.join("pg_hba.conf");
        assert_eq!(
            conf_value(&auto, "hba_file").map(PathBuf::from),
            Some(hba_path.clone())
        );
        assert_eq!(
            conf_value(&auto, "ident_file"),
            None,
            "not set by the source"
        );
        assert_eq!(conf_value(&auto, "port").as_deref(), Some("54400"));
        assert_eq!(
            conf_value(&auto, "recovery_target").as_deref(),
            Some("immediate")
        );
        let hba = fs::read_to_string(&hba_path).unwrap();
        assert!(hba.contains("local all all trust\n"), "{hba}");
        assert!(hba.ends_with("host all all all md5\n"), "{hba}");
        if let Some(owner) = Owner::lookup(&s.os_user) {
            for p in [
                &pgdata,
                &s.socket_dir,
                &s.log_file,
                &hba_path,
                &pgdata.join("recovery.signal"),
            ] {
                assert_eq!(fs::metadata(p).unwrap().uid(), owner.uid, "{}", p.display());
            }
        }

        // Again, as for a restore retried on the same clone: one block, one rule.
        prepare(&s, "r-1", &settings, "standby.signal").unwrap();
        let auto = fs::read_to_string(pgdata.join("postgresql.auto.conf")).unwrap();
        assert_eq!(auto.matches(AUTO_CONF_BEGIN).count(), 1, "{auto}");
        assert!(auto.contains("hba_file = "), "still redirected: {auto}");
        let hba = fs::read_to_string(&hba_path).unwrap();
        assert_eq!(hba.matches("local all all trust").count(), 1, "{hba}");
        assert!(pgdata.join("standby.signal").is_file());
        assert!(!pgdata.join("recovery.signal").exists());
    }
}
