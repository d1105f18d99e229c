//! One directory per test under `$WALVAULT_TEST_DIR` (default `/tmp/walvault-tests`): removed
//! when the test passes, kept (and its logs' tails printed) when it fails.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{chmod, chown_postgres, Log};

static NEXT: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
    log: Log,
}

impl TestDir {
    /// `name` should be the test's name; the directory is `<base>/<name>-<pid>-<n>`.
    pub fn new(name: &str) -> Self {
        let base = std::env::var_os("WALVAULT_TEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp/walvault-tests"));
        std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("create {}: {e}", base.display()));
        // PostgreSQL runs as `postgres` and must traverse every directory up to its own.
        chmod(&base, 0o755);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("{name}-{}-{n}", std::process::id()));
        if path.exists() {
            // A leftover of an earlier run whose pid was reused.
            let _ = std::fs::remove_dir_all(&path);
        }
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        chmod(&path, 0o755);
        let log = Log::new(path.join("harness.log"));
        log.line(&format!("test {name} in {}", path.display()));
        eprintln!("test directory: {}", path.display());
        Self { path, log }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    /// A world-traversable directory (0755) owned by root.
    pub fn mkdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.path.join(rel);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        chmod(&p, 0o755);
        p
    }

    /// A private directory (0700) owned by `postgres`, for data, logs and sockets.
    pub fn mkdir_postgres(&self, rel: impl AsRef<Path>) -> PathBuf {
        let p = self.path.join(rel);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        chmod(&p, 0o700);
        chown_postgres(&p);
        p
    }

    /// Prints the tail of every log in the directory, so a CI failure explains itself.
    fn print_log_tails(&self) {
        let mut logs = Vec::new();
        collect_logs(&self.path, &mut logs, 0);
        logs.sort();
        for p in logs {
            let Ok(text) = std::fs::read_to_string(&p) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            eprintln!(
                "===== {} (last {} lines) =====",
                p.display(),
                lines.len() - from
            );
            for l in &lines[from..] {
                eprintln!("{l}");
            }
        }
    }
}

fn collect_logs(dir: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    // Shallow: logs sit at the top or one level down (e.g. pg-primary/postgres.log); deeper
    // are data directories and the pool's mountpoint.
    if depth > 1 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_dir() && !p.ends_with("mnt") {
            collect_logs(&p, out, depth + 1);
        } else if ft.is_file() && p.extension().is_some_and(|x| x == "log") {
            out.push(p);
        }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_log_tails();
            eprintln!("test failed: kept {}", self.path.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.path) {
            eprintln!("could not remove {}: {e}", self.path.display());
        }
    }
}
