//! What turns a restored copy into a cluster that recovers to the target: `tablespace_map`
//! with the tablespaces' new directories (and the `pg_tblspc` links to them, which recovery
//! recreates from the map when there is a `backup_label`, and needs as they are when there is
//! none), a block of settings appended to
//! `postgresql.auto.conf` (PostgreSQL takes the last value of a setting, so appending is
//! enough), and `recovery.signal` or `standby.signal`.
//!
//! Values are quoted as `ALTER SYSTEM` writes them (quotes and backslashes doubled); a value
//! that cannot be written on one line is refused rather than mangled.

use std::fmt::Write as _;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use walvault_proto::pb;

use super::tablespace::{tablespace_map, AreaDirs};
use crate::durable::{fsync_dir, remove_if_present, write_durably};
use crate::error::ClientError;

/// A restored copy that follows the archive (and a primary) as a standby.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Standby {
    pub primary_conninfo: Option<String>,
}

/// A value as PostgreSQL's configuration files read it: in single quotes, with quotes and
/// backslashes doubled.
pub fn guc_quote(name: &str, value: &str) -> Result<String, ClientError> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(ClientError::Usage(format!(
            "{name} cannot be written to postgresql.auto.conf: its value has a line break"
        )));
    }
    Ok(format!(
        "'{}'",
        value.replace('\\', "\\\\").replace('\'', "''")
    ))
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

/// One word for `/bin/sh`, quoted only when it needs to be, with `%` doubled because
/// PostgreSQL expands `%f`, `%p` and `%%` in restore_command before the shell sees it.
fn command_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:@,=".contains(c));
    let word = if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    };
    word.replace('%', "%%")
}

/// `restore_command` fetching from the archive with this very client and configuration;
/// with `through`, recovery stops (rather than ends) when a segment up to it is missing.
pub fn restore_command(
    exe: &Path,
    config: &Path,
    cluster: Option<&str>,
    through: Option<&str>,
) -> String {
    let mut cmd = format!(
        "{} --config {}",
        command_word(&exe.to_string_lossy()),
        command_word(&config.to_string_lossy())
    );
    if let Some(c) = cluster {
        let _ = write!(cmd, " --cluster {}", command_word(c));
    }
    cmd.push_str(" wal-fetch");
    if let Some(t) = through {
        let _ = write!(cmd, " --require-through {}", command_word(t));
    }
    cmd.push_str(" %f %p");
    cmd
}

/// The settings to write, in order: the plan's (without the target action and timeline for a
/// standby, which never reaches a target), restore_command, and the standby's.
pub fn recovery_settings(
    plan: &[pb::Setting],
    restore_command: &str,
    standby: Option<&Standby>,
) -> Result<Vec<(String, String)>, ClientError> {
    let ours = ["restore_command", "primary_conninfo"];
    let mut out = Vec::new();
    for s in plan {
        if !valid_name(&s.name) {
            return Err(ClientError::Integrity(format!(
                "the server planned a setting named {:?}",
                s.name
            )));
        }
        let dropped = ours.contains(&s.name.as_str())
            || (standby.is_some() && s.name.starts_with("recovery_target"));
        if !dropped {
            out.push((s.name.clone(), s.value.clone()));
        }
    }
    out.push(("restore_command".into(), restore_command.to_owned()));
    if let Some(sb) = standby {
        out.push(("recovery_target_timeline".into(), "latest".into()));
        if let Some(c) = &sb.primary_conninfo {
            out.push(("primary_conninfo".into(), c.clone()));
        }
    }
    Ok(out)
}

/// The block appended to `postgresql.auto.conf`.
pub fn auto_conf_block(
    restore_id: &str,
    backup_id: &str,
    target: &str,
    settings: &[(String, String)],
) -> Result<String, ClientError> {
    let one_line = |s: &str| s.replace(['\n', '\r'], " ");
    let mut out = format!(
        "# added by walvault restore {} (backup {}, target {})\n",
        one_line(restore_id),
        one_line(backup_id),
        one_line(target)
    );
    for (name, value) in settings {
        let _ = writeln!(out, "{name} = {}", guc_quote(name, value)?);
    }
    Ok(out)
}

/// Writes everything recovery needs into the restored directories: `tablespace_map` (or its
/// removal), the modes PostgreSQL insists on, the settings block, and the signal file.
pub fn write_recovery(dirs: &AreaDirs, block: &str, standby: bool) -> Result<(), ClientError> {
    let pgdata = dirs.data();
    match tablespace_map(dirs) {
        Some(map) => write_durably(pgdata, "tablespace_map", map.as_bytes())?,
        None => remove_if_present(&pgdata.join("tablespace_map"))?,
    }
    link_tablespaces(dirs)?;
    // PostgreSQL refuses a data directory others can read (0750 is allowed, 0700 is safe).
    for a in dirs.iter() {
        fs::set_permissions(&a.dir, Permissions::from_mode(0o700)).map_err(ClientError::io(
            format!("set the mode of {}", a.dir.display()),
        ))?;
    }
    append_auto_conf(pgdata, block)?;
    let (signal, other) = if standby {
        ("standby.signal", "recovery.signal")
    } else {
        ("recovery.signal", "standby.signal")
    };
    remove_if_present(&pgdata.join(other))?;
    write_durably(pgdata, signal, b"")?;
    fsync_dir(pgdata)
}

/// `pg_tblspc/<oid>` links to each tablespace's directory; links of tablespaces the snapshot
/// does not have (an old primary's) are removed. In-place tablespaces (directories) are left.
fn link_tablespaces(dirs: &AreaDirs) -> Result<(), ClientError> {
    let links = dirs.data().join("pg_tblspc");
    let io = |what: &str, p: &Path| ClientError::io(format!("{what} {}", p.display()));
    let ours: Vec<(String, &Path)> = dirs
        .tablespaces()
        .map(|(oid, dir)| (oid.to_string(), dir))
        .collect();
    if ours.is_empty() && !links.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(&links).map_err(io("create", &links))?;
    for item in fs::read_dir(&links).map_err(io("list", &links))? {
        let item = item.map_err(io("list", &links))?;
        let name = item.file_name();
        let is_link = item.file_type().is_ok_and(|t| t.is_symlink());
        if is_link && !ours.iter().any(|(oid, _)| name == oid.as_str()) {
            remove_if_present(&item.path())?;
        }
    }
    for (oid, dir) in &ours {
        let link = links.join(oid);
        match fs::symlink_metadata(&link) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => remove_if_present(&link)?,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(dir, &link).map_err(io("create the link", &link))?;
    }
    fsync_dir(&links)
}

fn append_auto_conf(pgdata: &Path, block: &str) -> Result<(), ClientError> {
    let path = pgdata.join("postgresql.auto.conf");
    let io = |what: &str| ClientError::io(format!("{what} {}", path.display()));
    let before = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io("read")(e)),
    };
    let mut text = String::new();
    if before.last().is_some_and(|b| *b != b'\n') {
        text.push('\n');
    }
    text.push_str(block);
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .map_err(io("open"))?;
    f.write_all(text.as_bytes()).map_err(io("append to"))?;
    f.sync_all().map_err(io("fsync"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use walvault_proto::Area;

    fn setting(name: &str, value: &str) -> pb::Setting {
        pb::Setting {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn values_are_quoted_as_alter_system_does() {
        assert_eq!(guc_quote("x", "plain").unwrap(), "'plain'");
        assert_eq!(guc_quote("x", "it's").unwrap(), "'it''s'");
        assert_eq!(guc_quote("x", r"C:\dir").unwrap(), r"'C:\\dir'");
        assert_eq!(guc_quote("x", "").unwrap(), "''");
        let e = guc_quote("primary_conninfo", "a\nb").unwrap_err();
        assert!(e.to_string().contains("primary_conninfo"), "{e}");
    }

    #[test]
    fn restore_command_runs_this_client() {
        let cmd = restore_command(
            Path::new("/usr/local/bin/walvault"),
            Path::new("/etc/walvault/walvault.toml"),
            Some("acme/orders"),
            Some("00000002000000000000001A"),
        );
        assert_eq!(
            cmd,
            "/usr/local/bin/walvault --config /etc/walvault/walvault.toml --cluster acme/orders \
             wal-fetch --require-through 00000002000000000000001A %f %p"
        );
        let cmd = restore_command(
            Path::new("/opt/my tools/walvault"),
            Path::new("/etc/it's 100%.toml"),
            None,
            None,
        );
        assert_eq!(
            cmd,
            "'/opt/my tools/walvault' --config '/etc/it'\\''s 100%%.toml' wal-fetch %f %p"
        );
    }

    #[test]
    fn the_settings_block() {
        let plan = [
            setting("recovery_target_time", "2026-11-22 10:03:00+00"),
            setting("recovery_target_timeline", "1"),
            setting("recovery_target_action", "promote"),
        ];
        let settings = recovery_settings(&plan, "/bin/walvault wal-fetch %f %p", None).unwrap();
        let block = auto_conf_block("r1", "b1", "time 2026-11-22\n10:03", &settings).unwrap();
        assert_eq!(
            block,
            "# added by walvault restore r1 (backup b1, target time 2026-11-22 10:03)\n\
             recovery_target_time = '2026-11-22 10:03:00+00'\n\
             recovery_target_timeline = '1'\n\
             recovery_target_action = 'promote'\n\
             restore_command = '/bin/walvault wal-fetch %f %p'\n"
        );
        let standby = Standby {
            primary_conninfo: Some("host=new-primary user=rep password='s3'".into()),
        };
        let latest = [
            setting("recovery_target_timeline", "latest"),
            setting("recovery_target_action", "promote"),
        ];
        let settings = recovery_settings(&latest, "cmd", Some(&standby)).unwrap();
        let block = auto_conf_block("r2", "b1", "latest", &settings).unwrap();
        assert_eq!(
            block,
            "# added by walvault restore r2 (backup b1, target latest)\n\
             restore_command = 'cmd'\n\
             recovery_target_timeline = 'latest'\n\
             primary_conninfo = 'host=new-primary user=rep password=''s3'''\n"
        );
        assert!(recovery_settings(&[setting("bad name", "x")], "cmd", None).is_err());
    }

    #[test]
    fn recovery_files_are_written() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let ts = tmp.path().join("ts");
        fs::create_dir_all(&data).unwrap();
        fs::create_dir_all(&ts).unwrap();
        fs::write(data.join("postgresql.auto.conf"), "work_mem = '8MB'").unwrap();
        fs::write(data.join("tablespace_map"), "16400 /old/place\n").unwrap();
        fs::write(data.join("standby.signal"), "").unwrap();
        fs::create_dir_all(data.join("pg_tblspc")).unwrap();
        std::os::unix::fs::symlink("/old/place", data.join("pg_tblspc/16400")).unwrap();
        std::os::unix::fs::symlink("/dropped", data.join("pg_tblspc/16500")).unwrap();
        let dirs = AreaDirs::from_dirs(vec![
            (Area::Data, data.clone()),
            (Area::Tablespace(16400), ts.clone()),
        ]);
        write_recovery(&dirs, "# block\nx = '1'\n", false).unwrap();
        assert_eq!(fs::read_link(data.join("pg_tblspc/16400")).unwrap(), ts);
        assert!(fs::symlink_metadata(data.join("pg_tblspc/16500")).is_err());
        assert_eq!(
            fs::read_to_string(data.join("postgresql.auto.conf")).unwrap(),
            "work_mem = '8MB'\n# block\nx = '1'\n"
        );
        assert_eq!(
            fs::read_to_string(data.join("tablespace_map")).unwrap(),
            format!("16400 {}\n", ts.display())
        );
        assert!(data.join("recovery.signal").is_file());
        assert!(!data.join("standby.signal").exists());
        for d in [&data, &ts] {
            assert_eq!(fs::metadata(d).unwrap().permissions().mode() & 0o777, 0o700);
        }
        let names: Vec<PathBuf> = fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".walvault.tmp"))
            .collect();
        assert!(names.is_empty(), "{names:?}");

        // A snapshot without tablespaces leaves no tablespace_map; a standby gets its signal.
        let dirs = AreaDirs::from_dirs(vec![(Area::Data, data.clone())]);
        write_recovery(&dirs, "y = '2'\n", true).unwrap();
        assert!(!data.join("tablespace_map").exists());
        assert!(data.join("standby.signal").is_file());
        assert!(!data.join("recovery.signal").exists());
        assert!(fs::read_to_string(data.join("postgresql.auto.conf"))
            .unwrap()
            .ends_with("x = '1'\ny = '2'\n"));
    }
}
