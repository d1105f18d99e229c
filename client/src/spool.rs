//! The database host's memory of WAL files the server acknowledged before PostgreSQL asked
//! for them (`wal-push` look-ahead). One small file per acknowledged WAL file, written
//! durably and only after the server said the file is on its stable storage, so nothing is
//! ever reported archived that the server does not hold. An acknowledgement answers only for
//! the very file it was taken of (same size, inode and modification time); anything else is
//! pushed again. `status.json` says what the last pushing call saw: PostgreSQL's backlog and
//! the last error.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use walvault_proto::WalFileName;

use crate::durable::write_durably;
use crate::error::ClientError;

/// The spool's name inside `pg_wal` when the configuration names none: it goes with the WAL it
/// describes, PostgreSQL ignores it, and backups (ours and pg_basebackup) leave it out.
pub const DEFAULT_DIR: &str = "walvault.spool";
const ACK_EXT: &str = ".ack";
pub const STATUS_FILE: &str = "status.json";

/// Which file an acknowledgement is for: a segment PostgreSQL recycled or rewrote under the
/// same name differs in at least one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub size: u64,
    pub ino: u64,
    pub mtime_ns: i64,
}

impl FileId {
    pub fn of(meta: &fs::Metadata) -> Self {
        Self {
            size: meta.len(),
            ino: meta.ino(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        }
    }

    pub fn read(path: &Path) -> Result<Self, ClientError> {
        fs::metadata(path)
            .map(|m| Self::of(&m))
            .map_err(ClientError::io(format!("read {}", path.display())))
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Ack {
    file: FileId,
    blake3: String,
    acknowledged_unix: i64,
}

/// What the last `wal-push` that reached for the server saw.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub updated_unix: i64,
    /// `.ready` files in `pg_wal/archive_status`: PostgreSQL's archive backlog.
    pub ready: usize,
    /// Of those, how many the server holds already (pushed ahead, not yet asked for).
    pub acknowledged_ahead: usize,
    pub last_success_unix: Option<i64>,
    /// The last failure, of the asked-for file or of one pushed ahead; kept until a later
    /// call pushes without any.
    pub last_error: Option<String>,
    pub last_error_unix: Option<i64>,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Opens (creating, mode 0700) the spool.
    pub fn open(dir: PathBuf) -> Result<Self, ClientError> {
        fs::create_dir_all(&dir)
            .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)))
            .map_err(ClientError::io(format!(
                "create the spool {}",
                dir.display()
            )))?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn ack_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}{ACK_EXT}"))
    }

    /// Whether the server acknowledged `name` ahead and `path` is still the file it was
    /// taken of. The acknowledgement is used up either way: a stale one must not answer again.
    pub fn take(&self, name: &WalFileName, path: &Path) -> bool {
        let ack = self.ack_path(&name.to_string());
        let Ok(text) = fs::read(&ack) else {
            return false;
        };
        let same = serde_json::from_slice::<Ack>(&text)
            .ok()
            .zip(FileId::read(path).ok())
            .is_some_and(|(a, now)| a.file == now);
        let _ = fs::remove_file(&ack);
        same
    }

    pub fn acknowledged(&self, name: &str) -> bool {
        self.ack_path(name).exists()
    }

    /// Remembers that the server holds `name` as `file` was when it was read.
    pub fn record(
        &self,
        name: &WalFileName,
        file: FileId,
        blake3: &blake3::Hash,
    ) -> Result<(), ClientError> {
        let ack = Ack {
            file,
            blake3: blake3.to_hex().to_string(),
            acknowledged_unix: crate::unix_now(),
        };
        let json = serde_json::to_vec(&ack).expect("an acknowledgement serialises");
        write_durably(&self.dir, &format!("{name}{ACK_EXT}"), &json)
    }

    /// Drops acknowledgements of files PostgreSQL no longer waits to archive (archived by an
    /// earlier call, or gone); returns how many are left.
    pub fn forget_all_but(&self, ready: &BTreeSet<String>) -> usize {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut left = 0;
        for e in entries.flatten() {
            let file = e.file_name();
            let Some(f) = file.to_str() else { continue };
            if f.starts_with('.') && f.ends_with(".walvault.tmp") {
                // Left by a call killed while it wrote.
                let _ = fs::remove_file(e.path());
                continue;
            }
            let Some(name) = f.strip_suffix(ACK_EXT) else {
                continue;
            };
            if ready.contains(name) {
                left += 1;
            } else {
                let _ = fs::remove_file(e.path());
            }
        }
        left
    }

    pub fn status(&self) -> Status {
        fs::read(self.dir.join(STATUS_FILE))
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default()
    }

    pub fn write_status(&self, status: &Status) -> Result<(), ClientError> {
        let json = serde_json::to_vec_pretty(status).expect("a status serialises");
        write_durably(&self.dir, STATUS_FILE, &json)
    }
}

/// The WAL files PostgreSQL has marked ready to archive (`pg_wal/archive_status/*.ready`),
/// in name order.
pub fn ready_files(pg_wal: &Path) -> Result<BTreeSet<String>, ClientError> {
    let dir = pg_wal.join("archive_status");
    let entries = fs::read_dir(&dir).map_err(ClientError::io(format!("list {}", dir.display())))?;
    Ok(entries
        .flatten()
        .filter_map(|e| {
            let f = e.file_name();
            f.to_str()
                .and_then(|n| n.strip_suffix(".ready"))
                .filter(|n| n.parse::<WalFileName>().is_ok())
                .map(str::to_owned)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("walvault-spool-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("archive_status")).unwrap();
        d
    }

    #[test]
    fn an_acknowledgement_answers_once_and_only_for_the_same_file() {
        let wal = tempdir("ack");
        let spool = Spool::open(wal.join(DEFAULT_DIR)).unwrap();
        let name: WalFileName = "000000010000000000000003".parse().unwrap();
        let seg = wal.join(name.to_string());
        fs::write(&seg, b"one").unwrap();
        spool
            .record(&name, FileId::read(&seg).unwrap(), &blake3::hash(b"one"))
            .unwrap();
        assert!(spool.acknowledged(&name.to_string()));
        assert!(spool.take(&name, &seg));
        assert!(!spool.take(&name, &seg), "used up");

        // Acknowledged, then replaced by another file of the same name: pushed again.
        spool
            .record(&name, FileId::read(&seg).unwrap(), &blake3::hash(b"one"))
            .unwrap();
        fs::remove_file(&seg).unwrap();
        fs::write(&seg, b"other content").unwrap();
        assert!(!spool.take(&name, &seg));
        // A file that is gone is never reported archived by the spool.
        spool
            .record(&name, FileId::read(&seg).unwrap(), &blake3::hash(b"x"))
            .unwrap();
        fs::remove_file(&seg).unwrap();
        assert!(!spool.take(&name, &seg));
        fs::remove_dir_all(&wal).unwrap();
    }

    #[test]
    fn ready_files_and_forgetting() {
        let wal = tempdir("ready");
        for f in [
            "000000010000000000000002.ready",
            "000000010000000000000001.done",
            "00000002.history.ready",
            "junk.ready",
        ] {
            fs::write(wal.join("archive_status").join(f), b"").unwrap();
        }
        let ready = ready_files(&wal).unwrap();
        assert_eq!(
            ready.iter().cloned().collect::<Vec<_>>(),
            ["000000010000000000000002", "00000002.history"]
        );
        let spool = Spool::open(wal.join(DEFAULT_DIR)).unwrap();
        for n in ["000000010000000000000001", "000000010000000000000002"] {
            let seg = wal.join(n);
            fs::write(&seg, n).unwrap();
            let name: WalFileName = n.parse().unwrap();
            spool
                .record(&name, FileId::read(&seg).unwrap(), &blake3::hash(b""))
                .unwrap();
        }
        assert_eq!(spool.forget_all_but(&ready), 1);
        assert!(!spool.acknowledged("000000010000000000000001"));
        assert!(spool.acknowledged("000000010000000000000002"));
        let status = Status {
            ready: 2,
            last_error: Some("x".into()),
            ..Status::default()
        };
        spool.write_status(&status).unwrap();
        assert_eq!(spool.status(), status);
        fs::remove_dir_all(&wal).unwrap();
    }
}
