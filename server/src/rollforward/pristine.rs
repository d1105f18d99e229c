//! The configuration files a roll-forward's start changes in the chain's PGDATA, kept aside
//! while its standby runs and put back before the snapshot, so that a roll-forward snapshot
//! holds the source's own configuration (a directory restore hands it to a host as it came,
//! without the server's private socket, trust rule or signal file).
//!
//! The saved copy is written durably before the start and removed only after the files are
//! back: a server killed in between finds it at the next start and puts them back then.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::backup::files::{write_durably, Owner};

/// What a start changes in a data directory: [`crate::pg::prepare`] writes, creates or
/// removes the configuration and signal files; the tablespaces are pointed at the chain's
/// datasets in `tablespace_map`, which PostgreSQL renames to `tablespace_map.old` (the map
/// put back names the source's locations, which a restore from the snapshot reads).
pub const FILES: [&str; 8] = [
    "postgresql.conf",
    "postgresql.auto.conf",
    "pg_hba.conf",
    "pg_ident.conf",
    "recovery.signal",
    "standby.signal",
    "tablespace_map",
    "tablespace_map.old",
];

/// Where the saved copy of `data`'s files is kept (outside `data`, in the chain's own
/// dataset, so a snapshot keeps it too).
pub fn saved_path(home: &Path) -> PathBuf {
    home.join("pristine.json")
}

/// Saves the files of `data` (`None`: absent) into `home`, durably.
pub fn save(home: &Path, data: &Path) -> std::io::Result<()> {
    let mut files: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    for name in FILES {
        let content = match fs::read(data.join(name)) {
            Ok(c) => Some(c),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        files.insert(name.to_owned(), content);
    }
    let json = serde_json::to_vec(&files).map_err(std::io::Error::other)?;
    write_durably(&saved_path(home), &json, None)
}

/// Puts the files saved in `home` back into `data` (owned by `owner`) and forgets the saved
/// copy; false when there was none.
pub fn restore(home: &Path, data: &Path, owner: Option<Owner>) -> std::io::Result<bool> {
    let path = saved_path(home);
    let json = match fs::read(&path) {
        Ok(j) => j,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let files: BTreeMap<String, Option<Vec<u8>>> = serde_json::from_slice(&json)
        .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
    for (name, content) in files {
        // Only the names this module writes: the file is ours, but it is read back from disk.
        if !FILES.contains(&name.as_str()) {
            continue;
        }
        let target = data.join(&name);
        match content {
            Some(c) => write_durably(&target, &c, owner)?,
            None => match fs::remove_file(&target) {
                Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
                _ => {}
            },
        }
    }
    fs::File::open(data)?.sync_all()?;
    fs::remove_file(&path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_start_changed_is_put_back_and_what_it_created_is_removed() {
        let home = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let d = data.path();
        fs::write(d.join("postgresql.auto.conf"), "work_mem = '8MB'\n").unwrap();
        fs::write(d.join("pg_hba.conf"), "host all all all md5\n").unwrap();
        fs::write(d.join("tablespace_map"), "16400 /src/ts\n").unwrap();
        save(home.path(), d).unwrap();
        // The start points the map at the chain, and PostgreSQL renames it.
        fs::write(d.join("tablespace_map"), "16400 /chain/tblspc/16400\n").unwrap();
        fs::rename(d.join("tablespace_map"), d.join("tablespace_map.old")).unwrap();
        fs::write(
            d.join("postgresql.auto.conf"),
            "work_mem = '8MB'\nport = 1\n",
        )
        .unwrap();
        fs::write(d.join("pg_hba.conf"), "local all all trust\n").unwrap();
        fs::write(d.join("postgresql.conf"), "# minimal\n").unwrap();
        fs::write(d.join("standby.signal"), "").unwrap();
        fs::write(d.join("PG_VERSION"), "15\n").unwrap();

        assert!(restore(home.path(), d, None).unwrap());
        assert_eq!(
            fs::read_to_string(d.join("postgresql.auto.conf")).unwrap(),
            "work_mem = '8MB'\n"
        );
        assert_eq!(
            fs::read_to_string(d.join("pg_hba.conf")).unwrap(),
            "host all all all md5\n"
        );
        assert!(!d.join("postgresql.conf").exists());
        assert!(!d.join("standby.signal").exists());
        assert_eq!(
            fs::read_to_string(d.join("tablespace_map")).unwrap(),
            "16400 /src/ts\n"
        );
        assert!(!d.join("tablespace_map.old").exists());
        assert!(d.join("PG_VERSION").exists(), "other files stay");
        assert!(!saved_path(home.path()).exists());
        assert!(
            !restore(home.path(), d, None).unwrap(),
            "nothing saved any more"
        );
    }
}
