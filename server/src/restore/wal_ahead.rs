//! Segments unpacked ahead of recovery (issue 11: replay on a clone at local-disk speed).
//!
//! PostgreSQL runs `restore_command` for one segment at a time and replays nothing while it
//! runs: every segment costs a process, a read of the stored file, its decompression and
//! check, and a 16 MiB write, all on replay's critical path (measured here: 50–110 ms a
//! segment against 150–250 ms of replay). While PostgreSQL replays, a thread unpacks the
//! plan's next segments, checked like `wal-unpack` does, into [`DIR_NAME`] inside the local
//! `pg_wal`; the restore_command (`wal-unpack --ahead DIR`) then only renames the file into
//! place. What PostgreSQL asks for and is not there yet is unpacked as before, so a wrong
//! guess (a timeline PostgreSQL does not take) costs work, never changes what it replays.
//!
//! Bounded: at most `depth` segments wait in the directory; the thread stops when told,
//! when the plan's last segment is staged, or at the first file the archive cannot give.
//! The directory lives in `pg_wal`, which is removed or emptied with the clone.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use walvault_proto::{WalFileKind, WalFileName};

use crate::backup::files::Owner;
use crate::restore::prefetch::{planned_segment, Ahead};
use crate::wal::WalArchive;

/// The directory in `pg_wal` that holds unpacked segments; not a WAL file name, so
/// PostgreSQL leaves it alone.
pub const DIR_NAME: &str = "walvault.ahead";
/// Files being written there start with this, so a reader never takes half a segment.
const PARTIAL: &str = ".partial-";
const POLL: Duration = Duration::from_millis(10);

/// The staging directory for a `pg_wal` directory.
pub fn dir(pg_wal: &Path) -> PathBuf {
    pg_wal.join(DIR_NAME)
}

/// What the restore_command does with the directory: moves `name` to `dest` if it was
/// unpacked ahead (`Ok(true)`), and removes what waits there for segments before `name`,
/// which recovery has passed. `Ok(false)`: unpack it from the archive as usual.
pub fn take(dir: &Path, name: &str, dest: &Path) -> std::io::Result<bool> {
    let Ok(wanted) = name.parse::<WalFileName>() else {
        return Ok(false);
    };
    if wanted.kind() != WalFileKind::Segment {
        return Ok(false);
    }
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        let staged = entry.file_name();
        let Some(staged) = staged.to_str().and_then(|s| s.parse::<WalFileName>().ok()) else {
            continue;
        };
        // Before the one asked for: recovery has passed it.
        if staged.kind() == WalFileKind::Segment && !wanted.is_needed_through(&staged) {
            let _ = fs::remove_file(entry.path());
        }
    }
    match fs::rename(dir.join(wanted.as_str()), dest) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    staged: u64,
    bytes: u64,
}

/// A running stager; stopped, joined and its directory removed on drop.
#[derive(Debug)]
pub struct WalAhead {
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Stats>>,
    label: String,
    started: Instant,
}

impl WalAhead {
    /// Starts unpacking `ahead`'s segments into `dir` (created 0700 for `owner`), keeping at
    /// most `depth` there. `None` (with a warning) when the directory or thread cannot be
    /// made: recovery then unpacks every segment itself.
    pub fn start(
        archive: WalArchive,
        ahead: Ahead,
        dir: PathBuf,
        owner: Option<Owner>,
        depth: usize,
        label: &str,
    ) -> Option<Self> {
        let made = fs::create_dir_all(&dir)
            .and_then(|()| fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)))
            .and_then(|()| Owner::apply(owner, &dir));
        if let Err(e) = made {
            tracing::warn!(what = label, dir = %dir.display(), "no segments unpacked ahead: {e}");
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, to) = (stop.clone(), dir.clone());
        let handle = std::thread::Builder::new()
            .name("wv-wal-ahead".into())
            .spawn(move || run(&archive, &ahead, &to, owner, depth.max(1), &flag))
            .map_err(|e| tracing::warn!(what = label, "no segments unpacked ahead: {e}"))
            .ok()?;
        Some(Self {
            dir,
            stop,
            handle: Some(handle),
            label: label.to_owned(),
            started: Instant::now(),
        })
    }
}

impl Drop for WalAhead {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let s = self
            .handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), "remove unpacked segments: {e}");
            }
        }
        tracing::info!(
            what = %self.label, segments = s.staged, mib = s.bytes >> 20,
            ms = self.started.elapsed().as_millis() as u64,
            "unpacked segments ahead of recovery"
        );
    }
}

/// Segments waiting in `dir` (not counting one being written).
fn waiting(dir: &Path) -> usize {
    fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with(PARTIAL))
            .count()
    })
}

fn run(
    archive: &WalArchive,
    ahead: &Ahead,
    dir: &Path,
    owner: Option<Owner>,
    depth: usize,
    stop: &AtomicBool,
) -> Stats {
    let mut stats = Stats::default();
    let Ok(wal_dir) = archive.wal_dir_path(&ahead.cluster) else {
        return stats;
    };
    for segno in ahead.from.1..=ahead.through.1 {
        while waiting(dir) >= depth {
            if stop.load(Ordering::Relaxed) {
                return stats;
            }
            std::thread::sleep(POLL);
        }
        if stop.load(Ordering::Relaxed) {
            return stats;
        }
        let Some(name) = planned_segment(&wal_dir, ahead, segno) else {
            // Not archived (yet): PostgreSQL's own call will say what is missing.
            return stats;
        };
        let Ok(plain) = archive.read_plain(&ahead.cluster, &name) else {
            return stats;
        };
        let partial = dir.join(format!("{PARTIAL}{name}"));
        let written = fs::write(&partial, &plain)
            .and_then(|()| Owner::apply(owner, &partial))
            .and_then(|()| fs::rename(&partial, dir.join(name.as_str())));
        if let Err(e) = written {
            // The directory went away (recovery is over) or the disk is full: stop staging.
            let _ = fs::remove_file(&partial);
            if !stop.load(Ordering::Relaxed) {
                tracing::warn!(dir = %dir.display(), segment = %name, "stop unpacking ahead: {e}");
            }
            return stats;
        }
        stats.staged += 1;
        stats.bytes += plain.len() as u64;
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "00000001000000000000000A";
    const B: &str = "00000001000000000000000B";
    const C: &str = "00000002000000000000000C";

    #[test]
    fn take_moves_a_staged_segment_and_drops_the_ones_recovery_passed() {
        let t = tempfile::tempdir().unwrap();
        let d = dir(t.path());
        fs::create_dir_all(&d).unwrap();
        for n in [A, B, C] {
            fs::write(d.join(n), n).unwrap();
        }
        fs::write(d.join(format!("{PARTIAL}{C}")), "half").unwrap();
        assert_eq!(waiting(&d), 3);
        let dest = t.path().join("RECOVERYXLOG");
        assert!(take(&d, B, &dest).unwrap());
        assert_eq!(fs::read_to_string(&dest).unwrap(), B);
        // A lies before B: recovery will not ask for it again.
        assert!(!d.join(A).exists());
        // Another timeline, a later position: kept.
        assert!(d.join(C).exists());
        // Not staged (gone, or never there): the caller unpacks it itself.
        assert!(!take(&d, A, &dest).unwrap());
        assert!(!take(&d, "00000002.history", &dest).unwrap());
        assert!(!take(&t.path().join("none"), B, &dest).unwrap());
        // A half-written file is never taken.
        assert!(!take(&d, &format!("{PARTIAL}{C}"), &dest).unwrap());
        assert!(take(&d, C, &dest).unwrap());
        assert_eq!(fs::read_to_string(&dest).unwrap(), C);
    }
}
