//! `pg_wal` of a clone on the local disk while PostgreSQL recovers it (issue 11).
//!
//! Recovery fetches every segment with `restore_command` into `pg_wal` and reads it back: on a
//! clone that is 32 MiB crossing the storage per segment, which on zfs-fuse costs more than the
//! replay itself. With `restore.local_wal_dir` set, the clone's `pg_wal` is a symbolic link to
//! a private directory there instead. Every segment recovery needs is in the archive, so what
//! the directory holds is never needed again once the instance is gone: [`bring_back`] leaves
//! an empty `pg_wal` in the clone (a roll-forward chain before its snapshot) and [`discard`]
//! removes the directory (a clone destroyed).

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::backup::files::Owner;

fn private_dir(dir: &Path, owner: Option<Owner>) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    Owner::apply(owner, dir)
}

/// Moves `pgdata/pg_wal` to `dir` (created 0700 for `owner`) and links it there; a `pg_wal`
/// that already is a link is left alone.
pub fn move_out(pgdata: &Path, dir: &Path, owner: Option<Owner>) -> std::io::Result<()> {
    let wal = pgdata.join("pg_wal");
    if fs::symlink_metadata(&wal)?.file_type().is_symlink() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)?;
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    private_dir(dir, owner)?;
    private_dir(&dir.join("archive_status"), owner)?;
    for entry in fs::read_dir(&wal)? {
        let entry = entry?;
        let name = entry.file_name();
        if entry.file_type()?.is_file() {
            let to = dir.join(&name);
            fs::copy(entry.path(), &to)?;
            Owner::apply(owner, &to)?;
        }
    }
    fs::remove_dir_all(&wal)?;
    std::os::unix::fs::symlink(dir, &wal)?;
    Owner::apply(owner, &wal)
}

/// Where `pgdata/pg_wal` links to, if it is a link.
pub fn target(pgdata: &Path) -> Option<PathBuf> {
    fs::read_link(pgdata.join("pg_wal")).ok()
}

/// Replaces a linked `pg_wal` by an empty one in `pgdata` and removes what it linked to
/// (every segment is archived). Nothing to do when `pg_wal` is a directory.
pub fn bring_back(pgdata: &Path, owner: Option<Owner>) -> std::io::Result<()> {
    let Some(to) = target(pgdata) else {
        return Ok(());
    };
    let wal = pgdata.join("pg_wal");
    fs::remove_file(&wal)?;
    private_dir(&wal, owner)?;
    private_dir(&wal.join("archive_status"), owner)?;
    fs::File::open(pgdata)?.sync_all()?;
    match fs::remove_dir_all(&to) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes what a linked `pg_wal` of `pgdata` points to (before the clone is destroyed).
pub fn discard(pgdata: &Path) -> std::io::Result<()> {
    match target(pgdata) {
        Some(to) => match fs::remove_dir_all(&to) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_wal_goes_out_comes_back_empty_and_is_discarded() {
        let data = tempfile::tempdir().unwrap();
        let local = tempfile::tempdir().unwrap();
        let d = data.path();
        fs::create_dir_all(d.join("pg_wal/archive_status")).unwrap();
        fs::write(d.join("pg_wal/000000010000000000000003"), b"wal").unwrap();
        let dir = local.path().join("acme-db1-r1");
        move_out(d, &dir, None).unwrap();
        assert_eq!(target(d), Some(dir.clone()));
        assert_eq!(
            fs::read(dir.join("000000010000000000000003")).unwrap(),
            b"wal"
        );
        assert!(dir.join("archive_status").is_dir());
        move_out(d, &dir, None).unwrap();
        assert!(
            dir.join("000000010000000000000003").exists(),
            "a second call keeps it"
        );

        bring_back(d, None).unwrap();
        assert!(fs::symlink_metadata(d.join("pg_wal")).unwrap().is_dir());
        assert!(d.join("pg_wal/archive_status").is_dir());
        assert_eq!(fs::read_dir(d.join("pg_wal")).unwrap().count(), 1);
        assert!(!dir.exists());
        bring_back(d, None).unwrap();

        move_out(d, &dir, None).unwrap();
        discard(d).unwrap();
        assert!(!dir.exists());
    }
}
