//! Durable writes on the database host: what the client tells PostgreSQL (or remembers for
//! it) must survive a crash of the machine, so every file goes through a temporary name,
//! fsync, rename and a directory fsync.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::ClientError;

/// Writes `dir/name` whole or not at all (mode 0600).
pub fn write_durably(dir: &Path, name: &str, content: &[u8]) -> Result<(), ClientError> {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.walvault.tmp"));
    let io = |what: &str, p: &Path| ClientError::io(format!("{what} {}", p.display()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(content).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("write", &path))?;
    fsync_dir(dir)
}

pub fn remove_if_present(path: &Path) -> Result<(), ClientError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            Err(ClientError::io(format!("remove {}", path.display()))(e))
        }
        _ => Ok(()),
    }
}

pub fn fsync_dir(dir: &Path) -> Result<(), ClientError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ClientError::io(format!("fsync {}", dir.display())))
}
