//! Checks made before a directory restore writes anything: not as root (the files would
//! belong to root and PostgreSQL refuses to run as root), no running PostgreSQL on a target
//! directory, and an empty target unless `--delta` was asked for.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::error::ClientError;

/// What `postmaster.pid` in a directory says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Postmaster {
    Absent,
    /// A PostgreSQL process with this pid exists.
    Live(u32),
    /// Left behind by a PostgreSQL that is gone.
    Stale(PathBuf),
}

/// Reads `dir/postmaster.pid` and looks whether the process it names is a live PostgreSQL
/// (a pid reused by another program after a crash or reboot does not count).
pub fn postmaster(dir: &Path) -> Result<Postmaster, ClientError> {
    let path = dir.join("postmaster.pid");
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            return Ok(Postmaster::Absent)
        }
        Err(e) => return Err(ClientError::io(format!("read {}", path.display()))(e)),
    };
    let pid = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse::<u32>().ok())
        .filter(|p| *p > 0);
    let Some(pid) = pid else {
        // Being written right now, or damaged: we cannot tell, so we do not guess.
        return Err(ClientError::Usage(format!(
            "{} does not name a process; if PostgreSQL is not running on {}, remove the file",
            path.display(),
            dir.display()
        )));
    };
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if !proc_dir.exists() {
        return Ok(Postmaster::Stale(path));
    }
    match fs::read(proc_dir.join("cmdline")) {
        Ok(cmd) if !cmd.is_empty() => {
            let cmd = String::from_utf8_lossy(&cmd);
            if cmd.contains("postgres") || cmd.contains("postmaster") {
                Ok(Postmaster::Live(pid))
            } else {
                Ok(Postmaster::Stale(path))
            }
        }
        // Unreadable or a kernel thread's empty line: assume the worst.
        _ => Ok(Postmaster::Live(pid)),
    }
}

/// The effective user id of this process, from `/proc/self/status`.
pub fn effective_uid() -> Option<u32> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Refuses a directory restore as root.
pub fn refuse_root() -> Result<(), ClientError> {
    if effective_uid() == Some(0) {
        return Err(ClientError::Usage(
            "a restore into a directory writes files PostgreSQL must own and refuses to run as \
             root: run it as the PostgreSQL OS user, e.g. runuser -u postgres -- walvault \
             restore …"
                .into(),
        ));
    }
    Ok(())
}

/// Checks one target directory: absent, or a directory with no live PostgreSQL on it, and
/// empty unless `delta`. Returns a stale `postmaster.pid` to remove before writing (delta).
pub fn check_target_dir(dir: &Path, delta: bool) -> Result<Option<PathBuf>, ClientError> {
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(ClientError::Usage(format!(
                "{} is not a directory",
                dir.display()
            )))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ClientError::io(format!("look at {}", dir.display()))(e)),
    }
    let stale = match postmaster(dir)? {
        Postmaster::Live(pid) => {
            return Err(ClientError::Usage(format!(
                "PostgreSQL is running on {} (pid {pid}); stop it first",
                dir.display()
            )))
        }
        Postmaster::Stale(p) => Some(p),
        Postmaster::Absent => None,
    };
    if !delta {
        let mut listing =
            fs::read_dir(dir).map_err(ClientError::io(format!("list {}", dir.display())))?;
        if listing.next().is_some() {
            return Err(ClientError::Usage(format!(
                "{} is not empty; give --delta to rewrite it in place, or choose an empty \
                 directory",
                dir.display()
            )));
        }
    }
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_postmaster_is_refused_a_stale_one_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        assert_eq!(check_target_dir(&dir.join("absent"), false).unwrap(), None);
        assert_eq!(check_target_dir(dir, false).unwrap(), None);

        fs::write(dir.join("PG_VERSION"), "15\n").unwrap();
        let e = check_target_dir(dir, false).unwrap_err().to_string();
        assert!(e.contains("is not empty; give --delta"), "{e}");
        assert_eq!(check_target_dir(dir, true).unwrap(), None);

        // pid_max is at most 2^22: this pid cannot exist.
        fs::write(dir.join("postmaster.pid"), "99999999\n/data\n").unwrap();
        assert_eq!(
            check_target_dir(dir, true).unwrap(),
            Some(dir.join("postmaster.pid"))
        );
        // Our own pid exists but is not PostgreSQL.
        fs::write(
            dir.join("postmaster.pid"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        assert!(matches!(postmaster(dir).unwrap(), Postmaster::Stale(_)));
        fs::write(dir.join("postmaster.pid"), "garbage\n").unwrap();
        assert!(check_target_dir(dir, true).is_err());

        let file = dir.join("PG_VERSION");
        assert!(check_target_dir(&file, true).is_err());
    }

    #[test]
    fn a_running_postgres_is_live() {
        let tmp = tempfile::tempdir().unwrap();
        // A shell whose command line names postgres, kept from exec'ing the sleep.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30; true", "postgres"])
            .spawn()
            .unwrap();
        fs::write(
            tmp.path().join("postmaster.pid"),
            format!("{}\n", child.id()),
        )
        .unwrap();
        let got = check_target_dir(tmp.path(), true);
        child.kill().unwrap();
        child.wait().unwrap();
        let e = got.unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "PostgreSQL is running on {} (pid {})",
                tmp.path().display(),
                child.id()
            )),
            "{e}"
        );
    }

    #[test]
    fn our_uid_is_read() {
        assert!(effective_uid().is_some());
    }
}
